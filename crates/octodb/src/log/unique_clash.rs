//! A row from the primaries that clashes, on a UNIQUE column, with a row this device changed
//! and has not had decided yet: two devices of one user inserted the same unique value, and
//! the primaries kept the first (the other's transaction is rejected, "first insert wins").
//!
//! The primaries' row is written, and this device's pending row steps aside: it leaves the
//! table while its transaction waits for the primaries' decision, its work kept in the outbox.
//! The rejection then takes it back as any other; were it accepted (the other row gone
//! meanwhile), it comes back with the decision. Before this, the device could write nothing
//! more from the primaries: its pending row blocked the primaries' one for good, and the
//! rejection that would have removed it came after it in the log.
//!
//! Rows only this device has (row_owner NULL) never step aside: the app's own data is not
//! removed on its behalf, and the sync stops, saying which row to change.

use crate::error::Result;
use crate::store::apply::delete_row;
use crate::store::schema::{ident, TableLayout};
use crate::value::Value;
use rusqlite::Connection;

/// Takes out of `t` the rows with pending work here (a base in `_octo_base`) that hold one of
/// the unique values of `values` (the primaries' row `rowid`, in `columns`' order). Returns
/// their row ids; none when no such row holds them (another row refuses it: the caller's
/// error stands).
pub fn step_aside(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    rowid: i64,
    values: &[Value],
) -> Result<Vec<i64>> {
    let mut aside = Vec::new();
    for key in unique_keys(conn, &t.name)? {
        // Where the primaries' row holds each column of the key; NULLs never clash.
        let Some(held): Option<Vec<&Value>> = key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(k))
                    .and_then(|i| values.get(i))
                    .filter(|v| !matches!(v, Value::Null))
            })
            .collect()
        else {
            continue;
        };
        let matching: Vec<String> = key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} = ?{}", ident(k), i + 2))
            .collect();
        let sql = format!(
            "SELECT rowid FROM {} WHERE rowid != ?1 AND {}
               AND EXISTS (SELECT 1 FROM _octo_base WHERE tbl = {} AND rid = {}.rowid)",
            ident(&t.name),
            matching.join(" AND "),
            crate::store::schema::literal(&t.name),
            ident(&t.name),
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        stmt.raw_bind_parameter(1, rowid)?;
        for (i, v) in held.iter().enumerate() {
            stmt.raw_bind_parameter(i + 2, *v)?;
        }
        let mut rows = stmt.raw_query();
        while let Some(r) = rows.next()? {
            aside.push(r.get::<_, i64>(0)?);
        }
    }
    aside.sort_unstable();
    aside.dedup();
    for rid in &aside {
        tracing::warn!(
            table = %t.name,
            row = rid,
            clashes_with = rowid,
            "a row this device changed holds a unique value the primaries gave another row \
             first: it leaves the table until the primaries decide its transaction (most \
             likely a rejection)"
        );
        delete_row(conn, t, *rid)?;
    }
    Ok(aside)
}

/// The columns of each UNIQUE constraint or index of `table` (its PRIMARY KEY too, when that
/// is not the rowid), those on plain columns only.
fn unique_keys(conn: &Connection, table: &str) -> Result<Vec<Vec<String>>> {
    let indexes: Vec<String> = conn
        .prepare_cached("SELECT name FROM pragma_index_list(?1) WHERE \"unique\"")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut keys = Vec::with_capacity(indexes.len());
    for index in indexes {
        let columns: Vec<Option<String>> = conn
            .prepare_cached("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?
            .query_map([&index], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        // (An expression's column has no name: such keys are left to the caller's error.)
        if let Some(columns) = columns.into_iter().collect::<Option<Vec<String>>>() {
            keys.push(columns);
        }
    }
    Ok(keys)
}
