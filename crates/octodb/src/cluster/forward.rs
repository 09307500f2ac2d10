//! A backend app's transaction on a follower, decided by the leader.
//!
//! Every write enters the Raft log through the leader, in the order of the primaries' log. A
//! follower cannot write its app's transaction through (only the holder of the leader's write
//! lock proposes), so at COMMIT it rolls the transaction back and sends its effects, as its
//! log recorded them, over a member connection ([`Forwarder`]). The leader ([`Applier`])
//! checks that no row the transaction changed was changed by an entry after the follower's log
//! position when the transaction began (else the COMMIT fails with a conflict and the app
//! retries: no update is lost), applies the effects the way every primary's state machine
//! applies a decided transaction (its triggers' writes to replicated tables are in the
//! effects already; triggers keeping local tables run), writes them through like its own
//! app's transaction, and answers once a majority holds them. The follower's COMMIT returns
//! when its own state machine has applied them, so the connection reads its own write.

use super::network::{PeerClient, Reply, Request};
use super::state_machine::{apply_decided, guard_triggers, refresh_replicated, Replicated};
use super::types::{Decided, Member};
use super::write_through::{Batch, Proposed, Proposer, Response};
use super::RaftNodeId;
use crate::changes::Op;
use crate::error::{Error, Result};
use crate::log::{self, EntryBody, LogEntry};
use crate::store::apply::{HeldInserts, Tables};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The most log entries a leader reads to check a forwarded transaction for conflicts: a
/// follower further behind than this is told to retry once it has caught up.
const CONFLICT_SCAN_MAX: usize = 100_000;

/// A follower's app transaction, sent to the leader. Sent between primaries: never reorder
/// its fields (postcard encodes them by position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forwarded {
    /// The follower's log position when the transaction began: rows changed by entries after
    /// it conflict.
    pub base_seq: u64,
    /// Its effects, in order, as the follower's log recorded them (`EntryBody::Changes`).
    pub bodies: Vec<EntryBody>,
}

/// The leader's answer to a [`Forwarded`]. Never reorder its variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ForwardOutcome {
    /// Committed by a majority; its log entries end at `last_seq` on every primary.
    Committed { last_seq: u64 },
    /// A row it changed was changed by another transaction since it began: nothing applied.
    Conflict { reason: String },
    /// Not applied, for `reason` (the leader changed, a constraint failed on the leader...).
    Refused { reason: String },
    /// Written by the leader, but no majority confirmed it: it may be lost.
    Unconfirmed { reason: String },
    /// Not applied because the leader cannot take writes now (it is starting, stopping, no
    /// longer leads, or the cluster gave its entry up): the same transaction may be sent
    /// again. Protocol 12 (`version::FORWARD_UNAVAILABLE`); older followers are sent
    /// `Refused` instead.
    Unavailable { reason: String },
}

impl ForwardOutcome {
    /// As a follower speaking `protocol` reads it.
    pub(crate) fn for_protocol(self, protocol: u8) -> ForwardOutcome {
        match self {
            ForwardOutcome::Unavailable { reason }
                if protocol < crate::net::version::FORWARD_UNAVAILABLE =>
            {
                ForwardOutcome::Refused { reason }
            }
            other => other,
        }
    }
}

/// A decision on a node's request that a follower's process took (its callback, its
/// `PRAGMA authorize_*`), for the leader to record. Never reorder its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardedDecision {
    pub pubkey: String,
    pub decision: crate::auth::Decision,
    pub scope: DecisionScope,
}

/// Which keys a forwarded decision may name. Never reorder its variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionScope {
    /// A key some node presented (`PRAGMA authorize_*`).
    Presented,
    /// Any key, before its node ever connects (`PRAGMA preauthorize_*`).
    Any,
    /// A key whose request still waits (a callback's answer: the first decision stands).
    Pending,
}

/// What the leader tells a follower of a device that connected to it. Never reorder its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAdmitted {
    pub node_id: u32,
    pub user_id: i64,
    /// The device's last transaction the primaries decided.
    pub last_decided_txn: u64,
}

/// A device's transactions that a follower received, as the device sent them. Never reorder
/// its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardedTxns {
    pub node_id: u32,
    pub user_id: i64,
    pub txns: Vec<(u64, crate::changes::ChangeSet)>,
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the leader does for its members' requests (a running primary's node).
pub trait LeaderServices: Send + Sync {
    /// Decides a follower's app transaction from `peer`.
    fn transaction(&self, peer: crate::crypto::PublicKey, txn: Forwarded) -> Boxed<ForwardOutcome>;
    /// Records a decision a follower took; Err: why not.
    fn decision(
        &self,
        peer: crate::crypto::PublicKey,
        decision: ForwardedDecision,
    ) -> Boxed<std::result::Result<(), String>>;
    /// Whether the device of `pubkey`, connected to follower `peer`, is approved: its ids.
    fn admit_device(
        &self,
        peer: crate::crypto::PublicKey,
        pubkey: String,
    ) -> Boxed<std::result::Result<DeviceAdmitted, String>>;
    /// Decides a device's transactions a follower received; answers once they are written
    /// (`Some(txn)`: the device sent other work under `txn`, decided already: a copy).
    fn device_txns(
        &self,
        peer: crate::crypto::PublicKey,
        txns: ForwardedTxns,
    ) -> Boxed<std::result::Result<Option<u64>, String>>;
}

/// The leader's services, shared by its member connections.
pub type Services = Arc<dyn LeaderServices>;

/// Connections a follower keeps to its leader for its requests: each carries one request at a
/// time, so several app connections and device sessions wait for their own answers side by
/// side.
const FORWARD_CONNECTIONS: usize = 8;

/// A follower's connections to its leader for forwarded requests, opened on first use and
/// again when the leader changes or a connection fails.
pub(crate) struct Forwarder {
    network: super::PeerNetwork,
    clients: Vec<tokio::sync::Mutex<Option<PeerClient>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Forwarder {
    /// The members refusing this primary (see [`super::network::Refusals`]).
    pub(crate) fn refusals(&self) -> &super::network::Refusals {
        self.network.refusals()
    }

    pub(crate) fn new(network: super::PeerNetwork) -> Forwarder {
        Forwarder {
            network,
            clients: (0..FORWARD_CONNECTIONS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: Default::default(),
        }
    }

    /// Sends `request` to `leader` and waits at most `wait` for its reply. An error means the
    /// outcome is unknown (the request may have reached the leader); see [`Self::try_call`]
    /// for a caller that tells a request never sent apart.
    async fn call(
        &self,
        leader: RaftNodeId,
        member: Member,
        request: Request,
        wait: Duration,
    ) -> Result<Reply> {
        self.try_call(leader, member, request, wait, 0)
            .await
            .map_err(|failed| failed.error)
    }

    /// As [`Self::call`], saying whether a failed request may have reached the leader; a
    /// leader speaking an older protocol than `needs` is not sent it.
    async fn try_call(
        &self,
        leader: RaftNodeId,
        member: Member,
        request: Request,
        wait: Duration,
        needs: u8,
    ) -> std::result::Result<Reply, CallFailed> {
        // A free connection, else the next in turn.
        let free = self.clients.iter().find_map(|c| c.try_lock().ok());
        let mut slot = match free {
            Some(slot) => slot,
            None => {
                let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.clients[turn % self.clients.len()].lock().await
            }
        };
        let current = slot.as_ref().is_some_and(|c| c.is_for(leader, &member));
        if !current {
            *slot = Some(PeerClient::new(leader, member, self.network.clone()));
        }
        let Some(client) = slot.as_mut() else {
            return Err(CallFailed {
                error: Error::rule("no connection to the leader"),
                maybe_received: false,
            });
        };
        if needs > 0 && client.protocol().await < needs {
            return Err(CallFailed {
                error: Error::rule(format!(
                    "the leader does not speak protocol {needs} (an older build) or cannot be \
                     reached"
                )),
                maybe_received: false,
            });
        }
        match client.request(request, wait).await {
            Ok(reply) => Ok(reply),
            Err(failed) => {
                *slot = None;
                let error = failed.error;
                Err(CallFailed {
                    error: if failed.maybe_received {
                        Error::rule(format!("the leader did not answer ({error})"))
                    } else {
                        Error::rule(error.to_string())
                    },
                    maybe_received: failed.maybe_received,
                })
            }
        }
    }

    /// Sends an app's transaction to `leader`.
    pub(crate) async fn forward(
        &self,
        (leader, member): (RaftNodeId, Member),
        txn: Forwarded,
        wait: Duration,
    ) -> Result<ForwardOutcome> {
        match self
            .try_call(leader, member, Request::Forward(txn), wait, 0)
            .await
        {
            Ok(Reply::Forward(outcome)) => Ok(outcome),
            Ok(_) => Err(other_reply()),
            // Never sent: nothing of it can have been applied (a leader just lost, say).
            Err(failed) if !failed.maybe_received => Err(Error::Unavailable(format!(
                "this primary could not reach its cluster's leader ({})",
                failed.error
            ))),
            Err(failed) => Err(failed.error),
        }
    }

    /// Asks `leader` up to which Raft index the cluster has committed (confirmed by a
    /// majority as it answers).
    pub(crate) async fn read_index(
        &self,
        (leader, member): (RaftNodeId, Member),
        wait: Duration,
    ) -> Result<u64> {
        let needs = crate::net::version::READ_INDEX;
        match self
            .try_call(leader, member, Request::ReadIndex, wait, needs)
            .await
            .map_err(|failed| failed.error)?
        {
            Reply::ReadIndex(index) => index.map_err(|why| {
                Error::rule(format!("the cluster's leader gave no read index: {why}"))
            }),
            _ => Err(other_reply()),
        }
    }

    /// Sends a decision on a node to `leader`, which records it.
    pub(crate) async fn decision(
        &self,
        (leader, member): (RaftNodeId, Member),
        decision: ForwardedDecision,
        wait: Duration,
    ) -> Result<()> {
        match self
            .call(leader, member, Request::Decide(decision), wait)
            .await?
        {
            Reply::Decide(recorded) => recorded.map_err(|why| {
                Error::rule(format!("the cluster's leader did not record it: {why}"))
            }),
            _ => Err(other_reply()),
        }
    }

    /// Asks `leader` whether the device of `pubkey` is approved, and its ids.
    pub(crate) async fn admit_device(
        &self,
        (leader, member): (RaftNodeId, Member),
        pubkey: String,
        wait: Duration,
    ) -> Result<std::result::Result<DeviceAdmitted, String>> {
        match self
            .call(leader, member, Request::AdmitDevice(pubkey), wait)
            .await?
        {
            Reply::AdmitDevice(admitted) => Ok(admitted),
            _ => Err(other_reply()),
        }
    }

    /// Sends a device's transactions to `leader`; answers once they are written there.
    pub(crate) async fn device_txns(
        &self,
        (leader, member): (RaftNodeId, Member),
        txns: ForwardedTxns,
        wait: Duration,
    ) -> Result<std::result::Result<Option<u64>, String>> {
        match self
            .call(leader, member, Request::DeviceTxns(txns), wait)
            .await?
        {
            Reply::DeviceTxns(written) => Ok(written),
            _ => Err(other_reply()),
        }
    }
}

/// A forwarded request that failed, and whether the leader may have acted on it.
struct CallFailed {
    error: Error,
    maybe_received: bool,
}

fn other_reply() -> Error {
    Error::rule("the leader answered with a reply of another kind than the request")
}

/// The leader's side: its own connection to its file, with the state machine's guard on
/// triggers. Used from a blocking thread, one forwarded transaction at a time.
pub(crate) struct Applier {
    conn: rusqlite::Connection,
    tables: Tables,
    replicated: Replicated,
}

/// What the leader did with a forwarded transaction, before its commit by the cluster.
pub(crate) enum Decision {
    /// Committed here with its Raft entry; the cluster's answer is to come.
    Written {
        response: Response,
        entries: Vec<LogEntry>,
    },
    /// Nothing applied.
    NotApplied(ForwardOutcome),
}

impl Applier {
    pub(crate) fn open(
        path: &std::path::Path,
        file_key: Option<&crate::uri::NetworkKey>,
        node_id: RaftNodeId,
    ) -> Result<Applier> {
        let conn = crate::store::open_connection(path, file_key)?;
        crate::store::capture::register_primary_functions(&conn, node_id)?;
        let replicated = Replicated::default();
        guard_triggers(&conn, replicated.clone());
        Ok(Applier {
            conn,
            tables: Tables::default(),
            replicated,
        })
    }

    /// Checks and applies `txn` from member `origin_node` in one write transaction that also
    /// holds its Raft entry. Blocks (it waits for the file's lock and for openraft).
    pub(crate) fn decide(
        &mut self,
        proposer: &Proposer,
        origin_node: u32,
        txn: &Forwarded,
    ) -> Result<Decision> {
        let c = &self.conn;
        crate::store::exec(c, "BEGIN IMMEDIATE")?;
        let applied = (|| {
            // (Another connection may have changed the schema since the last one.)
            refresh_replicated(c, &self.replicated)?;
            if let Some(reason) = conflict(c, txn)? {
                return Ok(Err(ForwardOutcome::Conflict { reason }));
            }
            let mut entries = Vec::with_capacity(txn.bodies.len());
            let mut inserts = HeldInserts::new(c);
            for body in &txn.bodies {
                let d = Decided {
                    origin_node,
                    origin_txn: 0,
                    body: body.clone(),
                };
                let seq = match apply_decided(
                    c,
                    &mut self.tables,
                    &mut inserts,
                    &self.replicated,
                    &d,
                    None,
                ) {
                    Ok(seq) => seq,
                    // (A constraint of the leader's rows, a schema statement that fails here.)
                    Err(e) => {
                        return Ok(Err(ForwardOutcome::Refused {
                            reason: format!("the leader could not apply it: {e}"),
                        }))
                    }
                };
                entries.push(LogEntry {
                    seq,
                    origin_node,
                    origin_txn: 0,
                    body: body.clone(),
                    origin_digest: None,
                });
            }
            Ok(Ok(entries))
        })();
        let entries = match applied {
            Ok(Ok(entries)) if !entries.is_empty() => entries,
            Ok(Ok(_)) => {
                crate::store::exec(c, "ROLLBACK")?;
                return Ok(Decision::NotApplied(ForwardOutcome::Refused {
                    reason: "the transaction changed nothing".into(),
                }));
            }
            Ok(Err(outcome)) => {
                crate::store::exec(c, "ROLLBACK")?;
                return Ok(Decision::NotApplied(outcome));
            }
            Err(e) => {
                let _ = crate::store::exec(c, "ROLLBACK");
                return Err(e);
            }
        };
        let (first, last) = (entries[0].seq, entries[entries.len() - 1].seq);
        let batch = Batch::Txns { seqs: first..=last };
        match proposer.propose_in_txn(c, batch) {
            Proposed::InTxn(t) => match crate::store::exec(c, "COMMIT") {
                Ok(()) => Ok(Decision::Written {
                    response: t.committed(),
                    entries,
                }),
                Err(e) => {
                    let _ = crate::store::exec(c, "ROLLBACK");
                    t.not_committed().after_rollback();
                    Err(e.into())
                }
            },
            Proposed::GaveUp(g) => {
                let _ = crate::store::exec(c, "ROLLBACK");
                let reason = format!("the cluster did not take it ({})", g.why());
                g.after_rollback();
                Ok(Decision::NotApplied(ForwardOutcome::Unavailable { reason }))
            }
        }
    }
}

/// Why `txn` conflicts with what the leader's log holds after the follower's position, or
/// None. Inside the leader's write transaction.
fn conflict(c: &rusqlite::Connection, txn: &Forwarded) -> Result<Option<String>> {
    let mut touched = HashSet::new();
    for body in &txn.bodies {
        let EntryBody::Changes(cs) = body else {
            return Err(Error::rule(
                "a forwarded transaction holds something other than changes",
            ));
        };
        for op in &cs.ops {
            if matches!(op, Op::Insert { .. } | Op::Update { .. }) {
                return Err(Error::rule(
                    "a forwarded transaction holds a device's unchecked change",
                ));
            }
            if let Some((table, rowid)) = cs.row_of(op) {
                touched.insert((table.to_string(), rowid));
            }
        }
    }
    if txn.base_seq + 1 < log::compaction::start(c)? {
        return Ok(Some(format!(
            "the leader's log no longer reaches back to position {} where it began (compacted)",
            txn.base_seq
        )));
    }
    let newer = log::read_after(c, txn.base_seq, CONFLICT_SCAN_MAX + 1)?;
    if newer.len() > CONFLICT_SCAN_MAX {
        return Ok(Some(format!(
            "this primary is more than {CONFLICT_SCAN_MAX} log entries behind its leader"
        )));
    }
    for entry in &newer {
        let EntryBody::Changes(cs) = &entry.body else {
            continue;
        };
        for op in &cs.ops {
            if let Op::Ddl { .. } = op {
                return Ok(Some(format!(
                    "the schema changed since it began (log position {}, after {})",
                    entry.seq, txn.base_seq
                )));
            }
            if let Some((table, rowid)) = cs.row_of(op) {
                if touched.contains(&(table.to_string(), rowid)) {
                    return Ok(Some(format!(
                        "row {rowid} of `{table}` was changed by another transaction since it \
                         began (log position {})",
                        entry.seq
                    )));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::ForwardOutcome;

    /// A follower of protocol 11 reads a transaction its leader could not take now as refused
    /// (it knows no other variant); one of 12 as unavailable, which its app may send again.
    #[test]
    fn an_unavailable_outcome_goes_to_older_followers_as_refused() {
        let outcome = || ForwardOutcome::Unavailable {
            reason: "the leader is shutting down".into(),
        };
        assert_eq!(
            outcome().for_protocol(11),
            ForwardOutcome::Refused {
                reason: "the leader is shutting down".into()
            }
        );
        assert_eq!(outcome().for_protocol(12), outcome());
    }
}
