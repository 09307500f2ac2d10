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
use std::time::Duration;

use super::write_through::{Handoff, PendingAppend};

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
    #[error(
        "this primary's file holds transactions the cluster did not keep (Raft entry {0}, \
         written by this primary as leader before it stopped): its Raft node stops; open the \
         database again and it rejoins the cluster as a new member"
    )]
    Diverged(u64),
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS _octo_raft_log(idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS _octo_raft(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;";

/// The Raft log store of one primary. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
    /// Appends go to the transaction waiting for them, when one does (`write_through`).
    handoff: Arc<Handoff>,
}

/// How long the log store's own write waits for the file's write lock before it looks
/// whether a waiting transaction can take its entries (`write_or_hand_over`).
const LOCK_WAIT_STEP: Duration = Duration::from_millis(20);
/// Longest pause between tries of a write the disk refused (openraft waits for it).
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

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
            handoff: Arc::default(),
        })
    }

    /// Opens its connection again, with the file's new key (after a `PRAGMA rekey`, while
    /// nothing is proposed).
    pub(crate) fn reopen(
        &self,
        path: &Path,
        file_key: Option<&crate::uri::NetworkKey>,
    ) -> Result<(), crate::Error> {
        let conn = crate::store::open_connection(path, file_key)?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
        Ok(())
    }

    /// Where appends meet the transactions that write them through.
    pub(crate) fn handoff(&self) -> Arc<Handoff> {
        self.handoff.clone()
    }

    /// Writes `entries` in a transaction of its own, trying again while the disk refuses
    /// (full, failing): openraft's core waits for them, and a primary whose disk is full must
    /// go on once space returns. Blocks.
    pub(crate) fn write_blocking(
        &self,
        entries: &[Entry<TypeConfig>],
    ) -> Result<(), LogStoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut pause = Duration::from_millis(10);
        loop {
            match write_entries(&conn, entries, &self.handoff) {
                Err(LogStoreError::Sqlite(e)) if crate::store::disk_refused(&e) => {
                    tracing::warn!("cannot write the Raft log ({e}); trying again");
                    self.handoff.note_disk(Some(e.to_string()));
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
                other => {
                    self.handoff.note_disk(None);
                    return other;
                }
            }
        }
    }

    /// Writes `append` in a transaction of its own, and says when it is durable. While the
    /// file's write lock is taken, it looks again and again whether a transaction now waits
    /// for entries: that transaction may hold the lock itself, waiting for an entry openraft
    /// sends only after this one, so it takes this append into its own commit instead (a
    /// wait for the lock here stalled both for the proposer's 10 s, then failed Raft's log).
    fn write_or_hand_over(&self, mut append: PendingAppend) {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let _ = conn.busy_timeout(LOCK_WAIT_STEP);
        let mut pause = Duration::from_millis(10);
        let written = loop {
            match write_entries(&conn, &append.entries, &self.handoff) {
                Err(LogStoreError::Sqlite(e)) if lock_taken(&e) => {
                    match self.handoff.offer(append) {
                        None => {
                            let _ = conn.busy_timeout(crate::store::BUSY_TIMEOUT);
                            return; // the waiting transaction writes it and says when
                        }
                        Some(back) => append = back,
                    }
                }
                Err(LogStoreError::Sqlite(e)) if crate::store::disk_refused(&e) => {
                    tracing::warn!("cannot write the Raft log ({e}); trying again");
                    self.handoff.note_disk(Some(e.to_string()));
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                }
                other => {
                    self.handoff.note_disk(None);
                    break other;
                }
            }
        };
        let _ = conn.busy_timeout(crate::store::BUSY_TIMEOUT);
        // Committed with synchronous=FULL: on disk.
        append
            .flushed
            .log_io_completed(written.map_err(|e| std::io::Error::other(e.to_string())));
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
        let append = PendingAppend {
            entries: entries.into_iter().collect(),
            flushed: callback,
        };
        let Some(append) = self.handoff.offer(append) else {
            return Ok(()); // a transaction writes it with its batch, and says when it is durable
        };
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_or_hand_over(append))
            .await
            .map_err(|e| StorageIOError::write_logs(&LogStoreError::Stopped(e.to_string())))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StorageError> {
        let from = log_id.index as i64;
        self.with(move |c| {
            if let Some(index) = written_through_since(c, from)? {
                // Kept in the file: at its next start the primary rejoins as a new member.
                super::rejoin::mark_diverged(c, index)
                    .map_err(|e| LogStoreError::Stopped(e.to_string()))?;
                return Err(LogStoreError::Diverged(index));
            }
            c.prepare_cached("DELETE FROM _octo_raft_log WHERE idx >= ?1")?
                .execute([from])?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    /// Purges in a transaction of its own if the file's lock is free soon. A transaction
    /// holding it may be waiting for openraft, which waits for this purge: then the purge is
    /// left to the next transaction that writes Raft entries (`Handoff::defer_purge`). Until
    /// then the entries stay: harmless, as reads below the purge point do not come.
    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StorageError> {
        let handoff = self.handoff.clone();
        self.with(move |c| {
            let _ = c.busy_timeout(LOCK_WAIT_STEP);
            let purged = (|| {
                crate::store::exec(c, "BEGIN IMMEDIATE")?;
                purge_in(c, log_id)?;
                Ok::<(), LogStoreError>(crate::store::exec(c, "COMMIT")?)
            })();
            let _ = c.busy_timeout(crate::store::BUSY_TIMEOUT);
            match purged {
                Err(LogStoreError::Sqlite(e)) if lock_taken(&e) => {
                    let _ = crate::store::exec(c, "ROLLBACK");
                    handoff.defer_purge(log_id);
                    Ok(())
                }
                Err(e) => {
                    let _ = crate::store::exec(c, "ROLLBACK");
                    Err(e)
                }
                Ok(()) => Ok(()),
            }
        })
        .await
        .map_err(write_err)
    }
}

/// Writes one entry (in the caller's transaction).
pub(crate) fn write_entry(c: &Connection, entry: &Entry<TypeConfig>) -> Result<(), LogStoreError> {
    let bytes = postcard::to_allocvec(entry)?;
    c.prepare_cached("INSERT OR REPLACE INTO _octo_raft_log(idx, entry) VALUES (?1, ?2)")?
        .execute(params![entry.log_id.index as i64, bytes])?;
    Ok(())
}

/// Purges the Raft log up to `upto`, in the caller's transaction. The mark first: entries
/// left behind it are skipped by reads, never a hole.
pub(crate) fn purge_in(c: &Connection, upto: LogId<RaftNodeId>) -> Result<(), LogStoreError> {
    let bytes = postcard::to_allocvec(&upto)?;
    c.prepare_cached("INSERT OR REPLACE INTO _octo_raft(key, value) VALUES ('purged', ?1)")?
        .execute([bytes])?;
    c.prepare_cached("DELETE FROM _octo_raft_log WHERE idx <= ?1")?
        .execute([upto.index as i64])?;
    Ok(())
}

/// Writes `entries` in one transaction of their own, with a purge left waiting (`handoff`).
fn write_entries(
    c: &Connection,
    entries: &[Entry<TypeConfig>],
    handoff: &Handoff,
) -> Result<(), LogStoreError> {
    crate::store::exec(c, "BEGIN IMMEDIATE")?;
    let purge = handoff.take_purge();
    let written = entries
        .iter()
        .try_for_each(|e| write_entry(c, e))
        .and_then(|()| purge.map_or(Ok(()), |upto| purge_in(c, upto)))
        .and_then(|()| Ok(crate::store::exec(c, "COMMIT")?));
    if written.is_err() {
        let _ = crate::store::exec(c, "ROLLBACK");
        if let Some(upto) = purge {
            handoff.defer_purge(upto);
        }
    }
    written
}

/// Another connection holds the file's write lock.
fn lock_taken(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    matches!(e.sqlite_error_code(), Some(DatabaseBusy | DatabaseLocked))
}

/// The first entry from `from` on whose batch this primary wrote through (its effects are
/// in the file: it cannot be taken back).
/// The oldest position of the primaries' log (`_octo_log`) that an entry still in the Raft
/// log names (`Proposal::InLog`): a member behind would be sent it, so the log must keep it
/// (`log::compaction`). None when no entry names one.
pub(crate) fn oldest_log_seq_named(c: &Connection) -> crate::Result<Option<u64>> {
    let mut stmt = c.prepare_cached("SELECT entry FROM _octo_raft_log ORDER BY idx")?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    for bytes in rows {
        let entry: Entry<TypeConfig> = postcard::from_bytes(&bytes?)
            .map_err(|e| crate::Error::rule(format!("a stored Raft entry does not decode: {e}")))?;
        // (Entries come in log order, and so do the positions they name.)
        if let openraft::EntryPayload::Normal(super::Proposal::InLog { first_seq, .. }) =
            entry.payload
        {
            return Ok(Some(first_seq));
        }
    }
    Ok(None)
}

fn written_through_since(c: &Connection, from: i64) -> Result<Option<u64>, LogStoreError> {
    let mut stmt =
        c.prepare_cached("SELECT entry FROM _octo_raft_log WHERE idx >= ?1 ORDER BY idx")?;
    let rows = stmt.query_map([from], |r| r.get::<_, Vec<u8>>(0))?;
    for bytes in rows {
        let entry: Entry<TypeConfig> = postcard::from_bytes(&bytes?)?;
        if matches!(&entry.payload, openraft::EntryPayload::Normal(p) if p.is_written_through()) {
            return Ok(Some(entry.log_id.index));
        }
    }
    Ok(None)
}
