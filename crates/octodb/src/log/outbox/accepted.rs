//! A device keeps its newest accepted transactions for a while after the primaries accepted
//! them: if its primary comes back from an older copy of its file (`log::epochs`), the ones
//! the copy lost go back into the outbox and are sent again. Kept by count of transaction
//! ids ([`WINDOW`]); older ones are forgotten.

use super::{insert_part, part_id, rows_of};
use crate::changes::ChangeSet;
use crate::error::Result;
use rusqlite::{params, Connection};

/// Accepted transactions kept: the newest by id.
pub const WINDOW: i64 = 10_000;

/// Keeps accepted transaction `txn` (its changes as sent), forgetting those that fell out of
/// the window. Inside the transaction that records the acceptance.
pub fn keep(conn: &Connection, txn: u64, changes: &ChangeSet) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO _octo_accepted(txn, changes) VALUES (?1, ?2)")?
        .execute(params![txn as i64, changes.encode()])?;
    conn.prepare_cached("DELETE FROM _octo_accepted WHERE txn <= ?1")?
        .execute([txn as i64 - WINDOW])?;
    Ok(())
}

/// What [`requeue_after`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Accepted transactions put back into the outbox.
    pub txns: u64,
    /// Whether accepted transactions after `after` may have been forgotten already (the
    /// window did not reach back that far).
    pub some_forgotten: bool,
}

/// Puts the kept accepted transactions with an id above `after` (the last one the primary
/// decided, as it now says) back into the outbox as pending work, in order, each row they
/// touched with a base (no row at the primary, until its download says otherwise).
pub fn requeue_after(conn: &Connection, after: u64) -> Result<Requeued> {
    // Every id up to the newest kept minus the window was forgotten, if it existed.
    let newest: Option<i64> = conn
        .prepare_cached("SELECT max(txn) FROM _octo_accepted")?
        .query_row([], |r| r.get(0))?;
    let some_forgotten = newest.is_some_and(|n| n - WINDOW > after as i64);
    let mut stmt =
        conn.prepare_cached("SELECT txn, changes FROM _octo_accepted WHERE txn > ?1 ORDER BY txn")?;
    let kept: Vec<(i64, Vec<u8>)> = stmt
        .query_map([after as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut base = conn.prepare_cached(
        "INSERT INTO _octo_base(tbl, rid, row, first_txn, last_txn) VALUES (?1, ?2, NULL, ?3, ?3)
         ON CONFLICT(tbl, rid) DO UPDATE
           SET first_txn = min(coalesce(first_txn, excluded.first_txn), excluded.first_txn),
               last_txn = max(coalesce(last_txn, excluded.last_txn), excluded.last_txn)",
    )?;
    for (txn, bytes) in &kept {
        let changes = super::decode_change(bytes)?;
        insert_part(conn, part_id(*txn as u64, 1), &changes)?;
        for (tbl, rid) in rows_of(&changes) {
            base.execute(params![tbl, rid, txn])?;
        }
    }
    conn.prepare_cached("DELETE FROM _octo_accepted WHERE txn > ?1")?
        .execute([after as i64])?;
    Ok(Requeued {
        txns: kept.len() as u64,
        some_forgotten,
    })
}
