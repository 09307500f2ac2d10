//! A device's durable outbox: its transactions not yet accepted by the primaries, in commit
//! order, with the primaries' version of each row they touched (the base) so that a rejected
//! transaction can be taken back.
//!
//! A transaction is stored as its change set (one blob per flush, usually one per
//! transaction), not as a row per changed row: the commit path then writes one bookkeeping
//! row per changed row (its base) instead of three b-tree entries. Each base row carries the
//! range of outbox transactions that touched it, which is where its pending work is found.
//!
//! The parts of all transactions live in one rowid table, `_octo_undecided`, keyed by
//! [`part_id`]: a transaction is a range of row ids, so an app's commit adds one b-tree entry
//! for it (a table of transactions beside a table of parts with its own index wrote three
//! b-trees, a page or more each, on every commit).

use crate::changes::ChangeSet;
use crate::error::Result;
use crate::store::capture::{Captured, Identity};
use crate::store::meta_i64;
use crate::store::schema::TableLayout;
use crate::value::Value;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub mod accepted;
pub mod decisions;
mod upgrade;
pub use upgrade::upgrade;

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

/// Bits of a part's row id that number the parts of one transaction.
const PART_BITS: u32 = 24;
const LAST_PART: i64 = (1 << PART_BITS) - 1;
/// Transaction ids fit in the row ids left above the parts' bits.
const MAX_TXN_ID: u64 = (i64::MAX >> PART_BITS) as u64;

/// The row id of part `part` of transaction `txn` (parts count from 1; part 0 is the
/// transaction's own lower bound).
fn part_id(txn: u64, part: i64) -> i64 {
    ((txn as i64) << PART_BITS) | part
}

fn txn_of(part_id: i64) -> u64 {
    (part_id >> PART_BITS) as u64
}

/// The meta key of the bound on the outbox transaction ids handed out (see
/// [`crate::store::reserve_ids`]).
const TXN_ID_KEY: &str = "last_txn_id";

/// A new outbox transaction id, inside the write transaction that uses it.
pub fn new_txn_id(conn: &Connection, identity: &Identity) -> Result<u64> {
    let txn = identity.alloc_txn_id();
    if txn > MAX_TXN_ID {
        return Err(crate::Error::rule(format!(
            "octodb: this device has used all {MAX_TXN_ID} transaction ids; \
             sign it up again as a new device"
        )));
    }
    crate::store::reserve_ids(conn, TXN_ID_KEY, txn as i64)?;
    Ok(txn)
}

/// At a clean close: the transaction ids reserved beyond the last one handed out are given
/// back ([`crate::store::release_ids`]).
pub fn release_unused_txn_ids(conn: &Connection, identity: &Identity) -> Result<()> {
    crate::store::release_ids(conn, TXN_ID_KEY, identity.next_txn_id() as i64 - 1)
}

/// The meta key of the first outbox transaction id that no run of the node has sent, kept
/// from one run to the next while none of them connects to a primary.
const UNSENT_FROM_KEY: &str = "unsent_txn_from";

/// A device's run starts, handing out ids from `next_txn`: returns the first id no run has
/// sent, the lowest since the last run that connected (none of the ids a run hands out is
/// sent before it connects, and [`note_sending_begins`] forgets the bound when it does).
pub fn note_run_start(conn: &Connection, next_txn: u64) -> Result<u64> {
    let kept: Option<i64> = crate::store::meta_get(conn, UNSENT_FROM_KEY)?;
    let from = kept.map_or(next_txn, |k| (k.max(1) as u64).min(next_txn));
    crate::store::meta_set(conn, UNSENT_FROM_KEY, from as i64)?;
    Ok(from)
}

/// This run is about to send its first transaction: from now on any id it hands out may
/// reach the primaries. Durable before anything is sent.
pub fn note_sending_begins(conn: &Connection) -> Result<()> {
    conn.prepare_cached("DELETE FROM _octo_meta WHERE key = ?1")?
        .execute([UNSENT_FROM_KEY])?;
    Ok(())
}

/// The highest outbox transaction id this file may have handed out: where a node's counter
/// resumes after a restart.
pub fn last_txn_id(conn: &Connection) -> Result<u64> {
    let reserved = meta_i64(conn, TXN_ID_KEY)?;
    let in_outbox: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM _octo_undecided")?
        .query_row([], |r| r.get(0))?;
    Ok(reserved.max(0).max(txn_of(in_outbox) as i64) as u64)
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
        bases.note(layout, rowid, before)?;
        part.ops.push(op);
    }
    bases.flush()?;
    if part.is_empty() {
        return Ok(false);
    }
    // A transaction is flushed again after each savepoint it releases: one part per flush.
    let mut id = last_part_id(conn, txn_id)? + 1;
    if id > part_id(txn_id, LAST_PART) {
        id = merge_parts(conn, txn_id)? + 1;
    }
    insert_part(conn, id, &part)?;
    sent.extend(part);
    Ok(true)
}

fn insert_part(conn: &Connection, id: i64, changes: &ChangeSet) -> Result<()> {
    conn.prepare_cached("INSERT INTO _octo_undecided(id, changes) VALUES (?1, ?2)")?
        .execute(params![id, changes.encode()])?;
    Ok(())
}

/// The row id of the last part of `txn` (its part 0 when it has none).
fn last_part_id(conn: &Connection, txn: u64) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT max(id) FROM _octo_undecided WHERE id BETWEEN ?1 AND ?2")?
        .query_row(params![part_id(txn, 0), part_id(txn, LAST_PART)], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(part_id(txn, 0)))
}

/// Rewrites the parts of `txn` as its first part alone (when a transaction has released
/// more savepoints than it has part numbers); returns that part's row id.
fn merge_parts(conn: &Connection, txn: u64) -> Result<i64> {
    let merged = pending_changes(conn, txn)?;
    delete_parts(conn, txn)?;
    let id = part_id(txn, 1);
    insert_part(conn, id, &merged)?;
    Ok(id)
}

fn delete_parts(conn: &Connection, txn: u64) -> Result<()> {
    conn.prepare_cached("DELETE FROM _octo_undecided WHERE id BETWEEN ?1 AND ?2")?
        .execute(params![part_id(txn, 0), part_id(txn, LAST_PART)])?;
    Ok(())
}

/// Rows noted as changed by one outbox transaction, written to `_octo_base` a batch at a
/// time: each row keeps its version from before any pending work touched it (the first
/// pending change wins), and the range of pending transactions that touched it extends to
/// this one.
struct Bases<'c> {
    conn: &'c Connection,
    txn_id: i64,
    /// (table, row id, base image); the table by its layout, which every change shares.
    batch: Vec<(Arc<TableLayout>, i64, Option<Vec<u8>>)>,
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

    fn note(&mut self, table: Arc<TableLayout>, rowid: i64, before: Option<Vec<u8>>) -> Result<()> {
        self.batch.push((table, rowid, before));
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
            stmt.raw_bind_parameter(at + 1, table.name.as_str())?;
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
    let mut stmt =
        conn.prepare_cached("SELECT id, changes FROM _octo_undecided WHERE id > ?1 ORDER BY id")?;
    let mut rows = stmt.query([part_id(after, LAST_PART)])?;
    let mut out: Vec<(u64, ChangeSet)> = Vec::new();
    while let Some(r) = rows.next()? {
        let txn = txn_of(r.get(0)?);
        let part = decode_change(r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?)?;
        if let Some((last, cs)) = out.last_mut() {
            if *last == txn {
                cs.extend(part);
                continue;
            }
        }
        if out.len() == limit {
            break;
        }
        out.push((txn, part));
    }
    Ok(out)
}

/// The changes of one pending transaction, merged into one change set.
pub fn pending_changes(conn: &Connection, txn_id: u64) -> Result<ChangeSet> {
    let mut stmt = conn.prepare_cached(
        "SELECT changes FROM _octo_undecided WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
    )?;
    let mut rows = stmt.query(params![part_id(txn_id, 0), part_id(txn_id, LAST_PART)])?;
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
    delete_parts(conn, txn_id)?;
    Ok(changes)
}

/// The ids of the pending transactions in `first..=last`, oldest first: those that may have
/// touched a row whose base carries that range.
pub fn txns_in(conn: &Connection, first: u64, last: u64) -> Result<Vec<u64>> {
    let mut txns: Vec<u64> = conn
        .prepare_cached("SELECT id FROM _octo_undecided WHERE id BETWEEN ?1 AND ?2 ORDER BY id")?
        .query_map(params![part_id(first, 0), part_id(last, LAST_PART)], |r| {
            r.get::<_, i64>(0)
        })?
        .map(|r| r.map(txn_of))
        .collect::<rusqlite::Result<_>>()?;
    txns.dedup();
    Ok(txns)
}

/// The oldest pending transaction in `first..=last`, if any.
pub fn first_pending_in(conn: &Connection, first: i64, last: i64) -> Result<Option<i64>> {
    let id: Option<i64> = conn
        .prepare_cached("SELECT min(id) FROM _octo_undecided WHERE id BETWEEN ?1 AND ?2")?
        .query_row(
            params![part_id(first as u64, 0), part_id(last as u64, LAST_PART)],
            |r| r.get(0),
        )?;
    Ok(id.map(|id| txn_of(id) as i64))
}

/// Deletes the base of a row on which no work is pending any more; returns whether it did.
/// (A pending transaction inside the row's range that did not touch it keeps the base: the
/// replay then finds nothing to do on it and drops it.)
pub fn drop_base_if_settled(conn: &Connection, tbl: &str, rid: i64) -> Result<bool> {
    // The range of part ids of transactions first_txn..=last_txn (see `part_id`).
    const _: () = assert!(PART_BITS == 24);
    let deleted = conn
        .prepare_cached(
            "DELETE FROM _octo_base WHERE tbl = ?1 AND rid = ?2
               AND NOT EXISTS(SELECT 1 FROM _octo_undecided
                              WHERE id BETWEEN (_octo_base.first_txn << 24)
                                           AND (_octo_base.last_txn << 24) + 16777215)",
        )?
        .execute(params![tbl, rid])?;
    Ok(deleted > 0)
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

/// Every row with pending work here (a base in `_octo_base`), as (table, row id).
pub fn rows_with_base(conn: &Connection) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached("SELECT tbl, rid FROM _octo_base")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The (table, row id) of every row change in `cs`.
pub fn rows_of(cs: &ChangeSet) -> impl Iterator<Item = (&str, i64)> + '_ {
    cs.ops.iter().filter_map(|op| cs.row_of(op))
}

pub fn decode_change(b: &[u8]) -> Result<ChangeSet> {
    ChangeSet::decode(b).map_err(|e| crate::Error::rule(format!("octodb: bad pending change: {e}")))
}

/// Pending transactions.
pub fn len(conn: &Connection) -> Result<u64> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT count(DISTINCT id >> {PART_BITS}) FROM _octo_undecided"
        ))?
        .query_row([], |r| r.get::<_, i64>(0))? as u64)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::changes::Op;

    pub(super) fn one_change(op: Op) -> Vec<u8> {
        let mut cs = ChangeSet::default();
        cs.table_index("t", &["id".to_string(), "row_owner".to_string()]);
        cs.ops.push(op);
        cs.encode()
    }

    pub(super) fn insert(rowid: i64) -> Op {
        Op::Insert {
            table: 0,
            rowid,
            values: vec![Value::Integer(rowid), Value::Integer(3)],
        }
    }

    pub(super) fn rows_of_txn(conn: &Connection, txn: u64) -> Vec<i64> {
        let cs = pending_changes(conn, txn).unwrap();
        rows_of(&cs).map(|(_, r)| r).collect()
    }

    /// An outbox with `parts` parts of one row each per transaction.
    fn outbox_of(txns: &[(u64, &[i64])]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&conn).unwrap();
        for (txn, rids) in txns {
            for rid in *rids {
                let id = last_part_id(&conn, *txn).unwrap() + 1;
                conn.execute(
                    "INSERT INTO _octo_undecided(id, changes) VALUES (?1, ?2)",
                    params![id, one_change(insert(*rid))],
                )
                .unwrap();
            }
        }
        conn
    }

    #[test]
    fn transactions_are_read_whole_in_order_and_up_to_the_limit() {
        let conn = outbox_of(&[(3, &[1, 2, 3]), (4, &[4]), (7, &[5, 6])]);
        let read = |after, limit| -> Vec<(u64, Vec<i64>)> {
            read_after(&conn, after, limit)
                .unwrap()
                .into_iter()
                .map(|(t, cs)| (t, rows_of(&cs).map(|(_, r)| r).collect()))
                .collect()
        };
        assert_eq!(
            read(0, 10),
            [(3, vec![1, 2, 3]), (4, vec![4]), (7, vec![5, 6])]
        );
        assert_eq!(read(0, 2), [(3, vec![1, 2, 3]), (4, vec![4])]);
        assert_eq!(read(4, 10), [(7, vec![5, 6])]);
        assert_eq!(read(7, 10), []);
        assert_eq!(txns_in(&conn, 1, 6).unwrap(), [3, 4]);
        assert_eq!(first_pending_in(&conn, 5, 9).unwrap(), Some(7));
        assert_eq!(first_pending_in(&conn, 5, 6).unwrap(), None);
        assert_eq!(len(&conn).unwrap(), 3);

        assert_eq!(remove(&conn, 3).unwrap().ops.len(), 3);
        assert_eq!(txns_in(&conn, 1, 9).unwrap(), [4, 7]);
        assert_eq!(last_txn_id(&conn).unwrap(), 7);
    }

    #[test]
    fn a_transaction_out_of_part_numbers_is_merged_into_one_part() {
        let conn = outbox_of(&[(3, &[1, 2, 3]), (4, &[4])]);
        assert_eq!(merge_parts(&conn, 3).unwrap(), part_id(3, 1));
        assert_eq!(last_part_id(&conn, 3).unwrap(), part_id(3, 1));
        assert_eq!(rows_of_txn(&conn, 3), [1, 2, 3]);
        assert_eq!(rows_of_txn(&conn, 4), [4], "its neighbour untouched");
    }

    #[test]
    fn the_first_unsent_id_is_kept_across_runs_until_one_of_them_sends() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&conn).unwrap();
        assert_eq!(note_run_start(&conn, 10).unwrap(), 10);
        // A run that never reached a primary: ids from 10 on are still unsent.
        assert_eq!(note_run_start(&conn, 20).unwrap(), 10);
        note_sending_begins(&conn).unwrap();
        assert_eq!(note_run_start(&conn, 30).unwrap(), 30);
    }

    #[test]
    fn a_transaction_id_is_never_handed_out_twice_across_restarts() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&conn).unwrap();
        let mut handed_out = Vec::new();
        for _restart in 0..3 {
            let me = Identity::new(None, 0, 0, 1, last_txn_id(&conn).unwrap() + 1);
            for _ in 0..3 {
                handed_out.push(crate::store::write_txn(&conn, |c| new_txn_id(c, &me)).unwrap());
            }
        }
        assert!(
            handed_out.windows(2).all(|w| w[0] < w[1]),
            "increasing, none repeated: {handed_out:?}"
        );
        assert_eq!(&handed_out[..3], [1, 2, 3]);
        assert!(
            handed_out[3] > 3,
            "a restart resumes above the reserved bound"
        );
    }
}
