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
use crate::store::apply::{self, Tables};
use crate::store::{meta_get, meta_set, write_txn};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use rusqlite::Connection;
use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::types::Member;

const APPLIED_KEY: &str = "raft_applied";
const MEMBERSHIP_KEY: &str = "raft_membership";

type Membership = StoredMembership<RaftNodeId, Member>;

/// The tables that replicate (they have `row_owner`), for the trigger guard.
type Replicated = Arc<Mutex<std::collections::HashSet<String>>>;

struct Inner {
    conn: Connection,
    tables: Tables,
    replicated: Replicated,
    /// The last snapshot built or installed, as sent to followers that need one.
    current: Option<(SnapshotMeta<RaftNodeId, Member>, Vec<u8>)>,
}

/// The state machine of one primary. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
}

impl StateMachine {
    /// The state machine on the primary's file at `path` (its internal tables already made).
    pub fn open(path: &Path, file_key: Option<&crate::uri::NetworkKey>) -> Result<StateMachine> {
        let conn = crate::store::open_connection(path, file_key)?;
        crate::store::init_internal_schema(&conn)?;
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
                tables: Tables::default(),
                replicated,
                current: None,
            })),
        })
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
fn guard_triggers(conn: &Connection, replicated: Replicated) {
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
fn refresh_replicated(c: &Connection, replicated: &Replicated) -> Result<()> {
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
fn apply_decided(
    c: &Connection,
    tables: &mut Tables,
    replicated: &Replicated,
    d: &Decided,
) -> Result<u64> {
    if let EntryBody::Changes(cs) = &d.body {
        for op in &cs.ops {
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
                    apply::write_row(c, &t, &h.columns, *rowid, values)?;
                }
                Op::Delete { table, rowid, .. } => {
                    let Some(h) = cs.header(*table) else { continue };
                    let Some(t) = tables.get(c, &h.name)? else {
                        return Err(missing_table(&h.name));
                    };
                    apply::delete_row(c, &t, *rowid)?;
                }
                Op::Ddl { sql, .. } => {
                    c.execute_batch(sql)?;
                    tables.schema_changed();
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
    log::append(c, d.origin_node, d.origin_txn, &d.body)
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
        self.with(|inner| applied_state(&inner.conn))
            .await
            .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        self.with(move |inner| {
            let Inner {
                conn,
                tables,
                replicated,
                ..
            } = inner;
            let (mut applied, mut membership) = applied_state(conn)?;
            write_txn(conn, |c| {
                tables.in_transaction(|tables| {
                    let mut out = Vec::with_capacity(entries.len());
                    for entry in &entries {
                        let mut last_seq = 0;
                        match &entry.payload {
                            EntryPayload::Blank => {}
                            EntryPayload::Normal(Proposal::Decided(txns)) => {
                                for d in txns {
                                    last_seq = apply_decided(c, tables, replicated, d)?;
                                }
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
            })
        })
        .await
        .map_err(storage_error)
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
                save_applied_state(c, &meta.last_log_id, &meta.last_membership)
            })?;
            inner.tables = Tables::default();
            refresh_replicated(&inner.conn, &inner.replicated)?;
            inner.current = Some((meta, bytes));
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.with(|inner| {
            Ok(inner.current.as_ref().map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(bytes.clone())),
            }))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.with(|inner| {
            // One read transaction: the rows, the log and the applied id agree.
            crate::store::exec(&inner.conn, "BEGIN")?;
            let read = (|| -> Result<_> {
                let (applied, membership) = applied_state(&inner.conn)?;
                let bytes = SharedState::read(&inner.conn)?.encode()?;
                Ok((applied, membership, bytes))
            })();
            let _ = crate::store::exec(&inner.conn, "COMMIT");
            let (applied, membership, bytes) = read?;
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: format!(
                    "{}-{}",
                    applied.map_or(0, |l| l.leader_id.term),
                    applied.map_or(0, |l| l.index)
                ),
            };
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
