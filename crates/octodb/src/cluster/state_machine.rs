//! The primaries' state machine: the primary's own file. Each `apply` is one SQLite
//! transaction that writes the decided rows, appends their log entries (so every primary gives
//! them the same sequence numbers), and records the last applied Raft log id and membership,
//! so a restart re-applies nothing twice.
//!
//! Triggers: an entry already holds what the leader's triggers wrote to replicated tables, so
//! here a trigger's writes to a replicated table are ignored (SQLite's authorizer answers
//! `Ignore` for them, which leaves the statement out), while its writes to local tables (an
//! FTS index, an audit table) happen on every primary as on the leader.

use super::snapshot::{self, SharedState};
use super::types::{Applied, Decided, Proposal, TypeConfig};
use super::{RaftNodeId, StorageError};
use crate::changes::Op;
use crate::error::{Error, Result};
use crate::log::{self, EntryBody};
use crate::store::apply::{self, HeldInserts, Tables};
use crate::store::{meta_get, meta_set, write_txn};
use crate::store::{renames, unique_holders};
use crate::value::Value;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use rusqlite::Connection;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::types::Member;

pub(super) const APPLIED_KEY: &str = "raft_applied";
pub(super) const MEMBERSHIP_KEY: &str = "raft_membership";
/// The last snapshot built or installed, kept in the file: after a restart openraft asks for
/// it (a primary whose log was purged cannot rebuild it as it was), and sends it to members
/// that need it.
pub(super) const SNAPSHOT_KEY: &str = "raft_snapshot";

type Membership = StoredMembership<RaftNodeId, Member>;

/// The tables that replicate (they have `row_owner`), for the trigger guard.
pub(super) type Replicated = Arc<Mutex<std::collections::HashSet<String>>>;

struct Inner {
    conn: Connection,
    /// This primary's id (`this_node()` on the connection).
    node_id: RaftNodeId,
    tables: Tables,
    replicated: Replicated,
    /// The last snapshot built or installed, as sent to followers that need one.
    current: Option<(SnapshotMeta<RaftNodeId, Member>, Vec<u8>)>,
    /// The last applied log id and membership, once read (ahead of the file's by `unsaved`).
    applied: Option<(Option<LogId<RaftNodeId>>, Membership)>,
    /// Entries skipped since the applied position was last stored.
    unsaved: usize,
}

/// Written-through entries skipped between two stores of the applied position.
const SAVE_EVERY: usize = 1024;

impl Inner {
    /// What was applied: as stored, then as applied since.
    fn applied(&mut self) -> Result<&mut (Option<LogId<RaftNodeId>>, Membership)> {
        let loaded = match self.applied.take() {
            Some(a) => a,
            None => applied_state(&self.conn)?,
        };
        Ok(self.applied.insert(loaded))
    }

    /// Batches this primary wrote through are in the file already: nothing to write but the
    /// position, which can wait (after a restart openraft applies them again, and they are
    /// skipped again). None when `entries` need more (or the position is due to be stored).
    fn skip_written_through(&mut self, entries: &[Entry<TypeConfig>]) -> Option<Vec<Applied>> {
        let written_through = |e: &Entry<TypeConfig>| matches!(&e.payload, EntryPayload::Normal(p) if p.is_written_through());
        let applied = self.applied.as_mut()?;
        if !entries.iter().all(written_through) || self.unsaved + entries.len() >= SAVE_EVERY {
            return None;
        }
        if let Some(last) = entries.last() {
            applied.0 = Some(last.log_id);
        }
        self.unsaved += entries.len();
        Some(entries.iter().map(skipped).collect())
    }

    /// Applies `entries`; answers each, and the log position of the last rows written here
    /// (0: none).
    fn apply(&mut self, entries: &[Entry<TypeConfig>]) -> Result<(Vec<Applied>, u64, Applying)> {
        if let Some(out) = self.skip_written_through(entries) {
            return Ok((out, 0, Applying::default()));
        }
        let mut rows_seq = 0;
        let mut news = Applying::default();
        let (mut applied, mut membership) = self.applied()?.clone();
        let Inner {
            conn,
            tables,
            replicated,
            ..
        } = self;
        let out = write_txn(conn, |c| {
            tables.in_transaction(|tables| {
                let mut inserts = HeldInserts::new(c);
                let mut out = Vec::with_capacity(entries.len());
                for entry in entries {
                    let mut last_seq = 0;
                    match &entry.payload {
                        EntryPayload::Blank => {}
                        EntryPayload::Normal(
                            Proposal::Decided(txns) | Proposal::Batch { txns, .. },
                        ) => {
                            for d in txns {
                                last_seq =
                                    apply_decided(c, tables, &mut inserts, replicated, d, None)?;
                                rows_seq = last_seq;
                                if let EntryBody::Epoch { .. } = d.body {
                                    news.epoch_seq = last_seq;
                                }
                            }
                        }
                        EntryPayload::Normal(Proposal::DecidedChecked { txns, digests }) => {
                            for (at, d) in txns.iter().enumerate() {
                                let digest = digests.get(at).copied().flatten();
                                let digest = digest.as_ref();
                                last_seq =
                                    apply_decided(c, tables, &mut inserts, replicated, d, digest)?;
                                rows_seq = last_seq;
                                if let EntryBody::Epoch { .. } = d.body {
                                    news.epoch_seq = last_seq;
                                }
                            }
                        }
                        EntryPayload::Normal(Proposal::InLog { last_seq: s, .. }) => {
                            last_seq = *s;
                        }
                        EntryPayload::Normal(Proposal::RowsWritten { .. }) => {}
                        EntryPayload::Normal(Proposal::Rows { nodes, users, .. }) => {
                            write_shared_rows(c, nodes, users)?;
                            news.auth_changes += 1;
                        }
                        EntryPayload::Membership(m) => {
                            membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        }
                    }
                    if last_seq == 0 {
                        last_seq = log::last_seq(c)?;
                    }
                    applied = Some(entry.log_id);
                    out.push(Applied { last_seq });
                }
                save_applied_state(c, &applied, &membership)?;
                Ok(out)
            })
        })?;
        self.applied = Some((applied, membership));
        self.unsaved = 0;
        Ok((out, rows_seq, news))
    }
}

/// The newest entry whose batch was written through, in the file as read now.
fn newest_written_through(c: &Connection) -> Result<Option<LogId<RaftNodeId>>> {
    let mut stmt =
        c.prepare_cached("SELECT entry FROM _octo_raft_log ORDER BY idx DESC LIMIT 64")?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    for bytes in rows {
        let entry: Entry<TypeConfig> = postcard::from_bytes(&bytes?)
            .map_err(|e| Error::rule(format!("a stored Raft entry does not decode: {e}")))?;
        if matches!(&entry.payload, EntryPayload::Normal(p) if p.is_written_through()) {
            return Ok(Some(entry.log_id));
        }
    }
    Ok(None)
}

/// Whether the file holds batches this primary wrote through (as a leader) beyond `applied`:
/// entries its cluster may never have held, which no device may read from it until the
/// cluster has confirmed them (or this primary found its file diverged and stopped).
pub(crate) fn own_batches_beyond(
    c: &Connection,
    applied: Option<LogId<RaftNodeId>>,
) -> Result<bool> {
    Ok(newest_written_through(c)? > applied)
}

/// What a written-through batch answers: its log position.
fn skipped(e: &Entry<TypeConfig>) -> Applied {
    match &e.payload {
        EntryPayload::Normal(Proposal::InLog { last_seq, .. }) => Applied {
            last_seq: *last_seq,
        },
        _ => Applied::default(),
    }
}

/// The state machine of one primary. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    /// The log position of the last rows this state machine wrote itself (a follower's
    /// batches, a snapshot): the node's change feed follows it. Batches written through
    /// are announced by the writer that wrote them, not here.
    rows_applied: Arc<tokio::sync::watch::Sender<u64>>,
    /// What else the entries it applied changed, for the node (see [`Applying`]).
    news: Arc<tokio::sync::watch::Sender<Applying>>,
}

/// What a follower's applied entries changed besides rows, for its device sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applying {
    /// The sequence number of the newest epoch marker applied (0: none yet).
    pub epoch_seq: u64,
    /// Counts the entries that changed the authorization state (nodes, users).
    pub auth_changes: u64,
}

impl StateMachine {
    /// The state machine on the primary's file at `path` (its internal tables already made).
    pub fn open(
        path: &Path,
        file_key: Option<&crate::uri::NetworkKey>,
        node_id: RaftNodeId,
    ) -> Result<StateMachine> {
        let conn = crate::store::open_connection(path, file_key)?;
        crate::store::init_internal_schema(&conn)?;
        crate::store::capture::register_primary_functions(&conn, node_id)?;
        // The Raft log is the durable record of every entry: a commit here need not wait for
        // the disk. After a crash openraft applies again what `raft_applied` lacks, and the
        // log's own FULL commits flush the shared WAL, these frames included.
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let replicated = Replicated::default();
        guard_triggers(&conn, replicated.clone());
        refresh_replicated(&conn, &replicated)?;
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                node_id,
                tables: Tables::default(),
                replicated,
                current: None,
                applied: None,
                unsaved: 0,
            })),
            rows_applied: Arc::new(tokio::sync::watch::channel(0).0),
            news: Arc::new(tokio::sync::watch::channel(Applying::default()).0),
        })
    }

    /// Follows the epochs and authorization changes this state machine applies.
    pub fn news(&self) -> tokio::sync::watch::Receiver<Applying> {
        self.news.subscribe()
    }

    /// Follows the log position of the rows this state machine writes (see `rows_applied`).
    pub fn rows_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rows_applied.subscribe()
    }

    fn report_rows(&self, seq: u64) {
        if seq > 0 {
            self.rows_applied.send_if_modified(|v| {
                let newer = seq > *v;
                *v = (*v).max(seq);
                newer
            });
        }
    }

    /// Opens its connection again, with the file's new key (after a `PRAGMA rekey`, while
    /// nothing is proposed).
    pub(crate) fn reopen(
        &self,
        path: &Path,
        file_key: Option<&crate::uri::NetworkKey>,
    ) -> Result<()> {
        let conn = crate::store::open_connection(path, file_key)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let mut inner = self.lock();
        crate::store::capture::register_primary_functions(&conn, inner.node_id)?;
        guard_triggers(&conn, inner.replicated.clone());
        inner.conn = conn;
        inner.tables = Tables::default();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut inner)
        })
        .await
        .map_err(|e| Error::rule(format!("the state machine's task stopped: {e}")))?
    }
}

/// A trigger's write to a replicated table is left out: the entry carries its effect.
pub(super) fn guard_triggers(conn: &Connection, replicated: Replicated) {
    use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let table = match ctx.action {
            AuthAction::Insert { table_name }
            | AuthAction::Delete { table_name }
            | AuthAction::Update { table_name, .. } => table_name,
            _ => return Authorization::Allow,
        };
        let by_trigger = ctx.accessor.is_some();
        let replicated = replicated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(table);
        match by_trigger && replicated {
            true => Authorization::Ignore,
            false => Authorization::Allow,
        }
    }));
}

/// Reads which tables replicate; after every schema change (statements prepared later see it,
/// and SQLite prepares again those a schema change made stale).
pub(super) fn refresh_replicated(c: &Connection, replicated: &Replicated) -> Result<()> {
    let names = crate::store::schema::user_tables(c)?
        .into_iter()
        .filter(|t| t.is_replicated())
        .map(|t| t.name)
        .collect();
    *replicated.lock().unwrap_or_else(|p| p.into_inner()) = names;
    Ok(())
}

fn read_blob<T: serde::de::DeserializeOwned>(c: &Connection, key: &str) -> Result<Option<T>> {
    let Some(bytes) = meta_get::<Vec<u8>>(c, key)? else {
        return Ok(None);
    };
    postcard::from_bytes(&bytes).map(Some).map_err(|e| {
        Error::rule(format!(
            "the stored Raft state `{key}` does not decode: {e}"
        ))
    })
}

fn write_blob<T: serde::Serialize>(c: &Connection, key: &str, value: &T) -> Result<()> {
    let bytes = postcard::to_allocvec(value)
        .map_err(|e| Error::rule(format!("cannot encode the Raft state `{key}`: {e}")))?;
    meta_set(c, key, bytes)
}

pub(super) fn applied_state(c: &Connection) -> Result<(Option<LogId<RaftNodeId>>, Membership)> {
    // Stored as written: an Option of the log id.
    let applied: Option<Option<LogId<RaftNodeId>>> = read_blob(c, APPLIED_KEY)?;
    Ok((
        applied.flatten(),
        read_blob(c, MEMBERSHIP_KEY)?.unwrap_or_default(),
    ))
}

pub(super) fn save_applied_state(
    c: &Connection,
    applied: &Option<LogId<RaftNodeId>>,
    membership: &Membership,
) -> Result<()> {
    write_blob(c, APPLIED_KEY, applied)?;
    write_blob(c, MEMBERSHIP_KEY, membership)
}

/// Writes one decided transaction and appends its log entry.
pub(super) fn apply_decided(
    c: &Connection,
    tables: &mut Tables,
    inserts: &mut HeldInserts<'_>,
    replicated: &Replicated,
    d: &Decided,
    origin_digest: Option<&crate::log::digest::TxnDigest>,
) -> Result<u64> {
    if let EntryBody::Changes(cs) = &d.body {
        for (i, op) in cs.ops.iter().enumerate() {
            match op {
                Op::Upsert {
                    table,
                    rowid,
                    values,
                } => {
                    let Some(h) = cs.header(*table) else { continue };
                    let Some(t) = tables.get(c, &h.name)? else {
                        return Err(missing_table(&h.name));
                    };
                    // Decided rows are usually new here (rows made by apps more often than
                    // rows changed): try the insert first, with the statements kept per table
                    // and column order (building them for each row cost ~1% of a cluster's
                    // CPU, the update tried first a seek per new row).
                    let sql = tables.statements(&t, &h.columns);
                    match inserts.insert_or_update(&sql, *rowid, values) {
                        // Rows that traded unique values in the transaction: those written
                        // later step aside until their own image comes.
                        Err(e)
                            if unique_holders::is_unique_violation(&e)
                                && unique_holders::aside_for_later(
                                    c,
                                    &t,
                                    &h.columns,
                                    *rowid,
                                    values,
                                    (cs, &cs.ops[i + 1..]),
                                )? =>
                        {
                            inserts.insert_or_update(&sql, *rowid, values)?
                        }
                        written => written?,
                    }
                }
                Op::Delete { table, rowid, .. } => {
                    let Some(h) = cs.header(*table) else { continue };
                    let Some(t) = tables.get(c, &h.name)? else {
                        return Err(missing_table(&h.name));
                    };
                    apply::delete_row(c, &t, *rowid)?;
                }
                Op::Ddl { sql, .. } => {
                    renames::recording(c, sql, || Ok(c.execute_batch(sql)?))?;
                    tables.schema_changed();
                    inserts.schema_changed();
                    refresh_replicated(c, replicated)?;
                }
                Op::Insert { .. } | Op::Update { .. } => {
                    return Err(Error::rule(
                        "a decided transaction holds a device's unchecked change: the leader \
                         that proposed it is faulty",
                    ))
                }
            }
        }
    }
    let seq = log::append(c, d.origin_node, d.origin_txn, &d.body, origin_digest)?;
    if let EntryBody::Epoch { id } = &d.body {
        log::epochs::begin(c, *id, seq)?;
    }
    Ok(seq)
}

/// The authorization state's rows, whole, as the leader has them.
fn write_shared_rows(c: &Connection, nodes: &[Vec<Value>], users: &[Vec<Value>]) -> Result<()> {
    for (table, rows) in [("_octo_nodes", nodes), ("_octo_users", users)] {
        for row in rows {
            let marks = vec!["?"; row.len()].join(", ");
            let sql = format!("INSERT OR REPLACE INTO {table} VALUES ({marks})");
            c.prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(row.iter()))
                .map_err(|e| {
                    Error::rule(format!(
                        "a row of {table} from the leader does not fit this primary's ({e}): \
                         the primaries run incompatible versions"
                    ))
                })?;
        }
    }
    Ok(())
}

fn missing_table(name: &str) -> Error {
    Error::rule(format!(
        "a decided transaction writes table `{name}`, which this primary does not have: its \
         file is not the cluster's state (restore it from a snapshot)"
    ))
}

fn storage_error(e: Error) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<RaftNodeId>>, Membership), StorageError> {
        self.with(|inner| Ok(inner.applied()?.clone()))
            .await
            .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        // Batches written through need no SQLite work: answered here, without a trip to the
        // blocking pool (the leader's every proposal comes this way).
        if let Some(out) = self.lock().skip_written_through(&entries) {
            return Ok(out);
        }
        let (out, rows_seq, news) = self
            .with(move |inner| inner.apply(&entries))
            .await
            .map_err(storage_error)?;
        self.report_rows(rows_seq);
        if news != Applying::default() {
            self.news.send_modify(|n| {
                n.epoch_seq = n.epoch_seq.max(news.epoch_seq);
                n.auth_changes += news.auth_changes;
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, Member>,
        data: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = data.into_inner();
        let meta = meta.clone();
        self.with(move |inner| {
            let state = SharedState::decode(&bytes)?;
            write_txn(&inner.conn, |c| {
                snapshot::install(c, &state)?;
                save_applied_state(c, &meta.last_log_id, &meta.last_membership)?;
                write_blob(c, SNAPSHOT_KEY, &(&meta, &bytes))
            })?;
            inner.tables = Tables::default();
            refresh_replicated(&inner.conn, &inner.replicated)?;
            inner.applied = Some((meta.last_log_id, meta.last_membership.clone()));
            inner.unsaved = 0;
            inner.current = Some((meta, bytes));
            log::last_seq(&inner.conn)
        })
        .await
        .map(|seq| {
            self.report_rows(seq);
            // Nodes and epochs came with it too.
            self.news.send_modify(|n| {
                n.epoch_seq = n.epoch_seq.max(seq);
                n.auth_changes += 1;
            });
        })
        .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.with(|inner| {
            if inner.current.is_none() {
                inner.current = read_blob(&inner.conn, SNAPSHOT_KEY)?;
            }
            Ok(inner.current.as_ref().map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(bytes.clone())),
            }))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// How often a snapshot waiting for the newest batches looks again, and says so in the log.
const SNAPSHOT_RETRY: std::time::Duration = std::time::Duration::from_millis(2);
const SNAPSHOT_WAIT_NOTE: std::time::Duration = std::time::Duration::from_secs(5);

/// The shared state, the applied log id and the membership, read in one transaction, if no
/// batch written through is newer than what was applied (else None: try again).
type SnapshotRead = (
    Option<LogId<RaftNodeId>>,
    StoredMembership<RaftNodeId, Member>,
    Vec<u8>,
);

fn read_when_all_applied(inner: &mut Inner) -> Result<Option<SnapshotRead>> {
    // One read transaction: the rows, the log and the applied id agree.
    crate::store::exec(&inner.conn, "BEGIN")?;
    let read = (|| -> Result<_> {
        let (applied, membership) = inner.applied()?.clone();
        if newest_written_through(&inner.conn)? > applied {
            return Ok(None);
        }
        let bytes = SharedState::read(&inner.conn)?.encode()?;
        Ok(Some((applied, membership, bytes)))
    })();
    let _ = crate::store::exec(&inner.conn, "COMMIT");
    read
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// A snapshot of what was applied. The file may also hold this leader's newest batches,
    /// written through (committed in SQLite) but not yet committed by the cluster: a
    /// snapshot holding them would claim more than the cluster committed, which openraft
    /// refuses (its core stops), and one leaving their log position out would have them
    /// applied twice where it is installed. So the snapshot is read at a moment when every
    /// batch in the file is applied; under a steady stream of batches such moments come
    /// between group commits (openraft builds snapshots in a task of their own, while it
    /// goes on applying).
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let waiting_since = std::time::Instant::now();
        let mut told = waiting_since;
        let (applied, membership, bytes) = loop {
            match self.with(read_when_all_applied).await {
                Ok(Some(read)) => break read,
                Ok(None) => {}
                Err(e) => return Err(StorageIOError::read_state_machine(&e).into()),
            }
            if told.elapsed() > SNAPSHOT_WAIT_NOTE {
                told = std::time::Instant::now();
                tracing::info!(
                    waited_s = waiting_since.elapsed().as_secs(),
                    "a Raft snapshot waits for this primary's newest batches to be committed"
                );
            }
            tokio::time::sleep(SNAPSHOT_RETRY).await;
        };
        self.with(move |inner| {
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: format!(
                    "{}-{}",
                    applied.map_or(0, |l| l.leader_id.term),
                    applied.map_or(0, |l| l.index)
                ),
            };
            // The applied position is saved now if it was not yet (it is saved every so
            // many entries), so that after a restart the stored snapshot is never ahead of
            // what the file says it applied.
            if inner.unsaved > 0 {
                let (newest, membership) = inner.applied()?.clone();
                save_applied_state(&inner.conn, &newest, &membership)?;
                inner.unsaved = 0;
            }
            write_blob(&inner.conn, SNAPSHOT_KEY, &(&meta, &bytes))?;
            inner.current = Some((meta.clone(), bytes.clone()));
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            })
        })
        .await
        .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }
}
