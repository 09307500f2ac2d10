//! The admin console and `/metrics` (issue 24): served by a real primary on loopback, used
//! over HTTP as a browser and as Prometheus would.
mod common;
use common::http::*;
use common::*;
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::Connection;

/// A primary with `auth=user` whose backend leaves sign-ups waiting, serving its console on a
/// free loopback port, with table `t`.
fn primary_with_console(c: &Cluster, token: Option<&str>) -> Connection {
    let token = token.map_or(String::new(), |t| format!("&admin_token={t}"));
    let p = Connection::open(&format!(
        "{}&auth=user&admin=127.0.0.1:0{token}",
        primary_uri(&c.path("p.db"), 0)
    ))
    .expect("open primary with its console");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    p.set_auth_callback(Action::UserSignup, |_r: &AuthRequest| Decision::Pending)
        .unwrap();
    p
}

/// Log in as the page's form does; the session cookie ("name=value").
fn login(base: &str, token: &str) -> String {
    let resp = agent()
        .post(&format!("{base}/login"))
        .send_form(&[("token", token)])
        .expect("login answers");
    assert_eq!(
        resp.status(),
        303,
        "a good token logs in and goes to the page"
    );
    let cookie = resp
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap_or_default().to_string()
}

/// The page's CSRF token, from its meta tag.
fn csrf_of(page: &str) -> String {
    let (_, after) = page
        .split_once("name=\"octodb-csrf\" content=\"")
        .expect("the page carries its CSRF token");
    after.split('"').next().unwrap_or_default().to_string()
}

#[test]
fn without_the_token_page_api_and_metrics_answer_401() {
    let c = Cluster::new();
    let p = primary_with_console(&c, Some("sesame-for-tests"));
    let base = admin_url(&p);
    for path in ["/", "/api/state", "/api/events", "/metrics"] {
        let (status, _) = call(agent().get(&format!("{base}{path}")).call());
        assert_eq!(status, 401, "{path} without the token");
        let (status, _) = call(
            agent()
                .get(&format!("{base}{path}"))
                .set("Authorization", "Bearer wrong")
                .call(),
        );
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (status, _) = call(
        agent()
            .post(&format!("{base}/api/authorize"))
            .set("content-type", "application/json")
            .send_string(r#"{"pubkey":"00","decision":"new_user"}"#),
    );
    assert_eq!(status, 401, "an action without the token");
    let (status, _) = call(
        agent()
            .post(&format!("{base}/login"))
            .send_form(&[("token", "wrong")]),
    );
    assert_eq!(status, 401, "a login with a wrong token");
    let (status, _) = call(agent().get(&format!("{base}/?token=guess")).call());
    assert_eq!(status, 401, "a login with a wrong token in the address");
    for path in ["/api/state", "/metrics"] {
        let (status, body) = call(
            agent()
                .get(&format!("{base}{path}"))
                .set("Authorization", "Bearer sesame-for-tests")
                .call(),
        );
        assert_eq!(status, 200, "{path} with the token: {body}");
    }
    let cookie = login(&base, "sesame-for-tests");
    let (status, page) = call(
        agent()
            .get(&format!("{base}/"))
            .set("Cookie", &cookie)
            .call(),
    );
    assert_eq!(status, 200);
    assert!(page.contains("octodb admin console"), "{page}");
    // Each wrong token is in the journal, a request without one (a browser before its login)
    // is not.
    let (_, state) = call(
        agent()
            .get(&format!("{base}/api/state"))
            .set("Cookie", &cookie)
            .call(),
    );
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let refused: Vec<&str> = state["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["ok"] == false)
        .filter_map(|a| a["what"].as_str())
        .collect();
    for what in [
        "/ with a wrong bearer token",
        "/api/state with a wrong bearer token",
        "/api/events with a wrong bearer token",
        "/metrics with a wrong bearer token",
        "login with a wrong token",
        "login with a wrong token (?token=)",
    ] {
        assert!(refused.contains(&what), "{what} in {refused:?}");
    }
    assert_eq!(refused.len(), 6, "{refused:?}");
}

/// The page's figures of the task queue and of service channels (the object broker's).
#[test]
fn the_state_holds_task_and_service_figures() {
    let c = Cluster::new();
    let p = primary_with_console(&c, Some("sesame-for-tests"));
    let base = admin_url(&p);
    p.serve_channel("broker", |_channel| async {}).unwrap();
    // The task queue's table as octodb-tasks makes it, in short: states by count.
    p.execute_batch(
        "CREATE TABLE octo_tasks(id INTEGER PRIMARY KEY, state TEXT, row_owner);
         INSERT INTO octo_tasks(state, row_owner) VALUES (NULL, 1), ('done', 1), ('done', 1);",
    )
    .unwrap();
    let (status, body) = call(
        agent()
            .get(&format!("{base}/api/state"))
            .set("Authorization", "Bearer sesame-for-tests")
            .call(),
    );
    assert_eq!(status, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        state["tasks"],
        serde_json::json!([{"state": "done", "count": 2}, {"state": "queued", "count": 1}])
    );
    assert_eq!(
        state["services"],
        serde_json::json!([{"service": "broker", "serving": true, "open_channels": 0, "opened": 0}])
    );
}

#[test]
fn a_browser_approves_a_waiting_device_and_metrics_show_its_writes() {
    let c = Cluster::new();
    let p = primary_with_console(&c, None);
    // The token made at the first start, kept in the file.
    let token = text(&p, "PRAGMA admin_token");
    assert_eq!(token.len(), 64, "a random 256-bit token: {token}");
    let base = admin_url(&p);
    let host = base.trim_start_matches("http://").to_string();

    let d = c.device("d.db", &p);
    d.execute("PRAGMA user_signup='alice'", []).unwrap();
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .expect("the device waits for a decision");
    let key = d.public_key();

    let cookie = login(&base, &token);
    let (status, page) = call(
        agent()
            .get(&format!("{base}/"))
            .set("Cookie", &cookie)
            .call(),
    );
    assert_eq!(status, 200);
    let csrf = csrf_of(&page);
    assert_eq!(csrf.len(), 64);
    // A logout without the session's CSRF header (another site's form) is refused, and the
    // session stays.
    let (status, _) = call(
        agent()
            .post(&format!("{base}/logout"))
            .set("Cookie", &cookie)
            .call(),
    );
    assert_eq!(status, 403, "a logout without the CSRF header");
    assert!(
        page.contains(r#"id="logout""#) && page.contains(r#"fetch("/logout""#),
        "the page has a button that ends the session"
    );

    // The state lists the request.
    let (_, state) = call(
        agent()
            .get(&format!("{base}/api/state"))
            .set("Cookie", &cookie)
            .call(),
    );
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let waiting = state["waiting"].as_array().unwrap();
    assert!(
        waiting.iter().any(|w| w["public_key"] == key.as_str()),
        "the waiting request is listed: {state}"
    );

    let body = format!(r#"{{"pubkey":"{key}","decision":"new_user"}}"#);
    let post = |headers: &[(&str, &str)]| {
        let mut r = agent()
            .post(&format!("{base}/api/authorize"))
            .set("Cookie", &cookie)
            .set("content-type", "application/json");
        for (k, v) in headers {
            r = r.set(k, v);
        }
        call(r.send_string(&body))
    };
    // Another site's page posting with the browser's cookie: refused, even with the token.
    let (status, why) = post(&[("Sec-Fetch-Site", "cross-site"), ("x-octodb-csrf", &csrf)]);
    assert_eq!(status, 403, "{why}");
    let (status, why) = post(&[("Origin", "http://evil.example"), ("x-octodb-csrf", &csrf)]);
    assert_eq!(status, 403, "{why}");
    let (status, why) = post(&[("Origin", &format!("http://{host}"))]);
    assert_eq!(status, 403, "without the CSRF header: {why}");
    assert_eq!(
        d.sync_status().unwrap().auth_state.as_deref(),
        Some("pending"),
        "nothing was decided by the refused requests"
    );

    // As the page's button does.
    let (status, answer) = post(&[
        ("Origin", &format!("http://{host}")),
        ("Sec-Fetch-Site", "same-origin"),
        ("x-octodb-csrf", &csrf),
    ]);
    assert_eq!(status, 200, "{answer}");
    let s = d
        .wait_for(DEADLINE, |s| s.db_is_ready)
        .expect("the approved device becomes ready");
    assert!(s.user_id.is_some_and(|u| u > 0), "a new user: {s:?}");

    // As the page's logout button does: the session ends, its cookie opens nothing more.
    let (status, _) = call(
        agent()
            .post(&format!("{base}/logout"))
            .set("Cookie", &cookie)
            .set("x-octodb-csrf", &csrf)
            .call(),
    );
    assert!((300..400).contains(&status), "a logout redirects: {status}");
    let (status, _) = call(
        agent()
            .get(&format!("{base}/api/state"))
            .set("Cookie", &cookie)
            .call(),
    );
    assert_eq!(status, 401, "the ended session's cookie");

    // The action is in the console's journal with the client's address.
    let (_, state) = call(
        agent()
            .get(&format!("{base}/api/state"))
            .set("Authorization", &format!("Bearer {token}"))
            .call(),
    );
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let actions = state["actions"].as_array().unwrap();
    assert!(
        actions.iter().any(|a| a["ok"] == true
            && a["what"].as_str().unwrap_or("").contains("authorize_user")
            && a["client"].as_str().unwrap_or("").starts_with("127.0.0.1:")),
        "{state}"
    );

    // A device writes: the metrics a user checks move.
    d.execute("INSERT INTO t(v) VALUES ('from the device')", [])
        .unwrap();
    d.execute("INSERT INTO t(v) VALUES ('and again')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM t", 2);
    let m = wait_until("the metrics to count the device's transactions", || {
        let m = scrape(&base, &token);
        (value(&m, "octodb_transactions_accepted_total")? >= 2.0).then_some(m)
    });
    assert_eq!(value(&m, "octodb_devices_connected"), Some(1.0));
    let seq = p.sync_status().unwrap().last_seq as f64;
    assert!(
        value(&m, "octodb_log_seq").is_some_and(|v| v >= seq - 0.5),
        "log seq {seq} in {:?}",
        value(&m, "octodb_log_seq")
    );
    assert!(value(&m, "octodb_connections_total").is_some_and(|v| v >= 1.0));
    assert!(value(&m, "octodb_handshakes_total").is_some_and(|v| v >= 1.0));
    // Label values as README's table names them (not the Rust names "Ok", "NotOwned").
    let outcomes: Vec<&str> = m
        .samples
        .iter()
        .filter(|s| s.metric == "octodb_handshakes_total")
        .filter_map(|s| s.labels.get("outcome"))
        .collect();
    assert!(
        !outcomes.is_empty() && outcomes.iter().all(|o| ["ok", "failed"].contains(o)),
        "{outcomes:?}"
    );
    assert_eq!(value(&m, "octodb_auth_requests_waiting"), Some(0.0));
    assert!(value(&m, "octodb_raft_term").is_some_and(|v| v >= 1.0));
    // What an operator alerts on: the file's size, and a primary in trouble.
    assert!(
        value(&m, "octodb_file_bytes").is_some_and(|v| v >= 4096.0),
        "{:?}",
        value(&m, "octodb_file_bytes")
    );
    assert_eq!(value(&m, "octodb_sync_error"), Some(0.0));
    assert!(
        value(&m, "octodb_commit_seconds_count").is_some_and(|v| v >= 1.0)
            || m.samples
                .iter()
                .any(|s| s.metric == "octodb_commit_seconds"),
        "the commit latency histogram has observations"
    );

    // The token stays the same across restarts (kept in the file).
    drop(d);
    drop(p);
    let p = Connection::open(&format!(
        "{}&auth=user&admin=127.0.0.1:0",
        primary_uri(&c.path("p.db"), 0)
    ))
    .unwrap();
    assert_eq!(text(&p, "PRAGMA admin_token"), token);
    let err = p
        .execute_batch("PRAGMA admin_token='new-secret'")
        .expect_err("the token is not set by a PRAGMA")
        .to_string();
    assert!(err.contains("admin_token="), "{err}");
    assert_eq!(text(&p, "PRAGMA admin_token"), token);
}

#[test]
fn a_console_beyond_loopback_needs_the_insecure_flag() {
    let c = Cluster::new();
    let err = Connection::open(&format!(
        "{}&admin=0.0.0.0:0",
        primary_uri(&c.path("p.db"), 0)
    ))
    .err()
    .expect("refused beyond loopback without TLS or the flag");
    assert!(err.to_string().contains("admin_insecure=1"), "{err}");
    let p = Connection::open(&format!(
        "{}&admin=0.0.0.0:0&admin_insecure=1",
        primary_uri(&c.path("p2.db"), 0)
    ))
    .expect("served with the explicit flag");
    assert!(text(&p, "PRAGMA admin_address").starts_with("http://0.0.0.0:"));
    let err = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:9&admin=127.0.0.1:0",
        c.path("d.db").display()
    ))
    .err()
    .expect("a device serves no console");
    assert!(err.to_string().contains("primaries only"), "{err}");
}

/// A primary served by `octodb serve` (no other process may open its file) is operated from
/// the leader's console: it takes a member out of the cluster.
#[test]
fn the_leaders_console_removes_a_primary() {
    let c = Cluster::new();
    let p1 = Connection::open(&format!(
        "{}&admin=127.0.0.1:0",
        primary_uri(&c.path("p.db"), 0)
    ))
    .unwrap();
    let p2 = joining_primary(&c.path("p2.db"), &addr_of(&p1));
    wait_voters(&p1, 2);
    let (base, token) = (admin_url(&p1), text(&p1, "PRAGMA admin_token"));
    let remove = |node_id: u32| {
        call(
            agent()
                .post(&format!("{base}/api/remove_primary"))
                .set("Authorization", &format!("Bearer {token}"))
                .set("content-type", "application/json")
                .send_string(&format!(r#"{{"node_id":{node_id}}}"#)),
        )
    };
    let (status, why) = remove(99);
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("not a member"), "{why}");
    let (status, why) = remove(p2.sync_status().unwrap().node_id);
    assert_eq!(status, 200, "{why}");
    let members = p1.sync_status().unwrap().cluster.unwrap().members;
    assert_eq!(members.len(), 1, "{members:?}");
}

/// `octodb_auth_requests_waiting` counts the requests the console lists, their devices gone
/// or not (it counted the devices still connected and waiting: 0 once they left), and
/// `octodb_raft_quorum_lost` is there for alerts (0 for a primary alone).
#[test]
fn the_waiting_gauge_counts_requests_whose_device_left() {
    let c = Cluster::new();
    let p = primary_with_console(&c, None);
    let token = text(&p, "PRAGMA admin_token");
    let base = admin_url(&p);
    let d = c.device("d.db", &p);
    d.execute(
        r#"PRAGMA user_signup='{"name": "alice", "password": "s3cret"}'"#,
        [],
    )
    .unwrap();
    d.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .unwrap();
    drop(d);
    wait_until("the device's session to end", || {
        p.sync_status().unwrap().peers.is_empty().then_some(())
    });
    let m = scrape(&base, &token);
    assert_eq!(value(&m, "octodb_auth_requests_waiting"), Some(1.0));
    assert_eq!(value(&m, "octodb_raft_quorum_lost"), Some(0.0));
    // The console shows what it asks, its password masked (the scheme's name in any case).
    let (status, state) = call(
        agent()
            .get(&format!("{base}/api/state"))
            .set("Authorization", &format!("bearer {token}"))
            .call(),
    );
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let waiting = &state["waiting"][0];
    assert_eq!(waiting["asks"], "user_signup", "{state}");
    assert_eq!(
        waiting["data"],
        serde_json::json!({"name": "alice", "password": "***"})
    );
    assert_eq!(state["auth_requests_waiting"], 1);
}

/// A primary asking to join an `auth=` cluster is listed as a primary, and the console approves
/// it as one: it was listed as a device, and approving it as shown made it a device.
#[test]
fn a_joining_primary_waits_as_a_primary_and_the_console_approves_it_as_one() {
    let c = Cluster::new();
    let p = primary_with_console(&c, None);
    let (base, token) = (admin_url(&p), text(&p, "PRAGMA admin_token"));
    let q = joining_primary(&c.path("q.db"), &addr_of(&p));
    let state = |token: &str| -> serde_json::Value {
        let (status, body) = call(
            agent()
                .get(&format!("{base}/api/state"))
                .set("Authorization", &format!("Bearer {token}"))
                .call(),
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let key = q.public_key();
    let waiting = wait_until("the joining primary to be listed as waiting", || {
        state(&token)["waiting"]
            .as_array()?
            .iter()
            .find(|w| w["public_key"] == key.as_str())
            .cloned()
    });
    assert_eq!(waiting["node_type"], "primary", "{waiting}");
    let (status, why) = call(
        agent()
            .post(&format!("{base}/api/authorize"))
            .set("Authorization", &format!("Bearer {token}"))
            .set("content-type", "application/json")
            .send_string(&format!(r#"{{"pubkey":"{key}","decision":"primary"}}"#)),
    );
    assert_eq!(status, 200, "{why}");
    wait_voters(&p, 2);
    wait_until("the new primary to follow", || {
        (cluster_role(&q) == "follower").then_some(())
    });
}
