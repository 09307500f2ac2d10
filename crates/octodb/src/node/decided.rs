//! Primary: the last transaction decided (accepted or rejected) for each node, which makes a
//! transaction that a device sends again after a lost connection a no-op.
//!
//! Every decision is in the log (`origin_node`, `origin_txn`), committed with its effects.
//! `_octo_nodes.last_txn` is a checkpoint of those decisions as of a log position kept in
//! `_octo_meta` (`decided_upto`), written every [`CHECKPOINT_EVERY`] decisions rather than at
//! every commit: a device's transaction then writes one page fewer (its node's row), which is
//! a third of the pages of a one-row transaction. On start, the log after the checkpoint is
//! folded in.

use crate::error::Result;
use crate::store::{meta_get, meta_set};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{HashMap, HashSet};

/// Decisions between two checkpoints: what a restart reads back from the log at most (besides
/// the primary's own entries).
const CHECKPOINT_EVERY: usize = 1000;
const META_KEY: &str = "decided_upto";

/// The decided transactions this writer knows, and which of them the checkpoint lacks.
#[derive(Debug, Default)]
pub(super) struct Decided {
    last: HashMap<u32, i64>,
    unsaved: HashSet<u32>,
    since_checkpoint: usize,
}

/// Decisions made inside a write transaction, kept aside until it commits (were it rolled
/// back, a resent transaction must not be taken as decided).
#[derive(Debug, Default)]
pub(super) struct NewDecisions {
    last: HashMap<u32, i64>,
    count: usize,
    checkpointed: bool,
}

impl NewDecisions {
    /// `node`'s transactions up to `txn` are decided, `count` more of them in this batch.
    pub fn record(&mut self, node: u32, txn: i64, count: usize) {
        self.last.insert(node, txn);
        self.count += count;
    }
}

impl Decided {
    /// What the file says: the checkpoint, and the log after it.
    pub fn load(c: &Connection) -> Result<Decided> {
        let mut decided = Decided::default();
        // Without a checkpoint of its own (a primary that only followed so far, whose
        // `last_txn` came from its leader's checkpoints; one that rejoined; a file from before
        // checkpoints), the whole log is folded in.
        let upto = meta_get::<i64>(c, META_KEY)?.unwrap_or(0);
        let mut stmt = c.prepare(
            "SELECT origin_node, max(origin_txn) FROM _octo_log
             WHERE seq > ?1 AND origin_txn > 0 GROUP BY origin_node",
        )?;
        let after: Vec<(u32, i64)> = stmt
            .query_map([upto], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (node, txn) in after {
            let saved = saved_last(c, node)?;
            decided.last.insert(node, txn.max(saved));
            decided.unsaved.insert(node);
        }
        if !decided.unsaved.is_empty() {
            tracing::info!(
                nodes = decided.unsaved.len(),
                "decided transactions recovered from the log after the last checkpoint"
            );
        }
        Ok(decided)
    }

    /// The last transaction decided for `node` (0: none), counting those of `new`.
    pub fn last(&mut self, c: &Connection, new: &NewDecisions, node: u32) -> Result<i64> {
        if let Some(&txn) = new.last.get(&node).or_else(|| self.last.get(&node)) {
            return Ok(txn);
        }
        let txn = saved_last(c, node)?;
        self.last.insert(node, txn);
        Ok(txn)
    }

    /// Inside the write transaction of `new`: writes the checkpoint when it is due.
    pub fn checkpoint_if_due(&self, c: &Connection, new: &mut NewDecisions) -> Result<()> {
        if self.since_checkpoint + new.count < CHECKPOINT_EVERY {
            return Ok(());
        }
        let mut latest: HashMap<u32, i64> = self
            .unsaved
            .iter()
            .filter_map(|n| self.last.get(n).map(|&t| (*n, t)))
            .collect();
        latest.extend(new.last.iter().map(|(&n, &t)| (n, t)));
        let mut stmt =
            c.prepare_cached("UPDATE _octo_nodes SET last_txn = ?2 WHERE node_id = ?1")?;
        for (node, txn) in latest {
            stmt.execute(params![node, txn])?;
        }
        meta_set(c, META_KEY, max_seq(c)?)?;
        new.checkpointed = true;
        Ok(())
    }

    /// The write transaction of `new` committed: its decisions count from now on.
    pub fn committed(&mut self, new: NewDecisions) {
        if new.checkpointed {
            self.unsaved.clear();
            self.since_checkpoint = 0;
        } else {
            self.unsaved.extend(new.last.keys().copied());
            self.since_checkpoint += new.count;
        }
        self.last.extend(new.last);
    }
}

/// Makes sure a checkpoint covers every decision in the log below `below`, writing one of all
/// decisions now if not: the log before `below` is about to go (`log::compaction`), and a
/// restart folds in only the log after the checkpoint. Inside a write transaction.
pub(super) fn checkpoint_before_cut(c: &Connection, below: u64) -> Result<()> {
    let upto = meta_get::<i64>(c, META_KEY)?.unwrap_or(0);
    if upto + 1 >= below as i64 {
        return Ok(());
    }
    let all = Decided::load(c)?;
    let mut stmt = c.prepare_cached("UPDATE _octo_nodes SET last_txn = ?2 WHERE node_id = ?1")?;
    for (node, txn) in &all.last {
        stmt.execute(params![node, txn])?;
    }
    meta_set(c, META_KEY, max_seq(c)?)?;
    Ok(())
}

fn saved_last(c: &Connection, node: u32) -> Result<i64> {
    Ok(
        c.prepare_cached("SELECT last_txn FROM _octo_nodes WHERE node_id = ?1")?
            .query_row([node], |r| r.get(0))
            .optional()?
            .unwrap_or(0),
    )
}

fn max_seq(c: &Connection) -> Result<i64> {
    Ok(
        c.prepare_cached("SELECT coalesce(max(seq), 0) FROM _octo_log")?
            .query_row([], |r| r.get(0))?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary_file() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&c).unwrap();
        for node in [5, 6] {
            c.execute(
                "INSERT INTO _octo_nodes(node_id, pubkey, node_type, auth_state)
                 VALUES (?1, ?2, 'secondary', 'approved')",
                params![node, format!("key{node}")],
            )
            .unwrap();
        }
        c
    }

    fn log(c: &Connection, node: u32, txn: i64) {
        c.execute(
            "INSERT INTO _octo_log(origin_node, origin_txn, body) VALUES (?1, ?2, x'00')",
            params![node, txn],
        )
        .unwrap();
    }

    #[test]
    fn decisions_after_the_checkpoint_are_read_back_from_the_log() {
        let c = primary_file();
        assert!(Decided::load(&c).unwrap().last.is_empty());
        // A crash after these commits, before any checkpoint: only the log has them.
        for txn in 1..=3 {
            log(&c, 5, txn);
        }
        log(&c, 6, 2);
        log(&c, 1, 0); // the primary's own write
        let mut d = Decided::load(&c).unwrap();
        let none = NewDecisions::default();
        assert_eq!(d.last(&c, &none, 5).unwrap(), 3);
        assert_eq!(d.last(&c, &none, 6).unwrap(), 2);
        assert_eq!(d.last(&c, &none, 7).unwrap(), 0);
    }

    #[test]
    fn decisions_count_only_once_committed_and_are_checkpointed_in_time() {
        let c = primary_file();
        let mut d = Decided::load(&c).unwrap();
        let mut new = NewDecisions::default();
        new.record(5, 10, 10);
        assert_eq!(
            d.last(&c, &new, 5).unwrap(),
            10,
            "seen inside its transaction"
        );
        drop(new); // rolled back
        assert_eq!(d.last(&c, &NewDecisions::default(), 5).unwrap(), 0);

        let mut txn = 0;
        while txn < CHECKPOINT_EVERY as i64 + 5 {
            txn += 1;
            log(&c, 5, txn);
            let mut new = NewDecisions::default();
            new.record(5, txn, 1);
            d.checkpoint_if_due(&c, &mut new).unwrap();
            let checkpointed = new.checkpointed;
            d.committed(new);
            if checkpointed {
                break;
            }
        }
        assert_eq!(
            txn, CHECKPOINT_EVERY as i64,
            "a checkpoint every {CHECKPOINT_EVERY}"
        );
        assert_eq!(saved_last(&c, 5).unwrap(), txn);
        assert_eq!(
            meta_get::<i64>(&c, META_KEY).unwrap(),
            Some(max_seq(&c).unwrap())
        );
        assert!(
            Decided::load(&c).unwrap().last.is_empty(),
            "nothing left to recover"
        );
    }
}
