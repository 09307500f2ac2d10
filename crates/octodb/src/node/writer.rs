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

mod device;
mod primary_batch;

pub(crate) use device::COPIED_FILE_KEY;
pub(crate) use primary_batch::{CloneFound, DeviceTxn};

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
}

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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
