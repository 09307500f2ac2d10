//! The engine's writer thread: the only place where the network's changes are written.
//! Work queued while a transaction is being written is gathered into the next one, so many
//! devices' transactions share one commit (group commit).

use super::write_turns::EngineTurn;
use super::{Event, Shared};
use crate::changes::ChangeSet;
use crate::cluster::{GaveUp, Proposed};
use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::log::digest::TxnDigest;
use crate::log::{self, EntryBody, LogEntry};
use crate::store::apply::{self, Tables};
use crate::store::device_txn::{self, Sender};
use crate::store::{exec, meta_i64, meta_set, schema, write_txn};
use crate::uri::Role;
use crate::value::Value;
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

/// How many device transactions one commit may gather.
const GROUP_COMMIT_MAX: usize = 2000;
/// Devices: how many log entries, from the messages queued, one commit may gather.
const ENTRIES_MAX: usize = 8000;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// Queue a job for the writer thread and wait for its answer.
pub(crate) async fn ask<T>(shared: &Shared, make: impl FnOnce(Reply<T>) -> Job) -> Result<T> {
    answer(submit(shared, make).await?).await
}

/// Hands a job to the writer without waiting for it to be done; see [`answer`].
pub(crate) async fn submit<T>(
    shared: &Shared,
    make: impl FnOnce(Reply<T>) -> Job,
) -> Result<oneshot::Receiver<Result<T>>> {
    let (tx, rx) = oneshot::channel();
    shared
        .jobs
        .send(make(tx))
        .await
        .map_err(|_| Error::Closed)?;
    Ok(rx)
}

/// The outcome of a job handed over by [`submit`] (its receiver, or a borrow of it to keep it
/// when the wait is cancelled).
pub(crate) async fn answer<T>(
    pending: impl std::future::Future<Output = Result<Result<T>, oneshot::error::RecvError>>,
) -> Result<T> {
    pending.await.map_err(|_| Error::Closed)?
}

/// Whether a device's transactions were written; `Err`: why not.
pub(crate) type TxnsWritten = tokio::sync::oneshot::Sender<std::result::Result<Written, String>>;

/// A device's transactions written in a batch.
#[derive(Debug)]
pub(crate) struct Written {
    /// The device sent other work under this transaction id, already decided (a copy of its
    /// file): nothing after it was decided.
    pub copy: Option<u64>,
    /// The log position of the batch's last entry (0: none): the batch is committed by the
    /// cluster once the change feed passes it.
    pub last_seq: u64,
}

pub(crate) enum Job {
    Stop,
    /// An app connection re-encrypts the file (`PRAGMA rekey`): wait, holding no transaction,
    /// until it says whether it did; if so, reopen the connection with the file's new key.
    PauseForRekey {
        paused: Reply<()>,
        resume: std::sync::mpsc::Receiver<bool>,
    },
    /// Primary: a device's transactions, in the device's order, from one of its sessions.
    DeviceTxns {
        sender: Sender,
        session: u64,
        txns: Vec<DeviceTxn>,
        /// Told once the batch holding them is written (a follower's session waits for it:
        /// `forwarded`), else the session hears through `unwritten` and `copied_files`.
        written: Option<TxnsWritten>,
    },
    /// Primary: a node presents itself; find or create its record.
    Register {
        pubkey: PublicKey,
        address: String,
        info: String,
        reply: Reply<super::members::Admission>,
    },
    /// Primary: a node's request waits for the backend.
    AuthRecord {
        pubkey: String,
        address: String,
        info: String,
        action: crate::auth::Action,
        data: Option<String>,
        reply: Reply<()>,
    },
    /// Primary: a device's session ended; it was last seen at `at` from `address`.
    Seen(super::members::Sighting),
    /// Primary: the backend decided on a key; the outcome is also broadcast to waiting sessions.
    AuthDecide {
        pubkey: String,
        decision: crate::auth::Decision,
        /// Whether the key must be one some node presented.
        known: super::members::Known,
        reply: Reply<super::members::Admission>,
    },
    /// Primary: the node id of a key about to be approved (given now if it waits).
    ReserveNodeId {
        pubkey: String,
        reply: Reply<u32>,
    },
    /// Primary: the user a key about to be approved as a device becomes (made now if new).
    ReserveUserId {
        pubkey: String,
        reply: Reply<i64>,
    },
    /// Primary (the leader): a member primary rejoins as a new member; its key's new node id.
    RenumberPrimary {
        pubkey: String,
        reply: Reply<u32>,
    },
    /// Primary: a key connected without the sign-up the primaries require; keep it so that it
    /// can be approved by hand.
    Presence {
        pubkey: String,
        address: String,
        info: String,
        reply: Reply<()>,
    },
    /// Primary: it began leading; a new epoch of the log begins (`node::epoch`). Answers the
    /// marker's sequence number.
    BeginEpoch {
        reply: Reply<u64>,
    },
    /// Primary: the last transaction decided for a device (0: none), for its Welcome.
    LastDecided {
        node_id: u32,
        reply: Reply<u64>,
    },
    /// Primary: what a leader tells an admitted device: the last of its transactions decided
    /// (as `LastDecided`), and the log's shape, which says where the device goes on from.
    /// One trip to this thread for both: every reconnecting device asks.
    Returning {
        node_id: u32,
        reply: Reply<(u64, super::primary::LogShape)>,
    },
    /// Device: the primary accepted this node with these ids.
    Welcome {
        node_id: u32,
        user_id: i64,
        /// The welcoming primary's key, kept from the first welcome on.
        primary_key: crate::crypto::PublicKey,
        /// The last of this device's transactions the primaries decided.
        last_decided_txn: u64,
        reply: Reply<()>,
    },
    /// Device: the cluster's primaries, as the primary told (checked), to keep in the file.
    PrimaryMembers {
        members: Vec<crate::net::PrimaryMember>,
        reply: Reply<()>,
    },
    /// Device: entries from the primaries, received by one session.
    Entries {
        entries: Vec<LogEntry>,
        up_to: u64,
        /// The digests of the decisions about this device's own transactions among them
        /// (protocol 8).
        own_digests: std::collections::HashMap<u64, TxnDigest>,
        session: u64,
        reply: Reply<()>,
    },
    /// Primary: removes log entries below `below`, a chunk at a time; replies where the log
    /// starts now (`log::compaction`).
    CutLog {
        below: u64,
        reply: Reply<u64>,
    },
    /// Device: the primary found this file to be a copy of another device's in use.
    CopiedFile {
        txn: u64,
        reply: Reply<()>,
    },
    /// Device (a copy of another's file): a new key pair in the file, for the next open; its
    /// new public key (hex).
    NewIdentity {
        reply: Reply<String>,
    },
    /// Device: the initial download, in parts, inside one transaction; with the primaries'
    /// renames (protocol 13).
    SnapshotBegin {
        schema: Vec<String>,
        renames: Option<Vec<crate::store::renames::Rename>>,
        reply: Reply<()>,
    },
    SnapshotRows {
        table: String,
        columns: Vec<String>,
        rows: Vec<(i64, Vec<Value>)>,
        reply: Reply<()>,
    },
    SnapshotEnd {
        seq: u64,
        reply: Reply<()>,
    },
    SnapshotAbort,
    /// Device: the log's epochs, as the primary told; with `resync`, the primary is behind
    /// this device and the download that follows goes over its data (`node::resync`).
    LogHistory {
        epochs: Vec<log::epochs::Epoch>,
        resync: bool,
        reply: Reply<()>,
    },
}

use super::auth_batch;
use super::decided::{Decided, NewDecisions};
use super::shared_rows::{self, Touched};
use crate::store::trigger_effects::TriggerEffects;

pub(crate) fn spawn(
    shared: Arc<Shared>,
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    role: Role,
) -> Result<std::thread::JoinHandle<()>> {
    let trigger_effects = match role {
        Role::Primary => Some(TriggerEffects::new(&conn, shared.identity.clone())?),
        _ => None,
    };
    std::thread::Builder::new()
        .name("octodb-writer".into())
        .spawn(move || {
            Writer {
                shared,
                conn,
                tables: Tables::default(),
                role,
                decided: None,
                sending_noted: false,
                trigger_effects,
                given_up: None,
                resync: None,
                told_last_decided: 0,
                resent: 0,
                failed_sessions: Default::default(),
                ended_by_trigger: HashMap::new(),
            }
            .run(rx)
        })
        .map_err(|e| Error::io("starting the writer thread", e))
}

/// The longest the writer waits for an app connection's `PRAGMA rekey` (which rewrites every
/// page of the file once).
const REKEY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

/// Sessions' ends recorded in one commit at most.
const MAX_SIGHTINGS: usize = 4096;

/// `first` and the jobs queued behind it, while each weighs more than nothing by `weight` and
/// the batch stays under `max` of it; the first job that does not join is left in `next`.
fn take_batch(
    rx: &mut mpsc::Receiver<Job>,
    next: &mut Option<Job>,
    first: Job,
    weight: impl Fn(&Job) -> usize,
    max: usize,
) -> Vec<Job> {
    let mut total = weight(&first);
    let mut jobs = vec![first];
    while total < max {
        match rx.try_recv() {
            Ok(j) if weight(&j) > 0 => {
                total += weight(&j);
                jobs.push(j);
            }
            Ok(other) => {
                *next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    jobs
}

struct Writer {
    shared: Arc<Shared>,
    conn: Connection,
    tables: Tables,
    role: Role,
    /// Primary: the last transaction decided per device (loaded at the first batch), with
    /// the Raft term it was loaded in: in a later term this primary may have followed, its
    /// state machine writing others' decisions into the log, so it reads them again.
    decided: Option<(u64, Decided)>,
    /// Device: this run told its file that it sends (see `txn_ids_before_sending`).
    sending_noted: bool,
    /// Primary: what the schema's triggers write while devices' transactions are applied.
    trigger_effects: Option<TriggerEffects>,
    /// Primary: a batch given up, whose Raft entries are written (voided) once its devices
    /// have been told.
    given_up: Option<GaveUp>,
    /// Device: the download under way goes over this device's data (its primary was behind
    /// it); the primary's epochs are kept once it is complete.
    resync: Option<Vec<log::epochs::Epoch>>,
    /// Device: the last of its transactions the primary decided, as its Welcome said.
    told_last_decided: u64,
    /// Device: accepted transactions the download under way put back into the outbox.
    resent: u64,
    /// Sessions whose work could not be written (a primary's device sessions, a device's
    /// sessions with its primary).
    failed_sessions: std::collections::HashSet<u64>,
    /// Primary: device transactions (node, transaction id) during which a trigger ended the
    /// batch's SQLite transaction (`RAISE(ROLLBACK)`), and why: rejected when sent again.
    ended_by_trigger: HashMap<(u32, u64), String>,
}

/// Failed sessions remembered at most (they end within moments of their failure).
const MAX_FAILED_SESSIONS: usize = 65_536;

impl Writer {
    /// A new connection on the file, with its key as it is now (after a `PRAGMA rekey`), set
    /// up as `Node::start` set up the first.
    fn reopen(&mut self) -> Result<()> {
        let key = self.shared.file_key.get();
        let conn = crate::store::open_connection(self.shared.path(), key.as_ref())?;
        if self.role == Role::Secondary {
            conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        }
        crate::store::capture::register_identity_functions(&conn, &self.shared.identity)?;
        if self.role == Role::Primary {
            self.trigger_effects = Some(TriggerEffects::new(&conn, self.shared.identity.clone())?);
        }
        self.conn = conn;
        Ok(())
    }

    /// The node closes: the row and transaction ids reserved ahead and not used go back to
    /// the file (`store::release_ids`). Every connection of the node is gone, so none is
    /// handed out after this.
    fn give_back_unused_ids(&self) {
        if !self.conn.is_autocommit() {
            return; // an unfinished download: left as it is
        }
        let identity = &self.shared.identity;
        let released = write_txn(&self.conn, |c| {
            crate::store::release_ids(c, crate::store::ROW_SEQ_KEY, identity.next_row_seq() - 1)?;
            log::outbox::release_unused_txn_ids(c, identity)
        });
        if let Err(e) = released {
            tracing::debug!("the unused reserved ids stay reserved: {e}");
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut next: Option<Job> = None;
        // Held while jobs are queued (see `write_turns`), never across an idle wait.
        let mut turn: Option<EngineTurn> = None;
        loop {
            let job = match next.take().map(Ok).unwrap_or_else(|| rx.try_recv()) {
                Ok(j) => j,
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {
                    if self.conn.is_autocommit() {
                        turn = None;
                    }
                    match rx.blocking_recv() {
                        Some(j) => j,
                        None => return,
                    }
                }
            };
            // An initial download keeps its transaction open between jobs: keep the turn too.
            if turn.as_ref().is_some_and(EngineTurn::is_over) && self.conn.is_autocommit() {
                turn = None;
            }
            // (A lookup writes nothing: it does not wait for a turn.)
            if turn.is_none()
                && !matches!(
                    job,
                    Job::Stop
                        | Job::LastDecided { .. }
                        | Job::Returning { .. }
                        | Job::PauseForRekey { .. }
                )
            {
                turn = Some(self.shared.write_turns.engine());
            }
            match job {
                Job::Stop => {
                    self.give_back_unused_ids();
                    return;
                }
                Job::PauseForRekey { paused, resume } => {
                    if !self.conn.is_autocommit() {
                        let _ = paused.send(Err(Error::rule(
                            "the device is downloading its data; run PRAGMA rekey once it is ready",
                        )));
                        continue;
                    }
                    // The turn is not held while paused: the app connection rekeys meanwhile.
                    turn = None;
                    let key_before = self.shared.file_key.generation();
                    let _ = paused.send(Ok(()));
                    let _ = resume.recv_timeout(REKEY_WAIT_MAX);
                    // Whenever the file took the new key, even if what followed the rekey
                    // failed (the Raft storage's reopening): the old key reads nothing now.
                    if self.shared.file_key.generation() != key_before {
                        if let Err(e) = self.reopen() {
                            tracing::error!(error = %e, "the writer could not reopen the file with its new key");
                        }
                    }
                }
                job @ Job::DeviceTxns { .. } => {
                    let txns_in = |j: &Job| match j {
                        Job::DeviceTxns { txns, .. } => txns.len(),
                        _ => 0,
                    };
                    let jobs = take_batch(&mut rx, &mut next, job, txns_in, GROUP_COMMIT_MAX);
                    let mut sessions = Vec::new();
                    let mut waiting = Vec::new();
                    let batch: Vec<_> = jobs
                        .into_iter()
                        .filter_map(|j| match j {
                            // A session whose batch failed is ending: what it queued after
                            // must not be decided before what failed (its device sends both
                            // again, in order, on its next connection).
                            Job::DeviceTxns { session, .. }
                                if self.failed_sessions.contains(&session) =>
                            {
                                None
                            }
                            Job::DeviceTxns {
                                sender,
                                session,
                                txns,
                                written,
                            } => {
                                sessions.push(session);
                                waiting.push(written);
                                Some((sender, txns))
                            }
                            _ => None,
                        })
                        .collect();
                    if batch.is_empty() {
                        continue;
                    }
                    let count: usize = batch.iter().map(|(_, txns)| txns.len()).sum();
                    let started = std::time::Instant::now();
                    match self.apply_device_batch(&batch) {
                        Ok((clones, last_seq)) => {
                            self.shared.writes_succeed();
                            for CloneFound { at, txn } in &clones {
                                // What the session queued after must not be decided either.
                                self.note_failed_sessions(vec![sessions[*at]]);
                                self.shared.copied_file_found(sessions[*at], *txn);
                            }
                            for (at, written) in waiting.into_iter().enumerate() {
                                let copy = clones.iter().find(|c| c.at == at).map(|c| c.txn);
                                if let Some(w) = written {
                                    let _ = w.send(Ok(Written { copy, last_seq }));
                                }
                            }
                            tracing::debug!(
                                txns = count,
                                micros = started.elapsed().as_micros() as u64,
                                "device transactions committed"
                            )
                        }
                        // Nothing was committed. The devices' sessions end, telling them why,
                        // and they send these again when they reconnect.
                        Err(e) => {
                            let reason = format!(
                                "the primary could not write {count} device transactions ({e}); \
                                 {}: they are sent again and accepted once it can write",
                                write_failure_advice(&e)
                            );
                            tracing::error!("{reason}");
                            for w in waiting.into_iter().flatten() {
                                let _ = w.send(Err(reason.clone()));
                            }
                            self.shared.writes_failed(&sessions, reason);
                            self.note_failed_sessions(sessions);
                            // (Retries while the disk refuses: openraft waits for these.)
                            if let Some(g) = self.given_up.take() {
                                g.after_rollback();
                            }
                        }
                    }
                }
                Job::Register {
                    pubkey,
                    address,
                    info,
                    reply,
                } => {
                    let touched = [Touched::Key(pubkey.to_hex())];
                    let _ = reply.send(shared_rows::write_txn(
                        &self.conn,
                        &self.shared,
                        &touched,
                        |c| super::members::register_open(c, pubkey, &address, &info),
                    ));
                }
                job @ (Job::AuthRecord { .. } | Job::AuthDecide { .. } | Job::Presence { .. }) => {
                    let one = |j: &Job| usize::from(auth_batch::is_auth_record(j));
                    let jobs = take_batch(&mut rx, &mut next, job, one, auth_batch::MAX_BATCH);
                    auth_batch::run(&self.conn, &self.shared, jobs);
                }
                job @ Job::Seen(_) => {
                    // Many sessions end at once when a network drops: one commit for all.
                    let one = |j: &Job| usize::from(matches!(j, Job::Seen(_)));
                    let jobs = take_batch(&mut rx, &mut next, job, one, MAX_SIGHTINGS);
                    let seen: Vec<_> = jobs
                        .into_iter()
                        .filter_map(|j| match j {
                            Job::Seen(s) => Some(s),
                            _ => None,
                        })
                        .collect();
                    let touched: Vec<_> = seen.iter().map(|s| Touched::Node(s.node_id)).collect();
                    if let Err(e) =
                        shared_rows::write_txn(&self.conn, &self.shared, &touched, |c| {
                            super::members::record_sightings(c, &seen)
                        })
                    {
                        tracing::warn!(
                            "could not record when {} nodes were last seen: {e}",
                            seen.len()
                        );
                    }
                }
                Job::ReserveNodeId { pubkey, reply } => {
                    let touched = [Touched::Key(pubkey.clone())];
                    let reserved =
                        shared_rows::write_txn(&self.conn, &self.shared, &touched, |c| {
                            super::members::reserve_node_id(c, &pubkey)
                        });
                    let _ = reply.send(reserved);
                }
                Job::ReserveUserId { pubkey, reply } => {
                    let touched = [Touched::Key(pubkey.clone())];
                    let reserved =
                        shared_rows::write_txn(&self.conn, &self.shared, &touched, |c| {
                            super::members::reserve_user_id(c, &pubkey)
                        });
                    let _ = reply.send(reserved);
                }
                Job::RenumberPrimary { pubkey, reply } => {
                    let touched = [Touched::Key(pubkey.clone())];
                    let renumbered =
                        shared_rows::write_txn(&self.conn, &self.shared, &touched, |c| {
                            super::members::renumber(c, &pubkey)
                        });
                    self.shared.approved.forget(&pubkey);
                    let _ = reply.send(renumbered);
                }
                Job::BeginEpoch { reply } => {
                    let begun = super::epoch::write_marker(&self.conn, &self.shared).map(
                        |(entry, committed)| {
                            let seq = entry.seq;
                            match committed {
                                Some(response) => self.shared.announce_when_committed(
                                    response,
                                    vec![entry],
                                    Vec::new(),
                                ),
                                None => self.shared.log_committed(vec![entry], |_| None),
                            }
                            seq
                        },
                    );
                    let _ = reply.send(begun);
                }
                Job::LastDecided { node_id, reply } => {
                    let _ = reply.send(self.last_decided(node_id));
                }
                Job::Returning { node_id, reply } => {
                    let returning = self.last_decided(node_id).and_then(|last| {
                        Ok((
                            last,
                            super::primary::LogShape::read(&self.shared, &self.conn)?,
                        ))
                    });
                    let _ = reply.send(returning);
                }
                Job::Welcome {
                    node_id,
                    user_id,
                    primary_key,
                    last_decided_txn,
                    reply,
                } => {
                    self.told_last_decided = last_decided_txn;
                    let welcomed = self
                        .welcome(node_id, user_id, primary_key)
                        .and_then(|()| self.txn_ids_before_sending(last_decided_txn));
                    let _ = reply.send(welcomed);
                }
                Job::CutLog { below, reply } => {
                    let _ = reply.send(write_txn(&self.conn, |c| {
                        super::decided::checkpoint_before_cut(c, below)?;
                        log::compaction::cut(c, below)
                    }));
                }
                Job::CopiedFile { txn, reply } => {
                    self.copied_file(txn);
                    let _ = reply.send(Ok(()));
                }
                Job::NewIdentity { reply } => {
                    let _ = reply.send(self.new_identity());
                }
                Job::PrimaryMembers { members, reply } => {
                    let kept = super::secondary::keep_known_primaries(&self.conn, members).map(
                        |members| {
                            *self
                                .shared
                                .known_primaries
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()) = members;
                        },
                    );
                    let _ = reply.send(kept);
                }
                job @ Job::Entries { .. } => {
                    let entries_in = |j: &Job| match j {
                        Job::Entries { entries, .. } => entries.len(),
                        _ => 0,
                    };
                    let jobs = take_batch(&mut rx, &mut next, job, entries_in, ENTRIES_MAX);
                    self.apply_queued_entries(jobs);
                }
                Job::SnapshotBegin {
                    schema,
                    renames,
                    reply,
                } => {
                    let _ = reply.send(self.snapshot_begin(&schema, renames.as_deref()));
                }
                Job::SnapshotRows {
                    table,
                    columns,
                    rows,
                    reply,
                } => {
                    let _ = reply.send(self.snapshot_rows(&table, &columns, &rows));
                }
                Job::SnapshotEnd { seq, reply } => {
                    let _ = reply.send(self.snapshot_end(seq));
                }
                Job::LogHistory {
                    epochs,
                    resync,
                    reply,
                } => {
                    // A download over this device's data keeps the epochs only once it is
                    // complete: until then the device's position is still the old one.
                    let kept = match resync {
                        true => {
                            self.resync = Some(epochs);
                            let last_decided = self.told_last_decided;
                            write_txn(&self.conn, |c| super::resync::requeue_lost(c, last_decided))
                                .map(|resent| self.resent = resent)
                        }
                        false => write_txn(&self.conn, |c| log::epochs::keep(c, &epochs, false)),
                    };
                    let _ = reply.send(kept);
                }
                Job::SnapshotAbort => {
                    if !self.conn.is_autocommit() {
                        let _ = self.conn.execute_batch("ROLLBACK");
                    }
                    if let Err(e) = self.restore_checkpoints() {
                        tracing::warn!("cannot restore checkpoints after an aborted download: {e}");
                    }
                }
            }
            let _ = self.role;
        }
    }

    /// These sessions' work could not be written: what they queued after it is refused.
    fn note_failed_sessions(&mut self, sessions: Vec<u64>) {
        if self.failed_sessions.len() > MAX_FAILED_SESSIONS {
            self.failed_sessions.clear(); // long ended, all of them
        }
        self.failed_sessions.extend(sessions);
    }

    /// Primary: the Raft term its cluster is in (0 before it has one).
    fn raft_term(&self) -> u64 {
        let Some(proposer) = self.shared.cluster.get() else {
            return 0;
        };
        let (term, logged, applied) = {
            let m = proposer.raft().metrics().borrow().clone();
            (
                m.current_term,
                m.last_log_index,
                m.last_applied.map(|l| l.index),
            )
        };
        if self.decided.as_ref().is_some_and(|(t, _)| *t == term) || applied >= logged {
            return term;
        }
        // A new term: the decided map is read again from the file, once it holds what the
        // log holds (a new leader may still be applying its predecessor's last entries, and
        // a device's transaction among them would be decided twice).
        let raft = proposer.raft().clone();
        let caught_up = super::block_on(async move {
            raft.wait(Some(APPLY_WAIT_MAX))
                .applied_index_at_least(logged, "the log applied before deciding")
                .await
        });
        if let Err(e) = caught_up {
            tracing::warn!("deciding before the log is applied here: {e}");
        }
        term
    }

    /// Primary: the last transaction decided for `node_id`, as committed.
    fn last_decided(&mut self, node_id: u32) -> Result<u64> {
        let term = self.raft_term();
        let decided = loaded(&mut self.decided, &self.conn, term)?;
        let last = decided.last(&self.conn, &NewDecisions::default(), node_id)?;
        Ok(last.max(0) as u64)
    }

    /// Primary: decide devices' transactions, each in a savepoint, all in one commit that
    /// also holds the batch's Raft entry (written through: see `cluster::write_through`).
    /// Sessions hear of the decisions once the cluster committed them.
    fn apply_device_batch(
        &mut self,
        batch: &[(Sender, Vec<DeviceTxn>)],
    ) -> Result<(Vec<CloneFound>, u64)> {
        let started = std::time::Instant::now();
        let done = self.decide_device_batch(batch);
        self.shared
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        done
    }

    /// Counts the decisions of a batch that was committed, for `/metrics` and the console.
    fn count_decisions(&self, recorded: &[LogEntry]) {
        let now = unix_now();
        for e in recorded {
            match &e.body {
                EntryBody::Rejected { reason } => {
                    self.shared
                        .metrics
                        .rejected(e.origin_node, e.origin_txn, reason, now)
                }
                _ => {
                    self.shared.metrics.txns_accepted.inc();
                }
            }
        }
    }

    /// Returns the copies found, and the log position of the batch's last entry (0: none).
    fn decide_device_batch(
        &mut self,
        batch: &[(Sender, Vec<DeviceTxn>)],
    ) -> Result<(Vec<CloneFound>, u64)> {
        let term = self.raft_term();
        let conn = &self.conn;
        let tables = &mut self.tables;
        let decided = loaded(&mut self.decided, conn, term)?;
        let mut out = BatchOutcome::new(&self.shared.recent, &mut self.ended_by_trigger);
        let mut new = NewDecisions::default();
        let effects = &mut self.trigger_effects;
        exec(conn, "BEGIN IMMEDIATE")?;
        // The batch's Raft entry is proposed first: openraft gives it its place in the log
        // while the transactions are decided (the entry names their log positions).
        let early = self.shared.cluster.get().map(|c| (c, c.propose_early()));
        // Device transactions never change the schema.
        let decisions = (|| {
            let effects = match effects {
                Some(e) => e.prepare(conn)?.then_some(&*e),
                None => None,
            };
            tables.in_transaction(|tables| {
                decide_device_txns(conn, tables, decided, &mut new, batch, effects, &mut out)
            })?;
            decided.checkpoint_if_due(conn, &mut new)
        })();
        let BatchOutcome {
            recorded,
            clones,
            ended_now,
            ..
        } = out;
        if let Some((node, txn, reason)) = ended_now {
            self.ended_by_trigger.insert((node, txn), reason);
        }
        let last_seq = recorded.last().map_or(0, |e| e.seq);
        let proposed = match (decisions, early) {
            (Err(e), Some((cluster, Ok(early)))) => {
                self.given_up = Some(cluster.abandon(early));
                Err(e)
            }
            (Err(e), _) => Err(e),
            (Ok(()), Some((cluster, Ok(early)))) => {
                let seqs = recorded.first().zip(recorded.last());
                let seqs = seqs.map(|(first, last)| first.seq..=last.seq);
                Ok(Some(cluster.write_early(conn, early, seqs)))
            }
            (Ok(()), Some((_, Err(gave_up)))) => Ok(Some(Proposed::GaveUp(gave_up))),
            (Ok(()), None) => Ok(None),
        };
        let committed = match &proposed {
            Ok(None | Some(Proposed::InTxn(_))) => exec(conn, "COMMIT").map_err(Error::from),
            Ok(Some(Proposed::GaveUp(_))) => Err(Error::rule("applied separately")),
            Err(_) => Err(Error::rule("not decided")),
        };
        if committed.is_err() {
            let _ = exec(conn, "ROLLBACK");
            if let Some(e) = &mut self.trigger_effects {
                e.rolled_back();
            }
        }
        let users: Vec<(u32, i64)> = batch.iter().map(|(s, _)| (s.node_id, s.user_id)).collect();
        match (proposed?, committed) {
            (None, Ok(())) => {
                decided.committed(new);
                self.count_decisions(&recorded);
                self.shared
                    .log_committed(recorded, super::cluster_member::user_in(users));
                Ok((clones, last_seq))
            }
            (Some(Proposed::InTxn(t)), Ok(())) => {
                decided.committed(new);
                self.count_decisions(&recorded);
                self.shared
                    .announce_when_committed(t.committed(), recorded, users);
                Ok((clones, last_seq))
            }
            (None, Err(e)) => Err(e),
            (Some(Proposed::InTxn(t)), Err(e)) => {
                self.given_up = Some(t.not_committed());
                Err(e)
            }
            (Some(Proposed::GaveUp(g)), _) => {
                let why = g.why().to_string();
                self.given_up = Some(g);
                Err(Error::rule(format!(
                    "the cluster did not take the batch ({why})"
                )))
            }
        }
    }

    fn welcome(
        &mut self,
        node_id: u32,
        user_id: i64,
        primary_key: crate::crypto::PublicKey,
    ) -> Result<()> {
        let id = &self.shared.identity;
        // Only this thread sets the pin: it may be read now and set after the commit.
        let pin = self
            .shared
            .primary_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if id.node_id() == node_id && id.user_id() == user_id && !pin {
            return Ok(());
        }
        if id.node_id() != 0 && id.node_id() != node_id {
            return Err(Error::rule(format!(
                "the primary knows this device as node {node_id}, but its file belongs to node {}; use a fresh file",
                id.node_id()
            )));
        }
        write_txn(&self.conn, |c| {
            meta_set(c, "node_id", node_id as i64)?;
            meta_set(c, "user_id", user_id)?;
            if pin {
                // Trust on first use: from now on only this primary gets anything.
                meta_set(c, super::PRIMARY_KEY, primary_key.to_hex())?;
            }
            Ok(())
        })?;
        id.set_authorized(node_id, user_id);
        if pin {
            *self
                .shared
                .primary_key
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(primary_key);
        }
        Ok(())
    }

    /// Device: this file is a copy of another device's in use (found at transaction `txn`).
    /// Kept in the file, so that it does not sync again, even after a restart, until
    /// `PRAGMA new_identity`; the app hears it once.
    fn copied_file(&mut self, txn: u64) {
        if let Err(e) = write_txn(&self.conn, |c| meta_set(c, COPIED_FILE_KEY, txn as i64)) {
            tracing::error!("cannot note in the file that it is a copy of another device's: {e}");
        }
        let reason = Error::CopiedFile { txn }.to_string();
        let first = {
            let mut live = self.shared.live.lock().unwrap_or_else(|p| p.into_inner());
            live.sync_error = Some(reason.clone());
            live.copied_file.replace(txn).is_none()
        };
        if first {
            tracing::warn!(txn, "{reason}");
            self.shared.emit(Event::CopiedFile { txn, reason });
        }
    }

    /// Device whose file was found a copy of another device's: a new key pair replaces the
    /// file's, its node and user ids are forgotten, and its Hello names the old key
    /// (`clone_of`), so that the backend approves it afresh, knowing. Its data and pending
    /// work stay. Takes effect when the database is opened again.
    fn new_identity(&mut self) -> Result<String> {
        let refuse = |reason: &str| Error::Pragma {
            name: "new_identity".into(),
            reason: reason.into(),
        };
        if self.shared.identity.role != Some(Role::Secondary) {
            return Err(refuse(
                "only a device (node=secondary) takes a new identity",
            ));
        }
        let copied = self
            .shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .copied_file;
        if copied.is_none() {
            return Err(refuse(
                "this device's file was not found to be a copy of another device's; a new \
                 identity is for such a copy only (it would need the backend's approval again)",
            ));
        }
        let old = self.shared.keys.public_key().to_hex();
        let keys = crate::crypto::NodeKeys::generate();
        let new = keys.public_key().to_hex();
        write_txn(&self.conn, |c| {
            meta_set(c, "node_keys", keys.to_bytes())?;
            meta_set(c, super::secondary::CLONE_OF_KEY, &old)?;
            c.execute(
                "DELETE FROM _octo_meta WHERE key IN ('node_id', 'user_id', ?1)",
                [COPIED_FILE_KEY],
            )?;
            // Kept to be sent again under the old key: not this key's transactions.
            c.execute("DELETE FROM _octo_accepted", [])?;
            Ok(())
        })?;
        tracing::warn!(old = %old, new = %new, "this device takes a new key; open the database again to sync under it");
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_error = Some(format!(
            "this device has a new key ({new}), taken because its file was a copy of another \
             device's: open the database again to sync under it; the backend approves it afresh"
        ));
        Ok(new)
    }

    /// Device: the primaries decided outbox transaction ids up to `last_decided`. A healthy
    /// device has sent each of them: below the first id no earlier run sent
    /// (`outbox::note_run_start`), or sent by this run. When they go beyond both, another file
    /// sent them under this device's key: this file is a copy of it, or went back in time
    /// (restored from a backup, a VM rolled back), and the other's work under those ids is
    /// not this file's. Neither can be told from the other, nor a stolen backup from a
    /// restored one: the file stops as a copy (`copied_file`), its work kept, and goes on
    /// only under a new key approved afresh. Otherwise, before anything is sent, the file
    /// forgets that bound: from here on this run's ids may reach the primaries.
    fn txn_ids_before_sending(&mut self, last_decided: u64) -> Result<()> {
        let identity = &self.shared.identity;
        let floor = (identity.unsent_txn_from() - 1).max(
            self.shared
                .sent_txn_max
                .load(std::sync::atomic::Ordering::Acquire),
        );
        if last_decided > floor {
            let txn = floor + 1;
            self.copied_file(txn);
            return Err(Error::CopiedFile { txn });
        }
        if !self.sending_noted {
            write_txn(&self.conn, log::outbox::note_sending_begins)?;
            self.sending_noted = true;
        }
        Ok(())
    }

    /// Device: the queued messages of entries from the primaries, in one transaction; every
    /// message is answered with its outcome.
    fn apply_queued_entries(&mut self, jobs: Vec<Job>) {
        let mut entries = Vec::new();
        let mut up_to = 0;
        let mut own = log::rebase::OwnWork {
            next_txn: self.shared.identity.next_txn_id(),
            ..Default::default()
        };
        let mut replies = Vec::with_capacity(jobs.len());
        let mut sessions = Vec::new();
        for job in jobs {
            match job {
                // Entries that came after some this session could not apply: applying them
                // would move the device's position past those (they come again, in order,
                // on its next connection).
                Job::Entries { session, reply, .. } if self.failed_sessions.contains(&session) => {
                    let _ = reply.send(Err(Error::rule(
                        "earlier entries of this connection could not be applied",
                    )));
                }
                Job::Entries {
                    entries: e,
                    up_to: u,
                    own_digests: d,
                    session,
                    reply,
                } => {
                    own.digests.extend(d);
                    entries.extend(e);
                    up_to = up_to.max(u);
                    replies.push(reply);
                    sessions.push(session);
                }
                _ => {}
            }
        }
        if replies.is_empty() {
            return;
        }
        let applied = self.apply_entries(&entries, up_to, &own);
        if applied.is_err() {
            self.note_failed_sessions(sessions);
        }
        if let Err(Error::CopiedFile { txn }) = &applied {
            self.copied_file(*txn);
        }
        match applied {
            Ok(()) => replies.into_iter().for_each(|r| {
                let _ = r.send(Ok(()));
            }),
            Err(e) => {
                let message = e.to_string();
                let mut replies = replies.into_iter();
                if let Some(first) = replies.next() {
                    let _ = first.send(Err(e));
                }
                for r in replies {
                    let _ = r.send(Err(Error::io(
                        "writing entries from the primaries",
                        std::io::Error::other(message.clone()),
                    )));
                }
            }
        }
    }

    /// Device: apply a batch from the primaries with rebase of pending work.
    fn apply_entries(
        &mut self,
        entries: &[LogEntry],
        up_to: u64,
        own: &log::rebase::OwnWork,
    ) -> Result<()> {
        let my_node = self.shared.identity.node_id();
        let tables = &mut self.tables;
        let now = unix_now();
        let started = std::time::Instant::now();
        let applied = write_txn(&self.conn, |c| {
            let applied = tables
                .in_transaction(|t| log::rebase::apply_entries(c, t, my_node, own, entries))?;
            let seq = applied
                .last_seq
                .max(up_to)
                .max(meta_i64(c, "last_seq")? as u64);
            meta_set(c, "last_seq", seq as i64)?;
            meta_set(c, "last_sync", now)?;
            if let Some((txn_id, reason)) = applied.rejected.last() {
                let total = meta_i64(c, super::status::REJECTED_TOTAL_KEY)?;
                meta_set(
                    c,
                    super::status::REJECTED_TOTAL_KEY,
                    total + applied.rejected.len() as i64,
                )?;
                let r = super::status::Rejection {
                    txn_id: *txn_id,
                    reason: reason.clone(),
                    at: now,
                };
                meta_set(
                    c,
                    "last_rejected",
                    serde_json::to_string(&r).unwrap_or_default(),
                )?;
            }
            Ok(applied)
        })?;
        self.shared
            .metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::trace!(up_to, rows = applied.rows, "entries applied");
        self.shared.advance_feed(applied.last_seq.max(up_to));
        for t in &applied.accepted {
            self.shared.emit(Event::TransactionAccepted { txn_id: *t });
        }
        for (txn_id, reason) in &applied.rejected {
            self.shared.emit(Event::TransactionRejected {
                txn_id: *txn_id,
                reason: reason.clone(),
            });
        }
        if applied.rows > 0 {
            self.shared.emit(Event::DataReceived {
                seq: applied.last_seq,
                rows: applied.rows,
            });
        }
        Ok(())
    }

    fn snapshot_begin(
        &mut self,
        statements: &[String],
        renames: Option<&[crate::store::renames::Rename]>,
    ) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        // The download's commit would otherwise copy the whole database from the WAL into the
        // file before the app hears that it is ready; that copy is done just after instead.
        self.conn
            .execute_batch("PRAGMA wal_autocheckpoint=0; BEGIN IMMEDIATE")?;
        let over_data = self.resync.is_some();
        let begun = (|| {
            let set_aside = match over_data {
                true => {
                    super::resync::begin(&self.conn)?;
                    super::resync::set_aside_outdated(&self.conn, statements)?
                }
                false => Vec::new(),
            };
            for sql in statements {
                match over_data {
                    true => super::resync::apply_ddl(&self.conn, sql)?,
                    false => schema::apply_primaries_ddl(&self.conn, sql)?,
                }
            }
            // The primaries' record holds the renames this device missed (and those it saw).
            if let Some(renames) = renames {
                crate::store::renames::replace_all(&self.conn, renames)?;
            }
            super::resync::bring_back(&self.conn, set_aside)
        })();
        if begun.is_err() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        begun
    }

    fn snapshot_rows(
        &mut self,
        table: &str,
        columns: &[String],
        rows: &[(i64, Vec<Value>)],
    ) -> Result<()> {
        let Some(t) = self.tables.get(&self.conn, table)? else {
            return Err(Error::rule(format!(
                "initial download: table `{table}` is missing"
            )));
        };
        match self.resync {
            Some(_) => super::resync::rows(&self.conn, &t, columns, rows),
            None => apply::insert_rows(&self.conn, &t, columns, rows),
        }
    }

    fn snapshot_end(&mut self, seq: u64) -> Result<()> {
        let mut removed = None;
        if let Some(epochs) = self.resync.take() {
            removed = Some(super::resync::finish(&self.conn)?);
            log::epochs::keep(&self.conn, &epochs, true)?;
        }
        meta_set(&self.conn, "last_seq", seq as i64)?;
        meta_set(&self.conn, "ready", 1)?;
        meta_set(&self.conn, "last_sync", unix_now())?;
        let started = std::time::Instant::now();
        self.conn.execute_batch("COMMIT")?;
        tracing::debug!(
            micros = started.elapsed().as_micros() as u64,
            "initial download committed"
        );
        self.shared.feed.send_replace(seq);
        self.shared.emit(Event::Ready);
        if let Some(rows_removed) = removed {
            tracing::warn!(
                rows_removed,
                resent = self.resent,
                seq,
                "downloaded the primary's data again (it could not go on from this device's position)"
            );
            self.shared.resync_done();
            self.shared.emit(Event::Resynced {
                resent: self.resent,
                rows_removed,
            });
        }
        self.restore_checkpoints()
    }

    fn restore_checkpoints(&self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA wal_autocheckpoint=1000; PRAGMA wal_checkpoint(PASSIVE);")?;
        Ok(())
    }
}

/// How long a new leader's writer waits for its log to be applied before it decides.
const APPLY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Primary: the decided map, read from the file at its first use and again in each new Raft
/// `term` (a device sends the new leader again what the old one decided and never told it).
fn loaded<'a>(
    decided: &'a mut Option<(u64, Decided)>,
    conn: &Connection,
    term: u64,
) -> Result<&'a mut Decided> {
    if decided.as_ref().is_some_and(|(t, _)| *t != term) {
        *decided = None;
    }
    match decided {
        Some((_, d)) => Ok(d),
        None => Ok(&mut decided.insert((term, Decided::load(conn)?)).1),
    }
}

/// The meta key under which a device's file notes that it is a copy of another device's (the
/// transaction id where that was found).
pub(crate) const COPIED_FILE_KEY: &str = "copied_file";

/// A device's transaction as its session hands it to the writer.
#[derive(Debug)]
pub(crate) struct DeviceTxn {
    pub id: u64,
    pub changes: ChangeSet,
    /// Worked out by the session, off the writer's thread (`log::digest`).
    pub digest: TxnDigest,
}

impl DeviceTxn {
    pub fn received(id: u64, changes: ChangeSet) -> DeviceTxn {
        let digest = log::digest::of(&changes);
        DeviceTxn {
            id,
            changes,
            digest,
        }
    }
}

/// A device sent, under an id already decided, other work than the decision was about: its
/// file is a copy of another's. `at`: the sender's place in its batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CloneFound {
    pub at: usize,
    pub txn: u64,
}

/// What deciding a batch of devices' transactions gave.
struct BatchOutcome<'a> {
    /// The log's newest entries, where a resent id's decision is looked up.
    recent: &'a log::recent::Recent,
    recorded: Vec<LogEntry>,
    clones: Vec<CloneFound>,
    /// Transactions a trigger ended the batch during, before: rejected now (taken out).
    ended_earlier: &'a mut HashMap<(u32, u64), String>,
    /// The transaction a trigger ended this batch during, and why.
    ended_now: Option<(u32, u64, String)>,
}

impl<'a> BatchOutcome<'a> {
    fn new(
        recent: &'a log::recent::Recent,
        ended_earlier: &'a mut HashMap<(u32, u64), String>,
    ) -> BatchOutcome<'a> {
        BatchOutcome {
            recent,
            recorded: Vec::new(),
            clones: Vec::new(),
            ended_earlier,
            ended_now: None,
        }
    }

    /// Whether the decision of `node`'s transaction `txn` was about other work than
    /// `digest`. Only decisions still in memory (this batch, the recent window) are looked
    /// at: a device resends only what it sent before its last connection, and a copy whose
    /// id was decided longer ago hears it from the decision's digest (`Message::OwnDigests`).
    fn decided_other_work(&self, node: u32, txn: u64, digest: &TxnDigest) -> bool {
        let in_batch = self
            .recorded
            .iter()
            .rev()
            .find(|e| e.origin_node == node && e.origin_txn == txn)
            .map(|e| e.origin_digest);
        match in_batch.or_else(|| self.recent.decided_digest(node, txn)) {
            Some(Some(decided)) => decided != *digest,
            // Not known here, or decided without a digest: taken as a resend, as before.
            _ => false,
        }
    }
}

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Primary: decide each device transaction of `batch` in its own savepoint (applied, or
/// rejected and rolled back), recording the outcome in the log and in `recorded`. With
/// `effects`, the log takes what the transaction and the schema's triggers changed.
fn decide_device_txns(
    c: &Connection,
    tables: &mut Tables,
    decided: &mut Decided,
    new: &mut NewDecisions,
    batch: &[(Sender, Vec<DeviceTxn>)],
    effects: Option<&TriggerEffects>,
    out: &mut BatchOutcome,
) -> Result<()> {
    let mut inserts = apply::HeldInserts::new(c);
    for (at, (sender, txns)) in batch.iter().enumerate() {
        let mut done = decided.last(c, new, sender.node_id)?;
        let mut count = 0;
        for DeviceTxn {
            id: txn_id,
            changes: cs,
            digest,
        } in txns
        {
            if (*txn_id as i64) <= done {
                // Already decided: a resend after a lost connection, unless that decision
                // was about other work under the same id (a copy of the device's file).
                if out.decided_other_work(sender.node_id, *txn_id, digest) {
                    tracing::warn!(
                        node = sender.node_id,
                        txn = txn_id,
                        "a device sent other work under a transaction id already decided: \
                         two copies of its file are in use; its session ends"
                    );
                    out.clones.push(CloneFound { at, txn: *txn_id });
                    break;
                }
                continue;
            }
            // A transaction a trigger ended an earlier batch during is rejected unapplied.
            let body = match out.ended_earlier.remove(&(sender.node_id, *txn_id)) {
                Some(reason) => {
                    tracing::info!(node = sender.node_id, txn = txn_id, %reason, "transaction rejected");
                    EntryBody::Rejected { reason }
                }
                None => {
                    exec(c, "SAVEPOINT device_txn")?;
                    if let Some(e) = effects {
                        e.begin();
                    }
                    let applied = device_txn::apply_device_txn(
                        c,
                        tables,
                        &mut inserts,
                        *sender,
                        cs,
                        effects.is_none(),
                    )
                    .and_then(|outcome| match (outcome, effects) {
                        // What the primary's triggers wrote with it, as captured.
                        (Ok(_), Some(e)) => e.take(c),
                        (outcome, _) => Ok(outcome),
                    });
                    if c.is_autocommit() {
                        // A trigger's RAISE(ROLLBACK) ended the whole batch, not only this
                        // transaction's savepoint: the batch fails, and this transaction is rejected
                        // when its device sends it again (it failed the batch at every resend).
                        let why = match &applied {
                            Ok(Err(reason)) => reason.clone(),
                            Err(e) => e.to_string(),
                            Ok(Ok(_)) => "the transaction ended".into(),
                        };
                        let reason = format!(
                            "{ENDED_BY_TRIGGER} ({why}); a trigger should use RAISE(ABORT)"
                        );
                        effects.inspect(|e| e.forget());
                        out.ended_now = Some((sender.node_id, *txn_id, reason.clone()));
                        return Err(Error::rule(reason));
                    }
                    match applied {
                        Ok(Ok(changes)) => {
                            exec(c, "RELEASE device_txn")?;
                            EntryBody::Changes(changes)
                        }
                        Ok(Err(reason)) => {
                            exec(c, "ROLLBACK TO device_txn")?;
                            exec(c, "RELEASE device_txn")?;
                            effects.inspect(|e| e.forget());
                            tracing::info!(node = sender.node_id, txn = txn_id, %reason, "transaction rejected");
                            EntryBody::Rejected { reason }
                        }
                        Err(e) => {
                            exec(c, "ROLLBACK TO device_txn")?;
                            exec(c, "RELEASE device_txn")?;
                            effects.inspect(|e| e.forget());
                            return Err(e);
                        }
                    }
                }
            };
            let seq = log::append(c, sender.node_id, *txn_id, &body, Some(digest))?;
            out.recorded.push(LogEntry {
                seq,
                origin_node: sender.node_id,
                origin_txn: *txn_id,
                body,
                origin_digest: Some(*digest),
            });
            done = *txn_id as i64;
            count += 1;
        }
        new.record(sender.node_id, done, count);
    }
    Ok(())
}

/// How a device transaction during which a trigger ended the batch is refused.
const ENDED_BY_TRIGGER: &str =
    "a trigger of the primary ended its transaction with RAISE(ROLLBACK), taking the batch of \
     devices' transactions it was decided in with it";

/// What the operator of a primary whose writer could not write should look at.
fn write_failure_advice(e: &Error) -> &'static str {
    match e {
        Error::Rule(reason) if reason.starts_with(ENDED_BY_TRIGGER) => {
            "that transaction is rejected when its device sends it again, the others accepted"
        }
        Error::Sqlite(se) if se.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            "another connection to its file holds a write transaction open (an application's \
             transaction left open: commit or roll it back)"
        }
        _ => "if its disk is full, free space there",
    }
}
