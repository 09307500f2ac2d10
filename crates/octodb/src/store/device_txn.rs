//! A primary deciding a device's transaction: the replication rules (ownership, ids, the
//! column rules, unique values traded within it) checked row by row as its rows are written,
//! and the changes as the primaries now have them, for the log. Rows are written with
//! `store::apply`'s statements.

use super::apply::{delete_row, is_key_conflict, HeldInserts, RowSql, Tables};
use super::column_rules::{self, ColumnRule};
use super::schema::{self, ident, TableLayout};
use super::unique_holders::Aside;
use crate::changes::{column_bit, ChangeSet, Op};
use crate::error::Result;
use crate::value::{Owner, Value};
use rusqlite::{Connection, ErrorCode, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

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
    // device pass the check with its own row_owner and write another user's. Names are
    // compared as SQLite compares them, ignoring ASCII case: `ROW_OWNER` then `row_owner`
    // passed an exact comparison (the security review).
    for h in &cs.tables {
        let mut seen = HashSet::with_capacity(h.columns.len());
        if let Some(c) = h
            .columns
            .iter()
            .find(|c| !seen.insert(c.to_ascii_lowercase()))
        {
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
                    "table `{}` does not exist or is not replicated to devices (dropped on the \
                     primaries after this transaction was written, perhaps offline?): the \
                     transaction is rejected whole, its other changes too",
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
            // would store the row under an id the log does not know. (Names compared as
            // SQLite does, ignoring case: `ID` went past an exact comparison.)
            let alias = t.rowid_alias.map(|i| &t.columns[i]);
            let given = alias.and_then(|a| {
                header
                    .columns
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(a))
            });
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
                    // The schema may refuse it (a trigger's RAISE(ABORT), a foreign key):
                    // this transaction is rejected, not the batch it came in (the security
                    // review: every device's work in the batch failed, again at each resend).
                    match delete_row(conn, &t, rowid) {
                        Ok(()) => {}
                        Err(crate::Error::Sqlite(e)) if fault_of_the_node(&e) => {
                            return Err(e.into())
                        }
                        Err(e) => {
                            return Ok(Err(format!(
                                "delete of row {rowid} of `{}` failed: {e}",
                                t.name
                            )))
                        }
                    }
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
        if let Some(j) = t.columns.iter().position(|tc| tc.eq_ignore_ascii_case(c)) {
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
