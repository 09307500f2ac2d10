//! Where each of a device's transactions stands, also after a restart: pending (in the
//! outbox), accepted (kept in `_octo_accepted`), or rejected with the primaries' reason (kept
//! here, for the same window of transaction ids). An app asks after a transaction by the id
//! `last_txn_id` gave it, an event named, or `pending_txns` lists.

use super::accepted::WINDOW;
use super::{part_id, txn_of, LAST_PART};
use crate::error::Result;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

/// Where one of a device's transactions stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TxnStatus {
    /// In the outbox: the primaries have not decided it yet.
    Pending,
    /// The primaries accepted it: its changes are theirs.
    Accepted,
    /// The primaries rejected it, for `reason`, at Unix time `at`; it was taken back here.
    Rejected { reason: String, at: f64 },
    /// Not known here: decided before the newest 10,000 transaction ids this device keeps
    /// decisions for, or an id under which it committed no replicated change (a transaction
    /// rolled back, or one of local rows only).
    Unknown,
}

impl TxnStatus {
    /// The primaries have decided it (or it is no longer known): waiting longer changes
    /// nothing.
    pub fn is_decided(&self) -> bool {
        *self != TxnStatus::Pending
    }
}

/// Keeps rejected transaction `txn`'s reason, forgetting those that fell out of the window.
/// Inside the transaction that takes it back.
pub fn keep_rejection(conn: &Connection, txn: u64, reason: &str, at: f64) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO _octo_rejected(txn, reason, at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![txn as i64, reason, at])?;
    conn.prepare_cached("DELETE FROM _octo_rejected WHERE txn <= ?1")?
        .execute([txn as i64 - WINDOW])?;
    Ok(())
}

/// Where transaction `txn` stands.
pub fn status(conn: &Connection, txn: u64) -> Result<TxnStatus> {
    let pending: bool = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM _octo_undecided WHERE id BETWEEN ?1 AND ?2)")?
        .query_row(params![part_id(txn, 0), part_id(txn, LAST_PART)], |r| {
            r.get(0)
        })?;
    if pending {
        return Ok(TxnStatus::Pending);
    }
    let rejected: Option<(String, f64)> = conn
        .prepare_cached("SELECT reason, at FROM _octo_rejected WHERE txn = ?1")?
        .query_row([txn as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((reason, at)) = rejected {
        return Ok(TxnStatus::Rejected { reason, at });
    }
    let accepted: bool = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM _octo_accepted WHERE txn = ?1)")?
        .query_row([txn as i64], |r| r.get(0))?;
    Ok(match accepted {
        true => TxnStatus::Accepted,
        false => TxnStatus::Unknown,
    })
}

/// The ids of the transactions in the outbox, oldest first.
pub fn pending(conn: &Connection) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = conn
        .prepare_cached("SELECT id FROM _octo_undecided ORDER BY id")?
        .query_map([], |r| r.get::<_, i64>(0))?
        .map(|r| r.map(txn_of))
        .collect::<rusqlite::Result<_>>()?;
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_pending_then_accepted_or_rejected_and_old_rejections_are_forgotten() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&conn).unwrap();
        let part = super::super::tests::one_change(super::super::tests::insert(1));
        for txn in [3u64, 4] {
            conn.execute(
                "INSERT INTO _octo_undecided(id, changes) VALUES (?1, ?2)",
                params![part_id(txn, 1), part],
            )
            .unwrap();
        }
        assert_eq!(pending(&conn).unwrap(), [3, 4]);
        assert_eq!(status(&conn, 3).unwrap(), TxnStatus::Pending);

        let accepted = super::super::remove(&conn, 3).unwrap();
        super::super::accepted::keep(&conn, 3, &accepted).unwrap();
        super::super::remove(&conn, 4).unwrap();
        keep_rejection(&conn, 4, "row_owner: not yours", 12.5).unwrap();
        assert_eq!(status(&conn, 3).unwrap(), TxnStatus::Accepted);
        assert_eq!(
            status(&conn, 4).unwrap(),
            TxnStatus::Rejected {
                reason: "row_owner: not yours".into(),
                at: 12.5
            }
        );
        assert_eq!(status(&conn, 5).unwrap(), TxnStatus::Unknown);
        assert!(pending(&conn).unwrap().is_empty());

        keep_rejection(&conn, 4 + WINDOW as u64, "later", 13.0).unwrap();
        assert_eq!(
            status(&conn, 4).unwrap(),
            TxnStatus::Unknown,
            "out of the window"
        );
    }
}
