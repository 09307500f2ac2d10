//! The primaries' Raft group, on openraft: the Raft log and vote kept in the primary's own
//! file (`log_store`), the state machine that applies the decided transactions to it
//! (`state_machine`), and Raft's messages over the nodes' Noise connections (`network`).
//!
//! The leader decides a batch of transactions (conflicts, authorization, ids) and proposes it
//! as one [`Proposal`]; every primary's state machine applies it in one SQLite transaction,
//! which also appends the log entries with the same sequence numbers, records each device's
//! last decided transaction and the last applied Raft log id. So all primaries hold the same
//! replicated tables, log and authorization state.
//!
//! Status: the layer itself (storage, state machine, snapshots, network), tested with real
//! files over loopback (tests/cluster_raft.rs). Wiring a running primary's writer and its
//! device sessions to it is the next step (README, "Cluster of primaries").

pub(crate) mod forward;
mod log_store;
pub mod network;
pub(crate) mod rejoin;
pub use rejoin::RestoreMark;
pub(crate) use rejoin::{mark_restored_copy, start_new_cluster};
mod snapshot;
mod state_machine;
mod types;
mod write_through;

pub(crate) use log_store::oldest_log_seq_named;
pub use log_store::LogStore;
pub use network::{serve_connection, serve_members, PeerNetwork};
pub(crate) use state_machine::own_batches_beyond;
pub use state_machine::{Applying, StateMachine};
pub use types::{Applied, Decided, Member, Proposal, TypeConfig};
pub use write_through::Proposer;
pub(crate) use write_through::{Batch, GaveUp, InTxn, Proposed, Response};

use std::sync::Arc;

/// A primary's Raft node id: its octodb node id.
pub type RaftNodeId = u64;
/// A running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Raft's timings for primaries on one network: heartbeats every 200 ms, an election after
/// 0.5-1 s without one (a new leader well within the 3 s that devices' fail-over allows),
/// snapshots sent with a generous per-chunk deadline.
pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "octodb".into(),
        // openraft 0.9 also gives each AppendEntries this long (a new connection's handshake
        // included): at 100 ms a loaded machine timed replication out again and again and a
        // joining primary never caught up. Elections after 0.5-1 s of silence keep a
        // fail-over near 2 s (octodb-bench failover).
        heartbeat_interval: 200,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 256,
        // A snapshot is the whole shared state, built in memory: not every 5,000 entries of
        // a busy primary. (Compaction with snapshots kept in files is to come; until then
        // the Raft log grows by a few dozen bytes per written-through batch.)
        snapshot_policy: openraft::SnapshotPolicy::Never,
        ..Default::default()
    };
    // These constants pass openraft's checks (the test below); no input reaches them.
    Arc::new(
        config
            .validate()
            .expect("the cluster's Raft timings are consistent"),
    )
}

/// A primary's Raft node on its file at `path` (encrypted with `file_key` when given), with
/// `keys`: the handle, and the proposer its writer decides through.
pub async fn start_node(
    id: RaftNodeId,
    path: &std::path::Path,
    file_key: Option<crate::uri::NetworkKey>,
    keys: crate::crypto::NodeKeys,
    handshake: crate::net::HandshakeOptions,
) -> crate::Result<(Raft, Proposer)> {
    let log = LogStore::open(path, file_key.as_ref())?;
    let state = StateMachine::open(path, file_key.as_ref(), id)?;
    let network = PeerNetwork::new(keys, handshake, path, file_key.clone());
    let raft = Raft::new(
        id,
        raft_config(),
        network.clone(),
        log.clone(),
        state.clone(),
    )
    .await
    .map_err(|e| crate::Error::rule(format!("starting the Raft node: {e}")))?;
    let forwarder = forward::Forwarder::new(network);
    let proposer = Proposer::new(raft.clone(), log, state, forwarder);
    Ok((raft, proposer))
}

/// How long a primary alone waits to lead its cluster of one (it elects itself at once).
const ALONE_LEADS_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// A primary's Raft node at its start: a new primary alone forms a cluster of one and leads
/// it; after a restart the stored membership decides (a primary alone leads again at once).
pub(crate) async fn start_primary(
    id: RaftNodeId,
    path: &std::path::Path,
    file_key: Option<crate::uri::NetworkKey>,
    keys: crate::crypto::NodeKeys,
    handshake: crate::net::HandshakeOptions,
    member: Member,
) -> crate::Result<Proposer> {
    let (raft, proposer) = start_node(id, path, file_key, keys, handshake).await?;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        crate::Error::rule(format!("{what} the primary's cluster: {e}"))
    };
    let formed = raft
        .is_initialized()
        .await
        .map_err(|e| failed("reading", &e))?;
    if !formed {
        let members = std::collections::BTreeMap::from([(id, member)]);
        raft.initialize(members)
            .await
            .map_err(|e| failed("forming", &e))?;
    }
    // (The metrics show the membership once the core has taken it in: wait for that.)
    let known = raft
        .wait(Some(ALONE_LEADS_WITHIN))
        .metrics(
            |m| {
                m.membership_config
                    .membership()
                    .voter_ids()
                    .next()
                    .is_some()
            },
            "the primary's cluster membership is known",
        )
        .await
        .map_err(|e| failed("reading the membership of", &e))?;
    let voters: Vec<RaftNodeId> = known.membership_config.membership().voter_ids().collect();
    if voters == [id] {
        // Leading, with the leader's first entry applied: its vote and that entry are then
        // written, so no commit of the primary's waits for the SQLite lock behind them.
        raft.wait(Some(ALONE_LEADS_WITHIN))
            .metrics(
                |m| {
                    m.state == openraft::ServerState::Leader
                        && m.last_applied
                            .is_some_and(|l| l.leader_id.term == m.current_term)
                },
                "a primary alone leads its cluster",
            )
            .await
            .map_err(|e| failed("electing the leader of", &e))?;
    }
    Ok(proposer)
}

/// Whether the file has the Raft node's tables (a primary's that ran with a cluster, even of
/// one).
pub(crate) fn has_raft_tables(conn: &rusqlite::Connection) -> crate::Result<bool> {
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name IN ('_octo_raft_log', '_octo_raft')",
        [],
        |r| r.get(0),
    )?;
    Ok(tables == 2)
}

/// Whether the primary's file at `path` already belongs to a cluster (its Raft node has a
/// log or a vote): then its stored membership decides, not `connect=`.
pub(crate) fn is_formed(conn: &rusqlite::Connection) -> crate::Result<bool> {
    let has = |sql: &str| -> crate::Result<bool> {
        Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? > 0)
    };
    Ok(has_raft_tables(conn)?
        && (has("SELECT count(*) FROM _octo_raft_log")?
            || has("SELECT count(*) FROM _octo_raft WHERE key = 'vote'")?))
}

/// A primary's Raft member: its node on the file at `path` (encrypted with `file_key`, as the
/// node's URI gives it with `cipher=`) with `keys`, serving the other
/// primaries' Raft requests on `listener`. Returns the Raft handle, how others reach it, and
/// the server's task (aborting it ends its connections). (A running primary will serve from
/// its own listener instead; tests and the benchmark use this.)
pub async fn start_member(
    id: RaftNodeId,
    path: &std::path::Path,
    file_key: Option<&crate::uri::NetworkKey>,
    keys: crate::crypto::NodeKeys,
    listener: tokio::net::TcpListener,
) -> crate::Result<(Raft, Member, tokio::task::JoinHandle<()>)> {
    let member = Member {
        addr: listener
            .local_addr()
            .map_err(|e| crate::Error::io("reading the listener's address", e))?
            .to_string(),
        public_key: keys.public_key().to_hex(),
    };
    let handshake = crate::net::HandshakeOptions::default();
    let (raft, _) =
        start_node(id, path, file_key.cloned(), keys.clone(), handshake.clone()).await?;
    let server = tokio::spawn(serve_members(listener, keys, handshake, raft.clone()));
    Ok((raft, member, server))
}

/// Who leads the cluster, as this primary sees it.
pub(crate) enum Lead {
    /// This primary.
    Here,
    /// This primary, but no majority of its voters answered it for this many milliseconds:
    /// it is likely cut off from the others, which may have elected another leader.
    CutOff(u64),
    /// Another member, reached at this address.
    At(String),
    /// No leader now (an election runs).
    Unknown,
}

pub(crate) fn lead(raft: &Raft) -> Lead {
    // (Taken out of the borrow at once: openraft's core waits while it is held.)
    let m = raft.metrics().borrow().clone();
    // A node whose Raft stopped (its file diverged, say) knows of no leader it can follow.
    if m.running_state.is_err() {
        return Lead::Unknown;
    }
    if m.state == openraft::ServerState::Leader {
        return match quorum_silence(&m) {
            Some(ms) => Lead::CutOff(ms),
            None if leads_confirmed(&m) => Lead::Here,
            None => Lead::Unknown,
        };
    }
    let leader = m
        .current_leader
        .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
    match leader {
        Some(member) => Lead::At(member.addr),
        None => Lead::Unknown,
    }
}

/// Whether this primary has joined its cluster as a voter and applied the log up to where it
/// became one: what the cluster held when it let it in. (A primary that has just joined is a
/// learner at first, its log still arriving: an app's transaction begun then ran against an
/// empty file and conflicted with all the cluster's schema.)
pub(crate) fn joined_and_caught_up(raft: &Raft) -> bool {
    let m = raft.metrics().borrow().clone();
    let voter = m
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id == m.id);
    let became_voter_at = m.membership_config.log_id().map(|l| l.index).unwrap_or(0);
    voter && m.last_applied.map(|l| l.index).unwrap_or(0) >= became_voter_at
}

/// Whether this node leads with its leadership confirmed in this run: a majority of its voters
/// answered it since it became leader (alone, at once). A leader of several voters killed and
/// started again comes back leading its stored term (openraft restores it so) before it hears
/// that the others elected another meanwhile: an app's write in that moment made a Raft entry
/// the cluster never kept, and this primary's Raft node then stopped (cluster walkthrough).
pub(crate) fn leads_confirmed(m: &openraft::RaftMetrics<RaftNodeId, Member>) -> bool {
    m.state == openraft::ServerState::Leader && m.millis_since_quorum_ack.is_some()
}

/// Resolves once `raft` has stopped (shut down, or stopped by a fatal error).
pub(crate) async fn raft_stopped(raft: &Raft) {
    let mut metrics = raft.metrics();
    while metrics.borrow_and_update().running_state.is_ok() {
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// How long a leader that is closed waits for a majority to hold what it wrote.
const STOP_HANDOVER_MAX: std::time::Duration = std::time::Duration::from_secs(3);

/// A leader of several voters about to stop: waits (at most [`STOP_HANDOVER_MAX`]) until
/// the entries it wrote through are committed. Written into its file before a majority held
/// them, entries it stopped with would leave it diverged from the cluster that went on
/// without them: its Raft node refused to go on when opened again, until it was opened once
/// more to rejoin as a new member (the cluster walkthrough: 1 leader close in 4 while its
/// followers' apps wrote through it).
pub(crate) async fn hand_over_before_stopping(raft: &Raft) {
    let held = |m: &openraft::RaftMetrics<RaftNodeId, Member>| {
        m.state != openraft::ServerState::Leader
            || m.membership_config.membership().voter_ids().count() < 2
            || m.last_applied.map(|l| l.index) >= m.last_log_index
    };
    if held(&raft.metrics().borrow()) {
        return;
    }
    tracing::info!("the leader stops once a majority holds its last writes");
    if let Err(e) = raft
        .wait(Some(STOP_HANDOVER_MAX))
        .metrics(held, "a majority holding the leader's last writes")
        .await
    {
        tracing::warn!(
            "the leader stops with writes no majority confirmed yet ({e}): opened again, it \
             rejoins the cluster if the others went on without them"
        );
    }
}

/// How long a leader of several voters may hear from no majority of them before it stops
/// taking writes and devices: beyond the longest election timeout, by when the others have
/// likely elected a leader of their own. (A healthy leader hears from them with every
/// heartbeat, every 200 ms.)
const QUORUM_SILENCE_MAX_MS: u64 = 1_500;

/// For a leader of several voters that heard from no majority for longer than
/// [`QUORUM_SILENCE_MAX_MS`]: for how long. None while a majority answers (or it leads alone,
/// or it does not lead).
pub(crate) fn quorum_silence(m: &openraft::RaftMetrics<RaftNodeId, Member>) -> Option<u64> {
    if m.state != openraft::ServerState::Leader
        || m.membership_config.membership().voter_ids().count() < 2
    {
        return None;
    }
    m.millis_since_quorum_ack
        .filter(|ms| *ms > QUORUM_SILENCE_MAX_MS)
}

/// What a leader cut off from its majority says when it refuses a write.
pub(crate) fn cut_off(ms: u64) -> String {
    format!(
        "quorum lost: this primary leads but has heard from no majority of its cluster for \
         {:.1} s (a network partition, or the others are down): use another primary of the \
         cluster, or try again once this one reaches them",
        ms as f64 / 1000.0
    )
}

/// Builds a snapshot of everything applied and purges the Raft log up to it, so that a
/// member added next receives the snapshot instead of the log from its start: how a primary
/// that rejoins as a new member (`rejoin`) gets its shared state replaced whole.
pub(crate) async fn compact(raft: &Raft, timeout: std::time::Duration) -> crate::Result<()> {
    let failed =
        |e: &dyn std::fmt::Display| crate::Error::rule(format!("compacting the Raft log: {e}"));
    // (Taken out of the borrow at once: openraft's core waits while it is held.)
    let applied = raft.metrics().borrow().last_applied;
    let Some(applied) = applied else {
        return Ok(());
    };
    raft.trigger().snapshot().await.map_err(|e| failed(&e))?;
    let built = raft
        .wait(Some(timeout))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
            "a snapshot of what was applied",
        )
        .await
        .map_err(|e| failed(&e))?;
    let Some(snapshot) = built.snapshot else {
        return Ok(());
    };
    raft.trigger()
        .purge_log(snapshot.index)
        .await
        .map_err(|e| failed(&e))?;
    raft.wait(Some(timeout))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= snapshot.index),
            "the log purged up to the snapshot",
        )
        .await
        .map_err(|e| failed(&e))?;
    Ok(())
}

/// What a primary's devices need to know of its cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This primary leads the cluster.
    pub leading: bool,
    /// Where the leader listens, when another primary leads and it is known.
    pub leader: Option<String>,
    /// Every primary of the cluster (voters and learners), by node id.
    pub members: Vec<crate::net::PrimaryMember>,
    /// This primary's Raft node stopped (its file diverged, say): it serves no device.
    pub stopped: bool,
    /// This primary leads, but heard from no majority of its voters for a while
    /// ([`quorum_silence`]).
    pub cut_off: bool,
    /// Since when this primary has known no leader, itself included (an election, or it is
    /// cut off from its majority).
    pub leaderless_since: Option<std::time::Instant>,
    /// Without a leader for longer than an election takes ([`LEADERLESS_MAX`]).
    pub leaderless_long: bool,
}

/// How long a primary may know no leader before it sends its devices to others: longer
/// than an election takes.
pub(crate) const LEADERLESS_MAX: std::time::Duration = std::time::Duration::from_secs(3);

impl ClusterView {
    /// `self`, with `leaderless_since` carried over from `before` (or begun now).
    pub(crate) fn after(mut self, before: &ClusterView) -> ClusterView {
        self.leaderless_since = match (self.leading || self.leader.is_some(), before) {
            (true, _) => None,
            (
                false,
                ClusterView {
                    leaderless_since: Some(since),
                    ..
                },
            ) => Some(*since),
            (false, _) => Some(std::time::Instant::now()),
        };
        self.leaderless_long = self
            .leaderless_since
            .is_some_and(|since| since.elapsed() > LEADERLESS_MAX);
        self
    }

    /// Why this primary may not serve devices now: its Raft node stopped, it leads cut off
    /// from its majority, or it has known no leader for long. None: it may.
    pub(crate) fn refusal(&self) -> Option<String> {
        if self.stopped {
            return Some(
                "this primary's Raft node stopped: connect to another of its cluster's primaries"
                    .into(),
            );
        }
        if self.cut_off {
            return Some(
                "quorum lost: this primary leads but hears from no majority of its cluster: \
                 connect to another of its primaries"
                    .into(),
            );
        }
        if self.leaderless_long {
            return Some(format!(
                "this primary has known no leader of its cluster for over {} s (it is cut off \
                 from its majority, or that is down): connect to another of its primaries",
                LEADERLESS_MAX.as_secs()
            ));
        }
        None
    }
}

/// The cluster as `raft` sees it now.
pub(crate) fn view(raft: &Raft) -> ClusterView {
    // (Taken out of the borrow at once: openraft's core waits while it is held.)
    let m = raft.metrics().borrow().clone();
    let leading = leads_confirmed(&m);
    let config = m.membership_config.membership();
    let leader = m
        .current_leader
        .filter(|id| *id != m.id)
        .and_then(|id| config.get_node(&id))
        .map(|member| member.addr.clone());
    ClusterView {
        leading,
        leader,
        stopped: m.running_state.is_err(),
        cut_off: quorum_silence(&m).is_some(),
        leaderless_since: None,
        leaderless_long: false,
        members: m
            .membership_config
            .membership()
            .nodes()
            .map(|(_, member)| crate::net::PrimaryMember {
                addr: member.addr.clone(),
                public_key: member.public_key.clone(),
            })
            .collect(),
    }
}

/// Errors of the cluster's storage, as openraft takes them.
pub(crate) type StorageError = openraft::StorageError<RaftNodeId>;

#[cfg(test)]
mod tests {
    #[test]
    fn the_raft_timings_pass_openrafts_checks() {
        let config = super::raft_config();
        assert!(config.heartbeat_interval < config.election_timeout_min);
    }
}
