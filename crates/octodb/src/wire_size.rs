//! How much of the log or the outbox one message may carry. A node refuses an incoming message
//! larger than its `HandshakeOptions::max_message` (64 MiB by default) and drops the
//! connection: a sender that put 2,000 big transactions in one message, or a device that
//! committed one transaction of 100 MiB, stalled its peer for good. So senders cut their
//! batches to [`STREAM_BUDGET`], and a transaction larger than [`MAX_TXN_BYTES`] is refused
//! when it commits, with the reason, instead of being stuck on its way.

use crate::changes::{ChangeSet, Op};
use crate::log::{EntryBody, LogEntry};
use crate::value::Value;

/// The bytes of log entries a primary puts in one message to a device, and of transactions a
/// device puts in one message to its primary (more when one alone is larger). A node keeps
/// what it received one message at a time, so on a link that drops every few megabytes a
/// catch-up in 16 MiB messages never moved (network walkthrough: 44 reconnects, 174 MB
/// received, no progress), nor did a device's backlog (offline-heavy walkthrough: 5,000
/// transactions, none through in six connections); in 1 MiB messages each connection keeps
/// what it carried. Beyond a megabyte, bigger messages save nothing measurable.
pub const STREAM_BUDGET: usize = 1 << 20;

/// The largest change set a transaction may make to replicated tables: it travels whole in
/// one message (with room under the default 64 MiB limit for the message's framing).
pub const MAX_TXN_BYTES: usize = 48 << 20;

/// Room for a length or an integer as a varint, or a tag.
const VARINT: usize = 10;

fn value_bound(v: &Value) -> usize {
    1 + match v {
        Value::Null => 0,
        Value::Integer(_) => VARINT,
        Value::Real(_) => 8,
        Value::Text(s) => VARINT + s.len(),
        Value::Blob(b) => VARINT + b.len(),
    }
}

fn text_bound(s: &str) -> usize {
    VARINT + s.len()
}

/// At least the size of `cs` encoded, from the lengths of what it holds (no encoding).
pub fn change_set_bound(cs: &ChangeSet) -> usize {
    let headers: usize = cs
        .tables
        .iter()
        .map(|t| {
            text_bound(&t.name) + VARINT + t.columns.iter().map(|c| text_bound(c)).sum::<usize>()
        })
        .sum();
    let ops: usize = cs
        .ops
        .iter()
        .map(|op| {
            // Tag, table, row id, changed columns, number of values.
            5 * VARINT
                + match op {
                    Op::Insert { values, .. }
                    | Op::Update { values, .. }
                    | Op::Upsert { values, .. } => values.iter().map(value_bound).sum(),
                    Op::Delete { owner, .. } => value_bound(owner),
                    Op::Ddl { sql, .. } => text_bound(sql),
                }
        })
        .sum();
    2 * VARINT + headers + ops
}

/// At least the size of `entry` on the wire.
pub fn entry_bound(entry: &LogEntry) -> usize {
    4 * VARINT
        + match &entry.body {
            EntryBody::Changes(cs) => change_set_bound(cs),
            EntryBody::Rejected { reason } => text_bound(reason),
            EntryBody::Epoch { .. } => VARINT,
        }
}

/// `items` cut, in order, into runs whose sizes add up to at most `budget` (an item larger
/// than the budget makes a run of its own).
pub fn runs_within<T>(items: Vec<T>, budget: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut used = 0;
    for item in items {
        let n = size(&item);
        match runs.last_mut() {
            Some(run) if used + n <= budget => run.push(item),
            _ => {
                runs.push(vec![item]);
                used = 0;
            }
        }
        used += n;
    }
    runs
}

/// The error of a transaction too large to replicate (`bytes` at least), as SQLite's own
/// "too big" (sqlite3 raises it as DataError).
pub fn too_large(bytes: usize) -> crate::Error {
    crate::Error::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
        Some(format!(
            "this transaction changes about {} MiB of replicated rows; a transaction may change \
             at most {} MiB, as it is sent whole in one message: it was rolled back; split it \
             into smaller transactions (or keep large data out of replicated tables)",
            bytes >> 20,
            MAX_TXN_BYTES >> 20
        )),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_stay_within_the_budget_and_keep_the_order() {
        let runs = runs_within(vec![3, 3, 3, 9, 1, 1], 6, |n| *n);
        assert_eq!(runs, vec![vec![3, 3], vec![3], vec![9], vec![1, 1]]);
        assert!(runs_within(Vec::<usize>::new(), 6, |n| *n).is_empty());
    }

    #[test]
    fn the_bound_is_at_least_the_encoded_size() {
        let mut cs = ChangeSet::default();
        let t = cs.table_index("t", &["id".into(), "v".into(), "row_owner".into()]);
        for i in 0..100 {
            cs.ops.push(Op::Insert {
                table: t,
                rowid: i << 32,
                values: vec![
                    Value::Integer(i64::MIN + i),
                    Value::Blob(vec![7; (i as usize) * 37]),
                    Value::Text("*".into()),
                ],
            });
        }
        cs.ops.push(Op::Ddl {
            sql: "CREATE TABLE x(y)".into(),
            private: false,
        });
        assert!(change_set_bound(&cs) >= cs.encode().len());
    }
}
