//! A connection whose path silently stops passing packets (a NAT or mobile network) is noticed
//! by both sides within the heartbeat's bounds, the device says so in `sync_status`, and
//! everything flows again once a new connection gets through: while the device writes, and
//! while it only receives.

mod common;

use common::proxy::Proxy;
use common::*;
use octodb::Connection;

/// Heartbeats every second: a dead connection is noticed within 2.5 s.
fn device_behind(c: &Cluster, proxy: &Proxy) -> Connection {
    let uri = format!("{}&heartbeat=1", device_uri(&c.path("d.db"), &proxy.addr));
    Connection::open(&uri).expect("open device")
}

fn wait_dead(d: &Connection) {
    let status = d
        .wait_for(DEADLINE, |s| {
            !s.connected
                && s.sync_error
                    .as_deref()
                    .is_some_and(|e| e.contains("no data from the peer"))
        })
        .expect("the device notices the dead connection and says why");
    assert!(status.peers.is_empty(), "{status:?}");
}

fn wait_primary_drops(p: &Connection, node_id: u32) {
    wait_until("the primary notices the dead connection", || {
        let nodes = p.nodes().expect("nodes");
        let device = nodes.iter().find(|n| n.node_id == node_id)?;
        (!device.connected).then_some(())
    });
}

#[test]
fn a_silently_cut_connection_is_noticed_on_both_sides_and_sync_resumes() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let proxy = Proxy::start(&addr_of(&p));
    let d = device_behind(&c, &proxy);
    let node_id = ready(&d).node_id;
    d.execute("INSERT INTO t(v) VALUES ('before')", []).unwrap();
    wait_outbox_empty(&d);

    // While the device writes.
    proxy.swallow();
    d.execute("INSERT INTO t(v) VALUES ('written while cut')", [])
        .unwrap();
    wait_dead(&d);
    wait_primary_drops(&p, node_id);
    proxy.pass();
    wait_count(
        &p,
        "SELECT count(*) FROM t WHERE v = 'written while cut'",
        1,
    );
    wait_outbox_empty(&d);
    d.wait_for(DEADLINE, |s| s.connected)
        .expect("connected again");

    // While it only receives.
    proxy.swallow();
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('for everyone', '*')",
        [],
    )
    .unwrap();
    wait_dead(&d);
    wait_primary_drops(&p, node_id);
    proxy.pass();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'for everyone'", 1);
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 3);
}

#[test]
fn a_quiet_connection_with_heartbeats_stays_up() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let proxy = Proxy::start(&addr_of(&p));
    let d = device_behind(&c, &proxy);
    ready(&d);
    let mut events = d.subscribe();
    // Several dead-connection bounds of silence from the app: only heartbeats move.
    let quiet_until = std::time::Instant::now() + std::time::Duration::from_secs(6);
    while std::time::Instant::now() < quiet_until {
        let status = d.sync_status().unwrap();
        assert!(
            status.connected && status.sync_error.is_none(),
            "{status:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok())
            .any(|e| matches!(e, octodb::Event::Disconnected { .. })),
        "no reconnection while the connection was quiet"
    );
}

#[test]
fn a_primary_that_never_answers_the_hello_is_given_up_on() {
    // What a path cut right after the handshake looks like to a device: the handshake
    // completes, then nothing ever comes back.
    let c = Cluster::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(async move {
        let keys = octodb::crypto::NodeKeys::generate();
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let opts = octodb::net::HandshakeOptions::default();
            if let Ok(mut s) = octodb::net::SecureStream::accept(tcp, &keys, &opts).await {
                let _hello = s.recv().await;
                held.push(s);
            }
        }
    });
    let uri = format!("{}&heartbeat=1", device_uri(&c.path("d.db"), &addr));
    let d = Connection::open(&uri).expect("open device");
    wait_dead(&d);
}

#[test]
fn a_sign_up_waiting_for_the_backend_stays_up_and_a_cut_is_noticed() {
    use octodb::auth::{Action, AuthRequest, Decision};
    let c = Cluster::new();
    let p = Connection::open(&format!("{}&auth=user", primary_uri(&c.path("p.db"), 0))).unwrap();
    // The backend takes its time: every sign-up waits.
    p.set_auth_callback(Action::UserSignup, |_: &AuthRequest| Decision::Pending)
        .unwrap();
    let proxy = Proxy::start(&addr_of(&p));
    let d = device_behind(&c, &proxy);
    d.execute("PRAGMA user_signup='ann'", []).unwrap();
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .unwrap();
    // Several dead-connection bounds of waiting: heartbeats keep the wait up.
    let quiet_until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < quiet_until {
        let s = d.sync_status().unwrap();
        assert!(
            s.auth_state.as_deref() == Some("pending") && s.sync_error.is_none(),
            "{s:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A cut path while waiting is noticed, and the approval still arrives afterwards.
    proxy.swallow();
    wait_dead(&d);
    proxy.pass();
    p.execute(&format!("PRAGMA authorize_user='{}:0'", d.public_key()), [])
        .unwrap();
    ready(&d);
}

/// A device that connects again by another path before its primary notices that the old one
/// died stays listed as connected when the old session times out (network walkthrough:
/// `PRAGMA nodes`, `peers` and the metrics lost it then, while it synced on).
#[test]
fn a_device_connected_again_stays_connected_when_its_dead_session_times_out() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let proxy = Proxy::start(&addr_of(&p));
    let d = device_behind(&c, &proxy);
    let node_id = ready(&d).node_id;
    // The path dies silently; the app restarts meanwhile and connects afresh.
    proxy.swallow();
    proxy.pass();
    drop(d);
    wait_closed(&c, "d.db");
    let d = device_behind(&c, &proxy);
    d.wait_for(DEADLINE, |s| s.connected)
        .expect("connected again");
    // The primary ends the old session once it hears nothing on it: both sides of the old
    // connection are then closed (the device's at its drop).
    wait_until("the old session's end on the primary", || {
        (proxy.sides_closed() >= 2).then_some(())
    });
    let nodes = p.nodes().unwrap();
    let device = nodes.iter().find(|n| n.node_id == node_id).unwrap();
    assert!(device.connected, "{device:?}");
    assert_eq!(p.sync_status().unwrap().peers.len(), 1);
    d.execute("INSERT INTO t(v) VALUES ('still here')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'still here'", 1);
}

/// A device catching up over a link that drops every megabyte and a half still gets there:
/// each connection keeps what it carried (network walkthrough: the catch-up came in messages
/// of up to 16 MiB, kept only whole, so it never moved however often it reconnected).
#[test]
fn a_catch_up_over_a_link_that_drops_every_few_megabytes_gets_there() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let proxy = Proxy::start(&addr_of(&p));
    let d = device_behind(&c, &proxy);
    ready(&d);
    drop(d);
    wait_closed(&c, "d.db");
    // About 3.3 MB of rows while the device is away, 10 rows of 1 KB a transaction.
    let kb = "x".repeat(1000);
    for _ in 0..330 {
        let rows = vec![format!("INSERT INTO t(v, row_owner) VALUES ('{kb}', '*');"); 10];
        p.execute_batch(&format!("BEGIN; {} COMMIT;", rows.concat()))
            .unwrap();
    }
    proxy.cut_after(1_500_000);
    let d = device_behind(&c, &proxy);
    wait_count(&d, "SELECT count(*) FROM t", 3300);
    assert!(proxy.sides_closed() >= 2, "the link dropped on the way");
}

/// A device's backlog sent over a link that drops every megabyte and a half still gets there:
/// each connection keeps what it carried (the offline-heavy walkthrough: the outbox went in
/// messages of up to 16 MiB, kept by the primary only whole, so 5,000 transactions never got
/// through however often the device reconnected).
#[test]
fn an_upload_over_a_link_that_drops_every_few_megabytes_gets_there() {
    let c = Cluster::new();
    // The primary advertises the proxy: the device's every way to it goes through the link
    // (a device goes on to the addresses its primaries tell of when the one it was given
    // fails).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let proxy = Proxy::start(&format!("127.0.0.1:{port}"));
    let p = Connection::open(&format!(
        "{}&advertise=tcp://{}",
        primary_uri(&c.path("p.db"), port),
        proxy.addr
    ))
    .expect("open primary");
    p.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)")
        .unwrap();
    let d = device_behind(&c, &proxy);
    ready(&d);
    // Offline (nothing passes the link), the device writes about 3.3 MB: 330 transactions of
    // ten 1 KB rows.
    proxy.swallow();
    wait_dead(&d);
    let kb = "x".repeat(1000);
    for _ in 0..330 {
        let rows = vec![format!("INSERT INTO t(v) VALUES ('{kb}');"); 10];
        d.execute_batch(&format!("BEGIN; {} COMMIT;", rows.concat()))
            .unwrap();
    }
    proxy.cut_upstream_after(1_500_000);
    proxy.pass();
    wait_count(&p, "SELECT count(*) FROM t", 3300);
    wait_outbox_empty(&d);
    assert!(proxy.sides_closed() >= 2, "the link dropped on the way");
}

/// One large transaction sent over a slow link is not taken for a dead connection while its
/// bytes drain from the device's socket (the offline-heavy walkthrough: an 8 MB photo at
/// 150 KB/s was declared dead after 30 s, sent again whole, and never got there): the kernel
/// takes megabytes in one write, and the device then heard nothing until the primary had read
/// them all.
#[test]
fn a_large_transaction_over_a_slow_link_gets_there_on_one_connection() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let proxy = Proxy::start(&addr_of(&p));
    let d = device_behind(&c, &proxy);
    ready(&d);
    // At most 64 KB each 200 ms (320 KB/s): 3 MB take about ten seconds, three times the
    // silence a connection with one-second heartbeats may keep.
    proxy.slow(std::time::Duration::from_millis(200));
    let blob = "x".repeat(3_000_000);
    d.execute("INSERT INTO t(v) VALUES (?1)", [&blob]).unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE length(v) = 3000000", 1);
    wait_outbox_empty(&d);
    assert_eq!(
        proxy.sides_closed(),
        0,
        "the upload went on the connection it began on"
    );
}
