//! The primary's side of the writer: deciding devices' transactions, a batch at a time, in
//! one commit with the batch's Raft entry.

use super::*;

impl Writer {
    /// Primary: the Raft term its cluster is in (0 before it has one).
    pub(super) fn raft_term(&self) -> u64 {
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
        let caught_up = crate::node::block_on(async move {
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
    pub(super) fn last_decided(&mut self, node_id: u32) -> Result<u64> {
        let term = self.raft_term();
        let decided = loaded(&mut self.decided, &self.conn, term)?;
        let last = decided.last(&self.conn, &NewDecisions::default(), node_id)?;
        Ok(last.max(0) as u64)
    }

    /// Primary: decide devices' transactions, each in a savepoint, all in one commit that
    /// also holds the batch's Raft entry (written through: see `cluster::write_through`).
    /// Sessions hear of the decisions once the cluster committed them.
    pub(super) fn apply_device_batch(
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
    pub(super) fn count_decisions(&self, recorded: &[LogEntry]) {
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
    pub(super) fn decide_device_batch(
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
                    .log_committed(recorded, crate::node::cluster_member::user_in(users));
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
    pub(super) fn new(
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
    pub(super) fn decided_other_work(&self, node: u32, txn: u64, digest: &TxnDigest) -> bool {
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
