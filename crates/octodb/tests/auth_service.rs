//! The external authorization service (docs/authorizer-service.md) over a real socket.
mod common;
use common::*;
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

/// A service answering `n` requests: sign-ups create an account row (user id = its rowid),
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
                    "execute": [format!("INSERT INTO accounts(name, first_node) VALUES ('{name}', @node_id)")]}),
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
