//! `PRAGMA sync_status` and `PRAGMA nodes`: what a node knows of itself and of its peers.

use super::Shared;
use crate::error::Result;
use crate::store::{meta_get, meta_i64};
use crate::uri::Role;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Live state kept in memory by the network tasks.
#[derive(Debug, Default)]
pub struct Live {
    pub connected_to: Option<String>,
    /// Primaries: node id → address and number of each of its sessions, the newest last
    /// (the one shown). A device's old path that died silently, or a copy of its file, may
    /// hold a second session under its id for a while; the end of one leaves the other's.
    pub sessions: HashMap<u32, Vec<(String, u64)>>,
    pub download: Option<(u64, u64)>,
    /// Devices not yet authorized: the sign-up / login request made by the app, not yet sent.
    pub auth_request: Option<crate::net::AuthAsk>,
    /// Devices not yet authorized: "required", "pending" or "rejected".
    pub auth_state: Option<String>,
    pub auth_error: Option<String>,
    /// Devices: why the last session with the primaries failed; None while one is up.
    pub sync_error: Option<String>,
    /// Devices: the primary said, in this session, that this device holds what it held.
    pub caught_up: bool,
    /// Devices: whether the process ran all along during this session (`awake`): one
    /// suspended for longer than a connection may stay silent is not `caught_up`.
    pub awake: Option<std::sync::Arc<super::awake::Awake>>,
    /// Devices: this file is a copy of another device's in use, found at this transaction
    /// id; it does not sync until `PRAGMA new_identity` and a reopen.
    pub copied_file: Option<u64>,
}

/// Meta key: how many of this device's transactions the primaries rejected, ever.
pub(crate) const REJECTED_TOTAL_KEY: &str = "rejected_total";

/// The last transaction the primaries rejected, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub txn_id: u64,
    pub reason: String,
    pub at: f64,
}

/// The node's sync state; `PRAGMA sync_status` returns it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Authorized and initial download done: the app may use the database.
    pub db_is_ready: bool,
    pub node_id: u32,
    pub node_type: String,
    pub user_id: Option<i64>,
    pub public_key: String,
    pub connected: bool,
    /// Devices: connected, and the primary said that this device holds everything it held
    /// (protocol 10; with an older primary, the connection alone). Primaries: always true.
    #[serde(default)]
    pub caught_up: bool,
    /// Devices: ready, caught up and the outbox empty (every write of this device decided):
    /// it holds what the primaries hold, and they hold what it wrote. Primaries and local
    /// databases: always true.
    #[serde(default)]
    pub synced: bool,
    /// Devices: the primary connected to. Primaries: the connected nodes.
    pub peers: Vec<String>,
    /// Primaries: the addresses listened on.
    pub bind: Vec<String>,
    pub last_seq: u64,
    pub outbox_len: u64,
    pub last_rejected: Option<Rejection>,
    /// Devices: how many of this device's transactions the primaries rejected, ever
    /// (`last_rejected` is the newest only): compared before and after a wait, it says whether
    /// any write was taken back meanwhile.
    #[serde(default)]
    pub rejected_total: u64,
    /// Unix time (seconds) of the last batch received from the primaries.
    pub last_sync: Option<f64>,
    /// Rows downloaded and expected, while an initial download runs (expected: 0 until the
    /// primary has counted them, beside sending the first rows).
    pub download: Option<(u64, u64)>,
    /// Devices not yet authorized: "required" (sign up or log in), "pending" (the backend
    /// decides) or "rejected"; null once authorized, unless the backend took the approval
    /// back ("rejected") or a primary restored from an older copy asks for a login again
    /// ("required").
    pub auth_state: Option<String>,
    /// Why the last request was rejected.
    pub auth_error: Option<String>,
    /// Devices: why the last session with the primaries failed (it cannot reach them, or it
    /// cannot apply what they send); null while a session is up.
    pub sync_error: Option<String>,
    /// Primaries: the primaries' Raft cluster as this primary sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Devices: the addresses of the cluster's primaries, as the primaries told: where the
    /// device fails over to, beside its `connect` list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primaries: Vec<String>,
    /// Primaries: the first position the log still holds (1 until it is compacted to its
    /// newest `log_keep=` entries); a device behind it downloads again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_start: Option<u64>,
}

/// A primary's view of its cluster (openraft's metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// "leader", "follower", "candidate" or "learner"; "leader_unconfirmed" for a primary
    /// elected (or restored as leader at its restart) that no majority of voters has
    /// answered yet: it takes no writes until one does; "stopped" for one whose Raft node
    /// stopped (its `sync_error` says why: open the database again).
    pub role: String,
    pub term: u64,
    /// The leader's node id, when one is known (not this primary's own while its
    /// leadership is unconfirmed).
    pub leader: Option<u64>,
    /// The last Raft log index this primary holds, and the last it applied.
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<ClusterMember>,
    /// A leader that heard from no majority of its voters for over 1.5 s: for how many
    /// milliseconds. It takes no writes and serves no device meanwhile ("quorum lost").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_silence_ms: Option<u64>,
    /// A change of the voters is under way as this primary sees it: the old and the new voters
    /// both decide (Raft's joint configuration), or the new membership is not committed here
    /// yet. Losing a primary of a two-voter step now stalls the cluster, as Raft must: wait
    /// for this to clear (see [`ClusterStatus::settled_voters`]) before taking one away.
    #[serde(default)]
    pub membership_changing: bool,
}

/// The error of a wait for `synced` that ran out after `waited`, saying why from `status`
/// (the status read then, if it could be).
pub fn not_synced_within(status: Option<&SyncStatus>, waited: std::time::Duration) -> String {
    let why = status
        .and_then(SyncStatus::not_synced_because)
        .unwrap_or_else(|| "it was in sync only after the deadline".into());
    format!("not in sync with the primaries within {waited:?}: {why}")
}

/// The one sentence for a wait until ready (authorized, download done) that ran out: why the
/// node was not ready, from its last `status`.
pub fn not_ready_within(status: Option<&SyncStatus>, waited: std::time::Duration) -> String {
    let why = status
        .filter(|s| !s.db_is_ready)
        .and_then(SyncStatus::not_synced_because)
        .unwrap_or_else(|| "it was ready only after the deadline".into());
    format!("not ready within {waited:?}: {why}")
}

impl SyncStatus {
    /// Why waiting for this device cannot help: the backend refused its sign-up, login or
    /// key, and only a new request (or the backend's change of mind) can change that.
    pub fn refused(&self) -> Option<String> {
        // A copied file stops syncing until the app gives it a new identity.
        if let Some(copied) = self
            .sync_error
            .as_deref()
            .filter(|e| e.starts_with(crate::error::COPIED_FILE_BEGINS))
        {
            return Some(copied.to_string());
        }
        (self.auth_state.as_deref() == Some("rejected")).then(|| {
            let detail = self
                .auth_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            // A device approved once and revoked stays out whatever it asks (a sign-up or
            // login is refused as "already authorized"): only an operator lets it back.
            if self.node_id != 0 {
                return format!(
                    "the backend refused this device{detail}; it comes back once an operator \
                     approves its key again, by itself within seconds; then wait again"
                );
            }
            format!(
                "the backend refused this device{detail}; where the network asks for sign-ups, \
                 sign up or log in again (PRAGMA user_signup or user_login), else an operator \
                 approves its key; then wait again"
            )
        })
    }

    /// Why a device is not `synced`, in words for its user; None when it is.
    pub fn not_synced_because(&self) -> Option<String> {
        if self.synced {
            return None;
        }
        let why = if let Some(state) = &self.auth_state {
            let detail = self
                .auth_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            match state.as_str() {
                "required" => "the primaries need it to sign up or log in first (PRAGMA \
                               user_signup or user_login; in the shell, before .sync)"
                    .to_string(),
                // (What keeps it from them, when something does.)
                "requested" => match (&self.sync_error, self.connected) {
                    (Some(e), _) => {
                        format!("its sign-up or login has not reached the primaries yet: {e}")
                    }
                    (None, false) => "its sign-up or login has not reached the primaries yet: \
                                      it is not connected to a primary"
                        .into(),
                    (None, true) => "its sign-up or login has not reached the primaries yet".into(),
                },
                "pending" => "its sign-up or login waits for the backend's decision".into(),
                "rejected" => format!("the backend refused it{detail}"),
                other => format!("its authorization is {other}{detail}"),
            }
        } else if let Some(e) = &self.sync_error {
            self.with_outbox(e.clone())
        } else if !self.connected {
            self.with_outbox("it is not connected to a primary yet".to_string())
        } else if !self.db_is_ready {
            match self.download {
                Some((rows, 0)) => format!("its initial download is at {rows} rows"),
                Some((rows, total)) => format!("its initial download is at {rows} of {total} rows"),
                None => "its initial download has not begun".to_string(),
            }
        } else if !self.caught_up {
            format!(
                "it is still catching up with {} (at log position {})",
                self.peers.join(", "),
                self.last_seq
            )
        } else {
            let (count, verb) = match self.outbox_len {
                1 => ("1 of its transactions".to_string(), "is"),
                n => (format!("{n} of its transactions"), "are"),
            };
            format!(
                "{count} {verb} not decided by the primaries yet (kept in its outbox, and sent \
                 again at its next connection)"
            )
        };
        Some(why)
    }
}

impl SyncStatus {
    /// `why` a device is not in sync, and the writes of its own that wait meanwhile (an app
    /// offline wants to know what has not left).
    fn with_outbox(&self, why: String) -> String {
        match self.outbox_len {
            0 => why,
            1 => format!("{why}; 1 transaction of its own waits in its outbox"),
            n => format!("{why}; {n} transactions of its own wait in its outbox"),
        }
    }
}

impl ClusterStatus {
    /// How many primaries vote, once no change of the voters is under way here; None while
    /// one is.
    pub fn settled_voters(&self) -> Option<usize> {
        match self.membership_changing {
            true => None,
            false => Some(self.members.iter().filter(|m| m.voter).count()),
        }
    }
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub node_id: u64,
    pub addr: String,
    pub public_key: String,
    /// A voter (else a learner).
    pub voter: bool,
    /// On the leader: how many entries it has that this member does not hold yet.
    pub lag: Option<u64>,
}

/// The node's `sync_error`, from what its sessions noted (`live`) and its cluster's state.
/// A Raft node stopped by itself comes first: nothing else is fixed until the database is
/// opened again (a failed write said the disk might be full, the cluster walkthrough: the
/// real reason was only in the log). A primary of a cluster also says why it cannot take
/// writes now (cut off from its majority, no leader for long, removed from its cluster).
pub(crate) fn sync_error_of(shared: &Shared, live: Option<String>) -> Option<String> {
    raft_stopped_because(shared)
        .or(live)
        .or_else(|| shared.cluster.get().and_then(|p| p.refused()))
        .or_else(|| {
            shared.cluster.get()?;
            shared.cluster_view.borrow().refusal()
        })
}

/// Why this primary's Raft node stopped by itself, if it did.
fn raft_stopped_because(shared: &Shared) -> Option<String> {
    let raft = shared.cluster.get()?.raft();
    let fatal = raft.metrics().borrow().running_state.clone().err()?;
    super::cluster_member::stopped_because(&fatal)
}

/// The cluster as `raft`'s metrics show it now.
pub(crate) fn cluster_status(raft: &crate::cluster::Raft) -> ClusterStatus {
    // (Taken out of the borrow at once: openraft's core waits while it is held.)
    let m = raft.metrics().borrow().clone();
    // A leader no majority has answered yet (one restored as leader at its restart, or just
    // elected) takes no writes: saying "leader" would mislead an app that gates its
    // leader-only work on the role, for as long as the others are out of reach.
    let confirmed = crate::cluster::leads_confirmed(&m);
    let role = match m.state {
        // (Stopped by itself: it keeps the last state it had, a learner's often.)
        _ if m.running_state.is_err() => "stopped",
        openraft::ServerState::Leader if confirmed => "leader",
        openraft::ServerState::Leader => "leader_unconfirmed",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        _ => "learner",
    };
    let config = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = config.voter_ids().collect();
    let membership_changing =
        config.get_joint_config().len() > 1 || m.membership_config.log_id() > &m.last_applied;
    let members = config
        .nodes()
        .map(|(id, member)| {
            let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned());
            let lag = matched.map(|log| {
                let held = log.map_or(0, |l| l.index);
                m.last_log_index.unwrap_or(0).saturating_sub(held)
            });
            ClusterMember {
                node_id: *id,
                addr: member.addr.clone(),
                public_key: member.public_key.clone(),
                voter: voters.contains(id),
                lag,
            }
        })
        .collect();
    ClusterStatus {
        role: role.into(),
        term: m.current_term,
        leader: m.current_leader.filter(|l| *l != m.id || confirmed),
        last_log_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        quorum_silence_ms: crate::cluster::quorum_silence(&m),
        membership_changing,
        members,
    }
}

pub fn sync_status(shared: &Shared) -> Result<SyncStatus> {
    let role = shared.cfg.role;
    let (live_peer, sessions, download, auth_state, auth_error, sync_error, caught_up) = {
        let live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut s: Vec<String> = live
            .sessions
            .values()
            .filter_map(|all| all.last().map(|(a, _)| a.clone()))
            .collect();
        s.sort();
        let requested = live.auth_request.is_some().then(|| "requested".to_string());
        (
            live.connected_to.clone(),
            s,
            live.download,
            live.auth_state.clone().or(requested),
            live.auth_error.clone(),
            live.sync_error.clone(),
            live.caught_up && !live.awake.as_ref().is_some_and(|a| a.was_suspended()),
        )
    };
    let (ready, last_seq, outbox_len, (last_rejected, rejected_total), last_sync, log_start) =
        shared.read_blocking(|c| {
            let ready = role != Some(Role::Secondary) || meta_i64(c, "ready")? == 1;
            let primary = role == Some(Role::Primary);
            let last_seq = match primary {
                true => crate::log::last_seq(c)?,
                // Devices learn of positions past entries they may not see without a write.
                false => (meta_i64(c, "last_seq")? as u64).max(*shared.feed.borrow()),
            };
            let rej: Option<String> = meta_get(c, "last_rejected")?;
            let rej = rej.and_then(|j| serde_json::from_str(&j).ok());
            let rejected_total = meta_i64(c, REJECTED_TOTAL_KEY)?.max(0) as u64;
            let last_sync: Option<f64> = meta_get(c, "last_sync")?;
            let log_start = match primary {
                true => Some(crate::log::compaction::start(c)?),
                false => None,
            };
            let outbox_len = crate::log::outbox::len(c)?;
            Ok((
                ready,
                last_seq,
                outbox_len,
                (rej, rejected_total),
                last_sync,
                log_start,
            ))
        })?;
    let id = &shared.identity;
    let (connected, peers) = match role {
        Some(Role::Primary) => (!sessions.is_empty(), sessions),
        _ => (live_peer.is_some(), live_peer.into_iter().collect()),
    };
    // An approved device shows a state when the backend took its approval back, or when a
    // primary restored from an older copy asks it to log in again ("required").
    let revoked = matches!(auth_state.as_deref(), Some("rejected" | "required"));
    let db_is_ready = ready && (role != Some(Role::Secondary) || id.node_id() != 0);
    let caught_up = match role {
        Some(Role::Secondary) => connected && caught_up,
        _ => true,
    };
    Ok(SyncStatus {
        db_is_ready,
        node_id: id.node_id(),
        node_type: role.map_or("local", |r| r.as_str()).to_string(),
        user_id: (id.user_id() != 0).then_some(id.user_id()),
        public_key: shared.keys.public_key().to_hex(),
        connected,
        caught_up,
        synced: caught_up && db_is_ready && outbox_len == 0,
        peers,
        bind: shared
            .bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| format!("tcp://{a}"))
            .collect(),
        last_seq,
        outbox_len,
        last_rejected,
        rejected_total,
        last_sync,
        // The download's end commits `ready` before the network task clears its progress.
        download: download.filter(|_| !db_is_ready),
        auth_error: auth_error.filter(|_| id.node_id() == 0 || revoked),
        auth_state: auth_state.filter(|_| id.node_id() == 0 || revoked),
        sync_error: sync_error_of(shared, sync_error),
        cluster: shared.cluster.get().map(|p| cluster_status(p.raft())),
        primaries: shared
            .known_primaries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|m| m.addr.clone())
            .collect(),
        log_start,
    })
}

/// One row of `PRAGMA nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub public_key: String,
    pub node_id: u32,
    pub node_type: String,
    pub user_id: Option<i64>,
    pub address: Option<String>,
    pub connected: bool,
    pub auth_state: String,
    pub last_seen: Option<f64>,
    /// A primary of this node's cluster: `leader`, `follower` or `learner`, as this node's
    /// Raft sees it; `not_member` for a primary the cluster no longer has (None for other
    /// nodes).
    pub cluster_role: Option<String>,
    /// A primary of this node's cluster, seen from its leader: how many Raft entries the
    /// leader has that it does not hold yet (None elsewhere, or not known here).
    pub raft_lag: Option<u64>,
}

/// Each member of this primary's cluster: its role and lag (`NodeRecord`).
fn member_roles(shared: &Shared) -> HashMap<u32, (String, Option<u64>)> {
    let Some(proposer) = shared.cluster.get() else {
        return HashMap::new();
    };
    let status = cluster_status(proposer.raft());
    status
        .members
        .iter()
        .map(|m| {
            let role = match (Some(m.node_id) == status.leader, m.voter) {
                (true, _) => "leader",
                (false, true) => "follower",
                (false, false) => "learner",
            };
            (m.node_id as u32, (role.to_string(), m.lag))
        })
        .collect()
}

pub fn nodes(shared: &Shared) -> Result<Vec<NodeRecord>> {
    let connected: HashMap<u32, String> = shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sessions
        .iter()
        .filter_map(|(id, all)| all.last().map(|(addr, _)| (*id, addr.clone())))
        .collect();
    let roles = member_roles(shared);
    let now = super::writer::unix_now();
    shared.read_blocking(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT pubkey, node_id, node_type, user_id, address, auth_state, last_seen
             FROM _octo_nodes WHERE auth_state <> ?1 ORDER BY node_id",
        )?;
        // A restore's reservation of ids (`restored_ids`) is no node.
        let rows = stmt.query_map([super::restored_ids::RESERVED_STATE], |r| {
            // 0 for a key never approved: node ids go to approved nodes only.
            let node_id = super::members::node_id_of(r.get(1)?);
            let node_type: String = r.get(2)?;
            let (cluster_role, raft_lag) = match roles.get(&node_id) {
                Some((role, lag)) => (Some(role.clone()), *lag),
                // A primary this cluster once had and has no more (removed, or of a cluster
                // lost and restored from a copy): an operator must not take it for a member.
                None if node_type == "primary" && !roles.is_empty() => {
                    (Some("not_member".to_string()), None)
                }
                None => (None, None),
            };
            Ok(NodeRecord {
                cluster_role,
                raft_lag,
                public_key: r.get(0)?,
                node_id,
                node_type,
                user_id: r.get(3)?,
                address: connected.get(&node_id).cloned().or(r.get(4)?),
                connected: connected.contains_key(&node_id),
                auth_state: r.get(5)?,
                // A connected node is being seen now; the file keeps the end of its last
                // session.
                last_seen: match connected.contains_key(&node_id) {
                    true => Some(now),
                    false => r.get(6)?,
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
}

#[cfg(test)]
mod tests {
    /// A revoked device is not told to sign up or log in again: it is refused as "already
    /// authorized" (the long-offline walkthrough followed that advice, and failed).
    #[test]
    fn a_revoked_device_is_told_an_operator_lets_it_back() {
        let mut s = crate::api::local::status();
        s.node_type = "secondary".into();
        s.auth_state = Some("rejected".into());
        s.auth_error = Some(crate::node::admission::REVOKED.into());
        let never_approved = s.refused().unwrap();
        assert!(
            never_approved.contains("PRAGMA user_signup"),
            "{never_approved}"
        );
        s.node_id = 3;
        let revoked = s.refused().unwrap();
        assert!(
            revoked.contains("operator approves its key again"),
            "{revoked}"
        );
        assert!(!revoked.contains("user_signup"), "{revoked}");
    }

    /// A wait that runs out while the device is offline says what of its own has not left
    /// (the Rust walkthrough's timeout named only the refused connection).
    #[test]
    fn an_offline_devices_timeout_names_its_waiting_writes() {
        let mut s = crate::api::local::status();
        s.node_type = "secondary".into();
        s.synced = false;
        s.outbox_len = 2;
        s.sync_error = Some("tcp://127.0.0.1:9: Connection refused".into());
        let why = s.not_synced_because().unwrap();
        assert!(
            why.ends_with("; 2 transactions of its own wait in its outbox"),
            "{why}"
        );
        s.sync_error = None;
        s.outbox_len = 1;
        let why = s.not_synced_because().unwrap();
        assert_eq!(
            why,
            "it is not connected to a primary yet; 1 transaction of its own waits in its outbox"
        );
    }
}
