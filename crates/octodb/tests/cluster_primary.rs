//! A running primary is a Raft cluster of one: its devices' transactions reach its Raft log,
//! written in the same commit as their effects (a few bytes each: their positions in the
//! primaries' log), and a restart, which applies the Raft log again, applies none twice.

mod common;

use common::*;
use octodb::cluster::{Proposal, TypeConfig};
use octodb::Connection;
use openraft::{Entry, EntryPayload};
use std::path::Path;

/// The primary's Raft log, read from its file.
fn raft_log(path: &Path) -> Vec<Entry<TypeConfig>> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut stmt = c
        .prepare("SELECT entry FROM _octo_raft_log ORDER BY idx")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows.iter()
        .map(|b| postcard::from_bytes(b).expect("a stored Raft entry decodes"))
        .collect()
}

/// The log positions that written-through entries name, in order.
fn written_through(log: &[Entry<TypeConfig>]) -> Vec<(u64, u64)> {
    log.iter()
        .filter_map(|e| match e.payload {
            EntryPayload::Normal(Proposal::InLog {
                first_seq,
                last_seq,
            }) => Some((first_seq, last_seq)),
            _ => None,
        })
        .collect()
}

fn insert(d: &Connection, from: usize, to: usize) {
    for i in from..to {
        d.execute("INSERT INTO t(v) VALUES (?1)", [format!("v{i}")])
            .unwrap();
    }
}

#[test]
fn a_primary_alone_writes_device_batches_through_its_raft_log_and_restarts_without_doubling() {
    let c = Cluster::new();
    let path = c.path("p.db");
    let p = c.primary_with_t();
    let port = p.bound_addrs()[0].port();
    let d = c.device("d.db", &p);
    ready(&d);
    insert(&d, 0, 50);
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 50);

    let cluster = p
        .sync_status()
        .unwrap()
        .cluster
        .expect("a primary shows its cluster");
    assert_eq!((cluster.role.as_str(), cluster.leader), ("leader", Some(1)));
    assert_eq!(cluster.members.len(), 1);
    assert!(cluster.members[0].voter);
    assert!(
        d.sync_status().unwrap().cluster.is_none(),
        "devices are not in it"
    );
    let log = raft_log(&path);
    let batches = written_through(&log);
    assert!(!batches.is_empty(), "device batches are in the Raft log");
    assert_eq!(
        covered_positions(&path),
        log_positions(&path),
        "each entry of the primaries' log (the schema, then each accepted transaction) is in \
         exactly one Raft entry"
    );
    let from_device = "SELECT count(*) FROM _octo_log WHERE origin_txn > 0";
    let raw = rusqlite::Connection::open(&path).unwrap();
    let logged: i64 = raw.query_row(from_device, [], |r| r.get(0)).unwrap();
    assert_eq!(logged, 50);

    // A restart: the Raft node applies its log again; nothing is written twice.
    drop(d);
    drop(p);
    let p = Connection::open(&primary_uri(&path, port)).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 50);
    let d = c.device("d.db", &p);
    ready(&d);
    insert(&d, 50, 60);
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 60);
    let logged: i64 = raw.query_row(from_device, [], |r| r.get(0)).unwrap();
    assert_eq!(logged, 60, "every transaction once in the primaries' log");
    assert_eq!(covered_positions(&path), log_positions(&path));
}

/// Every position of the primaries' log, each once, in the Raft log's order.
fn covered_positions(path: &Path) -> Vec<u64> {
    written_through(&raft_log(path))
        .into_iter()
        .flat_map(|(a, b)| a..=b)
        .collect()
}

fn log_positions(path: &Path) -> Vec<u64> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut stmt = c.prepare("SELECT seq FROM _octo_log ORDER BY seq").unwrap();
    let seqs = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    seqs.into_iter().map(|s| s as u64).collect()
}

#[test]
fn every_commit_of_a_primary_app_takes_its_place_in_the_raft_log() {
    let c = Cluster::new();
    let path = c.path("p.db");
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    // Autocommit statements, an explicit transaction, savepoints (one released inside a
    // transaction, one rolled back, one that commits by its RELEASE), a rolled-back
    // transaction, a schema change; and devices' batches in between.
    p.execute("INSERT INTO t(v, row_owner) VALUES ('auto', '*')", [])
        .unwrap();
    insert(&d, 0, 5);
    p.execute_batch(
        "BEGIN; INSERT INTO t(v, row_owner) VALUES ('b1', '*');
         SAVEPOINT s1; INSERT INTO t(v, row_owner) VALUES ('b2', '*'); RELEASE s1;
         SAVEPOINT s2; INSERT INTO t(v, row_owner) VALUES ('gone', '*'); ROLLBACK TO s2;
         COMMIT;",
    )
    .unwrap();
    p.execute_batch(
        "SAVEPOINT Outer; INSERT INTO t(v, row_owner) VALUES ('s1', '*');
         SAVEPOINT inner; UPDATE t SET v = 's1b' WHERE v = 's1'; RELEASE inner;
         RELEASE \"outer\";",
    )
    .unwrap();
    p.execute_batch("BEGIN; INSERT INTO t(v, row_owner) VALUES ('never', '*'); ROLLBACK;")
        .unwrap();
    p.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)",
        [],
    )
    .unwrap();
    insert(&d, 5, 10);
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 14);

    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v IN ('gone', 'never')"),
        0
    );
    assert_eq!(
        covered_positions(&path),
        log_positions(&path),
        "each entry of the primaries' log is in the Raft log once, in the same order"
    );
}

/// The authorization rows a primary writes go through its Raft log written through, as its
/// batches do: its state machine must not write them a second time. (It did: an older image
/// applied after a newer decision had committed showed an approved device as `pending`.)
#[test]
fn a_primarys_own_authorization_rows_are_written_once() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let path = c.path("p.db");
    let spy = rusqlite::Connection::open(&path).unwrap();
    spy.execute_batch(
        "CREATE TABLE node_inserts(pubkey TEXT);
         CREATE TRIGGER count_node_inserts AFTER INSERT ON _octo_nodes
         BEGIN INSERT INTO node_inserts VALUES (new.pubkey); END;",
    )
    .unwrap();
    let devices: Vec<Connection> = (0..3).map(|i| c.device(&format!("d{i}.db"), &p)).collect();
    for d in &devices {
        ready(d);
    }
    p.wait_for(DEADLINE, |s| {
        s.cluster
            .as_ref()
            .is_some_and(|c| c.applied_index == c.last_log_index)
    })
    .expect("the primary applies its whole Raft log");
    let inserts: i64 = spy
        .query_row("SELECT count(*) FROM node_inserts", [], |r| r.get(0))
        .unwrap();
    let keys: i64 = spy
        .query_row("SELECT count(DISTINCT pubkey) FROM node_inserts", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(keys, 3, "each device asked to join");
    assert_eq!(
        inserts, 3,
        "each device's row was inserted once, by the writer"
    );
}
