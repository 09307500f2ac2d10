//! Three primaries, each a process of its own, and a device writing through them: the leader
//! is killed with SIGKILL again and again while the device writes. After every kill the
//! device finds the new leader; the killed primary starts again (and, if it died with a tail
//! the cluster never held, is started once more, as a supervisor would, and rejoins as a new
//! member). At the end every primary holds every row the device committed, exactly once.

mod common;

use common::process::{free_port, Process, ANSWER, MARK, ROLE, URI};
use common::*;
use octodb::Connection;
use std::collections::BTreeSet;
use std::io::{BufRead, Write};

/// Set for the first primary: it creates the table.
const CREATE: &str = "OCTODB_FAULT_CREATE";
const ROUNDS: usize = 3;
const WRITES_PER_STEP: usize = 20;

/// Not a test of its own: the body of a primary's process when the suite starts this binary
/// in a role. Run directly, it returns at once.
#[test]
fn child_process() {
    let (Ok(_), Ok(uri)) = (std::env::var(ROLE), std::env::var(URI)) else {
        return;
    };
    common::init_tracing();
    let db = Connection::open(&uri).expect("open the primary");
    if std::env::var_os(CREATE).is_some() {
        db.execute(
            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT UNIQUE, row_owner)",
            [],
        )
        .expect("create table");
    }
    let mut out = std::io::stdout();
    writeln!(out, "{MARK}ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("a command");
        let answer = match line.as_str() {
            "status" => db.sync_status().map(|s| {
                // (No cluster yet while it joins.)
                let (role, voters) = s.cluster.map_or(("joining".into(), 0), |c| {
                    (c.role, c.members.iter().filter(|m| m.voter).count())
                });
                let error = s.sync_error.unwrap_or_default().replace(' ', "_");
                format!("status {role} {voters} {error}")
            }),
            "tags" => db.query("SELECT tag FROM t ORDER BY tag", []).map(|rows| {
                let tags: Vec<String> = rows
                    .iter()
                    .map(|r| r.get::<String>(0).unwrap_or_default())
                    .collect();
                format!("tags {}", tags.join(","))
            }),
            _ => Ok(format!("unknown command {line}")),
        };
        let answer = answer.unwrap_or_else(|e| format!("error {e}"));
        writeln!(out, "{MARK}{}", answer.replace('\n', " ")).unwrap();
        out.flush().unwrap();
    }
}

struct Primary {
    uri: String,
    create: bool,
    process: Option<Process>,
}

impl Primary {
    /// Starts its process (the first primary's first start creates the table).
    fn start(&mut self) {
        if std::mem::take(&mut self.create) {
            std::env::set_var(CREATE, "1");
        }
        self.process = Some(Process::start("primary", &self.uri));
        std::env::remove_var(CREATE);
    }

    /// (role, voters, sync_error) as the primary answers; None while it is down.
    fn status(&mut self) -> Option<(String, usize, String)> {
        let answer = self.process.as_mut()?.ask("status", "status");
        let mut words = answer.split(' ').skip(1);
        let role = words.next()?.to_string();
        let voters = words.next()?.parse().ok()?;
        let error = words.next().unwrap_or_default().replace('_', " ");
        Some((role, voters, error))
    }

    fn tags(&mut self) -> BTreeSet<String> {
        let answer = self.process.as_mut().expect("running").ask("tags", "tags");
        answer
            .strip_prefix("tags ")
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    }
}

/// The device commits `WRITES_PER_STEP` rows of its own, tagged `step-NN`.
fn write(d: &Connection, step: &str, committed: &mut BTreeSet<String>) {
    for i in 0..WRITES_PER_STEP {
        let tag = format!("{step}-{i:02}");
        d.execute("INSERT INTO t(tag) VALUES (?1)", [&tag])
            .expect("the device commits locally");
        committed.insert(tag);
    }
}

#[test]
fn killing_the_leader_again_and_again_loses_no_committed_row() {
    let c = Cluster::new();
    let ports = [free_port(), free_port(), free_port()];
    let first = format!("127.0.0.1:{}", ports[0]);
    let mut primaries: Vec<Primary> = (0..3)
        .map(|i| {
            let mut uri = primary_uri(&c.path(&format!("p{i}.db")), ports[i]);
            if i > 0 {
                uri.push_str(&format!("&connect=tcp://{first}"));
            }
            Primary {
                uri,
                create: i == 0,
                process: None,
            }
        })
        .collect();
    primaries[0].start();
    for p in &mut primaries[1..] {
        p.start();
    }
    wait_until("three voters", || {
        primaries[0]
            .status()
            .filter(|(_, voters, _)| *voters == 3)
            .map(|_| ())
    });

    let d = Connection::open(&device_uri(&c.path("d.db"), &first)).expect("open the device");
    ready(&d);
    d.wait_for(ANSWER, |s| s.primaries.len() == 3)
        .expect("the device hears of the three primaries");
    let mut committed = BTreeSet::new();

    for round in 0..ROUNDS {
        write(&d, &format!("r{round}-before"), &mut committed);
        let leader = wait_until("a leader", || {
            primaries
                .iter_mut()
                .position(|p| p.status().is_some_and(|(role, ..)| role == "leader"))
        });
        // SIGKILL, while the device's writes may be on their way.
        if let Some(p) = primaries[leader].process.take() {
            p.kill();
        }
        write(&d, &format!("r{round}-during"), &mut committed);
        wait_until("a new leader among the others", || {
            primaries
                .iter_mut()
                .any(|p| p.status().is_some_and(|(role, ..)| role == "leader"))
                .then_some(())
        });
        primaries[leader].start();
        wait_outbox_empty(&d);
        // The killed primary catches up. One that died with a tail the cluster never held
        // stops and asks to be opened again; a supervisor does so, and it rejoins.
        wait_until("the killed primary back with every committed row", || {
            let p = &mut primaries[leader];
            let (_, _, error) = p.status()?;
            if error.contains("opened again") {
                if let Some(process) = p.process.take() {
                    process.kill();
                }
                p.start();
                return None;
            }
            (p.tags() == committed).then_some(())
        });
        write(&d, &format!("r{round}-after"), &mut committed);
    }

    wait_outbox_empty(&d);
    let status = d.sync_status().unwrap();
    assert_eq!(status.last_rejected, None, "no transaction was rejected");
    for (i, p) in primaries.iter_mut().enumerate() {
        wait_until(&format!("primary {i} holds every committed row"), || {
            (p.tags() == committed).then_some(())
        });
    }
    assert_eq!(
        count(&d, "SELECT count(*) FROM t") as usize,
        committed.len(),
        "the device holds its rows once each"
    );
}
