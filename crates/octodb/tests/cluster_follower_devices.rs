//! Followers serve devices too (issue "Cluster", item 3): a device connected to a follower
//! downloads and follows that primary's own log, and its transactions go to the leader, each
//! decided once and heard of once the cluster holds it. A device the backend has not approved
//! is sent to the leader; one whose approval is taken back is cut off by the follower too.
//! Real files, real loopback sockets.

mod common;

use common::*;
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::{Connection, Role};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Three primaries (`three_auth_primaries`) whose leader approves new devices while
/// `approving`.
fn three_primaries(
    c: &Cluster,
    approving: Arc<AtomicBool>,
) -> (Connection, Connection, Connection) {
    three_auth_primaries(c, move |p1| {
        p1.set_auth_callback(Action::NewNode, move |_r: &AuthRequest| {
            match approving.load(Ordering::SeqCst) {
                true => Decision::Node(Role::Secondary),
                false => Decision::Reject("no more devices".into()),
            }
        })
        .expect("set the callback");
    })
}

/// A new device naming only `follower`: sent to the leader to be approved and to download,
/// and opened again, as an app would after a restart (its session with the leader lasts
/// until then).
fn approved_on_the_leader(c: &Cluster, name: &str, follower: &Connection) -> Connection {
    let d = c.device(name, follower);
    ready(&d);
    drop(d);
    wait_closed(c, name);
    let d = c.device(name, follower);
    ready(&d);
    d
}

/// Whether `d` is connected now to the primary at `addr`.
fn connected_to(d: &Connection, addr: &str) -> bool {
    d.sync_status()
        .is_ok_and(|s| s.connected && s.peers.iter().any(|p| p.contains(addr)))
}

#[test]
fn a_device_on_a_follower_syncs_both_ways_through_the_leader() {
    let c = Cluster::new();
    let (p1, p2, _p3) = three_primaries(&c, Arc::new(AtomicBool::new(true)));
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();
    // A new device that names only a follower is sent to the leader to be approved.
    let d2 = approved_on_the_leader(&c, "d2.db", &p2);
    assert_eq!(count(&d2, "SELECT count(*) FROM t"), 1);
    let d1 = c.device("d1.db", &p1);
    ready(&d1);

    // Approved, it syncs with the follower it names.
    let follower = addr_of(&p2);
    wait_until("the device is connected to the follower", || {
        connected_to(&d2, &follower).then_some(())
    });
    d2.execute(
        "INSERT INTO t(v) VALUES ('from the follower''s device')",
        [],
    )
    .unwrap();
    wait_outbox_empty(&d2);
    assert_eq!(d2.sync_status().unwrap().last_rejected, None);
    wait_count(
        &p1,
        "SELECT count(*) FROM t WHERE v = 'from the follower''s device'",
        1,
    );
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    wait_count(&d2, "SELECT count(*) FROM t WHERE v = 'after'", 1);
    assert!(connected_to(&d2, &follower), "it stayed on the follower");
    // Every transaction of the device's decided once: the leader's log names each once.
    let d2_id = d2.sync_status().unwrap().node_id;
    assert_eq!(
        count(
            &p1,
            &format!("SELECT count(*) FROM _octo_log WHERE origin_node = {d2_id}")
        ),
        1
    );
}

#[test]
fn a_follower_cuts_off_a_device_whose_approval_is_taken_back() {
    let c = Cluster::new();
    let approving = Arc::new(AtomicBool::new(true));
    let (p1, p2, _p3) = three_primaries(&c, approving.clone());
    let d = approved_on_the_leader(&c, "d.db", &p2);
    let follower = addr_of(&p2);
    wait_until("the device is connected to the follower", || {
        connected_to(&d, &follower).then_some(())
    });
    // (It comes back once cut off, as any device would: it is not put to the backend's
    // callback again, which would approve it anew; it hears that its approval was revoked.)
    p1.execute(
        &format!("PRAGMA authorize_node='{}:-1'", d.public_key()),
        [],
    )
    .unwrap();
    d.wait_for(DEADLINE, |s| {
        !s.connected
            && s.auth_state.as_deref() == Some("rejected")
            && s.auth_error
                .as_deref()
                .is_some_and(|e| e.contains("revoked"))
    })
    .expect("the device is cut off, and hears why");
    assert!(!connected_to(&d, &follower));
}
