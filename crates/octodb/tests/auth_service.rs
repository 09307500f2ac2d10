//! The external authorization service (docs/authorizer-service.md) over a real socket.
mod common;
use common::*;
use octodb::Connection;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn read_frame(s: &mut TcpStream) -> Option<Value> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

fn write_frame(s: &mut TcpStream, v: &Value) {
    let body = v.to_string().into_bytes();
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
}

/// A service answering `n` requests: sign-ups create an account row numbered by the user the
/// engine makes (`@user_id`),
/// logins find the account by name, data "deny" is refused. Returns the requests it saw.
fn serve(listener: TcpListener, n: usize) -> std::thread::JoinHandle<Vec<Value>> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        assert_eq!(read_frame(&mut s), Some(json!({"leader": true})));
        let mut seen = Vec::new();
        while seen.len() < n {
            let Some(req) = read_frame(&mut s) else { break };
            let key = req["pubkey"].clone();
            let data = &req["data"];
            let answer = match (req["action"].as_str(), data["name"].as_str()) {
                (_, Some("deny")) | (_, None) => json!({"pubkey": key, "user_id": -1}),
                (Some("user_signup"), Some(name)) => json!({"pubkey": key,
                    "execute": [format!("INSERT INTO accounts(id, name, first_node) VALUES (@user_id, '{name}', @node_id)")]}),
                (_, Some(name)) => json!({"pubkey": key,
                    "find": format!("SELECT id AS user_id FROM accounts WHERE name = '{name}'")}),
            };
            write_frame(&mut s, &answer);
            seen.push(req);
        }
        seen
    })
}

#[test]
fn a_service_decides_signups_and_logins_and_survives_its_restart() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    p.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT UNIQUE, first_node INTEGER);
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);",
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = serve(listener, 3);
    p.execute(
        &format!("PRAGMA authorizer_service='tcp://127.0.0.1:{port}'"),
        [],
    )
    .unwrap();

    let ann = c.device("ann.db", &p);
    ann.execute(r#"PRAGMA user_signup='{"name": "ann"}'"#, [])
        .unwrap();
    let s = ready(&ann);
    let account: (i64, i64) = p
        .query_row(
            "SELECT id, first_node FROM accounts WHERE name = 'ann'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(s.user_id, Some(account.0), "user id from last_insert_rowid");
    assert_eq!(account.1, s.node_id as i64, "@node_id replaced");

    let laptop = c.device("laptop.db", &p);
    laptop
        .execute(r#"PRAGMA user_login='{"name": "ann"}'"#, [])
        .unwrap();
    assert_eq!(ready(&laptop).user_id, Some(account.0), "user id from find");

    let eve = c.device("eve.db", &p);
    eve.execute(r#"PRAGMA user_signup='{"name": "deny"}'"#, [])
        .unwrap();
    eve.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("rejected"))
        .unwrap();
    let seen = service.join().unwrap();
    assert_eq!(
        seen[0]["data"],
        json!({"name": "ann"}),
        "JSON data is passed as JSON"
    );
    assert_eq!(seen[0]["action"], "user_signup");

    // The service went away (its thread ended, closing the socket). A request made now waits,
    // and is sent again when the service is back on the same port.
    let bob = c.device("bob.db", &p);
    bob.execute(r#"PRAGMA user_signup='{"name": "bob"}'"#, [])
        .unwrap();
    bob.wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .unwrap();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let service = serve(listener, 1);
    ready(&bob);
    assert_eq!(service.join().unwrap()[0]["data"]["name"], "bob");
}

/// `@user_id` in a sign-up's SQL is the user the engine makes for the key, so a service's
/// accounts and the users the engine or the console made are one numbering (accounts numbered
/// by their own rowids gave the first sign-up user 1, and with it the rows of the user 1 the
/// console had made).
#[test]
fn accounts_numbered_by_user_id_never_meet_the_engines_users() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    p.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT UNIQUE, first_node INTEGER);
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);",
    )
    .unwrap();
    // A user made before any account: the operator approves a device as a new user.
    let early = c.device("early.db", &p);
    early
        .execute(r#"PRAGMA user_signup='{"name": "early"}'"#, [])
        .unwrap();
    early
        .wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("pending"))
        .unwrap();
    p.execute(
        &format!("PRAGMA authorize_user='{}:0'", early.public_key()),
        [],
    )
    .unwrap();
    let early_user = ready(&early).user_id.unwrap();
    early
        .execute(
            "INSERT INTO t(v, row_owner) VALUES ('early''s own', ?1)",
            [early_user],
        )
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM t", 1);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = serve(listener, 1);
    p.execute(
        &format!("PRAGMA authorizer_service='tcp://127.0.0.1:{port}'"),
        [],
    )
    .unwrap();
    let ann = c.device("ann.db", &p);
    ann.execute(r#"PRAGMA user_signup='{"name": "ann"}'"#, [])
        .unwrap();
    let ann_user = ready(&ann).user_id.unwrap();
    service.join().unwrap();
    let account: i64 = p
        .query_row("SELECT id FROM accounts WHERE name = 'ann'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(ann_user, account, "the account is numbered by the user");
    assert_ne!(ann_user, early_user, "a new person is a new user");
    ann.wait_until_synced(DEADLINE).unwrap();
    assert_eq!(count(&ann, "SELECT count(*) FROM t"), 0, "not early's rows");
}

/// A service's answer counts only for a request put to it that still waits: an answer for a
/// key that never asked runs none of its SQL, and a late one (the backend decided meanwhile)
/// changes nothing (the first decision stands; one moved a device to another user's rows). A
/// frame that is not JSON is logged and the connection goes on.
#[test]
fn only_answers_to_waiting_requests_count() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    p.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);",
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    p.execute(
        &format!("PRAGMA authorizer_service='tcp://127.0.0.1:{port}'"),
        [],
    )
    .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    assert_eq!(read_frame(&mut s), Some(json!({"leader": true})));

    let garbage = b"\xff not json";
    s.write_all(&(garbage.len() as u32).to_be_bytes()).unwrap();
    s.write_all(garbage).unwrap();
    let stranger = "5a".repeat(32);
    write_frame(
        &mut s,
        &json!({"pubkey": stranger, "user_id": 0,
                "execute": ["INSERT INTO accounts(name) VALUES ('ghost')"]}),
    );

    // Decided by hand while the service thinks it over.
    let ann = c.device("ann.db", &p);
    ann.execute(r#"PRAGMA user_signup='{"name": "ann"}'"#, [])
        .unwrap();
    let request = read_frame(&mut s).expect("the connection lived through the garbage");
    let ann_key = request["pubkey"].as_str().unwrap().to_string();
    p.execute(&format!("PRAGMA authorize_user='{ann_key}:0'"), [])
        .unwrap();
    let ann_user = ready(&ann).user_id.unwrap();
    write_frame(
        &mut s,
        &json!({"pubkey": ann_key, "user_id": ann_user + 50}),
    );

    // A sign-up answered with a new user goes in.
    let bob = c.device("bob.db", &p);
    bob.execute(r#"PRAGMA user_signup='{"name": "bob"}'"#, [])
        .unwrap();
    let request = read_frame(&mut s).unwrap();
    assert_eq!(request["data"]["name"], "bob");
    let bob_key = request["pubkey"].clone();
    write_frame(&mut s, &json!({"pubkey": bob_key, "user_id": 0}));
    let bob_user = ready(&bob).user_id.unwrap();
    assert_ne!(bob_user, ann_user);

    // The answers were taken in order: the earlier ones are settled.
    assert_eq!(ann.sync_status().unwrap().user_id, Some(ann_user));
    let ann_on_p = p
        .nodes()
        .unwrap()
        .into_iter()
        .find(|n| n.public_key == ann_key)
        .unwrap();
    assert_eq!(
        ann_on_p.user_id,
        Some(ann_user),
        "the first decision stands"
    );
    assert_eq!(count(&p, "SELECT count(*) FROM accounts"), 0, "no SQL ran");
    assert!(p.nodes().unwrap().iter().all(|n| n.public_key != stranger));

    // Refused by hand, never answered by the service.
    let dave = c.device("dave.db", &p);
    dave.execute(r#"PRAGMA user_signup='{"name": "dave"}'"#, [])
        .unwrap();
    let request = read_frame(&mut s).unwrap();
    assert_eq!(request["data"]["name"], "dave");
    p.execute(
        &format!("PRAGMA authorize_user='{}:-1'", dave.public_key()),
        [],
    )
    .unwrap();
    // The service restarts: only the requests still waiting are sent again, so the first one
    // it hears is a new one.
    drop(s);
    let (mut s, _) = listener.accept().unwrap();
    assert_eq!(read_frame(&mut s), Some(json!({"leader": true})));
    let carol = c.device("carol.db", &p);
    carol
        .execute(r#"PRAGMA user_signup='{"name": "carol"}'"#, [])
        .unwrap();
    assert_eq!(
        read_frame(&mut s).unwrap()["data"]["name"],
        "carol",
        "dave's request, decided by hand, is not sent again"
    );
}

/// `authorizer_service=` on the primary's URI (what `octodb serve` needs: no PRAGMA can run
/// there) starts the service's connection with the node, at every start.
#[test]
fn the_uri_names_the_service_from_the_nodes_start() {
    let c = Cluster::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = serve(listener, 1);
    let p = Connection::open(&format!(
        "{}&auth=user&authorizer_service=tcp://127.0.0.1:{port}",
        primary_uri(&c.path("p.db"), 0)
    ))
    .unwrap();
    p.execute_batch(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT UNIQUE, first_node INTEGER);",
    )
    .unwrap();
    let named: String = p
        .query_row("PRAGMA authorizer_service", [], |r| r.get(0))
        .unwrap();
    assert_eq!(named, format!("tcp://127.0.0.1:{port}"), "read back");
    let ann = c.device("ann.db", &p);
    ann.execute(r#"PRAGMA user_signup='{"name": "ann"}'"#, [])
        .unwrap();
    assert!(ready(&ann).user_id.is_some());
    assert_eq!(service.join().unwrap()[0]["data"]["name"], "ann");
    for (uri, problem) in [
        ("&authorizer_service=tcp://127.0.0.1:1", "auth=user"),
        (
            "&auth=user&authorizer_service=127.0.0.1:1",
            "tcp://HOST:PORT",
        ),
    ] {
        let Err(err) = Connection::open(&format!("{}{uri}", primary_uri(&c.path("q.db"), 0)))
        else {
            panic!("{uri} opened");
        };
        assert!(err.to_string().contains(problem), "{uri}: {err}");
    }
}
