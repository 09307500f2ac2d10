//! The SQLite file: opening it (WAL, one owner process), the engine's internal tables, and
//! small typed accessors for the engine's own settings.

pub mod affinity;
pub mod apply;
pub mod at_rest;
pub mod capture;
pub mod column_rules;
pub mod device_txn;
pub mod file_mode;
pub mod lock;
pub mod renames;
pub mod returned_ids;
pub mod schema;
pub mod trigger_effects;
pub mod unique_holders;

use crate::error::{Error, Result};
use crate::uri::NetworkKey;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use std::time::Duration;

/// Prefix of every internal table; such tables are never replicated nor shown as user tables.
pub const INTERNAL_PREFIX: &str = "_octo_";

/// How long a connection waits for another one of the same node to finish writing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// Open one SQLite connection on a node's file with the engine's settings; `file_key` is the
/// key of an encrypted file (`cipher=`), handed over before anything is read.
pub fn open_connection(path: &Path, file_key: Option<&NetworkKey>) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if let Some(key) = file_key {
        at_rest::unlock(&conn, path, key)?;
    }
    if path.as_os_str() != ":memory:" {
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| not_a_database(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(?path, mode, "could not switch the database to WAL mode");
        }
    }
    // Acknowledged transactions must survive a crash of the machine, not only of the process.
    // The engine writes rows as the primaries (or a device's transaction) have them, in the
    // order it gets them: it neither checks nor cascades foreign keys (the bundled SQLite
    // does both by default). A check failed on the order of a transaction's rows or on a
    // taken-back parent, and stopped the sync for good; a cascade of the engine's own was
    // never replicated. An app's connection turns them back on: its cascades are its rows'
    // changes, replicated as such.
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF;")?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// Create the engine's internal tables if they are missing.
pub fn init_internal_schema(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _octo_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         -- primaries: the total order of accepted transactions
         CREATE TABLE IF NOT EXISTS _octo_log(
             seq INTEGER PRIMARY KEY, origin_node INTEGER NOT NULL,
             origin_txn INTEGER NOT NULL, body BLOB NOT NULL, origin_digest BLOB);
         -- primaries: every node that ever asked to join
         CREATE TABLE IF NOT EXISTS _octo_nodes(
             node_id INTEGER PRIMARY KEY, pubkey TEXT NOT NULL UNIQUE, node_type TEXT NOT NULL,
             user_id INTEGER, auth_state TEXT NOT NULL, last_txn INTEGER NOT NULL DEFAULT 0,
             address TEXT, info TEXT, request TEXT, created_at REAL, last_seen REAL);
         -- primaries: keys never approved (negative ids), counted and pruned oldest first at
         -- every new one (a scan of all nodes there made sign-ups slower as the network grew)
         DROP INDEX IF EXISTS _octo_nodes_pending;
         CREATE INDEX IF NOT EXISTS _octo_nodes_unapproved ON _octo_nodes(last_seen)
             WHERE node_id < 0;
         CREATE TABLE IF NOT EXISTS _octo_users(user_id INTEGER PRIMARY KEY, created_at REAL);
         -- secondaries: the transactions the primaries have not decided yet, in commit order:
         -- each one's change set, one part per flush, id = txn_id << 24 | part (log::outbox)
         CREATE TABLE IF NOT EXISTS _octo_undecided(id INTEGER PRIMARY KEY, changes BLOB NOT NULL);
         -- secondaries: the primaries' version of each row that pending work has changed, and
         -- the range of outbox transactions that changed it
         CREATE TABLE IF NOT EXISTS _octo_base(
             tbl TEXT NOT NULL, rid INTEGER NOT NULL, row BLOB, first_txn INTEGER,
             last_txn INTEGER, PRIMARY KEY(tbl, rid)) WITHOUT ROWID;
         -- secondaries: their newest accepted transactions, kept to be sent again to a
         -- primary restored from an older copy (log::outbox::accepted)
         CREATE TABLE IF NOT EXISTS _octo_accepted(txn INTEGER PRIMARY KEY, changes BLOB NOT NULL);
         -- secondaries: their newest rejected transactions, with the primaries' reason
         -- (log::outbox::decisions)
         CREATE TABLE IF NOT EXISTS _octo_rejected(txn INTEGER PRIMARY KEY, reason TEXT NOT NULL,
             at REAL NOT NULL);
         -- secondaries: tables the primaries renamed while work on them was pending, by
         -- their old name (log::schema_moves)
         CREATE TABLE IF NOT EXISTS _octo_renamed(old TEXT PRIMARY KEY, new TEXT NOT NULL)
             WITHOUT ROWID;
         -- every node: the tables and columns the primaries' schema statements renamed, in
         -- order; col NULL: table tbl renamed to new (store::renames)
         CREATE TABLE IF NOT EXISTS _octo_renames(
             id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, col TEXT, new TEXT NOT NULL);
         -- primaries: the epochs of their log (log::epochs), shared by the cluster
         CREATE TABLE IF NOT EXISTS _octo_epochs(id INTEGER NOT NULL, first_seq INTEGER NOT NULL);",
    )?;
    conn.execute_batch(column_rules::SCHEMA)?;
    add_missing_columns(conn)?;
    Ok(())
}

/// Columns a file written by an older octodb lacks.
fn add_missing_columns(conn: &Connection) -> Result<()> {
    let has_digest: bool = conn
        .prepare(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info('_octo_log') WHERE name = 'origin_digest')",
        )?
        .query_row([], |r| r.get(0))?;
    if !has_digest {
        // (Entries from before it carry no digest: their origins take them on trust.)
        conn.execute_batch("ALTER TABLE _octo_log ADD COLUMN origin_digest BLOB")?;
    }
    Ok(())
}

pub fn meta_get<T: rusqlite::types::FromSql>(conn: &Connection, key: &str) -> Result<Option<T>> {
    Ok(conn
        .prepare_cached("SELECT value FROM _octo_meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

pub fn meta_set<T: rusqlite::ToSql>(conn: &Connection, key: &str, value: T) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO _octo_meta(key, value) VALUES (?1, ?2)")?
        .execute(rusqlite::params![key, value])?;
    Ok(())
}

pub fn meta_i64(conn: &Connection, key: &str) -> Result<i64> {
    Ok(meta_get::<i64>(conn, key)?.unwrap_or(0))
}

/// The meta key of the bound on the row ids a node has handed out (their low 32 bits).
pub const ROW_SEQ_KEY: &str = "row_seq";

/// How far ahead of the ids in use [`reserve_ids`] moves a bound.
const ID_BLOCK: i64 = 4096;

/// Inside a write transaction that used ids up to `used`: makes sure the bound kept under
/// `key` covers them, so that no id is handed out twice, even after a crash. The bound moves
/// [`ID_BLOCK`] ahead at a time rather than at every commit: the meta page then stays out of
/// most commits (it was one of the five pages a device's one-row transaction wrote). A
/// restart resumes above the bound, skipping the ids reserved but not used.
pub fn reserve_ids(conn: &Connection, key: &str, used: i64) -> Result<()> {
    if used > meta_i64(conn, key)? {
        meta_set(conn, key, used + ID_BLOCK)?;
    }
    Ok(())
}

/// A clean close gives back the ids reserved ahead of `used` (the highest handed out): the
/// next run goes on from there instead of skipping the rest of a block, so that a node opened
/// and closed often (a connection per request) does not use up its ids. After a crash the
/// reservation stands, and the next run skips what was reserved.
pub fn release_ids(conn: &Connection, key: &str, used: i64) -> Result<()> {
    if meta_i64(conn, key)? > used {
        meta_set(conn, key, used.max(0))?;
    }
    Ok(())
}

/// Run one statement without results through the statement cache: the engine's own
/// BEGIN/COMMIT/SAVEPOINT/... run for every transaction, and parsing them each time shows.
pub fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// SQLite could not write for want of space or a working disk (the node's own trouble, which
/// passes once space returns).
pub fn disk_refused(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DiskFull, SystemIoFailure};
    matches!(e.sqlite_error_code(), Some(DiskFull | SystemIoFailure))
}

/// Run `f` inside `BEGIN IMMEDIATE … COMMIT`, rolling back on error.
pub fn write_txn<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    exec(conn, "BEGIN IMMEDIATE")?;
    match f(conn) {
        Ok(v) => match exec(conn, "COMMIT") {
            Ok(()) => Ok(v),
            Err(e) => {
                let _ = exec(conn, "ROLLBACK");
                Err(e.into())
            }
        },
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            Err(e)
        }
    }
}

/// SQLite's schema version of the file, through the statement cache.
pub fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA schema_version")?
        .query_row([], |r| r.get(0))
}

/// A file that is not a database to SQLite when first read: most often an encrypted file
/// opened without its key.
pub(crate) fn not_a_database(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => Error::WrongKey {
            path: path.to_path_buf(),
        },
        _ => e.into(),
    }
}

pub fn corrupt(path: &Path, what: impl Into<String>) -> Error {
    Error::Corrupt(path.to_path_buf(), what.into())
}
