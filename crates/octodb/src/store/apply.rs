//! Deterministic application of changes on the engine's own connection (no TEMP triggers there):
//! writing rows by column name, with statements built once per table and column order. A
//! primary's checks of a device's transaction are in `store::device_txn`.

use super::schema::{self, ident, TableLayout};
use crate::error::Result;
use crate::value::Value;
use rusqlite::{Connection, ErrorCode, OptionalExtension};
use std::collections::HashMap;
use std::sync::Arc;

const MAX_STATEMENT_SETS: usize = 256;

/// Layouts of the local tables, and the statements that write their rows in each column order
/// met so far; both forgotten when the schema changes.
#[derive(Default)]
pub struct Tables {
    cache: HashMap<String, Option<Arc<TableLayout>>>,
    statements: HashMap<(String, Vec<String>), Arc<RowSql>>,
    schema_version: i64,
    /// Inside `in_transaction`: the schema version was read since the last schema change.
    version_read: bool,
    in_transaction: bool,
}

impl Tables {
    /// Run `f` inside the caller's write transaction, reading SQLite's schema version once
    /// rather than at every lookup: within one transaction only the caller's own statements
    /// change the schema, and it says so with [`Tables::schema_changed`].
    pub fn in_transaction<T>(&mut self, f: impl FnOnce(&mut Tables) -> Result<T>) -> Result<T> {
        self.in_transaction = true;
        self.version_read = false;
        let out = f(self);
        self.in_transaction = false;
        self.version_read = false;
        out
    }

    /// The caller changed the schema inside `in_transaction`.
    pub fn schema_changed(&mut self) {
        self.version_read = false;
    }

    pub fn get(&mut self, conn: &Connection, name: &str) -> Result<Option<Arc<TableLayout>>> {
        if !(self.in_transaction && self.version_read) {
            let v = super::schema_version(conn)?;
            if v != self.schema_version {
                self.cache.clear();
                self.statements.clear();
                self.schema_version = v;
            }
            self.version_read = true;
        }
        if let Some(t) = self.cache.get(name) {
            return Ok(t.clone());
        }
        let t = schema::table_layout(conn, name)?.map(Arc::new);
        self.cache.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// The statements for rows of `t` given in `columns` order (`t` as `get` just gave it).
    pub fn statements(&mut self, t: &TableLayout, columns: &[String]) -> Arc<RowSql> {
        // Column orders come from the network: a device could send many; keep a bounded few.
        if self.statements.len() >= MAX_STATEMENT_SETS {
            self.statements.clear();
        }
        let key = (t.name.clone(), columns.to_vec());
        self.statements
            .entry(key)
            .or_insert_with(|| Arc::new(RowSql::new(t, columns)))
            .clone()
    }
}

/// Write a whole row (by column name; unknown columns are skipped): update it if it exists,
/// insert it otherwise. Never REPLACE: that would fire foreign-key deletes.
pub fn write_row(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    rowid: i64,
    values: &[Value],
) -> Result<()> {
    RowSql::new(t, columns).update_or_insert(conn, rowid, values)
}

/// The statements that write rows of one table given in one column order, built once for all
/// the rows of a batch that share that order.
#[derive(Debug)]
pub struct RowSql {
    /// Positions (in the given column order) of the columns this table has.
    keep: Vec<usize>,
    /// `INSERT INTO table(rowid, kept columns)`, to which the values are added.
    insert_head: String,
    insert: String,
    /// None when no given column is one of the table's: the row is only checked for.
    update: Option<String>,
    exists: String,
    /// The whole row in the table's own column order.
    read: String,
    width: usize,
    /// The kept columns, in the given order.
    read_kept: String,
    /// Whether the row of an id is a local one (row_owner NULL); None: the table has no
    /// row_owner.
    is_local: Option<String>,
    table: String,
    /// The table has `UPDATE OF` triggers: an update sets only the columns that changed
    /// (quoted names of the kept columns, to build that statement).
    update_of: Option<Vec<String>>,
}

impl RowSql {
    pub fn new(t: &TableLayout, columns: &[String]) -> RowSql {
        // As SQLite and the owner checks match names: ignoring ASCII case (a column the
        // checks read must be the one written).
        let keep: Vec<usize> = (0..columns.len())
            .filter(|&i| {
                t.columns
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&columns[i]))
            })
            .collect();
        let q = ident(&t.name);
        let mut names = vec!["rowid".to_string()];
        names.extend(keep.iter().map(|&i| ident(&columns[i])));
        let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let sets: Vec<String> = keep
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} = ?{}", ident(&columns[i]), n + 2))
            .collect();
        let insert_head = format!("INSERT INTO {q}({})", names.join(", "));
        RowSql {
            insert: format!("{insert_head} VALUES ({})", marks.join(", ")),
            insert_head,
            update: (!sets.is_empty())
                .then(|| format!("UPDATE {q} SET {} WHERE rowid = ?1", sets.join(", "))),
            exists: format!("SELECT 1 FROM {q} WHERE rowid = ?1"),
            read: format!(
                "SELECT {} FROM {q} WHERE rowid = ?1",
                t.columns
                    .iter()
                    .map(|c| ident(c))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            width: t.columns.len(),
            read_kept: format!("SELECT {} FROM {q} WHERE rowid = ?1", names[1..].join(", ")),
            is_local: t.owner.map(|o| {
                format!(
                    "SELECT 1 FROM {q} WHERE rowid = ?1 AND {} IS NULL",
                    ident(&t.columns[o])
                )
            }),
            table: t.name.clone(),
            update_of: t
                .update_of_triggers
                .then(|| keep.iter().map(|&i| ident(&columns[i])).collect()),
            keep,
        }
    }

    fn bind(
        &self,
        stmt: &mut rusqlite::CachedStatement<'_>,
        rowid: i64,
        values: &[Value],
    ) -> rusqlite::Result<()> {
        self.bind_at(stmt, 1, rowid, values)
    }

    /// Binds one row to the parameters from number `first` on (rowid first, then the values).
    fn bind_at(
        &self,
        stmt: &mut rusqlite::CachedStatement<'_>,
        first: usize,
        rowid: i64,
        values: &[Value],
    ) -> rusqlite::Result<()> {
        if let Some(&last) = self.keep.last() {
            if values.len() <= last {
                return Err(rusqlite::Error::InvalidParameterCount(
                    values.len(),
                    last + 1,
                ));
            }
        }
        stmt.raw_bind_parameter(first, rowid)?;
        for (n, &i) in self.keep.iter().enumerate() {
            stmt.raw_bind_parameter(first + n + 1, &values[i])?;
        }
        Ok(())
    }

    /// Parameters per row: the rowid and the kept columns.
    fn row_width(&self) -> usize {
        1 + self.keep.len()
    }

    /// An INSERT of `rows` rows at once (parameters numbered row after row).
    fn insert_many_sql(&self, rows: usize) -> String {
        let one = format!("({})", vec!["?"; self.row_width()].join(", "));
        format!("{} VALUES {}", self.insert_head, vec![one; rows].join(", "))
    }

    /// Insert the row; an error if its id (or another unique key) is taken.
    pub fn insert(&self, conn: &Connection, rowid: i64, values: &[Value]) -> rusqlite::Result<()> {
        self.insert_held(&mut conn.prepare_cached(&self.insert)?, rowid, values)
    }

    /// [`RowSql::insert`] through a statement held for the batch.
    fn insert_held(
        &self,
        stmt: &mut rusqlite::CachedStatement<'_>,
        rowid: i64,
        values: &[Value],
    ) -> rusqlite::Result<()> {
        self.bind(stmt, rowid, values)?;
        stmt.raw_execute().map(drop)
    }

    /// The whole row in the table's column order, or None if absent.
    pub fn read(&self, conn: &Connection, rowid: i64) -> Result<Option<Vec<Value>>> {
        Ok(conn
            .prepare_cached(&self.read)?
            .query_row([rowid], |r| {
                (0..self.width).map(|i| r.get::<_, Value>(i)).collect()
            })
            .optional()?)
    }

    /// The row's values of the kept columns (in the given order), or None if absent.
    fn read_kept(&self, conn: &Connection, rowid: i64) -> Result<Option<Vec<Value>>> {
        Ok(conn
            .prepare_cached(&self.read_kept)?
            .query_row([rowid], |r| {
                (0..self.keep.len()).map(|n| r.get::<_, Value>(n)).collect()
            })
            .optional()?)
    }

    /// Update the row if it exists; returns whether it did.
    pub fn update(&self, conn: &Connection, rowid: i64, values: &[Value]) -> Result<bool> {
        let Some(update) = &self.update else {
            return Ok(conn
                .prepare_cached(&self.exists)?
                .query_row([rowid], |_| Ok(()))
                .optional()?
                .is_some());
        };
        if let Some(names) = &self.update_of {
            if let Some(updated) = self.update_changed_columns(conn, names, rowid, values)? {
                return Ok(updated);
            }
        }
        let mut stmt = conn.prepare_cached(update)?;
        self.bind(&mut stmt, rowid, values)?;
        Ok(stmt.raw_execute()? > 0)
    }

    /// For a table with `UPDATE OF` triggers: sets only the columns whose values differ from
    /// the row's, so that such a trigger fires where its column changed, as on the node where
    /// the change was made (a whole-row image does not say which columns its statement named).
    /// Some(false): no such row. None: no column differs, and the caller sets them all (an
    /// update that changed nothing still fires the table's plain UPDATE triggers).
    fn update_changed_columns(
        &self,
        conn: &Connection,
        names: &[String],
        rowid: i64,
        values: &[Value],
    ) -> Result<Option<bool>> {
        if self.keep.last().is_some_and(|&last| values.len() <= last) {
            return Ok(None); // (the whole-row update refuses it, saying why)
        }
        let Some(current) = self.read_kept(conn, rowid)? else {
            return Ok(Some(false));
        };
        let changed: Vec<usize> = (0..self.keep.len())
            .filter(|&n| values.get(self.keep[n]) != Some(&current[n]))
            .collect();
        if changed.is_empty() {
            return Ok(None);
        }
        let sets: Vec<String> = changed
            .iter()
            .enumerate()
            .map(|(k, &n)| format!("{} = ?{}", names[n], k + 2))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE rowid = ?1",
            ident(&self.table),
            sets.join(", ")
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        stmt.raw_bind_parameter(1, rowid)?;
        for (k, &n) in changed.iter().enumerate() {
            stmt.raw_bind_parameter(k + 2, &values[self.keep[n]])?;
        }
        Ok(Some(stmt.raw_execute()? > 0))
    }

    /// Update the row if it exists, else insert it: for rows that usually exist.
    pub fn update_or_insert(&self, conn: &Connection, rowid: i64, values: &[Value]) -> Result<()> {
        if !self.update(conn, rowid, values)? {
            self.insert(conn, rowid, values)?;
        }
        Ok(())
    }

    /// Make the row hold `values`, writing nothing when it already does: for rows that are
    /// usually as given already.
    pub fn make_equal(&self, conn: &Connection, rowid: i64, values: &[Value]) -> Result<()> {
        if self.keep.is_empty() {
            return self.update_or_insert(conn, rowid, values);
        }
        match self.read_kept(conn, rowid)? {
            Some(row)
                if self
                    .keep
                    .iter()
                    .zip(&row)
                    .all(|(&i, v)| values.get(i) == Some(v)) =>
            {
                Ok(())
            }
            Some(_) => self.update(conn, rowid, values).map(drop),
            None => Ok(self.insert(conn, rowid, values)?),
        }
    }

    /// Insert the row, else (its id is taken) update it: for rows that are usually new.
    pub fn insert_or_update(&self, conn: &Connection, rowid: i64, values: &[Value]) -> Result<()> {
        let inserted = self.insert(conn, rowid, values);
        self.update_if_insert_refused(conn, rowid, values, inserted)
    }

    /// A device: refuses to write a row from the primaries over a row only this device has
    /// (row_owner NULL) under the same id, which would be lost; the sync stops, saying so,
    /// until the app deletes that row or gives it another id.
    fn refuse_over_local(&self, conn: &Connection, rowid: i64) -> Result<()> {
        let Some(is_local) = &self.is_local else {
            return Ok(());
        };
        let local = conn
            .prepare_cached(is_local)?
            .query_row([rowid], |_| Ok(()))
            .optional()?
            .is_some();
        if !local {
            return Ok(());
        }
        Err(crate::Error::rule(format!(
            "row {rowid} of `{}` from the primaries has the id of a row only this device has \
             (row_owner NULL), which it would replace: delete that row here (insert it again \
             without its id to keep it) and sync resumes",
            self.table
        )))
    }

    /// After an attempt to insert the row: when its id was taken, update the row there instead.
    fn update_if_insert_refused(
        &self,
        conn: &Connection,
        rowid: i64,
        values: &[Value],
        inserted: rusqlite::Result<()>,
    ) -> Result<()> {
        match inserted {
            Ok(()) => Ok(()),
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                if self.update(conn, rowid, values)? {
                    Ok(())
                } else {
                    // Not the id: another unique key of the table refused the row.
                    Err(e.into())
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Insert many rows given by `columns` (unknown columns are skipped), as a device's download
/// does: one prepared statement for them all. A row whose id is taken here already is updated
/// instead, unless it is a row only this device has (row_owner NULL), which is never
/// replaced: the download stops, saying so ([`RowSql::refuse_over_local`]).
pub fn insert_rows(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    rows: &[(i64, Vec<Value>)],
) -> Result<()> {
    if let Some((_, values)) = rows.iter().find(|(_, v)| v.len() != columns.len()) {
        return Err(crate::Error::rule(format!(
            "a row of `{}` has {} values for {} columns",
            t.name,
            values.len(),
            columns.len()
        )));
    }
    let sql = RowSql::new(t, columns);
    let width = sql.row_width();
    let per_insert = ROWS_PER_INSERT.min(MAX_PARAMETERS / width);
    let grouped = if per_insert > 1 {
        rows.len() / per_insert * per_insert
    } else {
        0
    };
    let (grouped, rest) = rows.split_at(grouped);
    if !grouped.is_empty() {
        let mut many = conn.prepare_cached(&sql.insert_many_sql(per_insert))?;
        for group in grouped.chunks(per_insert) {
            for (k, (rowid, values)) in group.iter().enumerate() {
                sql.bind_at(&mut many, 1 + k * width, *rowid, values)?;
            }
            match many.raw_execute() {
                Ok(_) => {}
                // A row of the group is here already: the statement wrote none of them.
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                    insert_one_by_one(conn, &sql, group)?
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    insert_one_by_one(conn, &sql, rest)
}

/// Rows per INSERT statement in a download. One statement keeps SQLite's cursor at the end of
/// the table from row to row (appending without a search from the root) and pays the fixed
/// cost of running a statement once per group.
const ROWS_PER_INSERT: usize = 64;
/// Parameters per statement, within SQLite's smallest default limit.
const MAX_PARAMETERS: usize = 999;

/// The insert statements of one batch of rows, held from row to row. A lookup in rusqlite's
/// statement cache copies and hashes the statement's text each time: about a fifth of a small
/// row's insert (170 of 800 ns in a scratch program), paid for every row a primary, a
/// follower or a device writes. Statements go back to the cache when the batch ends.
pub struct HeldInserts<'c> {
    conn: &'c Connection,
    held: Vec<(Arc<RowSql>, rusqlite::CachedStatement<'c>)>,
}

/// Statements held at once (tables times column orders met in a batch); beyond it they are
/// all given back, so that a batch of many column orders holds no more than the cache would.
const MAX_HELD: usize = 16;

impl<'c> HeldInserts<'c> {
    pub fn new(conn: &'c Connection) -> HeldInserts<'c> {
        HeldInserts {
            conn,
            held: Vec::new(),
        }
    }

    /// [`RowSql::insert`], with the statement held for the next rows of `sql`.
    pub fn insert(
        &mut self,
        sql: &Arc<RowSql>,
        rowid: i64,
        values: &[Value],
    ) -> rusqlite::Result<()> {
        let at = match self.held.iter().position(|(s, _)| Arc::ptr_eq(s, sql)) {
            Some(at) => at,
            None => {
                if self.held.len() == MAX_HELD {
                    self.held.clear();
                }
                let stmt = self.conn.prepare_cached(&sql.insert)?;
                self.held.push((sql.clone(), stmt));
                self.held.len() - 1
            }
        };
        sql.insert_held(&mut self.held[at].1, rowid, values)
    }

    /// [`RowSql::insert_or_update`], the insert through a held statement.
    pub fn insert_or_update(
        &mut self,
        sql: &Arc<RowSql>,
        rowid: i64,
        values: &[Value],
    ) -> Result<()> {
        let inserted = self.insert(sql, rowid, values);
        sql.update_if_insert_refused(self.conn, rowid, values, inserted)
    }

    /// [`Self::insert_or_update`] on a device: a row from the primaries never replaces a row
    /// only this device has under its id ([`RowSql::refuse_over_local`]).
    pub fn insert_or_update_keeping_local(
        &mut self,
        sql: &Arc<RowSql>,
        rowid: i64,
        values: &[Value],
    ) -> Result<()> {
        let inserted = self.insert(sql, rowid, values);
        if inserted.is_err() {
            sql.refuse_over_local(self.conn, rowid)?;
        }
        sql.update_if_insert_refused(self.conn, rowid, values, inserted)
    }

    /// The schema changed: the held statements may name what is gone.
    pub fn schema_changed(&mut self) {
        self.held.clear();
    }
}

/// Insert rows one statement each; a row whose id is taken updates the row there instead.
fn insert_one_by_one(conn: &Connection, sql: &RowSql, rows: &[(i64, Vec<Value>)]) -> Result<()> {
    // One statement held for all the rows: the per-row cache lookup cost as much as a third
    // of the insert itself.
    let mut insert = conn.prepare_cached(&sql.insert)?;
    for (rowid, values) in rows {
        let inserted = sql.insert_held(&mut insert, *rowid, values);
        if inserted.is_err() {
            sql.refuse_over_local(conn, *rowid)?;
        }
        sql.update_if_insert_refused(conn, *rowid, values, inserted)?;
    }
    Ok(())
}

pub fn delete_row(conn: &Connection, t: &TableLayout, rowid: i64) -> Result<()> {
    conn.prepare_cached(&format!("DELETE FROM {} WHERE rowid = ?1", ident(&t.name)))?
        .execute([rowid])?;
    Ok(())
}

/// Whether a write failed on a row id or unique key another row holds.
pub(crate) fn is_key_conflict(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi::{
        SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_ROWID, SQLITE_CONSTRAINT_UNIQUE,
    };
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if [SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_ROWID]
                .contains(&f.extended_code)
    )
}
