//! The `octodb` binary as users run it: real processes, pipes, signals and kill -9.

use octodb::Connection;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

fn octodb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_octodb"))
}

fn primary(dir: &std::path::Path) -> (Connection, String) {
    let p = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.join("p.db").display()
    ))
    .expect("open primary");
    let addr = p.bound_addrs()[0].to_string();
    (p, addr)
}

fn device_uri(dir: &std::path::Path, addr: &str) -> String {
    format!(
        "file:{}?node=secondary&connect=tcp://{addr}",
        dir.join("d.db").display()
    )
}

/// Lines of a child's stdout, read on a thread so that the test can wait with a deadline.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The shell run with `args`, its standard input to write to, and the lines it prints.
fn piped_shell(args: &[&str]) -> (Child, std::process::ChildStdin, mpsc::Receiver<String>) {
    let mut child = octodb()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let lines = lines_of(&mut child);
    (child, stdin, lines)
}

fn next_line(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(DEADLINE)
        .expect("a line of output before the deadline")
}

fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get::<i64>(0)).expect("count")
}

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

/// An `octodb serve` process, killed if the test ends without stopping it.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `octodb serve` on `uri`; returns the process and the address it serves on.
fn serve(uri: &str) -> (Served, String) {
    let mut child = octodb()
        .args(["serve", uri])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Served(child);
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("serving on tcp://")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    // Keep reading, so that the process never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (child, addr)
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

#[test]
fn backup_copies_a_running_primary_consistently_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _addr) = primary(dir.path());
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         INSERT INTO t(v, row_owner) VALUES ('one', '*'), ('two', '*');",
    )
    .unwrap();
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.path().join("p.db").display()
    );
    let dest = dir.path().join("backup.db");
    let out = octodb().args(["backup", &uri]).arg(&dest).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The primary went on running; the copy holds its rows and its log.
    p.execute("INSERT INTO t(v, row_owner) VALUES ('three', '*')", [])
        .unwrap();
    let copy = Connection::open(&format!("file:{}", dest.display())).unwrap();
    assert_eq!(count(&copy, "SELECT count(*) FROM t"), 2);
    assert!(count(&copy, "SELECT count(*) FROM _octo_log") >= 2);
    // It holds the node's secret key: readable by its owner only, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    // A second backup to the same file is refused, leaving the first intact.
    let again = octodb().args(["backup", &uri]).arg(&dest).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(count(&copy, "SELECT count(*) FROM t"), 2);
}

/// A backup killed half way (kill -9, or a SIGTERM from `timeout` or systemd) leaves nothing at
/// the destination: the ops walkthrough found a 14 MB partial file there, whose journal rolled
/// it back to an empty database, and a next backup refused as the name existed.
#[test]
fn a_backup_killed_half_way_leaves_no_file_at_its_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _addr) = primary(dir.path());
    p.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB, row_owner)")
        .unwrap();
    for _ in 0..12 {
        // About 48 MB in all: long enough a copy to be caught under way.
        p.execute(
            "INSERT INTO t(v, row_owner) SELECT randomblob(65536), '*' FROM \
             (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 64) \
             SELECT i FROM n)",
            [],
        )
        .unwrap();
    }
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.path().join("p.db").display()
    );
    let dest = dir.path().join("backup.db");
    let mut child = octodb()
        .args(["backup", &uri])
        .arg(&dest)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = dir.path().join(format!("backup.db.partial-{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let caught = loop {
        if std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0) {
            break true;
        }
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    if !caught {
        eprintln!("skipped: the backup ended before it was seen under way");
        return;
    }
    assert!(!dest.exists(), "a partial copy at the backup's name");
    // The next backup to the same name goes through.
    let out = octodb().args(["backup", &uri]).arg(&dest).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = Connection::open(&format!("file:{}", dest.display())).unwrap();
    assert_eq!(count(&copy, "SELECT count(*) FROM t"), 12 * 64);
}

/// `octodb restore-cluster`: a primary's copy (encrypted: the URI gives its key), its node
/// stopped, starts a new cluster and leads it with the copy's rows; a running node's file
/// and a device's are refused, with what to do. `octodb mark-restored` on a primary alone
/// marks nothing and says so.
#[test]
fn restore_cluster_turns_a_primarys_copy_into_a_new_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&cipher=sqlcipher&key=k3y",
        path.display()
    );
    let p = Connection::open(&uri).unwrap();
    p.execute_batch("CREATE TABLE t(v, row_owner); INSERT INTO t VALUES ('kept', '*')")
        .unwrap();
    let out = octodb().args(["restore-cluster", &uri]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already open"),
        "{err}"
    );
    let device = dir.path().join("d.db");
    {
        let d = Connection::open(&format!(
            "file:{}?node=secondary&connect=tcp://{}&cipher=sqlcipher&key=k3y",
            device.display(),
            p.bound_addrs()[0]
        ))
        .unwrap();
        d.wait_until_ready(std::time::Duration::from_secs(30))
            .unwrap();
    }
    drop(p);
    let device_uri = format!("file:{}?cipher=sqlcipher&key=k3y", device.display());
    let out = octodb()
        .args(["restore-cluster", &device_uri])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not the file of a primary"),
        "{err}"
    );
    // (The node's last connection may still be closing: try until the file is free.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let out = loop {
        let out = octodb().args(["restore-cluster", &uri]).output().unwrap();
        let busy = String::from_utf8_lossy(&out.stderr).contains("already open");
        if !busy || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("starts a new cluster"), "{err}");
    assert!(err.contains("keeps node ids"), "{err}");
    assert!(!err.contains("k3y"), "the key is never printed: {err}");
    let without_key = format!("file:{}", path.display());
    let out = octodb()
        .args(["restore-cluster", &without_key])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wrong key"), "{err}");
    // A primary alone whose ids were reserved (by restore-cluster here) is marked once; a
    // device's file is refused.
    let out = octodb().args(["mark-restored", &uri]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("marked as restored already"),
        "{err}"
    );
    let out = octodb()
        .args(["mark-restored", &device_uri])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not the file of a primary"),
        "{err}"
    );
    let plain = dir.path().join("plain.db");
    Connection::open(&format!("file:{}", plain.display()))
        .unwrap()
        .execute_batch("CREATE TABLE x(v)")
        .unwrap();
    let out = octodb()
        .args(["mark-restored", plain.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("it is a plain database"),
        "{err}"
    );
    let p = Connection::open(&uri).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'kept'"), 1);
    p.execute("INSERT INTO t VALUES ('new', '*')", []).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 2);
}

/// `octodb encrypt` / `decrypt`: an encrypted copy of a plain file and a plain copy of an
/// encrypted one, sources unchanged, targets never overwritten; `octodb backup` of an encrypted
/// node is encrypted alike. No key is ever printed.
#[test]
fn encrypt_decrypt_and_backup_of_an_encrypted_node() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.db");
    {
        let c = Connection::open(&format!("file:{}", plain.display())).unwrap();
        c.execute_batch(
            "CREATE TABLE t(v); INSERT INTO t VALUES ('readable row');
             PRAGMA user_version = 7; PRAGMA application_id = 42; PRAGMA journal_mode = wal;",
        )
        .unwrap();
    }
    let before = std::fs::read(&plain).unwrap();
    // What the file's header keeps, kept by the copy (an app counts its migrations by
    // user_version: the ops walkthrough found it 0 after encrypt and after decrypt).
    let header = |c: &Connection| {
        let number = |p: &str| c.query_row(p, [], |r| r.get::<i64>(0)).unwrap();
        let mode = c
            .query_row("PRAGMA journal_mode", [], |r| r.get::<String>(0))
            .unwrap();
        (
            number("PRAGMA user_version"),
            number("PRAGMA application_id"),
            mode,
        )
    };
    let kept = (7, 42, "wal".to_string());
    let enc = dir.path().join("enc.db");
    let enc_uri = format!("file:{}?cipher=sqlcipher&key=s3cret-k3y", enc.display());
    let run = |args: &[&str]| {
        let out = octodb().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !stderr.contains("s3cret-k3y"),
            "a key was printed: {stderr}"
        );
        (out.status.success(), stderr)
    };
    let plain_arg = plain.to_str().unwrap();
    let (ok, err) = run(&["encrypt", plain_arg, &enc_uri]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&plain).unwrap(), before, "the source changed");
    let enc_bytes = std::fs::read(&enc).unwrap();
    assert!(!enc_bytes.starts_with(b"SQLite format 3"));
    assert!(!enc_bytes.windows(12).any(|w| w == b"readable row"));
    let c = Connection::open(&enc_uri).unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM t WHERE v = 'readable row'"),
        1
    );
    assert_eq!(header(&c), kept);
    drop(c);
    // Read without its key, the shell says what SQLite's "not a database" may mean.
    let (ok, err) = run(&[enc.to_str().unwrap(), "SELECT count(*) FROM t;"]);
    assert!(!ok && err.contains("cipher=sqlcipher&key="), "{err}");
    // Never over an existing file.
    let (ok, err) = run(&["encrypt", plain_arg, &enc_uri]);
    assert!(!ok && err.contains("exists already"), "{err}");

    let back = dir.path().join("back.db");
    let (ok, err) = run(&["decrypt", &enc_uri, back.to_str().unwrap()]);
    assert!(ok, "{err}");
    let c = Connection::open(&format!("file:{}", back.display())).unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM t WHERE v = 'readable row'"),
        1
    );
    assert_eq!(header(&c), kept);
    let wrong = format!("file:{}?cipher=sqlcipher&key=wrong", enc.display());
    let (ok, err) = run(&["decrypt", &wrong, dir.path().join("x.db").to_str().unwrap()]);
    assert!(!ok && err.contains("wrong key"), "{err}");

    // A backup of a running encrypted primary: encrypted, with the same key.
    let node_uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&cipher=sqlcipher&key=s3cret-k3y",
        dir.path().join("p.db").display()
    );
    let p = Connection::open(&node_uri).unwrap();
    p.execute_batch("CREATE TABLE n(v, row_owner); INSERT INTO n VALUES ('node row', '*')")
        .unwrap();
    let copy = dir.path().join("copy.db");
    let (ok, err) = run(&["backup", &node_uri, copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    // The backup's process closing its connection left the running node's WAL alone (it
    // deleted it, with the rows committed there, when the node held no lock on the file).
    assert!(
        dir.path().join("p.db-wal").exists(),
        "the running node's WAL was deleted"
    );
    p.execute_batch("INSERT INTO n VALUES ('after the backup', '*')")
        .unwrap();
    let later = dir.path().join("later-copy.db");
    let (ok, err) = run(&["backup", &node_uri, later.to_str().unwrap()]);
    assert!(ok, "{err}");
    let c = Connection::open(&format!(
        "file:{}?cipher=sqlcipher&key=s3cret-k3y",
        later.display()
    ))
    .unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM n"),
        2,
        "a row committed after a backup"
    );
    drop(c);
    // A plain copy of the running primary: readable by its owner only (it holds every row
    // and the node's secret key; it was created with the umask's 0644), and marked as a
    // backup's copy is (restored, it would hand out again the ids of devices approved since).
    let plain_copy = dir.path().join("plain-copy.db");
    let (ok, err) = run(&["decrypt", &node_uri, plain_copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        err.contains("keeps node ids"),
        "not marked as restored: {err}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&plain_copy).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    let c = Connection::open(&format!("file:{}", plain_copy.display())).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM n"), 2);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM _octo_nodes WHERE auth_state = 'reserved'"
        ),
        1
    );
    drop(c);
    let no_key = format!("file:{}", dir.path().join("p.db").display());
    let other = dir.path().join("other-copy.db");
    let (ok, err) = run(&["backup", &no_key, other.to_str().unwrap()]);
    assert!(!ok && err.contains("wrong key"), "{err}");
    assert!(!other.exists(), "a failed backup leaves no file behind");
    let copy_bytes = std::fs::read(&copy).unwrap();
    assert!(!copy_bytes.starts_with(b"SQLite format 3"));
    assert!(!copy_bytes.windows(8).any(|w| w == b"node row"));
    let c = Connection::open(&format!(
        "file:{}?cipher=sqlcipher&key=s3cret-k3y",
        copy.display()
    ))
    .unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM n"), 1);
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

/// A node converted with `octodb encrypt` or `decrypt` stays on the network its devices know:
/// the network key it had (none, or one derived from its old file key) is kept in the new
/// file, so its devices reconnect, and a device without the key stays out.
#[test]
fn a_converted_node_keeps_its_network_key() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).display().to_string();
    let run = |args: &[&str]| {
        let out = octodb().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {stderr}");
        stderr
    };
    let row_reaches = |device: &Connection, primary: &Connection, v: &str| {
        primary
            .execute("INSERT INTO t(v, row_owner) VALUES (?1, '*')", [v])
            .unwrap();
        let sql = format!("SELECT count(*) FROM t WHERE v = '{v}'");
        device
            .wait_for(DEADLINE, |_| {
                device.query_row(&sql, [], |r| r.get::<i64>(0)).ok() == Some(1)
            })
            .unwrap_or_else(|e| panic!("`{v}` never reached the device: {e}"));
    };

    // A plain primary without a network key, encrypted: its plain device reconnects.
    let (p, addr) = primary(dir.path());
    let port = addr.rsplit(':').next().unwrap().to_string();
    p.execute("CREATE TABLE t(v, row_owner)", []).unwrap();
    let d = Connection::open(&device_uri(dir.path(), &addr)).unwrap();
    row_reaches(&d, &p, "plain");
    drop(p);
    let encrypted = format!("file:{}?cipher=sqlcipher&key=k3y", at("pe.db"));
    run(&["encrypt", &at("p.db"), &encrypted]);
    let p = Connection::open(&format!(
        "{encrypted}&node=primary&bind=tcp://127.0.0.1:{port}"
    ))
    .unwrap();
    row_reaches(&d, &p, "after encrypt");
    drop(d);
    drop(p);

    // An encrypted primary's network (its key derived from the file key), decrypted: its
    // encrypted device reconnects, and a device without the key is still refused.
    let e_uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&cipher=sqlcipher&key=n3t",
        at("e.db")
    );
    let e = Connection::open(&e_uri).unwrap();
    let e_addr = e.bound_addrs()[0].to_string();
    let e_port = e_addr.rsplit(':').next().unwrap().to_string();
    e.execute("CREATE TABLE t(v, row_owner)", []).unwrap();
    let de = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://{e_addr}&cipher=sqlcipher&key=n3t",
        at("de.db")
    ))
    .unwrap();
    row_reaches(&de, &e, "encrypted");
    drop(e);
    run(&[
        "decrypt",
        &format!("file:{}?cipher=sqlcipher&key=n3t", at("e.db")),
        &at("ed.db"),
    ]);
    let e = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{e_port}",
        at("ed.db")
    ))
    .unwrap();
    row_reaches(&de, &e, "after decrypt");
    let stranger = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{e_port}",
        at("stranger.db")
    ))
    .unwrap();
    let refused = stranger.wait_until_ready(Duration::from_millis(500));
    assert!(refused.is_err(), "a device without the network key got in");
    drop(stranger);
    drop(de);
    drop(e);
    // Encrypted again, the decrypted file keeps the network key it holds, and `encrypt` does
    // not say it has none (the cluster walkthrough was told to remove the new file).
    let said = run(&[
        "encrypt",
        &at("ed.db"),
        &format!("file:{}?cipher=sqlcipher&key=an0ther", at("ede.db")),
    ]);
    assert!(!said.contains("no network key"), "{said}");

    // A plain primary with a network key (`key=` without cipher=), encrypted with that key
    // named on the source: its keyed device reconnects, a device without the key stays out.
    let k_uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&key=n3tw0rk",
        at("k.db")
    );
    let k = Connection::open(&k_uri).unwrap();
    let k_addr = k.bound_addrs()[0].to_string();
    let k_port = k_addr.rsplit(':').next().unwrap().to_string();
    k.execute("CREATE TABLE t(v, row_owner)", []).unwrap();
    let dk = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://{k_addr}&key=n3tw0rk",
        at("dk.db")
    ))
    .unwrap();
    row_reaches(&dk, &k, "keyed");
    drop(k);
    run(&[
        "encrypt",
        &format!("file:{}?key=n3tw0rk", at("k.db")),
        &format!("file:{}?cipher=sqlcipher&key=d1sk", at("ke.db")),
    ]);
    let k = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{k_port}&cipher=sqlcipher&key=d1sk",
        at("ke.db")
    ))
    .unwrap();
    row_reaches(&dk, &k, "after encrypting a keyed network");
    let stranger = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{k_port}",
        at("stranger2.db")
    ))
    .unwrap();
    let refused = stranger.wait_until_ready(Duration::from_millis(500));
    assert!(refused.is_err(), "a device without the network key got in");
}
