//! Attacks on authorization over real sockets: each is refused with nothing stored, and the
//! primary keeps serving everyone else.
mod common;
use common::*;
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::crypto::NodeKeys;
use octodb::net::{AuthAsk, HandshakeOptions, Message, SecureStream};
use octodb::Connection;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn primary(c: &Cluster) -> Connection {
    let p = c.auth_primary("p.db", "user");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('secret of user 5', 5)",
        [],
    )
    .unwrap();
    p
}

fn hello(auth: Option<AuthAsk>) -> Message {
    Message::Hello {
        role: octodb::Role::Secondary,
        last_seq: 0,
        info: "{}".into(),
        auth,
    }
}

async fn session(addr: std::net::SocketAddr) -> SecureStream {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    SecureStream::connect(tcp, &NodeKeys::generate(), &HandshakeOptions::default())
        .await
        .unwrap()
}

async fn send(s: &mut SecureStream, m: &Message) {
    s.send(&m.encode()).await.unwrap();
    s.flush().await.unwrap();
}

/// Everything the primary sends until it closes the connection.
async fn until_closed(s: &mut SecureStream) -> Vec<Message> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + DEADLINE;
    while let Ok(Ok(bytes)) = tokio::time::timeout_at(end, s.recv()).await {
        got.push(Message::decode(&bytes).unwrap());
    }
    assert!(
        tokio::time::Instant::now() < end,
        "the primary did not close the connection"
    );
    got
}

fn forged_insert() -> Message {
    let mut cs = octodb::changes::ChangeSet::default();
    let cols = vec!["id".to_string(), "v".to_string(), "row_owner".to_string()];
    let table = cs.table_index("t", &cols);
    cs.ops.push(octodb::changes::Op::Insert {
        table,
        rowid: 99,
        values: vec![
            octodb::Value::Integer(99),
            octodb::Value::Text("forged".into()),
            octodb::Value::Integer(5),
        ],
    });
    Message::Txns {
        txns: vec![(1, cs)],
    }
}

fn still_serving(c: &Cluster, p: &Connection, name: &str) {
    let d = c.device(name, p);
    d.execute("PRAGMA user_signup='ok'", []).unwrap();
    ready(&d);
    assert_eq!(
        count(&d, "SELECT count(*) FROM t"),
        0,
        "user rows of others are not sent"
    );
}

#[test]
fn an_unapproved_node_gets_nothing_and_stores_nothing() {
    let c = Cluster::new();
    let p = primary(&c);
    p.set_auth_callback(Action::UserSignup, |r: &AuthRequest| {
        match r.data.as_deref() {
            Some("ok") => Decision::User(0),
            _ => Decision::Pending,
        }
    })
    .unwrap();
    let addr = p.bound_addrs()[0];
    runtime().block_on(async {
        // Without a request: told to sign up, then the connection closes; no rows, no schema.
        let mut s = session(addr).await;
        send(&mut s, &hello(None)).await;
        let got = until_closed(&mut s).await;
        assert!(
            matches!(got.as_slice(), [Message::AuthRequired { .. }]),
            "{got:?}"
        );
        // Sending changes instead of waiting: closed, nothing applied.
        let mut s = session(addr).await;
        send(
            &mut s,
            &hello(Some(AuthAsk {
                action: Action::UserSignup,
                data: "wait".into(),
            })),
        )
        .await;
        send(&mut s, &forged_insert()).await;
        let got = until_closed(&mut s).await;
        assert!(
            got.iter().all(|m| matches!(m, Message::AuthPending)),
            "{got:?}"
        );
    });
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'forged'"), 0);
    still_serving(&c, &p, "real.db");
}

#[test]
fn a_secondary_cannot_act_as_a_primary() {
    let c = Cluster::new();
    let p = primary(&c);
    let addr = p.bound_addrs()[0];
    runtime().block_on(async {
        let mut s = session(addr).await;
        let m = Message::Hello {
            role: octodb::Role::Primary,
            last_seq: 0,
            info: "{}".into(),
            auth: None,
        };
        send(&mut s, &m).await;
        let got = until_closed(&mut s).await;
        assert!(
            matches!(got.as_slice(), [Message::Refused { .. }]),
            "{got:?}"
        );
    });
    assert_eq!(count(&p, "SELECT count(*) FROM _octo_nodes"), 0);
    p.set_auth_callback(Action::UserSignup, |_r: &AuthRequest| Decision::User(0))
        .unwrap();
    still_serving(&c, &p, "real.db");
}

#[test]
fn a_flood_of_signups_is_bounded_and_approved_devices_are_still_served() {
    let c = Cluster::new();
    let p = primary(&c);
    p.set_auth_callback(Action::UserSignup, |r: &AuthRequest| {
        match r.data.as_deref() {
            Some("ok") => Decision::User(0),
            _ => Decision::Pending,
        }
    })
    .unwrap();
    // One approved device before the flood.
    let d = c.device("before.db", &p);
    d.execute("PRAGMA user_signup='ok'", []).unwrap();
    ready(&d);
    drop(d);
    let addr = p.bound_addrs()[0];
    let flood = octodb::auth::MAX_PENDING + 64;
    let rt = runtime();
    let (refused, _held) = rt.block_on(async {
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..flood {
            let mut s = session(addr).await;
            let data = format!("{{\"n\": {i}, \"garbage\": \"\u{0}\u{ffff}'\\\"\"}}");
            send(
                &mut s,
                &hello(Some(AuthAsk {
                    action: Action::UserSignup,
                    data,
                })),
            )
            .await;
            match Message::decode(&s.recv().await.unwrap()).unwrap() {
                Message::AuthPending => held.push(s),
                Message::Refused { reason } => {
                    assert!(reason.contains("too many"), "{reason}");
                    refused += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (refused, held)
    });
    assert_eq!(refused, flood - octodb::auth::MAX_PENDING);
    // The approved device reconnects and syncs while the flood is held open.
    let d = c.device("before.db", &p);
    ready(&d);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('news', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'news'", 1);
    let stored = count(&p, "SELECT count(*) FROM _octo_nodes");
    assert!(
        stored <= 1 + octodb::auth::MAX_PENDING as i64,
        "{stored} rows"
    );
}

#[test]
fn an_approved_device_cannot_touch_another_users_rows() {
    let c = Cluster::new();
    let p = primary(&c);
    p.set_auth_callback(Action::UserSignup, |_r: &AuthRequest| Decision::User(6))
        .unwrap();
    let d = c.device("d.db", &p);
    d.execute("PRAGMA user_signup='x'", []).unwrap();
    ready(&d);
    // Through SQL the row of user 5 is not even visible; locally forged rows are refused.
    assert_eq!(count(&d, "SELECT count(*) FROM t"), 0);
    assert!(d
        .execute("INSERT INTO t(v, row_owner) VALUES ('as 5', 5)", [])
        .is_err());
    d.execute("INSERT INTO t(v) VALUES ('mine')", []).unwrap();
    wait_outbox_empty(&d);
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE row_owner = 5"), 1);
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM t WHERE v = 'mine' AND row_owner = 6"
        ),
        1
    );
}

/// A device keeps the key of the primary that admitted it: another primary at the same
/// address (another network's, or an impostor; no network key set) gets nothing from it,
/// not even its pending rows, and the device says why in its status.
#[test]
fn a_device_sends_nothing_to_a_primary_other_than_the_one_that_admitted_it() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let port = p.bound_addrs()[0].port();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('synced')", []).unwrap();
    wait_outbox_empty(&d);
    drop(p);
    d.wait_for(DEADLINE, |s| !s.connected).unwrap();
    d.execute("INSERT INTO t(v) VALUES ('secret')", []).unwrap();

    let impostor = Connection::open(&primary_uri(&c.path("impostor.db"), port)).unwrap();
    impostor
        .execute(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
            [],
        )
        .unwrap();
    let status = d
        .wait_for(DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("not the key"))
        })
        .unwrap();
    assert!(!status.connected);
    assert_eq!(count(&impostor, "SELECT count(*) FROM t"), 0);
    let known = impostor.query("PRAGMA nodes", []).unwrap();
    assert!(
        known.is_empty(),
        "the impostor learned of the device: {known:?}"
    );
    drop(impostor);

    // Its own primary back at the address: the pending row goes there.
    let p = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'secret'", 1);
}
