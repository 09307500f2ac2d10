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

mod log_store;
pub mod network;
mod snapshot;
mod state_machine;
mod types;

pub use log_store::LogStore;
pub use network::{serve_connection, serve_members, PeerNetwork};
pub use state_machine::StateMachine;
pub use types::{Applied, Decided, Member, Proposal, TypeConfig};

use std::sync::Arc;

/// A primary's Raft node id: its octodb node id.
pub type RaftNodeId = u64;
/// A running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Raft's timings for primaries on one network: heartbeats every 150 ms, an election after
/// 0.6-1.2 s without one (a new leader well within the 3 s that devices' fail-over allows),
/// snapshots sent with a generous per-chunk deadline.
pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "octodb".into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 256,
        ..Default::default()
    };
    // These constants pass openraft's checks (the test below); no input reaches them.
    Arc::new(
        config
            .validate()
            .expect("the cluster's Raft timings are consistent"),
    )
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
    let raft = Raft::new(
        id,
        raft_config(),
        PeerNetwork::new(keys.clone(), handshake.clone()),
        LogStore::open(path, file_key)?,
        StateMachine::open(path, file_key)?,
    )
    .await
    .map_err(|e| crate::Error::rule(format!("starting the Raft node: {e}")))?;
    let server = tokio::spawn(serve_members(listener, keys, handshake, raft.clone()));
    Ok((raft, member, server))
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
