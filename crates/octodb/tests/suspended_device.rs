//! A device whose process was suspended (a phone's app sent to the background: SIGSTOP) for
//! longer than its connection may stay silent. When it resumes, what it held before is no
//! longer known to be all there is: `wait_until_synced` waits to hear from a primary again.
//! (The walkthrough of suspended devices saw it return at once, the device holding 780 of the
//! primary's 913 rows, its status read just after saying it was not in sync.)

mod common;

use common::process::{Process, ANSWER, MARK, ROLE, URI};
use common::*;
use octodb::Connection;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// Not a test of its own: the device's process when the test starts this binary in a role.
/// `synced` waits until the device is in sync, then answers how many rows it holds.
#[test]
fn child_process() {
    let (Ok(_role), Ok(uri)) = (std::env::var(ROLE), std::env::var(URI)) else {
        return;
    };
    common::init_tracing();
    let db = Connection::open(&uri).expect("open the device");
    db.wait_until_ready(ANSWER).expect("device ready");
    let mut out = std::io::stdout();
    writeln!(out, "{MARK}ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let answer = match line.expect("a command").as_str() {
            "synced" => db
                .wait_until_synced(Duration::from_secs(30))
                .and_then(|_| db.query_row("SELECT count(*) FROM t", [], |r| r.get::<i64>(0)))
                .map(|n| format!("synced {n}")),
            other => Ok(format!("unknown command {other}")),
        };
        let answer = answer.unwrap_or_else(|e| format!("error {e}"));
        writeln!(out, "{MARK}{}", answer.replace('\n', " ")).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn a_resumed_device_hears_from_its_primary_before_it_says_it_is_in_sync() {
    let c = Cluster::new();
    let p = Connection::open(&primary_uri(&c.path("p.db"), 0)).unwrap();
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         INSERT INTO t(v, row_owner) VALUES ('before', '*');",
    )
    .unwrap();
    // Heartbeats every second: a connection silent for 3 s is dead.
    let uri = format!("{}&heartbeat=1", device_uri(&c.path("d.db"), &addr_of(&p)));
    let mut device = Process::start("device", &uri);
    assert_eq!(device.ask("synced", "synced"), "synced 1");

    device.signal("-STOP");
    let stopped = Instant::now();
    for i in 0..50 {
        p.execute("INSERT INTO t(v, row_owner) VALUES (?1, '*')", [i])
            .unwrap();
    }
    // The primary ends the silent device's session: the device's connection is older than
    // any that may still be alive.
    let end = Instant::now() + ANSWER;
    while !p.sync_status().unwrap().peers.is_empty() {
        assert!(
            Instant::now() < end,
            "the primary never noticed the device stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stopped for 3 s at least (the primary may drop it after 2: its last heartbeat may
    // have gone a second before the stop): the pause is the scenario, not a wait.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed()));
    // The app asks as soon as it runs again.
    device.send("synced");
    device.signal("-CONT");
    assert_eq!(device.expect("synced"), "synced 51");
}
