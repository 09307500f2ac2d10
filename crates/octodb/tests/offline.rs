//! Offline work, restarts, catch-up, initial download and opening rules, SPEC §2, §3.4, §5.
//! Real files in temp dirs, real loopback sockets; every wait is on a condition.
mod common;
use common::*;
use octodb::{Connection, Error, Event, SyncStatus};
use std::path::Path;
use tokio::sync::broadcast::error::TryRecvError;

fn reopen_primary(path: &Path, port: u16) -> Connection {
    Connection::open(&primary_uri(path, port)).expect("reopen primary on the same port")
}

fn status(c: &Connection) -> SyncStatus {
    c.sync_status().expect("sync_status")
}

fn wait_connected(c: &Connection, connected: bool) -> SyncStatus {
    c.wait_for(DEADLINE, |s| s.connected == connected)
        .unwrap_or_else(|e| panic!("waiting for connected = {connected}: {e}"))
}

/// Gather events until `done` holds for those gathered (events are sent just after the state
/// they report is committed, so a status check alone can run ahead of them).
fn events_until(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    wait_until(what, || loop {
        match events.try_recv() {
            Ok(e) => seen.push(e),
            Err(TryRecvError::Lagged(n)) => panic!("{n} events were lost"),
            Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => {
                return done(&seen).then_some(());
            }
        }
    });
    seen
}

fn rows_received(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| match e {
            Event::DataReceived { rows, .. } => *rows,
            _ => 0,
        })
        .sum()
}

fn column_i64(c: &Connection, sql: &str) -> Vec<i64> {
    c.query(sql, [])
        .unwrap()
        .iter()
        .map(|r| r.get::<i64>(0).unwrap())
        .collect()
}

#[test]
fn offline_transactions_arrive_once_each_and_in_order() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    let port = port_of(&p);
    for sql in [
        "CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, row_owner)",
        "CREATE TABLE seqs(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, row_owner)",
        // Local (no row_owner): on the primary it records the order in which rows were applied.
        "CREATE TABLE arrivals(pos INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
        "CREATE TRIGGER seq_arrival AFTER INSERT ON seqs BEGIN INSERT INTO arrivals(n) VALUES (NEW.n); END",
    ] {
        p.execute(sql, []).unwrap();
    }
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let mut d = Connection::open(&d_uri).unwrap();
    let user = ready(&d).user_id.expect("the device has a user");
    wait_count(
        &d,
        "SELECT count(*) FROM sqlite_master WHERE name = 'seq_arrival'",
        1,
    );
    d.execute("INSERT INTO counter(n) VALUES (0)", []).unwrap();
    let counter = d.last_insert_rowid();
    wait_outbox_empty(&d);

    // The primary goes away; the device keeps working.
    drop(p);
    wait_connected(&d, false);
    for n in 1..=1000i64 {
        let tx = d.transaction().unwrap();
        tx.execute("UPDATE counter SET n = ?1 WHERE id = ?2", [n, counter])
            .unwrap();
        tx.execute("INSERT INTO seqs(n) VALUES (?1)", [n]).unwrap();
        tx.commit().unwrap();
    }
    assert_eq!(status(&d).outbox_len, 1000);
    assert_eq!(count(&d, "SELECT count(*) FROM seqs"), 1000);

    // The outbox is durable: a restart of the device (still offline) keeps all of it.
    drop(d);
    let d = Connection::open(&d_uri).unwrap();
    assert_eq!(status(&d).outbox_len, 1000);
    assert_eq!(count(&d, "SELECT count(*) FROM seqs"), 1000);

    // The primary comes back on the same address; the device reconnects by itself.
    let p = reopen_primary(&c.path("p.db"), port);
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM seqs", 1000);
    assert_eq!(count(&p, "SELECT count(DISTINCT n) FROM seqs"), 1000);
    assert_eq!(
        count(&p, "SELECT count(*) FROM seqs WHERE n BETWEEN 1 AND 1000"),
        1000
    );
    assert_eq!(
        count(
            &p,
            &format!("SELECT count(*) FROM seqs WHERE row_owner = {user}")
        ),
        1000
    );
    assert_eq!(
        count(&p, &format!("SELECT n FROM counter WHERE id = {counter}")),
        1000
    );
    // Applied at the primary in the order they were committed on the device.
    let order = column_i64(&p, "SELECT n FROM arrivals ORDER BY pos");
    assert_eq!(order, (1..=1000).collect::<Vec<_>>());
    let s = status(&d);
    assert_eq!(s.last_rejected, None, "nothing may be rejected");
    assert_eq!(s.outbox_len, 0);

    // A restart of the device does not send anything again: after a marker round trip the
    // primary still has each row once.
    drop(d);
    let d = Connection::open(&d_uri).unwrap();
    wait_connected(&d, true);
    d.execute("INSERT INTO seqs(n) VALUES (1001)", []).unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM seqs WHERE n = 1001", 1);
    assert_eq!(count(&p, "SELECT count(*) FROM seqs"), 1001);
    let order = column_i64(&p, "SELECT n FROM arrivals ORDER BY pos");
    assert_eq!(order, (1..=1001).collect::<Vec<_>>());
    assert_eq!(
        count(&p, &format!("SELECT n FROM counter WHERE id = {counter}")),
        1000
    );
    assert_eq!(status(&d).last_rejected, None);
}

/// The engine's writer checkpoints the WAL after its own commits; an app still does when the
/// engine has not written for a while, as on a device offline.
#[test]
fn an_offline_devices_write_ahead_log_stays_bounded() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)",
        [],
    )
    .unwrap();
    let d = Connection::open(&device_uri(&c.path("d.db"), &addr_of(&p))).unwrap();
    ready(&d);
    wait_count(
        &d,
        "SELECT count(*) FROM sqlite_master WHERE name = 'notes'",
        1,
    );
    drop((d, p));
    // Reopened towards a socket that accepts nothing: no session, so its engine writes
    // nothing (a port left free could be taken by another test's primary meanwhile).
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere_addr = nowhere.local_addr().unwrap().to_string();
    let mut d = Connection::open(&device_uri(&c.path("d.db"), &nowhere_addr)).unwrap();
    // About 50 MB of rows, over 12,000 pages of WAL were it never checkpointed.
    let body = "x".repeat(1000);
    for _ in 0..500 {
        let tx = d.transaction().unwrap();
        for _ in 0..100 {
            tx.execute("INSERT INTO notes(body) VALUES (?1)", [&body])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    assert_eq!(count(&d, "SELECT count(*) FROM notes"), 50_000);
    let wal = std::fs::metadata(c.path("d.db-wal")).map_or(0, |m| m.len());
    assert!(
        wal < 24 << 20,
        "the WAL grew to {wal} bytes: it is not checkpointed"
    );
}

#[test]
fn devices_reconnect_by_themselves_after_a_primary_restart() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    let port = port_of(&p);
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    let d1 = c.device("d1.db", &p);
    let d2 = c.device("d2.db", &p);
    let (s1, s2) = (ready(&d1), ready(&d2));
    p.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();
    for d in [&d1, &d2] {
        wait_count(d, "SELECT count(*) FROM t WHERE v = 'before'", 1);
    }
    let seq_before = status(&p).last_seq;

    let mut events = d1.subscribe();
    drop(p);
    for d in [&d1, &d2] {
        wait_connected(d, false);
    }
    // The app hears why, with the primary's address.
    let why = wait_until("a Disconnected event", || match events.try_recv() {
        Ok(Event::Disconnected { reason }) => Some(reason),
        _ => None,
    });
    assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");
    // Written while the primary is down.
    d1.execute("INSERT INTO t(v) VALUES ('d1 during')", [])
        .unwrap();

    let p = reopen_primary(&c.path("p.db"), port);
    assert!(status(&p).last_seq >= seq_before, "the log survives");
    for d in [&d1, &d2] {
        wait_connected(d, true);
    }
    p.wait_for(DEADLINE, |s| s.peers.len() == 2)
        .expect("both devices are connected to the primary");
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'd1 during'", 1);

    // Both ways after the restart.
    d2.execute("INSERT INTO t(v) VALUES ('d2 after')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'd2 after'", 1);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('p after', '*')", [])
        .unwrap();
    for d in [&d1, &d2] {
        wait_count(d, "SELECT count(*) FROM t WHERE v = 'p after'", 1);
        wait_outbox_empty(d);
    }
    // The devices are still the same nodes, and at the primary's position.
    let last = status(&p).last_seq;
    for (d, before) in [(&d1, &s1), (&d2, &s2)] {
        let s = d.wait_for(DEADLINE, |s| s.last_seq == last).unwrap();
        assert_eq!(
            (s.node_id, s.user_id),
            (before.node_id, before.user_id),
            "a device keeps its identity across a primary restart"
        );
        assert_eq!(s.last_rejected, None);
    }
    // Each user's rows stay with that user: d2 never sees d1's row.
    assert_eq!(
        count(&d2, "SELECT count(*) FROM t WHERE v = 'd1 during'"),
        0
    );
    assert_eq!(count(&d1, "SELECT count(*) FROM t WHERE v = 'd2 after'"), 0);
}

#[test]
fn a_device_back_online_gets_what_it_missed_from_its_last_sequence() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    let port = port_of(&p);
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('first', '*')", [])
        .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = Connection::open(&d_uri).unwrap();
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM t", 1);
    let p_seq = status(&p).last_seq;
    let seq_before = d
        .wait_for(DEADLINE, |s| s.last_seq == p_seq)
        .unwrap()
        .last_seq;

    drop(d); // offline
    for i in 0..500 {
        p.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
            [format!("missed {i}")],
        )
        .unwrap();
    }
    let p_seq = status(&p).last_seq;
    assert!(p_seq >= seq_before + 500, "one sequence number per commit");

    // Reopen the device while the primary is unreachable, to watch the whole catch-up.
    drop(p);
    let d = Connection::open(&d_uri).unwrap();
    let mut events = d.subscribe();
    let s = status(&d);
    assert_eq!(s.last_seq, seq_before, "the applied position is durable");
    assert!(
        s.db_is_ready,
        "a device that downloaded once is ready offline"
    );
    assert_eq!(count(&d, "SELECT count(*) FROM t"), 1);

    let p = reopen_primary(&c.path("p.db"), port);
    wait_count(&d, "SELECT count(*) FROM t", 501);
    // (The primary's log moved on by the marker of the epoch it began at its restart.)
    let s = d
        .wait_for(DEADLINE, |s| {
            s.last_seq > p_seq && s.last_seq == status(&p).last_seq
        })
        .unwrap();
    assert_eq!(s.last_seq, p_seq + 1);
    assert_eq!(count(&d, "SELECT count(DISTINCT v) FROM t"), 501);
    for i in [0, 250, 499] {
        assert_eq!(
            count(
                &d,
                &format!("SELECT count(*) FROM t WHERE v = 'missed {i}'")
            ),
            1
        );
    }
    // Only what it missed was sent: no new download, and exactly the 500 missed rows.
    let events = events_until(&mut events, "DataReceived events for 500 rows", |e| {
        rows_received(e) >= 500
    });
    assert_eq!(rows_received(&events), 500, "{events:?}");
    for e in &events {
        match e {
            Event::DataReceived { seq, .. } => assert!(*seq > seq_before, "{e:?}: already had it"),
            Event::Download { .. } => panic!("a device that has data downloaded again: {events:?}"),
            _ => {}
        }
    }
}

/// Rows it may not see are not sent to a device, but it still hears how far the log went, so
/// that it does not read them again at each reconnect: also when the primary is idle by the
/// time the device comes back (no later commit moves the position for it).
#[test]
fn a_device_back_online_hears_its_position_past_rows_it_may_not_see() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    approve_by_data(&p);
    let port = port_of(&p);
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('first', '*')", [])
        .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = Connection::open(&d_uri).unwrap();
    d.execute_batch("PRAGMA user_signup='ann'").unwrap();
    let user = ready(&d).user_id.expect("signed up");
    wait_count(&d, "SELECT count(*) FROM t", 1);
    drop(d); // offline
    for i in 0..20 {
        p.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, ?2)",
            (format!("another user's {i}"), user + 1),
        )
        .unwrap();
    }
    // The primary restarts after those commits, so only the marker of the epoch it begins
    // (`log::epochs`, which no device receives) moves its log once it is back.
    let before = status(&p).last_seq;
    drop(p);
    let p = Connection::open(&format!("{}&auth=user", primary_uri(&c.path("p.db"), port)))
        .expect("the primary reopens on its port");
    approve_by_data(&p);
    let p_seq = wait_until("the primary's new epoch", || {
        let seq = status(&p).last_seq;
        (seq > before && p.feed_position() == seq).then_some(seq)
    });
    let d = Connection::open(&d_uri).unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.last_seq >= p_seq)
        .expect("the device hears the primary's position though nothing new is for it");
    assert_eq!(s.last_seq, p_seq);
    assert_eq!(status(&p).last_seq, p_seq);
    assert_eq!(
        count(&d, "SELECT count(*) FROM t"),
        1,
        "no other user's row arrived"
    );
}

#[test]
fn an_empty_device_downloads_100k_rows_with_progress() {
    const N: i64 = 100_000;
    let c = Cluster::new();
    let mut p = c.primary("p.db");
    let port = port_of(&p);
    p.execute(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, row_owner)",
        [],
    )
    .unwrap();
    let started = std::time::Instant::now();
    {
        let tx = p.transaction().unwrap();
        let mut ins = tx
            .prepare("INSERT INTO items(name, qty, row_owner) VALUES (?1, ?2, '*')")
            .unwrap();
        for i in 0..N {
            ins.execute((format!("item {i}"), i)).unwrap();
        }
        drop(ins);
        tx.commit().unwrap();
    }
    eprintln!(
        "inserting {N} rows on the primary took {:?}",
        started.elapsed()
    );
    // Stop the primary so that the device is subscribed before its first connection.
    drop(p);
    let d = Connection::open(&device_uri(&c.path("d.db"), &format!("127.0.0.1:{port}"))).unwrap();
    let mut events = d.subscribe();
    let s = status(&d);
    assert!(
        !s.db_is_ready,
        "an empty device is not ready before its download"
    );
    assert_eq!(s.node_id, 0);

    p = reopen_primary(&c.path("p.db"), port);
    let started = std::time::Instant::now();
    let s = ready(&d);
    eprintln!("downloading {N} rows took {:?}", started.elapsed());
    assert_eq!(s.download, None, "no download is running once ready");
    assert_eq!(s.last_seq, status(&p).last_seq);
    assert_eq!(count(&d, "SELECT count(*) FROM items"), N);
    assert_eq!(count(&d, "SELECT count(DISTINCT id) FROM items"), N);
    assert_eq!(count(&d, "SELECT sum(qty) FROM items"), N * (N - 1) / 2);
    assert_eq!(
        count(&d, "SELECT count(*) FROM items WHERE name = 'item 99999'"),
        1
    );

    let events = events_until(&mut events, "the Ready event", |e| {
        e.contains(&Event::Ready)
    });
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Download { rows, total } => Some((*rows, *total)),
            _ => None,
        })
        .collect();
    assert!(!progress.is_empty(), "no Download event: {events:?}");
    // The total is 0 until the primary has counted the rows (beside sending the first ones),
    // then theirs.
    assert!(
        progress
            .iter()
            .all(|&(_, total)| total == 0 || total == N as u64),
        "{progress:?}"
    );
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "progress goes forward: {progress:?}"
    );
    assert_eq!(progress.last(), Some(&(N as u64, N as u64)));

    // Rows committed after the download follow the stream.
    p.execute(
        "INSERT INTO items(name, qty, row_owner) VALUES ('after', 0, '*')",
        [],
    )
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM items", N + 1);
}

/// A download cut off by the primary's restart starts over when the device reconnects and
/// ends whole: every row once, and what the primary committed in between too.
#[test]
fn a_download_cut_off_by_a_primary_restart_ends_whole() {
    const N: i64 = 300_000;
    let c = Cluster::new();
    let p = c.primary("p.db");
    let port = port_of(&p);
    p.execute_batch(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, qty INTEGER, row_owner);
         WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < 299999)
           INSERT INTO items(qty, row_owner) SELECT i, '*' FROM k;",
    )
    .unwrap();
    drop(p);
    let d = Connection::open(&device_uri(&c.path("d.db"), &format!("127.0.0.1:{port}"))).unwrap();
    let mut events = d.subscribe();
    let p = reopen_primary(&c.path("p.db"), port);
    // Cut it off once some rows, not all, have arrived.
    let cut_at = loop {
        match octodb::next_event(&mut events, DEADLINE) {
            octodb::Next::Event(Event::Download { rows, .. }) if rows > 0 => break rows,
            octodb::Next::Event(Event::Ready) => panic!("the download ended before the cut"),
            octodb::Next::Event(_) => {}
            other => panic!("waiting for download progress: {other:?}"),
        }
    };
    drop(p);
    eprintln!("cut off after {cut_at} of {N} rows");
    assert!(
        !status(&d).db_is_ready,
        "cut off after {cut_at} rows, the device is not ready"
    );
    let p = reopen_primary(&c.path("p.db"), port);
    p.execute("INSERT INTO items(qty, row_owner) VALUES (-1, '*')", [])
        .unwrap();
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM items", N + 1);
    assert_eq!(count(&d, "SELECT count(DISTINCT id) FROM items"), N + 1);
    assert_eq!(count(&d, "SELECT sum(qty) FROM items"), N * (N - 1) / 2 - 1);
}

#[test]
fn malformed_uris_are_refused_at_open_naming_the_parameter() {
    let c = Cluster::new();
    let dir = c.dir.path().display().to_string();
    // (uri, the parameter named, a phrase of the explanation) as in uri.rs's unit tests.
    // `P?`/`S?`: a valid primary/secondary prefix, `B=`: a primary about to get `bind=`,
    // `HEX`: a valid hexkey; `file:a` is a file in the temp dir.
    let cases = [
        ("file:", "`path`", "empty"),
        ("file:?node=primary", "`path`", "empty"),
        ("", "`path`", "empty"),
        ("file:a%zz", "`path`", "%25"),
        ("file://host/a.db", "`path`", "remote host"),
        ("a.db?node=primary", "`path`", "file:PATH?"),
        ("file:a?mode=ro&nodes=primary", "`nodes`", "unknown"),
        ("file:a?bogus=1", "`bogus`", "mode, cache"),
        ("P?mode=ro", "`mode`", "plain local"),
        ("S?cache=shared", "`cache`", "plain local"),
        ("P?vfs=unix", "`vfs`", "without `node`"),
        ("P?immutable=1", "`immutable`", "SQLite's own"),
        ("P?node=primary", "`node`", "twice"),
        ("file:a?node=", "`node`", "empty value"),
        ("file:a?node", "`node`", "empty value"),
        ("file:a?node=leader", "`node`", "node=primary or"),
        ("P?key=a%2", "`key`", "%25"),
        ("P?key=%FF", "`key`", "UTF-8"),
        ("P?auth=root", "`auth`", "auth=node or"),
        ("S?auth=user", "`auth`", "primaries only"),
        ("S?bind=tcp://h:2", "`bind`", "not supported"),
        ("file:a?node=secondary", "`connect`", "add connect="),
        ("file:a?node=primary", "`bind`", "add e.g. bind="),
        ("B=h:1", "`bind`", "tcp://HOST:PORT"),
        ("B=tcp://localhost", "`bind`", "has no port"),
        ("B=tcp://h:", "`bind`", "has no port"),
        ("B=tcp://:1", "`bind`", "has no host"),
        ("B=tcp://h:70000", "`bind`", "0 to 65535"),
        ("B=tcp://h:http", "`bind`", "0 to 65535"),
        ("B=tcp://h/x:1", "`bind`", "hostname"),
        ("B=tcp://::1:1", "`bind`", "brackets"),
        ("B=tcp://[zz]:1", "`bind`", "IPv6"),
        ("B=tcp://h:1,", "`bind`", "empty entry"),
        ("B=tcp://h:1&connect=tcp://h:0", "`connect`", "port 0"),
        ("file:a?bind=tcp://h:1", "`bind`", "node="),
        ("file:a?connect=tcp://h:1", "`connect`", "node="),
        ("file:a?auth=user", "`auth`", "node="),
        ("file:a?cipher=aes256&key=k", "`cipher`", "AES-256"),
        ("file:a?key=k", "`key`", "node="),
        ("file:a?hexkey=00", "`hexkey`", "node="),
        ("file::memory:?node=primary", "`node`", ":memory:"),
        ("P?key=k&hexkey=HEX", "`hexkey`", "`key`"),
        ("P?cipher=aes256", "`key`", "`cipher`"),
        ("P?cipher=rot13&key=k", "`cipher`", "cipher=sqlcipher"),
        ("P?hexkey=HEXa", "`hexkey`", "odd"),
        ("P?hexkey=zzHEX", "`hexkey`", "not a hex digit"),
        ("P?hexkey=abcd", "`hexkey`", "shorter than 32"),
    ];
    for (uri, param, phrase) in cases {
        let uri = uri
            .replace("P?", "file:a?node=primary&bind=tcp://h:1&")
            .replace("S?", "file:a?node=secondary&connect=tcp://h:1&")
            .replace("B=", "file:a?node=primary&bind=")
            .replace("HEX", &"ab".repeat(16))
            .replace("file:a", &format!("file:{dir}/a"));
        let err = match Connection::open(&uri) {
            Ok(_) => panic!("{uri}: expected an error, the database opened"),
            Err(e) => e,
        };
        assert!(matches!(err, Error::Uri(_)), "{uri}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(param), "{uri}: `{msg}` does not name {param}");
        assert!(msg.contains(phrase), "{uri}: `{msg}` lacks `{phrase}`");
    }
    // Nothing was created by a refused open.
    let left: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "refused opens created {left:?}");
}

#[test]
fn a_file_open_in_another_process_is_refused_and_left_intact() {
    let c = Cluster::new();
    let path = c.path("held.db");
    let uri = primary_uri(&path, 0);
    {
        let db = Connection::open(&uri).unwrap();
        db.execute("CREATE TABLE t(x)", []).unwrap();
        db.execute("INSERT INTO t VALUES (42)", []).unwrap();
    }
    // Another process holds the lock: the same kind of lock the engine takes, on the side file.
    let mut lock_file = path.clone().into_os_string();
    lock_file.push(".octolock");
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_file)
        .expect("the engine made its lock file");
    holder.try_lock().expect("the lock is free once closed");

    let device = device_uri(&path, "127.0.0.1:9");
    for u in [uri.as_str(), device.as_str()] {
        let err = match Connection::open(u) {
            Ok(_) => panic!("{u}: opened a file held by another process"),
            Err(e) => e,
        };
        assert!(matches!(err, Error::Locked { .. }), "{u}: {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("already open in another process") && msg.contains("held.db"),
            "{u}: {msg}"
        );
    }

    // Once the other process lets go, the file opens with its data unharmed.
    drop(holder);
    let db = Connection::open(&uri).unwrap();
    assert_eq!(count(&db, "SELECT x FROM t"), 42);
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn a_uri_without_node_is_a_plain_local_database() {
    let c = Cluster::new();
    let path = c.path("local.db");
    let mut db = Connection::open(&format!("file:{}", path.display())).unwrap();
    assert_eq!(db.role(), None);
    assert_eq!(db.public_key(), "", "a plain database has no node key");
    assert!(db.bound_addrs().is_empty());
    let s = status(&db);
    assert_eq!(s.node_type, "local");
    assert!(s.db_is_ready);
    assert!(!s.connected);
    assert_eq!(s.outbox_len, 0);

    // Ordinary SQL; a `row_owner` column means nothing special here.
    db.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL, row_owner)",
        [],
    )
    .unwrap();
    db.execute("INSERT INTO notes(body) VALUES ('one')", [])
        .unwrap();
    assert_eq!(db.last_insert_rowid(), 1, "plain SQLite rowids");
    db.execute("INSERT INTO notes(body, row_owner) VALUES ('two', '*')", [])
        .unwrap();
    assert_eq!(db.last_insert_rowid(), 2);
    assert_eq!(db.changes(), 1);
    assert_eq!(
        db.execute("UPDATE notes SET body = body || '!'", [])
            .unwrap(),
        2
    );
    {
        let tx = db.transaction().unwrap();
        tx.execute("DELETE FROM notes", []).unwrap();
        tx.rollback().unwrap();
    }
    assert_eq!(count(&db, "SELECT count(*) FROM notes"), 2);
    {
        let tx = db.transaction().unwrap();
        tx.execute("INSERT INTO notes(body) VALUES ('three')", [])
            .unwrap();
        tx.commit().unwrap();
    }
    let err = db
        .execute("INSERT INTO notes(body) VALUES (NULL)", [])
        .unwrap_err();
    assert!(err.to_string().contains("NOT NULL"), "{err}");
    let bodies: Vec<String> = db
        .query("SELECT body FROM notes ORDER BY id", [])
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect();
    assert_eq!(bodies, ["one!", "two!", "three"]);
    // Schema changes are allowed, as in SQLite.
    db.execute("ALTER TABLE notes ADD COLUMN extra", [])
        .unwrap();
    db.execute("CREATE INDEX notes_body ON notes(body)", [])
        .unwrap();
    drop(db);

    // A bare path works too, and the data is in the file.
    let db = Connection::open(path.to_str().unwrap()).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM notes"), 3);
    // Only the user's schema is in it: no engine tables, SQLite's default journal, no lock file.
    let tables: Vec<String> = db
        .query("SELECT name FROM sqlite_master WHERE type = 'table'", [])
        .unwrap()
        .iter()
        .map(|r| r.get(0).unwrap())
        .collect();
    assert_eq!(tables, ["notes"]);
    let mode: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let files: Vec<_> = std::fs::read_dir(c.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["local.db"], "nothing but the database file");
    // Several connections and SQLite's own URI parameters, as with plain SQLite.
    let ro = Connection::open(&format!("file:{}?mode=ro", path.display())).unwrap();
    assert_eq!(count(&ro, "SELECT count(*) FROM notes"), 3);
    let err = ro.execute("DELETE FROM notes", []).unwrap_err();
    assert!(err.to_string().contains("readonly"), "{err}");
    drop((db, ro));
    // It is an ordinary SQLite file that plain SQLite reads.
    let plain = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = plain
        .query_row("SELECT count(*) FROM notes WHERE body = 'two!'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 1);
}

/// A device that cannot apply what the primaries send (a trigger from the primaries refuses
/// the row there) keeps trying, and says why in `sync_error`.
#[test]
fn a_device_that_cannot_apply_a_row_says_why_in_its_status() {
    let c = common::Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         CREATE TRIGGER refused_on_devices BEFORE INSERT ON t
           WHEN this_user() IS NOT NULL AND NEW.v = 'poison'
           BEGIN SELECT RAISE(ABORT, 'devices refuse this row'); END;",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    common::ready(&d);
    assert_eq!(d.sync_status().unwrap().sync_error, None);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('poison', '*')", [])
        .unwrap();
    let s = d
        .wait_for(common::DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("devices refuse this row"))
        })
        .unwrap();
    assert_eq!(common::count(&d, "SELECT count(*) FROM t"), 0);
    assert!(s.last_seq < p.sync_status().unwrap().last_seq);
}

/// A local row (row_owner NULL) holding a unique value that a row from the primaries also
/// holds stops the device's sync; its status names the row and what to do, and once the app
/// changes its local row the sync resumes where it stopped.
#[test]
fn a_local_row_in_the_way_of_the_primaries_row_is_named_and_sync_resumes_once_moved() {
    let c = common::Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, row_owner)")
        .unwrap();
    let d = c.device("d.db", &p);
    common::ready(&d);
    d.execute("INSERT INTO t(k, row_owner) VALUES ('x', NULL)", [])
        .unwrap();
    p.execute("INSERT INTO t(k, row_owner) VALUES ('x', '*')", [])
        .unwrap();
    p.execute("INSERT INTO t(k, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    let s = d
        .wait_for(common::DEADLINE, |s| s.sync_error.is_some())
        .unwrap();
    let error = s.sync_error.unwrap_or_default();
    assert!(
        error.contains("of `t` from the primaries") && error.contains("change or delete that row"),
        "{error}"
    );
    d.execute("UPDATE t SET k = 'x (mine)' WHERE row_owner IS NULL", [])
        .unwrap();
    common::wait_count(&d, "SELECT count(*) FROM t WHERE k IN ('x', 'after')", 2);
    assert_eq!(
        common::count(&d, "SELECT count(*) FROM t WHERE k = 'x (mine)'"),
        1
    );
}

/// A local row (row_owner NULL) under the id a row from the primaries has is never replaced
/// by it (the app's local data is its own): the sync stops, naming the row, until the app
/// deletes its row (inserting it again under another id, to keep it).
#[test]
fn a_local_row_under_the_id_of_the_primaries_row_is_kept_and_named() {
    let c = common::Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch("CREATE TABLE drafts(id INTEGER PRIMARY KEY, body TEXT, row_owner)")
        .unwrap();
    let d = c.device("d.db", &p);
    let user = common::ready(&d).user_id.expect("a user");
    d.execute(
        "INSERT INTO drafts(id, body, row_owner) VALUES (1, 'my unsent draft', NULL)",
        [],
    )
    .unwrap();
    p.execute(
        "INSERT INTO drafts(id, body, row_owner) VALUES (1, 'welcome', ?1)",
        [user],
    )
    .unwrap();
    let s = d
        .wait_for(common::DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("row only this device has"))
        })
        .unwrap();
    assert!(s
        .sync_error
        .unwrap_or_default()
        .contains("row 1 of `drafts`"));
    assert_eq!(
        common::text(&d, "SELECT body FROM drafts WHERE id = 1"),
        "my unsent draft"
    );
    d.execute_batch(
        "BEGIN; DELETE FROM drafts WHERE id = 1;
         INSERT INTO drafts(body, row_owner) VALUES ('my unsent draft', NULL); COMMIT;",
    )
    .unwrap();
    common::wait_count(&d, "SELECT count(*) FROM drafts WHERE body = 'welcome'", 1);
    assert_eq!(
        common::count(&d, "SELECT count(*) FROM drafts WHERE row_owner IS NULL"),
        1
    );
}

/// An app opening a connection per request (a web backend's threads, each opening the node,
/// writing and closing): every open succeeds, waiting for the node that a close is stopping;
/// it was refused as "already open in another process", naming this very process.
#[test]
fn a_node_opened_and_closed_by_many_threads_at_once_opens_every_time() {
    let c = Cluster::new();
    let uri = primary_uri(&c.path("p.db"), common::process::free_port());
    Connection::open(&uri)
        .unwrap()
        .execute(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
            [],
        )
        .unwrap();
    let threads: Vec<_> = (0..2)
        .map(|thread| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let p = Connection::open(&uri)
                        .unwrap_or_else(|e| panic!("open {i} of thread {thread}: {e}"));
                    p.execute(
                        "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
                        [format!("{thread}/{i}")],
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("every open and insert succeeds");
    }
    let p = Connection::open(&uri).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 80);
}

/// A primary opened and closed over and over in one process leaves nothing of itself behind:
/// its state outlived some stops (a task waiting for the log to move, which nothing moved any
/// more), each keeping its connections to the file open, until opens failed for want of file
/// descriptors.
#[test]
fn a_primary_opened_and_closed_over_and_over_leaves_no_file_open() {
    let c = Cluster::new();
    let uri = primary_uri(&c.path("p.db"), common::process::free_port());
    for _ in 0..150 {
        drop(Connection::open(&uri).unwrap());
    }
    wait_closed(&c, "p.db");
}

/// An app asks after its transactions by id, also after a restart: which wait, whether one
/// was accepted or rejected and why, and waits for one's decision (the Rust walkthrough: a
/// decision was heard only by an app subscribed before the commit, and lost at a reopen).
#[test]
fn a_device_tells_each_transactions_decision_by_its_id_also_after_a_restart() {
    use octodb::TxnStatus;
    let c = Cluster::new();
    let p = c.primary("p.db");
    let port = port_of(&p);
    p.execute(
        "CREATE TABLE codes(id INTEGER PRIMARY KEY, code TEXT UNIQUE, row_owner)",
        [],
    )
    .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = Connection::open(&d_uri).unwrap();
    ready(&d);
    wait_count(
        &d,
        "SELECT count(*) FROM sqlite_master WHERE name = 'codes'",
        1,
    );

    // Another user's row holds a code: the device does not see it.
    p.execute(
        "INSERT INTO codes(code, row_owner) VALUES ('taken', 999)",
        [],
    )
    .unwrap();
    drop(p);
    wait_connected(&d, false);
    d.execute("INSERT INTO codes(code) VALUES ('taken')", [])
        .unwrap();
    let refused = d.last_txn_id().expect("a transaction id");
    d.execute("INSERT INTO codes(code) VALUES ('mine')", [])
        .unwrap();
    let kept = d.last_txn_id().expect("a transaction id");
    assert_eq!(d.txn_status(kept).unwrap(), TxnStatus::Pending);
    let waited = d.wait_for_txn(kept, std::time::Duration::from_millis(200));
    assert!(
        matches!(&waited, Err(Error::Timeout(why)) if why.contains(&format!("transaction {kept}"))
            && why.contains("2 transactions of its own wait in its outbox")),
        "{waited:?}"
    );

    // A restart: the ids are all the app has left.
    drop(d);
    let d = Connection::open(&d_uri).unwrap();
    assert_eq!(d.pending_txns().unwrap(), [refused, kept]);
    assert_eq!(
        column_i64(&d, "PRAGMA pending_txns"),
        [refused as i64, kept as i64]
    );

    // Back online: the primary takes one and refuses the code another row holds.
    let mut events = d.subscribe();
    let p = reopen_primary(&c.path("p.db"), port);
    assert_eq!(d.wait_for_txn(kept, DEADLINE).unwrap(), TxnStatus::Accepted);
    let decided = d.wait_for_txn(refused, DEADLINE).unwrap();
    assert!(
        matches!(&decided, TxnStatus::Rejected { reason, .. } if reason.contains("UNIQUE")),
        "{decided:?}"
    );
    assert!(d.pending_txns().unwrap().is_empty());
    // The events tell the decisions in the primaries' order.
    let heard: Vec<u64> = events_until(&mut events, "both decisions", |seen| {
        seen.iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::TransactionAccepted { .. } | Event::TransactionRejected { .. }
                )
            })
            .count()
            == 2
    })
    .into_iter()
    .filter_map(|e| match e {
        Event::TransactionAccepted { txn_id } | Event::TransactionRejected { txn_id, .. } => {
            Some(txn_id)
        }
        _ => None,
    })
    .collect();
    assert_eq!(heard, [refused, kept]);

    drop(d);
    let d = Connection::open(&d_uri).unwrap();
    assert_eq!(d.txn_status(kept).unwrap(), TxnStatus::Accepted);
    assert_eq!(d.txn_status(refused).unwrap(), decided);
    assert_eq!(d.txn_status(refused + 100).unwrap(), TxnStatus::Unknown);
    // The same in SQL, for the shell and any driver.
    let (status, reason): (String, String) = d
        .query_row(&format!("PRAGMA txn_status({refused})"), [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(status, "rejected");
    assert!(reason.contains("UNIQUE"), "{reason}");
    assert!(matches!(p.txn_status(kept), Err(Error::NotPermitted(_))));
}
