//! The Raft log and vote, in the primary's own file (tables `_octo_raft_log` and
//! `_octo_raft`), written through a connection of their own with `synchronous=FULL`: openraft
//! counts an entry toward a majority once `append` says it is durable, so it must be.
//!
//! SQLite calls are blocking and openraft calls these from its core task, which also sends
//! heartbeats: each runs on tokio's blocking pool.

use super::types::TypeConfig;
use super::{RaftNodeId, StorageError};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageIOError, Vote};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Why the log store could not read or write.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "a stored Raft record does not decode ({0}): the file is damaged or of another version"
    )]
    Decode(#[from] postcard::Error),
    #[error("the storage task stopped: {0}")]
    Stopped(String),
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _octo_raft_log(idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS _octo_raft(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;";

/// The Raft log store of one primary. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
}

impl LogStore {
    /// Opens the log in the primary's file at `path`.
    pub fn open(
        path: &Path,
        file_key: Option<&crate::uri::NetworkKey>,
    ) -> Result<LogStore, crate::Error> {
        let conn = crate::store::open_connection(path, file_key)?;
        conn.execute_batch(SCHEMA)?;
        Ok(LogStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LogStoreError> + Send + 'static,
    ) -> Result<T, LogStoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| LogStoreError::Stopped(e.to_string()))?
    }

    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, LogStoreError> {
        self.with(move |c| read_record(c, key)).await
    }

    async fn put<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), LogStoreError> {
        let bytes = postcard::to_allocvec(value)?;
        self.with(move |c| {
            c.prepare_cached("INSERT OR REPLACE INTO _octo_raft(key, value) VALUES (?1, ?2)")?
                .execute(params![key, bytes])?;
            Ok(())
        })
        .await
    }
}

fn read_record<T: DeserializeOwned>(c: &Connection, key: &str) -> Result<Option<T>, LogStoreError> {
    let bytes: Option<Vec<u8>> = c
        .prepare_cached("SELECT value FROM _octo_raft WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(bytes.map(|b| postcard::from_bytes(&b)).transpose()?)
}

/// The inclusive range of indexes `range` covers, in SQLite's integers.
fn index_bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
    let clamp = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
    let lo = match range.start_bound() {
        Bound::Included(&x) => clamp(x),
        Bound::Excluded(&x) => clamp(x).saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&x) => clamp(x),
        Bound::Excluded(&x) => clamp(x).saturating_sub(1),
        Bound::Unbounded => i64::MAX,
    };
    (lo, hi)
}

fn read_err(e: LogStoreError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: LogStoreError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let (lo, hi) = index_bounds(&range);
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT entry FROM _octo_raft_log WHERE idx BETWEEN ?1 AND ?2 ORDER BY idx",
            )?;
            let rows = stmt.query_map([lo, hi], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for bytes in rows {
                out.push(postcard::from_bytes(&bytes?)?);
            }
            Ok(out)
        })
        .await
        .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId<RaftNodeId>> = self.get("purged").await.map_err(read_err)?;
        let last: Option<Entry<TypeConfig>> = self
            .with(|c| {
                let bytes: Option<Vec<u8>> = c
                    .prepare_cached("SELECT entry FROM _octo_raft_log ORDER BY idx DESC LIMIT 1")?
                    .query_row([], |r| r.get(0))
                    .optional()?;
                Ok(bytes.map(|b| postcard::from_bytes(&b)).transpose()?)
            })
            .await
            .map_err(read_err)?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.map(|e| e.log_id).or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> Result<(), StorageError> {
        self.put("vote", vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftNodeId>>, StorageError> {
        self.get("vote")
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    // `save_committed` / `read_committed` keep openraft's defaults (not stored): the state
    // machine records what it applied in the same transaction as the rows, and after a restart
    // the leader's next commit lets it apply the rest. Storing the commit index here cost one
    // more fsync per commit.

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, postcard::to_allocvec(&e)?)))
            .collect::<Result<Vec<_>, LogStoreError>>()
            .map_err(write_err)?;
        self.with(move |c| {
            crate::store::exec(c, "BEGIN IMMEDIATE")?;
            let written = (|| {
                let mut stmt = c.prepare_cached(
                    "INSERT OR REPLACE INTO _octo_raft_log(idx, entry) VALUES (?1, ?2)",
                )?;
                for (index, bytes) in &encoded {
                    stmt.execute(params![*index as i64, bytes])?;
                }
                crate::store::exec(c, "COMMIT")
            })();
            if written.is_err() {
                let _ = crate::store::exec(c, "ROLLBACK");
            }
            Ok(written?)
        })
        .await
        .map_err(write_err)?;
        // Committed with synchronous=FULL: on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StorageError> {
        let from = log_id.index as i64;
        self.with(move |c| {
            c.prepare_cached("DELETE FROM _octo_raft_log WHERE idx >= ?1")?
                .execute([from])?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StorageError> {
        // The mark first: a crash between the two leaves entries that are purged already,
        // which reads skip, never a hole.
        self.put("purged", &log_id).await.map_err(write_err)?;
        let upto = log_id.index as i64;
        self.with(move |c| {
            c.prepare_cached("DELETE FROM _octo_raft_log WHERE idx <= ?1")?
                .execute([upto])?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }
}
