//! Helpers shared by the integration tests: real files in a temp dir, real loopback sockets.
#![allow(dead_code)]

pub mod http;
pub mod partition;
pub mod process;
pub mod proxy;

use octodb::{Connection, SyncStatus};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generous: CI machines are slow and shared. Tests wait on conditions, never on fixed sleeps.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OCTODB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn new() -> Cluster {
        init_tracing();
        Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A primary listening on a free loopback port.
    pub fn primary(&self, name: &str) -> Connection {
        Connection::open(&primary_uri(&self.path(name), 0)).expect("open primary")
    }

    /// A primary (`p.db`) with the table most tests use: `t(id INTEGER PRIMARY KEY, v TEXT,
    /// row_owner)`.
    pub fn primary_with_t(&self) -> Connection {
        let p = self.primary("p.db");
        p.execute(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
            [],
        )
        .expect("create table t");
        p
    }

    /// A primary deciding who joins (`auth` is `node` or `user`), on a free loopback port.
    pub fn auth_primary(&self, name: &str, auth: &str) -> Connection {
        Connection::open(&format!("{}&auth={auth}", primary_uri(&self.path(name), 0)))
            .expect("open primary")
    }

    /// A device connected to `primary`.
    pub fn device(&self, name: &str, primary: &Connection) -> Connection {
        Connection::open(&device_uri(&self.path(name), &addr_of(primary))).expect("open device")
    }
}

/// The user a request's data names as `user:<id>`: how the tests' backends decide.
pub fn user_named_in(r: &octodb::auth::AuthRequest) -> Option<i64> {
    r.data.as_deref()?.strip_prefix("user:")?.parse().ok()
}

/// A backend approving as the tests' do: sign-ups get a new user (0), logins name the user in
/// their data (`user:<id>`).
pub fn approve_by_data(p: &Connection) {
    use octodb::auth::{Action, AuthRequest, Decision};
    p.set_auth_callback(Action::UserSignup, |_r: &AuthRequest| Decision::User(0))
        .unwrap();
    p.set_auth_callback(Action::UserLogin, |r: &AuthRequest| {
        match user_named_in(r) {
            Some(u) => Decision::User(u),
            None => Decision::Reject("unknown user".into()),
        }
    })
    .unwrap();
}

pub fn primary_uri(path: &Path, port: u16) -> String {
    format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{port}",
        path.display()
    )
}

pub fn device_uri(path: &Path, primary_addr: &str) -> String {
    format!(
        "file:{}?node=secondary&connect=tcp://{primary_addr}",
        path.display()
    )
}

pub fn addr_of(primary: &Connection) -> String {
    primary
        .bound_addrs()
        .first()
        .expect("primary is listening")
        .to_string()
}

/// The port a primary listens on, to reopen it at the same address after a restart.
pub fn port_of(primary: &Connection) -> u16 {
    primary
        .bound_addrs()
        .first()
        .expect("primary is listening")
        .port()
}

/// Wait until `f` returns Some, or panic with `what` after the deadline.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

pub fn ready(c: &Connection) -> SyncStatus {
    c.wait_until_ready(DEADLINE).expect("node becomes ready")
}

pub fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get::<i64>(0))
        .expect("count query")
}

/// The single text `sql` returns on `c`.
pub fn text(c: &Connection, sql: &str) -> String {
    c.query_row(sql, [], |r| r.get::<String>(0))
        .expect("text query")
}

/// Wait until `sql` (a single number) equals `want` on `c`. A query that fails meanwhile
/// (its table not there yet, on a node still catching up) is tried again.
pub fn wait_count(c: &Connection, sql: &str, want: i64) {
    wait_until(&format!("`{sql}` = {want}"), || {
        let n = c.query_row(sql, [], |r| r.get::<i64>(0)).ok()?;
        (n == want).then_some(())
    });
}

/// A device's outbox is empty: the primary accepted or rejected all its transactions.
pub fn wait_outbox_empty(c: &Connection) {
    c.wait_for(DEADLINE, |s| s.outbox_len == 0)
        .expect("outbox drains");
}

/// A primary's role in its cluster ("leader", "follower", ...; empty without one).
pub fn cluster_role(p: &Connection) -> String {
    p.sync_status()
        .ok()
        .and_then(|s| s.cluster)
        .map(|c| c.role)
        .unwrap_or_default()
}

/// A primary joining the cluster of the primary at `leader_addr`.
pub fn joining_primary(path: &Path, leader_addr: &str) -> Connection {
    Connection::open(&format!(
        "{}&connect=tcp://{leader_addr}",
        primary_uri(path, 0)
    ))
    .expect("open a joining primary")
}

/// Wait until this process no longer has `name`'s database file open: a node's last
/// connection may close (and checkpoint into the file) just after the node is dropped.
pub fn wait_closed(dir: &Cluster, name: &str) {
    let file = dir
        .path(name)
        .canonicalize()
        .expect("the database file exists");
    wait_until(&format!("{name} closed"), || {
        let open = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| {
                target
                    .to_string_lossy()
                    .starts_with(&*file.to_string_lossy())
            });
        (!open).then_some(())
    });
}

/// Copy a closed database's files (`name`, and its WAL if SQLite left one) to `to`.
pub fn copy_closed_db(dir: &Cluster, name: &str, to: &str) {
    for suffix in ["", "-wal"] {
        let (from, dest) = (
            dir.path(&format!("{name}{suffix}")),
            dir.path(&format!("{to}{suffix}")),
        );
        let _ = std::fs::remove_file(&dest);
        if from.exists() {
            std::fs::copy(&from, &dest).expect("copy a database file");
        }
    }
    let _ = std::fs::remove_file(dir.path(&format!("{to}-shm")));
}

/// Every row of `sql` in the file at `path`, as text (read with plain SQLite, beside the node).
pub fn file_rows(path: &Path, sql: &str) -> Vec<Vec<String>> {
    let c = rusqlite::Connection::open(path).expect("open the file");
    let mut stmt = c.prepare(sql).expect("prepare");
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                let v: rusqlite::types::Value = r.get(i)?;
                Ok(format!("{v:?}"))
            })
            .collect()
    })
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}

/// Waits until the cluster `p` leads has `voters` voting members, and its membership change
/// is applied: a write that meets the change's last Raft entry on its way can be refused
/// with "try it again" (the app's retry), which a test must not take for a failure.
pub fn wait_voters(p: &Connection, voters: usize) {
    p.wait_for(DEADLINE, |s| {
        s.cluster.as_ref().is_some_and(|c| {
            c.settled_voters() == Some(voters)
                && c.applied_index.is_some()
                && c.applied_index == c.last_log_index
        })
    })
    .unwrap_or_else(|e| panic!("waiting for {voters} voters: {e}"));
}

/// Waits until the follower `p` knows its cluster's leader.
pub fn wait_follows_leader(p: &Connection) {
    p.wait_for(DEADLINE, |s| {
        s.cluster
            .as_ref()
            .is_some_and(|c| c.role == "follower" && c.leader.is_some())
    })
    .expect("the follower knows its leader");
}

/// A leader `p.db` with `auth=node` and table `t` (`setup` runs on it first: the backend's
/// callbacks), and two primaries (`p2.db`, `p3.db`) joined with `auth=node`, approved there as
/// primaries; all three voters, the followers knowing their leader.
pub fn three_auth_primaries(
    c: &Cluster,
    setup: impl FnOnce(&Connection),
) -> (Connection, Connection, Connection) {
    let p1 = c.auth_primary("p.db", "node");
    setup(&p1);
    p1.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .expect("create t");
    let join = |name: &str| {
        let p = Connection::open(&format!(
            "{}&auth=node&connect=tcp://{}",
            primary_uri(&c.path(name), 0),
            addr_of(&p1)
        ))
        .expect("open a joining primary");
        p1.execute(
            &format!("PRAGMA preauthorize_node='{}:primary'", p.public_key()),
            [],
        )
        .expect("the leader approves the primary");
        p
    };
    // One join at a time: the leader's approval of the next primary, made while the cluster
    // still changes its voters for the one before, may meet the change's Raft entries on its
    // way and be refused with "try again" (1 run in 15).
    let p2 = join("p2.db");
    wait_voters(&p1, 2);
    let p3 = join("p3.db");
    wait_voters(&p1, 3);
    wait_follows_leader(&p2);
    wait_follows_leader(&p3);
    (p1, p2, p3)
}
