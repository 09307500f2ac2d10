//! Hostile or broken peers: each must lose only its own connection, with nothing stored, while
//! the primary keeps serving real devices.
mod common;
use common::*;
use octodb::crypto::NodeKeys;
use octodb::net::{HandshakeOptions, Message, SecureStream};
use octodb::Connection;
use std::io::{Read, Write};
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// After the attack, a real device still gets the primary's rows and the primary's log holds
/// only what real nodes wrote.
fn still_serving(c: &Cluster, p: &Connection, name: &str) {
    let d = c.device(name, p);
    ready(&d);
    p.execute("INSERT INTO t(v, row_owner) VALUES (?1, '*')", [name])
        .unwrap();
    wait_count(&d, &format!("SELECT count(*) FROM t WHERE v = '{name}'"), 1);
}

fn setup() -> (Cluster, Connection, std::net::SocketAddr) {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let addr = p.bound_addrs()[0];
    (c, p, addr)
}

/// Wait until the primary closes `s` (read returns 0 or an error).
fn wait_closed(mut s: std::net::TcpStream) {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[test]
fn garbage_instead_of_a_handshake_closes_only_that_connection() {
    let (c, p, addr) = setup();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.write_all(&[0xff; 70_000]).unwrap_or(());
    wait_closed(s);
    still_serving(&c, &p, "after-garbage");
}

#[test]
fn a_silent_connection_does_not_block_others() {
    let (c, p, addr) = setup();
    let silent = std::net::TcpStream::connect(addr).unwrap();
    still_serving(&c, &p, "beside-silent");
    drop(silent);
}

/// Complete a real handshake with a fresh key and hand the stream to `attack`.
fn with_session(addr: std::net::SocketAddr, attack: impl AsyncFnOnce(SecureStream)) {
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let keys = NodeKeys::generate();
        let s = SecureStream::connect(tcp, &keys, &HandshakeOptions::default())
            .await
            .unwrap();
        attack(s).await;
    });
}

async fn expect_closed(s: &mut SecureStream) {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(end, s.recv()).await {
            Err(_) => panic!("the primary did not close the connection"),
            Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // e.g. Welcome/Refused before the close
        }
    }
}

#[test]
fn undecodable_message_closes_the_connection() {
    let (c, p, addr) = setup();
    with_session(addr, async |mut s| {
        s.send(&[1, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff])
            .await
            .unwrap();
        s.flush().await.unwrap();
        expect_closed(&mut s).await;
    });
    still_serving(&c, &p, "after-undecodable");
}

#[test]
fn unknown_protocol_version_closes_the_connection() {
    let (c, p, addr) = setup();
    with_session(addr, async |mut s| {
        let mut m = Message::Hello {
            role: octodb::Role::Secondary,
            last_seq: 0,
            info: "{}".into(),
            auth: None,
        }
        .encode();
        m[0] = 99;
        s.send(&m).await.unwrap();
        s.flush().await.unwrap();
        expect_closed(&mut s).await;
    });
    still_serving(&c, &p, "after-version");
}

#[test]
fn unexpected_message_instead_of_hello_closes_the_connection() {
    let (c, p, addr) = setup();
    with_session(addr, async |mut s| {
        s.send(&Message::SnapshotEnd { seq: 7 }.encode())
            .await
            .unwrap();
        s.flush().await.unwrap();
        expect_closed(&mut s).await;
    });
    still_serving(&c, &p, "after-unexpected");
    assert_eq!(
        count(&p, "SELECT count(*) FROM _octo_nodes"),
        1,
        "only the real device is known"
    );
}

#[test]
fn oversized_message_closes_the_connection() {
    let (c, p, addr) = setup();
    with_session(addr, async |mut s| {
        let hello = Message::Hello {
            role: octodb::Role::Secondary,
            last_seq: 0,
            info: "{}".into(),
            auth: None,
        };
        s.send(&hello.encode()).await.unwrap();
        s.flush().await.unwrap();
        let huge = vec![0u8; 65 * 1024 * 1024];
        // The primary may close while this is still being written.
        let _ = s.send(&huge).await;
        let _ = s.flush().await;
        expect_closed(&mut s).await;
    });
    still_serving(&c, &p, "after-oversized");
}

#[test]
fn a_node_without_the_network_key_cannot_connect() {
    let c = Cluster::new();
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&key=s3cret",
        c.path("p.db").display()
    );
    let p = Connection::open(&uri).unwrap();
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    let addr = addr_of(&p);
    let wrong = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://{addr}&key=guess",
        c.path("wrong.db").display()
    ))
    .unwrap();
    let right = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://{addr}&key=s3cret",
        c.path("right.db").display()
    ))
    .unwrap();
    ready(&right);
    // The right device joined after the wrong one started trying; the wrong one never does.
    let err = wrong
        .wait_until_ready(Duration::from_millis(500))
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(
        count(
            &wrong,
            "SELECT count(*) FROM sqlite_master WHERE name = 't'"
        ),
        0
    );
    assert_eq!(count(&p, "SELECT count(*) FROM _octo_nodes"), 1);
}
