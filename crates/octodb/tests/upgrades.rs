//! Upgrades in the field: apps update over weeks, so primaries and devices of neighbouring
//! versions meet. The primary serves a device from before version negotiation; a device that
//! meets a primary it cannot talk to, or a schema it cannot run, says so in `sync_error` and
//! keeps its data.

mod common;

use common::*;
use octodb::changes::{ChangeSet, Op, TableHeader};
use octodb::crypto::NodeKeys;
use octodb::log::EntryBody;
use octodb::net::version::Versions;
use octodb::net::{HandshakeOptions, Message, SecureStream};
use octodb::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn next(s: &mut SecureStream) -> Message {
    let bytes = tokio::time::timeout(DEADLINE, s.recv())
        .await
        .expect("the primary answers")
        .expect("the connection stays open");
    Message::decode(&bytes).expect("a message of the agreed encoding")
}

#[test]
fn a_device_from_before_version_negotiation_syncs_with_this_primary() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (1, 'for all', '*')",
        [],
    )
    .unwrap();
    let addr = addr_of(&p);
    runtime().block_on(async {
        // Exactly what a device of protocol 2 does: no offer in the handshake.
        let mut s = new_device_says_hello(&addr, Versions::PRE_NEGOTIATION).await;
        let Message::Welcome {
            node_id, user_id, ..
        } = next(&mut s).await
        else {
            panic!("expected Welcome");
        };
        let mut downloaded = Vec::new();
        loop {
            match next(&mut s).await {
                Message::SnapshotRows { rows, .. } => downloaded.extend(rows),
                Message::SnapshotEnd { .. } => break,
                _ => {}
            }
        }
        assert_eq!(downloaded.len(), 1, "the download reaches the old device");
        let rowid = (i64::from(node_id) << 32) | 1;
        let txn = ChangeSet {
            tables: vec![TableHeader {
                name: "t".into(),
                columns: vec!["id".into(), "v".into(), "row_owner".into()],
            }],
            ops: vec![Op::Insert {
                table: 0,
                rowid,
                values: vec![
                    Value::Integer(rowid),
                    Value::Text("old app".into()),
                    Value::Integer(user_id),
                ],
            }],
        };
        let m = Message::Txns {
            txns: vec![(1, txn)],
        };
        s.send(&m.encode()).await.unwrap();
        s.flush().await.unwrap();
        loop {
            let Message::Entries { entries, .. } = next(&mut s).await else {
                continue;
            };
            if let Some(e) = entries.iter().find(|e| e.origin_node == node_id) {
                assert!(matches!(e.body, EntryBody::Changes(_)), "{:?}", e.body);
                break;
            }
        }
    });
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'old app'"), 1);
}

/// A new device's session over the raw protocol, speaking the newest of `versions`, its
/// Hello sent.
async fn new_device_says_hello(addr: &str, versions: Versions) -> SecureStream {
    let options = HandshakeOptions {
        versions,
        ..Default::default()
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = SecureStream::connect(tcp, &NodeKeys::generate(), &options)
        .await
        .expect("this primary serves the version");
    assert_eq!(s.protocol_version(), versions.newest);
    let hello = Message::Hello {
        role: octodb::Role::Secondary,
        last_seq: 0,
        info: "{}".into(),
        auth: None,
    };
    s.send(&hello.encode()).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// The kinds of message a new device speaking `versions` hears from `addr` until the
/// primary answers its first heartbeat (which the primary does only once it has caught the
/// device up).
async fn kinds_until_heartbeat_answered(addr: &str, versions: Versions) -> Vec<&'static str> {
    let mut s = new_device_says_hello(addr, versions).await;
    let mut kinds = Vec::new();
    loop {
        let m = next(&mut s).await;
        kinds.push(m.kind());
        match m {
            Message::SnapshotEnd { .. } => {
                s.send(&Message::Heartbeat.encode()).await.unwrap();
                s.flush().await.unwrap();
            }
            Message::Heartbeat => return kinds,
            _ => {}
        }
    }
}

#[test]
fn only_devices_of_protocol_10_hear_that_they_caught_up() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute("INSERT INTO t(id, v, row_owner) VALUES (1, 'x', '*')", [])
        .unwrap();
    let addr = addr_of(&p);
    runtime().block_on(async {
        let old = Versions {
            oldest: 2,
            newest: 9,
        };
        let kinds = kinds_until_heartbeat_answered(&addr, old).await;
        assert!(
            !kinds.contains(&"CaughtUp"),
            "sent to a device of 9: {kinds:?}"
        );
        let new = Versions {
            oldest: 2,
            newest: 10,
        };
        let kinds = kinds_until_heartbeat_answered(&addr, new).await;
        let end = kinds.iter().position(|k| *k == "SnapshotEnd").unwrap();
        let caught_up = kinds.iter().position(|k| *k == "CaughtUp");
        assert!(
            caught_up.is_some_and(|i| i > end),
            "once the download is sent, before anything else streams: {kinds:?}"
        );
    });
}

/// A device of protocol 11 gets its download's first rows before the primary has counted
/// them, and the count after them (`SnapshotTotal`); an older one gets the count first, in
/// `SnapshotBegin`, as before.
#[test]
fn only_devices_of_protocol_11_get_the_download_count_after_the_first_rows() {
    let c = Cluster::new();
    let mut p = c.primary_with_t();
    {
        let tx = p.transaction().unwrap();
        let mut ins = tx
            .prepare("INSERT INTO t(v, row_owner) VALUES (?1, '*')")
            .unwrap();
        for i in 0..200_000 {
            ins.execute([format!(
                "row {i} of a download long enough to be counted meanwhile"
            )])
            .unwrap();
        }
        drop(ins);
        tx.commit().unwrap();
    }
    let addr = addr_of(&p);
    runtime().block_on(async {
        for (newest, later) in [(10, false), (11, true)] {
            let mut s = new_device_says_hello(&addr, Versions { oldest: 2, newest }).await;
            let (mut begun_with, mut counted, mut rows) = (None, None, 0u64);
            loop {
                match next(&mut s).await {
                    Message::SnapshotBegin { total_rows, .. } => begun_with = Some(total_rows),
                    Message::SnapshotRows { rows: r, .. } => rows += r.len() as u64,
                    Message::SnapshotTotal { total_rows } => {
                        assert!(begun_with.is_some(), "after SnapshotBegin");
                        counted = Some(total_rows)
                    }
                    Message::SnapshotEnd { .. } => break,
                    _ => {}
                }
            }
            assert_eq!(rows, 200_000);
            match later {
                false => {
                    assert_eq!(begun_with, Some(200_000), "protocol {newest}");
                    assert_eq!(counted, None, "protocol {newest}");
                }
                true => {
                    assert_eq!(begun_with, Some(0), "protocol {newest}");
                    assert_eq!(counted, Some(200_000), "protocol {newest}");
                }
            }
        }
    });
}

/// Serves one kind of old or new primary on a loopback port until the test ends.
async fn serve(listener: TcpListener, primary: impl Fn(TcpStream) -> tokio::task::JoinHandle<()>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        primary(tcp);
    }
}

fn device_sees_error(primary: fn(TcpStream) -> tokio::task::JoinHandle<()>, expected: &str) {
    let c = Cluster::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(serve(listener, primary));
    let d = octodb::Connection::open(&device_uri(&c.path("d.db"), &addr)).unwrap();
    let status = d
        .wait_for(DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains(expected))
        })
        .unwrap_or_else(|e| panic!("sync_error never said `{expected}`: {e}"));
    assert!(!status.connected, "{status:?}");
    // The device still works locally.
    assert!(count(&d, "SELECT count(*) FROM sqlite_master") > 0);
}

#[test]
fn a_device_newer_than_its_primary_says_to_upgrade_the_primary() {
    // A primary of protocol 2 hangs up on any first handshake message that carries data.
    device_sees_error(
        |mut tcp| {
            tokio::spawn(async move {
                if let Ok(len) = tcp.read_u16().await {
                    let mut first = vec![0u8; usize::from(len)];
                    let _ = tcp.read_exact(&mut first).await;
                }
                let _ = tcp.shutdown().await;
            })
        },
        "upgrade the primaries",
    );
}

#[test]
fn a_device_older_than_its_primary_says_to_upgrade_the_app() {
    // A primary that no longer serves this build's versions.
    device_sees_error(
        |tcp| {
            tokio::spawn(async move {
                let newer = HandshakeOptions {
                    versions: Versions {
                        oldest: 200,
                        newest: 201,
                    },
                    ..Default::default()
                };
                let keys = NodeKeys::generate();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    SecureStream::accept(tcp, &keys, &newer),
                )
                .await;
            })
        },
        "upgrade this node",
    );
}

#[test]
fn a_schema_the_device_cannot_run_stops_sync_with_a_clear_error_and_keeps_its_data() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('mine')", []).unwrap();
    wait_outbox_empty(&d);
    // The backend registers a function that the device's app does not have, and indexes by it.
    p.create_scalar_function(
        "backend_only",
        1,
        rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC
            | rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |ctx| ctx.get::<String>(0).map(|s| s.to_uppercase()),
    )
    .unwrap();
    p.execute("CREATE INDEX t_upper ON t(backend_only(v))", [])
        .unwrap();
    let status = d
        .wait_for(DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot run") && e.contains("update the app"))
        })
        .expect("the device reports the schema it cannot run");
    assert!(
        status.sync_error.unwrap().contains("backend_only"),
        "names what is missing"
    );
    // Nothing was lost, and the app can still work offline.
    assert_eq!(count(&d, "SELECT count(*) FROM t WHERE v = 'mine'"), 1);
    d.execute("INSERT INTO t(v) VALUES ('later')", []).unwrap();
    assert_eq!(count(&d, "SELECT count(*) FROM t"), 2);
}
