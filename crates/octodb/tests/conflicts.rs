//! Conflict rules and offline delivery, SPEC §3.3–3.4.
mod common;
use common::*;
use octodb::Event;

#[test]
fn explicit_key_conflict_rejects_the_later_transaction_whole() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    let d1 = c.device("d1.db", &p);
    let d2 = c.device("d2.db", &p);
    ready(&d1);
    ready(&d2);
    d1.execute("INSERT INTO t(id, v) VALUES (7, 'first')", [])
        .unwrap();
    wait_outbox_empty(&d1);
    let mut events = d2.subscribe();
    d2.execute_batch("BEGIN; INSERT INTO t(id, v) VALUES (100, 'other row'); INSERT INTO t(id, v) VALUES (7, 'second'); COMMIT;")
        .unwrap();
    let s = d2
        .wait_for(DEADLINE, |s| s.last_rejected.is_some() && s.outbox_len == 0)
        .unwrap();
    assert!(s
        .last_rejected
        .unwrap()
        .reason
        .contains("first insert wins"));
    // Removed whole from the device, and nothing of it at the primary.
    wait_count(&d2, "SELECT count(*) FROM t", 0);
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE id = 100"), 0);
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'first'"), 1);
    let rejected = wait_until("a TransactionRejected event", || match events.try_recv() {
        Ok(Event::TransactionRejected { reason, .. }) => Some(reason),
        _ => None,
    });
    assert!(rejected.contains("first insert wins"));
}

#[test]
fn a_row_for_one_user_reaches_that_device_also_after_being_offline() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
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
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
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
