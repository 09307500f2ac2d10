//! The change feed: what services on a primary (the broker, the task queue) follow. Every
//! committed change to a replicated table shows in log order, whoever made it (the app on
//! the primary, a device, the leader of the primary's cluster), with the node it came from.

mod common;

use common::*;
use octodb::feed::{Change, ChangeKind, FeedBatch};
use octodb::{Connection, Value};

/// Follows `conn`'s feed from `after` until `want` changes arrived (woken by `wait_feed`).
fn follow(conn: &Connection, after: &mut u64, want: usize) -> Vec<Change> {
    let mut got = Vec::new();
    wait_until(&format!("{want} changes in the feed"), || {
        conn.wait_feed(*after, std::time::Duration::from_millis(200));
        let FeedBatch { changes, up_to } = conn.changes_after(*after, 64).expect("read the feed");
        assert!(up_to >= *after, "the feed never goes back");
        *after = up_to;
        got.extend(changes);
        (got.len() >= want).then_some(())
    });
    got
}

fn v(c: &Change) -> String {
    match c.get("v") {
        Some(Value::Text(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn a_primary_feeds_its_apps_and_its_devices_changes_in_log_order() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let mut after = p.feed_position();

    p.execute("INSERT INTO t(id, v, row_owner) VALUES (1, 'one', '*')", [])
        .unwrap();
    p.execute("UPDATE t SET v = 'uno' WHERE id = 1", [])
        .unwrap();
    p.execute("DELETE FROM t WHERE id = 1", []).unwrap();
    let mine = follow(&p, &mut after, 3);
    let kinds: Vec<_> = mine.iter().map(|c| (c.kind, c.rowid)).collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Upsert, 1),
            (ChangeKind::Upsert, 1),
            (ChangeKind::Delete, 1)
        ]
    );
    assert_eq!((v(&mine[0]).as_str(), v(&mine[1]).as_str()), ("one", "uno"));
    assert!(mine[2].values.is_empty(), "a delete carries no values");
    assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(mine.iter().all(|c| c.table == "t"));
    let primary_node = mine[0].origin_node;

    let d = c.device("d.db", &p);
    let device_node = ready(&d).node_id;
    d.execute("INSERT INTO t(v) VALUES ('from the device')", [])
        .unwrap();
    let theirs = follow(&p, &mut after, 1);
    assert_eq!(v(&theirs[0]), "from the device");
    assert_eq!(theirs[0].origin_node, device_node);
    assert_ne!(theirs[0].origin_node, primary_node);

    // Nothing more happened: the feed answers at once with nothing, where it stands.
    let rest = p.changes_after(after, 64).unwrap();
    assert!(rest.changes.is_empty());
    assert_eq!(rest.up_to, after);
}

#[test]
fn a_device_waits_on_its_feed_but_reads_rows_from_its_tables() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let before = d.feed_position();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('for all', '*')", [])
        .unwrap();
    let reached = d.wait_feed(before, DEADLINE);
    assert!(
        reached > before,
        "the device's position moves when rows arrive"
    );
    assert_eq!(count(&d, "SELECT count(*) FROM t WHERE v = 'for all'"), 1);
    let err = d.changes_after(0, 10).expect_err("no log on a device");
    assert!(err.to_string().contains("primaries only"), "{err}");
}

/// A position past the feed's end (kept from before the primary was restored from an older
/// copy, say) is refused, naming the end (Python walkthrough: it answered "nothing new, up to
/// that position", and a reader carrying on from there missed every later change).
#[test]
fn a_position_past_the_feeds_end_is_refused_naming_the_end() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('one', '*')", [])
        .unwrap();
    let end = p.feed_position();
    match p.changes_after(end + 1_000_000, 10) {
        Err(octodb::Error::FeedAhead { after, end: told }) => {
            assert_eq!((after, told), (end + 1_000_000, end));
        }
        other => panic!("expected FeedAhead, got {other:?}"),
    }
    let batch = p.changes_after(end, 10).unwrap();
    assert!(batch.changes.is_empty() && batch.up_to == end);
}

#[test]
fn a_follower_feeds_what_the_leader_decided() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let p2 = joining_primary(&c.path("p2.db"), &addr_of(&p1));
    wait_voters(&p1, 2);
    let mut after = 0;
    p1.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (7, 'seven', '*')",
        [],
    )
    .unwrap();
    let seen = wait_until("the follower's feed shows the leader's row", || {
        follow(&p2, &mut after, 1)
            .into_iter()
            .find(|c| c.table == "t" && c.rowid == 7)
    });
    assert_eq!(v(&seen), "seven");
    assert_eq!(seen.kind, ChangeKind::Upsert);
}
