//! A device's durable outbox: its transactions not yet accepted by the primaries, in commit
//! order, with the primaries' version of each row they touched (the base) so that a rejected
//! transaction can be taken back.
//!
//! A transaction is stored as its change set (one blob per flush, usually one per
//! transaction), not as a row per changed row: the commit path then writes one bookkeeping
//! row per changed row (its base) instead of three b-tree entries. Each base row carries the
//! range of outbox transactions that touched it, which is where its pending work is found.

use crate::changes::ChangeSet;
use crate::error::Result;
use crate::store::capture::Captured;
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
    captured: Vec<Captured>,
    sent: &mut ChangeSet,
) -> Result<bool> {
    let mut part = ChangeSet::default();
    let mut bases = Bases::new(conn, txn_id);
    for c in captured {
        let Captured::Row(rc) = c else { continue };
        let (layout, rowid) = (rc.layout.clone(), rc.rowid);
        let before = rc.before.as_ref().map(|values| {
            RowImage {
                columns: layout.columns.clone(),
                values: values.clone(),
            }
            .encode()
        });
        let Some(op) = rc.into_op(&mut part) else {
            continue;
        };
        bases.note(&layout.name, rowid, before)?;
        part.ops.push(op);
    }
    bases.flush()?;
    if part.is_empty() {
        return Ok(false);
    }
    // A transaction is flushed again after each savepoint it releases: one part per flush.
    conn.prepare_cached(
        "INSERT INTO _octo_outbox_part(txn_id, part, changes)
         SELECT ?1, coalesce(max(part), 0) + 1, ?2 FROM _octo_outbox_part WHERE txn_id = ?1",
    )?
    .execute(params![txn_id as i64, part.encode()])?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO _octo_outbox(txn_id, created_at) VALUES (?1, unixepoch('subsec'))",
    )?
    .execute([txn_id as i64])?;
    sent.extend(part);
    Ok(true)
}

/// Rows noted as changed by one outbox transaction, written to `_octo_base` a batch at a
/// time: each row keeps its version from before any pending work touched it (the first
/// pending change wins), and the range of pending transactions that touched it extends to
/// this one.
struct Bases<'c> {
    conn: &'c Connection,
    txn_id: i64,
    batch: Vec<(String, i64, Option<Vec<u8>>)>,
}

/// Rows per statement (4 parameters each, under SQLite's default limit of 999).
const BASES_PER_STATEMENT: usize = 64;

impl<'c> Bases<'c> {
    fn new(conn: &'c Connection, txn_id: u64) -> Bases<'c> {
        Bases {
            conn,
            txn_id: txn_id as i64,
            batch: Vec::with_capacity(BASES_PER_STATEMENT),
        }
    }

    fn note(&mut self, table: &str, rowid: i64, before: Option<Vec<u8>>) -> Result<()> {
        self.batch.push((table.to_string(), rowid, before));
        if self.batch.len() == BASES_PER_STATEMENT {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare_cached(&UPSERT_BASES_SQL[self.batch.len() - 1])?;
        for (i, (table, rowid, before)) in self.batch.iter().enumerate() {
            let at = i * 4;
            stmt.raw_bind_parameter(at + 1, table)?;
            stmt.raw_bind_parameter(at + 2, rowid)?;
            stmt.raw_bind_parameter(at + 3, before)?;
            stmt.raw_bind_parameter(at + 4, self.txn_id)?;
        }
        stmt.raw_execute()?;
        self.batch.clear();
        Ok(())
    }
}

/// The upsert of 1 to [`BASES_PER_STATEMENT`] base rows (index: rows - 1), made once rather than
/// at every commit.
static UPSERT_BASES_SQL: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| (1..=BASES_PER_STATEMENT).map(upsert_bases_sql).collect());

fn upsert_bases_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|i| {
            let p = i * 4;
            format!(
                "(?{}, ?{}, ?{}, ?{}, ?{})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 4
            )
        })
        .collect();
    format!(
        "INSERT INTO _octo_base(tbl, rid, row, first_txn, last_txn) VALUES {}
         ON CONFLICT(tbl, rid) DO UPDATE
           SET first_txn = coalesce(first_txn, excluded.first_txn), last_txn = excluded.last_txn",
        values.join(", ")
    )
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
    let mut stmt = conn
        .prepare_cached("SELECT changes FROM _octo_outbox_part WHERE txn_id = ?1 ORDER BY part")?;
    let mut rows = stmt.query([txn_id as i64])?;
    let mut cs = ChangeSet::default();
    while let Some(r) = rows.next()? {
        cs.extend(decode_change(
            r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?,
        )?);
    }
    Ok(cs)
}

/// Remove transaction `txn_id` from the outbox; returns its changes.
pub fn remove(conn: &Connection, txn_id: u64) -> Result<ChangeSet> {
    let changes = pending_changes(conn, txn_id)?;
    conn.prepare_cached("DELETE FROM _octo_outbox_part WHERE txn_id = ?1")?
        .execute([txn_id as i64])?;
    conn.prepare_cached("DELETE FROM _octo_outbox WHERE txn_id = ?1")?
        .execute([txn_id as i64])?;
    Ok(changes)
}

/// The ids of the pending transactions in `first..=last`, oldest first: those that may have
/// touched a row whose base carries that range.
pub fn txns_in(conn: &Connection, first: u64, last: u64) -> Result<Vec<u64>> {
    Ok(conn
        .prepare_cached(
            "SELECT txn_id FROM _octo_outbox WHERE txn_id BETWEEN ?1 AND ?2 ORDER BY txn_id",
        )?
        .query_map(params![first as i64, last as i64], |r| r.get::<_, i64>(0))?
        .map(|r| r.map(|id| id as u64))
        .collect::<rusqlite::Result<_>>()?)
}

/// A row's base: the primaries' version of it (None: the row does not exist there) and the
/// range of outbox transactions that touched it.
pub struct Base {
    pub image: Option<RowImage>,
    pub first: Option<i64>,
    pub last: Option<i64>,
}

/// The base of a row, if work is pending on it.
pub fn base_of(conn: &Connection, tbl: &str, rid: i64) -> Result<Option<Base>> {
    type Stored = (Option<Vec<u8>>, Option<i64>, Option<i64>);
    let stored: Option<Stored> = conn
        .prepare_cached(
            "SELECT row, first_txn, last_txn FROM _octo_base WHERE tbl = ?1 AND rid = ?2",
        )?
        .query_row(params![tbl, rid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    stored
        .map(|(row, first, last)| {
            Ok(Base {
                image: row.map(|b| RowImage::decode(&b)).transpose()?,
                first,
                last,
            })
        })
        .transpose()
}

/// The work pending on a row now starts at outbox transaction `first` (what came before was
/// accepted); with None, nothing is pending on it any more and its base goes.
pub fn narrow_base(conn: &Connection, tbl: &str, rid: i64, first: Option<i64>) -> Result<()> {
    match first {
        None => conn
            .prepare_cached("DELETE FROM _octo_base WHERE tbl = ?1 AND rid = ?2")?
            .execute(params![tbl, rid])?,
        Some(f) => conn
            .prepare_cached("UPDATE _octo_base SET first_txn = ?3 WHERE tbl = ?1 AND rid = ?2")?
            .execute(params![tbl, rid, f])?,
    };
    Ok(())
}

/// The (table, row id) of every row change in `cs`.
pub fn rows_of(cs: &ChangeSet) -> impl Iterator<Item = (&str, i64)> + '_ {
    cs.ops.iter().filter_map(|op| cs.row_of(op))
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

/// Bring an outbox written by an older octodb (one `_octo_pending` row per changed row) to
/// this layout, keeping every pending transaction. Runs inside the caller's write transaction.
pub fn upgrade(conn: &Connection) -> Result<()> {
    let base_has_range: bool = conn
        .prepare(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info('_octo_base') WHERE name = 'last_txn')",
        )?
        .query_row([], |r| r.get(0))?;
    if !base_has_range {
        conn.execute_batch(
            "ALTER TABLE _octo_base ADD COLUMN first_txn INTEGER;
             ALTER TABLE _octo_base ADD COLUMN last_txn INTEGER;",
        )?;
    }
    let old_layout: bool = conn
        .prepare("SELECT EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_octo_pending')")?
        .query_row([], |r| r.get(0))?;
    if !old_layout {
        return Ok(());
    }
    let txns: Vec<i64> = conn
        .prepare("SELECT txn_id FROM _octo_outbox ORDER BY txn_id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for txn in &txns {
        let mut cs = ChangeSet::default();
        let mut stmt =
            conn.prepare("SELECT change FROM _octo_pending WHERE txn_id = ?1 ORDER BY ord")?;
        let mut rows = stmt.query([txn])?;
        while let Some(r) = rows.next()? {
            cs.extend(decode_change(
                r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?,
            )?);
        }
        conn.execute(
            "INSERT INTO _octo_outbox_part(txn_id, part, changes) VALUES (?1, 1, ?2)",
            params![txn, cs.encode()],
        )?;
    }
    conn.execute_batch(
        "UPDATE _octo_base SET
           first_txn = (SELECT min(txn_id) FROM _octo_pending p WHERE p.tbl = _octo_base.tbl AND p.rid = _octo_base.rid),
           last_txn = (SELECT max(txn_id) FROM _octo_pending p WHERE p.tbl = _octo_base.tbl AND p.rid = _octo_base.rid);
         DROP TABLE _octo_pending;",
    )?;
    tracing::info!(
        transactions = txns.len(),
        "outbox moved to one entry per transaction"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Op;

    fn one_change(op: Op) -> Vec<u8> {
        let mut cs = ChangeSet::default();
        cs.table_index("t", &["id".to_string(), "row_owner".to_string()]);
        cs.ops.push(op);
        cs.encode()
    }

    fn insert(rowid: i64) -> Op {
        Op::Insert {
            table: 0,
            rowid,
            values: vec![Value::Integer(rowid), Value::Integer(3)],
        }
    }

    #[test]
    fn an_outbox_of_the_row_per_change_layout_keeps_every_pending_transaction() {
        let conn = Connection::open_in_memory().unwrap();
        // The layout octodb wrote before one entry per transaction.
        conn.execute_batch(
            "CREATE TABLE _octo_outbox(txn_id INTEGER PRIMARY KEY, created_at REAL);
             CREATE TABLE _octo_pending(
                 txn_id INTEGER NOT NULL, ord INTEGER NOT NULL, tbl TEXT NOT NULL,
                 rid INTEGER NOT NULL, change BLOB NOT NULL, PRIMARY KEY(txn_id, ord));
             CREATE TABLE _octo_base(
                 tbl TEXT NOT NULL, rid INTEGER NOT NULL, row BLOB, PRIMARY KEY(tbl, rid)) WITHOUT ROWID;
             INSERT INTO _octo_outbox VALUES (4, 0), (9, 0);
             INSERT INTO _octo_base VALUES ('t', 5, NULL), ('t', 6, NULL);",
        )
        .unwrap();
        let pending = [(4, 1, 5), (4, 2, 6), (9, 1, 5)];
        for (txn, ord, rid) in pending {
            conn.execute(
                "INSERT INTO _octo_pending VALUES (?1, ?2, 't', ?3, ?4)",
                params![txn, ord, rid, one_change(insert(rid))],
            )
            .unwrap();
        }
        crate::store::init_internal_schema(&conn).unwrap();
        crate::store::write_txn(&conn, upgrade).unwrap();

        let rows = |txn| {
            let cs = pending_changes(&conn, txn).unwrap();
            rows_of(&cs)
                .map(|(t, r)| format!("{t}{r}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(4), ["t5", "t6"]);
        assert_eq!(rows(9), ["t5"]);
        let ranges: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT rid, first_txn, last_txn FROM _octo_base ORDER BY rid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(ranges, [(5, 4, 9), (6, 4, 4)]);
        let old_left: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = '_octo_pending'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_left, 0);
        // Running again (every start does) changes nothing.
        crate::store::write_txn(&conn, upgrade).unwrap();
        assert_eq!(rows(4), ["t5", "t6"]);
    }
}
