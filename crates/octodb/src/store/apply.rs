//! Deterministic application of changes on the engine's own connection (no TEMP triggers there):
//! writing rows, and a primary's checks and conflict rules for a device's transaction.

use super::schema::{self, ident, TableLayout};
use crate::changes::{column_bit, ChangeSet, Op};
use crate::error::Result;
use crate::value::{Owner, Value};
use rusqlite::{params_from_iter, Connection, ErrorCode, OptionalExtension};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Layouts of the local tables, refreshed when the schema changes.
#[derive(Default)]
pub struct Tables {
    cache: HashMap<String, Option<Arc<TableLayout>>>,
    schema_version: i64,
}

impl Tables {
    pub fn get(&mut self, conn: &Connection, name: &str) -> Result<Option<Arc<TableLayout>>> {
        let v: i64 = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        if v != self.schema_version {
            self.cache.clear();
            self.schema_version = v;
        }
        if let Some(t) = self.cache.get(name) {
            return Ok(t.clone());
        }
        let t = schema::table_layout(conn, name)?.map(Arc::new);
        self.cache.insert(name.to_string(), t.clone());
        Ok(t)
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
    let pairs: Vec<(&String, &Value)> = columns
        .iter()
        .zip(values)
        .filter(|(c, _)| t.columns.contains(c))
        .collect();
    let q = ident(&t.name);
    let sets: Vec<String> = pairs
        .iter()
        .enumerate()
        .map(|(i, (c, _))| format!("{} = ?{}", ident(c), i + 2))
        .collect();
    let mut args: Vec<&Value> = Vec::with_capacity(pairs.len() + 1);
    let rowid_v = Value::Integer(rowid);
    args.push(&rowid_v);
    args.extend(pairs.iter().map(|(_, v)| *v));
    let updated = if sets.is_empty() {
        conn.prepare_cached(&format!("SELECT 1 FROM {q} WHERE rowid = ?1"))?
            .query_row([rowid], |_| Ok(()))
            .optional()?
            .map_or(0, |_| 1)
    } else {
        conn.prepare_cached(&format!(
            "UPDATE {q} SET {} WHERE rowid = ?1",
            sets.join(", ")
        ))?
        .execute(params_from_iter(args.iter()))?
    };
    if updated == 0 {
        insert_row(conn, t, &pairs, rowid)?;
    }
    Ok(())
}

/// Insert many rows given by `columns` (unknown columns are skipped), as the initial download
/// does: one prepared statement for them all. A row whose id is taken here already (a local
/// row made before the download) is merged with [`write_row`] instead.
pub fn insert_rows(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    rows: &[(i64, Vec<Value>)],
) -> Result<()> {
    let keep: Vec<usize> = (0..columns.len())
        .filter(|&i| t.columns.contains(&columns[i]))
        .collect();
    let mut names = vec!["rowid".to_string()];
    names.extend(keep.iter().map(|&i| ident(&columns[i])));
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO {}({}) VALUES ({})",
        ident(&t.name),
        names.join(", "),
        marks.join(", ")
    ))?;
    for (rowid, values) in rows {
        if values.len() != columns.len() {
            return Err(crate::Error::rule(format!(
                "a row of `{}` has {} values for {} columns",
                t.name,
                values.len(),
                columns.len()
            )));
        }
        stmt.raw_bind_parameter(1, rowid)?;
        for (n, &i) in keep.iter().enumerate() {
            stmt.raw_bind_parameter(n + 2, &values[i])?;
        }
        match stmt.raw_execute() {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                write_row(conn, t, columns, *rowid, values)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn insert_row(
    conn: &Connection,
    t: &TableLayout,
    pairs: &[(&String, &Value)],
    rowid: i64,
) -> Result<()> {
    let mut cols = vec!["rowid".to_string()];
    cols.extend(pairs.iter().map(|(c, _)| ident(c)));
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let rowid_v = Value::Integer(rowid);
    let mut args: Vec<&Value> = vec![&rowid_v];
    args.extend(pairs.iter().map(|(_, v)| *v));
    conn.prepare_cached(&format!(
        "INSERT INTO {}({}) VALUES ({})",
        ident(&t.name),
        cols.join(", "),
        marks.join(", ")
    ))?
    .execute(params_from_iter(args.iter()))?;
    Ok(())
}

pub fn delete_row(conn: &Connection, t: &TableLayout, rowid: i64) -> Result<()> {
    conn.prepare_cached(&format!("DELETE FROM {} WHERE rowid = ?1", ident(&t.name)))?
        .execute([rowid])?;
    Ok(())
}

/// The whole row in `t`'s column order, or None if absent.
pub fn read_row(conn: &Connection, t: &TableLayout, rowid: i64) -> Result<Option<Vec<Value>>> {
    let cols: Vec<String> = t.columns.iter().map(|c| ident(c)).collect();
    let n = cols.len();
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {} FROM {} WHERE rowid = ?1",
            cols.join(", "),
            ident(&t.name)
        ))?
        .query_row([rowid], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .optional()?)
}

/// The device a transaction comes from, as the primaries know it.
#[derive(Debug, Clone, Copy)]
pub struct Sender {
    pub node_id: u32,
    pub user_id: i64,
}

/// Outcome of checking and applying a device's transaction on a primary.
pub type Verdict = std::result::Result<ChangeSet, String>;

/// Apply a device's transaction with the replication rules. `Ok(Err(reason))` means the
/// transaction is rejected: the caller rolls back what was applied (it runs in a savepoint).
/// `Ok(Ok(changes))` gives the changes as the primaries now have them, for the log.
pub fn apply_device_txn(
    conn: &Connection,
    tables: &mut Tables,
    sender: Sender,
    cs: &ChangeSet,
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
    let mut out = ChangeSet::default();
    for op in &cs.ops {
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
        if let Some(c) = header.columns.iter().find(|c| !t.columns.contains(c)) {
            return Ok(Err(format!("table `{}` has no column `{c}`", t.name)));
        }
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
        }
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
                        "insert into `{}` of a row not owned by the sending user {}",
                        t.name, sender.user_id
                    )));
                }
                let pairs: Vec<(&String, &Value)> = header.columns.iter().zip(values).collect();
                match insert_row(conn, &t, &pairs, rowid) {
                    Ok(()) => {}
                    Err(crate::Error::Sqlite(e)) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                        return Ok(Err(format!(
                            "insert into `{}` conflicts with a row the primaries already have (first insert wins): {e}",
                            t.name
                        )))
                    }
                    Err(crate::Error::Sqlite(e)) => return Ok(Err(format!("insert into `{}` failed: {e}", t.name))),
                    Err(e) => return Err(e),
                }
            }
            Op::Update {
                changed, values, ..
            } => {
                let Some(owner) = existing_owner(conn)? else {
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
                if let Err(e) = write_row(conn, &t, &cols, rowid, &vals) {
                    return Ok(Err(format!("update of `{}` failed: {e}", t.name)));
                }
            }
            Op::Delete { .. } => {
                let Some(owner) = existing_owner(conn)? else {
                    continue;
                };
                if !mine(&owner) {
                    return Ok(Err(format!(
                        "delete of row {rowid} of `{}`, which user {} does not own",
                        t.name, sender.user_id
                    )));
                }
                delete_row(conn, &t, rowid)?;
                out.ops.push(Op::Delete {
                    table: out_table,
                    rowid,
                    owner,
                });
                continue;
            }
            _ => {}
        }
        if let Some(values) = read_row(conn, &t, rowid)? {
            out.ops.push(Op::Upsert {
                table: out_table,
                rowid,
                values,
            });
        }
    }
    Ok(Ok(out))
}
