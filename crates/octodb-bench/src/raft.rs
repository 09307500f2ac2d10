//! Raft: the primaries' Raft layer on its own (`octodb::cluster`), committing decided
//! single-row transactions through openraft on real files as whole proposals, one primary and
//! three on loopback in this process, beside SQLite's own single-row commits in the same run.
//! (A running primary writes its batches' entries through instead: see BENCHMARKS.md.)

use crate::baseline::{self, Sync};
use crate::cluster::{bench_dir, payload};
use crate::report::{percentile, Better, Figure};
use anyhow::Result;
use octodb::changes::{ChangeSet, Op, TableHeader};
use octodb::cluster::{start_member, Decided, Proposal, Raft};
use octodb::crypto::NodeKeys;
use octodb::log::EntryBody;
use octodb::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// Transactions per proposal in the group-commit runs: a primary's writer proposes each group
/// commit as one entry.
const GROUP: usize = 100;

pub fn run(txns: usize) -> Result<Vec<Figure>> {
    let sqlite = baseline::insert_rate(Sync::Full, 2_000.min(txns as u64), 1, 64)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (one_seq, one_p50, one_group, three_group) = rt.block_on(async {
        let dir = tempfile::Builder::new()
            .prefix("octodb-bench-raft")
            .tempdir_in(bench_dir()?)?;
        let one = Group::start(dir.path(), "one", 1).await?;
        let (one_seq, one_p50) = proposals(&one.leader, txns / 10, 1).await?;
        let (one_group, _) = proposals(&one.leader, txns / GROUP, GROUP).await?;
        one.stop().await;
        let three = Group::start(dir.path(), "three", 3).await?;
        let (three_group, _) = proposals(&three.leader, txns / GROUP, GROUP).await?;
        three.stop().await;
        anyhow::Ok((one_seq, one_p50, one_group, three_group))
    })?;
    let setup = format!("{}, single-row autocommit", Sync::Full.describe());
    let figure = |metric: String, value: f64, note: String| Figure {
        scenario: "raft",
        metric,
        octodb: value,
        unit: "txn/s",
        sqlite: Some(sqlite),
        sqlite_setup: setup.clone(),
        better: Better::Higher,
        target: "- (informative)".into(),
        met: true,
        spread: None,
        notes: note,
    };
    Ok(vec![
        figure(
            "1 primary, single-row transactions, one proposal each".into(),
            one_seq,
            format!(
                "p50 {one_p50:.2} ms from proposal to applied; one fsync per proposal (the Raft \
                 log's; the state machine commits without one)"
            ),
        ),
        figure(
            format!("1 primary, group commits of {GROUP} transactions per proposal"),
            one_group,
            "as a primary's writer would propose its group commits".into(),
        ),
        figure(
            format!("3 primaries on loopback, {GROUP} per proposal"),
            three_group,
            format!(
                "{:.0}% of one primary's rate: three replicas and their fsyncs on two cores and one disk",
                three_group / one_group * 100.0
            ),
        ),
    ])
}

/// A cluster of `size` primaries in this process, each with its file and its listener.
struct Group {
    leader: Raft,
    members: Vec<(Raft, tokio::task::JoinHandle<()>)>,
}

impl Group {
    async fn start(dir: &Path, name: &str, size: u64) -> Result<Group> {
        let mut members = Vec::new();
        let mut known = BTreeMap::new();
        for id in 1..=size {
            let path = dir.join(format!("{name}-{id}.db"));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let (raft, member, server) =
                start_member(id, &path, None, NodeKeys::generate(), listener).await?;
            known.insert(id, member);
            members.push((raft, server));
        }
        let leader = members[0].0.clone();
        leader
            .initialize(BTreeMap::from([(1, known[&1].clone())]))
            .await?;
        leader
            .wait(Some(Duration::from_secs(30)))
            .state(openraft::ServerState::Leader, "leader")
            .await?;
        leader
            .client_write(Proposal::Decided(vec![schema()]))
            .await?;
        for id in 2..=size {
            leader.add_learner(id, known[&id].clone(), true).await?;
        }
        if size > 1 {
            let voters: BTreeSet<u64> = (1..=size).collect();
            leader.change_membership(voters, false).await?;
        }
        Ok(Group { leader, members })
    }

    async fn stop(self) {
        for (raft, server) in self.members {
            server.abort();
            let _ = raft.shutdown().await;
        }
    }
}

fn schema() -> Decided {
    Decided {
        origin_node: 1,
        origin_txn: 0,
        body: EntryBody::Changes(ChangeSet {
            tables: Vec::new(),
            ops: vec![Op::Ddl {
                sql: baseline::ITEMS.into(),
                private: false,
            }],
        }),
    }
}

/// A device's single-row transaction as a leader would have decided it.
fn one_row(n: i64) -> Decided {
    Decided {
        origin_node: 2,
        origin_txn: n as u64,
        body: EntryBody::Changes(ChangeSet {
            tables: vec![TableHeader {
                name: "items".into(),
                columns: vec![
                    "id".into(),
                    "n".into(),
                    "payload".into(),
                    "row_owner".into(),
                ],
            }],
            ops: vec![Op::Upsert {
                table: 0,
                rowid: n,
                values: vec![
                    Value::Integer(n),
                    Value::Integer(n),
                    Value::Text(payload(n as u64, 64)),
                    Value::Integer(1),
                ],
            }],
        }),
    }
}

static NEXT: AtomicI64 = AtomicI64::new(1);

/// `count` proposals one after the other, each of `per_proposal` single-row transactions:
/// transactions per second, and the p50 time of a proposal (ms).
async fn proposals(raft: &Raft, count: usize, per_proposal: usize) -> Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let decided = (0..per_proposal)
            .map(|_| one_row(NEXT.fetch_add(1, Ordering::Relaxed)))
            .collect();
        let t = Instant::now();
        raft.client_write(Proposal::Decided(decided)).await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rate = (count * per_proposal) as f64 / started.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    Ok((rate, percentile(&ms, 50.0)))
}
