//! Deterministic application of changes on the engine's own connection (no TEMP triggers there):
//! writing rows, and a primary's checks and conflict rules for a device's transaction.

use super::column_rules::{self, ColumnRule};
use super::schema::{self, ident, TableLayout};
use super::unique_holders::Aside;
use crate::changes::{column_bit, ChangeSet, Op};
use crate::error::Result;
use crate::value::{Owner, Value};
use rusqlite::{Connection, ErrorCode, OptionalExtension};
use std::collections::{HashMap, HashSet};
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
        let keep: Vec<usize> = (0..columns.len())
            .filter(|&i| t.columns.contains(&columns[i]))
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

/// The device a transaction comes from, as the primaries know it.
#[derive(Debug, Clone, Copy)]
pub struct Sender {
    pub node_id: u32,
    pub user_id: i64,
}

/// Outcome of checking and applying a device's transaction on a primary.
pub type Verdict = std::result::Result<ChangeSet, String>;

/// Whether a failed write is the primary's own trouble (disk full, I/O error, out of memory,
/// ...) rather than something wrong with the device's transaction (a constraint, a trigger
/// refusing it). The first must not reject the transaction, which the device would then undo:
/// the batch fails instead and the device sends the transaction again later.
fn fault_of_the_node(e: &rusqlite::Error) -> bool {
    use ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DiskFull
                | SystemIoFailure
                | OutOfMemory
                | DatabaseBusy
                | DatabaseLocked
                | ReadOnly
                | CannotOpen
                | DatabaseCorrupt
                | NotADatabase
                | FileLockingProtocolFailed
                | OperationInterrupted
        )
    )
}

/// Apply a device's transaction with the replication rules. `Ok(Err(reason))` means the
/// transaction is rejected: the caller rolls back what was applied (it runs in a savepoint).
/// `Ok(Ok(changes))` gives the changes as the primaries now have them, for the log.
///
/// With `read_back` false the caller captures what the transaction wrote itself (see
/// `store::trigger_effects`), and the changes returned are empty.
pub fn apply_device_txn(
    conn: &Connection,
    tables: &mut Tables,
    inserts: &mut HeldInserts<'_>,
    sender: Sender,
    cs: &ChangeSet,
    read_back: bool,
) -> Result<Verdict> {
    // The owner checks read a column's value at its first place in the header, but SQLite's
    // UPDATE keeps the last assignment to a column: a header naming a column twice would let a
    // device pass the check with its own row_owner and write another user's.
    for h in &cs.tables {
        let mut seen = HashSet::with_capacity(h.columns.len());
        if let Some(c) = h.columns.iter().find(|c| !seen.insert(c.as_str())) {
            return Ok(Err(format!(
                "the change to `{}` names column `{c}` twice",
                h.name
            )));
        }
    }
    // Work written before the primaries renamed a table or column it names (offline, say).
    let renamed = super::renames::under_current_names(conn, tables, cs)?;
    let cs = renamed.as_ref().unwrap_or(cs);
    let mut out = ChangeSet::default();
    // Statements for each table header, looked up at its first row.
    let mut statements: HashMap<u32, Arc<RowSql>> = HashMap::new();
    // The columns devices may not write freely, per table header (see `column_rules`).
    let mut rules: HashMap<u32, Vec<(String, ColumnRule)>> = HashMap::new();
    // Rows stepped aside for rows of this transaction that take their unique values.
    let mut aside = Aside::default();
    for (at, op) in cs.ops.iter().enumerate() {
        let later = &cs.ops[at + 1..];
        let (table, rowid) = match op {
            Op::Insert { table, rowid, .. }
            | Op::Update { table, rowid, .. }
            | Op::Delete { table, rowid, .. } => (*table, *rowid),
            Op::Upsert { .. } | Op::Ddl { .. } => {
                return Ok(Err(
                    "devices cannot send schema changes or whole-row upserts".into(),
                ))
            }
        };
        let Some(header) = cs.header(table) else {
            return Ok(Err(format!(
                "change refers to table header {table}, which the transaction lacks"
            )));
        };
        let t = match tables.get(conn, &header.name)? {
            Some(t)
                if t.is_replicated()
                    && !schema::is_private(&t.name)
                    && !schema::is_internal(&t.name) =>
            {
                t
            }
            _ => {
                return Ok(Err(format!(
                    "table `{}` does not exist or is not replicated to devices",
                    header.name
                )))
            }
        };
        // A column the table no longer has (dropped on the primaries since the device wrote,
        // perhaps offline; a renamed one was read under its new name) is left out; the rest
        // of the change applies, as it does on the device once the new schema reaches it.
        // (Rejecting the transaction would lose every row a device wrote offline across such
        // a schema change.)
        // A row shorter than its header hides row_owner from the owner checks, and a changed
        // column without a value is written as NULL: a device could take its row from its user.
        if let Op::Insert { values, .. } | Op::Update { values, .. } = op {
            if values.len() != header.columns.len() {
                return Ok(Err(format!(
                    "change to `{}` has {} values for {} columns",
                    t.name,
                    values.len(),
                    header.columns.len()
                )));
            }
            // The INTEGER PRIMARY KEY is the row id: a change naming another value for it
            // would store the row under an id the log does not know.
            let alias = t.rowid_alias.map(|i| &t.columns[i]);
            let given = alias.and_then(|a| header.columns.iter().position(|c| c == a));
            if let Some(i) = given {
                let changes_it = match op {
                    Op::Update { changed, .. } => changed & column_bit(i) != 0,
                    _ => true,
                };
                if changes_it && values[i] != Value::Integer(rowid) {
                    return Ok(Err(format!(
                        "change to row {rowid} of `{}` gives its id column the value {:?}; a row's id never changes",
                        t.name, values[i]
                    )));
                }
            }
        }
        let table_rules = match rules.entry(table) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(column_rules::of_table(conn, &t.name)?)
            }
        };
        let refusal = match op {
            Op::Insert { values, .. } => {
                column_rules::insert_refusal(&t.name, table_rules, &header.columns, values)
            }
            Op::Update { changed, .. } => {
                column_rules::update_refusal(&t.name, table_rules, &header.columns, *changed)
            }
            _ => None,
        };
        if let Some(reason) = refusal {
            return Ok(Err(reason));
        }
        let sql = statements
            .entry(table)
            .or_insert_with(|| tables.statements(&t, &header.columns));
        let existing_owner = |conn: &Connection| -> Result<Option<Value>> {
            let ow = ident(&t.columns[t.owner.unwrap_or(0)]);
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {ow} FROM {} WHERE rowid = ?1",
                    ident(&t.name)
                ))?
                .query_row([rowid], |r| r.get::<_, Value>(0))
                .optional()?)
        };
        let mine = |v: &Value| Owner::of(v) == Owner::User(sender.user_id);
        let out_table = out.table_index(&t.name, &t.columns);
        match op {
            Op::Insert { values, .. } => {
                if !cs
                    .owner_of(table, values)
                    .is_some_and(|o| o == Owner::User(sender.user_id))
                {
                    return Ok(Err(format!(
                        "insert of row {rowid} into `{}`, a row not owned by the sending user {}",
                        t.name, sender.user_id
                    )));
                }
                match inserts.insert(sql, rowid, values) {
                    Ok(()) => {}
                    Err(e) if is_key_conflict(&e) => {
                        return Ok(Err(format!(
                            "insert of row {rowid} into `{}` conflicts with a row the primaries already have (first insert wins): {e}",
                            t.name
                        )))
                    }
                    Err(e) if fault_of_the_node(&e) => return Err(e.into()),
                    Err(e) => {
                        return Ok(Err(format!(
                            "insert of row {rowid} into `{}` failed: {e}{}",
                            t.name,
                            unwritten_column(&e, &t.name, &header.columns)
                        )))
                    }
                }
                if read_back && stored_as_given(&t, &header.columns, values) {
                    out.ops.push(Op::Upsert {
                        table: out_table,
                        rowid,
                        values: values.clone(),
                    });
                    continue;
                }
            }
            Op::Update {
                changed, values, ..
            } => {
                let stashed = aside.take(&t.name, rowid);
                let Some(owner) = owner_now(&t, stashed.as_deref(), || existing_owner(conn))?
                else {
                    continue;
                };
                if !mine(&owner) {
                    return Ok(Err(format!(
                        "update of row {rowid} of `{}`, which user {} does not own",
                        t.name, sender.user_id
                    )));
                }
                let mut cols = Vec::new();
                let mut vals = Vec::new();
                for (i, c) in header.columns.iter().enumerate() {
                    if changed & column_bit(i) != 0 {
                        cols.push(c.clone());
                        vals.push(values.get(i).cloned().unwrap_or(Value::Null));
                    }
                }
                if let Some(new_owner) = cs.owner_of(table, values) {
                    if new_owner != Owner::User(sender.user_id) {
                        return Ok(Err(format!(
                            "update of row {rowid} of `{}` would give it away; ownership never moves",
                            t.name
                        )));
                    }
                }
                // A row stepped aside for an earlier row comes back whole, with its changes.
                let whole = stashed.map(|row| with_changes(&t, row, &cols, &vals));
                let write = |tables: &mut Tables| match &whole {
                    Some(row) => Ok(tables.statements(&t, &t.columns).insert(conn, rowid, row)?),
                    None => tables
                        .statements(&t, &cols)
                        .update_or_insert(conn, rowid, &vals),
                };
                let mut written = write(tables);
                if matches!(&written, Err(e) if crate::store::unique_holders::is_unique_violation(e))
                {
                    // Rows this transaction changes later may hold the values it takes (a
                    // swap): they step aside until their turn.
                    let image = match &whole {
                        Some(row) => Some(row.clone()),
                        None => RowSql::new(&t, &t.columns)
                            .read(conn, rowid)?
                            .map(|row| with_changes(&t, row, &cols, &vals)),
                    };
                    if let Some(image) = image {
                        if aside.make_room(conn, &t, rowid, &image, (cs, later))? {
                            written = write(tables);
                        }
                    }
                }
                match written {
                    Err(crate::Error::Sqlite(e)) if fault_of_the_node(&e) => return Err(e.into()),
                    Err(e) if crate::store::unique_holders::is_unique_violation(&e) => {
                        return Ok(Err(format!(
                            "update of row {rowid} of `{}` failed: {e}: another row holds that \
                             value on the primaries",
                            t.name
                        )))
                    }
                    Err(e) => {
                        return Ok(Err(format!(
                            "update of row {rowid} of `{}` failed: {e}",
                            t.name
                        )))
                    }
                    Ok(()) => {}
                }
            }
            Op::Delete { .. } => {
                let stashed = aside.take(&t.name, rowid);
                let Some(owner) = owner_now(&t, stashed.as_deref(), || existing_owner(conn))?
                else {
                    continue;
                };
                if !mine(&owner) {
                    return Ok(Err(format!(
                        "delete of row {rowid} of `{}`, which user {} does not own",
                        t.name, sender.user_id
                    )));
                }
                if let Some(gate) = column_rules::delete_gate(table_rules) {
                    let kept = stashed.as_ref().and_then(|row| {
                        let j = t.columns.iter().position(|c| c == gate)?;
                        row.get(j).cloned()
                    });
                    let read = match kept {
                        Some(value) => Ok(value),
                        None => conn
                            .prepare_cached(&format!(
                                "SELECT {} FROM {} WHERE rowid = ?1",
                                ident(gate),
                                ident(&t.name)
                            ))
                            .and_then(|mut s| s.query_row([rowid], |r| r.get::<_, Value>(0))),
                    };
                    let refusal = match read {
                        Ok(value) => column_rules::delete_refusal(&t.name, gate, rowid, &value),
                        // A rule naming a column the table lost: refuse rather than guess.
                        Err(e) => Some(format!(
                            "the delete rule of `{}` names its column `{gate}`, which cannot be read: {e}",
                            t.name
                        )),
                    };
                    if let Some(reason) = refusal {
                        return Ok(Err(reason));
                    }
                }
                if stashed.is_none() {
                    delete_row(conn, &t, rowid)?;
                }
                if read_back {
                    out.ops.push(Op::Delete {
                        table: out_table,
                        rowid,
                        owner,
                    });
                }
                continue;
            }
            _ => {}
        }
        if !read_back {
            continue;
        }
        if let Some(values) = sql.read(conn, rowid)? {
            out.ops.push(Op::Upsert {
                table: out_table,
                rowid,
                values,
            });
        }
    }
    if let Some(reason) = aside.restore(conn, tables)? {
        return Ok(Err(reason));
    }
    Ok(Ok(out))
}

/// `row` (whole, in `t`'s column order) with an update's changed `cols` set to `vals`.
fn with_changes(
    t: &TableLayout,
    mut row: Vec<Value>,
    cols: &[String],
    vals: &[Value],
) -> Vec<Value> {
    for (c, v) in cols.iter().zip(vals) {
        if let Some(j) = t.columns.iter().position(|tc| tc == c) {
            row[j] = v.clone();
        }
    }
    row
}

/// The owner of the row a change names: from the row kept aside for it (whole, in its
/// table's column order), else as the table holds it (`read`); None when it is gone.
fn owner_now(
    t: &TableLayout,
    kept: Option<&[Value]>,
    read: impl FnOnce() -> Result<Option<Value>>,
) -> Result<Option<Value>> {
    match kept {
        Some(row) => Ok(Some(
            t.owner
                .and_then(|i| row.get(i).cloned())
                .unwrap_or(Value::Null),
        )),
        None => read(),
    }
}

/// Whether an inserted row is stored exactly as `values` (given for `columns`), so that it
/// need not be read back: every column of the table given, in its order, and each value kept
/// by its column's affinity. Only called where the schema has no triggers (with triggers the
/// primary captures what they wrote instead of reading back).
fn stored_as_given(t: &TableLayout, columns: &[String], values: &[Value]) -> bool {
    t.columns == columns
        && values.len() == t.kinds.len()
        && values.iter().zip(&t.kinds).all(|(v, k)| k.keeps(v))
}

/// A row refused because its id or a unique value is another row's (a conflict between
/// writers), rather than by a CHECK, NOT NULL, foreign key or trigger (a rule of the data):
/// the two are worded apart in the rejection.
/// A NOT NULL failure on a column the device's change does not write says why: the table
/// gained that column (or one was renamed to it) after the device made the change, offline
/// most likely; SQLite's message alone names a column the app never wrote.
fn unwritten_column(e: &rusqlite::Error, table: &str, written: &[String]) -> String {
    let rusqlite::Error::SqliteFailure(f, Some(msg)) = e else {
        return String::new();
    };
    if f.extended_code != rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL {
        return String::new();
    }
    let column = msg
        .strip_prefix("NOT NULL constraint failed: ")
        .and_then(|c| c.strip_prefix(table))
        .and_then(|c| c.strip_prefix('.'));
    match column {
        Some(c) if !written.iter().any(|w| w.eq_ignore_ascii_case(c)) => format!(
            " (the change does not write `{c}`: the primaries' table gained that column, or \
             one was renamed to it, after the device made the change; the app writes it once \
             the device has the new schema)"
        ),
        _ => String::new(),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    /// Rows of `items(id, code UNIQUE, row_owner)`: (id, code, owner).
    fn items(rows: &[(i64, &str, i64)]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&conn).unwrap();
        conn.execute_batch(
            "CREATE TABLE items(id INTEGER PRIMARY KEY, code TEXT UNIQUE, row_owner)",
        )
        .unwrap();
        for (id, code, owner) in rows {
            conn.execute(
                "INSERT INTO items VALUES (?1, ?2, ?3)",
                rusqlite::params![id, code, owner],
            )
            .unwrap();
        }
        conn
    }

    /// A device's updates giving each row in `moves` (id, code) its new code, in order.
    fn moves(moves: &[(i64, &str, i64)]) -> ChangeSet {
        let mut cs = ChangeSet::default();
        let columns = ["id", "code", "row_owner"].map(String::from);
        let table = cs.table_index("items", &columns);
        for (id, code, owner) in moves {
            cs.ops.push(Op::Update {
                table,
                rowid: *id,
                changed: column_bit(1),
                values: vec![
                    Value::Integer(*id),
                    Value::Text(code.to_string()),
                    Value::Integer(*owner),
                ],
            });
        }
        cs
    }

    fn apply(conn: &Connection, user_id: i64, cs: &ChangeSet) -> Verdict {
        let mut tables = Tables::default();
        let mut inserts = HeldInserts::new(conn);
        let sender = Sender {
            node_id: 2,
            user_id,
        };
        apply_device_txn(conn, &mut tables, &mut inserts, sender, cs, true).unwrap()
    }

    fn codes(conn: &Connection) -> String {
        conn.query_row(
            "SELECT group_concat(id || '=' || code, ' ') FROM (SELECT * FROM items ORDER BY id)",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_devices_rows_trading_unique_values_are_applied_and_only_its_own() {
        // A swap and a rotation of three, as a device's final images come (one row each).
        let conn = items(&[(1, "x", 7), (2, "y", 7), (3, "z", 7)]);
        assert!(apply(&conn, 7, &moves(&[(1, "y", 7), (2, "x", 7)])).is_ok());
        assert_eq!(codes(&conn), "1=y 2=x 3=z");
        let rotation = moves(&[(1, "z", 7), (2, "y", 7), (3, "x", 7)]);
        assert!(apply(&conn, 7, &rotation).is_ok());
        assert_eq!(codes(&conn), "1=z 2=y 3=x");

        // Another user's row is never moved for it: the transaction is refused.
        let conn = items(&[(1, "x", 7), (2, "y", 8)]);
        let refused = apply(&conn, 7, &moves(&[(1, "y", 7), (2, "x", 7)])).unwrap_err();
        assert!(refused.contains("does not own"), "{refused}");
        // A value held by a row the transaction does not change stays a conflict.
        let conn = items(&[(1, "x", 7), (2, "y", 7)]);
        let refused = apply(&conn, 7, &moves(&[(1, "y", 7)])).unwrap_err();
        assert!(refused.contains("UNIQUE"), "{refused}");
    }

    #[test]
    fn a_full_disk_fails_the_batch_but_a_refused_row_rejects_the_transaction() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_FULL,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_NOMEM,
            ffi::SQLITE_BUSY,
        ] {
            assert!(fault_of_the_node(&sqlite_error(code)), "code {code}");
        }
        for code in [
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            ffi::SQLITE_CONSTRAINT_CHECK,
            ffi::SQLITE_CONSTRAINT_TRIGGER,
            ffi::SQLITE_ERROR,
            ffi::SQLITE_MISMATCH,
            ffi::SQLITE_TOOBIG,
        ] {
            assert!(!fault_of_the_node(&sqlite_error(code)), "code {code}");
        }
    }
}
