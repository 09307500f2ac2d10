//! Waiting for sync: a device is `synced` once its primary said it holds everything the
//! primary held (protocol 10, `Message::CaughtUp`) and every write of its own is decided.
//! Real files, real loopback sockets; every wait is on a condition.
mod common;
use common::*;
use octodb::{Connection, Error, Event};
use std::time::Duration;

#[test]
fn a_device_back_online_is_synced_once_it_holds_what_it_missed_and_its_writes_are_decided() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let port = port_of(&p);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('first', '*')", [])
        .unwrap();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let d = Connection::open(&d_uri).unwrap();
    let s = d.wait_until_synced(DEADLINE).expect("a new device syncs");
    assert!(s.caught_up && s.synced && s.connected, "{s:?}");
    assert_eq!(
        count(&d, "SELECT count(*) FROM t"),
        1,
        "synced: it has the row"
    );

    drop(d); // offline while the primary goes on
    for batch in 0..50 {
        p.execute_batch("BEGIN").unwrap();
        for i in 0..40 {
            p.execute(
                "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
                [format!("missed {batch}.{i}")],
            )
            .unwrap();
        }
        p.execute_batch("COMMIT").unwrap();
    }
    // The device comes back while its primary is away, writes, and sees its primary return.
    drop(p);
    let d = Connection::open(&d_uri).unwrap();
    let mut events = d.subscribe();
    d.execute("INSERT INTO t(v) VALUES ('written offline')", [])
        .unwrap();
    let s = d.sync_status().unwrap();
    assert!(!s.synced && !s.caught_up && s.outbox_len == 1, "{s:?}");
    let p = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();

    let s = d.wait_until_synced(DEADLINE).expect("the device syncs");
    // Nothing was written on the primary since the device connected: synced means all of it.
    assert_eq!(s.outbox_len, 0, "{s:?}");
    assert_eq!(count(&d, "SELECT count(*) FROM t"), 1 + 50 * 40 + 1);
    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v = 'written offline'"),
        1,
        "its write reached the primary"
    );
    let p_seq = p.sync_status().unwrap().last_seq;
    assert!(s.last_seq >= p_seq - 1, "{} against {p_seq}", s.last_seq);
    let caught_up = wait_until("the CaughtUp event", || loop {
        match events.try_recv() {
            Ok(Event::CaughtUp { seq }) => return Some(seq),
            Ok(_) => continue,
            Err(_) => return None,
        }
    });
    assert!(
        caught_up >= s.last_seq - 1,
        "{caught_up} against {}",
        s.last_seq
    );
}

#[test]
fn a_device_that_cannot_reach_its_primary_is_not_synced_and_says_why() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    d.wait_until_synced(DEADLINE).expect("syncs while it can");
    drop(p);
    d.wait_for(DEADLINE, |s| !s.connected).unwrap();
    d.execute("INSERT INTO t(v) VALUES ('kept')", []).unwrap();
    let s = d.sync_status().unwrap();
    assert!(s.db_is_ready && !s.caught_up && !s.synced, "{s:?}");
    let err = d
        .wait_until_synced(Duration::from_millis(300))
        .expect_err("no primary to sync with");
    let Error::Timeout(why) = &err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert!(why.contains("not in sync with the primaries"), "{why}");
    assert!(
        why.contains("cannot reach") || why.contains("not connected") || why.contains("refused"),
        "the reason names the connection: {why}"
    );
    assert_eq!(count(&d, "SELECT count(*) FROM t WHERE v = 'kept'"), 1);
}

#[test]
fn primaries_and_local_databases_are_always_synced() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    assert!(p.wait_until_synced(Duration::ZERO).unwrap().synced);
    let local = Connection::open(&format!("file:{}", c.path("plain.db").display())).unwrap();
    let s = local.wait_until_synced(Duration::ZERO).unwrap();
    assert!(s.synced && s.caught_up, "{s:?}");
}

#[test]
fn a_device_that_has_not_signed_up_is_told_to_sign_up_before_it_can_sync() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    approve_by_data(&p);
    let d = c.device("d.db", &p);
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("required"))
        .unwrap();
    let err = d
        .wait_until_synced(Duration::from_millis(100))
        .expect_err("not authorized");
    assert!(err.to_string().contains("sign up or log in"), "{err}");
    d.execute_batch("PRAGMA user_signup='ann'").unwrap();
    let s = d
        .wait_until_synced(DEADLINE)
        .expect("synced once signed up");
    assert!(s.user_id.is_some(), "{s:?}");
}

/// The waits block their thread, as documented, and work when called from async code too
/// (`#[tokio::main]`, a current-thread runtime): tokio's own `block_on` panicked there.
#[test]
fn the_waits_work_when_called_from_async_code() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    for multi_thread in [false, true] {
        let rt = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .unwrap();
        rt.block_on(async {
            let s = d.wait_until_synced(DEADLINE).unwrap();
            assert!(s.db_is_ready);
            let at = p.feed_position();
            p.execute("INSERT INTO t(v, row_owner) VALUES ('x', '*')", [])
                .unwrap();
            assert!(p.wait_feed(at, DEADLINE) > at);
            d.wait_for(DEADLINE, |s| s.last_seq > at).unwrap();
        });
    }
}
