//! What a primary that is far behind receives instead of the log: the cluster's shared state,
//! and only that. It carries the schema, every replicated row (`row_owner` not NULL), the
//! primaries' log and the authorization state (nodes and users); never the sender's secret
//! key, node id, sequences or outbox (those live in `_octo_meta` and stay out), nor its local
//! rows. Installing it replaces the receiver's replicated rows and keeps its local ones, so a
//! copied file cannot clone a primary.
//!
//! Held in memory whole: fine for the databases the tests and benchmarks use; a file-backed
//! snapshot for large databases is a known next step (README).

use crate::error::{Error, Result};
use crate::store::schema::{self, ident};
use crate::value::Value;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// The primaries' internal tables that are shared state: copied whole.
const SHARED_INTERNAL: &[&str] = &["_octo_log", "_octo_nodes", "_octo_users", "_octo_epochs"];
/// The renames the primaries' schema statements made (`store::renames`), shared state too.
const RENAMES: &str = "_octo_renames";

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SharedState {
    /// `(type, name, sql)` of the app's schema objects, tables first.
    schema: Vec<(String, String, String)>,
    /// Replicated rows of the app's tables, and the shared internal tables whole.
    tables: Vec<TableRows>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TableRows {
    name: String,
    columns: Vec<String>,
    rows: Vec<(i64, Vec<Value>)>,
}

impl SharedState {
    pub fn read(c: &Connection) -> Result<SharedState> {
        let schema = app_schema(c)?;
        let mut tables = Vec::new();
        for t in schema::user_tables(c)? {
            if t.is_replicated() && !t.without_rowid {
                let filter = format!("{} IS NOT NULL", ident(crate::ROW_OWNER));
                tables.push(read_rows(c, &t.name, &t.columns, &filter)?);
            }
        }
        for name in SHARED_INTERNAL {
            let columns = column_names(c, name)?;
            tables.push(read_rows(c, name, &columns, "1")?);
        }
        // Sent only when it holds renames: a primary of a version before it (a cluster being
        // upgraded) has no such table to install them into.
        let renames = read_rows(c, RENAMES, &column_names(c, RENAMES)?, "1")?;
        if !renames.rows.is_empty() {
            tables.push(renames);
        }
        Ok(SharedState { schema, tables })
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_allocvec(self)
            .map_err(|e| Error::rule(format!("cannot encode a snapshot: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<SharedState> {
        postcard::from_bytes(bytes).map_err(|e| {
            Error::rule(format!(
                "a snapshot from the cluster does not decode ({e}): the primaries run \
                 incompatible versions"
            ))
        })
    }
}

fn app_schema(c: &Connection) -> Result<Vec<(String, String, String)>> {
    let rows = c
        .prepare(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL
               AND name NOT LIKE '\\_octo\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
             ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

fn column_names(c: &Connection, table: &str) -> Result<Vec<String>> {
    let mut stmt = c.prepare(&format!("PRAGMA table_info({})", ident(table)))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

fn read_rows(c: &Connection, table: &str, columns: &[String], filter: &str) -> Result<TableRows> {
    let list: Vec<String> = columns.iter().map(|n| ident(n)).collect();
    let sql = format!(
        "SELECT rowid, {} FROM {} WHERE {filter}",
        list.join(", "),
        ident(table)
    );
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt
        .query_map([], |r| {
            let mut values = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                values.push(r.get::<_, Value>(i + 1)?);
            }
            Ok((r.get::<_, i64>(0)?, values))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(TableRows {
        name: table.to_string(),
        columns: columns.to_vec(),
        rows,
    })
}

/// Makes `c`'s shared state the snapshot's, inside the caller's write transaction: objects the
/// snapshot lacks are dropped, those it has that differ are made again (a table made again
/// loses its local rows: the cluster changed its definition meanwhile), replicated rows and
/// the shared internal tables are replaced, local rows of unchanged tables stay.
pub(super) fn install(c: &Connection, state: &SharedState) -> Result<()> {
    let local = app_schema(c)?;
    for (kind, name, sql) in local.iter().rev() {
        let same = state.schema.iter().any(|(_, n, s)| n == name && s == sql);
        if !same {
            c.execute_batch(&format!("DROP {kind} IF EXISTS {}", ident(name)))?;
        }
    }
    for (_, name, sql) in &state.schema {
        let present: bool = c.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        if !present {
            c.execute_batch(sql)?;
        }
    }
    for t in &state.tables {
        let filter = if t.name.starts_with(crate::store::INTERNAL_PREFIX) {
            "1".to_string()
        } else {
            format!("{} IS NOT NULL", ident(crate::ROW_OWNER))
        };
        c.execute(
            &format!("DELETE FROM {} WHERE {filter}", ident(&t.name)),
            [],
        )?;
        let mut names = vec!["rowid".to_string()];
        names.extend(t.columns.iter().map(|n| ident(n)));
        let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let mut insert = c.prepare(&format!(
            "INSERT INTO {}({}) VALUES ({})",
            ident(&t.name),
            names.join(", "),
            marks.join(", ")
        ))?;
        for (rowid, values) in &t.rows {
            let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(values.len() + 1);
            params.push(rowid);
            params.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
            insert.execute(params.as_slice())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::test_support::fuzz_config())]
        /// A snapshot comes from another primary: any bytes decode or fail, never panic.
        #[test]
        fn any_snapshot_bytes_decode_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let _ = SharedState::decode(&bytes);
        }
    }
}
