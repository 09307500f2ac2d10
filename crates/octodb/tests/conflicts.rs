//! Conflict rules and offline delivery, SPEC §3.3–3.4.
mod common;
use common::*;
use octodb::Event;

#[test]
fn explicit_key_conflict_rejects_the_later_transaction_whole() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d1 = c.device("d1.db", &p);
    let d2 = c.device("d2.db", &p);
    ready(&d1);
    ready(&d2);
    d1.execute("INSERT INTO t(id, v) VALUES (7, 'first')", [])
        .unwrap();
    wait_outbox_empty(&d1);
    let mut events = d2.subscribe();
    assert_eq!(d2.last_txn_id(), None);
    d2.execute_batch("BEGIN; INSERT INTO t(id, v) VALUES (100, 'other row'); INSERT INTO t(id, v) VALUES (7, 'second'); COMMIT;")
        .unwrap();
    let mine = d2.last_txn_id().expect("the committed transaction's id");
    let s = d2
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    assert_eq!(s.rejected_total, 1);
    let last = s.last_rejected.unwrap();
    assert_eq!(
        last.txn_id, mine,
        "the app can tell which commit was taken back"
    );
    assert!(last.reason.contains("first insert wins"));
    // Removed whole from the device, and nothing of it at the primary.
    wait_count(&d2, "SELECT count(*) FROM t", 0);
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE id = 100"), 0);
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'first'"), 1);
    let rejected = wait_until("a TransactionRejected event", || match events.try_recv() {
        Ok(Event::TransactionRejected { reason, txn_id }) => Some((txn_id, reason)),
        _ => None,
    });
    assert_eq!(rejected.0, mine);
    assert!(rejected.1.contains("first insert wins"));
}

#[test]
fn a_row_for_one_user_reaches_that_device_also_after_being_offline() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d1 = c.device("d1.db", &p);
    let d2 = c.device("d2.db", &p);
    let user1 = ready(&d1).user_id.unwrap();
    ready(&d2);
    let d1_uri = common::device_uri(&c.path("d1.db"), &addr_of(&p));
    drop(d1); // offline
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('for user 1', ?1)",
        [user1],
    )
    .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('marker', '*')", [])
        .unwrap();
    wait_count(&d2, "SELECT count(*) FROM t WHERE v = 'marker'", 1);
    assert_eq!(
        count(&d2, "SELECT count(*) FROM t WHERE v = 'for user 1'"),
        0
    );
    let d1 = octodb::Connection::open(&d1_uri).unwrap();
    wait_count(&d1, "SELECT count(*) FROM t WHERE v = 'for user 1'", 1);
    // The user owns it now: it may update it, and the update reaches the primary.
    d1.execute("UPDATE t SET v = 'done' WHERE v = 'for user 1'", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'done'", 1);
}

#[test]
fn devices_skip_global_rows_and_local_rows_stay_home() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         CREATE TABLE notes(x);
         INSERT INTO t(v, row_owner) VALUES ('global', '*');
         INSERT INTO t(v, row_owner) VALUES ('primary local', NULL);",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'global'", 1);
    assert_eq!(d.execute("UPDATE t SET v = 'hacked'", []).unwrap(), 0);
    assert_eq!(d.execute("DELETE FROM t", []).unwrap(), 0);
    assert!(d
        .execute("INSERT INTO t(v, row_owner) VALUES ('x', '*')", [])
        .is_err());
    d.execute(
        "INSERT INTO t(v, row_owner) VALUES ('device local', NULL)",
        [],
    )
    .unwrap();
    d.execute("INSERT INTO notes VALUES ('device note')", [])
        .unwrap();
    d.execute("INSERT INTO t(v) VALUES ('mine')", []).unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'mine'", 1);
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM t WHERE v IN ('device local', 'hacked')"
        ),
        0
    );
    assert_eq!(count(&p, "SELECT count(*) FROM notes"), 0);
    assert_eq!(
        count(&d, "SELECT count(*) FROM t WHERE v = 'primary local'"),
        0
    );
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'global'"), 1);
}

#[test]
fn two_devices_inserting_concurrently_never_collide() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let devices: Vec<_> = ["d1.db", "d2.db"].iter().map(|n| c.device(n, &p)).collect();
    let writers: Vec<_> = devices
        .into_iter()
        .map(|d| {
            std::thread::spawn(move || {
                ready(&d);
                for i in 0..200 {
                    d.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
                        .unwrap();
                    let id = d.last_insert_rowid();
                    assert_eq!(
                        count(
                            &d,
                            &format!("SELECT count(*) FROM t WHERE id = {id} AND v = 'row {i}'")
                        ),
                        1
                    );
                }
                wait_outbox_empty(&d);
                d
            })
        })
        .collect();
    let _devices: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    wait_count(&p, "SELECT count(DISTINCT id) FROM t", 400);
}

/// A loopback address where nothing listens: a device pointed at it works offline.
fn unreachable_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Device `name` reopened with no primary reachable: it works offline.
fn offline_device(c: &Cluster, name: &str) -> octodb::Connection {
    octodb::Connection::open(&device_uri(&c.path(name), &unreachable_addr())).unwrap()
}

/// Device `name` reconnected to `p`: its queue accepted, and all the primary has applied.
fn back_online(c: &Cluster, name: &str, p: &octodb::Connection) -> octodb::Connection {
    let d = c.device(name, p);
    wait_outbox_empty(&d);
    let last = p.sync_status().unwrap().last_seq;
    d.wait_for(DEADLINE, |s| s.last_seq == last).unwrap();
    d
}

#[test]
fn last_update_to_reach_the_primary_wins_column_by_column() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b TEXT, row_owner)",
        [],
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(id, a, b) VALUES (1, 'a0', 'b0')", [])
        .unwrap();
    d.execute("INSERT INTO t(id, a, b) VALUES (2, 'a0', 'b0')", [])
        .unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 2);

    // Row 1: the device's update of `a` is made offline, so the primary's update of `a` and `b`
    // reaches the primary first; the device's arrives later and wins for `a` only.
    drop(d);
    let d = offline_device(&c, "d.db");
    d.execute("UPDATE t SET a = 'device' WHERE id = 1", [])
        .unwrap();
    assert_eq!(d.sync_status().unwrap().outbox_len, 1);
    p.execute("UPDATE t SET a = 'primary', b = 'primary' WHERE id = 1", [])
        .unwrap();
    drop(d);
    let d = back_online(&c, "d.db", &p);
    for node in [&p, &d] {
        assert_eq!(
            text(node, "SELECT a || ',' || b FROM t WHERE id = 1"),
            "device,primary"
        );
    }

    // Row 2: the device's update reaches the primary first; the primary's later one wins.
    d.execute("UPDATE t SET a = 'device', b = 'device' WHERE id = 2", [])
        .unwrap();
    wait_outbox_empty(&d);
    p.execute("UPDATE t SET b = 'primary' WHERE id = 2", [])
        .unwrap();
    wait_count(
        &d,
        "SELECT count(*) FROM t WHERE id = 2 AND b = 'primary'",
        1,
    );
    for node in [&p, &d] {
        assert_eq!(
            text(node, "SELECT a || ',' || b FROM t WHERE id = 2"),
            "device,primary"
        );
    }
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
}

#[test]
fn a_device_ends_with_the_primarys_version_of_its_own_accepted_rows() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    // The trigger runs on every node; `seen` differs because the primary also has rows of
    // another user, which the device never sees.
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, seen INTEGER, row_owner);
         CREATE TRIGGER count_on_insert AFTER INSERT ON t BEGIN
           UPDATE t SET seen = (SELECT count(*) FROM t) WHERE rowid = NEW.rowid;
         END;
         INSERT INTO t(id, v, row_owner) VALUES (100, 'x', 999), (101, 'y', 999), (102, 'z', 999);",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(id, v) VALUES (1, 'start')", [])
        .unwrap();
    // Further transactions on the same row while the first is still in flight.
    for i in 0..20 {
        d.execute("UPDATE t SET v = ?1 WHERE id = 1", [format!("v{i}")])
            .unwrap();
    }
    wait_outbox_empty(&d);
    wait_count(&d, "SELECT count(*) FROM t WHERE id = 1 AND seen = 4", 1);
    for node in [&p, &d] {
        assert_eq!(
            text(node, "SELECT v || ',' || seen FROM t WHERE id = 1"),
            "v19,4"
        );
    }
    assert_eq!(count(&d, "SELECT count(*) FROM t"), 1);
}

#[test]
fn a_rejected_transaction_flushed_in_parts_is_taken_back_whole() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(id, v) VALUES (1, 'kept')", [])
        .unwrap();
    wait_outbox_empty(&d);
    drop(d);
    // While the device is offline, the primary takes id 7.
    p.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (7, 'primary', '*')",
        [],
    )
    .unwrap();
    let d = offline_device(&c, "d.db");
    // One transaction, recorded at each RELEASE and at COMMIT: three parts.
    d.execute_batch(
        "BEGIN;
         SAVEPOINT a;
         INSERT INTO t(id, v) VALUES (50, 'part 1');
         UPDATE t SET v = 'changed' WHERE id = 1;
         RELEASE a;
         SAVEPOINT b;
         INSERT INTO t(id, v) VALUES (7, 'device');
         RELEASE b;
         UPDATE t SET v = 'part 3' WHERE id = 50;
         COMMIT;",
    )
    .unwrap();
    // A later transaction on a row the doomed one also changed.
    d.execute("UPDATE t SET v = 'later' WHERE id = 1", [])
        .unwrap();
    assert_eq!(d.sync_status().unwrap().outbox_len, 2);
    drop(d);

    let d = c.device("d.db", &p);
    let s = d
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    assert!(s
        .last_rejected
        .unwrap()
        .reason
        .contains("first insert wins"));
    let last = p.sync_status().unwrap().last_seq;
    d.wait_for(DEADLINE, |s| s.last_seq >= last).unwrap();
    for node in [&p, &d] {
        assert_eq!(
            text(
                node,
                "SELECT group_concat(id || '=' || v, ' ') FROM (SELECT * FROM t ORDER BY id)"
            ),
            "1=later 7=primary"
        );
    }
}

/// A constraint only the primary can check (a UNIQUE value held by a row of another user,
/// which the device never sees) rejects the device's transaction; nothing stalls.
#[test]
fn a_constraint_failing_only_at_the_primary_rejects_the_transaction() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, row_owner);
         INSERT INTO t(name, row_owner) VALUES ('taken', 999);",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(name) VALUES ('taken')", [])
        .unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    assert!(s.last_rejected.unwrap().reason.contains("UNIQUE"));
    wait_count(&d, "SELECT count(*) FROM t", 0);
    // The device goes on: its next transaction is accepted.
    d.execute("INSERT INTO t(name) VALUES ('free')", [])
        .unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t WHERE name = 'free'", 1);
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 2);
}

#[test]
fn a_long_offline_queue_on_one_row_merges_with_the_primarys_change_to_it() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, note TEXT, row_owner)",
        [],
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(id, n, note) VALUES (1, 0, 'device')", [])
        .unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 1);

    // More transactions than the primary sends back in one batch, all on one row: the
    // device settles the first batch with the primary's change in it by a full rebuild, the
    // later batches (only its own transactions) by checking its prediction.
    drop(d);
    let d = offline_device(&c, "d.db");
    let txns = 3_000;
    for _ in 0..txns {
        d.execute("UPDATE t SET n = n + 1 WHERE id = 1", [])
            .unwrap();
    }
    p.execute("UPDATE t SET note = 'primary' WHERE id = 1", [])
        .unwrap();
    drop(d);
    let d = back_online(&c, "d.db", &p);
    for node in [&p, &d] {
        assert_eq!(
            text(node, "SELECT n || ',' || note FROM t WHERE id = 1"),
            format!("{txns},primary")
        );
    }
    assert_eq!(
        count(&d, "SELECT count(*) FROM _octo_base"),
        0,
        "nothing pending"
    );
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
}

/// A device's offline transaction accepted as sent settles its rows at once, unless a later
/// pending transaction changed one of them: that row keeps its later value and the others
/// settle all the same.
#[test]
fn accepted_rows_settle_also_when_a_later_pending_transaction_changed_one() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    drop(d);
    let d = offline_device(&c, "d.db");
    let mut d = d;
    let tx = d.transaction().unwrap();
    for i in 0..10 {
        tx.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    tx.commit().unwrap();
    d.execute("UPDATE t SET v = 'changed later' WHERE v = 'row 5'", [])
        .unwrap();
    // A third transaction, on other rows only: settled as sent once accepted.
    d.execute("INSERT INTO t(v) VALUES ('alone')", []).unwrap();
    drop(d);
    let d = back_online(&c, "d.db", &p);
    for node in [&p, &d] {
        assert_eq!(
            text(
                node,
                "SELECT group_concat(v, ',') FROM (SELECT v FROM t ORDER BY id)"
            ),
            "row 0,row 1,row 2,row 3,row 4,changed later,row 6,row 7,row 8,row 9,alone"
        );
    }
    assert_eq!(
        count(&d, "SELECT count(*) FROM _octo_base"),
        0,
        "nothing pending"
    );
    assert_eq!(count(&d, "SELECT count(*) FROM _octo_undecided"), 0);
}

/// Schema changes on the primaries while a device has work pending on the rows they touch: a
/// table dropped and made again (as SQLite's table rebuild does), and a column dropped. The
/// device's work is kept (its rows reach the new table, without the dropped column's value)
/// and the device ends as the primary is. (Its rows used to vanish from the device when the
/// drop reached it first; its inserts naming the dropped column were rejected.)
#[test]
fn work_pending_across_a_table_rebuild_and_a_dropped_column_is_kept() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, extra TEXT, row_owner);
         CREATE TABLE u(id INTEGER PRIMARY KEY, x TEXT, row_owner);",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    drop(d);
    let d = offline_device(&c, "d.db");
    d.execute("INSERT INTO t(v, extra) VALUES ('kept', 'gone soon')", [])
        .unwrap();
    d.execute("INSERT INTO u(x) VALUES ('in the old table')", [])
        .unwrap();
    drop(d);
    p.execute_batch(
        "ALTER TABLE t DROP COLUMN extra;
         CREATE TABLE u_new(id INTEGER PRIMARY KEY, x TEXT, y TEXT DEFAULT 'new', row_owner);
         INSERT INTO u_new(id, x, row_owner) SELECT id, x, row_owner FROM u;
         DROP TABLE u;
         ALTER TABLE u_new RENAME TO u;",
    )
    .unwrap();
    let d = back_online(&c, "d.db", &p);
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
    for node in [&p, &d] {
        assert_eq!(text(node, "SELECT group_concat(v) FROM t"), "kept");
        assert_eq!(
            text(node, "SELECT group_concat(x || ':' || y) FROM u"),
            "in the old table:new"
        );
    }
    assert_eq!(count(&d, "SELECT count(*) FROM _octo_base"), 0);
}

/// A transaction that installed the capture for a new schema and then rolled back took the
/// new capture triggers with it: the connection must install them again, or its next writes
/// are captured for the old schema (here: without the new column's value).
#[test]
fn a_rollback_does_not_leave_the_capture_behind_the_schema() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('before')", []).unwrap();
    wait_outbox_empty(&d);
    // The change reaches the device after its app opened a (deferred) transaction, so the
    // transaction's first write installs the new capture inside it.
    d.execute_batch("BEGIN").unwrap();
    p.execute_batch("ALTER TABLE t ADD COLUMN c TEXT").unwrap();
    let last = p.sync_status().unwrap().last_seq;
    d.wait_for(DEADLINE, |s| s.last_seq >= last).unwrap();
    d.execute_batch("INSERT INTO t(v) VALUES ('undone'); ROLLBACK;")
        .unwrap();
    d.execute("INSERT INTO t(v, c) VALUES ('after', 'has c')", [])
        .unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'after'", 1);
    assert_eq!(text(&p, "SELECT c FROM t WHERE v = 'after'"), "has c");
}

/// A device's insert that a rule of the data refuses at the primary (here a trigger the
/// primaries alone enforce) is rejected as failed, with the rule's message, not as a key
/// conflict ("first insert wins"), which it is not.
#[test]
fn a_rule_refusing_an_insert_is_not_called_a_conflict() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute_batch(
        "CREATE TRIGGER banned BEFORE INSERT ON t
           WHEN NEW.v = 'banned' AND EXISTS (SELECT 1 FROM sqlite_schema WHERE name = '_octo_raft')
           BEGIN SELECT RAISE(ABORT, 'banned word'); END;",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('banned')", []).unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    let reason = s.last_rejected.unwrap().reason;
    assert!(
        reason.contains("banned word") && reason.contains("failed"),
        "{reason}"
    );
    assert!(!reason.contains("first insert wins"), "{reason}");
}

/// A device's delete that the primary's schema refuses (a trigger's RAISE(ABORT)) is that
/// transaction's rejection: the row comes back on the device and the sync goes on. It failed
/// the primary's whole batch instead (the security review), every device's work in it, again
/// at each resend.
#[test]
fn a_delete_the_primarys_rules_refuse_is_rejected_and_the_sync_goes_on() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute_batch(
        "CREATE TRIGGER kept BEFORE DELETE ON t
           WHEN OLD.v = 'keep' AND EXISTS (SELECT 1 FROM sqlite_schema WHERE name = '_octo_raft')
           BEGIN SELECT RAISE(ABORT, 'this row is kept'); END;",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('keep')", []).unwrap();
    wait_outbox_empty(&d);
    d.execute("DELETE FROM t WHERE v = 'keep'", []).unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    let reason = s.last_rejected.unwrap().reason;
    assert!(
        reason.contains("this row is kept") && reason.contains("delete"),
        "{reason}"
    );
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'keep'", 1);
    assert_eq!(p.sync_status().unwrap().sync_error, None);
    d.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'after'", 1);
}

/// A primary's trigger that ends a device's transaction with RAISE(ROLLBACK) ends the whole
/// batch it is decided in (SQLite rolls back the whole transaction): that batch fails, and
/// the transaction is rejected when its device sends it again, naming the trigger's message.
/// It failed every batch it came in, for ever (the security review).
#[test]
fn a_device_transaction_a_trigger_rolls_back_whole_is_rejected_when_sent_again() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute_batch(
        "CREATE TRIGGER rb BEFORE INSERT ON t
           WHEN NEW.v = 'rb' AND EXISTS (SELECT 1 FROM sqlite_schema WHERE name = '_octo_raft')
           BEGIN SELECT RAISE(ROLLBACK, 'rolled back by the app'); END;",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('rb')", []).unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    let reason = s.last_rejected.unwrap().reason;
    assert!(
        reason.contains("RAISE(ROLLBACK)") && reason.contains("rolled back by the app"),
        "{reason}"
    );
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'rb'", 0);
    d.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'after'", 1);
}

/// A row from the primaries holding a unique value that a pending row of this device holds
/// too (the primaries had theirs first): the device writes the primaries' row, its own steps
/// aside until the primaries reject its transaction, and the sync goes on. The device used to
/// stop syncing for good, its pending row blocking the primaries' one and the rejection that
/// would have removed it queued behind it.
#[test]
fn a_pending_row_clashing_on_a_unique_value_steps_aside_for_the_primaries_row() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    let port = port_of(&p);
    p.execute(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, code TEXT UNIQUE, row_owner)",
        [],
    )
    .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = octodb::Connection::open(&d_uri).unwrap();
    ready(&d);
    d.wait_until_synced(DEADLINE).unwrap();

    // Offline, the device takes code 'c'; meanwhile the primaries give it to a row of theirs.
    drop(p);
    d.wait_for(DEADLINE, |s| !s.connected).unwrap();
    d.execute("INSERT INTO items(code) VALUES ('c')", [])
        .unwrap();
    let mine = d.last_insert_rowid();
    drop(d);
    let p = octodb::Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    p.execute_batch(
        "INSERT INTO items(code, row_owner) VALUES ('c', '*');
         INSERT INTO items(code, row_owner) VALUES ('after', '*');",
    )
    .unwrap();
    let theirs: i64 = p
        .query_row("SELECT id FROM items WHERE code = 'c'", [], |r| r.get(0))
        .unwrap();

    let d = octodb::Connection::open(&d_uri).unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    assert!(
        s.last_rejected.unwrap().reason.contains("UNIQUE"),
        "the device hears why"
    );
    wait_count(&d, "SELECT count(*) FROM items WHERE code = 'after'", 1);
    assert_eq!(
        count(&d, "SELECT id FROM items WHERE code = 'c'"),
        theirs,
        "the primaries' row holds the value"
    );
    assert_eq!(
        count(&d, &format!("SELECT count(*) FROM items WHERE id = {mine}")),
        0,
        "the rejected row is taken back"
    );
    // The sync goes on both ways.
    d.execute("INSERT INTO items(code) VALUES ('d')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM items WHERE code = 'd'", 1);
    p.execute("INSERT INTO items(code, row_owner) VALUES ('e', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM items WHERE code = 'e'", 1);
}

/// An app's own rule (a trigger counting a group's rows) that the device's pending rows break
/// once the primaries' rows arrive: the primaries' rows are written, the pending rows wait
/// aside for the primaries' decision (triggers walkthrough: the sync stopped for good, its
/// error blaming a local row, while the rejection that would have resolved it waited later
/// in the log).
#[test]
fn an_app_rule_broken_by_pending_rows_waits_for_the_primaries_decision() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    let port = port_of(&p);
    p.execute_batch(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, grp TEXT, row_owner);
         CREATE TRIGGER items_limit BEFORE INSERT ON items
           WHEN (SELECT count(*) FROM items WHERE grp = NEW.grp) >= 2
           BEGIN SELECT RAISE(ABORT, 'at most 2 items per group'); END;",
    )
    .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = octodb::Connection::open(&d_uri).unwrap();
    ready(&d);
    d.wait_until_synced(DEADLINE).unwrap();

    // Offline, the device fills group g; meanwhile the primaries fill it with rows of theirs.
    drop(p);
    d.wait_for(DEADLINE, |s| !s.connected).unwrap();
    d.execute_batch(
        "BEGIN; INSERT INTO items(grp) VALUES ('g'); INSERT INTO items(grp) VALUES ('g'); COMMIT;",
    )
    .unwrap();
    drop(d);
    let p = octodb::Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    p.execute_batch(
        "INSERT INTO items(grp, row_owner) VALUES ('g', '*');
         INSERT INTO items(grp, row_owner) VALUES ('g', '*');",
    )
    .unwrap();

    let d = octodb::Connection::open(&d_uri).unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    assert!(
        s.last_rejected.unwrap().reason.contains("at most 2 items"),
        "the device hears why"
    );
    assert_eq!(s.sync_error, None);
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM items WHERE grp = 'g' AND row_owner = '*'"
        ),
        2,
        "the primaries' rows are written"
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM items"),
        2,
        "the rejected rows are taken back"
    );
    // The sync goes on.
    p.execute("INSERT INTO items(grp, row_owner) VALUES ('h', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM items WHERE grp = 'h'", 1);
    d.execute("INSERT INTO items(grp) VALUES ('k')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM items WHERE grp = 'k'", 1);
}

/// Rows that trade unique values inside one transaction (a swap through a temporary value,
/// a value moved from a deleted row to a new one) reach followers and devices: a transaction
/// is replicated as each row's final image, and written one by one those clashed, stopping
/// every follower and device for good.
#[test]
fn rows_trading_unique_values_in_one_transaction_replicate() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, code TEXT UNIQUE, row_owner);
         INSERT INTO items(id, code, row_owner) VALUES (1, 'x', '*'), (2, 'y', '*'), (3, 'z', '*');",
    )
    .unwrap();
    let q = joining_primary(&c.path("q.db"), &addr_of(&p));
    wait_voters(&p, 2);
    let d = c.device("d.db", &p);
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM items", 3);
    p.execute_batch(
        "BEGIN;
         UPDATE items SET code = 'tmp' WHERE id = 1;
         UPDATE items SET code = 'x' WHERE id = 2;
         UPDATE items SET code = 'y' WHERE id = 1;
         DELETE FROM items WHERE id = 3;
         INSERT INTO items(id, code, row_owner) VALUES (4, 'z', '*');
         COMMIT;",
    )
    .unwrap();
    let want = "1=y 2=x 4=z";
    let rows = "SELECT group_concat(id || '=' || code, ' ') FROM (SELECT * FROM items ORDER BY id)";
    for (node, name) in [(&q, "the follower"), (&d, "the device")] {
        wait_until(&format!("{name} to hold the swap"), || {
            (text(node, rows) == want).then_some(())
        });
    }
    // The sync goes on.
    p.execute(
        "INSERT INTO items(code, row_owner) VALUES ('after', '*')",
        [],
    )
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM items WHERE code = 'after'", 1);
    wait_count(&q, "SELECT count(*) FROM items WHERE code = 'after'", 1);
}

/// A device's transaction in which rows trade unique values (a swap through a temporary
/// value) is accepted: the primaries apply it one row's final image at a time, and the first
/// clashed with the second (it was refused).
#[test]
fn a_devices_swap_of_unique_values_is_accepted() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, code TEXT UNIQUE, row_owner)",
        [],
    )
    .unwrap();
    let d = c.device("d.db", &p);
    d.wait_until_synced(DEADLINE).unwrap();
    d.execute_batch("INSERT INTO items(id, code) VALUES (1, 'x'), (2, 'y'), (3, 'z');")
        .unwrap();
    wait_outbox_empty(&d);
    d.execute_batch(
        "BEGIN;
         UPDATE items SET code = 'tmp' WHERE id = 1;
         UPDATE items SET code = 'x' WHERE id = 2;
         UPDATE items SET code = 'y' WHERE id = 1;
         COMMIT;",
    )
    .unwrap();
    let s = d.wait_until_synced(DEADLINE).unwrap();
    assert!(s.last_rejected.is_none(), "{:?}", s.last_rejected);
    let rows = "SELECT group_concat(id || '=' || code, ' ') FROM (SELECT * FROM items ORDER BY id)";
    assert_eq!(text(&p, rows), "1=y 2=x 3=z");
    assert_eq!(text(&d, rows), "1=y 2=x 3=z");
}

/// Foreign keys: the engine writes rows as the primaries or a device's transaction have them,
/// checking and cascading none (the app's connections do both). A rejected transaction that
/// made a parent and its child is taken back, and a transaction whose child row comes first
/// in it is accepted: each stopped the device's sync for good (SQL walkthrough).
#[test]
fn foreign_keys_block_neither_a_take_back_nor_the_order_of_a_transactions_rows() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE folder(id INTEGER PRIMARY KEY, name TEXT, row_owner);
         CREATE TABLE note(id INTEGER PRIMARY KEY, txt TEXT,
                           folder INTEGER REFERENCES folder(id) ON DELETE CASCADE, row_owner);
         CREATE TRIGGER banned BEFORE INSERT ON note
           WHEN NEW.txt = 'banned' AND EXISTS (SELECT 1 FROM sqlite_schema WHERE name = '_octo_raft')
           BEGIN SELECT RAISE(ABORT, 'banned word'); END;",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    d.wait_until_synced(DEADLINE).unwrap();
    d.execute_batch(
        "BEGIN;
         INSERT INTO folder(id, name) VALUES (1, 'work');
         INSERT INTO note(id, txt, folder) VALUES (10, 'banned', 1);
         COMMIT;",
    )
    .unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    assert!(s.sync_error.is_none(), "{:?}", s.sync_error);
    assert_eq!(count(&d, "SELECT count(*) FROM folder"), 0, "taken back");
    assert_eq!(count(&d, "SELECT count(*) FROM note"), 0, "taken back");

    d.execute_batch(
        "INSERT INTO folder(id, name) VALUES (1, 'work');
         INSERT INTO note(id, txt, folder) VALUES (10, 'fine', 1);",
    )
    .unwrap();
    wait_outbox_empty(&d);
    // The note changes first, then the folder it moves to is made.
    d.execute_batch(
        "BEGIN;
         UPDATE note SET txt = 'moving' WHERE id = 10;
         INSERT INTO folder(id, name) VALUES (2, 'new');
         UPDATE note SET folder = 2 WHERE id = 10;
         COMMIT;",
    )
    .unwrap();
    let s = d.wait_until_synced(DEADLINE).unwrap();
    assert!(
        s.last_rejected
            .as_ref()
            .is_none_or(|r| r.reason.contains("banned")),
        "{:?}",
        s.last_rejected
    );
    assert_eq!(
        text(&p, "SELECT folder || txt FROM note WHERE id = 10"),
        "2moving"
    );
    // An app's delete cascades in the app's own statement, and the cascade replicates.
    d.execute("DELETE FROM folder WHERE id = 2", []).unwrap();
    wait_count(&p, "SELECT count(*) FROM note", 0);
    assert_eq!(count(&d, "SELECT count(*) FROM note"), 0);
}

/// A primary's `CREATE UNIQUE INDEX` over values that a device's pending rows share (with a
/// row of the primaries, or with each other): the device takes the index, its clashing rows
/// wait aside for the primaries' decision (a rejection, the index being there), and the sync
/// goes on. The device used to stop syncing for good, telling the user to update the app.
/// A row only the device has (row_owner NULL) that breaks the index is the app's to change:
/// the sync stops, saying so.
#[test]
fn a_unique_index_over_values_pending_rows_share_reaches_the_device() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, code TEXT, label TEXT, row_owner);
         INSERT INTO items(code, row_owner) VALUES ('x', '*');",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM items", 1);
    drop(d);
    let d = offline_device(&c, "d.db");
    for code in ["x", "y", "y", "z"] {
        d.execute("INSERT INTO items(code) VALUES (?1)", [code])
            .unwrap();
    }
    drop(d);
    p.execute("CREATE UNIQUE INDEX items_code ON items(code)", [])
        .unwrap();

    let d = back_online(&c, "d.db", &p);
    let s = d.sync_status().unwrap();
    assert_eq!(s.sync_error, None);
    assert!(
        s.last_rejected.is_some_and(|r| r.reason.contains("UNIQUE")),
        "the device hears why its duplicates were refused"
    );
    for node in [&p, &d] {
        assert_eq!(
            text(
                node,
                "SELECT group_concat(code) FROM (SELECT code FROM items ORDER BY code)"
            ),
            "x,y,z"
        );
    }
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM sqlite_master WHERE name = 'items_code'"
        ),
        1,
        "the device has the index"
    );
    assert_eq!(count(&d, "SELECT count(*) FROM _octo_base"), 0);
    // The sync goes on both ways.
    d.execute("INSERT INTO items(code) VALUES ('w')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM items WHERE code = 'w'", 1);
    p.execute("INSERT INTO items(code, row_owner) VALUES ('v', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM items WHERE code = 'v'", 1);

    // Two rows only the device has, sharing a value the next index makes unique: the sync
    // stops, and says which rows to change.
    for _ in 0..2 {
        d.execute(
            "INSERT INTO items(code, label, row_owner) VALUES (NULL, 'mine', NULL)",
            [],
        )
        .unwrap();
    }
    p.execute("CREATE UNIQUE INDEX items_label ON items(label)", [])
        .unwrap();
    let s = d.wait_for(DEADLINE, |s| s.sync_error.is_some()).unwrap();
    let error = s.sync_error.unwrap();
    assert!(
        error.contains("row_owner NULL") && error.contains("items_label"),
        "{error}"
    );
    assert!(!error.contains("update the app"), "{error}");
    let ids = text(
        &d,
        "SELECT group_concat(id, ', ') FROM (SELECT id FROM items WHERE label = 'mine' ORDER BY id)",
    );
    assert!(error.contains(&format!("rows {ids} of `items`")), "{error}");
    assert_eq!(
        count(&d, "SELECT count(*) FROM items WHERE label = 'mine'"),
        2,
        "kept"
    );
}

/// A device's work pending on a table the primaries drop and make again, and on a table they
/// rename: the device ends as the primaries are. Rows it had deleted came back, with their old
/// values, once the primaries ignored its changes to rows they no longer had (the device still
/// took them for the primaries' rows). Its work on the renamed table lands there under the new
/// name (it was rejected, and before that its rejected changes stayed on it for good: the
/// take-back looked for the table under its old name).
#[test]
fn work_pending_on_a_table_made_again_or_renamed_ends_as_the_primaries_have_it() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE other(id INTEGER PRIMARY KEY, a TEXT, row_owner);
         CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT, row_owner);",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute_batch(
        "INSERT INTO other(a) VALUES ('one');
         INSERT INTO other(a) VALUES ('two');
         INSERT INTO items(v) VALUES ('synced before');",
    )
    .unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM other", 2);
    drop(d);
    let d = offline_device(&c, "d.db");
    d.execute_batch(
        "UPDATE other SET a = 'edited' WHERE a = 'one';
         DELETE FROM other WHERE a = 'two';
         UPDATE items SET v = 'updated offline';
         INSERT INTO items(v) VALUES ('inserted offline');",
    )
    .unwrap();
    drop(d);
    p.execute_batch(
        "DROP TABLE other;
         CREATE TABLE other(id INTEGER PRIMARY KEY, a TEXT, row_owner);
         ALTER TABLE items RENAME TO things;",
    )
    .unwrap();

    let d = back_online(&c, "d.db", &p);
    let things = "SELECT group_concat(v, '|') FROM (SELECT v FROM things ORDER BY v)";
    for node in [&p, &d] {
        assert_eq!(count(node, "SELECT count(*) FROM other"), 0);
        assert_eq!(text(node, things), "inserted offline|updated offline");
    }
    assert_eq!(count(&d, "SELECT count(*) FROM _octo_base"), 0);
    // And after a restart.
    drop(d);
    let d = offline_device(&c, "d.db");
    assert_eq!(count(&d, "SELECT count(*) FROM other"), 0);
    assert_eq!(text(&d, things), "inserted offline|updated offline");
}

/// A device's offline edits of a column and of a table the primaries renamed meanwhile land
/// under the new names, on the primaries and back on the device; in a cluster, also once a
/// follower that recorded the renames leads. (The edit of the renamed column was left out,
/// silently; the rows written to the renamed table were rejected and taken back.)
#[test]
fn offline_work_on_a_renamed_column_or_table_lands_under_the_new_names() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner);
         CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT, row_owner);",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO notes(body) VALUES ('first')", [])
        .unwrap();
    wait_outbox_empty(&d);
    drop(d);
    let d = offline_device(&c, "d.db");
    d.execute_batch(
        "UPDATE notes SET body = 'edited offline';
         INSERT INTO notes(body) VALUES ('written offline');
         INSERT INTO items(v) VALUES ('item offline');",
    )
    .unwrap();
    drop(d);
    p.execute_batch(
        "ALTER TABLE notes RENAME COLUMN body TO text;
         ALTER TABLE items RENAME TO things;
         ALTER TABLE things RENAME COLUMN v TO label;",
    )
    .unwrap();

    let d = back_online(&c, "d.db", &p);
    let notes = "SELECT group_concat(text, '|') FROM (SELECT text FROM notes ORDER BY id)";
    for node in [&p, &d] {
        assert_eq!(text(node, notes), "edited offline|written offline");
        assert_eq!(
            text(node, "SELECT group_concat(label) FROM things"),
            "item offline"
        );
    }
    assert!(d.sync_status().unwrap().last_rejected.is_none());
}

/// A device's offline insert into a table the primaries rebuilt meanwhile with a new NOT NULL
/// column is rejected saying that the change lacks the column and why (SQLite's message alone
/// named a column the app never wrote).
#[test]
fn an_insert_lacking_a_column_the_primaries_added_is_rejected_saying_why() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    drop(d);
    let d = offline_device(&c, "d.db");
    d.execute("INSERT INTO t(v) VALUES ('written offline')", [])
        .unwrap();
    drop(d);
    p.execute_batch(
        "CREATE TABLE t_new(id INTEGER PRIMARY KEY, v TEXT, w TEXT NOT NULL, row_owner);
         INSERT INTO t_new(id, v, w, row_owner) SELECT id, v, 'x', row_owner FROM t;
         DROP TABLE t;
         ALTER TABLE t_new RENAME TO t;",
    )
    .unwrap();
    let d = back_online(&c, "d.db", &p);
    let reason = d.sync_status().unwrap().last_rejected.unwrap().reason;
    assert!(reason.contains("does not write `w`"), "{reason}");
    assert_eq!(count(&d, "SELECT count(*) FROM t"), 0, "taken back");
}
