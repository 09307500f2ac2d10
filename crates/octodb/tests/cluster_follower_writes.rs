//! A backend app writing on a follower (issue "Cluster", item 2): its transaction goes
//! through the leader, in the one order of the log, and its COMMIT returns once the cluster
//! holds it and the follower applied it, so the connection reads its own write. Two
//! transactions on different primaries that change the same row do not lose an update: the
//! later one fails at COMMIT with a conflict. Real files, real loopback sockets.

mod common;

use common::*;
use octodb::{Connection, Error};

/// A leader with table `t` and two followers joined as voters.
fn three_primaries(c: &Cluster) -> (Connection, Connection, Connection) {
    let p1 = c.primary_with_t();
    let leader = addr_of(&p1);
    let p2 = joining_primary(&c.path("p2.db"), &leader);
    let p3 = joining_primary(&c.path("p3.db"), &leader);
    wait_voters(&p1, 3);
    // Both followers know their leader before the app writes.
    wait_follows_leader(&p2);
    wait_follows_leader(&p3);
    (p1, p2, p3)
}

const SHARED: [&str; 2] = [
    "SELECT id, v, row_owner FROM t ORDER BY id",
    "SELECT seq, origin_node, origin_txn, body FROM _octo_log ORDER BY seq",
];

fn wait_identical(c: &Cluster) {
    for follower in ["p2.db", "p3.db"] {
        for sql in SHARED {
            let want = file_rows(&c.path("p.db"), sql);
            wait_until(&format!("{follower} holds `{sql}` as the leader"), || {
                (file_rows(&c.path(follower), sql) == want).then_some(())
            });
        }
    }
}

#[test]
fn a_followers_write_goes_through_the_leader_and_reads_back_at_once() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries(&c);
    let d = c.device("d.db", &p1);
    ready(&d);

    // An autocommit statement, an explicit transaction, and one a savepoint opens.
    p2.execute("INSERT INTO t(v, row_owner) VALUES ('one', '*')", [])
        .expect("a follower's insert");
    assert_eq!(count(&p2, "SELECT count(*) FROM t WHERE v = 'one'"), 1);
    let id: i64 = p2
        .query_row("SELECT last_insert_rowid()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(p2.last_insert_rowid(), id, "a SELECT leaves it as it was");
    assert_eq!(
        count(&p2, &format!("SELECT count(*) FROM t WHERE id = {id}")),
        1,
        "last_insert_rowid {id} names the row: {:?}",
        file_rows(&c.path("p2.db"), "SELECT id, v FROM t")
    );
    p2.execute_batch(
        "BEGIN; INSERT INTO t(v, row_owner) VALUES ('two', '*');
         UPDATE t SET v = 'one, edited' WHERE v = 'one'; COMMIT;",
    )
    .expect("a follower's transaction");
    assert_eq!(
        text(
            &p2,
            "SELECT group_concat(v, '|') FROM (SELECT v FROM t ORDER BY v)"
        ),
        "one, edited|two"
    );
    p3.execute_batch(
        "SAVEPOINT outer; INSERT INTO t(v, row_owner) VALUES ('three', '*');
         SAVEPOINT inner; INSERT INTO t(v, row_owner) VALUES ('undone', '*');
         ROLLBACK TO inner; RELEASE inner; RELEASE outer;",
    )
    .expect("a follower's savepoint transaction");
    assert_eq!(
        text(
            &p3,
            "SELECT group_concat(v, '|') FROM (SELECT v FROM t ORDER BY v)"
        ),
        "one, edited|three|two"
    );

    // A schema change on a follower reaches every primary and the devices.
    p3.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)",
        [],
    )
    .expect("a follower's schema change");
    p3.execute("INSERT INTO notes(body, row_owner) VALUES ('n', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM notes", 1);
    wait_count(&d, "SELECT count(*) FROM t", 3);
    wait_count(&p1, "SELECT count(*) FROM t", 3);
    wait_identical(&c);
    // The log names the follower as the origin of its writes.
    let p2_id = p2.sync_status().unwrap().node_id;
    assert_eq!(
        count(
            &p1,
            &format!("SELECT count(*) FROM _octo_log WHERE origin_node = {p2_id}")
        ),
        2
    );
    // Rows that stay local are a follower's own, as before.
    p2.execute("INSERT INTO t(v) VALUES ('local')", []).unwrap();
    assert_eq!(count(&p2, "SELECT count(*) FROM t WHERE v = 'local'"), 1);
    assert_eq!(count(&p1, "SELECT count(*) FROM t WHERE v = 'local'"), 0);
}

#[test]
fn two_primaries_changing_one_row_do_not_lose_an_update() {
    let c = Cluster::new();
    let (p1, p2, _p3) = three_primaries(&c);
    p1.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (1, 'first', '*')",
        [],
    )
    .unwrap();
    wait_count(&p2, "SELECT count(*) FROM t WHERE v = 'first'", 1);

    // The follower's transaction began before the leader's change, and changes the same row.
    p2.execute_batch("BEGIN; UPDATE t SET v = 'by the follower' WHERE id = 1;")
        .unwrap();
    p1.execute("UPDATE t SET v = 'by the leader' WHERE id = 1", [])
        .unwrap();
    let refused = p2.execute_batch("COMMIT").expect_err("a conflict");
    assert!(matches!(refused, Error::Conflict(_)), "{refused}");
    assert!(refused.to_string().contains("row 1 of `t`"), "{refused}");
    // Nothing of it anywhere; the follower catches up with the leader's change.
    wait_count(&p2, "SELECT count(*) FROM t WHERE v = 'by the leader'", 1);
    assert_eq!(
        count(&p1, "SELECT count(*) FROM t WHERE v = 'by the follower'"),
        0
    );
    // Retried, it goes through.
    p2.execute(
        "UPDATE t SET v = v || ', then the follower' WHERE id = 1",
        [],
    )
    .unwrap();
    wait_count(
        &p1,
        "SELECT count(*) FROM t WHERE v = 'by the leader, then the follower'",
        1,
    );
    // Another row changed meanwhile is no conflict.
    p1.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (2, 'other', '*')",
        [],
    )
    .unwrap();
    p2.execute("UPDATE t SET v = 'follower again' WHERE id = 1", [])
        .expect("no conflict over another row");
    wait_identical(&c);
}

#[test]
fn a_followers_transaction_mixing_local_and_replicated_rows_is_refused_whole() {
    let c = Cluster::new();
    let (p1, p2, _p3) = three_primaries(&c);
    let refused = p2
        .execute_batch(
            "BEGIN; INSERT INTO t(v) VALUES ('local');
             INSERT INTO t(v, row_owner) VALUES ('shared', '*'); COMMIT;",
        )
        .expect_err("mixed local and replicated rows on a follower");
    assert!(refused.to_string().contains("stay local"), "{refused}");
    assert!(p2.is_autocommit(), "the transaction was rolled back");
    assert_eq!(count(&p2, "SELECT count(*) FROM t"), 0);
    assert_eq!(count(&p1, "SELECT count(*) FROM t"), 0);

    // A table without row_owner does not replicate: written directly beside replicated rows,
    // the transaction is refused too, naming it. Written by a trigger, it is kept: the
    // trigger runs again wherever the leader's entry is applied.
    p1.execute_batch(
        "CREATE TABLE seen(what TEXT);
         CREATE TABLE audit(what TEXT);
         CREATE TRIGGER audited AFTER INSERT ON t BEGIN
           INSERT INTO audit(what) VALUES ('inserted ' || NEW.v);
         END;",
    )
    .unwrap();
    // (A follower's transaction that began before a schema change conflicts with it: wait
    // until the follower has applied all of it.)
    let schema_at = p1.sync_status().unwrap().last_seq;
    p2.wait_for(DEADLINE, |s| s.last_seq >= schema_at)
        .expect("the follower has the schema");
    let refused = p2
        .execute_batch(
            "BEGIN; INSERT INTO seen(what) VALUES ('here');
             INSERT INTO t(v, row_owner) VALUES ('shared', '*'); COMMIT;",
        )
        .expect_err("a table that does not replicate, beside replicated rows");
    assert!(refused.to_string().contains("`seen`"), "{refused}");
    assert_eq!(count(&p2, "SELECT count(*) FROM seen"), 0);
    p2.execute("INSERT INTO t(v, row_owner) VALUES ('audited', '*')", [])
        .expect("a trigger's local writes are kept");
    assert_eq!(count(&p2, "SELECT count(*) FROM audit"), 1);
    wait_count(&p1, "SELECT count(*) FROM audit", 1);
    assert_eq!(text(&p1, "SELECT what FROM audit"), "inserted audited");
    // Alone, the follower's own tables take its writes as before.
    p2.execute("INSERT INTO seen(what) VALUES ('alone')", [])
        .unwrap();
    assert_eq!(count(&p2, "SELECT count(*) FROM seen"), 1);
}

/// A key that is not a member of the cluster gets nothing from the leader for a forwarded
/// transaction, even naming the leader as a member would: no answer, nothing written.
#[test]
fn a_stranger_cannot_forward_a_transaction_to_the_leader() {
    use octodb::changes::{ChangeSet, Op, TableHeader};
    use octodb::crypto::NodeKeys;
    use octodb::log::EntryBody;
    use octodb::net::{HandshakeOptions, Message, SecureStream};

    let c = Cluster::new();
    let (p1, _p2, _p3) = three_primaries(&c);
    let leader_id = p1.sync_status().unwrap().node_id;
    let changes = ChangeSet {
        tables: vec![TableHeader {
            name: "t".into(),
            columns: vec!["id".into(), "v".into(), "row_owner".into()],
        }],
        ops: vec![Op::Upsert {
            table: 0,
            rowid: 77,
            values: vec![
                octodb::Value::Integer(77),
                octodb::Value::Text("forged".into()),
                octodb::Value::Text("*".into()),
            ],
        }],
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr_of(&p1)).await.unwrap();
        let stranger = NodeKeys::generate();
        let stream = SecureStream::connect(tcp, &stranger, &HandshakeOptions::default())
            .await
            .unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let hello = Message::Hello {
            role: octodb::Role::Primary,
            last_seq: 0,
            info: format!("{{\"to\": {leader_id}}}"),
            auth: None,
        };
        wr.send(&hello.encode()).await.unwrap();
        // The cluster's encoding byte, then Request::Forward (variant 3): its base position
        // and its bodies.
        let mut frame = vec![1u8];
        frame.extend(
            postcard::to_allocvec(&(3u32, 0u64, vec![EntryBody::Changes(changes)])).unwrap(),
        );
        wr.send(&frame).await.unwrap();
        wr.flush().await.unwrap();
        tokio::time::timeout(DEADLINE, rd.recv()).await.unwrap()
    });
    // (What comes back, if anything, is a refusal of the join the stranger's Hello asked.)
    if let Ok(bytes) = answer {
        let reply = Message::decode(&bytes).map(|m| m.kind().to_string());
        assert!(
            matches!(reply.as_deref(), Ok("Refused")),
            "a stranger hears only a refusal: {reply:?}"
        );
    }
    assert_eq!(count(&p1, "SELECT count(*) FROM t WHERE v = 'forged'"), 0);
}

/// A trigger calling `this_user()` (the guard README shows for backend-only triggers) runs
/// again on every primary that applies the entry: the followers' state machine and the
/// leader's applier of a follower's transaction lacked the function, so the first such write
/// stopped every follower's Raft node for good, and the cluster lost its majority.
#[test]
fn a_trigger_calling_this_user_runs_on_every_primary() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries(&c);
    // An audit kept by each primary of its own (no row_owner: not replicated).
    p1.execute_batch(
        "CREATE TABLE audit(v TEXT, by_node INTEGER);
         CREATE TRIGGER t_audit AFTER INSERT ON t WHEN this_user() IS NULL BEGIN
           INSERT INTO audit(v, by_node) VALUES (NEW.v, this_node());
         END;",
    )
    .unwrap();
    p1.execute(
        "INSERT INTO t(v, row_owner) VALUES ('on the leader', '*')",
        [],
    )
    .unwrap();
    p2.execute(
        "INSERT INTO t(v, row_owner) VALUES ('on a follower', '*')",
        [],
    )
    .expect("a follower's write through the leader");
    for p in [&p1, &p2, &p3] {
        wait_count(p, "SELECT count(*) FROM t", 2);
        let me = p.sync_status().unwrap().node_id;
        wait_count(
            p,
            &format!("SELECT count(*) FROM audit WHERE by_node = {me}"),
            2,
        );
        let s = p.sync_status().unwrap();
        assert_eq!(s.sync_error, None, "{s:?}");
    }
    wait_identical(&c);
    // The cluster still writes.
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t WHERE v = 'after'", 1);
}

/// Schema changes through a follower's app as through the leader's: a DROP TABLE and SQLite's
/// table rebuild were refused there, taken for writes to tables that do not replicate (the
/// tables they wrote were gone by the COMMIT).
#[test]
fn a_followers_app_drops_and_rebuilds_tables() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries(&c);
    p1.execute_batch(
        "CREATE TABLE e(id INTEGER PRIMARY KEY, x TEXT, row_owner);
         CREATE TABLE memos(id INTEGER PRIMARY KEY, body TEXT, row_owner);
         INSERT INTO memos(body, row_owner) VALUES ('kept', '*');",
    )
    .unwrap();
    wait_count(&p2, "SELECT count(*) FROM memos", 1);
    p2.execute_batch("DROP TABLE e")
        .expect("a follower drops a table");
    p2.execute_batch(
        "BEGIN;
         CREATE TABLE memos_new(id INTEGER PRIMARY KEY, body TEXT NOT NULL, row_owner);
         INSERT INTO memos_new SELECT id, body, row_owner FROM memos;
         DROP TABLE memos;
         ALTER TABLE memos_new RENAME TO memos;
         COMMIT;",
    )
    .expect("a follower rebuilds a table");
    for p in [&p1, &p2, &p3] {
        wait_count(
            p,
            "SELECT count(*) FROM sqlite_master WHERE name = 'e' OR sql LIKE '%body TEXT NOT NULL%'",
            1,
        );
        wait_count(p, "SELECT count(*) FROM memos WHERE body = 'kept'", 1);
    }
}

/// A follower whose leader is gone (stopped, no other majority to elect one) refuses its app's
/// write as not applied, safe to run again: not as an unknown outcome, which would make the
/// app check for a write that was never sent.
#[test]
fn a_followers_write_with_its_leader_gone_fails_as_not_applied() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries(&c);
    // (Its connection to the leader, kept from this write, is closed by the leader's stop.)
    p2.execute("INSERT INTO t(v, row_owner) VALUES ('kept', '*')", [])
        .expect("a follower's write");
    drop(p3);
    wait_closed(&c, "p3.db");
    drop(p1);
    wait_closed(&c, "p.db");

    let failed = p2
        .execute("INSERT INTO t(v, row_owner) VALUES ('lost', '*')", [])
        .expect_err("no leader to take the write");
    assert!(
        matches!(&failed, Error::Unavailable(m) if m.contains("nothing of the transaction was sent")),
        "{failed:?}"
    );
    assert_eq!(count(&p2, "SELECT count(*) FROM t WHERE v = 'lost'"), 0);
}

/// A follower's schema statement right after the leader's runs on the leader's schema (it
/// waits until it has applied what the leader had committed), not on an older one that
/// failed it at COMMIT: "the schema changed since it began".
#[test]
fn a_followers_schema_statement_right_after_the_leaders_goes_through() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries(&c);
    p2.execute("INSERT INTO t(v, row_owner) VALUES ('first', '*')", [])
        .expect("the follower's first write");
    for i in 0..10 {
        p1.execute(&format!("ALTER TABLE t ADD COLUMN leader_{i}"), [])
            .expect("the leader's schema statement");
        p2.execute(
            &format!("CREATE TABLE follower_{i}(id INTEGER PRIMARY KEY, row_owner)"),
            [],
        )
        .unwrap_or_else(|e| panic!("the follower's schema statement {i}: {e}"));
    }
    for p in [&p1, &p2, &p3] {
        wait_count(
            p,
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'follower_%'",
            10,
        );
        wait_count(
            p,
            "SELECT count(*) FROM pragma_table_info('t') WHERE name LIKE 'leader_%'",
            10,
        );
    }
}
