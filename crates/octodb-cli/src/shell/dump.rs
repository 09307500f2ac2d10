//! `.dump [PATTERN...]`: the schema and rows as an SQL script, in one transaction, as the
//! sqlite3 shell writes it. octodb's own tables (`_octo_*`), the triggers on them and temp
//! objects stay out: they belong to the node that wrote them, and replaying them elsewhere
//! would make a second node believe it is the first. A comment line says so.

use super::modes::sql_literal;
use octodb::{Connection, Value};
use std::io::Write;

const OWN: &str =
    "name NOT LIKE '\\_octo\\_%' ESCAPE '\\' AND tbl_name NOT LIKE '\\_octo\\_%' ESCAPE '\\'";

/// The statement that recreates a table, as sqlite3 writes it: a table whose name was quoted
/// gets `IF NOT EXISTS` (it may be the target of an ALTER TABLE RENAME).
pub fn create_sql(sql: &str) -> String {
    match sql.strip_prefix("CREATE TABLE \"") {
        Some(rest) => format!("CREATE TABLE IF NOT EXISTS \"{rest}"),
        None => sql.to_string(),
    }
}

/// An identifier as sqlite3 quotes it in INSERTs: bare when it is a plain word.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !is_keyword(name);
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Whether SQLite reads `name` as a keyword: asked of SQLite itself, since any keyword a
/// table may be named after (`except`, `returning`, ...) must be quoted in the dump, and a
/// hand-kept list had gaps (a dump stopped half way at `SELECT * FROM except`).
fn is_keyword(name: &str) -> bool {
    let Ok(len) = std::os::raw::c_int::try_from(name.len()) else {
        return false;
    };
    // SAFETY: `sqlite3_keyword_check` reads exactly `len` bytes from the pointer, which are
    // the bytes of `name`, alive and unchanged for the call; it keeps no reference to them.
    unsafe { rusqlite::ffi::sqlite3_keyword_check(name.as_ptr().cast(), len) != 0 }
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        _ => String::new(),
    }
}

/// A text literal with its newlines written as sqlite3 writes them, so the script stays one
/// statement a line.
fn literal(v: &Value) -> String {
    match v {
        // A NUL in a literal would end the script's text there (and the dump's COMMIT with
        // it): the exact bytes instead.
        Value::Text(s) if s.contains('\0') => {
            let hex: String = s.bytes().map(|b| format!("{b:02X}")).collect();
            format!("CAST(x'{hex}' AS TEXT)")
        }
        Value::Text(s) if s.contains('\n') || s.contains('\r') => {
            let mut lit = sql_literal(v).replace('\n', "\\n").replace('\r', "\\r");
            if s.contains('\r') {
                lit = format!("replace({lit},'\\r',char(13))");
            }
            if s.contains('\n') {
                lit = format!("replace({lit},'\\n',char(10))");
            }
            lit
        }
        _ => sql_literal(v),
    }
}

/// The columns an INSERT of `table`'s rows gives values for: all (`*`) but its generated
/// ones, which SQLite computes and refuses values for (as sqlite3's dump leaves them out).
fn stored_columns(conn: &Connection, table: &str) -> anyhow::Result<String> {
    let columns = conn.query(
        "SELECT name, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
        [table],
    )?;
    let generated = |r: &Vec<Value>| matches!(r[1], Value::Integer(2 | 3));
    if !columns.rows.iter().any(generated) {
        return Ok("*".into());
    }
    let stored: Vec<String> = columns
        .rows
        .iter()
        .filter(|r| !generated(r))
        .map(|r| quote_ident(&text(&r[0])))
        .collect();
    Ok(stored.join(", "))
}

/// A device's file, opened as the device or as a plain file (its record says what it is).
fn is_device_file(conn: &Connection) -> bool {
    match conn.role() {
        Some(role) => role == octodb::Role::Secondary,
        None => conn
            .query_row(
                "SELECT value FROM _octo_meta WHERE key = 'node_type'",
                [],
                |r| r.get::<String>(0),
            )
            .is_ok_and(|t| t == "secondary"),
    }
}

pub fn dump(conn: &Connection, patterns: &[&str], out: &mut dyn Write) -> anyhow::Result<()> {
    let filter = |col: &str| -> String {
        if patterns.is_empty() {
            String::new()
        } else {
            let ors: Vec<String> = patterns
                .iter()
                .map(|p| format!("{col} LIKE {}", super::modes::quote_text(p)))
                .collect();
            format!(" AND ({})", ors.join(" OR "))
        }
    };
    writeln!(out, "PRAGMA foreign_keys=OFF;")?;
    writeln!(out, "BEGIN TRANSACTION;")?;
    writeln!(
        out,
        "-- octodb: its own tables (_octo_*), their triggers and temp objects are left out"
    )?;
    let tables = conn.query(
        &format!(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND sql NOT NULL AND {OWN}{} \
             ORDER BY tbl_name = 'sqlite_sequence', rowid",
            filter("name")
        ),
        [],
    )?;
    // A virtual table's shadow tables (FTS5's `_data`, `_idx`, ...) are made by its CREATE
    // VIRTUAL TABLE and filled by its INSERTs: dumped too, the script would fail on them.
    let shadows: std::collections::HashSet<String> = conn
        .query(
            "SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'",
            [],
        )?
        .rows
        .iter()
        .map(|r| text(&r[0]))
        .collect();
    let device = is_device_file(conn);
    for t in &tables.rows {
        let (name, sql) = (text(&t[0]), text(&t[1]));
        if shadows.contains(&name) {
            continue;
        }
        if name == "sqlite_sequence" {
            writeln!(out, "DELETE FROM sqlite_sequence;")?;
        } else if name == "sqlite_stat1" {
            writeln!(out, "ANALYZE sqlite_schema;")?;
        } else if name.starts_with("sqlite_") {
            continue;
        } else {
            // Restorable into any SQLite: a device's table without its row_owner default.
            let sql = match device {
                true => octodb::store::schema::as_primaries_wrote_it(&sql),
                false => sql,
            };
            writeln!(out, "{};", create_sql(&sql))?;
        }
        let q = quote_ident(&name);
        let rows = conn.query(
            &format!("SELECT {} FROM {q}", stored_columns(conn, &name)?),
            [],
        )?;
        for r in &rows.rows {
            let vals: Vec<String> = r.iter().map(literal).collect();
            writeln!(out, "INSERT INTO {q} VALUES({});", vals.join(","))?;
        }
    }
    let others = conn.query(
        &format!(
            "SELECT sql FROM sqlite_schema WHERE sql NOT NULL AND type IN ('index', 'trigger', \
             'view') AND {OWN}{} ORDER BY rowid",
            filter("name")
        ),
        [],
    )?;
    for o in &others.rows {
        writeln!(out, "{};", text(&o[0]))?;
    }
    writeln!(out, "COMMIT;")?;
    Ok(())
}
