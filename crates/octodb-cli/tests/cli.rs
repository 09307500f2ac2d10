//! The `octodb` binary as users run it: real processes, pipes, signals and kill -9.

use octodb::Connection;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn piped_shell_runs_each_statement_when_complete_and_goes_on_after_errors() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("file:{}", dir.path().join("local.db").display());
    let (child, mut stdin, lines) = piped_shell(&["--json", &uri]);
    // Each statement is answered before the next is written: the shell does not wait for EOF.
    writeln!(stdin, "CREATE TABLE t(a, b);").unwrap();
    writeln!(stdin, "INSERT INTO t VALUES (1, 'x'), (2, NULL);").unwrap();
    writeln!(stdin, "SELECT a, b FROM t\n ORDER BY a;").unwrap();
    assert_eq!(next_line(&lines), r#"[{"a":1,"b":"x"},{"a":2,"b":null}]"#);
    writeln!(stdin, "SELECT * FROM missing;").unwrap();
    writeln!(stdin, "SELECT count(*) AS n FROM t WHERE 0;").unwrap();
    assert_eq!(next_line(&lines), r#"[{"n":0}]"#);
    writeln!(stdin, "SELECT a FROM t WHERE 0;").unwrap();
    assert_eq!(next_line(&lines), "[]");
    // Columns in the query's order, two of one name both kept (as sqlite3's .mode json).
    writeln!(stdin, "SELECT 'z' AS z, 2 AS a, 3 AS a;").unwrap();
    assert_eq!(next_line(&lines), r#"[{"z":"z","a":2,"a":3}]"#);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr}");
    assert!(stderr.contains("no such table: missing"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "exit status 1 after an error");
}

/// A one-shot shell's sign-up or login that never reached a primary says so at the end: the
/// request is not kept (the suspended-devices walkthrough's login vanished without a word).
#[test]
fn a_login_the_shell_could_not_send_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the device never reaches a primary.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = nowhere.local_addr().unwrap().to_string();
    drop(nowhere);
    let out = octodb()
        .args([
            &device_uri(dir.path(), &addr),
            "PRAGMA user_login = 'user:1';",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("login request was not sent"), "{stderr}");
}

/// `--sync`: a device's piped shell runs its SQL once it holds what the primary holds, and
/// exits once its writes are decided; without a primary it runs nothing and says why.
#[test]
fn a_device_shell_with_sync_sees_the_primarys_rows_and_delivers_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (p, addr) = primary(dir.path());
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('from the backend', '*')",
        [],
    )
    .unwrap();
    let uri = device_uri(dir.path(), &addr);
    let out = octodb()
        .args(["--sync", "--json", &uri])
        .args([
            "SELECT v FROM t;",
            "INSERT INTO t(v) VALUES ('from the shell');",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"[{"v":"from the backend"}]"#,
        "a new device's first run already sees the primary's rows"
    );
    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v = 'from the shell'"),
        1,
        "the write was decided before the shell exited"
    );

    // `.sync` in a script: the write before it is on the primary once it returns.
    let (mut child, mut stdin, lines) = piped_shell(&[&uri]);
    writeln!(stdin, "INSERT INTO t(v) VALUES ('before .sync');").unwrap();
    writeln!(stdin, ".sync").unwrap();
    writeln!(stdin, "SELECT 'synced';").unwrap();
    assert_eq!(next_line(&lines), "synced");
    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v = 'before .sync'"),
        1,
        ".sync returned once the write was decided"
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());

    // A write the primary refuses (the id is another user's row, which this device cannot
    // see) is reported, and the exit status says so.
    p.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (7, 'someone else''s', 99)",
        [],
    )
    .unwrap();
    let out = octodb()
        .args(["--sync", &uri, "INSERT INTO t(id, v) VALUES (7, 'mine');"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rejected this device's transaction"),
        "{stderr}"
    );
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'mine'"), 0);

    drop(p);
    let out = octodb()
        .args(["--sync=0.3", &uri, "SELECT 'should not run';"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing ran without sync");
    assert!(
        stderr.contains("not in sync with the primaries"),
        "{stderr}"
    );
    // Without --sync the device works offline as ever.
    let out = octodb()
        .args([&uri, "SELECT count(*) FROM t;"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    // ...and says what it leaves unsent when it exits.
    let out = octodb()
        .args([&uri, "INSERT INTO t(v) VALUES ('offline');"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 transaction of this device not sent yet"),
        "{stderr}"
    );
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.path().join("p.db").display()
    );
    let mut child = octodb()
        .args(["serve", &uri])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("serving on tcp://127.0.0.1:"), "{first}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        rest.iter().any(|l| l.contains("stopped cleanly")),
        "{rest:?}"
    );
    // The file is free again: another process (this one) can open it.
    Connection::open(&uri).expect("reopen after a clean stop");
}

#[test]
fn the_cluster_demo_fails_over_and_every_node_ends_with_the_same_rows() {
    let out = octodb().args(["demo", "--cluster"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "is killed (SIGKILL",
        "elected primary",
        "primary1: 2 rows",
        "device: 2 rows",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_runs_and_shows_each_node() {
    let out = octodb().arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "the primary sees",
        "alice's device sees",
        "bob's device sees",
        "for alice only",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

/// kill -9 of a device process in the middle of writes: nothing it acknowledged is lost and
/// nothing arrives twice at the primary.
#[test]
fn kill_9_of_a_device_loses_nothing_acknowledged_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (p, addr) = primary(dir.path());
    p.execute("CREATE TABLE t(n INTEGER NOT NULL, row_owner)", [])
        .unwrap();
    let uri = device_uri(dir.path(), &addr);
    let mut child = octodb()
        .args(["--json", &uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = lines_of(&mut child);

    // Wait (through the pipe) for the schema to arrive on the device.
    let end = Instant::now() + DEADLINE;
    loop {
        writeln!(
            stdin,
            "SELECT count(*) AS c FROM sqlite_master WHERE name = 't';"
        )
        .unwrap();
        if next_line(&lines) == r#"[{"c":1}]"# {
            break;
        }
        assert!(Instant::now() < end, "schema never reached the device");
    }

    // Write on a thread; a row is acknowledged once the shell printed it (after COMMIT).
    let writer = std::thread::spawn(move || {
        for n in 1..=20_000 {
            if writeln!(stdin, "INSERT INTO t(n) VALUES ({n}) RETURNING n;").is_err() {
                break; // the process is gone
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 500 {
        let line = next_line(&lines);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        acked.push(v[0]["n"].as_i64().unwrap());
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Late lines that were already in the pipe were acknowledged too.
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            acked.extend(v[0]["n"].as_i64());
        }
    }
    writer.join().unwrap();

    // Restart the device (here, in-process) and let it drain its outbox.
    let d = Connection::open(&uri).expect("reopen the killed device");
    d.wait_for(DEADLINE, |s| s.connected && s.outbox_len == 0)
        .expect("outbox drains");
    let on_device = count(&d, "SELECT count(*) FROM t");
    assert!(
        on_device >= acked.len() as i64,
        "device lost acknowledged rows"
    );
    let end = Instant::now() + DEADLINE;
    while count(&p, "SELECT count(*) FROM t") < on_device {
        assert!(
            Instant::now() < end,
            "rows never reached the primary: device {on_device}, primary {}, device status {:?}",
            count(&p, "SELECT count(*) FROM t"),
            d.sync_status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        count(&p, "SELECT count(*) FROM t"),
        on_device,
        "primary has exactly the device's rows"
    );
    assert_eq!(
        count(&p, "SELECT count(DISTINCT n) FROM t"),
        on_device,
        "no duplicates"
    );
    for n in acked {
        assert_eq!(
            count(&p, &format!("SELECT count(*) FROM t WHERE n = {n}")),
            1,
            "acknowledged row {n}"
        );
    }
}

/// `octodb serve` of a joining primary says it joins, then under which node id it joined
/// (it printed a provisional id), and why it has not joined while it cannot.
#[test]
fn serve_of_a_joining_primary_reports_its_join() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, addr) = primary(dir.path());
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&connect=tcp://{addr}",
        dir.path().join("p2.db").display()
    );
    let mut child = octodb()
        .args(["serve", &uri])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _child = Served(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(DEADLINE).unwrap();
    assert!(first.contains("(joining its cluster) serving"), "{first}");
    let joined = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(joined, "octodb: joined its cluster as node 2");
}

/// kill -9 of the primary process while a device sends one transaction after another: after
/// a restart on the same file, each transaction is there exactly once (those decided before
/// the kill and resent by the device are recognized as already decided).
#[test]
fn kill_9_of_the_primary_duplicates_nothing_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    {
        let (p, _) = primary(dir.path());
        p.execute("CREATE TABLE t(n INTEGER NOT NULL, row_owner)", [])
            .unwrap();
    }
    let (mut first, addr) = serve(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        path.display()
    ));
    let d = Connection::open(&device_uri(dir.path(), &addr)).unwrap();
    d.wait_until_ready(DEADLINE).unwrap();
    // The primary's file read beside it, as a plain SQLite file: what it has committed.
    let committed = Connection::open(&format!("file:{}?mode=ro", path.display())).unwrap();
    let total: i64 = 3_000;
    let mut killed = false;
    let mut second = None;
    for n in 1..=total {
        d.execute("INSERT INTO t(n) VALUES (?1)", [n]).unwrap();
        if !killed && count(&committed, "SELECT count(*) FROM t") >= 300 {
            // SIGKILL in the middle of the stream: some transactions are decided and
            // committed there, but the device has not heard so.
            first.0.kill().unwrap();
            first.0.wait().unwrap();
            killed = true;
        }
        if killed && second.is_none() && n >= total / 2 {
            let uri = format!("file:{}?node=primary&bind=tcp://{addr}", path.display());
            second = Some(serve(&uri).0);
        }
    }
    assert!(killed, "the primary committed fewer than 300 transactions");
    drop(committed);
    let mut second = second.expect("the primary restarted");
    d.wait_for(DEADLINE, |s| s.connected && s.outbox_len == 0)
        .expect("the device's queue drains into the restarted primary");
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
    drop(d);
    let status = Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(second.0.wait().unwrap().success());

    let p = Connection::open(&format!("file:{}", path.display())).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t"), total);
    assert_eq!(count(&p, "SELECT count(DISTINCT n) FROM t"), total);
    // Re-applying a resent insert would leave the table as it was (same row id), but it
    // would be a second decision in the log, sent again to every device.
    assert_eq!(
        count(&p, "SELECT count(*) FROM _octo_log WHERE origin_txn > 0"),
        total,
        "each device transaction decided once"
    );
}

/// A plain HTTP/1.1 GET (the test needs no client library): the whole response.
fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_with_admin_serves_the_console_and_metrics_behind_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.path().join("p.db").display()
    );
    let out = octodb()
        .args(["serve", &uri, "--admin", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin_insecure=1"), "{err}");

    let child = octodb()
        .args(["serve", &uri, "--admin", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Served(child);
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    // "octodb: admin console at http://ADDR/ ; its token (kept in the node's file): TOKEN"
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no console address in {first:?}"))
        .to_string();
    let token = first.rsplit(' ').next().unwrap_or_default().to_string();
    assert_eq!(token.len(), 64, "{first}");
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    assert!(http_get(&addr, "/metrics", None).starts_with("HTTP/1.1 401"));
    assert!(http_get(&addr, "/", None).starts_with("HTTP/1.1 401"));
    let metrics = http_get(&addr, "/metrics", Some(&token));
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("\noctodb_log_seq "), "{metrics}");
    drop(child);

    // Started again with a token of the operator's: the start line points to it, not to the
    // token printed at the first start.
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "operators-own-token\n").unwrap();
    let child = octodb()
        .args([
            "serve",
            &format!("{uri}&admin_token_file={}", token_file.display()),
            "--admin",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Served(child);
    let stderr = child.0.stderr.take().unwrap();
    let first = BufReader::new(stderr).lines().next().unwrap().unwrap();
    assert!(first.contains("admin_token_file="), "{first}");
    assert!(!first.contains("first start"), "{first}");
}

/// `--sync` fails a session for the rejection of its own writes only: a rejection heard now of
/// a write an earlier session left in the outbox is a note (the conflicts walkthrough: a
/// SELECT-only session exited 1, blamed for an earlier session's write).
#[test]
fn a_sync_reports_an_earlier_sessions_rejected_write_as_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let (p, addr) = primary(dir.path());
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         INSERT INTO t(id, v, row_owner) VALUES (7, 'someone else''s', 99);",
    )
    .unwrap();
    let uri = device_uri(dir.path(), &addr);
    let out = octodb()
        .args(["--sync", &uri, "SELECT 1;"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Offline, a session writes a row the primary will refuse, and ends.
    drop(p);
    let out = octodb()
        .args([&uri, "INSERT INTO t(id, v) VALUES (7, 'mine');"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not sent yet"), "{stderr}");

    let _p = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://{addr}",
        dir.path().join("p.db").display()
    ))
    .expect("reopen the primary on its address");
    let out = octodb()
        .args(["--sync", &uri, "SELECT 'read';"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "read");
    assert!(
        stderr.contains("written before this session"),
        "the rejection is told all the same: {stderr}"
    );
}
