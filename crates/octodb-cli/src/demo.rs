//! `octodb demo`: a primary and two devices on loopback, showing schema and rows flowing.

use crate::output::table;
use crate::DemoArgs;
use anyhow::{bail, Context};
use octodb::Connection;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// Wait until `cond` holds, checking often; fail with `what` after the deadline.
pub(crate) fn wait_until(
    what: &str,
    mut cond: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let end = Instant::now() + DEADLINE;
    while !cond()? {
        if Instant::now() > end {
            bail!("the demo waited {DEADLINE:?} for {what}; run with OCTODB_LOG=debug to see why");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The demo's directory: the one asked for (made if missing), else a temporary one, kept
/// (and deleted) with the first value.
pub(crate) fn demo_dir(
    asked: Option<&Path>,
) -> anyhow::Result<(Option<tempfile::TempDir>, std::path::PathBuf)> {
    match asked {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Ok((None, d.to_path_buf()))
        }
        None => {
            let temp = tempfile::tempdir().context("creating a temporary directory")?;
            let path = temp.path().to_path_buf();
            Ok((Some(temp), path))
        }
    }
}

pub(crate) fn count(conn: &Connection, sql: &str) -> anyhow::Result<i64> {
    Ok(conn.query_row(sql, [], |r| r.get::<i64>(0))?)
}

fn show(name: &str, conn: &Connection) -> anyhow::Result<()> {
    let rows = conn.query(
        "SELECT id >> 32 AS made_on_node, id & 4294967295 AS seq, title, row_owner FROM todos ORDER BY title",
        [],
    )?;
    println!("  {name} sees:\n{}", table(&rows));
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.cluster {
        return crate::demo_cluster::run(args.dir.as_deref());
    }
    let (_temp, dir) = demo_dir(args.dir.as_deref())?;
    let dir: &Path = &dir;
    let started = Instant::now();
    println!(
        "octodb demo: one primary (the backend) and two devices, over loopback, in {}\n",
        dir.display()
    );

    let primary = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.join("primary.db").display()
    ))?;
    let addr = primary
        .bound_addrs()
        .first()
        .copied()
        .context("the primary is not listening")?;
    println!(
        "1. The primary listens on tcp://{addr} (authenticated, encrypted: Noise with node keys)."
    );

    primary.execute_batch(
        "CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, row_owner);
         INSERT INTO todos(title, row_owner) VALUES ('welcome, everyone (a global row)', '*');",
    )?;
    println!(
        "2. The primary created table `todos` (with a row_owner column) and a global row ('*')."
    );

    let device = |name: &str| -> anyhow::Result<Connection> {
        let c = Connection::open(&format!(
            "file:{}?node=secondary&connect=tcp://{addr}",
            dir.join(format!("{name}.db")).display()
        ))?;
        let s = c.wait_until_ready(DEADLINE)?;
        println!(
            "   device {name}: joined as node {} of user {}, schema and rows downloaded",
            s.node_id,
            s.user_id.unwrap_or(0)
        );
        Ok(c)
    };
    println!("3. Two devices join, each as its own user (no authorization in this demo):");
    let alice = device("alice")?;
    let bob = device("bob")?;
    let alice_user = alice.sync_status()?.user_id.unwrap_or(0);

    alice.execute(
        "INSERT INTO todos(title) VALUES ('buy milk (alice''s row)')",
        [],
    )?;
    alice.execute(
        "INSERT INTO todos(title, row_owner) VALUES ('draft (alice''s local row)', NULL)",
        [],
    )?;
    bob.execute(
        "INSERT INTO todos(title) VALUES ('call mom (bob''s row)')",
        [],
    )?;
    primary.execute(
        "INSERT INTO todos(title, row_owner) VALUES ('from the backend, for alice only', ?1)",
        [alice_user],
    )?;
    println!(
        "4. alice and bob each wrote a row (owner: their user) and alice a local row (owner NULL);"
    );
    println!("   the primary sent a row to alice's user only.\n");

    wait_until("the devices' rows at the primary", || {
        Ok(count(&primary, "SELECT count(*) FROM todos")? == 4)
    })?;
    wait_until("alice's rows", || {
        Ok(count(&alice, "SELECT count(*) FROM todos")? == 4)
    })?;
    wait_until("bob's rows", || {
        Ok(count(&bob, "SELECT count(*) FROM todos")? == 2 && bob.sync_status()?.outbox_len == 0)
    })?;

    println!("5. What each node sees (ids are made of the node id and a per-node sequence):\n");
    show("the primary", &primary)?;
    show("alice's device", &alice)?;
    show("bob's device", &bob)?;

    println!(
        "Global rows are everywhere; a user's rows live on the primary and that user's devices;"
    );
    println!(
        "local rows stay where they were made. Done in {:.2?}.",
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}
