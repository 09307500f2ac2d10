//! A primary's log kept to its newest `log_keep=` entries (issue "Cluster", item 4): a device
//! away for longer downloads again, keeping its pending work; a primary of the cluster that
//! was away for longer catches up from a snapshot. Real files, real loopback sockets.

mod common;

use common::*;
use octodb::{Connection, Event};

/// A primary `p.db` keeping 100 entries of its log, with table `t`.
fn primary_keeping_100(c: &Cluster) -> Connection {
    let p = Connection::open(&format!("{}&log_keep=100", primary_uri(&c.path("p.db"), 0)))
        .expect("open primary");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    p
}

/// `primary_keeping_100` leading a cluster of three (`p2.db`, `p3.db` joined as voters), and
/// the address devices and joining primaries reach it at.
fn three_primaries_keeping_100(c: &Cluster) -> (Connection, String, Connection, Connection) {
    let p1 = primary_keeping_100(c);
    let leader = addr_of(&p1);
    let p2 = joining_primary(&c.path("p2.db"), &leader);
    let p3 = joining_primary(&c.path("p3.db"), &leader);
    wait_voters(&p1, 3);
    (p1, leader, p2, p3)
}

/// `n` commits of one public row each on `p`.
fn commits(p: &Connection, n: usize, what: &str) {
    for i in 0..n {
        p.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
            [format!("{what} {i}")],
        )
        .unwrap();
    }
}

/// Waits until `p`'s log starts past `seq`: compacted.
fn wait_log_cut_past(p: &Connection, seq: u64) -> u64 {
    p.wait_for(DEADLINE, |s| {
        s.log_start.is_some_and(|start| start > seq + 1)
    })
    .expect("the log is compacted")
    .log_start
    .unwrap_or(0)
}

#[test]
fn a_device_away_longer_than_the_log_keeps_downloads_again_keeping_its_work() {
    let c = Cluster::new();
    let p = primary_keeping_100(&c);
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = Connection::open(&d_uri).unwrap();
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('mine, before')", [])
        .unwrap();
    wait_outbox_empty(&d);
    let position = d.sync_status().unwrap().last_seq;
    drop(d);

    // Offline (its primary out of reach), the device works on.
    let nowhere = device_uri(&c.path("d.db"), "127.0.0.1:9");
    let d = Connection::open(&nowhere).unwrap();
    d.execute("INSERT INTO t(v) VALUES ('mine, offline')", [])
        .unwrap();
    drop(d);

    // Meanwhile the primary commits more than its log keeps, and cuts it.
    commits(&p, 300, "while the device was away");
    let last = p.sync_status().unwrap().last_seq;
    // The newest 100 to 110 entries are kept.
    let start = wait_log_cut_past(&p, last - 111);
    assert!(start > position + 1);
    assert_eq!(
        count(&p, "SELECT count(*) FROM _octo_log"),
        (p.sync_status().unwrap().last_seq + 1 - start) as i64
    );

    // Back in reach: it cannot catch up from the log, so it downloads again, keeping its
    // pending work, which then arrives.
    let d = Connection::open(&d_uri).unwrap();
    let mut events = d.subscribe();
    let reason = wait_until("the device hears why it downloads again", || loop {
        match events.try_recv() {
            Ok(Event::PrimaryBehind { reason }) => break Some(reason),
            Ok(_) => continue,
            Err(_) => break None,
        }
    });
    assert!(reason.contains("log_keep"), "{reason}");
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 302);
    wait_count(&d, "SELECT count(*) FROM t", 302);
    assert_eq!(
        text(
            &d,
            "SELECT group_concat(v, '|') FROM (SELECT v FROM t WHERE v LIKE 'mine%' ORDER BY id)"
        ),
        "mine, before|mine, offline"
    );
    assert_eq!(d.sync_status().unwrap().last_rejected, None);

    // A device that was not away that long catches up from the log as before.
    commits(&p, 5, "after");
    wait_count(&d, "SELECT count(*) FROM t", 307);
}

/// A device away longer than the log keeps, whose pending row holds a unique value the
/// primaries gave another row meanwhile: its download writes the primaries' row, its own steps
/// aside until the primaries decide it (rejected: first insert wins), and its other work
/// arrives. (The download stopped at the clash, and the device retried it for good, its other
/// work never sent: the schema walkthrough, 4 of 4.) A row only this device has in that place
/// stops the download, naming it, until the app changes it.
#[test]
fn a_device_away_longer_than_the_log_with_a_unique_clash_downloads_again() {
    let c = Cluster::new();
    let p = primary_keeping_100(&c);
    p.execute_batch(
        "CREATE TABLE tu(id INTEGER PRIMARY KEY, code TEXT UNIQUE, row_owner);
         CREATE TABLE filler(id INTEGER PRIMARY KEY, v TEXT, row_owner);",
    )
    .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = Connection::open(&d_uri).unwrap();
    ready(&d);
    drop(d);

    // Offline: a pending row taking code X, a local row taking code L, other work.
    let nowhere = device_uri(&c.path("d.db"), "127.0.0.1:9");
    let d = Connection::open(&nowhere).unwrap();
    d.execute_batch(
        "INSERT INTO tu(code) VALUES ('X');
         INSERT INTO tu(code, row_owner) VALUES ('L', NULL);
         INSERT INTO filler(v) VALUES ('other work');",
    )
    .unwrap();
    drop(d);

    // The primaries give X and L to rows of their own, and cut their log.
    p.execute_batch(
        "INSERT INTO tu(code, row_owner) VALUES ('X', '*');
         INSERT INTO tu(code, row_owner) VALUES ('L', '*');",
    )
    .unwrap();
    commits(&p, 300, "while the device was away");
    let last = p.sync_status().unwrap().last_seq;
    wait_log_cut_past(&p, last - 111);

    // Back: the local row holding L stops the download, saying which row to change.
    let d = Connection::open(&d_uri).unwrap();
    let stopped = d
        .wait_for(DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("only this device has"))
        })
        .expect("the download stops at the local row");
    let error = stopped.sync_error.unwrap_or_default();
    assert!(error.contains("unique values"), "{error}");
    assert_eq!(count(&d, "SELECT count(*) FROM tu WHERE code = 'L'"), 1);

    // The app moves its local row out of the way; the download goes on.
    d.execute("UPDATE tu SET code = 'L2' WHERE code = 'L'", [])
        .unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM filler WHERE v = 'other work'", 1);
    wait_count(&d, "SELECT count(*) FROM t", 300);
    // The primaries' X is on the device; the device's own X was rejected.
    wait_count(
        &d,
        "SELECT count(*) FROM tu WHERE code = 'X' AND row_owner = '*'",
        1,
    );
    assert_eq!(count(&d, "SELECT count(*) FROM tu WHERE code = 'X'"), 1);
    assert_eq!(count(&p, "SELECT count(*) FROM tu WHERE code = 'X'"), 1);
    let rejected = d.sync_status().unwrap().last_rejected.expect("rejected");
    assert!(
        rejected.reason.contains("first insert wins"),
        "{}",
        rejected.reason
    );
    assert_eq!(count(&d, "SELECT count(*) FROM tu WHERE code = 'L2'"), 1);
}

/// The primaries change the schema while a device is away longer than their log keeps: its
/// download brings the tables, indexes and triggers as they are now, and keeps the device's
/// local rows and pending work in the new shape. (The device kept its old tables for good: the
/// download skipped their statements as "already exists".)
#[test]
fn a_device_away_longer_than_the_log_across_schema_changes_takes_the_new_schema() {
    let c = Cluster::new();
    let p = primary_keeping_100(&c);
    p.execute_batch(
        "CREATE TABLE legacy(id INTEGER PRIMARY KEY, x TEXT, row_owner);
         CREATE INDEX t_v ON t(v);",
    )
    .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = Connection::open(&d_uri).unwrap();
    ready(&d);
    d.execute_batch(
        "INSERT INTO t(v) VALUES ('mine, before');
         INSERT INTO t(v, row_owner) VALUES ('local', NULL);",
    )
    .unwrap();
    wait_outbox_empty(&d);
    drop(d);
    let nowhere = device_uri(&c.path("d.db"), "127.0.0.1:9");
    let d = Connection::open(&nowhere).unwrap();
    d.execute("INSERT INTO t(v) VALUES ('mine, offline')", [])
        .unwrap();
    drop(d);

    p.execute_batch(
        "ALTER TABLE t ADD COLUMN prio INTEGER DEFAULT 3;
         DROP TABLE legacy;
         DROP INDEX t_v;
         CREATE INDEX t_prio ON t(prio);
         CREATE TABLE tags(id INTEGER PRIMARY KEY, tag TEXT, row_owner);",
    )
    .unwrap();
    let seq = p.sync_status().unwrap().last_seq;
    commits(&p, 300, "public");
    wait_log_cut_past(&p, seq);

    let d = Connection::open(&d_uri).unwrap();
    wait_outbox_empty(&d);
    wait_count(&d, "SELECT count(*) FROM t WHERE v LIKE 'public %'", 300);
    let schema = "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master
                  WHERE name NOT LIKE '\\_octo%' ESCAPE '\\' AND name NOT LIKE 'sqlite%'
                  ORDER BY name)";
    assert_eq!(text(&d, schema), text(&p, schema));
    assert_eq!(text(&d, schema), "t,t_prio,tags");
    assert_eq!(
        text(
            &d,
            "SELECT group_concat(v || ':' || prio, '|') FROM (SELECT v, prio FROM t
             WHERE v NOT LIKE 'public %' ORDER BY id)"
        ),
        "mine, before:3|local:3|mine, offline:3",
        "the device's own rows, local and pending ones kept, in the new shape"
    );
    wait_count(
        &p,
        "SELECT count(*) FROM t WHERE v = 'mine, offline' AND prio = 3",
        1,
    );
    // And writes in the new shape replicate.
    d.execute("INSERT INTO tags(tag) VALUES ('new table')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM tags", 1);
}

#[test]
fn a_primary_away_longer_than_the_log_keeps_catches_up_from_a_snapshot() {
    let c = Cluster::new();
    let (p1, leader, p2, p3) = three_primaries_keeping_100(&c);
    let p3_position = p3.sync_status().unwrap().last_seq;
    let p3_port = p3.bound_addrs()[0].port();
    drop(p3);

    // The leader and p2 go on without p3, and the leader cuts its log (and its Raft log).
    commits(&p1, 300, "while p3 was away");
    wait_log_cut_past(&p1, p3_position);
    wait_count(&p2, "SELECT count(*) FROM t", 300);

    // p3 comes back: what it missed is no longer in the leader's log; a snapshot brings it.
    let p3 = Connection::open(&format!(
        "{}&connect=tcp://{leader}",
        primary_uri(&c.path("p3.db"), p3_port)
    ))
    .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t", 300);
    let table = "SELECT id, v, row_owner FROM t ORDER BY id";
    assert_eq!(
        file_rows(&c.path("p3.db"), table),
        file_rows(&c.path("p.db"), table)
    );
    // And it follows on.
    commits(&p1, 3, "after");
    wait_count(&p3, "SELECT count(*) FROM t", 303);
    drop(p2);
}

/// A fourth primary joins a cluster whose leader cut its log, while a device writes through
/// the leader: it starts from a snapshot taken under that load, and ends holding every row.
#[test]
fn a_primary_joins_under_load_after_the_log_was_cut() {
    let c = Cluster::new();
    let (p1, leader, p2, p3) = three_primaries_keeping_100(&c);
    commits(&p1, 200, "before");
    wait_log_cut_past(&p1, 50);

    let d = c.device("d.db", &p1);
    ready(&d);
    const WRITES: usize = 300;
    let writer = std::thread::spawn(move || {
        for i in 0..WRITES {
            d.execute("INSERT INTO t(v) VALUES (?1)", [format!("device {i}")])
                .unwrap();
        }
        wait_outbox_empty(&d);
        d
    });
    let p4 = joining_primary(&c.path("p4.db"), &leader);
    let d = writer.join().expect("the device's writes");
    wait_voters(&p1, 4);
    let want = (200 + WRITES) as i64;
    for p in [&p1, &p2, &p3, &p4] {
        wait_count(p, "SELECT count(*) FROM t", want);
    }
    let table = "SELECT id, v, row_owner FROM t ORDER BY id";
    let leaders = file_rows(&c.path("p.db"), table);
    for name in ["p2.db", "p3.db", "p4.db"] {
        assert_eq!(file_rows(&c.path(name), table), leaders, "{name}");
    }
    drop(d);
}

/// A table and a column the primaries renamed while a device was away longer than their log
/// keeps: the device's local rows (and pending work) come back in the renamed table, their
/// values under the renamed column. The download now brings the primaries' record of renames
/// (protocol 13); without it the local rows of a renamed table were deleted with the old
/// table, and a renamed column's values were blanked, in silence (the long-offline walkthrough).
#[test]
fn a_device_away_longer_than_the_log_across_renames_keeps_its_local_rows() {
    let c = Cluster::new();
    let p = primary_keeping_100(&c);
    p.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)",
        [],
    )
    .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = Connection::open(&d_uri).unwrap();
    ready(&d);
    d.execute_batch(
        "INSERT INTO notes(body, row_owner) VALUES ('local note', NULL);
         INSERT INTO t(v, row_owner) VALUES ('local t', NULL);
         INSERT INTO notes(body) VALUES ('synced note');",
    )
    .unwrap();
    wait_outbox_empty(&d);
    drop(d);
    let nowhere = device_uri(&c.path("d.db"), "127.0.0.1:9");
    let d = Connection::open(&nowhere).unwrap();
    d.execute("INSERT INTO notes(body) VALUES ('pending note')", [])
        .unwrap();
    drop(d);

    p.execute_batch(
        "ALTER TABLE notes RENAME TO memos;
         ALTER TABLE memos RENAME COLUMN body TO text;
         ALTER TABLE t RENAME COLUMN v TO label;",
    )
    .unwrap();
    let seq = p.sync_status().unwrap().last_seq;
    for i in 0..300 {
        p.execute(
            "INSERT INTO t(label, row_owner) VALUES (?1, '*')",
            [format!("public {i}")],
        )
        .unwrap();
    }
    wait_log_cut_past(&p, seq);

    let d = Connection::open(&d_uri).unwrap();
    wait_outbox_empty(&d);
    wait_count(
        &d,
        "SELECT count(*) FROM t WHERE label LIKE 'public %'",
        300,
    );
    assert_eq!(
        text(
            &d,
            "SELECT group_concat(text, '|') FROM (SELECT text FROM memos ORDER BY id)"
        ),
        "local note|synced note|pending note",
        "the renamed table holds the device's local, synced and pending rows"
    );
    assert_eq!(
        text(&d, "SELECT label FROM t WHERE row_owner IS NULL"),
        "local t",
        "a local row's value under its column's new name"
    );
    wait_count(
        &p,
        "SELECT count(*) FROM memos WHERE text = 'pending note'",
        1,
    );
    assert_eq!(
        count(&p, "SELECT count(*) FROM memos WHERE text = 'local note'"),
        0
    );
}
