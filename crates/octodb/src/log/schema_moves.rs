//! What one of the primaries' schema statements did to the tables holding this device's
//! pending work, so that each such row's base (the primaries' version of it, `_octo_base`)
//! stays true:
//! - a table dropped, or made again under its name (a DROP then a CREATE; SQLite's table
//!   rebuild, whose new table takes the old one's name): the primaries' version of each row is
//!   what the table holds after the statement, none if it holds none. The device's changes to
//!   rows the primaries no longer have are replayed over nothing, as the primaries will see
//!   them (before, a row deleted here came back, its base still saying the primaries had it);
//! - a table renamed: the bases follow it, and the old name is remembered (`_octo_renamed`)
//!   so that taking back work sent under it finds the rows (it looked for the old table, and
//!   left the rejected rows in place for good). Remembered until the outbox is empty; a table
//!   made again under the old name meanwhile takes the name back.

use super::outbox::RowImage;
use super::rebase::RowKey;
use crate::error::Result;
use crate::store::apply::{RowSql, Tables};
use rusqlite::{params, Connection, OptionalExtension};

/// The tables holding pending work, each with its root page (None: no such table).
pub struct Roots(Vec<(String, Option<i64>)>);

/// Before a statement runs: where each table holding pending work is.
pub fn before(conn: &Connection) -> Result<Roots> {
    let mut stmt = conn.prepare(
        "SELECT b.tbl, m.rootpage FROM (SELECT DISTINCT tbl FROM _octo_base) b
         LEFT JOIN sqlite_master m ON m.type = 'table' AND m.name = b.tbl",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Roots(rows.collect::<rusqlite::Result<_>>()?))
}

/// After it ran (and `tables` learned the new schema): the bases of tables it dropped, made
/// again or renamed, brought up to date. Returns the rows whose base changed.
pub fn after(conn: &Connection, tables: &mut Tables, before: Roots) -> Result<Vec<RowKey>> {
    let mut moved = Vec::new();
    for (tbl, root) in before.0 {
        let now = root_of(conn, &tbl)?;
        if now == root {
            continue;
        }
        let renamed_to = match (root, now) {
            (Some(root), None) => table_at(conn, root)?,
            _ => None,
        };
        match renamed_to {
            Some(new) => moved.extend(follow_rename(conn, &tbl, &new)?),
            None => moved.extend(rebase_on_table(conn, tables, &tbl)?),
        }
    }
    Ok(moved)
}

/// The table that work under `tbl` is now in: `tbl`, unless the primaries renamed it (and
/// made no other under its name) since that work was done.
pub fn table_now(conn: &Connection, tbl: &str) -> Result<String> {
    if root_of(conn, tbl)?.is_some() {
        return Ok(tbl.to_string());
    }
    let renamed: Option<String> = conn
        .prepare_cached("SELECT new FROM _octo_renamed WHERE old = ?1")?
        .query_row([tbl], |r| r.get(0))
        .optional()?;
    Ok(renamed.unwrap_or_else(|| tbl.to_string()))
}

/// Once nothing is pending, no work names an old table. (Asked after every batch that decided
/// some of this device's work: two lookups of one row each, not a count of the outbox.)
pub fn forget_renames_if_done(conn: &Connection) -> Result<()> {
    let forget: bool = conn
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM _octo_renamed)
                AND NOT EXISTS(SELECT 1 FROM _octo_undecided)",
        )?
        .query_row([], |r| r.get(0))?;
    if forget {
        conn.prepare_cached("DELETE FROM _octo_renamed")?
            .execute([])?;
    }
    Ok(())
}

fn root_of(conn: &Connection, tbl: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .query_row([tbl], |r| r.get(0))
        .optional()?)
}

fn table_at(conn: &Connection, root: i64) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT name FROM sqlite_master WHERE type = 'table' AND rootpage = ?1")?
        .query_row([root], |r| r.get(0))
        .optional()?)
}

fn follow_rename(conn: &Connection, old: &str, new: &str) -> Result<Vec<RowKey>> {
    let rows = rows_with_base(conn, old)?;
    conn.prepare_cached("UPDATE OR REPLACE _octo_base SET tbl = ?2 WHERE tbl = ?1")?
        .execute([old, new])?;
    conn.prepare_cached("UPDATE _octo_renamed SET new = ?2 WHERE new = ?1")?
        .execute([old, new])?;
    conn.prepare_cached("INSERT OR REPLACE INTO _octo_renamed(old, new) VALUES (?1, ?2)")?
        .execute([old, new])?;
    tracing::info!(
        from = old,
        to = new,
        rows = rows.len(),
        "the primaries renamed a table holding this device's pending work: the work follows it"
    );
    let renamed = rows.iter().map(|rid| (new.to_string(), *rid));
    Ok(rows
        .iter()
        .map(|rid| (old.to_string(), *rid))
        .chain(renamed)
        .collect())
}

fn rebase_on_table(conn: &Connection, tables: &mut Tables, tbl: &str) -> Result<Vec<RowKey>> {
    let rows = rows_with_base(conn, tbl)?;
    let t = tables.get(conn, tbl)?;
    let read = t.as_ref().map(|t| RowSql::new(t, &t.columns));
    for rid in &rows {
        let image = match (&t, &read) {
            (Some(t), Some(read)) => read.read(conn, *rid)?.map(|values| {
                RowImage {
                    columns: t.columns.clone(),
                    values,
                }
                .encode()
            }),
            _ => None,
        };
        conn.prepare_cached("UPDATE _octo_base SET row = ?3 WHERE tbl = ?1 AND rid = ?2")?
            .execute(params![tbl, rid, image])?;
    }
    Ok(rows.into_iter().map(|rid| (tbl.to_string(), rid)).collect())
}

fn rows_with_base(conn: &Connection, tbl: &str) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached("SELECT rid FROM _octo_base WHERE tbl = ?1")?;
    let rows = stmt.query_map([tbl], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
