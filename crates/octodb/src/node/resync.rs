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
use crate::store::unique_holders::{holders, is_unique_violation};
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
    match apply::insert_rows(conn, t, columns, &written) {
        // Some row here holds a unique value of one of these: row by row, clearing the way.
        Err(e) if is_unique_violation(&e) => {
            for row in &written {
                let one = std::slice::from_ref(row);
                match apply::insert_rows(conn, t, columns, one) {
                    Err(e) if is_unique_violation(&e) => {
                        clear_unique_holders(conn, t, columns, row)?;
                        apply::insert_rows(conn, t, columns, one)?;
                    }
                    written => written?,
                }
            }
            Ok(())
        }
        written => written,
    }
}

/// The rows here holding a unique value of the primary's `row`, which they gave another row
/// meanwhile, leave the table: one nobody changes here is the primary's older version (the
/// download rewrites it, or `finish` removes it); one with pending work steps aside, as in
/// the log's path (`log::unique_clash`): its work waits in the outbox for the primaries'
/// decision (most likely a rejection, "first insert wins"). A row only this device has
/// (row_owner NULL) is never removed on the app's behalf: the download stops, naming it.
/// (The download stopped at such a clash before, and the device went on retrying it for
/// good.)
fn clear_unique_holders(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    (rowid, values): &(i64, Vec<Value>),
) -> Result<()> {
    for holder in holders(conn, t, columns, *rowid, values)? {
        if let Some(owner) = t.owner {
            let local: bool = conn.query_row(
                &format!(
                    "SELECT {} IS NULL FROM {} WHERE rowid = ?1",
                    ident(&t.columns[owner]),
                    ident(&t.name)
                ),
                [holder],
                |r| r.get(0),
            )?;
            if local {
                return Err(Error::rule(format!(
                    "downloading again: row {rowid} of `{}` from the primaries cannot be \
                     written here: row {holder}, which only this device has (row_owner NULL), \
                     holds one of its unique values; change or delete that row and sync \
                     resumes",
                    t.name
                )));
            }
        }
        if crate::log::rebase::has_base(conn, &t.name, holder)? {
            tracing::warn!(
                table = %t.name,
                row = holder,
                clashes_with = rowid,
                "downloading again: a row this device changed holds a unique value the \
                 primaries gave another row first: it leaves the table until the primaries \
                 decide its transaction (most likely a rejection)"
            );
        }
        apply::delete_row(conn, t, holder)?;
    }
    Ok(())
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

/// A table of this file that the download replaces, and where the rows this device keeps of
/// it wait meanwhile.
pub struct SetAside {
    table: String,
    kept: String,
    with_rowid: bool,
}

/// Before the download's schema: the objects of this file that its `statements` no longer
/// hold as they are here, changed or dropped by the primaries while this device's position
/// was beyond what their log still holds (otherwise the statements that changed them would
/// have come in the log). Indexes, views and triggers go (the download makes again those
/// that remain); so does such a table, once the rows this device keeps of it are set aside:
/// its local rows (row_owner NULL, every row of a table without one) and those with pending
/// work. The rows the primaries hold come with the download. (An outdated table used to
/// stay as it was: the download skipped its statement as "already exists", and the device
/// went on with the old columns for good.)
pub fn set_aside_outdated(conn: &Connection, statements: &[String]) -> Result<Vec<SetAside>> {
    let current: std::collections::HashSet<String> = statements
        .iter()
        .flat_map(|s| [s.trim().to_string(), schema::device_create_table(s.trim())])
        .collect();
    let mut outdated: Vec<(String, String, bool)> = conn
        .prepare(&format!(
            "SELECT type, name, sql LIKE 'CREATE VIRTUAL%' FROM main.sqlite_master
             WHERE {} AND type IN ('table', 'index', 'view', 'trigger')
               AND sql NOT IN (SELECT value FROM json_each(?1))
             ORDER BY CASE type WHEN 'trigger' THEN 0 WHEN 'view' THEN 1 WHEN 'index' THEN 2 ELSE 3 END",
            schema::DEVICE_SCHEMA
        ))?
        .query_map([serde_json::to_string(&current).unwrap_or_default()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut set_aside = Vec::new();
    for (n, (kind, name, is_virtual)) in outdated.drain(..).enumerate() {
        let q = ident(&name);
        if kind == "table" && !is_virtual {
            let t = schema::user_tables(conn)?
                .into_iter()
                .find(|t| t.name == name);
            let Some(t) = t else { continue };
            let kept = format!("_octo_kept_{n}");
            let rowid = if t.without_rowid {
                ""
            } else {
                "rowid AS _octo_rid, "
            };
            let copy = format!("CREATE TEMP TABLE {kept} AS SELECT {rowid}* FROM main.{q}");
            match t.owner {
                Some(o) => conn.execute(
                    &format!(
                        "{copy} WHERE {} IS NULL OR rowid IN (SELECT rid FROM _octo_base WHERE tbl = ?1)",
                        ident(&t.columns[o])
                    ),
                    [&name],
                )?,
                None => conn.execute(&copy, [])?,
            };
            set_aside.push(SetAside {
                table: name.clone(),
                kept,
                with_rowid: !t.without_rowid,
            });
        }
        let kind = match kind.as_str() {
            "index" => "INDEX",
            "view" => "VIEW",
            "trigger" => "TRIGGER",
            _ => "TABLE",
        };
        conn.execute_batch(&format!("DROP {kind} IF EXISTS main.{q}"))?;
        tracing::info!(
            object = %name,
            "downloading again: the primaries changed or dropped this, beyond what their log \
             still holds: it is made again as they have it, or left out"
        );
    }
    Ok(set_aside)
}

/// After the download's schema: the rows set aside go into their tables' new shape (the
/// columns the table still has, under the names the primaries' renames gave them and the
/// table's own new name, from the renames the download brought; the new columns take their
/// defaults). A table the primaries dropped takes its rows with it, as its DROP would have
/// done here, and says how many.
pub fn bring_back(conn: &Connection, set_aside: Vec<SetAside>) -> Result<()> {
    for s in set_aside {
        let kept_columns: Vec<String> = conn
            .prepare_cached("SELECT name FROM pragma_table_info(?1, 'temp')")?
            .query_map([&s.kept], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?
            .into_iter()
            .filter(|c| c != "_octo_rid")
            .collect();
        let now = crate::store::renames::kept_rows_now(conn, &s.table, &kept_columns)?;
        match now {
            Some(crate::store::renames::KeptRowsNow { table, columns }) => {
                let (from, into): (Vec<String>, Vec<String>) = columns
                    .iter()
                    .map(|(was, now)| (ident(was), ident(now)))
                    .unzip();
                if !into.is_empty() {
                    let (rowid_into, rowid_from) = match s.with_rowid {
                        true => ("rowid, ", "_octo_rid, "),
                        false => ("", ""),
                    };
                    let sql = format!(
                        "INSERT INTO main.{t}({rowid_into}{into}) SELECT {rowid_from}{from} \
                         FROM temp.{kept}",
                        t = ident(&table),
                        into = into.join(", "),
                        from = from.join(", "),
                        kept = s.kept,
                    );
                    conn.execute_batch(&sql).map_err(|e| {
                        Error::rule(format!(
                            "downloading again: the rows this device keeps of `{}` (its local \
                             rows and pending work) do not fit the primaries' new shape of the \
                             table ({e}): change them to fit it, or delete them",
                            s.table
                        ))
                    })?;
                    if table != s.table {
                        tracing::info!(
                            was = %s.table,
                            now = %table,
                            "downloading again: the rows this device keeps of a table the \
                             primaries renamed are kept under its new name"
                        );
                    }
                }
            }
            None => {
                let dropped: i64 =
                    conn.query_row(&format!("SELECT count(*) FROM temp.{}", s.kept), [], |r| {
                        r.get(0)
                    })?;
                if dropped > 0 {
                    tracing::warn!(
                        table = %s.table,
                        rows = dropped,
                        "downloading again: the primaries dropped this table; the rows this \
                         device kept of it (local rows, pending work) go with it, as its DROP \
                         would have taken them"
                    );
                }
            }
        }
        conn.execute_batch(&format!("DROP TABLE temp.{}", s.kept))?;
    }
    Ok(())
}
