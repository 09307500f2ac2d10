//! Authorization (SPEC §4.2–4.3): the backend decides who joins; nothing unapproved gets in.
mod common;
use common::*;
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::Connection;
use std::sync::{Arc, Mutex};

fn primary_with(c: &Cluster, mode: &str) -> Connection {
    let p = c.auth_primary("p.db", mode);
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('public', '*')", [])
        .unwrap();
    p
}

/// A primary with `auth=user` approving sign-ups (see [`approve_by_data`]), and a device that
/// asked to sign up on it.
fn signed_up_device(c: &Cluster) -> (Connection, Connection) {
    let p = primary_with(c, "user");
    approve_by_data(&p);
    let d = c.device("d.db", &p);
    d.execute("PRAGMA user_signup='x'", []).unwrap();
    (p, d)
}

fn not_authorized(d: &Connection) {
    let s = d.sync_status().unwrap();
    assert_eq!(s.node_id, 0);
    assert!(!s.db_is_ready);
    assert_eq!(
        count(d, "SELECT count(*) FROM sqlite_master WHERE name = 't'"),
        0,
        "nothing downloaded"
    );
}

#[test]
fn user_signup_then_login_from_a_second_device_shares_the_users_rows() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    approve_by_data(&p);
    let d1 = c.device("d1.db", &p);
    d1.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("required"))
        .unwrap();
    not_authorized(&d1);
    d1.execute("PRAGMA user_signup='{\"name\": \"ann\", \"it''s\": 1}'", [])
        .unwrap();
    let s1 = ready(&d1);
    let user = s1.user_id.expect("a user id");
    assert!(s1.node_id > 1);
    d1.execute("INSERT INTO t(v) VALUES ('ann on phone')", [])
        .unwrap();
    wait_outbox_empty(&d1);

    let d2 = c.device("d2.db", &p);
    d2.execute(&format!("PRAGMA user_login=\"user:{user}\""), [])
        .unwrap();
    let s2 = ready(&d2);
    assert_eq!(s2.user_id, Some(user));
    assert_ne!(s2.node_id, s1.node_id);
    // The login downloaded the user's rows and the public ones.
    wait_count(
        &d2,
        "SELECT count(*) FROM t WHERE v IN ('ann on phone', 'public')",
        2,
    );
    // And rows flow between the user's devices.
    d2.execute("INSERT INTO t(v) VALUES ('ann on laptop')", [])
        .unwrap();
    wait_count(&d1, "SELECT count(*) FROM t WHERE v = 'ann on laptop'", 1);

    // No second sign-up once approved.
    let err = d1.execute("PRAGMA user_signup='again'", []).unwrap_err();
    assert!(err.to_string().contains("already authorized"), "{err}");
}

#[test]
fn an_approved_device_is_recognized_by_its_key_after_a_restart() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    let calls = Arc::new(Mutex::new(0));
    let n = calls.clone();
    p.set_auth_callback(Action::UserSignup, move |_r: &AuthRequest| {
        *n.lock().unwrap() += 1;
        Decision::User(77)
    })
    .unwrap();
    let d = c.device("d.db", &p);
    d.execute("PRAGMA user_signup='x'", []).unwrap();
    assert_eq!(ready(&d).user_id, Some(77));
    drop(d);
    let d = c.device("d.db", &p);
    let s = ready(&d);
    assert_eq!(
        (s.user_id, *calls.lock().unwrap()),
        (Some(77), 1),
        "no second request"
    );
}

#[test]
fn many_devices_signing_up_at_once_each_get_their_own_user() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    approve_by_data(&p);
    // Opened and asked together, so that their requests and decisions reach the primary's
    // writer together (it records them many to a commit).
    let devices: Vec<Connection> = (0..24)
        .map(|i| {
            let d = c.device(&format!("d{i}.db"), &p);
            d.execute(&format!("PRAGMA user_signup='u{i}'"), [])
                .unwrap();
            d
        })
        .collect();
    let mut users: Vec<i64> = devices
        .iter()
        .map(|d| ready(d).user_id.expect("a user"))
        .collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), devices.len(), "one new user each");
    let approved = p
        .nodes()
        .unwrap()
        .into_iter()
        .filter(|n| n.auth_state == "approved" && n.user_id.is_some())
        .count();
    assert_eq!(approved, devices.len());
}

fn seconds_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn pragma_nodes_says_when_and_where_an_approved_device_was_last_seen() {
    let c = Cluster::new();
    let (p, d) = signed_up_device(&c);
    let node_id = ready(&d).node_id;
    let node = |p: &Connection| {
        p.nodes()
            .unwrap()
            .into_iter()
            .find(|n| n.node_id == node_id)
            .expect("the device is listed")
    };
    // Connected: seen now, at its current address.
    let before = seconds_now();
    let n = node(&p);
    assert!(n.connected && n.last_seen.unwrap() >= before, "{n:?}");
    assert!(
        n.address.as_deref().unwrap().starts_with("127.0.0.1:"),
        "{n:?}"
    );
    // Reconnecting with its approval (no new request): its last session's end is kept.
    drop(d);
    let d = c.device("d.db", &p);
    // Ready as soon as it opens (its file is): wait for the session itself.
    d.wait_for(DEADLINE, |s| s.connected).unwrap();
    let before_leaving = seconds_now();
    drop(d);
    let n = wait_until("the primary to keep when the device left", || {
        let n = node(&p);
        (!n.connected && n.last_seen.is_some_and(|t| t >= before_leaving)).then_some(n)
    });
    assert!(n.address.is_some(), "{n:?}");
}

#[test]
fn a_device_rejected_after_its_approval_is_refused_when_it_returns() {
    let c = Cluster::new();
    let (p, d) = signed_up_device(&c);
    ready(&d);
    let key = d.public_key();
    // Recognized by its key once more (the primary now knows it well), then taken back.
    drop(d);
    let d = c.device("d.db", &p);
    ready(&d);
    drop(d);
    p.execute(&format!("PRAGMA authorize_user='{key}:-1'"), [])
        .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    let d = c.device("d.db", &p);
    let s = d
        .wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("rejected"))
        .expect("the device hears that it is no longer accepted");
    assert!(
        s.auth_error
            .is_some_and(|e| e.contains("revoked") && e.contains("operator")),
        "the reason is given"
    );
    assert!(!s.connected);
    assert_eq!(
        count(&d, "SELECT count(*) FROM t WHERE v = 'after'"),
        0,
        "nothing reaches a node whose approval was taken back"
    );
    // Its app cannot log it back in: only the backend gives the approval back.
    let again = d.execute("PRAGMA user_login='user:1'", []).unwrap_err();
    assert!(again.to_string().contains("already authorized"), "{again}");
    // An operator does, and the device, checking now and then, comes back as its user.
    p.execute(&format!("PRAGMA authorize_user='{key}:0'"), [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'after'", 1);
}

#[test]
fn async_mode_pending_until_pragma_authorize_user() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    let queue: Arc<Mutex<Vec<AuthRequest>>> = Default::default();
    let q = queue.clone();
    p.set_auth_callback(Action::UserSignup, move |r: &AuthRequest| {
        q.lock().unwrap().push(r.clone());
        Decision::Pending
    })
    .unwrap();
    let d = c.device("d.db", &p);
    d.execute("PRAGMA user_signup='bob'", []).unwrap();
    let req = wait_until("the request reaches the callback", || {
        queue.lock().unwrap().pop()
    });
    assert_eq!(req.data.as_deref(), Some("bob"));
    let info: serde_json::Value = serde_json::from_str(&req.node_info).unwrap();
    assert_eq!(info["public_key"].as_str(), Some(d.public_key().as_str()));
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .unwrap();
    not_authorized(&d);
    // PRAGMA nodes shows the request waiting, with its key.
    let nodes = p.nodes().unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n.public_key == req.pubkey && n.auth_state == "pending"),
        "{nodes:?}"
    );
    // The backend decides later, from its async code (a `#[tokio::main]` app: the PRAGMA's
    // wait for the writer panicked there, "Cannot block the current thread from within a
    // runtime": the Rust walkthrough).
    let backend = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    backend
        .block_on(async { p.execute(&format!("PRAGMA authorize_user=\"{}:0\"", req.pubkey), []) })
        .unwrap();
    let s = ready(&d);
    assert!(s.user_id.is_some());
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'public'", 1);
}

#[test]
fn manual_authorization_by_hand_and_node_level_mode() {
    let c = Cluster::new();
    let p = primary_with(&c, "node");
    // No callback: a new node waits; its key shows in PRAGMA nodes; an admin approves it.
    let d = c.device("d.db", &p);
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .unwrap();
    let key = d.public_key();
    let rows = p.query("PRAGMA nodes", []).unwrap();
    assert!(
        rows.iter().any(|r| r.get::<String>(0).unwrap() == key),
        "{rows:?}"
    );
    p.execute(&format!("PRAGMA authorize_node='{key}:secondary'"), [])
        .unwrap();
    assert!(
        ready(&d).user_id.is_some(),
        "node level: each node is its own user"
    );
    // With a new_node callback, nodes join at once.
    p.set_auth_callback(Action::NewNode, |_r: &AuthRequest| {
        Decision::Node(octodb::Role::Secondary)
    })
    .unwrap();
    let d2 = c.device("d2.db", &p);
    ready(&d2);
}

#[test]
fn rejection_panicking_and_slow_callbacks() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    p.set_auth_callback(Action::UserSignup, move |r: &AuthRequest| {
        match r.data.as_deref() {
            Some("slow") => {
                let _ = release_rx.lock().unwrap().recv_timeout(DEADLINE);
                Decision::User(0)
            }
            Some("panic") => panic!("the callback is broken"),
            Some("ok") => Decision::User(0),
            _ => Decision::Reject("go away".into()),
        }
    })
    .unwrap();
    let slow = c.device("slow.db", &p);
    slow.execute("PRAGMA user_signup='slow'", []).unwrap();
    let bad = c.device("bad.db", &p);
    bad.execute("PRAGMA user_signup='nope'", []).unwrap();
    let s = bad
        .wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("rejected"))
        .unwrap();
    assert_eq!(s.auth_error.as_deref(), Some("go away"));
    // No wait can help a refused device: the waits end at once and say why.
    // (Its own variant, to match on: it was a Rule, as broken replication rules are.)
    let refused = bad.wait_until_ready(DEADLINE).unwrap_err();
    assert!(matches!(refused, octodb::Error::Refused(_)), "{refused:?}");
    let refused = refused.to_string();
    assert!(
        refused.contains("the backend refused this device: go away"),
        "{refused}"
    );
    assert!(bad.wait_until_synced(DEADLINE).is_err());
    not_authorized(&bad);
    let broken = c.device("broken.db", &p);
    broken.execute("PRAGMA user_signup='panic'", []).unwrap();
    broken
        .wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("rejected"))
        .unwrap();
    not_authorized(&broken);
    // The slow callback still holds its device; others are served meanwhile.
    let fine = c.device("fine.db", &p);
    fine.execute("PRAGMA user_signup='ok'", []).unwrap();
    ready(&fine);
    assert!(!slow.sync_status().unwrap().db_is_ready);
    release_tx.send(()).unwrap();
    ready(&slow);
    // A rejected device may try again.
    bad.execute("PRAGMA user_signup='ok'", []).unwrap();
    ready(&bad);
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM _octo_nodes WHERE auth_state = 'approved'"
        ),
        3
    );
}

#[test]
fn pragmas_with_garbage_values_give_clear_errors() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    for bad in [
        "PRAGMA authorize_user='nonsense'",
        "PRAGMA authorize_user='abc:1'",
        "PRAGMA authorize_user",
        "PRAGMA authorize_node='x:boss'",
        "PRAGMA user_signup='x'",
    ] {
        let err = p.execute(bad, []).unwrap_err().to_string();
        assert!(err.starts_with("PRAGMA "), "{bad}: {err}");
    }
    let d = c.device("d.db", &p);
    let err = d.execute("PRAGMA user_signup", []).unwrap_err().to_string();
    assert!(err.contains("data"), "{err}");
    let err = d
        .execute("PRAGMA authorize_user='x:1'", [])
        .unwrap_err()
        .to_string();
    assert!(err.contains("PRAGMA authorize_user"), "{err}");
    let huge = format!("PRAGMA user_login='{}'", "x".repeat(20_000));
    assert!(d.execute(&huge, []).is_err());
}

#[test]
fn a_connected_device_whose_approval_is_taken_back_is_cut_off_at_once() {
    let c = Cluster::new();
    let (p, d) = signed_up_device(&c);
    ready(&d);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'before'", 1);
    let key = d.public_key();
    // Taken back while the device stays connected.
    p.execute(&format!("PRAGMA authorize_user='{key}:-1'"), [])
        .unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("rejected"))
        .expect("the device is cut off and told why when it reconnects");
    assert!(!s.connected);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    assert!(
        p.sync_status().unwrap().peers.is_empty(),
        "the primary holds no session for it"
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM t WHERE v = 'after'"),
        0,
        "nothing reaches a node whose approval was taken back"
    );
}

#[test]
fn a_device_waiting_for_a_sign_up_picks_up_an_approval_made_by_hand() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    let d = c.device("d.db", &p);
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("required"))
        .unwrap();
    not_authorized(&d);
    // The operator approves the device's key (as shown by `PRAGMA nodes` or the app) by hand,
    // before any sign-up: the device, not reopened, becomes ready.
    p.execute(&format!("PRAGMA authorize_user='{}:0'", d.public_key()), [])
        .unwrap();
    let s = ready(&d);
    assert!(s.user_id.is_some_and(|u| u > 0), "{s:?}");
    assert_eq!(s.auth_state, None);
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'public'", 1);
}

#[test]
fn approving_by_hand_needs_a_key_a_node_presented_unless_it_is_a_pre_approval() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    let unknown = octodb::crypto::NodeKeys::generate().public_key().to_hex();
    let err = p
        .execute(&format!("PRAGMA authorize_user='{unknown}:0'"), [])
        .unwrap_err();
    assert!(err.to_string().contains("no node has presented"), "{err}");
    assert!(err.to_string().contains("preauthorize_user"), "{err}");
    assert!(p.nodes().unwrap().iter().all(|n| n.public_key != unknown));
    // `<key>: 1`, with a space, is a mistake and is refused.
    let d = c.device("d.db", &p);
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("required"))
        .unwrap();
    let key = d.public_key();
    for bad in [
        format!("{key}: 0"),
        format!(" {key}:0"),
        format!("{key}:0 "),
    ] {
        let err = p
            .execute(&format!("PRAGMA authorize_user='{bad}'"), [])
            .unwrap_err();
        assert!(err.to_string().contains("authorize_user"), "{bad}: {err}");
    }
    // A pre-approval names its key on purpose: the device approved before it ever connects.
    let fresh = octodb::crypto::NodeKeys::generate().public_key().to_hex();
    p.execute(&format!("PRAGMA preauthorize_user='{fresh}:0'"), [])
        .unwrap();
    assert!(p
        .nodes()
        .unwrap()
        .iter()
        .any(|n| n.public_key == fresh && n.auth_state == "approved"));
}

#[test]
fn refused_sign_ups_from_fresh_keys_spend_no_node_ids() {
    let c = Cluster::new();
    let p = primary_with(&c, "user");
    p.set_auth_callback(Action::UserSignup, |r: &AuthRequest| {
        match r.data.as_deref() {
            Some("welcome") => Decision::User(0),
            _ => Decision::Reject("not today".into()),
        }
    })
    .unwrap();
    for i in 0..20 {
        let d = c.device(&format!("stranger{i}.db"), &p);
        d.execute("PRAGMA user_signup='stranger'", []).unwrap();
        d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("rejected"))
            .unwrap();
    }
    let welcome = c.device("welcome.db", &p);
    welcome.execute("PRAGMA user_signup='welcome'", []).unwrap();
    let s = ready(&welcome);
    assert_eq!(s.node_id, 2, "the first node id after the primary's own");
    let nodes = p.nodes().unwrap();
    assert_eq!(
        nodes.iter().filter(|n| n.auth_state == "rejected").count(),
        20,
        "refused keys are kept (bounded) for the admin to see"
    );
    assert!(nodes
        .iter()
        .filter(|n| n.auth_state == "rejected")
        .all(|n| n.node_id == 0));
}
