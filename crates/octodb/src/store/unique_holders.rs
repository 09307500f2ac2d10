//! Which rows hold a row's unique values: what a write refused by a UNIQUE constraint clashed
//! with. A transaction is replicated as each row's final image, so rows that traded unique
//! values inside it (a swap through a temporary value, a value moved from a deleted row to a
//! new one) clash when their images are written one by one; the appliers step such rows
//! aside until their own image comes ([`aside_for_later`]).

use crate::changes::{ChangeSet, Op};
use crate::error::Result;
use crate::store::apply::delete_row;
use crate::store::schema::{ident, TableLayout};
use crate::value::Value;
use rusqlite::Connection;

/// The rows of `t` other than `rowid` holding one of the unique values (of a UNIQUE
/// constraint, a unique index, or a PRIMARY KEY that is not the rowid) of `values`, the row
/// given in `columns`' order. Keys on expressions are not searched.
pub fn holders(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    rowid: i64,
    values: &[Value],
) -> Result<Vec<i64>> {
    let mut found = Vec::new();
    for key in unique_keys(conn, &t.name)? {
        // NULLs never clash.
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
            "SELECT rowid FROM {} WHERE rowid != ?1 AND {}",
            ident(&t.name),
            matching.join(" AND ")
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        stmt.raw_bind_parameter(1, rowid)?;
        for (i, v) in held.iter().enumerate() {
            stmt.raw_bind_parameter(i + 2, *v)?;
        }
        let mut rows = stmt.raw_query();
        while let Some(r) = rows.next()? {
            found.push(r.get::<_, i64>(0)?);
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

/// Steps aside (deletes here) the rows holding `values`' unique values that a later op of
/// the same transaction (`later`) writes or deletes anyway: their own image restores them.
/// Returns whether it stepped any aside, so that the write is worth trying again.
pub fn aside_for_later(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    rowid: i64,
    values: &[Value],
    (cs, later): (&ChangeSet, &[Op]),
) -> Result<bool> {
    let mut any = false;
    for rid in holders(conn, t, columns, rowid, values)? {
        if changed_later((cs, later), &t.name, rid) {
            delete_row(conn, t, rid)?;
            any = true;
        }
    }
    Ok(any)
}

/// Whether an op of `later` (the rest of transaction `cs`) writes or deletes row `rid` of
/// `table`.
fn changed_later((cs, later): (&ChangeSet, &[Op]), table: &str, rid: i64) -> bool {
    later
        .iter()
        .filter_map(|op| cs.row_of(op))
        .any(|(tbl, r)| r == rid && tbl == table)
}

/// Whether a write failed on a constraint (a UNIQUE one, among others).
pub fn is_constraint(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Sqlite(se)
        if se.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation))
}

/// Whether a write failed because another row holds its id or one of its unique values.
pub fn is_unique_violation(e: &crate::Error) -> bool {
    matches!(e, crate::Error::Sqlite(se) if crate::store::apply::is_key_conflict(se))
}

/// The columns of each unique key of `table` on plain columns.
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
        // (An expression's column has no name.)
        if let Some(columns) = columns.into_iter().collect::<Option<Vec<String>>>() {
            keys.push(columns);
        }
    }
    Ok(keys)
}

/// A device's transaction applied on a primary, whose rows trade unique values (a swap
/// through a temporary value on the device): its changes come as one partial update per row,
/// and the first clashes with a row the transaction changes later. That row steps aside (its
/// whole row kept here) until its own change comes, which writes it back whole.
#[derive(Default)]
pub struct Aside {
    /// (table, row id) -> the row as it was, in its table's column order.
    rows: std::collections::HashMap<(String, i64), Vec<Value>>,
}

impl Aside {
    /// The row kept for `rowid` of `table`, if it stepped aside; it is the caller's to write.
    pub fn take(&mut self, table: &str, rowid: i64) -> Option<Vec<Value>> {
        // (Every update and delete a primary applies asks: nothing to look up, nearly always.)
        if self.rows.is_empty() {
            return None;
        }
        self.rows.remove(&(table.to_string(), rowid))
    }

    /// Makes room for row `rowid` of `t` to hold `image` (its whole row, in `t`'s column
    /// order): the rows holding its unique values that a later op of the transaction changes
    /// step aside. Returns whether any did.
    pub fn make_room(
        &mut self,
        conn: &Connection,
        t: &TableLayout,
        rowid: i64,
        image: &[Value],
        (cs, later): (&ChangeSet, &[Op]),
    ) -> Result<bool> {
        let whole = crate::store::apply::RowSql::new(t, &t.columns);
        let mut any = false;
        for rid in holders(conn, t, &t.columns, rowid, image)? {
            if !changed_later((cs, later), &t.name, rid) {
                continue;
            }
            let Some(row) = whole.read(conn, rid)? else {
                continue;
            };
            delete_row(conn, t, rid)?;
            self.rows.insert((t.name.clone(), rid), row);
            any = true;
        }
        Ok(any)
    }

    /// Rows still aside when the transaction ends (their later change wrote nothing) go back
    /// as they were. Returns why one cannot, to reject the transaction.
    pub fn restore(
        self,
        conn: &Connection,
        tables: &mut crate::store::apply::Tables,
    ) -> Result<Option<String>> {
        for ((table, rowid), row) in self.rows {
            let Some(t) = tables.get(conn, &table)? else {
                continue;
            };
            if let Err(e) =
                crate::store::apply::RowSql::new(&t, &t.columns).insert(conn, rowid, &row)
            {
                return Ok(Some(format!(
                    "rows of `{table}` trade unique values in a way the primaries cannot apply \
                     ({e}): park one value in a transaction of its own first"
                )));
            }
        }
        Ok(None)
    }
}
