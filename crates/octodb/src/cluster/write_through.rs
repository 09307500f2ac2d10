//! The leader's own transactions carry their Raft entry: "write-through".
//!
//! A primary decides a batch (devices' transactions, checked and applied) in a write
//! transaction. Rolling it back, proposing it, and writing it again through the state machine
//! would do every write twice. Instead the deciding transaction proposes the batch and waits,
//! still open, for openraft to hand it the entry to append: it writes that entry into the Raft
//! log *in the same SQLite transaction* as the effects, commits once (one fsync), and only then
//! tells openraft the entry is durable. The stored entry is compact
//! ([`Proposal::InLog`]: the `_octo_log` positions that hold the batch), and the state machine
//! skips it when it is committed: its effects are already in the file.
//!
//! A device's batch is proposed as soon as its transaction begins (`Proposer::propose_early`),
//! so that openraft places its entry in the log while the writer decides the batch. When this
//! primary is its cluster's only voter, the commit decides the batch by itself, and its answer
//! comes at once rather than through openraft's core and state machine (`InTxn::committed`).
//!
//! Hand-over: openraft's core appends one batch at a time and waits until it is flushed
//! (openraft 0.9's `append_to_log`). While a transaction waits for its entry, the log store
//! gives every append to it ([`Handoff::offer`]), in order, so nothing is written out of
//! order and no append waits for the SQLite write lock the transaction holds. If its entry
//! does not come (the core waits for that lock elsewhere, to save a vote; this primary is not
//! the leader), or the commit fails (a full disk), the transaction gives up: it rolls back,
//! and its batch is voided: whenever its entry is appended it is written empty (each batch
//! carries an id for this), and the appends it took are written by the log store as usual
//! ([`GaveUp::after_rollback`]). A batch given up was not decided: the devices send those
//! transactions again, an app's COMMIT fails.
//!
//! Only the leader writes through, and only entries it proposes itself. An entry written
//! through is in the file before a majority holds it; a leader that crashes then may come back
//! with effects the cluster did not keep. Raft would truncate that entry: the log store refuses
//! (`LogStore::truncate`) and says the primary must rejoin as a new member.

use super::log_store::{LogStore, LogStoreError};
use super::types::{Applied, Proposal, TypeConfig};
use super::Raft;
use crate::error::{Error, Result};
use openraft::storage::LogFlushed;
use openraft::{Entry, EntryPayload, LogId};
use rusqlite::Connection;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a deciding transaction waits for its entry before it gives up (see the module's
/// notes): far longer than an append takes even on a machine short of CPU (a give-up fails the
/// batch), short enough that a core waiting for the write lock, to save a vote in an
/// election, is not held up for long.
const ENTRY_WAIT_MAX: Duration = Duration::from_secs(10);

/// Entries openraft asks to append, and the callback that says they are durable.
pub(crate) struct PendingAppend {
    pub entries: Vec<Entry<TypeConfig>>,
    pub flushed: LogFlushed<TypeConfig>,
}

/// Appends on their way from the log store to the transaction that waits for them.
#[derive(Default)]
pub struct Handoff {
    state: Mutex<HandoffState>,
    changed: Condvar,
}

#[derive(Default)]
struct HandoffState {
    waiting: bool,
    queue: Vec<PendingAppend>,
    /// The waiting transaction's proposal failed before its entry came.
    proposal_failed: bool,
    /// Batches given up before openraft appended them: appended empty.
    voided: std::collections::HashSet<u64>,
    /// A purge of the Raft log that could not take the file's lock (a transaction held it,
    /// waiting for openraft, which waited for the purge): done by the next transaction that
    /// writes Raft entries (`log_store::purge`).
    purge: Option<openraft::LogId<super::RaftNodeId>>,
    /// The newest membership entry appended since this process started (every append comes
    /// through [`Handoff::offer`]): openraft's metrics, which lag behind appends in a burst,
    /// hold the log's current membership when theirs is at least as new.
    newest_membership: Option<openraft::LogId<super::RaftNodeId>>,
    /// The disk's latest refusal of a Raft log write (full, failing), while it lasts: a
    /// transaction given up meanwhile says so, not only that its entry did not come.
    disk_refusal: Option<String>,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, HandoffState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log store's write was refused by the disk (`Some`), or went through (`None`).
    pub(crate) fn note_disk(&self, refusal: Option<String>) {
        self.lock().disk_refusal = refusal;
    }

    /// From the log store: a waiting transaction takes `append` (None), else it comes back.
    pub(crate) fn offer(&self, mut append: PendingAppend) -> Option<PendingAppend> {
        let mut state = self.lock();
        for entry in &append.entries {
            if matches!(entry.payload, EntryPayload::Membership(_)) {
                state.newest_membership = state.newest_membership.max(Some(entry.log_id));
            }
        }
        if !state.voided.is_empty() {
            for entry in &mut append.entries {
                if let EntryPayload::Normal(p) = &mut entry.payload {
                    if let Some(id) = batch_id(p).filter(|id| state.voided.contains(id)) {
                        void(p, id);
                        state.voided.remove(&id);
                    }
                }
            }
        }
        if !state.waiting {
            return Some(append);
        }
        state.queue.push(append);
        self.changed.notify_all();
        None
    }

    /// From the log store: purge up to `upto` with the next entries written.
    pub(crate) fn defer_purge(&self, upto: openraft::LogId<super::RaftNodeId>) {
        let mut state = self.lock();
        state.purge = state.purge.max(Some(upto));
    }

    /// The purge deferred, if any, to be done in the caller's transaction.
    pub(crate) fn take_purge(&self) -> Option<openraft::LogId<super::RaftNodeId>> {
        self.lock().purge.take()
    }

    fn start_waiting(&self) {
        let mut state = self.lock();
        state.waiting = true;
        state.proposal_failed = false;
    }

    /// The appends that came, waiting for some until `deadline` or a failed proposal.
    fn take(&self, deadline: Instant) -> Vec<PendingAppend> {
        let left = deadline.saturating_duration_since(Instant::now());
        let (mut state, _) = self
            .changed
            .wait_timeout_while(self.lock(), left, |s| {
                s.queue.is_empty() && !s.proposal_failed
            })
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut state.queue)
    }

    /// Stops taking appends; returns those that came since the last `take`. With `void`,
    /// that batch is appended empty whenever openraft appends it.
    fn stop_waiting(&self, void: Option<u64>) -> Vec<PendingAppend> {
        let mut state = self.lock();
        state.waiting = false;
        if let Some(id) = void {
            state.voided.insert(id);
        }
        std::mem::take(&mut state.queue)
    }

    /// The batch was never appended (its proposal failed): nothing to void.
    fn forget(&self, id: u64) {
        self.lock().voided.remove(&id);
    }

    fn newest_membership(&self) -> Option<openraft::LogId<super::RaftNodeId>> {
        self.lock().newest_membership
    }

    fn proposal_failed(&self) {
        self.lock().proposal_failed = true;
        self.changed.notify_all();
    }
}

/// What openraft answers a proposal once it is committed and applied, or the answer itself
/// when the batch was committed by its own write (see [`InTxn::committed`]).
pub(crate) struct Response(Answer);

enum Answer {
    Waiting(oneshot::Receiver<Result<Applied>>),
    Decided(Applied),
}

impl Response {
    pub async fn wait(self) -> Result<Applied> {
        match self.0 {
            Answer::Waiting(rx) => rx.await.map_err(|_| stopped())?,
            Answer::Decided(applied) => Ok(applied),
        }
    }
}

fn stopped() -> Error {
    Error::rule("the cluster stopped before the proposal was decided")
}

/// How soon a follower tries to reach its cluster's leader again when it could not, at
/// first and at most (an election takes a second or two).
const UNREACHABLE_LEADER_POLL: Duration = Duration::from_millis(25);
const UNREACHABLE_LEADER_POLL_MAX: Duration = Duration::from_millis(200);
/// How long a follower's commit waits, in all, once its leader could not be reached: for it to
/// answer again or the others to elect another (an election takes a second or two; a split
/// vote and a loaded machine, more).
const LEADER_LOST_WAIT: Duration = Duration::from_secs(6);

const ELECTED_MEANWHILE: &str = "this primary was elected its cluster's leader while the \
     transaction waited for one: run it again, and this primary decides it";

const NO_LEADER: &str = "this primary knows no leader of its cluster now (an election is under \
     way, this primary has just started, or the cluster's majority is lost): try again shortly";

/// Proposes a primary's decided batches to the cluster, writing them through when it can.
pub struct Proposer {
    raft: Raft,
    handoff: Arc<Handoff>,
    log: LogStore,
    /// The state machine's handle, to reopen its connection after a `PRAGMA rekey`.
    state: super::StateMachine,
    runtime: tokio::runtime::Handle,
    /// Ids of this process's batches (unique among those in flight, which is all they need).
    next_id: std::sync::atomic::AtomicU64,
    /// A follower's app transactions go to the leader through it.
    forwarder: super::forward::Forwarder,
}

/// What a primary proposes from inside a write transaction.
pub(crate) enum Batch {
    /// Decided transactions, which the transaction appended to `_octo_log` at `seqs`.
    Txns { seqs: std::ops::RangeInclusive<u64> },
    /// Rows of the authorization state, whole.
    Rows {
        nodes: Vec<Vec<crate::Value>>,
        users: Vec<Vec<crate::Value>>,
    },
}

/// A batch proposed before its transaction's writes are done ([`Proposer::propose_early`]):
/// openraft gives it its place in the log while the writer still works.
pub(crate) struct Early {
    id: u64,
    response: Response,
    deadline: Instant,
}

/// A proposal made from inside an open write transaction.
pub(crate) enum Proposed {
    /// Its entry is written in the transaction: commit it, then [`InTxn::committed`] (or
    /// [`InTxn::not_committed`] when the commit fails).
    InTxn(InTxn),
    /// Its entry is not in the transaction: roll it back, then [`GaveUp::after_rollback`].
    GaveUp(GaveUp),
}

pub(crate) struct InTxn {
    id: u64,
    /// The appends written in the transaction, as openraft gave them.
    written: Vec<PendingAppend>,
    response: Response,
    /// The batch's answer when the transaction's commit alone decides it (see
    /// [`committed_by_its_write`]).
    decided: Option<Applied>,
    log: LogStore,
}

pub(crate) struct GaveUp {
    id: u64,
    appends: Vec<PendingAppend>,
    log: LogStore,
    /// Why, for the error its writer returns.
    why: String,
}

/// Why a batch is given up when nothing more precise is known.
const ENTRY_NOT_WRITTEN: &str = "its leader changed, or its Raft entry could not be written";

impl Proposer {
    /// Call it from inside the runtime that runs `raft`.
    pub(crate) fn new(
        raft: Raft,
        log: LogStore,
        state: super::StateMachine,
        forwarder: super::forward::Forwarder,
    ) -> Proposer {
        Proposer {
            raft,
            handoff: log.handoff(),
            log,
            state,
            runtime: tokio::runtime::Handle::current(),
            next_id: std::sync::atomic::AtomicU64::new(1),
            forwarder,
        }
    }

    /// A follower: sends an app's transaction to the cluster's leader, to be decided there
    /// (`forward`), and waits at most `wait` for the answer. An error: the outcome is unknown,
    /// but for [`Error::Unavailable`]: nothing was sent (no leader known, or none reachable).
    ///
    /// A leader that cannot be reached (killed: it refuses connections, while this primary
    /// still knows it as the leader until the others elect another) is tried again, with
    /// back-off, and the election that follows waited for, [`LEADER_LOST_WAIT`] in all: the
    /// app's commit then goes to the new leader rather than failing at once (the failover
    /// walkthrough: every follower's write in the first second or two failed).
    pub(crate) async fn forward(
        &self,
        txn: super::forward::Forwarded,
        wait: std::time::Duration,
    ) -> Result<super::forward::ForwardOutcome> {
        let start = Instant::now();
        let mut pause = UNREACHABLE_LEADER_POLL;
        let mut lost = false;
        loop {
            let budget = if lost {
                wait.min(LEADER_LOST_WAIT)
            } else {
                wait
            };
            let left = budget.saturating_sub(start.elapsed());
            let again = start.elapsed() + pause < wait.min(LEADER_LOST_WAIT);
            let Some(leader) = self.leader_within(left).await else {
                if self.leads() {
                    return Err(Error::Unavailable(ELECTED_MEANWHILE.into()));
                }
                if lost && again {
                    tokio::time::sleep(pause).await;
                    continue;
                }
                return Err(Error::Unavailable(NO_LEADER.into()));
            };
            let left = wait.saturating_sub(start.elapsed());
            match self.forwarder.forward(leader, txn.clone(), left).await {
                // Never sent: trying again cannot apply it twice.
                Err(Error::Unavailable(reason)) if again => {
                    tracing::debug!(
                        "the cluster's leader could not be reached ({reason}): trying again"
                    );
                    lost = true;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(UNREACHABLE_LEADER_POLL_MAX);
                }
                outcome => return outcome,
            }
        }
    }

    /// A follower: waits (at most `wait` in all) until it has applied everything the cluster
    /// had committed when the leader answered, so that what its app reads next, or the schema
    /// its app changes, is at least as new as any transaction committed before. Err: why it
    /// could not (no leader, an older leader, a slow catch-up); the app goes on then, on what
    /// this primary holds. A leader has nothing to wait for.
    pub(crate) async fn catch_up_with_leader(&self, wait: std::time::Duration) -> Result<()> {
        let start = std::time::Instant::now();
        let Some(leader) = self.leader_within(wait).await else {
            return if self
                .leads_once_confirmed(wait.saturating_sub(start.elapsed()))
                .await
            {
                Ok(())
            } else {
                Err(Error::Unavailable(NO_LEADER.into()))
            };
        };
        let index = self
            .forwarder
            .read_index(leader, wait.saturating_sub(start.elapsed()))
            .await?;
        let left = wait.saturating_sub(start.elapsed());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "the leader's read index")
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::rule(format!(
                    "not caught up with the leader's index {index}: {e}"
                ))
            })
    }

    /// The leader, waiting for one (at most `wait`, and no longer than an election takes)
    /// when none is known: an app's write in an election, or just after this primary
    /// started, goes through once one is elected instead of failing at once. None: still
    /// none, or this primary leads now (the caller decides here then, on its next try).
    async fn leader_within(
        &self,
        wait: std::time::Duration,
    ) -> Option<(super::RaftNodeId, super::Member)> {
        if let Some(known) = self.leader() {
            return Some(known);
        }
        let _ = self
            .raft
            .wait(Some(wait.min(super::LEADERLESS_MAX)))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != m.id) || super::leads_confirmed(m),
                "a leader of the cluster",
            )
            .await;
        self.leader()
    }

    /// Whether this primary leads with its leadership confirmed, waiting (at most `wait`)
    /// while it has been elected and no majority has answered it yet: a new leader's first
    /// write went the follower's way then, and was refused, the leader it waited for being
    /// itself. False at once when it does not lead.
    pub(crate) async fn leads_once_confirmed(&self, wait: std::time::Duration) -> bool {
        let elected = self.raft.metrics().borrow().state == openraft::ServerState::Leader;
        if !elected {
            return false;
        }
        let _ = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.state != openraft::ServerState::Leader || super::leads_confirmed(m),
                "a majority answering this leader",
            )
            .await;
        let m = self.raft.metrics().borrow().clone();
        super::leads_confirmed(&m)
    }

    /// A follower: sends a decision on a node to the cluster's leader, which records it.
    pub(crate) async fn forward_decision(
        &self,
        decision: super::forward::ForwardedDecision,
        wait: std::time::Duration,
    ) -> Result<()> {
        let leader = self
            .leader_within(wait)
            .await
            .ok_or_else(|| Error::rule(NO_LEADER))?;
        self.forwarder.decision(leader, decision, wait).await
    }

    /// A follower: asks the leader whether the device of `pubkey` is approved, and its ids.
    pub(crate) async fn admit_device(
        &self,
        pubkey: String,
        wait: std::time::Duration,
    ) -> Result<std::result::Result<super::forward::DeviceAdmitted, String>> {
        let leader = self.leader().ok_or_else(|| Error::rule(NO_LEADER))?;
        self.forwarder.admit_device(leader, pubkey, wait).await
    }

    /// A follower: sends a device's transactions to the leader; answers once written there.
    pub(crate) async fn device_txns(
        &self,
        txns: super::forward::ForwardedTxns,
        wait: std::time::Duration,
    ) -> Result<std::result::Result<Option<u64>, String>> {
        let leader = self.leader().ok_or_else(|| Error::rule(NO_LEADER))?;
        self.forwarder.device_txns(leader, txns, wait).await
    }

    /// Whether another primary leads the cluster, as this one knows now.
    pub(crate) fn has_leader(&self) -> bool {
        self.leader().is_some()
    }

    /// The cluster's leader, when it is another primary.
    /// Whether this primary is its cluster's leader now (elected, confirmed or not).
    fn leads(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(m.id)
    }

    fn leader(&self) -> Option<(super::RaftNodeId, super::Member)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader.filter(|l| *l != m.id)?;
        let member = m
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()?;
        Some((leader, member))
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Why members of the cluster refuse this primary's calls, while any does (it was removed
    /// from the cluster, or its file is another cluster's).
    pub fn refused(&self) -> Option<String> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let is_member = |id| membership.membership().get_node(&id).is_some();
        self.forwarder.refusals().summary(is_member)
    }

    /// Follows the log position of the rows the state machine writes itself: a follower's
    /// batches and snapshots (a leader's own batches are announced by their writers).
    pub fn rows_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.rows_applied()
    }

    /// Follows the epochs and authorization changes the state machine applies (a follower's).
    pub fn news(&self) -> tokio::sync::watch::Receiver<super::state_machine::Applying> {
        self.state.news()
    }

    /// After a `PRAGMA rekey` (nothing proposed meanwhile): the Raft log's and the state
    /// machine's connections open again with the file's new key.
    pub(crate) fn reopen_storage(
        &self,
        path: &std::path::Path,
        file_key: Option<&crate::uri::NetworkKey>,
    ) -> Result<()> {
        self.log.reopen(path, file_key)?;
        self.state.reopen(path, file_key)
    }

    /// Proposes `batch`, written in the write transaction open on `conn`, and writes its Raft
    /// entry there too when openraft hands it over in time. Call it from a plain thread (it
    /// blocks).
    pub(crate) fn propose_in_txn(&self, conn: &Connection, batch: Batch) -> Proposed {
        let compact = match batch {
            Batch::Txns { seqs } => in_log(&seqs),
            Batch::Rows { nodes, users } => Proposal::RowsWritten { nodes, users },
        };
        match self.propose_early() {
            Ok(early) => self.write_entry(conn, early, Some(compact)),
            Err(gave_up) => Proposed::GaveUp(gave_up),
        }
    }

    /// Proposes a batch whose writes the caller's open write transaction is about to make, so
    /// that openraft appends its entry meanwhile; [`Proposer::write_early`] then writes that
    /// entry in the transaction, or [`Proposer::abandon`] gives it up. The proposal carries
    /// nothing: its entry is always either written through, as the log positions it names, or
    /// voided (see the module's notes), so what openraft holds of it in memory is never read.
    pub(crate) fn propose_early(&self) -> std::result::Result<Early, GaveUp> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A leader cut off from its majority could not have the batch confirmed: refused
        // before anything is proposed, so that the minority side of a partition takes no
        // writes at all (the majority's leader has them).
        let silence = super::quorum_silence(&self.raft.metrics().borrow());
        if let Some(ms) = silence {
            let why = super::cut_off(ms);
            return Err(GaveUp {
                why,
                ..self.gave_up(id, Vec::new())
            });
        }
        self.handoff.start_waiting();
        let response = self.propose(Proposal::Batch {
            id,
            txns: Vec::new(),
        });
        Ok(Early {
            id,
            response,
            deadline: Instant::now() + ENTRY_WAIT_MAX,
        })
    }

    /// Writes the entry of `early` in the open transaction, as the `_octo_log` rows `seqs`
    /// (None: the transaction decided nothing, and its entry stays empty).
    pub(crate) fn write_early(
        &self,
        conn: &Connection,
        early: Early,
        seqs: Option<std::ops::RangeInclusive<u64>>,
    ) -> Proposed {
        self.write_entry(conn, early, seqs.as_ref().map(in_log))
    }

    /// The transaction of `early` will not commit: its batch is voided. Roll back, then
    /// [`GaveUp::after_rollback`].
    pub(crate) fn abandon(&self, early: Early) -> GaveUp {
        let appends = self.handoff.stop_waiting(Some(early.id));
        self.gave_up(early.id, appends)
    }

    /// Waits for the entry of `early` and writes it in the open transaction as `compact`,
    /// with whatever openraft appended before it.
    fn write_entry(&self, conn: &Connection, early: Early, compact: Option<Proposal>) -> Proposed {
        let Early {
            id,
            response,
            deadline,
        } = early;
        let mut written = Vec::new();
        let mut ours = None;
        while ours.is_none() {
            let appends = self.handoff.take(deadline);
            if appends.is_empty() {
                break; // the deadline passed, or the proposal failed
            }
            for append in appends {
                let wrote = write_appends(conn, &append.entries, id, &compact, &mut ours);
                written.push(append);
                if let Err(e) = wrote {
                    tracing::warn!("could not write a batch's Raft entry with it: {e}");
                    written.extend(self.handoff.stop_waiting(Some(id)));
                    return Proposed::GaveUp(self.gave_up(id, written));
                }
            }
            if ours.is_none() {
                // Entries of others came alone (a membership change, a new leader's blank
                // entry): openraft appends nothing more, this batch's entry included, until
                // they are durable, which only this transaction's end can make them. Waiting
                // would only hold the file's lock (openraft's votes wait for it too) until
                // the deadline: give the batch up now; they are written after the rollback.
                tracing::debug!("others' Raft entries came before this batch's: given up");
                written.extend(self.handoff.stop_waiting(Some(id)));
                return Proposed::GaveUp(self.gave_up(id, written));
            }
        }
        let Some(ours) = ours else {
            tracing::info!("a batch's Raft entry did not come in time: given up");
            written.extend(self.handoff.stop_waiting(Some(id)));
            return Proposed::GaveUp(self.gave_up(id, written));
        };
        // openraft appends nothing more until ours is durable; whatever still came goes in too.
        for append in self.handoff.stop_waiting(None) {
            let mut also = None;
            let wrote = write_appends(conn, &append.entries, id, &compact, &mut also);
            written.push(append);
            if let Err(e) = wrote {
                tracing::warn!("could not write a batch's Raft entry with it: {e}");
                return Proposed::GaveUp(self.gave_up(id, written));
            }
        }
        // A purge that waited for this transaction's lock. (Should the transaction not
        // commit, the entries stay: harmless, as nothing cuts the log below entries the Raft
        // log still names; the next compaction purges again.)
        if let Some(upto) = self.handoff.take_purge() {
            if let Err(e) = super::log_store::purge_in(conn, upto) {
                tracing::warn!("could not purge the Raft log with a batch: {e}");
            }
        }
        let alone = committed_by_its_write(
            &self.raft.metrics().borrow(),
            self.handoff.newest_membership(),
            ours,
            &written,
        );
        Proposed::InTxn(InTxn {
            id,
            written,
            response,
            decided: alone.then(|| match compact {
                Some(Proposal::InLog { last_seq, .. }) => Applied { last_seq },
                _ => Applied::default(),
            }),
            log: self.log.clone(),
        })
    }

    fn gave_up(&self, id: u64, appends: Vec<PendingAppend>) -> GaveUp {
        let why = match self.handoff.lock().disk_refusal.clone() {
            Some(e) => format!(
                "this primary's disk refuses to write its Raft log ({e}): if the disk is full, \
                 free space there"
            ),
            None => ENTRY_NOT_WRITTEN.into(),
        };
        GaveUp {
            id,
            appends,
            log: self.log.clone(),
            why,
        }
    }

    /// Proposes `_octo_log` rows `seqs` committed without their Raft entry (a transaction that
    /// a `RELEASE` committed): their effects are in the file already.
    pub(crate) fn propose_committed(&self, seqs: std::ops::RangeInclusive<u64>) -> Response {
        self.propose(in_log(&seqs))
    }

    /// Proposes on openraft's runtime; a failure wakes the transaction waiting for the entry.
    fn propose(&self, proposal: Proposal) -> Response {
        let (tx, rx) = oneshot::channel();
        let raft = self.raft.clone();
        let handoff = self.handoff.clone();
        let id = batch_id(&proposal);
        self.runtime.spawn(async move {
            let outcome = raft
                .client_write(proposal)
                .await
                .map(|r| r.data)
                .map_err(|e| Error::rule(format!("the cluster did not take the proposal: {e}")));
            if outcome.is_err() {
                if let Some(id) = id {
                    handoff.forget(id);
                }
                handoff.proposal_failed();
            }
            let _ = tx.send(outcome);
        });
        Response(Answer::Waiting(rx))
    }
}

/// Writes `entries` into the Raft log in the open transaction: batch `id` as `compact` (the
/// `_octo_log` positions that hold it) when there is one, every other entry whole.
fn write_appends(
    conn: &Connection,
    entries: &[Entry<TypeConfig>],
    id: u64,
    compact: &Option<Proposal>,
    ours: &mut Option<LogId<super::RaftNodeId>>,
) -> Result<()> {
    for entry in entries {
        let mine = matches!(&entry.payload, EntryPayload::Normal(p) if batch_id(p) == Some(id));
        if mine {
            *ours = Some(entry.log_id);
        }
        match (mine, compact) {
            (true, Some(compact)) => {
                let stored = Entry {
                    log_id: entry.log_id,
                    payload: EntryPayload::Normal(compact.clone()),
                };
                super::log_store::write_entry(conn, &stored)
            }
            _ => super::log_store::write_entry(conn, entry),
        }
        .map_err(|e| Error::rule(format!("writing the Raft log: {e}")))?;
    }
    Ok(())
}

/// Whether the commit that makes `ours` durable here decides it: this primary leads, in the
/// entry's term, a cluster whose only voter it is. The configuration that counts is the newest
/// in the log before `ours`. Nothing is appended after `ours` until it is durable, except what
/// this transaction writes with it (`written`): with no membership change among those, and
/// the metrics' membership at least as new as any appended since the start
/// (`newest_membership`), the metrics' configuration is that one. Otherwise openraft says
/// when the batch is decided.
fn committed_by_its_write(
    m: &openraft::RaftMetrics<super::RaftNodeId, super::Member>,
    newest_membership: Option<LogId<super::RaftNodeId>>,
    ours: LogId<super::RaftNodeId>,
    written: &[PendingAppend],
) -> bool {
    let changes_membership = written
        .iter()
        .flat_map(|a| &a.entries)
        .any(|e| matches!(e.payload, EntryPayload::Membership(_)));
    let config = m.membership_config.membership().get_joint_config();
    m.state == openraft::ServerState::Leader
        && m.current_leader == Some(m.id)
        && m.current_term == ours.leader_id.term
        && !changes_membership
        && newest_membership <= *m.membership_config.log_id()
        && matches!(config.as_slice(), [voters] if voters.len() == 1 && voters.contains(&m.id))
}

/// The entry of a batch written through: the `_octo_log` positions `seqs` that hold it.
fn in_log(seqs: &std::ops::RangeInclusive<u64>) -> Proposal {
    Proposal::InLog {
        first_seq: *seqs.start(),
        last_seq: *seqs.end(),
    }
}

/// The id of a primary's batch.
fn batch_id(p: &Proposal) -> Option<u64> {
    match p {
        Proposal::Batch { id, .. } | Proposal::Rows { id, .. } => Some(*id),
        Proposal::Decided(_)
        | Proposal::DecidedChecked { .. }
        | Proposal::InLog { .. }
        | Proposal::RowsWritten { .. } => None,
    }
}

/// `p` with nothing in it, if it is batch `id` (a batch given up).
fn void(p: &mut Proposal, id: u64) -> bool {
    if batch_id(p) != Some(id) {
        return false;
    }
    match p {
        Proposal::Batch { txns, .. } => txns.clear(),
        Proposal::Rows { nodes, users, .. } => {
            nodes.clear();
            users.clear();
        }
        Proposal::Decided(_)
        | Proposal::DecidedChecked { .. }
        | Proposal::InLog { .. }
        | Proposal::RowsWritten { .. } => {}
    }
    true
}

impl InTxn {
    /// The transaction committed: the entries are durable. Returns openraft's answer to come,
    /// or the answer now when this primary is its cluster's only voter: the commit that made
    /// the batch durable here made it durable on a majority, which is what deciding it means,
    /// and the sessions need not wait for openraft's core and state machine to say so.
    pub(crate) fn committed(self) -> Response {
        for append in self.written {
            append.flushed.log_io_completed(Ok(()));
        }
        match self.decided {
            Some(applied) => Response(Answer::Decided(applied)),
            None => self.response,
        }
    }

    /// The commit failed (and rolled back): the batch is voided.
    pub(crate) fn not_committed(self) -> GaveUp {
        GaveUp {
            id: self.id,
            appends: self.written,
            log: self.log,
            why: "its commit failed".into(),
        }
    }
}

impl GaveUp {
    /// Why the batch was given up, for its writer's error.
    pub(crate) fn why(&self) -> &str {
        &self.why
    }

    /// After the rollback: the appends taken are written by the log store, this batch empty
    /// (retrying while the disk refuses: openraft waits for them). Blocks.
    pub(crate) fn after_rollback(self) {
        for mut append in self.appends {
            for entry in &mut append.entries {
                if let EntryPayload::Normal(p) = &mut entry.payload {
                    void(p, self.id);
                }
            }
            let result = self.log.write_blocking(&append.entries);
            let result = result.map_err(|e: LogStoreError| std::io::Error::other(e.to_string()));
            append.flushed.log_io_completed(result);
        }
    }
}
