//! A device's own accepted transactions usually come back from the primaries exactly as the
//! device made them. A row with pending work was built as its base + all that work; once the
//! base has become the old base + the accepted part, the row already *is* the new base + the
//! work still pending, and rebuilding it would only decode every pending transaction in the
//! row's range again. For a long offline queue that keeps changing one row (a counter, a
//! document) that rebuild was made once per applied batch: quadratic in the queue.
//!
//! Whether the primaries' version matches is not assumed but checked: this device folds
//! each accepted transaction over the base it had, and compares the result with the base the
//! primaries sent. Any other change to the row in the batch (another node's, a primary's
//! trigger, a rejected transaction of ours) sends it down the full rebuild.

use super::outbox::{self, RowImage};
use super::rebase::{fold, RowKey};
use crate::changes::ChangeSet;
use crate::error::Result;
use rusqlite::Connection;
use std::collections::{HashMap, HashSet};

/// The base each row should have after this device's transactions accepted in this batch.
#[derive(Default)]
pub(super) struct Predictions {
    /// Row -> its expected base (None: the row should not exist).
    expected: HashMap<RowKey, Option<RowImage>>,
    /// Rows something else changed in this batch: rebuilt in full.
    spoiled: HashSet<RowKey>,
}

impl Predictions {
    /// The rows of this device's accepted transaction `ours` must be exactly those of
    /// `theirs`, what the primaries made of it; any other row is spoiled.
    pub fn accepted(&mut self, ours: &ChangeSet, theirs: &ChangeSet) {
        let rows = |cs: &'_ ChangeSet| -> Vec<(String, i64)> {
            cs.ops
                .iter()
                .filter_map(|op| cs.row_of(op))
                .map(|(t, r)| (t.to_string(), r))
                .collect()
        };
        let same_rows = ours.ops.len() == theirs.ops.len()
            && ours
                .ops
                .iter()
                .zip(&theirs.ops)
                .all(|(a, b)| ours.row_of(a) == theirs.row_of(b));
        if same_rows {
            return;
        }
        let (mine, primaries): (HashSet<_>, HashSet<_>) = (
            rows(ours).into_iter().collect(),
            rows(theirs).into_iter().collect(),
        );
        for (tbl, rid) in mine.symmetric_difference(&primaries) {
            self.spoil(tbl, *rid);
        }
    }

    /// The base of row `key` is about to become what the primaries made of `ours`, this
    /// device's accepted transaction: fold `ours` over the base it expected.
    pub fn before_base_update(
        &mut self,
        conn: &Connection,
        key: RowKey,
        ours: &ChangeSet,
    ) -> Result<()> {
        if self.spoiled.contains(&key) {
            return Ok(());
        }
        let mut state = match self.expected.remove(&key) {
            Some(state) => state,
            None => match outbox::base_of(conn, &key.0, key.1)? {
                Some(base) => base.image,
                None => {
                    self.spoiled.insert(key);
                    return Ok(());
                }
            },
        };
        for op in &ours.ops {
            if ours.row_of(op) == Some((key.0.as_str(), key.1)) {
                state = fold(state, ours, op);
            }
        }
        self.expected.insert(key, state);
        Ok(())
    }

    /// A rejected transaction of ours: its rows are rebuilt without it.
    pub fn spoil_rows_of(&mut self, cs: &ChangeSet) {
        for (tbl, rid) in cs.ops.iter().filter_map(|op| cs.row_of(op)) {
            self.spoil(tbl, rid);
        }
    }

    /// A change this device did not predict (another node's) reached the row's base.
    pub fn spoil(&mut self, tbl: &str, rid: i64) {
        let key = (tbl.to_string(), rid);
        self.expected.remove(&key);
        self.spoiled.insert(key);
    }

    /// If the row's base is what this device predicted, its live row needs no rebuild: the
    /// base's range is narrowed to the work still pending (or the base dropped when none is)
    /// and true is returned.
    pub fn settle_if_predicted(&self, conn: &Connection, tbl: &str, rid: i64) -> Result<bool> {
        let key = (tbl.to_string(), rid);
        let Some(expected) = self.expected.get(&key) else {
            return Ok(false);
        };
        let Some(base) = outbox::base_of(conn, tbl, rid)? else {
            return Ok(false);
        };
        let (Some(first), Some(last)) = (base.first, base.last) else {
            return Ok(false);
        };
        if !same_row(&base.image, expected) {
            return Ok(false);
        }
        let first_pending = outbox::first_pending_in(conn, first, last)?;
        outbox::narrow_base(conn, tbl, rid, first_pending)?;
        Ok(true)
    }
}

/// The same columns with the same values, in any order.
fn same_row(a: &Option<RowImage>, b: &Option<RowImage>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.columns.len() == b.columns.len()
                && a.columns
                    .iter()
                    .zip(&a.values)
                    .all(|(c, v)| b.get(c) == Some(v))
        }
        _ => false,
    }
}
