//! Service channels (protocol 6): a primary serves named services on its bound port to approved
//! nodes only, on real loopback sockets and real files.
mod common;
use common::*;
use octodb::api::channel::{block_on, Channel};
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::Connection;

/// Serves `echo` on `p`: each frame comes back prefixed with the peer's node and user ids.
fn serve_echo(p: &Connection) {
    p.serve_channel("echo", |mut ch: Channel| async move {
        let peer = ch.peer().clone();
        while let Ok(frame) = ch.recv().await {
            let mut answer =
                format!("{}:{}:{:?}:", peer.node_id, peer.user_id, peer.role).into_bytes();
            answer.extend_from_slice(&frame);
            if ch.send(&answer).await.is_err() {
                break;
            }
        }
    })
    .unwrap();
}

fn refusal(d: &Connection, service: &str) -> String {
    d.open_channel(service)
        .expect_err("the channel must be refused")
        .to_string()
}

#[test]
fn an_approved_device_talks_to_the_service_as_itself() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    serve_echo(&p);
    let d = c.device("d.db", &p);
    let status = ready(&d);
    let mut ch = d.open_channel("echo").unwrap();
    assert_eq!(ch.me().0, status.node_id);
    assert_eq!(ch.peer().public_key.to_hex(), p.public_key());
    let answer = block_on(async {
        ch.send(b"ping").await?;
        ch.recv().await
    })
    .unwrap();
    assert_eq!(
        String::from_utf8(answer).unwrap(),
        format!(
            "{}:{}:Secondary:ping",
            status.node_id,
            status.user_id.unwrap_or(0)
        )
    );
    // Sync goes on beside the channel.
    p.execute("INSERT INTO t(v, row_owner) VALUES ('x', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t", 1);
}

#[test]
fn an_unknown_service_is_named_in_the_refusal() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let err = refusal(&d, "nothing-here");
    assert!(err.contains("no service named `nothing-here`"), "{err}");
    // Only primaries serve.
    let err = d
        .serve_channel("echo", |_ch| async {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("only primaries"), "{err}");
}

#[test]
fn a_node_waiting_for_approval_is_refused() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "node");
    serve_echo(&p);
    let d = c.device("d.db", &p);
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .unwrap();
    let err = refusal(&d, "echo");
    assert!(err.contains("waits for the backend's decision"), "{err}");
    // Approved by hand: the same node now gets its channel.
    p.execute(
        &format!("PRAGMA authorize_node='{}:secondary'", d.public_key()),
        [],
    )
    .unwrap();
    ready(&d);
    assert!(d.open_channel("echo").is_ok());
}

#[test]
fn a_rejected_node_is_refused() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    p.set_auth_callback(Action::UserSignup, |_r: &AuthRequest| {
        Decision::Reject("not today".into())
    })
    .unwrap();
    serve_echo(&p);
    let d = c.device("d.db", &p);
    d.execute("PRAGMA user_signup='x'", []).unwrap();
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("rejected"))
        .unwrap();
    let err = refusal(&d, "echo");
    assert!(err.contains("refused by the backend"), "{err}");
}

#[test]
fn a_node_that_was_never_approved_is_refused() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    serve_echo(&p);
    // No sign-up: the primary knows at most that this key showed up.
    let d = c.device("d.db", &p);
    let err = refusal(&d, "echo");
    assert!(err.contains("not approved on this network"), "{err}");
}

#[test]
fn a_user_device_gets_its_user_id() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    approve_by_data(&p);
    serve_echo(&p);
    let d = c.device("d.db", &p);
    d.execute("PRAGMA user_signup='x'", []).unwrap();
    let s = ready(&d);
    let user = s.user_id.expect("a user id");
    let mut ch = d.open_channel("echo").unwrap();
    assert_eq!(ch.me(), (s.node_id, user));
    let answer = block_on(async {
        ch.send(b"hi").await?;
        ch.recv().await
    })
    .unwrap();
    assert_eq!(
        String::from_utf8(answer).unwrap(),
        format!("{}:{user}:Secondary:hi", s.node_id)
    );
}

#[test]
fn an_open_channel_ends_when_the_approval_is_taken_back() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    approve_by_data(&p);
    serve_echo(&p);
    let d = c.device("d.db", &p);
    d.execute("PRAGMA user_signup='x'", []).unwrap();
    ready(&d);
    let mut ch = d.open_channel("echo").unwrap();
    block_on(async {
        ch.send(b"before").await?;
        ch.recv().await
    })
    .unwrap();
    p.execute(
        &format!("PRAGMA authorize_user='{}:-1'", d.public_key()),
        [],
    )
    .unwrap();
    // The primary closes the channel (an echo already under way may still come first).
    let ended = block_on(async {
        let _ = ch.send(b"after").await;
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Err(e) = ch.recv().await {
                    return e;
                }
            }
        })
        .await
    });
    assert!(ended.is_ok(), "the channel must be closed by the primary");
    let err = refusal(&d, "echo");
    assert!(err.contains("refused by the backend"), "{err}");
}
