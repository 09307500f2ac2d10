//! `Connection`: a SQLite connection on a node, in the style of rusqlite.
//!
//! Every statement goes through [`Connection::run`], which answers octodb's PRAGMAs itself and,
//! on replicated nodes, makes each write a transaction whose captured changes are recorded (log
//! on primaries, outbox on devices) in the same SQLite transaction as the data, so a crash can
//! never separate a change from its replication record. `run` is made of the phases in
//! `driver`, which a driver stepping statements itself (the Python module) calls in turn.
//!
//! Without `node=` the connection is a plain SQLite connection (see `local`): no node, no
//! bookkeeping, SQLite's own `last_insert_rowid()` and `changes()`.

mod capture_schema;
mod commit_point;
mod driver;
mod pragmas;
mod rules;
mod services;
mod txn_status;

use driver::Dml;
pub use driver::{Prepared, Started};
pub(crate) use pragmas::service_executor;
pub use services::app_signed_bytes;

use super::authz;
use super::local::{self, OpenOptions};
use super::pragma;
use super::rows::{Row, Rows};
use super::sql_text;
use crate::error::{Error, Result};
use crate::log::{self, outbox};
use crate::node::write_turns::AppTurn;
use crate::node::{open_node, Event, Node, NodeRecord, SyncStatus};
use crate::store;
use crate::store::capture::Capture;
use crate::store::returned_ids::ColumnOrigin;
use crate::uri::{NodeConfig, Role};
use crate::value::Value;
use pragmas::pragma_columns;
use rusqlite::functions::FunctionFlags;
use rusqlite::Params;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What one statement produced.
#[derive(Debug, Default)]
struct Outcome {
    rows: Option<Rows>,
    changes: u64,
}

/// Replication state of a connection on a primary or a device.
struct Replication {
    capture: Capture,
    role: Role,
}

/// A connection to an octodb database. Not `Sync`: use one per thread, like SQLite's.
pub struct Connection {
    conn: rusqlite::Connection,
    /// None for a plain local database.
    node: Option<Arc<Node>>,
    repl: Option<Replication>,
    authz: authz::Shared,
    schema_version: Cell<i64>,
    /// The open transaction has read `schema_version`: its snapshot is fixed, so only this
    /// connection's own schema statements (or a rollback of them) can change what it sees.
    schema_fixed: Cell<bool>,
    /// The capture's triggers were installed inside the open transaction: a rollback takes
    /// them back with it (TEMP schema is transactional), so `schema_version` must not vouch
    /// for them after one.
    installed_in_txn: Cell<bool>,
    /// SQLite's recursive triggers are on: the last statement resolved conflicts by REPLACE
    /// (see `driver::deletes_by_replace`).
    recursive_triggers: Cell<bool>,
    /// The app's own `PRAGMA recursive_triggers`, which the engine goes back to after a
    /// REPLACE (None: the app set it since; read before the next statement).
    app_recursive_triggers: Cell<Option<bool>>,
    /// A primary's connection has seen its primary a caught-up member of its cluster
    /// (`driver::wait_until_joined`).
    member_seen: Cell<bool>,
    /// On a follower: this connection caught up with its leader before its first write
    /// (`driver::catch_up_with_leader`).
    caught_up_once: Cell<bool>,
    /// Devices: the outbox transaction the open SQLite transaction adds to.
    open_txn: Cell<Option<u64>>,
    /// Devices: the outbox transaction this connection committed last ([`Connection::last_txn_id`]).
    last_txn: Cell<Option<u64>>,
    /// Primaries: the log entries to announce once the open transaction commits.
    committed: RefCell<Vec<log::LogEntry>>,
    /// Devices: the changes the open transaction added to the outbox, handed to the node at
    /// commit so it can send them without reading them back.
    outbox_added: RefCell<Option<crate::changes::ChangeSet>>,
    /// A `ROLLBACK TO` ran in the open transaction: announce it from the file, not from memory.
    rolled_back_within: Cell<bool>,
    /// Primaries: the savepoints of a transaction a `SAVEPOINT` opened, oldest first
    /// (`commit_point`).
    savepoints: RefCell<Vec<String>>,
    /// Primaries in a cluster: the open transaction's Raft entry, written in it at its commit.
    in_flight: RefCell<Option<commit_point::InFlight>>,
    /// Followers: the open transaction changed rows that stay local (row_owner NULL), which
    /// the leader would not receive with its replicated rows (`commit_point`).
    local_rows_in_txn: Cell<bool>,
    /// `last_insert_rowid()` as the user sees it: the id a row was finally stored under.
    last_rowid: Arc<AtomicI64>,
    last_changes: Arc<AtomicI64>,
    /// This connection's part in the node's turns at writing (none on a plain database).
    turn: AppTurn,
    /// The file is encrypted (opened with a key, or given one by `PRAGMA key`): its temporary
    /// tables and sorts must stay in memory (`rules::spills_temp_to_files`).
    encrypted: Cell<bool>,
}

/// WAL pages after which an app's commit checkpoints (the engine does at 1000).
const APP_CHECKPOINT_PAGES: u32 = 4000;

impl Connection {
    /// Open the database of `uri` (SPEC §2), starting its node in this process if needed.
    pub fn open(uri: &str) -> Result<Connection> {
        Connection::open_config(NodeConfig::parse(uri)?)
    }

    /// Open a node's URI (`file:PATH?node=...`) as [`Connection::open`] does; anything else is a
    /// plain local database opened like Python's `sqlite3.connect(target, uri=opts.uri,
    /// timeout=...)`: a file name taken literally, `:memory:`, or a SQLite URI.
    pub fn open_with(target: &str, opts: &OpenOptions) -> Result<Connection> {
        if NodeConfig::has_octodb_parameters(target) {
            return Connection::open_config_with(NodeConfig::parse(target)?, opts);
        }
        Connection::open_local(Path::new(target), opts)
    }

    /// A plain local database (no replication), as SQLite itself opens `target`. The path may
    /// be any bytes the OS accepts.
    pub fn open_local(target: &Path, opts: &OpenOptions) -> Result<Connection> {
        Ok(Connection::bare(local::open_plain(target, opts, None)?))
    }

    /// Open the database a parsed URI (`NodeConfig::parse`) describes: a node (started, or
    /// shared with this process's other connections to its file) or a plain local database.
    pub fn open_config(cfg: NodeConfig) -> Result<Connection> {
        Connection::open_config_with(cfg, &OpenOptions::default())
    }

    /// [`Connection::open_config`], with `opts` for a plain local database (nodes have their
    /// own settings).
    pub fn open_config_with(cfg: NodeConfig, opts: &OpenOptions) -> Result<Connection> {
        if cfg.role.is_none() {
            return Connection::open_file(&cfg, opts);
        }
        // The app's connection opens with the key its URI gives: a wrong one fails here even
        // when the node is already running.
        let app_key = cfg.file_key().cloned();
        let node = open_node(cfg)?;
        let conn = store::open_connection(node.shared.path(), app_key.as_ref())?;
        // The engine's writer checkpoints after its own commits (every 1000 pages of WAL), off
        // the app's thread: an app's commit that ran the checkpoint paid for writing the
        // pages to the database file and its fsync. The app checkpoints itself only as a
        // backstop, when the engine has not written for a while (a device offline).
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint={APP_CHECKPOINT_PAGES}"))?;
        // The app's statements check and cascade foreign keys (the bundled SQLite's default,
        // which the engine's own connections turn off): `PRAGMA foreign_keys=OFF` per connection.
        conn.execute_batch("PRAGMA foreign_keys=ON")?;
        let repl = node.role().map(|role| Replication {
            capture: Capture::new(node.identity().clone()),
            role,
        });
        let me = Connection {
            turn: AppTurn::new(node.shared.write_turns.clone()),
            node: Some(node),
            repl,
            encrypted: Cell::new(app_key.is_some()),
            ..Connection::bare(conn)
        };
        override_counters(&me.conn, &me.last_rowid, &me.last_changes)?;
        if let Some(r) = &me.repl {
            r.capture.register_functions(&me.conn)?;
            authz::install(&me.conn, r.role, me.authz.clone());
        }
        me.refresh_schema()?;
        Ok(me)
    }

    /// The file of `cfg` as a plain local database, with its key when it is encrypted, whatever
    /// its `node`: what tools reading a node's file beside it (backups, conversions) open.
    pub fn open_file(cfg: &NodeConfig, opts: &OpenOptions) -> Result<Connection> {
        let local_uri = cfg.sqlite_uri.as_deref().filter(|_| cfg.role.is_none());
        let target = local_uri.map_or(cfg.path.as_path(), Path::new);
        let opts = OpenOptions {
            uri: local_uri.is_some(),
            ..opts.clone()
        };
        let encrypted = cfg.file_key().map(|key| local::Encrypted {
            file: &cfg.path,
            key,
        });
        let is_encrypted = encrypted.is_some();
        let me = Connection::bare(local::open_plain(target, &opts, encrypted)?);
        me.encrypted.set(is_encrypted);
        Ok(me)
    }

    fn bare(conn: rusqlite::Connection) -> Connection {
        Connection {
            conn,
            node: None,
            repl: None,
            authz: Default::default(),
            schema_version: Cell::new(-1),
            schema_fixed: Cell::new(false),
            installed_in_txn: Cell::new(false),
            recursive_triggers: Cell::new(false),
            app_recursive_triggers: Cell::new(Some(false)),
            member_seen: Cell::new(false),
            caught_up_once: Cell::new(false),
            open_txn: Cell::new(None),
            last_txn: Cell::new(None),
            committed: RefCell::new(Vec::new()),
            outbox_added: RefCell::new(None),
            rolled_back_within: Cell::new(false),
            savepoints: RefCell::new(Vec::new()),
            in_flight: RefCell::new(None),
            local_rows_in_txn: Cell::new(false),
            last_rowid: Arc::new(AtomicI64::new(0)),
            last_changes: Arc::new(AtomicI64::new(0)),
            turn: AppTurn::default(),
            encrypted: Cell::new(false),
        }
    }

    /// The node behind this connection, or why a plain local database cannot do `what`.
    pub(super) fn node(&self, what: &str) -> Result<&Arc<Node>> {
        self.node.as_ref().ok_or_else(|| {
            Error::rule(format!(
                "{what} needs a node; this is a plain local database (open it with node=primary or node=secondary)"
            ))
        })
    }

    /// Execute one statement; returns the number of rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        Ok(self.run(sql, params)?.changes as usize)
    }

    /// Execute every statement of `sql` in turn, stopping at the first error.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        for stmt in sql_text::split_statements(sql) {
            self.run(stmt, [])?;
        }
        Ok(())
    }

    /// Run one statement and return all its rows (empty for statements without results).
    pub fn query<P: Params>(&self, sql: &str, params: P) -> Result<Rows> {
        Ok(self.run(sql, params)?.rows.unwrap_or_default())
    }

    /// Run a statement and map its first row; `QueryReturnedNoRows` when there is none.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let rows = self.query(sql, params)?;
        let first = rows
            .iter()
            .next()
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        f(first)
    }

    /// A statement to run several times. It is checked (prepared) now.
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        let (columns, parameters) = match pragma::parse(sql)? {
            Some(p) => (pragma_columns(&p), 0),
            None => {
                let stmt = self
                    .conn
                    .prepare_cached(sql)
                    .map_err(|e| self.sql_error(e))?;
                let columns = stmt.column_names().into_iter().map(String::from).collect();
                (columns, stmt.parameter_count())
            }
        };
        Ok(Statement {
            conn: self,
            sql: sql.to_string(),
            columns,
            parameters,
        })
    }

    /// Start a transaction that takes the write lock at once; it rolls back unless committed.
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.execute("BEGIN IMMEDIATE", [])?;
        Ok(Transaction {
            conn: self,
            done: false,
        })
    }

    /// Register a scalar SQL function, as rusqlite's `create_scalar_function`.
    pub fn create_scalar_function<F, T>(
        &self,
        name: &str,
        n_arg: i32,
        flags: FunctionFlags,
        f: F,
    ) -> Result<()>
    where
        F: Fn(&rusqlite::functions::Context<'_>) -> rusqlite::Result<T> + Send + 'static,
        T: rusqlite::types::ToSql,
    {
        Ok(self.conn.create_scalar_function(name, n_arg, flags, f)?)
    }

    /// Primaries: register the backend's deciding function for sign-ups, logins or new nodes.
    /// It runs on a worker thread with the request (data, node_info JSON, public key) and
    /// answers with a [`crate::auth::Decision`]; `Decision::Pending` leaves the request to a
    /// later `PRAGMA authorize_user` / `authorize_node`.
    pub fn set_auth_callback(
        &self,
        action: crate::auth::Action,
        f: impl Fn(&crate::auth::AuthRequest) -> crate::auth::Decision + Send + Sync + 'static,
    ) -> Result<()> {
        self.node(action.as_str())?
            .set_auth_callback(action, Arc::new(f))
    }

    /// The id of the last row inserted by this connection, after the engine gave it its
    /// collision-free id.
    pub fn last_insert_rowid(&self) -> i64 {
        match self.repl {
            Some(_) => self.last_rowid.load(Ordering::Relaxed),
            None => self.conn.last_insert_rowid(),
        }
    }

    /// How long a statement waits for another connection's lock before failing with
    /// "database is locked". A node's connections wait 60 s unless told otherwise: the
    /// engine's writer holds the lock while it applies what other nodes sent.
    pub fn set_busy_timeout(&self, wait: Duration) -> Result<()> {
        Ok(self.conn.busy_timeout(local::sqlite_wait(wait))?)
    }

    /// Rows changed by the last statement.
    pub fn changes(&self) -> u64 {
        match self.repl {
            Some(_) => self.last_changes.load(Ordering::Relaxed) as u64,
            None => self.conn.changes(),
        }
    }

    /// Whether no transaction is open on this connection.
    pub fn is_autocommit(&self) -> bool {
        self.conn.is_autocommit()
    }

    /// Whether this connection replicates the rows of `table` (in the main schema): its
    /// changes are captured and sent when their transaction commits through this API. A write
    /// through a blob handle to such a table must be made inside a transaction, else SQLite
    /// commits it on its own and it is not sent.
    pub fn replicates_table(&self, table: &str) -> bool {
        self.repl
            .as_ref()
            .is_some_and(|r| r.capture.captures(table))
    }

    /// On a plain connection to a copy of a primary's file made by other means than
    /// [`crate::backup`] (SQLite's backup API, `VACUUM INTO`, a copy of its files): marks the
    /// copy as `backup` marks its own: a member of a cluster of several rejoins its cluster
    /// as a new member once restored, a primary alone reserves the ids it may hand out after
    /// the copy ([`crate::RestoreMark`]). Refused on a node's own connection: the mark is for
    /// copies.
    pub fn mark_as_restored_copy(&self) -> Result<crate::RestoreMark> {
        if self.node.is_some() {
            return Err(Error::rule(
                "only a copy of a primary's file is marked as restored, on a plain connection \
                 to it; this connection is a running node's",
            ));
        }
        crate::cluster::mark_restored_copy(&self.conn)
    }

    /// Devices: the id of the transaction this connection committed last that the primaries
    /// will decide (one that changed replicated rows), as the `TransactionAccepted` /
    /// `TransactionRejected` events and `last_rejected` name it; `None` before any. An app
    /// that must know whether a write got in notes it after the commit and watches for it.
    pub fn last_txn_id(&self) -> Option<u64> {
        self.last_txn.get()
    }

    /// The node's state (`PRAGMA sync_status`): ready, connected, caught up, synced, its
    /// outbox, its last rejection, its authorization, its errors; a plain database's says
    /// "local", always in sync.
    pub fn sync_status(&self) -> Result<SyncStatus> {
        match &self.node {
            Some(node) => node.sync_status(),
            None => Ok(local::status()),
        }
    }

    /// The nodes a primary knows (none on a plain local database).
    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        match &self.node {
            Some(node) => node.nodes(),
            None => Ok(Vec::new()),
        }
    }

    /// A device's events from now on (ready, data received, transaction rejected, ...): what
    /// happens to this node's sync. A primary sends none (its devices' rows are in the change
    /// feed, [`Connection::changes_after`]); a plain local database has none.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        match &self.node {
            Some(node) => node.subscribe(),
            None => {
                // A sender that lives forever: receivers wait quietly instead of seeing "closed".
                static NONE: OnceLock<tokio::sync::broadcast::Sender<Event>> = OnceLock::new();
                NONE.get_or_init(|| tokio::sync::broadcast::channel(1).0)
                    .subscribe()
            }
        }
    }

    /// The addresses a primary listens on (the real port when the URI asked for port 0).
    pub fn bound_addrs(&self) -> Vec<SocketAddr> {
        self.node
            .as_ref()
            .map_or_else(Vec::new, |n| n.bound_addrs())
    }

    /// Primary or secondary; None for a plain local database.
    pub fn role(&self) -> Option<Role> {
        self.node.as_ref().and_then(|n| n.role())
    }

    /// This node's public key (hex), as peers and `PRAGMA nodes` show it; empty on a plain
    /// local database, which has no key.
    pub fn public_key(&self) -> String {
        self.node
            .as_ref()
            .map_or_else(String::new, |n| n.public_key().to_hex())
    }

    /// The change feed's position (see [`crate::feed`]): on a primary, the last log position
    /// the cluster committed; on a device, the last one applied here; 0 on a plain database.
    pub fn feed_position(&self) -> u64 {
        self.node.as_ref().map_or(0, |n| *n.shared.feed.borrow())
    }

    /// Waits until the feed's position passes `after`, at most `timeout`; returns the
    /// position then. It blocks its thread (from async code, call it in `spawn_blocking`).
    pub fn wait_feed(&self, after: u64, timeout: Duration) -> u64 {
        self.feed_watcher().wait(after, timeout)
    }

    /// The feed's position, to read and wait on from any thread without this connection
    /// (which one thread at a time uses).
    pub fn feed_watcher(&self) -> FeedWatcher {
        FeedWatcher(self.node.as_ref().map(|n| n.shared.feed.subscribe()))
    }

    /// Primaries: the rows changed by the log entries after `after`, up to the feed's
    /// position, reading at most `max_entries` entries (see [`crate::feed`]).
    pub fn changes_after(&self, after: u64, max_entries: usize) -> Result<crate::feed::FeedBatch> {
        let node = match &self.node {
            Some(node) if node.role() == Some(Role::Primary) => node,
            // (Not a broken rule: a call this kind of node does not offer.)
            _ => {
                return Err(Error::NotPermitted(
                    "the change feed's rows are kept on primaries only: open the primary's \
                     database to read them (a device can wait on `wait_feed`)"
                        .into(),
                ))
            }
        };
        let position = *node.shared.feed.borrow();
        node.shared
            .read_blocking(|c| super::feed::read(c, after, position, max_entries))
    }

    /// The SQLite handle, for drivers that call SQLite directly (the Python module).
    ///
    /// # Safety
    /// The pointer is valid while this `Connection` lives. The caller must not close it, must
    /// finalize every statement it prepares on it before this `Connection` is dropped, and
    /// must not use it from two threads at once (it is opened without SQLite's own mutex).
    pub unsafe fn handle(&self) -> *mut rusqlite::ffi::sqlite3 {
        // SAFETY: rusqlite hands out its handle; the caller takes on the duties documented above.
        unsafe { self.conn.handle() }
    }

    /// A handle that stops this connection's running statement from another thread (it then
    /// fails with "interrupted"), as the shell's Ctrl-C does; nothing when none runs.
    pub fn interrupt_handle(&self) -> rusqlite::InterruptHandle {
        self.conn.get_interrupt_handle()
    }

    /// Wait until `db_is_ready` (authorized and initial download done), at most `timeout`.
    /// Ends at once, with the reason, when the backend refuses the device.
    pub fn wait_until_ready(&self, timeout: Duration) -> Result<SyncStatus> {
        self.wait_unless_refused(timeout, |s| s.db_is_ready, crate::node::not_ready_within)
    }

    /// Wait until `synced` (a device: ready, caught up with its primary in this connection,
    /// every write of its own decided), at most `timeout`. Primaries and local databases are
    /// in sync at once. Ends at once, with the reason, when the backend refuses the device.
    pub fn wait_until_synced(&self, timeout: Duration) -> Result<SyncStatus> {
        self.wait_unless_refused(timeout, |s| s.synced, crate::node::not_synced_within)
    }

    /// Wait until `reached`, unless the backend refuses the device first (no wait helps
    /// then); a timeout says why in the words of `timed_out`.
    fn wait_unless_refused(
        &self,
        timeout: Duration,
        reached: impl Fn(&SyncStatus) -> bool,
        timed_out: fn(Option<&SyncStatus>, Duration) -> String,
    ) -> Result<SyncStatus> {
        let status = self
            .wait_for(timeout, |s| reached(s) || s.refused().is_some())
            .map_err(|e| match e {
                Error::Timeout(_) => {
                    Error::Timeout(timed_out(self.sync_status().ok().as_ref(), timeout))
                }
                other => other,
            })?;
        match status.refused() {
            Some(why) if !reached(&status) => Err(Error::Refused(why)),
            _ => Ok(status),
        }
    }

    /// Wait, woken by the node's events, until `cond` holds for the sync status.
    pub fn wait_for(
        &self,
        timeout: Duration,
        cond: impl Fn(&SyncStatus) -> bool,
    ) -> Result<SyncStatus> {
        let mut events = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        crate::node::block_on(async {
            loop {
                let status = self.sync_status()?;
                if cond(&status) {
                    return Ok(status);
                }
                // Status also changes without an event (a commit elsewhere); re-check often.
                let tick = tokio::time::Instant::now() + Duration::from_millis(50);
                match tokio::time::timeout_at(tick.min(deadline), events.recv()).await {
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        return Err(Error::Timeout(format!(
                            "the condition was not reached within {timeout:?}; last status: {}",
                            serde_json::to_string(&status).unwrap_or_default()
                        )))
                    }
                    _ => {}
                }
            }
        })
    }

    /// The heart of the connection: run one statement, phase by phase (see `driver`).
    fn run<P: Params>(&self, sql: &str, params: P) -> Result<Outcome> {
        if let Some(rows) = self.answer_pragma(sql)? {
            return Ok(Outcome {
                rows: Some(rows),
                changes: 0,
            });
        }
        let prepared = self.before_prepare(sql)?;
        let (mut cached, mut fresh);
        let stmt: &mut rusqlite::Statement<'_> = if prepared.fresh() {
            fresh = self.conn.prepare(sql).map_err(|e| self.sql_error(e))?;
            &mut fresh
        } else {
            cached = self
                .conn
                .prepare_cached(sql)
                .map_err(|e| self.sql_error(e))?;
            &mut cached
        };
        let started = self.before_step(prepared, sql, stmt.readonly())?;
        let mut result = execute_statement(stmt, params).map_err(|e| self.sql_error(e));
        if let Ok(Outcome {
            rows: Some(rows), ..
        }) = &mut result
        {
            self.correct_returned_ids(|| column_origins(stmt), &mut rows.rows);
        }
        let changes = result.as_ref().map(|out| out.changes).map_err(|_| ());
        self.after_steps(started, changes)?;
        result
    }

    /// Remember `changes()` and the final id of the last insert for the user's functions, as
    /// SQLite would: a statement that is not an INSERT, UPDATE or DELETE leaves both; one that
    /// inserted nothing leaves the id. `raw_before`: SQLite's figure before the statement ran
    /// (it may come from the engine's bookkeeping inserts at the last commit).
    fn note_counters(&self, dml: Dml, changes: u64, raw_before: i64) {
        if dml == Dml::None {
            return;
        }
        self.last_changes.store(changes as i64, Ordering::Relaxed);
        let raw = self.conn.last_insert_rowid();
        // A row of a replicated table inserted by this statement: the id it ended with.
        if let Some(id) = self
            .repl
            .as_ref()
            .and_then(|r| r.capture.remapped_rowid(raw))
        {
            self.last_rowid.store(id, Ordering::Relaxed);
            return;
        }
        // SQLite may give the same id again after a rollback: an INSERT that inserted
        // reports it even when it equals the figure before.
        if raw != raw_before || (dml == Dml::Inserts && changes > 0) {
            self.last_rowid.store(raw, Ordering::Relaxed);
        }
    }

    /// Once no transaction is open: tell the node what was committed, or forget it.
    /// Errs only when a transaction committed here and its cluster did not confirm it.
    fn after_statement(&self, committed: bool) -> Result<()> {
        if !self.conn.is_autocommit() {
            return Ok(());
        }
        if !committed {
            self.rolled_back();
        }
        self.installed_in_txn.set(false);
        self.schema_fixed.set(false);
        self.turn.idle();
        if let Some(r) = &self.repl {
            r.capture.forget();
        }
        let txn = self.open_txn.take();
        self.local_rows_in_txn.set(false);
        {
            let mut a = authz::lock(&self.authz);
            if !a.direct_writes.is_empty() {
                a.direct_writes.clear();
            }
        }
        let entries = self.committed.take();
        let outbox = self.outbox_added.take();
        if let (true, Some(t), Some(_)) = (committed, txn, &outbox) {
            self.last_txn.set(Some(t));
        }
        let from_file = self.rolled_back_within.replace(false);
        // Its Raft entry was written with it: announced once the cluster commits it.
        let announced = self.settle_in_flight(committed)?;
        if !committed || announced {
            return Ok(());
        }
        let Some(node) = &self.node else {
            return Ok(());
        };
        if !entries.is_empty() && node.shared.cluster.get().is_some() {
            if from_file {
                tracing::warn!(
                    "a transaction committed by a RELEASE after a ROLLBACK TO gets no Raft \
                     entry: other primaries would not receive it"
                );
            } else if self.propose_committed(entries.clone()) {
                return Ok(());
            }
        }
        if from_file {
            if !entries.is_empty() {
                match log::last_seq(&self.conn) {
                    Ok(seq) => node.committed_in_file(seq),
                    Err(e) => tracing::warn!("cannot read the log position: {e}"),
                }
            }
            if outbox.is_some() {
                node.outbox_changed();
            }
            return Ok(());
        }
        if !entries.is_empty() {
            node.committed_local(entries);
        }
        if let (Some(txn), Some(changes)) = (txn, outbox) {
            node.outbox_committed(txn, changes);
        }
        Ok(())
    }

    /// A primary replicates its schema statements, and records the renames one made (against
    /// the tables before it, `shapes_before`); every node re-reads the table layouts.
    fn after_schema_change(
        &self,
        sql: &str,
        private: bool,
        shapes_before: Option<store::renames::Shapes>,
    ) -> Result<()> {
        if let Some(r) = &self.repl {
            if r.role == Role::Primary {
                self.internal(|| r.capture.record_ddl(&self.conn, sql.trim(), private))?;
                if let Some(before) = shapes_before {
                    self.internal(|| store::renames::record(&self.conn, before))?;
                }
            }
        }
        self.schema_version.set(-1);
        self.schema_fixed.set(false);
        self.refresh_schema()
    }

    /// Move what the open transaction captured into the log (primary) or outbox (device).
    fn flush(&self) -> Result<()> {
        let Some(r) = &self.repl else { return Ok(()) };
        self.internal(|| {
            let captured = r.capture.take(&self.conn)?;
            if captured.is_empty() {
                return Ok(());
            }
            let identity = self.node("replication")?.identity();
            match r.role {
                Role::Primary => {
                    if self.leader_followed() && store::capture::any_local(&captured) {
                        self.local_rows_in_txn.set(true);
                    }
                    if let Some(entry) =
                        log::append_local(&self.conn, identity.node_id(), captured)?
                    {
                        self.committed.borrow_mut().push(entry);
                    }
                }
                Role::Secondary => {
                    let txn = match self.open_txn.get() {
                        Some(t) => t,
                        None => outbox::new_txn_id(&self.conn, identity)?,
                    };
                    self.open_txn.set(Some(txn));
                    let mut added = self.outbox_added.borrow_mut();
                    let changes = added.get_or_insert_with(Default::default);
                    if !outbox::append(&self.conn, txn, captured, changes)? && changes.is_empty() {
                        *added = None;
                    }
                }
            }
            store::reserve_ids(&self.conn, store::ROW_SEQ_KEY, identity.next_row_seq() - 1)?;
            Ok(())
        })
    }

    /// Run `f` with the authorizer letting the engine's own statements through.
    fn internal<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        authz::lock(&self.authz).internal = true;
        let out = f();
        authz::lock(&self.authz).internal = false;
        out
    }

    fn internal_sql(&self, sql: &str) -> Result<()> {
        self.internal(|| Ok(store::exec(&self.conn, sql)?))
    }

    /// Turn SQLite's bare "not authorized" into the rule that refused the statement, and a
    /// replication rule a trigger enforces (its message begins "octodb: ") into
    /// [`Error::Rule`], as the rules the engine checks itself are.
    fn sql_error(&self, e: rusqlite::Error) -> Error {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::AuthorizationForStatementDenied) {
            if let Some(reason) = authz::lock(&self.authz).denied.take() {
                return Error::Rule(reason);
            }
        }
        if let rusqlite::Error::SqliteFailure(_, Some(msg)) = &e {
            if let Some(rule) = msg.strip_prefix(store::schema::RULE_PREFIX) {
                return Error::Rule(rule.to_string());
            }
        }
        Error::Sqlite(e)
    }
}

/// Replace SQLite's `last_insert_rowid()` and `changes()` so that SQL sees the same figures as
/// the API, not those of the engine's bookkeeping statements.
fn override_counters(
    conn: &rusqlite::Connection,
    rowid: &Arc<AtomicI64>,
    changes: &Arc<AtomicI64>,
) -> Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8;
    let r = rowid.clone();
    conn.create_scalar_function("last_insert_rowid", 0, flags, move |_| {
        Ok(r.load(Ordering::Relaxed))
    })?;
    let c = changes.clone();
    conn.create_scalar_function("changes", 0, flags, move |_| Ok(c.load(Ordering::Relaxed)))?;
    Ok(())
}

fn execute_statement<P: Params>(
    stmt: &mut rusqlite::Statement<'_>,
    params: P,
) -> rusqlite::Result<Outcome> {
    if stmt.column_count() == 0 {
        let changes = stmt.execute(params)? as u64;
        return Ok(Outcome {
            rows: None,
            changes,
        });
    }
    let columns: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let n = columns.len();
    let mut out = Vec::new();
    let mut rows = stmt.query(params)?;
    while let Some(r) = rows.next()? {
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            vals.push(Value::from_ref(r.get_ref(i)?));
        }
        out.push(vals);
    }
    drop(rows);
    // A statement with results may also write (INSERT ... RETURNING).
    let changes = if stmt.readonly() { 0 } else { out.len() as u64 };
    Ok(Outcome {
        rows: Some(Rows { columns, rows: out }),
        changes,
    })
}

/// Where each of `stmt`'s result columns comes from (see `Connection::correct_returned_ids`).
fn column_origins(stmt: &rusqlite::Statement<'_>) -> Vec<Option<ColumnOrigin>> {
    (0..stmt.column_count())
        .map(|i| {
            let (database, table, column, ..) = stmt.column_metadata(i).ok().flatten()?;
            Some(ColumnOrigin {
                database: database.to_str().ok()?.to_string(),
                table: table.to_str().ok()?.to_string(),
                column: column.to_str().ok()?.to_string(),
            })
        })
        .collect()
}

/// A statement prepared on a connection, run as many times as needed.
pub struct Statement<'c> {
    conn: &'c Connection,
    sql: String,
    columns: Vec<String>,
    parameters: usize,
}

impl Statement<'_> {
    /// Run it with `params`; returns how many rows it changed (as [`Connection::execute`]).
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }
    /// Run it with `params` and read its rows (as [`Connection::query`]).
    pub fn query<P: Params>(&mut self, params: P) -> Result<Rows> {
        self.conn.query(&self.sql, params)
    }
    /// The names of the columns it returns, in order.
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(String::as_str).collect()
    }
    /// How many parameters the statement takes (`?`, `?N`, `:name`, `@name`, `$name`).
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }
    /// How many columns it returns.
    pub fn column_count(&self) -> usize {
        self.columns.len()
    }
}

/// An open transaction; rolled back when dropped without [`Transaction::commit`].
pub struct Transaction<'c> {
    conn: &'c Connection,
    done: bool,
}

impl Transaction<'_> {
    /// Commit it: on a device, the transaction then waits in the outbox for the primaries'
    /// decision (`last_txn_id`, the `TransactionAccepted` / `TransactionRejected` events).
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.conn.execute("COMMIT", []).map(drop)
    }
    /// Roll it back: nothing of it is kept or sent.
    pub fn rollback(mut self) -> Result<()> {
        self.done = true;
        self.conn.execute("ROLLBACK", []).map(drop)
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done && !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute("ROLLBACK", []) {
                tracing::warn!("rolling back a dropped transaction failed: {e}");
            }
        }
    }
}

/// The change feed's position of a node, apart from any connection ([`Connection::feed_watcher`]).
#[derive(Clone)]
pub struct FeedWatcher(Option<tokio::sync::watch::Receiver<u64>>);

impl FeedWatcher {
    /// As [`Connection::feed_position`].
    pub fn position(&self) -> u64 {
        self.0.as_ref().map_or(0, |feed| *feed.borrow())
    }

    /// As [`Connection::wait_feed`].
    pub fn wait(&self, after: u64, timeout: Duration) -> u64 {
        let Some(feed) = &self.0 else {
            return 0;
        };
        let mut feed = feed.clone();
        crate::node::block_on(async {
            let passed = tokio::time::timeout(timeout, feed.wait_for(|seq| *seq > after))
                .await
                .ok()
                .and_then(|waited| waited.ok().map(|seq| *seq));
            // Timed out, or the node stopped: where it stands.
            passed.unwrap_or_else(|| *feed.borrow())
        })
    }
}
