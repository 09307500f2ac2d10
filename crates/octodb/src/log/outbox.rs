//! A device's durable outbox: its transactions not yet accepted by the primaries, in commit
//! order, with the primaries' version of each row they touched (the base) so that a rejected
//! transaction can be taken back.

use crate::changes::ChangeSet;
use crate::error::Result;
use crate::store::capture::{Captured, RowChange};
use crate::store::meta_i64;
use crate::value::Value;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// A row image with its column names, so it stays meaningful if the schema changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowImage {
    pub columns: Vec<String>,
    pub values: Vec<Value>,
}

impl RowImage {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
    pub fn decode(b: &[u8]) -> Result<RowImage> {
        postcard::from_bytes(b)
            .map_err(|e| crate::Error::rule(format!("octodb: bad row image: {e}")))
    }
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.columns
            .iter()
            .position(|c| c == column)
            .and_then(|i| self.values.get(i))
    }
}

/// A new outbox transaction id (inside the write transaction that uses it).
pub fn next_txn_id(conn: &Connection) -> Result<u64> {
    let id = meta_i64(conn, "last_txn_id")? + 1;
    crate::store::meta_set(conn, "last_txn_id", id)?;
    Ok(id as u64)
}

/// Add the replicated part of a committed transaction to outbox transaction `txn_id`, and to
/// `sent` (the transaction's changes as they will be sent). Returns whether anything was added.
pub fn append(
    conn: &Connection,
    txn_id: u64,
    captured: &[Captured],
    sent: &mut ChangeSet,
) -> Result<bool> {
    let mut ord: i64 = conn
        .prepare_cached("SELECT coalesce(max(ord), 0) FROM _octo_pending WHERE txn_id = ?1")?
        .query_row([txn_id as i64], |r| r.get(0))?;
    let mut added = false;
    for c in captured {
        let Captured::Row(rc) = c else { continue };
        // The op refers to its header in `sent`; stored alone, it refers to header 0.
        let Some(op) = rc.to_op(sent) else {
            continue;
        };
        let stored =
            crate::changes::encode_single(&rc.layout.name, &rc.layout.columns, &op.with_table(0));
        sent.ops.push(op);
        save_base(conn, rc)?;
        ord += 1;
        conn.prepare_cached(
            "INSERT INTO _octo_pending(txn_id, ord, tbl, rid, change) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            txn_id as i64,
            ord,
            rc.layout.name,
            rc.rowid,
            stored
        ])?;
        added = true;
    }
    if added {
        conn.prepare_cached("INSERT OR IGNORE INTO _octo_outbox(txn_id, created_at) VALUES (?1, unixepoch('subsec'))")?
            .execute([txn_id as i64])?;
    }
    Ok(added)
}

/// Keep the row as it was before any pending work touched it (the first pending change wins).
fn save_base(conn: &Connection, rc: &RowChange) -> Result<()> {
    let image = rc.before.as_ref().map(|v| {
        RowImage {
            columns: rc.layout.columns.clone(),
            values: v.clone(),
        }
        .encode()
    });
    conn.prepare_cached("INSERT OR IGNORE INTO _octo_base(tbl, rid, row) VALUES (?1, ?2, ?3)")?
        .execute(params![rc.layout.name, rc.rowid, image])?;
    Ok(())
}

/// Pending transactions with id greater than `after`, oldest first, at most `limit`.
pub fn read_after(conn: &Connection, after: u64, limit: usize) -> Result<Vec<(u64, ChangeSet)>> {
    let ids: Vec<i64> = conn
        .prepare_cached(
            "SELECT txn_id FROM _octo_outbox WHERE txn_id > ?1 ORDER BY txn_id LIMIT ?2",
        )?
        .query_map(params![after as i64, limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push((id as u64, pending_changes(conn, id as u64)?));
    }
    Ok(out)
}

/// The changes of one pending transaction, merged into one change set.
pub fn pending_changes(conn: &Connection, txn_id: u64) -> Result<ChangeSet> {
    let mut stmt =
        conn.prepare_cached("SELECT change FROM _octo_pending WHERE txn_id = ?1 ORDER BY ord")?;
    let mut rows = stmt.query([txn_id as i64])?;
    let mut cs = ChangeSet::default();
    while let Some(r) = rows.next()? {
        let one = decode_change(&r.get::<_, Vec<u8>>(0)?)?;
        for op in &one.ops {
            cs.push_from(&one, op);
        }
    }
    Ok(cs)
}

pub fn decode_change(b: &[u8]) -> Result<ChangeSet> {
    ChangeSet::decode(b).map_err(|e| crate::Error::rule(format!("octodb: bad pending change: {e}")))
}

pub fn len(conn: &Connection) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM _octo_outbox")?
        .query_row([], |r| r.get::<_, i64>(0))? as u64)
}

pub fn contains(conn: &Connection, txn_id: u64) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM _octo_outbox WHERE txn_id = ?1")?
        .query_row([txn_id as i64], |_| Ok(()))
        .optional()?
        .is_some())
}
