//! The node's counters and histograms, and their Prometheus text (`/metrics`).
//!
//! The hot paths only bump atomics (prometheus-client's counters and histograms are atomics
//! or a short lock per observation, once per batch, not per row); gauges that mirror the
//! node's state (log seq, sessions, Raft) are read at scrape time instead.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Why the primaries rejected a device transaction, as a fixed set (never the row).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RejectKind {
    /// First insert wins: the row exists already.
    Conflict,
    /// The row belongs to another user.
    NotOwned,
    /// A constraint or a trigger of the schema refused it.
    Constraint,
    /// The transaction itself is malformed or names unknown tables.
    Malformed,
    Other,
}

impl RejectKind {
    /// The kind of a rejection reason as `store::apply` words it.
    pub fn of(reason: &str) -> RejectKind {
        if reason.contains("conflicts with") {
            RejectKind::Conflict
        } else if reason.contains("not owned") || reason.contains("does not own") {
            RejectKind::NotOwned
        } else if reason.contains("failed") || reason.contains("constraint") {
            RejectKind::Constraint
        } else if reason.contains("does not exist")
            || reason.contains("values for")
            || reason.contains("twice")
            || reason.contains("header")
            || reason.contains("schema changes")
            || reason.contains("id never changes")
        {
            RejectKind::Malformed
        } else {
            RejectKind::Other
        }
    }
}

impl RejectKind {
    /// The label value, as README's table of metrics names it.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Conflict => "conflict",
            RejectKind::NotOwned => "not_owned",
            RejectKind::Constraint => "constraint",
            RejectKind::Malformed => "malformed",
            RejectKind::Other => "other",
        }
    }
}

// By hand: the derive would write the variants' Rust names ("NotOwned").
impl EncodeLabelValue for RejectKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

impl EncodeLabelValue for HandshakeOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let value = match self {
            HandshakeOutcome::Ok => "ok",
            HandshakeOutcome::Failed => "failed",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: RejectKind,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum HandshakeOutcome {
    Ok,
    Failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: HandshakeOutcome,
}

/// A rejected transaction, for the console's list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentRejection {
    pub at: f64,
    pub node_id: u32,
    pub txn_id: u64,
    pub reason: String,
}

/// How many rejections the console lists.
const RECENT_REJECTIONS: usize = 50;

/// The node's metrics. Cheap to update from any thread.
pub struct Metrics {
    pub connections: Counter,
    pub handshakes: Family<OutcomeLabel, Counter>,
    /// Of the handshakes that succeeded, those a session ticket stood in for.
    pub handshakes_resumed: Counter,
    pub txns_accepted: Counter,
    pub txns_rejected: Family<ReasonLabel, Counter>,
    /// Primaries: one batch of device transactions, decided and committed.
    pub commit_seconds: Histogram,
    /// Devices: one batch of the primaries' entries, applied.
    pub apply_seconds: Histogram,
    /// Primaries: initial downloads being served now.
    pub downloads_serving: AtomicU64,
    /// Primaries: device sessions reading log entries from the file (behind what memory holds).
    catch_ups: AtomicU64,
    recent_rejections: Mutex<VecDeque<RecentRejection>>,
    // Set at scrape time from the node's state.
    log_seq: Gauge,
    devices_connected: Gauge,
    auth_waiting: Gauge,
    downloads: Gauge,
    catch_up: Gauge,
    raft_term: Gauge,
    raft_last_log: Gauge,
    raft_applied: Gauge,
    raft_leader: Gauge,
    raft_quorum_lost: Gauge,
    file_bytes: Gauge,
    in_error: Gauge,
    registry: Registry,
}

/// The node's state mirrored by the gauges, read at each scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub log_seq: u64,
    pub devices_connected: usize,
    pub auth_waiting: usize,
    /// The database file and its WAL, in bytes.
    pub file_bytes: u64,
    /// The node reports a `sync_error`.
    pub in_error: bool,
    pub raft: Option<RaftFigures>,
}

#[derive(Debug)]
pub struct RaftFigures {
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub leader: bool,
    /// A leader cut off from its majority (`ClusterStatus::quorum_silence_ms`).
    pub quorum_lost: bool,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 0.1 ms to about 3 s.
    exponential_buckets(0.0001, 2.0, 16)
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            connections: Counter::default(),
            handshakes: Family::default(),
            handshakes_resumed: Counter::default(),
            txns_accepted: Counter::default(),
            txns_rejected: Family::default(),
            commit_seconds: Histogram::new(latency_buckets()),
            apply_seconds: Histogram::new(latency_buckets()),
            downloads_serving: AtomicU64::new(0),
            catch_ups: AtomicU64::new(0),
            recent_rejections: Mutex::new(VecDeque::new()),
            log_seq: Gauge::default(),
            devices_connected: Gauge::default(),
            auth_waiting: Gauge::default(),
            downloads: Gauge::default(),
            catch_up: Gauge::default(),
            raft_term: Gauge::default(),
            raft_last_log: Gauge::default(),
            raft_applied: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_quorum_lost: Gauge::default(),
            file_bytes: Gauge::default(),
            in_error: Gauge::default(),
            registry: Registry::default(),
        };
        m.register()
    }
}

impl Metrics {
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "octodb_connections",
            "TCP connections accepted by this primary",
            self.connections.clone(),
        );
        r.register(
            "octodb_handshakes",
            "Secure handshakes with peers, by outcome",
            self.handshakes.clone(),
        );
        r.register(
            "octodb_handshakes_resumed",
            "Successful handshakes resumed with a session ticket (a subset of outcome ok)",
            self.handshakes_resumed.clone(),
        );
        r.register(
            "octodb_transactions_accepted",
            "Device transactions this primary decided and accepted (the leader decides a \
             cluster's; a follower counts none: sum over the primaries)",
            self.txns_accepted.clone(),
        );
        r.register(
            "octodb_transactions_rejected",
            "Device transactions this primary decided and rejected, by kind of reason (the \
             leader decides a cluster's: sum over the primaries)",
            self.txns_rejected.clone(),
        );
        r.register(
            "octodb_commit_seconds",
            "Time to decide and commit one batch of device transactions (primaries)",
            self.commit_seconds.clone(),
        );
        r.register(
            "octodb_apply_seconds",
            "Time to apply one batch of the primaries' log entries (devices)",
            self.apply_seconds.clone(),
        );
        r.register(
            "octodb_log_seq",
            "Last committed (primaries) or applied (devices) log sequence",
            self.log_seq.clone(),
        );
        r.register(
            "octodb_devices_connected",
            "Nodes with a session open to this primary now",
            self.devices_connected.clone(),
        );
        r.register(
            "octodb_auth_requests_waiting",
            "Sign-up and login requests waiting for a decision, their devices connected or not",
            self.auth_waiting.clone(),
        );
        r.register(
            "octodb_downloads_in_progress",
            "Initial downloads this primary is serving now",
            self.downloads.clone(),
        );
        r.register(
            "octodb_catch_ups_in_progress",
            "Device sessions catching up: reading log entries older than memory holds",
            self.catch_up.clone(),
        );
        r.register(
            "octodb_raft_term",
            "Raft term of this primary",
            self.raft_term.clone(),
        );
        r.register(
            "octodb_raft_last_log_index",
            "Last Raft log index this primary holds",
            self.raft_last_log.clone(),
        );
        r.register(
            "octodb_raft_applied_index",
            "Last Raft log index this primary applied (committed)",
            self.raft_applied.clone(),
        );
        r.register(
            "octodb_raft_leader",
            "1 while this primary leads its cluster",
            self.raft_leader.clone(),
        );
        r.register(
            "octodb_raft_quorum_lost",
            "1 while this primary leads but has heard from no majority of its voters for over \
             1.5 s: it takes no writes and serves no device",
            self.raft_quorum_lost.clone(),
        );
        r.register(
            "octodb_file_bytes",
            "Bytes of this primary's database file and its WAL (a follower's holds its Raft \
             log's batches too, until compacted)",
            self.file_bytes.clone(),
        );
        r.register(
            "octodb_sync_error",
            "1 while this primary reports a sync_error (its Raft node stopped, it was removed \
             from its cluster, cut off from its majority, its disk full...): /api/state says why",
            self.in_error.clone(),
        );
        // Every label value from the start, at 0: a rate over a series that appears only at
        // its first event misses that event.
        for reason in [
            RejectKind::Conflict,
            RejectKind::NotOwned,
            RejectKind::Constraint,
            RejectKind::Malformed,
            RejectKind::Other,
        ] {
            drop(self.txns_rejected.get_or_create(&ReasonLabel { reason }));
        }
        for outcome in [HandshakeOutcome::Ok, HandshakeOutcome::Failed] {
            drop(self.handshakes.get_or_create(&OutcomeLabel { outcome }));
        }
        self
    }

    /// Primaries: a device transaction was rejected.
    pub fn rejected(&self, node_id: u32, txn_id: u64, reason: &str, at: f64) {
        self.txns_rejected
            .get_or_create(&ReasonLabel {
                reason: RejectKind::of(reason),
            })
            .inc();
        let mut recent = self
            .recent_rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_REJECTIONS {
            recent.pop_front();
        }
        recent.push_back(RecentRejection {
            at,
            node_id,
            txn_id,
            reason: reason.to_string(),
        });
    }

    pub fn recent_rejections(&self) -> Vec<RecentRejection> {
        self.recent_rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Primaries: an initial download is served until the guard drops.
    pub fn download_served(&self) -> DownloadServed<'_> {
        self.downloads_serving
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        DownloadServed(&self.downloads_serving)
    }

    /// Primaries: a device session catches up until the guard drops.
    pub fn catch_up(&self) -> DownloadServed<'_> {
        self.catch_ups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        DownloadServed(&self.catch_ups)
    }

    /// A handshake ended: failed (`None`), or succeeded, resumed with a ticket or not.
    pub fn handshake(&self, resumed: Option<bool>) {
        let outcome = match resumed {
            Some(resumed) => {
                if resumed {
                    self.handshakes_resumed.inc();
                }
                HandshakeOutcome::Ok
            }
            None => HandshakeOutcome::Failed,
        };
        self.handshakes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// The Prometheus text exposition, with the gauges set from `now`.
    pub fn encode(&self, now: &Snapshot) -> Result<String, std::fmt::Error> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.log_seq.set(n(now.log_seq));
        self.devices_connected.set(n(now.devices_connected as u64));
        self.auth_waiting.set(n(now.auth_waiting as u64));
        self.file_bytes.set(n(now.file_bytes));
        self.in_error.set(i64::from(now.in_error));
        let serving = self
            .downloads_serving
            .load(std::sync::atomic::Ordering::Relaxed);
        self.downloads.set(n(serving));
        self.catch_up
            .set(n(self.catch_ups.load(std::sync::atomic::Ordering::Relaxed)));
        if let Some(r) = &now.raft {
            self.raft_term.set(n(r.term));
            self.raft_last_log.set(n(r.last_log_index));
            self.raft_applied.set(n(r.applied_index));
            self.raft_leader.set(i64::from(r.leader));
            self.raft_quorum_lost.set(i64::from(r.quorum_lost));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// An initial download being served, or a catch-up, counted while it lives (see
/// [`Metrics::download_served`], [`Metrics::catch_up`]).
pub struct DownloadServed<'a>(&'a AtomicU64);

impl Drop for DownloadServed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_reasons_fall_into_fixed_kinds() {
        assert_eq!(
            RejectKind::of("insert of row 5 into `t` conflicts with a row the primaries already have (first insert wins): x"),
            RejectKind::Conflict
        );
        assert_eq!(
            RejectKind::of("insert of row 5 into `t`, a row not owned by the sending user 3"),
            RejectKind::NotOwned
        );
        assert_eq!(
            RejectKind::of("update of row 5 of `t`, which user 3 does not own"),
            RejectKind::NotOwned
        );
        assert_eq!(
            RejectKind::of("delete of row 5 of `t`, which user 3 does not own"),
            RejectKind::NotOwned
        );
        assert_eq!(
            RejectKind::of("table `x` does not exist or is not replicated to devices"),
            RejectKind::Malformed
        );
        assert_eq!(RejectKind::of("something new"), RejectKind::Other);
    }
}
