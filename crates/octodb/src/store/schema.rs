//! What the engine knows of the user's tables, and the TEMP triggers that enforce the ownership
//! and row id rules on a user's connection (changes are captured by `store::capture`).
//!
//! The triggers are TEMP (per connection, never in the file) because they call functions that
//! only an octodb connection defines, and because the engine's own connections must apply
//! remote changes without firing them.

use super::affinity::{Affinity, ColumnKind};
use crate::error::{Error, Result};
use crate::uri::Role;
use crate::ROW_OWNER;
use rusqlite::Connection;

/// A user table as seen at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct TableLayout {
    pub name: String,
    pub columns: Vec<String>,
    /// Index of the INTEGER PRIMARY KEY column (an alias of the rowid), if any.
    pub rowid_alias: Option<usize>,
    /// Index of `row_owner`; a table takes part in row replication only when it has one.
    pub owner: Option<usize>,
    pub without_rowid: bool,
    /// Where each of `columns` sits among all the table's columns, generated ones included:
    /// the index SQLite's preupdate hook reads it at.
    pub hook_index: Vec<i32>,
    /// How many columns the table has, generated ones included.
    pub width: i32,
    /// The table has a VIRTUAL generated column: the preupdate hook of the SQLite built here
    /// (3.46) reads the rows of such tables at the wrong offsets, so they cannot be captured.
    pub virtual_columns: bool,
    /// For each of `columns`, what decides whether a value is stored as given.
    pub kinds: Vec<ColumnKind>,
    /// A trigger of the table fires on `UPDATE OF` some columns: a row written from another
    /// node's whole-row image sets only the columns that changed, so that it fires where the
    /// change did (setting every column fired it for columns no one changed).
    pub update_of_triggers: bool,
}

impl TableLayout {
    pub fn is_replicated(&self) -> bool {
        self.owner.is_some()
    }
}

pub fn is_internal(name: &str) -> bool {
    name.starts_with(crate::store::INTERNAL_PREFIX) || name.starts_with("sqlite_")
}

pub fn is_private(name: &str) -> bool {
    name.len() >= 8 && name[..8].eq_ignore_ascii_case("private_")
}

/// Quote an identifier for SQL text.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote a string literal for SQL text.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// All user tables of the main database (internal and sqlite_ tables excluded).
pub fn user_tables(conn: &Connection) -> Result<Vec<TableLayout>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' ORDER BY name",
    )?;
    let names: Vec<(String, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (name, without_rowid) in names {
        if is_internal(&name) {
            continue;
        }
        out.push(layout_of(conn, &name, without_rowid)?);
    }
    Ok(out)
}

/// The layout of one table, or None if it does not exist.
pub fn table_layout(conn: &Connection, name: &str) -> Result<Option<TableLayout>> {
    let wr: Option<bool> = conn
        .prepare_cached(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND type = 'table' AND name = ?1",
        )?
        .query_row([name], |r| r.get(0))
        .ok();
    match wr {
        Some(wr) => Ok(Some(layout_of(conn, name, wr)?)),
        None => Ok(None),
    }
}

fn layout_of(conn: &Connection, name: &str, without_rowid: bool) -> Result<TableLayout> {
    // Generated columns (hidden 2: VIRTUAL, 3: STORED) are computed on every node, never sent.
    let mut stmt = conn.prepare_cached(
        "SELECT name, type, pk, hidden, \"notnull\" FROM pragma_table_xinfo(?1) ORDER BY cid",
    )?;
    let all: Vec<(String, String, i64, i64, bool)> = stmt
        .query_map([name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let width = all.len() as i32;
    let virtual_columns = all.iter().any(|c| c.3 == 2);
    let hook_index: Vec<i32> = (0..all.len() as i32)
        .filter(|&i| all[i as usize].3 == 0)
        .collect();
    let cols: Vec<(String, String, i64, bool)> = all
        .into_iter()
        .filter(|c| c.3 == 0)
        .map(|c| (c.0, c.1, c.2, c.4))
        .collect();
    let kinds = cols
        .iter()
        .map(|c| ColumnKind {
            affinity: Affinity::of_declared(&c.1),
            not_null: c.3,
        })
        .collect();
    let pk_cols: Vec<usize> = (0..cols.len()).filter(|&i| cols[i].2 > 0).collect();
    let rowid_alias = match pk_cols.as_slice() {
        [i] if !without_rowid && cols[*i].1.eq_ignore_ascii_case("INTEGER") => Some(*i),
        _ => None,
    };
    let owner = cols
        .iter()
        .position(|c| c.0.eq_ignore_ascii_case(ROW_OWNER));
    Ok(TableLayout {
        name: name.to_string(),
        columns: cols.into_iter().map(|c| c.0).collect(),
        rowid_alias,
        owner,
        without_rowid,
        hook_index,
        width,
        virtual_columns,
        kinds,
        update_of_triggers: has_update_of_triggers(conn, name)?,
    })
}

fn has_update_of_triggers(conn: &Connection, table: &str) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1 AND sql IS NOT NULL",
    )?;
    let sqls = stmt.query_map([table], |r| r.get::<_, String>(0))?;
    for sql in sqls {
        if fires_on_update_of(&sql?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `CREATE TRIGGER name [BEFORE | AFTER | INSTEAD OF] UPDATE OF columns ON table ...`.
fn fires_on_update_of(trigger_sql: &str) -> bool {
    let header: Vec<String> = crate::api::sql_text::words(trigger_sql)
        .take_while(|w| w != "ON")
        .collect();
    header.windows(2).any(|w| w[0] == "UPDATE" && w[1] == "OF")
}

/// Reject layouts that replication cannot handle, with what to change.
pub fn check_replicable(t: &TableLayout) -> Result<()> {
    if t.is_replicated() && t.without_rowid {
        return Err(Error::rule(format!(
            "table `{}` has a row_owner column but is WITHOUT ROWID; replicated tables need a rowid: remove WITHOUT ROWID",
            t.name
        )));
    }
    let owner_affinity = t.owner.and_then(|o| t.kinds.get(o)).map(|k| k.affinity);
    if owner_affinity == Some(Affinity::Real) {
        return Err(Error::rule(format!(
            "table `{}` declares row_owner with a floating-point type: SQLite would store user \
             ids as floats, which no device is given; declare row_owner without a type (or \
             INTEGER)",
            t.name
        )));
    }
    Ok(())
}

/// Refuse a replicated table whose definition resolves UNIQUE or PRIMARY KEY conflicts with
/// `ON CONFLICT REPLACE`: the rows SQLite deletes for it fire no trigger, so a device's rule
/// that leaves other users' and `'*'` rows alone never sees them (the device's insert looks
/// accepted, then its whole transaction is rejected by the primary). The statement forms
/// (`INSERT OR REPLACE`, `REPLACE INTO`) are handled.
pub fn check_conflict_clauses(conn: &Connection, t: &TableLayout) -> Result<()> {
    if !t.is_replicated() {
        return Ok(());
    }
    let sql: Option<String> = conn
        .prepare_cached("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
        .query_row([&t.name], |r| r.get(0))
        .ok();
    if sql.as_deref().is_some_and(replaces_on_conflict) {
        return Err(Error::rule(format!(
            "table `{}` has a row_owner column and a UNIQUE or PRIMARY KEY constraint with ON \
             CONFLICT REPLACE, whose deletions of conflicting rows no rule of a device sees: \
             remove the clause (write INSERT OR REPLACE in the statements that mean it)",
            t.name
        )));
    }
    Ok(())
}

/// A table definition with `ON CONFLICT REPLACE` on a UNIQUE or PRIMARY KEY constraint (on
/// NOT NULL it only puts the column's default in place of a NULL: no row goes).
fn replaces_on_conflict(create_sql: &str) -> bool {
    let words: Vec<String> = crate::api::sql_text::words(create_sql).collect();
    let constraint_words = ["UNIQUE", "KEY", "NULL", "CHECK", "DEFAULT", "REFERENCES"];
    words.windows(3).enumerate().any(|(i, w)| {
        w == ["ON", "CONFLICT", "REPLACE"]
            && words[..i]
                .iter()
                .rev()
                .find(|w| constraint_words.contains(&w.as_str()))
                .is_some_and(|w| w == "UNIQUE" || w == "KEY")
    })
}

/// The TEMP table of schema statements' marks (see `store::capture`).
pub const STATEMENTS_TABLE: &str = "_octo_statements";

/// SQL creating the TEMP table of statement marks; run once per user connection.
pub const CAPTURE_TABLE: &str =
    "CREATE TEMP TABLE IF NOT EXISTS _octo_statements(id INTEGER PRIMARY KEY)";

/// How the messages of the rules the triggers enforce begin: the API reports them as
/// `Error::Rule`.
pub const RULE_PREFIX: &str = "octodb: ";

/// Messages of the rules the triggers enforce (SQLite needs them as literals).
const MSG_ROWID_CHANGE: &str =
    "octodb: the id of a replicated row cannot change; delete the row and insert a new one";
const MSG_OWNER_CHANGE: &str = "octodb: row_owner may only widen: a local row (NULL) may become this user's row (or, on a primary, any user's or '*'), a primary may make a user's row '*'; ownership never moves to another user";
const MSG_DEVICE_INSERT: &str = "octodb: a device may insert only rows of its own user (omit row_owner or use this_user()) or local rows (row_owner NULL); '*' rows are created on primaries. A DEFAULT the table gives row_owner other than this_user() or NULL applies on devices too: set row_owner in the INSERT, or change the table's default";

/// The TEMP triggers for one replicated table on a connection of a node with `role`.
/// `layout_id` identifies `t`'s column list in the connection's capture state.
pub fn trigger_sql(t: &TableLayout, layout_id: usize, role: Role) -> String {
    let q = ident(&t.name);
    let ow = ident(&t.columns[t.owner.unwrap_or(0)]);
    let name = |kind: &str| ident(&format!("_octo_{kind}_{}", t.name));
    let mut sql = String::new();
    // Row changes are captured by SQLite's preupdate hook (`store::capture`), not here: what
    // stays are the rules a hook cannot keep, because it can neither see whether SQLite picks
    // a row's id nor change or refuse a row.
    //
    // Auto-assigned ids are moved into this node's id range (node id in the high 32 bits) so that
    // inserts on different nodes never collide. BEFORE INSERT notes whether SQLite picks the
    // row's id (it sees rowid -1 then); `octo_row_id` decides the row's final id; a trigger of
    // its own moves the row when that differs (not run otherwise: an UPDATE statement in a
    // trigger program costs a cursor per row even when it finds nothing).
    //
    // Every trigger is a sub-program SQLite runs per row: a device's insert rule shares the
    // BEFORE INSERT trigger with the note.
    let insert_begins = format!("octo_insert_begins({layout_id}, NEW.rowid = -1)");
    let before_insert = match role {
        Role::Primary => format!("SELECT {insert_begins};"),
        Role::Secondary => format!(
            "SELECT
               CASE WHEN NOT octo_mine_or_local(NEW.{ow}) THEN RAISE(ABORT, {m}) END,
               {insert_begins};",
            m = literal(MSG_DEVICE_INSERT)
        ),
    };
    let row_id = format!("octo_row_id({layout_id}, NEW.rowid)");
    sql += &format!(
        "CREATE TEMP TRIGGER {bi} BEFORE INSERT ON main.{q} BEGIN {before_insert} END;
         CREATE TEMP TRIGGER {am} AFTER INSERT ON main.{q} WHEN {row_id} <> NEW.rowid BEGIN
           UPDATE {q} SET rowid = {row_id} WHERE rowid = NEW.rowid;
         END;\n",
        bi = name("bi"),
        am = name("am"),
    );
    // Rules. On a device, rows of other users and '*' rows are silently left alone by UPDATE and
    // DELETE, as if a WHERE clause excluded them.
    let (ignore_others, device_insert) = match role {
        Role::Secondary => (
            "WHEN NOT octo_mine_or_local(OLD.{ow}) THEN RAISE(IGNORE)".replace("{ow}", &ow),
            true,
        ),
        Role::Primary => (String::new(), false),
    };
    sql += &format!(
        "CREATE TEMP TRIGGER {bu} BEFORE UPDATE ON main.{q} BEGIN
           SELECT CASE {ignore_others}
             WHEN OLD.rowid <> NEW.rowid AND NEW.rowid IS NOT octo_moving_to({layout_id}, OLD.rowid) THEN RAISE(ABORT, {m_rowid})
             WHEN NOT octo_owner_change_ok(OLD.{ow}, NEW.{ow}) THEN RAISE(ABORT, {m_owner})
           END;
         END;\n",
        bu = name("bu"),
        m_rowid = literal(MSG_ROWID_CHANGE),
        m_owner = literal(MSG_OWNER_CHANGE),
    );
    if device_insert {
        sql += &format!(
            "CREATE TEMP TRIGGER {bd} BEFORE DELETE ON main.{q}
               WHEN NOT octo_mine_or_local(OLD.{ow}) BEGIN SELECT RAISE(IGNORE); END;\n",
            bd = name("bd"),
        );
    }
    sql
}

/// Drop every TEMP trigger this module created on `conn`.
pub fn drop_triggers(conn: &Connection) -> Result<()> {
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_temp_master WHERE type = 'trigger' AND name LIKE '\\_octo\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for n in names {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS temp.{}", ident(&n)))?;
    }
    // What is left are orphans: triggers on a table that another connection dropped (the
    // engine applying the primaries' DROP TABLE, a follower's state machine). SQLite leaves
    // them out of the schema it parses, so DROP TRIGGER does not find them, but ALTER TABLE
    // ... RENAME reads every trigger's text and then fails on theirs ("error in trigger
    // _octo_bi_t: no such table"). Their rows go from this connection's TEMP schema directly.
    let orphans: bool = conn
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM sqlite_temp_master WHERE type = 'trigger'
               AND name LIKE '\\_octo\\_%' ESCAPE '\\')",
        )?
        .query_row([], |r| r.get(0))?;
    if orphans {
        conn.execute_batch("PRAGMA writable_schema = ON")?;
        let removed = conn.execute_batch(
            "DELETE FROM temp.sqlite_master WHERE type = 'trigger'
               AND name LIKE '\\_octo\\_%' ESCAPE '\\'",
        );
        conn.execute_batch("PRAGMA writable_schema = OFF")?;
        removed?;
    }
    Ok(())
}

/// Which rows of `sqlite_master` make the schema the primaries give devices (a download's
/// statements, and what a device downloading again compares its own with): those with SQL,
/// neither the engine's nor SQLite's own, not of private tables, not a virtual table's shadow
/// tables (its CREATE makes them).
pub const DEVICE_SCHEMA: &str = "sql IS NOT NULL
    AND name NOT LIKE '\\_octo\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
    AND tbl_name NOT LIKE 'private\\_%' ESCAPE '\\'
    AND name NOT IN (SELECT name FROM pragma_table_list WHERE type = 'shadow')";

/// The replicated tables (with a `row_owner` column) that have a VIRTUAL generated column.
pub fn replicated_with_virtual_columns(conn: &Connection) -> Result<Vec<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT m.name FROM main.sqlite_master m WHERE m.type = 'table'
               AND EXISTS (SELECT 1 FROM pragma_table_xinfo(m.name, 'main') x WHERE x.hidden = 2)
               AND EXISTS (SELECT 1 FROM pragma_table_info(m.name, 'main') c
                           WHERE c.name = 'row_owner' COLLATE NOCASE)",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Run one of the primaries' schema statements on a device. One that this device cannot run
/// stops the sync with an error that says why ([`ddl_refused`]), and changes nothing: the
/// device keeps its data and pending work, and syncs on once the cause is gone.
pub fn apply_primaries_ddl(conn: &Connection, sql: &str) -> Result<()> {
    run_primaries_ddl(conn, sql).map_err(|e| ddl_refused(conn, sql, e))
}

/// [`apply_primaries_ddl`] with SQLite's own error, for a caller that can remove its cause.
pub fn run_primaries_ddl(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&device_create_table(sql))
}

/// Why a device cannot run the primaries' schema statement `sql`, and what makes it able to.
/// A constraint the statement adds (a UNIQUE index) that rows here break: rows only this
/// device has (row_owner NULL; the primaries' rows satisfy it, and pending work steps aside),
/// which are the app's to change. Anything else: a newer SQLite feature, or a collation or
/// function the app registers on the backend only, which an update of the app brings.
pub fn ddl_refused(conn: &Connection, sql: &str, e: rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) {
        let rows = match duplicated_local_rows(conn, &e.to_string()) {
            Some((table, rows)) if !rows.is_empty() => {
                let ids: Vec<String> = rows.iter().map(i64::to_string).collect();
                format!(" (rows {} of `{table}`)", ids.join(", "))
            }
            _ => String::new(),
        };
        return Error::rule(format!(
            "the primaries' schema statement `{sql}` cannot be applied here: rows only this \
             device has (row_owner NULL){rows} break it ({e}). Change or delete those rows; \
             sync is stopped until then, and this device's data and pending work are kept"
        ));
    }
    Error::rule(format!(
        "the primaries' schema has a statement this device cannot run ({e}): `{sql}`. This \
         build of the app (its octodb, or the functions and collations it registers) cannot \
         handle it: update the app. Sync is stopped until then; this device's data and \
         pending work are kept"
    ))
}

/// The local rows (row_owner NULL) of the table a UNIQUE failure names (`UNIQUE constraint
/// failed: t.a, t.b`) that share their values of those columns with another row, at most 10:
/// the rows the app is to change. None when the message names no such key.
fn duplicated_local_rows(conn: &Connection, message: &str) -> Option<(String, Vec<i64>)> {
    let key = message.split("UNIQUE constraint failed: ").nth(1)?;
    let mut table = None;
    let mut columns = Vec::new();
    for part in key.split(", ") {
        let (t, c) = part.trim().split_once('.')?;
        if table.get_or_insert(t) != &t {
            return None;
        }
        columns.push(ident(c));
    }
    let table = table?.to_string();
    let cols = columns.join(", ");
    let sql = format!(
        "SELECT rowid FROM {t} WHERE row_owner IS NULL AND ({cols}) IN \
         (SELECT {cols} FROM {t} GROUP BY {cols} HAVING count(*) > 1) ORDER BY rowid LIMIT 10",
        t = ident(&table)
    );
    let rows = conn
        .prepare(&sql)
        .ok()?
        .query_map([], |r| r.get(0))
        .ok()?
        .collect::<rusqlite::Result<Vec<i64>>>()
        .ok()?;
    Some((table, rows))
}

/// What [`device_create_table`] adds to a `row_owner` column definition.
const DEVICE_OWNER_DEFAULT: &str = " DEFAULT (this_user())";

/// A device's CREATE TABLE as the primaries wrote it, without the `row_owner` default that
/// [`device_create_table`] added (only an octodb device can evaluate it): what a device's dump
/// holds, so that it restores into any SQLite.
pub fn as_primaries_wrote_it(sql: &str) -> String {
    sql.replacen(DEVICE_OWNER_DEFAULT, "", 1)
}

/// Rewrite a primary's CREATE TABLE for a device: an INSERT that does not name `row_owner`
/// must make a row of the device's user, so the column gets `DEFAULT (this_user())` there.
/// Returns the statement unchanged when it has no row_owner column definition or already has
/// a DEFAULT on it.
pub fn device_create_table(sql: &str) -> String {
    let Some(open) = sql.find('(') else {
        return sql.to_string();
    };
    if !sql[..open].to_ascii_uppercase().contains("TABLE") {
        return sql.to_string();
    }
    // Walk the top-level column definitions, skipping quoted text and nested parentheses.
    let bytes = sql.as_bytes();
    let mut depth = 0usize;
    let mut start = open + 1;
    let mut i = open;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == q {
                quote = None;
            }
        } else {
            match b {
                b'\'' | b'"' | b'`' => quote = Some(b),
                b'[' => quote = Some(b']'),
                b'(' => depth += 1,
                b')' | b',' if depth == 1 => {
                    let def = &sql[start..i];
                    if is_owner_def(def) && !def.to_ascii_uppercase().contains("DEFAULT") {
                        return format!("{}{DEVICE_OWNER_DEFAULT}{}", &sql[..i], &sql[i..]);
                    }
                    if b == b')' {
                        return sql.to_string();
                    }
                    start = i + 1;
                }
                b')' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    sql.to_string()
}

fn is_owner_def(def: &str) -> bool {
    let first = def
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']');
    first.eq_ignore_ascii_case(ROW_OWNER)
}

/// What to tell a user who tries to change an internal table.
pub const INTERNAL_TABLE_HINT: &str =
    "it is managed by the engine; use PRAGMA sync_status and PRAGMA nodes to read its state";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_constraints_are_recognized() {
        for sql in [
            "CREATE TABLE t(id INTEGER PRIMARY KEY, code TEXT UNIQUE ON CONFLICT REPLACE)",
            "CREATE TABLE t(a, b, UNIQUE (a, b) ON CONFLICT REPLACE, row_owner)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY DESC ON CONFLICT REPLACE, row_owner)",
            "create table t(id integer, primary key (id) on conflict replace)",
        ] {
            assert!(replaces_on_conflict(sql), "{sql}");
        }
        for sql in [
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL ON CONFLICT REPLACE DEFAULT '')",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, code TEXT UNIQUE ON CONFLICT ABORT)",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, code TEXT UNIQUE)",
        ] {
            assert!(!replaces_on_conflict(sql), "{sql}");
        }
    }

    #[test]
    fn device_default_is_added_to_row_owner() {
        assert_eq!(
            device_create_table("CREATE TABLE t (id INTEGER PRIMARY KEY, row_owner, x TEXT)"),
            "CREATE TABLE t (id INTEGER PRIMARY KEY, row_owner DEFAULT (this_user()), x TEXT)"
        );
        assert_eq!(
            device_create_table("CREATE TABLE t (a CHECK (a IN (1,2)), \"row_owner\" TEXT)"),
            "CREATE TABLE t (a CHECK (a IN (1,2)), \"row_owner\" TEXT DEFAULT (this_user()))"
        );
        assert_eq!(
            as_primaries_wrote_it(&device_create_table(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, row_owner, x TEXT)"
            )),
            "CREATE TABLE t (id INTEGER PRIMARY KEY, row_owner, x TEXT)"
        );
        let unchanged = "CREATE TABLE t (a, row_owner DEFAULT 5)";
        assert_eq!(device_create_table(unchanged), unchanged);
        let no_owner = "CREATE TABLE t (a, 'row_owner,' TEXT)";
        assert_eq!(device_create_table(no_owner), no_owner);
    }

    #[test]
    fn private_names() {
        assert!(is_private("private_users"));
        assert!(is_private("PRIVATE_x"));
        assert!(!is_private("priv"));
        assert!(!is_private("public"));
    }

    #[test]
    fn update_of_triggers_are_told_from_others() {
        assert!(fires_on_update_of(
            "CREATE TRIGGER t_title AFTER UPDATE OF title ON tasks BEGIN SELECT 1; END"
        ));
        assert!(fires_on_update_of(
            "create trigger \"update\" instead of update of a, b on v begin select 1; end"
        ));
        assert!(!fires_on_update_of(
            "CREATE TRIGGER t_any AFTER UPDATE ON tasks BEGIN UPDATE x SET a = 1; END"
        ));
        assert!(!fires_on_update_of(
            "CREATE TRIGGER update_of AFTER INSERT ON tasks BEGIN SELECT 1; END"
        ));
    }
}
