//! The broker on a cluster of primaries: the secret behind access codes reaches every primary
//! through the cluster's log, so a reference one primary handed out is valid at another (a
//! fail-over keeps clients' references working), and each primary's broker hears of row
//! changes through its own change feed.
mod common;
use common::*;
use octodb::Connection;
use octodb_broker::sql::follow_feed;
use octodb_broker::{Access, Client, Key, KeyPart, Server, SqlTables, Value};

/// A write on the leader, tried again while the young cluster settles (a leader of two
/// primaries answers "try it again" when a commit was not confirmed in time).
fn leader_write(p: &Connection, sql: &str) {
    wait_until(&format!("the cluster takes `{sql}`"), || {
        match p.execute(sql, []) {
            Ok(_) => Some(()),
            Err(e) if e.to_string().contains("try it again") => None,
            Err(e) => panic!("{sql}: {e}"),
        }
    });
}

#[test]
fn every_primary_signs_references_alike_and_follows_the_rows() {
    let net = Net::new();
    let p1 = net.primary("p1.db");
    p1.execute(
        "CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, row_owner)",
        [],
    )
    .unwrap();
    let s1 = Server::start(&p1, "broker").unwrap();
    let p2_uri = format!(
        "{}&connect=tcp://{}",
        net.primary_uri("p2.db", 0, None),
        addr_of(&p1)
    );
    let p2 = Connection::open(&p2_uri).unwrap();
    wait_until("the secret reaches the joining primary", || {
        p2.query(
            "SELECT count(*) FROM sqlite_master WHERE name = 'private_octo_broker'",
            [],
        )
        .ok()
        .filter(|r| r.iter().next().and_then(|row| row.get::<i64>(0).ok()) == Some(1))
        .and_then(|_| {
            p2.query("SELECT count(*) FROM private_octo_broker", [])
                .ok()
        })
        .filter(|r| r.iter().next().and_then(|row| row.get::<i64>(0).ok()) == Some(1))
    });
    let s2 = Server::start(&p2, "broker").unwrap();
    for key in [
        Key::of_static(["root"]),
        Key::new("todos", [KeyPart::Int(42)]),
    ] {
        assert_eq!(s1.reference(key.clone()), s2.reference(key));
    }
    // The follower's broker follows its own feed: the leader's write invalidates there too.
    let tables = SqlTables::new(Connection::open(&p2_uri).unwrap(), &s2);
    tables
        .export("todos", "todos", Access::ReadOnly, &[])
        .unwrap();
    follow_feed(&s2, Connection::open(&p2_uri).unwrap()).unwrap();
    let before = p2.feed_position();
    leader_write(&p1, "INSERT INTO todos(title, row_owner) VALUES ('x', '*')");
    // (The follower's own first writes, which wait until it has joined, may come first.)
    wait_until("the leader's row in the follower's feed", || {
        let changes = p2.changes_after(before, 100).ok()?;
        changes
            .changes
            .iter()
            .any(|c| c.table == "todos")
            .then_some(())
    });
}

#[test]
fn a_client_of_a_follower_hears_of_the_leaders_writes() {
    let net = Net::new();
    let p1 = net.primary("p1.db");
    p1.execute(
        "CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, row_owner)",
        [],
    )
    .unwrap();
    p1.execute(
        "INSERT INTO todos(id, title, row_owner) VALUES (1, 'one', '*')",
        [],
    )
    .unwrap();
    // The secret is made on the leader (its broker then stops: only the follower serves).
    let s1 = Server::start(&p1, "broker").unwrap();
    s1.stop(&p1).unwrap();
    let p2_uri = format!(
        "{}&connect=tcp://{}",
        net.primary_uri("p2.db", 0, None),
        addr_of(&p1)
    );
    let p2 = Connection::open(&p2_uri).unwrap();
    let d = net.device("d.db", &p1);
    ready(&d);
    // The device learns of the follower from the leader, and the follower of the device (its
    // approval) through the cluster's log.
    wait_until("the device knows both primaries", || {
        (d.sync_status().ok()?.primaries.len() >= 2).then_some(())
    });
    let deadline = std::time::Instant::now() + DEADLINE;
    let s2 = loop {
        match Server::start(&p2, "broker") {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("the follower's broker does not start: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    let tables = SqlTables::new(Connection::open(&p2_uri).unwrap(), &s2);
    tables
        .export("todos", "todos", Access::ReadOnly, &[])
        .unwrap();
    follow_feed(&s2, Connection::open(&p2_uri).unwrap()).unwrap();
    // The leader serves no broker: the client's channel goes on to the follower.
    let client = Client::connect(&d, "broker", DEADLINE).unwrap();
    let one = client
        .get("todos", vec![("title".into(), "one".into())])
        .unwrap();
    let Value::Object(one) = one else {
        panic!("get gives the object whole")
    };
    assert!(client.is_cached(&one.key.key));
    leader_write(&p1, "UPDATE todos SET title = 'uno' WHERE id = 1");
    wait_until("the follower's broker tells its client", || {
        (!client.is_cached(&one.key.key)).then_some(())
    });
    assert_eq!(
        client.fetch(&one.key).unwrap().field("title"),
        Some(&Value::from("uno"))
    );
}
