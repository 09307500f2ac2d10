//! Session tickets (protocol 9): a device that reconnects to the primary that admitted it
//! takes the cheaper resumed handshake, and is admitted again all the same, by the same rules.
mod common;
use common::http::{admin_url, scrape, value};
use common::proxy::Proxy;
use common::*;
use octodb::Connection;

const TOKEN: &str = "tickets-token";

/// A primary approving sign-ups (`auth=user`), its console on a free loopback port, with
/// table `t`.
fn primary(c: &Cluster) -> Connection {
    let p = Connection::open(&format!(
        "{}&auth=user&admin=127.0.0.1:0&admin_token={TOKEN}",
        primary_uri(&c.path("p.db"), 0)
    ))
    .expect("open primary");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    approve_by_data(&p);
    p
}

/// A device signed up on the primary at `addr`, synced, and holding its session ticket: the
/// primary sends the ticket before anything it streams, so a row written after the device
/// connected has come after it.
fn device_with_ticket(c: &Cluster, p: &Connection, addr: &str) -> Connection {
    let d = Connection::open(&format!(
        "{}&heartbeat=1",
        device_uri(&c.path("d.db"), addr)
    ))
    .expect("open device");
    d.execute("PRAGMA user_signup='x'", []).unwrap();
    ready(&d);
    d.wait_for(DEADLINE, |s| s.connected).expect("connected");
    p.execute("INSERT INTO t(v, row_owner) VALUES ('marker', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'marker'", 1);
    d
}

fn resumed_handshakes(p: &Connection) -> f64 {
    value(
        &scrape(&admin_url(p), TOKEN),
        "octodb_handshakes_resumed_total",
    )
    .unwrap_or(0.0)
}

#[test]
fn a_device_whose_connection_drops_comes_back_with_the_resumed_handshake() {
    let c = Cluster::new();
    let p = primary(&c);
    let proxy = Proxy::start(&addr_of(&p));
    let d = device_with_ticket(&c, &p, &proxy.addr);
    assert_eq!(
        resumed_handshakes(&p),
        0.0,
        "the first connection is a full handshake"
    );

    proxy.reset();
    wait_until("the device to reconnect with its ticket", || {
        (resumed_handshakes(&p) >= 1.0).then_some(())
    });
    // The resumed session syncs both ways.
    d.execute("INSERT INTO t(v) VALUES ('from the device')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'from the device'", 1);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'after'", 1);
    assert!(d.sync_status().unwrap().sync_error.is_none());
}

#[test]
fn a_device_whose_approval_was_taken_back_is_refused_though_its_ticket_is_good() {
    let c = Cluster::new();
    let p = primary(&c);
    let d = device_with_ticket(&c, &p, &addr_of(&p));
    let key = d.public_key();
    // Cut off at once; it comes back at once, with its ticket.
    p.execute(&format!("PRAGMA authorize_user='{key}:-1'"), [])
        .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("rejected"))
        .expect("the device hears that it is no longer accepted");
    assert!(
        s.auth_error.is_some_and(|e| e.contains("revoked")),
        "the reason is given"
    );
    assert!(
        resumed_handshakes(&p) >= 1.0,
        "the refusal came after a resumed handshake: admission is decided on every connection"
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM t WHERE v = 'after'"),
        0,
        "nothing reaches a node whose approval was taken back"
    );
}
