//! Plain local databases (no `node=`): an ordinary SQLite connection, opened the way Python's
//! `sqlite3` opens one. The engine writes nothing to such a file, takes no lock beside it and
//! leaves its journal mode alone, so any SQLite program can share it.

use crate::error::Result;
use crate::node::SyncStatus;
use crate::uri::NetworkKey;
use rusqlite::OpenFlags;
use std::path::Path;
use std::time::Duration;

/// How a plain local database is opened (nodes have settings of their own and ignore these).
#[derive(Debug, Clone, PartialEq)]
pub struct OpenOptions {
    /// Read the target as a SQLite URI (`file:app.db?mode=ro`), as sqlite3's `uri=True`;
    /// otherwise it is a file name taken literally.
    pub uri: bool,
    /// How long a statement waits for another connection's lock before failing with
    /// "database is locked" (sqlite3's `timeout`).
    pub busy_timeout: Duration,
}

impl Default for OpenOptions {
    /// sqlite3's defaults: a 5 second wait; `file:` URIs understood, as `Connection::open` does.
    fn default() -> OpenOptions {
        OpenOptions {
            uri: true,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The key of an encrypted local database (`cipher=`) and the file it encrypts.
pub(crate) struct Encrypted<'a> {
    pub file: &'a Path,
    pub key: &'a NetworkKey,
}

/// Open `target` (a path, `:memory:`, or a SQLite URI when `opts.uri`) as plain SQLite does;
/// an encrypted file gets its key before anything else.
pub(crate) fn open_plain(
    target: &Path,
    opts: &OpenOptions,
    encrypted: Option<Encrypted<'_>>,
) -> Result<rusqlite::Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let literal;
    let target = if opts.uri {
        flags |= OpenFlags::SQLITE_OPEN_URI;
        target
    } else if target.as_os_str().as_encoded_bytes().starts_with(b"file:") {
        // The bundled SQLite reads every `file:` name as a URI (SQLITE_USE_URI); a name meant
        // literally must not start with `file:`, and `./file:...` is the same file.
        literal = Path::new(".").join(target);
        &literal
    } else {
        target
    };
    let conn = rusqlite::Connection::open_with_flags(target, flags)?;
    conn.busy_timeout(sqlite_wait(opts.busy_timeout))?;
    if let Some(e) = encrypted {
        crate::store::at_rest::unlock(&conn, e.file, e.key)?;
    }
    // The bundled SQLite turns foreign keys on by default; stock SQLite (and so every program
    // sharing the file, and Python's sqlite3) leaves them off until the app asks.
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// What `PRAGMA sync_status` says about a plain local database: always ready, never connected.
pub(crate) fn status() -> SyncStatus {
    SyncStatus {
        db_is_ready: true,
        node_id: 0,
        node_type: "local".into(),
        user_id: None,
        public_key: String::new(),
        connected: false,
        caught_up: true,
        synced: true,
        peers: Vec::new(),
        bind: Vec::new(),
        last_seq: 0,
        outbox_len: 0,
        last_rejected: None,
        rejected_total: 0,
        last_sync: None,
        download: None,
        auth_state: None,
        auth_error: None,
        sync_error: None,
        cluster: None,
        primaries: Vec::new(),
        log_start: None,
    }
}

/// `wait` as SQLite can take it: it counts in milliseconds up to about 24 days (rusqlite
/// panics beyond).
pub(crate) fn sqlite_wait(wait: Duration) -> Duration {
    wait.min(Duration::from_millis(i32::MAX as u64))
}
