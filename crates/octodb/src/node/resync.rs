//! A device downloads again over its data when its primary is behind it (restored from an
//! older copy of its file: `log::epochs`). The download then does not start from an empty
//! file. Rows nobody here is changing take the primary's version; rows with pending work keep
//! theirs, and the primary's version becomes their base (what a rejection takes them back
//! to), so the pending work is not lost; rows the primary no longer has go, unless pending
//! work is on them. Local rows (no `row_owner`) are never touched. First, before the
//! session sends anything, this device's transactions that the primary had accepted and lost
//! go back into its outbox, so that they are sent again, in their order.

use crate::error::{Error, Result};
use crate::log::outbox::RowImage;
use crate::store::apply;
use crate::store::schema::{self, ident, TableLayout};
use crate::value::Value;
use rusqlite::{params, Connection};

/// Inside the download's transaction, before its schema: the record of the rows it brings.
pub fn begin(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp._octo_resync_seen;
         CREATE TEMP TABLE _octo_resync_seen(tbl TEXT NOT NULL, rid INTEGER NOT NULL,
             PRIMARY KEY(tbl, rid)) WITHOUT ROWID;",
    )?;
    Ok(())
}

/// This device's transactions that the primary accepted and lost (those after
/// `last_decided`, the last it now says it decided) go back into the outbox from the window
/// kept (`log::outbox::accepted`), before anything is sent and before the download: their
/// rows then have pending work, and keep it. Returns how many went back.
pub fn requeue_lost(conn: &Connection, last_decided: u64) -> Result<u64> {
    let requeued = crate::log::outbox::accepted::requeue_after(conn, last_decided)?;
    if requeued.some_forgotten {
        tracing::warn!(
            last_decided,
            "some of this device's transactions that the primary lost were accepted too long \
             ago to be kept here: they cannot be sent again"
        );
    }
    Ok(requeued.txns)
}

/// A schema statement of the download: the device has most of its objects already.
pub fn apply_ddl(conn: &Connection, sql: &str) -> Result<()> {
    conn.execute_batch("SAVEPOINT _octo_resync_ddl")?;
    let applied = schema::apply_primaries_ddl(conn, sql);
    if applied.is_err() {
        conn.execute_batch("ROLLBACK TO _octo_resync_ddl")?;
    }
    conn.execute_batch("RELEASE _octo_resync_ddl")?;
    match applied {
        Err(e) if !e.to_string().contains("already exists") => Err(e),
        _ => Ok(()),
    }
}

/// Rows of the download for table `t`.
pub fn rows(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    rows: &[(i64, Vec<Value>)],
) -> Result<()> {
    let mut seen =
        conn.prepare_cached("INSERT OR IGNORE INTO _octo_resync_seen VALUES (?1, ?2)")?;
    let mut rebase =
        conn.prepare_cached("UPDATE _octo_base SET row = ?3 WHERE tbl = ?1 AND rid = ?2")?;
    let mut written = Vec::with_capacity(rows.len());
    for (rid, values) in rows {
        seen.execute(params![t.name, rid])?;
        let image = RowImage {
            columns: columns.to_vec(),
            values: values.clone(),
        };
        // Pending work on the row: the primary's version is its new base.
        if rebase.execute(params![t.name, rid, image.encode()])? == 0 {
            written.push((*rid, values.clone()));
        }
    }
    apply::insert_rows(conn, t, columns, &written)
}

/// After the download's rows: the replicated rows it did not bring, with no pending work on
/// them, go; those with pending work now have no row at the primary as their base. Returns
/// how many rows went.
pub fn finish(conn: &Connection) -> Result<u64> {
    let mut removed = 0;
    for t in schema::user_tables(conn)? {
        if !t.is_replicated() || t.without_rowid {
            continue;
        }
        let sql = format!(
            "DELETE FROM {} WHERE row_owner IS NOT NULL
               AND rowid NOT IN (SELECT rid FROM temp._octo_resync_seen WHERE tbl = ?1)
               AND rowid NOT IN (SELECT rid FROM _octo_base WHERE tbl = ?1)",
            ident(&t.name)
        );
        removed += conn.execute(&sql, [&t.name]).map_err(|e| {
            Error::rule(format!(
                "downloading again: the rows of `{}` the primary no longer has could not be \
                 removed ({e})",
                t.name
            ))
        })? as u64;
    }
    conn.execute_batch(
        "UPDATE _octo_base SET row = NULL WHERE NOT EXISTS (
             SELECT 1 FROM temp._octo_resync_seen s
             WHERE s.tbl = _octo_base.tbl AND s.rid = _octo_base.rid);
         DROP TABLE temp._octo_resync_seen;",
    )?;
    Ok(removed)
}
