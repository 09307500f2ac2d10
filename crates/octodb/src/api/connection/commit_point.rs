//! A primary app's transaction in the cluster: at the statement that commits it, its log
//! entries are proposed to the primaries' Raft group and their Raft entry is written in the
//! same SQLite transaction (`cluster::write_through`), so an app's commit costs one fsync as
//! before and takes its place in the Raft log in the order of the primaries' log.
//!
//! Which statement commits: `COMMIT`/`END`, a statement the engine wrapped in a transaction,
//! and a `RELEASE` of the savepoint that opened the transaction (tracked by name here, as
//! SQLite matches them: the most recent savepoint of that name, case-insensitively). A
//! transaction committed in a way not recognized here gets its Raft entry just after its
//! commit instead ([`Connection::propose_committed`]), which a cluster of one takes alike.

use super::Connection;
use crate::api::sql_text;
use crate::cluster::Proposed;
use crate::error::{Error, Result};
use crate::log::{self, LogEntry};
use crate::store;

/// How long a COMMIT waits for a cluster of several primaries to hold its transaction.
const CONFIRM_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A follower's transaction the leader wrote but its cluster did not confirm.
fn forwarded_unconfirmed(why: &str) -> Error {
    Error::Cluster(format!(
        "the transaction was committed by the cluster's leader, but the cluster did not \
         confirm it ({why}): its leader changed or lost its majority. It may be lost if another \
         primary leads: check whether it is there (PRAGMA sync_status names the leader) and \
         write it again if not"
    ))
}

fn unconfirmed(why: &str) -> Error {
    Error::Cluster(format!(
        "the transaction was committed on this primary, but its cluster did not confirm it \
         ({why}): its leader changed or lost its majority. It may be lost if another primary \
         leads: check whether it is there (PRAGMA sync_status names the leader) and write it \
         again if not"
    ))
}

/// A transaction's Raft entry written in it, and its entries to announce once committed.
pub(crate) struct InFlight {
    txn: crate::cluster::InTxn,
    entries: Vec<LogEntry>,
}

impl Connection {
    /// Notes the savepoints of a transaction that a `SAVEPOINT` opened (phase 3, before the
    /// statement runs; `in_txn`: one was open before it).
    pub(super) fn track_savepoint(&self, word: &str, sql: &str, in_txn: bool) {
        let mut names = self.savepoints.borrow_mut();
        match word {
            "SAVEPOINT" if !in_txn => {
                names.clear();
                names.extend(savepoint_name(sql, &["SAVEPOINT"]));
            }
            "SAVEPOINT" if !names.is_empty() => {
                if let Some(name) = savepoint_name(sql, &["SAVEPOINT"]) {
                    names.push(name);
                } else {
                    names.clear(); // unreadable: no RELEASE is taken for the commit
                }
            }
            "RELEASE" => {
                let name = savepoint_name(sql, &["RELEASE", "SAVEPOINT"]);
                match name.and_then(|n| names.iter().rposition(|s| *s == n)) {
                    Some(i) => names.truncate(i),
                    None => names.clear(),
                }
            }
            "COMMIT" | "END" | "ROLLBACK" if !sql_text::words(sql).any(|w| w == "TO") => {
                names.clear()
            }
            _ => {}
        }
    }

    /// Whether `RELEASE` `sql` releases the savepoint that opened the transaction: SQLite
    /// releases the most recent savepoint of that name and all after it.
    pub(super) fn release_commits(&self, sql: &str) -> bool {
        let names = self.savepoints.borrow();
        savepoint_name(sql, &["RELEASE", "SAVEPOINT"])
            .is_some_and(|name| names.iter().rposition(|s| *s == name) == Some(0))
    }

    /// The transaction is about to commit (its changes flushed into the log): on a primary in
    /// a cluster, propose its entries and write their Raft entry in it. If the cluster does
    /// not take them, the transaction is rolled back and this says so.
    ///
    /// On a follower the transaction goes to the leader instead ([`Self::forward_to_leader`]);
    /// once it is decided and applied here, an empty transaction is opened for `word`, the
    /// statement that commits (COMMIT, END, RELEASE; the engine's own COMMIT: "COMMIT"), to end.
    pub(super) fn propose_before_commit(&self, word: &str) -> Result<()> {
        self.refuse_oversized()?;
        self.refuse_unreplicable_schema()?;
        let Some(proposer) = self.node.as_ref().and_then(|n| n.shared.cluster.get()) else {
            return Ok(());
        };
        let entries = self.txn_entries()?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        // (Just elected, it waits for a majority's answer before taking its own way.)
        let leads =
            || crate::node::block_on(proposer.leads_once_confirmed(crate::cluster::LEADERLESS_MAX));
        if self.leader_followed() && !leads() {
            let base_seq = first.seq - 1;
            return self.forward_to_leader(proposer, base_seq, entries, &self.reopen_for(word));
        }
        let seqs = first.seq..=last.seq;
        // (The engine's own write: the authorizer lets it through.)
        let batch = crate::cluster::Batch::Txns { seqs };
        let proposed = self.internal(|| Ok(proposer.propose_in_txn(&self.conn, batch)))?;
        match proposed {
            Proposed::InTxn(txn) => {
                *self.in_flight.borrow_mut() = Some(InFlight { txn, entries });
                Ok(())
            }
            Proposed::GaveUp(gave_up) => {
                let _ = self.internal_sql("ROLLBACK");
                let why = gave_up.why().to_string();
                gave_up.after_rollback();
                Err(Error::Unavailable(format!(
                    "the primaries' cluster did not take this transaction ({why}): it was \
                     rolled back; try it again",
                )))
            }
        }
    }

    /// A transaction whose changes could not travel in one message (`wire_size`) is rolled
    /// back here, with the reason, rather than committed and stuck on its way.
    fn refuse_oversized(&self) -> Result<()> {
        let bytes = match self.repl.as_ref().map(|r| r.role) {
            Some(crate::uri::Role::Primary) => self
                .committed
                .borrow()
                .iter()
                .map(crate::wire_size::entry_bound)
                .sum(),
            Some(crate::uri::Role::Secondary) => self
                .outbox_added
                .borrow()
                .as_ref()
                .map_or(0, crate::wire_size::change_set_bound),
            None => 0,
        };
        if bytes <= crate::wire_size::MAX_TXN_BYTES {
            return Ok(());
        }
        let _ = self.internal_sql("ROLLBACK");
        tracing::warn!(
            bytes,
            "a transaction too large to replicate was rolled back"
        );
        Err(crate::wire_size::too_large(bytes))
    }

    /// A primary's transaction that changed the schema is rolled back if it leaves a table
    /// replication cannot carry (a `row_owner` column on a WITHOUT ROWID table): such a table
    /// was accepted, and its rows never went anywhere, with nothing said.
    fn refuse_unreplicable_schema(&self) -> Result<()> {
        if self.repl.as_ref().map(|r| r.role) != Some(crate::uri::Role::Primary) {
            return Ok(());
        }
        let changed_schema = self.committed.borrow().iter().any(|e| {
            matches!(&e.body, log::EntryBody::Changes(cs)
                if cs.ops.iter().any(|op| matches!(op, crate::changes::Op::Ddl { .. })))
        });
        if !changed_schema {
            return Ok(());
        }
        let checked = self.internal(|| {
            store::schema::user_tables(&self.conn)?
                .iter()
                .try_for_each(|t| {
                    store::schema::check_replicable(t)?;
                    store::schema::check_conflict_clauses(&self.conn, t)
                })
        });
        if let Err(e) = checked {
            let _ = self.internal_sql("ROLLBACK");
            return Err(e);
        }
        Ok(())
    }

    /// Whether this primary follows another in its cluster: its app's replicated writes go to
    /// the leader.
    pub(super) fn leader_followed(&self) -> bool {
        self.node.as_ref().is_some_and(|n| {
            n.shared.cluster.get().is_some() && !n.shared.cluster_view.borrow().leading
        })
    }

    /// The statement that opens an empty transaction for `word` (COMMIT, END or the RELEASE
    /// of the transaction's first savepoint) to end, once a follower's transaction went to the
    /// leader.
    fn reopen_for(&self, word: &str) -> String {
        match (word, self.savepoints.borrow().first()) {
            ("RELEASE", Some(name)) => format!("SAVEPOINT \"{}\"", name.replace('"', "\"\"")),
            _ => "BEGIN".into(),
        }
    }

    /// A follower's transaction: rolled back here, its effects sent to the leader (with the
    /// log position it began at, for the leader's conflict check: `cluster::forward`), and
    /// once a majority holds them, waited for until this primary has applied them too, so that
    /// the connection reads its own write. Any failure leaves nothing of it anywhere, except
    /// where it says the outcome is unknown.
    fn forward_to_leader(
        &self,
        proposer: &crate::cluster::Proposer,
        base_seq: u64,
        entries: Vec<LogEntry>,
        reopen: &str,
    ) -> Result<()> {
        use crate::cluster::forward::{ForwardOutcome, Forwarded};
        let local_rows = self.local_rows_in_txn.replace(false);
        let local_tables = self.unreplicated_tables_written();
        let bodies = entries.into_iter().map(|e| e.body).collect();
        // (The internal rollback cannot fail but for a closed connection.)
        let _ = self.internal_sql("ROLLBACK");
        self.committed.borrow_mut().clear();
        self.rolled_back();
        if let Some(tables) = local_tables? {
            return Err(Error::rule(format!(
                "on a follower, a transaction that changes replicated rows is decided by the \
                 cluster's leader, which receives only those rows; this one also wrote {tables}, \
                 which do not replicate. Write those in a transaction of their own, or run this \
                 one on the leader. It was rolled back"
            )));
        }
        if local_rows {
            return Err(Error::rule(
                "on a follower, a transaction that changes replicated rows is decided by the \
                 cluster's leader, which receives only those rows; this one also changed rows \
                 that stay local (row_owner NULL), itself or through a trigger. Change them in a \
                 transaction of their own, or run this one on the leader; a trigger keeping \
                 such rows can keep them in a table without row_owner instead (triggers keep \
                 those on every primary). It was rolled back",
            ));
        }
        // A primary whose Raft node stopped (its file diverged from its cluster's) would have
        // the leader commit the transaction and then could not confirm it: the app heard of
        // a failure for a write that was made (the failover walkthrough), and retried it.
        if proposer.raft().metrics().borrow().running_state.is_err() {
            return Err(Error::Unavailable(
                "this primary's Raft node stopped (its sync_error says why), so it can neither \
                 decide nor confirm a transaction: open the database again (it then rejoins its \
                 cluster), or write on another primary. Nothing of the transaction was sent or \
                 applied"
                    .into(),
            ));
        }
        let txn = Forwarded { base_seq, bodies };
        let outcome = crate::node::block_on(proposer.forward(txn, CONFIRM_WAIT_MAX));
        let last_seq = match outcome {
            Ok(ForwardOutcome::Committed { last_seq }) => last_seq,
            Ok(ForwardOutcome::Conflict { reason }) => return Err(Error::Conflict(reason)),
            Ok(ForwardOutcome::Refused { reason }) => {
                return Err(Error::Cluster(format!(
                    "this primary follows its cluster's leader, which did not apply the \
                     transaction: {reason}. Nothing of it was applied; try it again"
                )))
            }
            Err(Error::Unavailable(reason)) => {
                return Err(Error::Unavailable(format!(
                    "{reason}. This primary follows its cluster's leader; nothing of the \
                     transaction was sent or applied: try it again"
                )))
            }
            Ok(ForwardOutcome::Unavailable { reason }) => {
                return Err(Error::Unavailable(format!(
                    "this primary follows its cluster's leader, which could not take the \
                     transaction now: {reason}. Nothing of it was applied; try it again"
                )))
            }
            Ok(ForwardOutcome::Unconfirmed { reason }) => {
                return Err(forwarded_unconfirmed(&reason))
            }
            Err(e) => {
                return Err(Error::Cluster(format!(
                    "this primary follows its cluster's leader, and the transaction's outcome \
                     is unknown: {e}. It may have been applied: check whether it is there \
                     (PRAGMA sync_status names the leader) and write it again if not"
                )))
            }
        };
        let mut applied = proposer.rows_applied();
        let raft = proposer.raft().clone();
        let caught_up = crate::node::block_on(async move {
            // (A Raft node that stops meanwhile applies nothing more: no use waiting.)
            let applying = async {
                tokio::time::timeout(CONFIRM_WAIT_MAX, applied.wait_for(|seq| *seq >= last_seq))
                    .await
                    .is_ok_and(|r| r.is_ok())
            };
            tokio::select! {
                biased;
                caught_up = applying => caught_up,
                () = crate::cluster::raft_stopped(&raft) => false,
            }
        });
        if !caught_up {
            // (A Raft node that stopped applies nothing more until the node opens again.)
            let stopped = proposer.raft().metrics().borrow().running_state.is_err();
            return Err(Error::Cluster(if stopped {
                format!(
                    "the transaction was committed by the cluster (log position {last_seq}), \
                     but this primary's Raft node stopped before applying it (its sync_error \
                     says why): the other primaries have it; this one shows it once it is \
                     opened again"
                )
            } else {
                format!(
                    "the transaction was committed by the cluster (log position {last_seq}) but \
                     this primary has not applied it within 10 s: it will, and reads here show \
                     it from then on"
                )
            }));
        }
        self.internal(|| {
            store::exec(&self.conn, reopen)?;
            // The ids this transaction took stay taken (the reservation went with the rollback).
            if let Some(node) = &self.node {
                let next = node.identity().next_row_seq();
                store::reserve_ids(&self.conn, store::ROW_SEQ_KEY, next - 1)?;
            }
            Ok(())
        })
    }

    /// The tables that do not replicate which the open transaction's statements wrote
    /// themselves (their triggers' writes aside: those run again where the leader's entry is
    /// applied), named for an error; None if none.
    fn unreplicated_tables_written(&self) -> Result<Option<String>> {
        let written = std::mem::take(&mut super::authz::lock(&self.authz).direct_writes);
        if written.is_empty() {
            return Ok(None);
        }
        let unreplicated: Vec<String> = self.internal(|| {
            Ok(crate::store::schema::user_tables(&self.conn)?
                .into_iter()
                .filter(|t| !t.is_replicated())
                .map(|t| t.name)
                .collect())
        })?;
        // (A table the transaction dropped or renamed is not among them: its rows went with
        // the schema statement, which replicates. DROP TABLE counts as a write to the table,
        // so such a transaction, or SQLite's table rebuild, was refused on a follower.)
        let local: Vec<String> = written
            .into_iter()
            .filter(|t| unreplicated.iter().any(|u| u.eq_ignore_ascii_case(t)))
            .map(|t| format!("`{t}`"))
            .collect();
        Ok((!local.is_empty()).then(|| local.join(", ")))
    }

    /// The log entries of the open transaction, as they stand in the file.
    fn txn_entries(&self) -> Result<Vec<LogEntry>> {
        let kept = self.committed.borrow();
        let Some(first) = kept.first() else {
            return Ok(Vec::new());
        };
        if !self.rolled_back_within.get() {
            return Ok(kept.clone());
        }
        // A `ROLLBACK TO` may have taken some back: read what is left (every entry after the
        // transaction's first is its own: it holds the write lock).
        log::read_after(&self.conn, first.seq - 1, usize::MAX >> 1)
    }

    /// After the statement that ended the transaction: its Raft entry is durable if it
    /// committed (announce it once the cluster commits it), voided if not. Returns whether a
    /// Raft entry was in flight, or an error when the transaction committed here and a
    /// cluster of several primaries did not confirm it.
    ///
    /// With other primaries, the COMMIT returns only once a majority holds the transaction:
    /// a leader that dies right after answering must not take a commit its app was told of
    /// with it (the next leader would not have it). A cluster of one confirms at once.
    pub(super) fn settle_in_flight(&self, committed: bool) -> Result<bool> {
        let Some(InFlight { txn, entries }) = self.in_flight.borrow_mut().take() else {
            return Ok(false);
        };
        let node = match (committed, &self.node) {
            (true, Some(node)) => node,
            _ => {
                txn.not_committed().after_rollback();
                return Ok(true);
            }
        };
        let response = txn.committed();
        if node.shared.cluster_view.borrow().members.len() <= 1 {
            node.shared
                .announce_when_committed(response, entries, Vec::new());
            return Ok(true);
        }
        let confirmed = crate::node::block_on(async {
            tokio::time::timeout(CONFIRM_WAIT_MAX, response.wait()).await
        });
        match confirmed {
            Ok(Ok(_)) => {
                node.committed_local(entries);
                Ok(true)
            }
            Ok(Err(e)) => Err(unconfirmed(&e.to_string())),
            Err(_) => Err(unconfirmed("no answer within 10 s")),
        }
    }

    /// A transaction committed without its Raft entry (a commit not recognized above, such as
    /// a `RELEASE` of a savepoint whose name was not readable): propose its entries now.
    pub(super) fn propose_committed(&self, entries: Vec<LogEntry>) -> bool {
        let Some(node) = &self.node else { return false };
        let Some(proposer) = node.shared.cluster.get() else {
            return false;
        };
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return false;
        };
        tracing::debug!("a transaction committed before its Raft entry was written");
        let response = proposer.propose_committed(first.seq..=last.seq);
        node.shared
            .announce_when_committed(response, entries, Vec::new());
        true
    }
}

/// The savepoint named by `sql` after the leading keywords `skip` (each optional after the
/// first), as SQLite compares it: unquoted, ASCII case folded. None if unreadable.
fn savepoint_name(sql: &str, skip: &[&str]) -> Option<String> {
    let mut rest = sql_text::strip_leading(sql);
    for (i, word) in skip.iter().enumerate() {
        let head: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        if head.eq_ignore_ascii_case(word) {
            rest = sql_text::strip_leading(&rest[head.len()..]);
        } else if i == 0 {
            return None;
        }
    }
    let name = match rest.chars().next()? {
        q @ ('"' | '`' | '\'') => {
            let mut out = String::new();
            let mut chars = rest[1..].chars().peekable();
            loop {
                match chars.next()? {
                    c if c == q && chars.peek() == Some(&q) => {
                        chars.next();
                        out.push(q);
                    }
                    c if c == q => break,
                    c => out.push(c),
                }
            }
            out
        }
        '[' => rest[1..].split(']').next()?.to_string(),
        _ => rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
            .collect(),
    };
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::savepoint_name;

    #[test]
    fn savepoint_names_read_as_sqlite_compares_them() {
        let skip = &["RELEASE", "SAVEPOINT"];
        assert_eq!(savepoint_name("RELEASE a", skip).as_deref(), Some("a"));
        assert_eq!(
            savepoint_name("release savepoint Ab", skip).as_deref(),
            Some("ab")
        );
        assert_eq!(
            savepoint_name(" RELEASE \"x \"\"y\"", skip).as_deref(),
            Some("x \"y")
        );
        assert_eq!(
            savepoint_name("RELEASE [sp 1]", skip).as_deref(),
            Some("sp 1")
        );
        assert_eq!(
            savepoint_name("SAVEPOINT `q`", &["SAVEPOINT"]).as_deref(),
            Some("q")
        );
        assert_eq!(savepoint_name("RELEASE", skip), None);
        assert_eq!(savepoint_name("COMMIT", skip), None);
    }
}
