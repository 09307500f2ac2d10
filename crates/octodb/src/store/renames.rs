//! The tables and columns the primaries' schema statements renamed, recorded by every node that
//! runs such a statement, in the same transaction (`_octo_renames`), so that a device's work
//! written under the old names still lands: a primary reads a device's change under the names
//! its tables have now. (A device's offline edit of a column renamed meanwhile was left out,
//! and its work on a renamed table was rejected, taking back what it wrote there.)
//!
//! Only names a table no longer has are mapped: a name in use is that column, whatever it was
//! called before. So an old name given to a new column (`a` renamed to `b`, then a column `a`
//! added) takes a device's older edits of `a`, and renames that swap two names are not seen
//! through; both are documented (README, schema changes).
//!
//! A rename is seen as SQLite does it: the table keeps its root page (its b-tree) and each
//! column its place, under a new name.

use crate::changes::ChangeSet;
use crate::error::Result;
use crate::store::apply::Tables;
use crate::store::schema::TableLayout;
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;

/// The schema statements that may rename (others are not compared before and after).
pub fn may_rename(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    upper.contains("ALTER") && upper.contains("RENAME")
}

/// The app's tables by root page, with their columns in order: what a statement is compared
/// against.
#[derive(Debug, Default)]
pub struct Shapes(HashMap<i64, (String, Vec<String>)>);

/// The tables as they are now.
pub fn shapes(conn: &Connection) -> Result<Shapes> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.rootpage, m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.rootpage > 0
           AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND m.name NOT LIKE '\\_octo\\_%' ESCAPE '\\'
         ORDER BY m.rootpage, p.cid",
    )?;
    let mut shapes: HashMap<i64, (String, Vec<String>)> = HashMap::new();
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
    })?;
    for row in rows {
        let (root, table, column) = row?;
        shapes
            .entry(root)
            .or_insert_with(|| (table, Vec::new()))
            .1
            .push(column);
    }
    Ok(Shapes(shapes))
}

/// Runs `run`, which executes the primaries' schema statement `sql`, and records the renames
/// it made (the followers' state machine and devices; the leader's app path records across
/// the statement's phases with [`shapes`] and [`record`]).
pub fn recording<T>(conn: &Connection, sql: &str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = match may_rename(sql) {
        true => Some(shapes(conn)?),
        false => None,
    };
    let out = run()?;
    if let Some(before) = before {
        record(conn, before)?;
    }
    Ok(out)
}

/// After a statement that [`may_rename`]: records the renames it made against `before`.
pub fn record(conn: &Connection, before: Shapes) -> Result<()> {
    let after = shapes(conn)?;
    let mut insert =
        conn.prepare_cached("INSERT INTO _octo_renames(tbl, col, new) VALUES (?1, ?2, ?3)")?;
    for (root, (old_name, old_columns)) in before.0 {
        let Some((new_name, new_columns)) = after.0.get(&root) else {
            continue;
        };
        if *new_name != old_name {
            tracing::debug!(old = %old_name, new = %new_name, "table renamed");
            insert.execute(rusqlite::params![old_name, None::<String>, new_name])?;
        }
        // RENAME COLUMN keeps every column in its place; a statement that adds or drops one
        // renames none.
        if new_columns.len() != old_columns.len() {
            continue;
        }
        for (old, new) in old_columns.iter().zip(new_columns) {
            if old != new {
                tracing::debug!(table = %new_name, old = %old, new = %new, "column renamed");
                insert.execute(rusqlite::params![new_name, old, new])?;
            }
        }
    }
    Ok(())
}

/// Steps followed through a chain of renames at most (a chain longer than this is cut: the
/// work is then read as it was before).
const MAX_CHAIN: usize = 64;

/// `cs` with its tables and columns under the names the tables have now, when a name it gives
/// is no longer a table's or a column's and the primaries renamed it; None when every name is
/// current (the usual case: no lookup beyond the layouts `tables` holds).
pub fn under_current_names(
    conn: &Connection,
    tables: &mut Tables,
    cs: &ChangeSet,
) -> Result<Option<ChangeSet>> {
    let mut mapped: Option<ChangeSet> = None;
    for (i, header) in cs.tables.iter().enumerate() {
        let current = tables.get(conn, &header.name)?;
        if current
            .as_ref()
            .is_some_and(|t| header.columns.iter().all(|c| t.columns.contains(c)))
        {
            continue;
        }
        let now = match current {
            Some(_) => header.name.clone(),
            None => match table_now(conn, tables, &header.name)? {
                Some(now) => now,
                None => continue, // dropped, not renamed: as before
            },
        };
        let Some(t) = tables.get(conn, &now)? else {
            continue;
        };
        let columns = columns_now(conn, &t.name, &t.columns, &header.columns)?;
        if now == header.name && columns == header.columns {
            continue;
        }
        tracing::debug!(
            table = %header.name,
            now = %now,
            "work read under names the primaries renamed since it was written"
        );
        let out = mapped.get_or_insert_with(|| cs.clone());
        out.tables[i].name = now;
        out.tables[i].columns = columns;
    }
    Ok(mapped)
}

/// `columns`, column names of table `t` as it was once (a device's record of the primaries'
/// version of a row it changed), under the names `t` has now; None when all are current.
pub fn columns_under_current_names(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
) -> Result<Option<Vec<String>>> {
    if columns.iter().all(|c| t.columns.contains(c)) {
        return Ok(None);
    }
    Ok(Some(columns_now(conn, &t.name, &t.columns, columns)?))
}

/// `given`, column names of table `table` (whose columns are `current`) as they once were,
/// under the names they have now. Names still in use, or never renamed, stay.
fn columns_now(
    conn: &Connection,
    table: &str,
    current: &[String],
    given: &[String],
) -> Result<Vec<String>> {
    let names = names_of(conn, table)?;
    let mut out: Vec<String> = Vec::with_capacity(given.len());
    for c in given {
        let now = match current.contains(c) {
            true => c.clone(),
            false => column_now(conn, &names, c)?,
        };
        // Two columns under one name: the renamed one is left out (as a dropped one is).
        let clash = now != *c && (given.contains(&now) || out.contains(&now));
        out.push(if clash { c.clone() } else { now });
    }
    Ok(out)
}

/// The name a table called `name` once has now; None if no table has it (dropped, or never
/// renamed).
fn table_now(conn: &Connection, tables: &mut Tables, name: &str) -> Result<Option<String>> {
    table_now_where(conn, name, |next| Ok(tables.get(conn, next)?.is_some()))
}

/// [`table_now`], with `exists` telling whether a table of a name is there now.
fn table_now_where(
    conn: &Connection,
    name: &str,
    mut exists: impl FnMut(&str) -> Result<bool>,
) -> Result<Option<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT new FROM _octo_renames WHERE tbl = ?1 AND col IS NULL ORDER BY id DESC LIMIT 1",
    )?;
    let mut seen = vec![name.to_string()];
    while seen.len() < MAX_CHAIN {
        let next: Option<String> = stmt
            .query_row([&seen[seen.len() - 1]], |r| r.get(0))
            .optional()?;
        let Some(next) = next else { break };
        if seen.contains(&next) {
            break; // renamed back and forth, and the table is gone
        }
        if exists(&next)? {
            return Ok(Some(next));
        }
        seen.push(next);
    }
    Ok(None)
}

/// One rename as `_octo_renames` records it: table `.0` renamed to `.2` (`.1` None), or its
/// column `.1` renamed to `.2`.
pub type Rename = (String, Option<String>, String);

/// Every rename recorded here, in the order they were made: what a primary sends with a
/// download (protocol 13), so that a device that missed the statements (its position beyond
/// what the log still holds) finds its local rows' tables and columns under their new names.
pub fn all(conn: &Connection) -> Result<Vec<Rename>> {
    let mut stmt = conn.prepare_cached("SELECT tbl, col, new FROM _octo_renames ORDER BY id")?;
    let renames = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(renames)
}

/// A device's download: the primaries' renames take the place of the ones it recorded (theirs
/// hold every one; its own lacks those it missed).
pub fn replace_all(conn: &Connection, renames: &[Rename]) -> Result<()> {
    conn.execute_batch("DELETE FROM _octo_renames")?;
    let mut insert =
        conn.prepare_cached("INSERT INTO _octo_renames(tbl, col, new) VALUES (?1, ?2, ?3)")?;
    for (tbl, col, new) in renames {
        insert.execute(rusqlite::params![tbl, col, new])?;
    }
    Ok(())
}

/// Where rows kept of a table go now (see [`kept_rows_now`]).
pub struct KeptRowsNow {
    /// The table's name now.
    pub table: String,
    /// The kept columns it still has, each with its name then and now.
    pub columns: Vec<(String, String)>,
}

/// Where rows kept of table `table` as it once was go now: its name now (itself if it is
/// still there; None if the primaries dropped it), and those of `columns` it still has, each
/// paired with its name now.
pub fn kept_rows_now(
    conn: &Connection,
    table: &str,
    columns: &[String],
) -> Result<Option<KeptRowsNow>> {
    let exists = |name: &str| -> Result<bool> {
        Ok(conn
            .prepare_cached("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?1")?
            .query_row([name], |_| Ok(()))
            .optional()?
            .is_some())
    };
    let now = match exists(table)? {
        true => table.to_string(),
        false => match table_now_where(conn, table, exists)? {
            Some(now) => now,
            None => return Ok(None),
        },
    };
    let current: Vec<String> = conn
        .prepare_cached("SELECT name FROM pragma_table_info(?1, 'main')")?
        .query_map([&now], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let pairs = columns
        .iter()
        .cloned()
        .zip(columns_now(conn, &now, &current, columns)?)
        .filter(|(_, column)| current.contains(column))
        .collect();
    Ok(Some(KeptRowsNow {
        table: now,
        columns: pairs,
    }))
}

/// Table `table` and the names it had before, newest first.
fn names_of(conn: &Connection, table: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT tbl FROM _octo_renames WHERE new = ?1 AND col IS NULL ORDER BY id DESC LIMIT 1",
    )?;
    let mut names = vec![table.to_string()];
    while names.len() < MAX_CHAIN {
        let before: Option<String> = stmt
            .query_row([&names[names.len() - 1]], |r| r.get(0))
            .optional()?;
        match before {
            Some(before) if !names.contains(&before) => names.push(before),
            _ => break,
        }
    }
    Ok(names)
}

/// The name column `column` has now in the table that was called each of `names`: its
/// renames in the order they were made. Unchanged when it was never renamed.
fn column_now(conn: &Connection, names: &[String], column: &str) -> Result<String> {
    let mut stmt = conn.prepare_cached(
        "SELECT tbl, col, new FROM _octo_renames WHERE col IS NOT NULL ORDER BY id",
    )?;
    let renames = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut now = column.to_string();
    for rename in renames {
        let (tbl, old, new) = rename?;
        if old == now && names.contains(&tbl) {
            now = new;
        }
    }
    Ok(now)
}
