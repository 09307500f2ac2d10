//! The broker on a cluster of primaries: the secret behind access codes reaches every primary
//! through the cluster's log, so a reference one primary handed out is valid at another (a
//! fail-over keeps clients' references working), and each primary's broker hears of row
//! changes through its own change feed.
mod common;
use common::*;
use octodb::Connection;
use octodb_broker::sql::follow_feed;
use octodb_broker::{Access, Key, KeyPart, Server, SqlTables};

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
    p1.execute("INSERT INTO todos(title, row_owner) VALUES ('x', '*')", [])
        .unwrap();
    wait_until("the follower's feed moves", || {
        (p2.feed_position() > before).then_some(())
    });
    let changes = p2.changes_after(before, 100).unwrap();
    assert!(changes.changes.iter().any(|c| c.table == "todos"));
}
