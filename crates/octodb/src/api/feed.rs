//! The change feed: the rows committed on a primary, in log order, for the services built on
//! the engine (the object broker's invalidations, the task queue's workers and rules).
//!
//! It is the primaries' log read back, so it holds every change to a replicated table
//! (one with `row_owner`) whoever made it: the app's SQL on this primary, a device's
//! transaction, a batch another primary decided (on a follower). Tables without `row_owner`
//! are not in the log, so not in the feed.
//!
//! Only what the cluster has committed is shown: a consumer never acts on a change that a
//! fail-over could take back. The position moves on after the commit; [`wait_feed`] wakes on
//! it, so a consumer needs no polling:
//!
//! ```no_run
//! # fn follow(conn: &octodb::Connection) -> octodb::Result<()> {
//! use std::time::Duration;
//! let mut after = conn.feed_position();
//! loop {
//!     conn.wait_feed(after, Duration::from_secs(1));
//!     let batch = conn.changes_after(after, 256)?;
//!     for change in &batch.changes {
//!         println!("{} row {} of {}", change.seq, change.rowid, change.table);
//!     }
//!     after = batch.up_to;
//! }
//! # }
//! ```
//!
//! [`wait_feed`]: crate::Connection::wait_feed

use crate::changes::{ChangeSet, Op};
use crate::error::Result;
use crate::log::{self, EntryBody};
use crate::value::Value;

/// What a change did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The row was inserted or updated; `values` are the whole row as it now is.
    Upsert,
    /// The row was deleted; `values` are empty.
    Delete,
}

/// One row changed by a committed transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The log position of the transaction that made it.
    pub seq: u64,
    /// The node whose transaction it was (this primary's own id for the app's writes on it).
    pub origin_node: u32,
    pub table: String,
    pub rowid: i64,
    pub kind: ChangeKind,
    /// The table's columns, in the order of `values`.
    pub columns: Vec<String>,
    pub values: Vec<Value>,
}

impl Change {
    /// The value of `column` (names compare as SQLite's do, ignoring ASCII case).
    pub fn get(&self, column: &str) -> Option<&Value> {
        let i = self
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(column))?;
        self.values.get(i)
    }
}

/// The changes of the log entries after a position, as far as one read went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedBatch {
    pub changes: Vec<Change>,
    /// Every entry up to this position was read: continue after it. It moves on over
    /// entries without row changes too (a rejected transaction, a schema statement).
    pub up_to: u64,
}

/// Reads the entries in `(after, position]`, at most `max_entries`, from `conn`.
pub(crate) fn read(
    conn: &rusqlite::Connection,
    after: u64,
    position: u64,
    max_entries: usize,
) -> Result<FeedBatch> {
    let mut batch = FeedBatch {
        changes: Vec::new(),
        up_to: after,
    };
    // A reader carrying on from a position past the end would miss every change until the
    // feed passed it (Python walkthrough), so it is told at once.
    if after > position {
        return Err(crate::Error::FeedAhead {
            after,
            end: position,
        });
    }
    if position == after || max_entries == 0 {
        return Ok(batch);
    }
    let start = log::compaction::start(conn)?;
    if after + 1 < start {
        return Err(crate::Error::LogCompacted { after, start });
    }
    let wanted = max_entries.min((position - after) as usize);
    for entry in log::read_after(conn, after, wanted)? {
        if entry.seq > position {
            break;
        }
        batch.up_to = entry.seq;
        if let EntryBody::Changes(cs) = &entry.body {
            rows_of(&mut batch.changes, entry.seq, entry.origin_node, cs);
        }
    }
    Ok(batch)
}

fn rows_of(out: &mut Vec<Change>, seq: u64, origin_node: u32, cs: &ChangeSet) {
    for op in &cs.ops {
        let Some((table, rowid, values)) = op.row() else {
            continue;
        };
        let Some(header) = cs.header(table) else {
            continue;
        };
        let kind = match op {
            Op::Delete { .. } => ChangeKind::Delete,
            _ => ChangeKind::Upsert,
        };
        out.push(Change {
            seq,
            origin_node,
            table: header.name.clone(),
            rowid,
            kind,
            columns: header.columns.clone(),
            values: values.map(<[Value]>::to_vec).unwrap_or_default(),
        });
    }
}
