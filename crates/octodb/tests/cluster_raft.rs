//! The primaries' Raft layer on its own: real files, real Noise connections over loopback.
//! A cluster forms (one primary, then two learners promoted to voters), every primary applies
//! the same decided transactions with the same log positions, a new leader is elected when the
//! leader stops, a primary far behind catches up from a snapshot and keeps its local rows, and
//! a node that is not a member is not served.

mod common;

use octodb::changes::{ChangeSet, Op, TableHeader};
use octodb::cluster::{start_member, Decided, Member, Proposal, Raft};
use octodb::crypto::NodeKeys;
use octodb::log::EntryBody;
use octodb::net::{HandshakeOptions, Message, SecureStream};
use octodb::Value;
use openraft::ServerState;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(30);

struct Primary {
    id: u64,
    path: PathBuf,
    keys: NodeKeys,
    member: Member,
    raft: Raft,
    server: JoinHandle<()>,
}

impl Primary {
    async fn start(dir: &Path, id: u64) -> Primary {
        Primary::start_as(dir, id, NodeKeys::generate(), "127.0.0.1:0").await
    }

    /// Starts primary `id` on its file in `dir` with `keys`, listening at `addr`: a restart
    /// gives the same ones.
    async fn start_as(dir: &Path, id: u64, keys: NodeKeys, addr: &str) -> Primary {
        let path = dir.join(format!("p{id}.db"));
        let listener = TcpListener::bind(addr).await.unwrap();
        let (raft, member, server) = start_member(id, &path, None, keys.clone(), listener)
            .await
            .unwrap();
        Primary {
            id,
            path,
            keys,
            member,
            raft,
            server,
        }
    }

    async fn stop(self) {
        self.server.abort();
        self.raft.shutdown().await.unwrap();
    }

    /// Rows of `sql` in this primary's file.
    fn rows(&self, sql: &str) -> Vec<Vec<Value>> {
        let c = rusqlite::Connection::open(&self.path).unwrap();
        let mut stmt = c.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Snapshots the state up to log index `last` and purges the log before it, so that a
    /// primary that needs older entries can only get the snapshot.
    async fn compact(&self, last: u64) {
        // (A metrics borrow held across an await would stall Raft's own task: take it apart.)
        let leader = self.raft.metrics().borrow().vote.leader_id;
        let upto = openraft::LogId::new(leader, last);
        self.raft.trigger().snapshot().await.unwrap();
        self.raft
            .wait(Some(DEADLINE))
            .snapshot(upto, "snapshot")
            .await
            .unwrap();
        self.raft.trigger().purge_log(last).await.unwrap();
        self.raft
            .wait(Some(DEADLINE))
            .purged(Some(upto), "purged")
            .await
            .unwrap();
    }

    /// Makes this primary a cluster of one and waits until it leads it.
    async fn found_cluster(&self) {
        self.raft
            .initialize(BTreeMap::from([(self.id, self.member.clone())]))
            .await
            .unwrap();
        self.raft
            .wait(Some(DEADLINE))
            .state(ServerState::Leader, "leads its own cluster")
            .await
            .unwrap();
    }

    async fn wait_applied(&self, index: u64) {
        self.raft
            .wait(Some(DEADLINE))
            .applied_index_at_least(Some(index), "applied")
            .await
            .unwrap();
    }
}

/// Primaries 1, 2 and 3 as voters of one cluster led by 1, after 1 alone applied `first`.
async fn three_primaries(dir: &Path, first: Vec<Decided>) -> [Primary; 3] {
    let p1 = Primary::start(dir, 1).await;
    let p2 = Primary::start(dir, 2).await;
    let p3 = Primary::start(dir, 3).await;
    p1.found_cluster().await;
    propose(&p1.raft, first).await;
    for p in [&p2, &p3] {
        p1.raft
            .add_learner(p.id, p.member.clone(), true)
            .await
            .unwrap();
    }
    p1.raft
        .change_membership(BTreeSet::from([1, 2, 3]), false)
        .await
        .unwrap();
    [p1, p2, p3]
}

fn create_table() -> Decided {
    Decided {
        origin_node: 1,
        origin_txn: 0,
        body: EntryBody::Changes(ChangeSet {
            tables: Vec::new(),
            ops: vec![Op::Ddl {
                sql: "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)".into(),
                private: false,
            }],
        }),
    }
}

/// A device's transaction `txn` as the leader decided it: one row of user 7.
fn device_row(node: u32, txn: u64, id: i64) -> Decided {
    Decided {
        origin_node: node,
        origin_txn: txn,
        body: EntryBody::Changes(ChangeSet {
            tables: vec![TableHeader {
                name: "t".into(),
                columns: vec!["id".into(), "v".into(), "row_owner".into()],
            }],
            ops: vec![Op::Upsert {
                table: 0,
                rowid: id,
                values: vec![
                    Value::Integer(id),
                    Value::Text(format!("row {id}")),
                    Value::Integer(7),
                ],
            }],
        }),
    }
}

async fn propose(raft: &Raft, txns: Vec<Decided>) -> u64 {
    let written = raft.client_write(Proposal::Decided(txns)).await.unwrap();
    written.log_id.index
}

async fn leader_among(primaries: &[&Primary]) -> u64 {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        for p in primaries {
            let m = p.raft.metrics().borrow().clone();
            if m.state == ServerState::Leader {
                return p.id;
            }
        }
        assert!(tokio::time::Instant::now() < end, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const SHARED: &[&str] = &[
    "SELECT id, v, row_owner FROM t WHERE row_owner IS NOT NULL ORDER BY id",
    "SELECT seq, origin_node, origin_txn, body FROM _octo_log ORDER BY seq",
];

fn assert_same(a: &Primary, b: &Primary) {
    for sql in SHARED {
        assert_eq!(
            a.rows(sql),
            b.rows(sql),
            "primaries {} and {}: {sql}",
            a.id,
            b.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_primaries_apply_the_same_log_and_elect_a_new_leader() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let [p1, p2, p3] =
        three_primaries(dir.path(), vec![create_table(), device_row(10, 1, 100)]).await;
    let mut last = 0;
    for txn in 2..=20 {
        last = propose(&p1.raft, vec![device_row(10, txn, 100 + txn as i64)]).await;
    }
    for p in [&p2, &p3] {
        p.wait_applied(last).await;
        assert_same(&p1, p);
    }
    assert_eq!(
        p3.rows("SELECT count(*) FROM t")[0],
        vec![Value::Integer(20)]
    );
    // Each decided transaction is one log entry, at the same position everywhere.
    assert_eq!(
        p2.rows("SELECT max(seq) FROM _octo_log")[0],
        vec![Value::Integer(21)]
    );

    // The leader stops: the other two elect one and go on.
    p1.stop().await;
    let leader_id = leader_among(&[&p2, &p3]).await;
    let (leader, follower) = if leader_id == 2 {
        (&p2, &p3)
    } else {
        (&p3, &p2)
    };
    let last = propose(&leader.raft, vec![device_row(11, 1, 500)]).await;
    follower.wait_applied(last).await;
    assert_same(leader, follower);
    assert_eq!(
        follower.rows("SELECT v FROM t WHERE id = 500")[0],
        vec![Value::Text("row 500".into())]
    );
    p2.stop().await;
    p3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_far_behind_gets_a_snapshot_and_keeps_its_local_rows() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let p1 = Primary::start(dir.path(), 1).await;
    p1.found_cluster().await;
    let mut last = propose(&p1.raft, vec![create_table()]).await;
    for txn in 1..=50 {
        last = propose(&p1.raft, vec![device_row(10, txn, txn as i64)]).await;
    }
    // Compact: the log before the snapshot is gone, so a newcomer can only get the snapshot.
    p1.compact(last).await;

    // The newcomer has a local row of its own in the same table.
    let p2 = Primary::start(dir.path(), 2).await;
    {
        let c = rusqlite::Connection::open(&p2.path).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
             INSERT INTO t VALUES (999, 'local to p2', NULL);",
        )
        .unwrap();
    }
    p1.raft
        .add_learner(2, p2.member.clone(), true)
        .await
        .unwrap();
    p2.wait_applied(last).await;
    assert_eq!(
        p2.rows("SELECT count(*) FROM t WHERE row_owner IS NOT NULL")[0],
        vec![Value::Integer(50)]
    );
    assert_eq!(
        p2.rows(SHARED[1]),
        p1.rows(SHARED[1]),
        "the log came with the snapshot"
    );
    assert_eq!(
        p2.rows("SELECT v FROM t WHERE id = 999"),
        vec![vec![Value::Text("local to p2".into())]],
        "local rows stay on their node"
    );
    // The snapshot carried no secret of p1's: p2's own keys are not p1's.
    assert!(p2
        .rows("SELECT value FROM _octo_meta WHERE key = 'node_keys'")
        .is_empty());
    // And p2 follows new entries after it.
    let next = propose(&p1.raft, vec![device_row(10, 51, 51)]).await;
    p2.wait_applied(next).await;
    assert_same(&p1, &p2);
    p1.stop().await;
    p2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_a_member_is_not_served() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let p1 = Primary::start(dir.path(), 1).await;
    p1.found_cluster().await;
    propose(&p1.raft, vec![create_table()]).await;
    // A stranger that pretends to be the leader of a newer term, to take over p1's log.
    let stranger = NodeKeys::generate();
    let tcp = TcpStream::connect(&p1.member.addr).await.unwrap();
    let stream = SecureStream::connect(tcp, &stranger, &HandshakeOptions::default())
        .await
        .unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let hello = Message::Hello {
        role: octodb::Role::Primary,
        last_seq: 0,
        info: "{}".into(),
        auth: None,
    };
    wr.send(&hello.encode()).await.unwrap();
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(99, 9), None);
    let mut frame = vec![1u8];
    frame.extend(postcard::to_allocvec(&(1u32, vote)).unwrap());
    wr.send(&frame).await.unwrap();
    wr.flush().await.unwrap();
    let answer = tokio::time::timeout(DEADLINE, rd.recv()).await.unwrap();
    assert!(
        answer.is_err(),
        "a stranger gets no answer, only a closed connection"
    );
    let m = p1.raft.metrics().borrow().clone();
    assert_eq!(m.state, ServerState::Leader, "p1 is still the leader");
    assert_eq!(m.current_term, 1, "the stranger's term was never taken");
    p1.stop().await;
}

/// The schema of the trigger test: `t`, a local audit table its trigger keeps, and a
/// replicated table of receipts its trigger writes too.
fn triggers_schema() -> Decided {
    let ddl = |sql: &str| Op::Ddl {
        sql: sql.into(),
        private: false,
    };
    Decided {
        origin_node: 1,
        origin_txn: 0,
        body: EntryBody::Changes(ChangeSet {
            tables: Vec::new(),
            ops: vec![
                ddl("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)"),
                ddl("CREATE TABLE audit(v TEXT)"),
                ddl("CREATE TABLE receipts(id INTEGER PRIMARY KEY, v TEXT, row_owner)"),
                ddl("CREATE TRIGGER t_written AFTER INSERT ON t BEGIN
                       INSERT INTO audit VALUES (new.v);
                       INSERT INTO receipts(v, row_owner) VALUES (new.v, new.row_owner);
                     END"),
            ],
        }),
    }
}

/// A device's row as the leader decided it, with the receipt its trigger wrote (captured by
/// the leader, id from the leader's range).
fn row_with_receipt(txn: u64, id: i64) -> Decided {
    let mut d = device_row(10, txn, id);
    if let EntryBody::Changes(cs) = &mut d.body {
        cs.tables.push(TableHeader {
            name: "receipts".into(),
            columns: vec!["id".into(), "v".into(), "row_owner".into()],
        });
        cs.ops.push(Op::Upsert {
            table: 1,
            rowid: (1 << 32) | id,
            values: vec![
                Value::Integer((1 << 32) | id),
                Value::Text(format!("row {id}")),
                Value::Integer(7),
            ],
        });
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_keep_local_tables_on_every_primary_without_doubling_replicated_effects() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let p1 = Primary::start(dir.path(), 1).await;
    let p2 = Primary::start(dir.path(), 2).await;
    p1.found_cluster().await;
    propose(&p1.raft, vec![triggers_schema()]).await;
    p1.raft
        .add_learner(2, p2.member.clone(), true)
        .await
        .unwrap();
    let mut last = 0;
    for txn in 1..=5 {
        last = propose(&p1.raft, vec![row_with_receipt(txn, txn as i64)]).await;
    }
    p2.wait_applied(last).await;
    for p in [&p1, &p2] {
        assert_eq!(
            p.rows("SELECT count(*) FROM audit")[0],
            vec![Value::Integer(5)],
            "primary {}: the trigger kept its local table",
            p.id
        );
        assert_eq!(
            p.rows("SELECT id FROM receipts ORDER BY id"),
            (1..=5)
                .map(|i| vec![Value::Integer((1 << 32) | i)])
                .collect::<Vec<_>>(),
            "primary {}: each receipt once, with the leader's id",
            p.id
        );
    }
    p1.stop().await;
    p2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_after_the_log_was_compacted_catches_up_and_applies_nothing_twice() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let [p1, p2, p3] = three_primaries(dir.path(), vec![create_table()]).await;
    let mut last = 0;
    for txn in 1..=50 {
        last = propose(&p1.raft, vec![device_row(10, txn, txn as i64)]).await;
    }
    p3.wait_applied(last).await;
    // p3 stops; the other two go on, and the log it would need is compacted away.
    let (keys, addr) = (p3.keys.clone(), p3.member.addr.clone());
    p3.stop().await;
    for txn in 51..=300 {
        last = propose(&p1.raft, vec![device_row(10, txn, txn as i64)]).await;
    }
    p1.compact(last).await;
    // p3 comes back on its own file, with its own key and address.
    let p3 = Primary::start_as(dir.path(), 3, keys, &addr).await;
    p3.wait_applied(last).await;
    assert_same(&p1, &p3);
    assert_eq!(
        p3.rows(
            "SELECT count(*), count(DISTINCT origin_txn) FROM _octo_log WHERE origin_node = 10"
        )[0],
        vec![Value::Integer(300), Value::Integer(300)],
        "every decided transaction once in p3's log"
    );
    let next = propose(&p1.raft, vec![device_row(10, 301, 301)]).await;
    p3.wait_applied(next).await;
    assert_same(&p1, &p3);
    for p in [p1, p2, p3] {
        p.stop().await;
    }
}

/// A primary whose file is encrypted (`cipher=`): its Raft log, vote and state machine live in
/// that file, so none of the decided rows is readable on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_primary_keeps_its_raft_log_and_state_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p1.db");
    let key = octodb::uri::NetworkKey::Passphrase("raft at rest".into());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (raft, member, server) = start_member(1, &path, Some(&key), NodeKeys::generate(), listener)
        .await
        .unwrap();
    raft.initialize(BTreeMap::from([(1, member)]))
        .await
        .unwrap();
    raft.wait(Some(DEADLINE))
        .state(ServerState::Leader, "leads its own cluster")
        .await
        .unwrap();
    let mut txns = vec![create_table()];
    txns.extend((1..=20).map(|i| device_row(5, i as u64, i)));
    let index = propose(&raft, txns).await;
    raft.wait(Some(DEADLINE))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap();
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        files += 1;
        for needle in [&b"row 17"[..], b"SQLite format 3", b"CREATE TABLE t"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }
    assert!(files >= 2, "the file and its WAL");
    server.abort();
    raft.shutdown().await.unwrap();
    // The key opens it; the rows are there.
    let c = octodb::Connection::open(&format!(
        "file:{}?cipher=sqlcipher&key=raft%20at%20rest",
        path.display()
    ))
    .unwrap();
    let n = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<i64>(0))
        .unwrap();
    assert_eq!(n, 20);
}
