//! Capture of a user's transaction. SQLite's preupdate hook reports every row a statement is
//! about to change in a replicated table; the connection keeps one change per row (the row as
//! the transaction found it and as it is now) in memory, in first-touch order, and hands them
//! over when the transaction commits.
//!
//! A hook is not told when SQLite takes changes back: a failing statement undoes its rows, and
//! so does `ROLLBACK TO`. The connection's driver sees both and says so
//! ([`Capture::statement_failed`], [`Capture::rolled_back_to`]); a transaction in which either
//! happened reads each touched row back from its table at commit (as SQLite's session extension
//! does), so an undone change drops out by itself. Any other transaction takes the hook's copies
//! as they are, reading nothing back.
//!
//! Schema statements (a primary replicates them) stand between the rows: a row touched after
//! one is a new change. Each leaves a mark in a TEMP table, which SQLite undoes with it, so the
//! commit knows whether it still stands.

use super::returned_ids::MovedId;
use super::schema::{self, TableLayout};
use crate::changes::{ChangeSet, Op};
use crate::error::{Error, Result};
use crate::uri::Role;
use crate::value::{Owner, Value};
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::hooks::PreUpdateCase;
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Who this node is, shared by all its connections. Changes when a device is authorized.
#[derive(Debug)]
pub struct Identity {
    pub role: Option<Role>,
    node_id: AtomicU32,
    user_id: AtomicI64,
    /// Next per-node sequence for row ids (the low 32 bits).
    next_row_seq: AtomicI64,
    /// Next id of a device's outbox transaction.
    next_txn_id: AtomicU64,
    /// No outbox transaction id from this one on was sent before this run of the node
    /// (see `outbox::note_run_start`).
    unsent_txn_from: u64,
}

impl Identity {
    /// `next_row_seq` and `next_txn_id`: above every id the file may have handed out.
    pub fn new(
        role: Option<Role>,
        node_id: u32,
        user_id: i64,
        next_row_seq: i64,
        next_txn_id: u64,
    ) -> Identity {
        Identity {
            role,
            node_id: AtomicU32::new(node_id),
            user_id: AtomicI64::new(user_id),
            next_row_seq: AtomicI64::new(next_row_seq.max(1)),
            next_txn_id: AtomicU64::new(next_txn_id.max(1)),
            unsent_txn_from: next_txn_id.max(1),
        }
    }

    /// With the first outbox transaction id that no earlier run of the node sent.
    pub fn with_unsent_txn_from(mut self, id: u64) -> Identity {
        self.unsent_txn_from = id.max(1);
        self
    }
    pub fn node_id(&self) -> u32 {
        self.node_id.load(Ordering::Acquire)
    }
    /// The user id of this device, 0 when none (primaries, unauthorized devices).
    pub fn user_id(&self) -> i64 {
        self.user_id.load(Ordering::Acquire)
    }
    pub fn set_authorized(&self, node_id: u32, user_id: i64) {
        self.node_id.store(node_id, Ordering::Release);
        self.user_id.store(user_id, Ordering::Release);
    }
    pub fn next_row_seq(&self) -> i64 {
        self.next_row_seq.load(Ordering::Acquire)
    }
    /// A new outbox transaction id. Taken inside the write transaction that uses it: SQLite's
    /// write lock makes ids increase in commit order (one taken by a transaction that rolls
    /// back is skipped, which the primaries allow).
    pub fn alloc_txn_id(&self) -> u64 {
        self.next_txn_id.fetch_add(1, Ordering::AcqRel)
    }
    pub fn next_txn_id(&self) -> u64 {
        self.next_txn_id.load(Ordering::Acquire)
    }
    pub fn unsent_txn_from(&self) -> u64 {
        self.unsent_txn_from
    }
    /// The app gave a row id `id` itself: one in this node's range is never handed out after.
    fn note_given_id(&self, id: i64) {
        let node = self.node_id();
        if node != 0 && id >> 32 == node as i64 {
            self.next_row_seq
                .fetch_max((id & 0xFFFF_FFFF) + 1, Ordering::AcqRel);
        }
    }

    fn alloc_row_id(&self) -> i64 {
        let seq = self.next_row_seq.fetch_add(1, Ordering::AcqRel) & 0xFFFF_FFFF;
        ((self.node_id() as i64) << 32) | seq
    }

    /// The id for a row SQLite numbered `picked` itself: `picked` when it already lies in this
    /// node's range above every id handed out so far (SQLite picks one more than the largest id,
    /// so a node that is the latest to insert keeps its rows where SQLite put them and nothing
    /// has to move), else a newly allocated one.
    fn row_id_for(&self, picked: i64) -> i64 {
        if picked >> 32 == self.node_id() as i64 {
            let seq = picked & 0xFFFF_FFFF;
            // Writers are serialized by SQLite's write lock; the atomic keeps this exact anyway.
            if self.next_row_seq.fetch_max(seq + 1, Ordering::AcqRel) <= seq {
                return picked;
            }
        }
        self.alloc_row_id()
    }
}

/// Per-connection state of the capture.
#[derive(Debug, Default)]
struct State {
    /// Every layout the connection has known, by layout id (ids stay valid for its life).
    layouts: Vec<Arc<TableLayout>>,
    /// The current layout id of each replicated table: what the hook looks a table up in, for
    /// every row a statement changes (foldhash: names from this node's own schema).
    tables: HashMap<String, usize, foldhash::fast::RandomState>,
    /// Per layout id: the row being inserted into that table now, or last.
    inserting: Vec<Inserting>,
    /// The rows the running statement inserted whose id the engine moved, in insert order.
    moved: Vec<MovedId>,
    /// The statement running now: schema statements are marked with it.
    statement: i64,
    /// What the open transaction changed so far.
    changes: Changes,
    /// A statement failed or a `ROLLBACK TO` ran in the open transaction: some of `changes`
    /// may have been undone, so the commit reads the touched rows back.
    undone: bool,
    /// Why the open transaction cannot be captured, once the hook found out.
    broken: Option<String>,
}

/// What the triggers know of the row being inserted into one table. SQLite runs a row's
/// BEFORE INSERT triggers, inserts it, then runs its AFTER INSERT triggers, before the next
/// row: the BEFORE trigger starts the note, the AFTER trigger reads it.
#[derive(Debug, Default, Clone, Copy)]
struct Inserting {
    /// The INSERT gave no id: SQLite picks it.
    auto: bool,
    /// The id SQLite gave the row (`.0`) and the one it ends with (`.1`), once decided.
    decided: Option<(i64, i64)>,
}

/// The open transaction's changes, one per row and schema statement, in first-touch order.
#[derive(Debug, Default)]
struct Changes {
    items: Vec<Item>,
    /// (layout id, rowid) -> its change in `items`, since the last schema statement. A layout
    /// id names one table's layout for the life of the connection.
    /// Hashed with foldhash: one lookup per changed row, keys from this node's own app.
    index: HashMap<(usize, i64), usize, foldhash::fast::RandomState>,
}

#[derive(Debug)]
enum Item {
    Row {
        change: RowChange,
        /// A later change of the same row follows (see [`Changes::insert`]): this one keeps
        /// its end state when the rows are read back.
        superseded: bool,
    },
    Ddl {
        statement: i64,
        sql: String,
        private: bool,
    },
}

/// `changed` of a row inserted (or deleted and inserted again) in the transaction: every
/// column is sent.
const WHOLE_ROW: u64 = u64::MAX;

/// Why a row could not be read in the hook; the transaction's commit fails with it.
type HookError = String;

impl Changes {
    fn get_mut(&mut self, key: (usize, i64)) -> Option<&mut RowChange> {
        let i = *self.index.get(&key)?;
        match &mut self.items[i] {
            Item::Row { change, .. } => Some(change),
            Item::Ddl { .. } => None,
        }
    }

    fn push(&mut self, key: (usize, i64), change: RowChange) {
        self.index.insert(key, self.items.len());
        self.items.push(Item::Row {
            change,
            superseded: false,
        });
    }

    fn insert(&mut self, layout_id: usize, layout: Arc<TableLayout>, rowid: i64, row: Vec<Value>) {
        let key = (layout_id, rowid);
        let owner_of = |r: &Vec<Value>| layout.owner.and_then(|o| r.get(o)).map(Owner::of);
        if let Some(&i) = self.index.get(&key) {
            if let Item::Row { change, superseded } = &mut self.items[i] {
                // Deleted, then inserted again under another owner (what REPLACE does): the
                // delete must reach the old owner's nodes, so the two stay two changes.
                let owner_moves = change.after.is_none()
                    && change.before.as_ref().map(owner_of) != Some(owner_of(&row));
                if !owner_moves {
                    change.after = Some(row);
                    change.changed = WHOLE_ROW;
                    change.layout = layout;
                    return;
                }
                *superseded = true;
            }
        }
        self.push(
            key,
            RowChange {
                layout,
                rowid,
                before: None,
                after: Some(row),
                changed: WHOLE_ROW,
            },
        );
    }

    /// `after`: the row's new state (None: deleted); `before`: reads the row as it is now,
    /// called only when the transaction has not touched it yet.
    fn change(
        &mut self,
        layout_id: usize,
        layout: Arc<TableLayout>,
        rowid: i64,
        before: impl FnOnce() -> std::result::Result<Vec<Value>, HookError>,
        after: Option<Vec<Value>>,
    ) -> std::result::Result<(), HookError> {
        let key = (layout_id, rowid);
        if let Some(change) = self.get_mut(key) {
            change.after = after;
            change.layout = layout;
            return Ok(());
        }
        let before = Some(before()?);
        self.push(
            key,
            RowChange {
                layout,
                rowid,
                before,
                after,
                changed: 0,
            },
        );
        Ok(())
    }

    /// A schema statement: rows touched after it are new changes.
    fn barrier(&mut self, item: Item) {
        self.index.clear();
        self.items.push(item);
    }
}

/// Read the row the hook shows through `column` (the new or the old row) in `layout`'s
/// column order.
fn hook_row<'a>(
    layout: &TableLayout,
    count: i32,
    column: impl Fn(i32) -> rusqlite::Result<ValueRef<'a>>,
) -> std::result::Result<Vec<Value>, HookError> {
    if layout.virtual_columns {
        return Err(format!(
            "octodb: table `{}` has a VIRTUAL generated column, which this build cannot \
             replicate (SQLite 3.46's preupdate hook reads such rows wrongly): declare the \
             column STORED",
            layout.name
        ));
    }
    if count != layout.width {
        return Err(format!(
            "octodb: table `{}` changed its columns during the transaction; run it again",
            layout.name
        ));
    }
    layout
        .hook_index
        .iter()
        .map(|&i| column(i).map(Value::from_ref))
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| {
            format!(
                "octodb: cannot read a changed row of `{}`: {e}",
                layout.name
            )
        })
}

impl State {
    /// The preupdate hook: a statement (or a blob handle, see [`HookDb`]) is about to change a
    /// row of `table`.
    fn on_change(&mut self, db: &str, table: &str, case: &PreUpdateCase, hook_db: &HookDb) {
        if db != "main" || self.broken.is_some() {
            return;
        }
        let Some(&layout_id) = self.tables.get(table) else {
            return;
        };
        let layout = self.layouts[layout_id].clone();
        let result = match case {
            PreUpdateCase::Delete(old) if hook_db.blob_write_column() >= 0 => {
                self.record_blob_write(layout_id, layout, old)
            }
            _ => self.record(layout_id, layout, case),
        };
        if let Err(why) = result {
            self.broken = Some(why);
        }
    }

    /// A write through a blob handle (`sqlite3_blob_write`), which SQLite reports to the hook
    /// as a delete of the row, with no new values: the row is noted as changed and read back
    /// at the commit, as rows a rollback may have undone are.
    fn record_blob_write(
        &mut self,
        layout_id: usize,
        layout: Arc<TableLayout>,
        old: &rusqlite::hooks::PreUpdateOldValueAccessor,
    ) -> std::result::Result<(), HookError> {
        let row = hook_row(&layout, old.get_column_count(), |i| {
            old.get_old_column_value(i)
        })?;
        let before = row.clone();
        self.changes.change(
            layout_id,
            layout,
            old.get_old_row_id(),
            || Ok(before),
            Some(row),
        )?;
        self.undone = true;
        Ok(())
    }

    fn record(
        &mut self,
        layout_id: usize,
        layout: Arc<TableLayout>,
        case: &PreUpdateCase,
    ) -> std::result::Result<(), HookError> {
        match case {
            PreUpdateCase::Insert(new) => {
                let row = hook_row(&layout, new.get_column_count(), |i| {
                    new.get_new_column_value(i)
                })?;
                self.changes
                    .insert(layout_id, layout, new.get_new_row_id(), row);
            }
            PreUpdateCase::Update {
                old_value_accessor: old,
                new_value_accessor: new,
            } => {
                let before = || {
                    hook_row(&layout, old.get_column_count(), |i| {
                        old.get_old_column_value(i)
                    })
                };
                let row = hook_row(&layout, new.get_column_count(), |i| {
                    new.get_new_column_value(i)
                })?;
                let (from, to) = (old.get_old_row_id(), new.get_new_row_id());
                if from == to {
                    self.changes
                        .change(layout_id, layout.clone(), to, before, Some(row))?;
                } else {
                    // A row moved to its final id (the one change of an id the rules allow).
                    self.changes
                        .change(layout_id, layout.clone(), from, before, None)?;
                    self.changes.insert(layout_id, layout.clone(), to, row);
                }
            }
            PreUpdateCase::Delete(old) => {
                let before = || {
                    hook_row(&layout, old.get_column_count(), |i| {
                        old.get_old_column_value(i)
                    })
                };
                self.changes.change(
                    layout_id,
                    layout.clone(),
                    old.get_old_row_id(),
                    before,
                    None,
                )?;
            }
            PreUpdateCase::Unknown => {
                return Err(format!(
                    "octodb: SQLite reported a change of `{}` of a kind this build does not know",
                    layout.name
                ))
            }
        }
        Ok(())
    }
}

/// The handle of the connection a preupdate hook is installed on, to ask SQLite, inside the
/// hook, whether the "delete" it reports is a write through a blob handle
/// (`sqlite3_preupdate_blobwrite`; rusqlite's hook arguments do not say).
struct HookDb(*mut rusqlite::ffi::sqlite3);

// SAFETY: the pointer is only used by `blob_write_column`, which only the preupdate hook of
// that very connection calls. SQLite runs the hook on the thread that is stepping one of the
// connection's statements (holding the connection's mutex), and the hook, with this value,
// is dropped when the connection closes or the hook is replaced, so the pointer is never used
// on another thread concurrently with the connection nor after the connection is gone.
unsafe impl Send for HookDb {}

impl HookDb {
    /// The column a blob handle is writing, or -1 for a real delete.
    fn blob_write_column(&self) -> i32 {
        // SAFETY: called only from inside this connection's preupdate hook (see above), the
        // one place SQLite documents `sqlite3_preupdate_blobwrite` for.
        unsafe { rusqlite::ffi::sqlite3_preupdate_blobwrite(self.0) }
    }
}

/// The capture machinery of one user connection.
#[derive(Clone)]
pub struct Capture {
    identity: Arc<Identity>,
    state: Arc<Mutex<State>>,
}

/// Whether a row with owner `v` is this device's user's or local: the rows a device's app may
/// insert, update and delete. An integer, not a class name: a text result is copied by SQLite
/// at every call, and the device's triggers call this for every row they see.
fn mine_or_local(identity: &Identity, v: ValueRef<'_>) -> bool {
    match Owner::of_ref(v) {
        Owner::Local => true,
        Owner::User(u) => identity.user_id() != 0 && u == identity.user_id(),
        Owner::Global | Owner::Invalid => false,
    }
}

impl Capture {
    pub fn new(identity: Arc<Identity>) -> Capture {
        Capture {
            identity,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state holds no invariant a panic could break halfway; keep going after one.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `this_user()`, `this_node()` and the functions the triggers call.
    pub fn register_functions(&self, conn: &Connection) -> Result<()> {
        register_identity_functions(conn, &self.identity)?;
        let pure = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
        let me = self.clone();
        // Tables are named by their layout id: these run for every inserted row, and a
        // table's name would be a string to copy and hash each time.
        conn.create_scalar_function("octo_insert_begins", 2, pure, move |ctx| {
            me.insert_begins(ctx.get(0)?, ctx.get(1)?);
            Ok(None::<i64>)
        })?;
        let me = self.clone();
        // The id the row being inserted ends with: for an id SQLite picked, one in this node's
        // range (decided at the first call, the same at every later call for that row); else
        // `rowid`. The AFTER INSERT trigger calls it in its WHEN clause and its body.
        conn.create_scalar_function("octo_row_id", 2, pure, move |ctx| {
            let layout_id: usize = ctx.get(0)?;
            let rowid: i64 = ctx.get(1)?;
            Ok(me.row_id(layout_id, rowid))
        })?;
        let me = self.clone();
        // The id the row now inserted with SQLite's id `rowid` moves to, if it moves: the
        // one change of a row's id that the rules allow.
        conn.create_scalar_function("octo_moving_to", 2, pure, move |ctx| {
            let layout_id: usize = ctx.get(0)?;
            let rowid: i64 = ctx.get(1)?;
            let st = me.lock();
            Ok(match st.inserting.get(layout_id).and_then(|i| i.decided) {
                Some((from, to)) if from == rowid && to != rowid => Some(to),
                _ => None,
            })
        })?;
        let id = self.identity.clone();
        conn.create_scalar_function("octo_mine_or_local", 1, pure, move |ctx| {
            Ok(mine_or_local(&id, ctx.get_raw(0)))
        })?;
        let id = self.identity.clone();
        conn.create_scalar_function("octo_owner_change_ok", 2, pure, move |ctx| {
            let (old, new) = (value_arg(ctx, 0), value_arg(ctx, 1));
            Ok(owner_change_ok(&id, &old, &new))
        })?;
        // The mark table is written at every schema statement and emptied at their commit:
        // keep it (and its journal) in memory rather than in a temporary file.
        conn.execute_batch("PRAGMA temp_store=MEMORY")?;
        conn.execute_batch(schema::CAPTURE_TABLE)?;
        Ok(())
    }

    /// Capture the replicated tables of the current schema: (re)create their TEMP triggers
    /// and point the hook at their layouts.
    pub fn install(&self, conn: &Connection, role: Role) -> Result<()> {
        schema::drop_triggers(conn)?;
        let mut sql = String::new();
        let mut st = self.lock();
        let mut tables = HashMap::default();
        for t in schema::user_tables(conn)? {
            if !t.is_replicated() || t.without_rowid {
                continue;
            }
            // A layout that did not change keeps its id: the open transaction's changes of
            // that table stay one per row.
            let id = match st.tables.get(&t.name) {
                Some(&id) if *st.layouts[id] == t => id,
                _ => {
                    st.layouts.push(Arc::new(t.clone()));
                    st.layouts.len() - 1
                }
            };
            sql += &schema::trigger_sql(&t, id, role);
            tables.insert(t.name, id);
        }
        st.tables = tables;
        drop(st);
        conn.execute_batch(&sql)?;
        let state = self.state.clone();
        // SAFETY: `conn.handle()` is the connection the hook is installed on; see `HookDb`.
        let hook_db = HookDb(unsafe { conn.handle() });
        conn.preupdate_hook(Some(
            move |_, db: &str, table: &str, case: &PreUpdateCase| {
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_change(db, table, case, &hook_db)
            },
        ));
        Ok(())
    }

    /// Stop capturing on `conn`: no triggers, no hook.
    pub fn uninstall(&self, conn: &Connection) -> Result<()> {
        schema::drop_triggers(conn)?;
        conn.preupdate_hook(None::<fn(rusqlite::hooks::Action, &str, &str, &PreUpdateCase)>);
        self.lock().tables.clear();
        Ok(())
    }

    /// A new statement begins: forget what the last one noted.
    pub fn begin_statement(&self) {
        let mut st = self.lock();
        st.inserting.clear();
        st.moved.clear();
        st.statement += 1;
    }

    /// The running statement failed: SQLite may have undone some of its changes.
    pub fn statement_failed(&self) {
        self.lock().undone = true;
    }

    /// A `ROLLBACK TO` undid part of the open transaction.
    pub fn rolled_back_to(&self) {
        self.lock().undone = true;
    }

    /// Whether writes to `table` are captured (a replicated table of the schema installed).
    pub fn captures(&self, table: &str) -> bool {
        // SQLite compares table names without regard to ASCII case.
        self.lock()
            .tables
            .keys()
            .any(|t| t.eq_ignore_ascii_case(table))
    }

    /// The transaction ended (committed after `take`, or rolled back): drop what is left.
    pub fn forget(&self) {
        let mut st = self.lock();
        st.changes = Changes::default();
        st.undone = false;
        st.broken = None;
    }

    /// Record a schema statement of the running statement (primaries replicate them).
    pub fn record_ddl(&self, conn: &Connection, sql: &str, private: bool) -> Result<()> {
        let statement = {
            let mut st = self.lock();
            let statement = st.statement;
            st.changes.barrier(Item::Ddl {
                statement,
                sql: sql.to_string(),
                private,
            });
            statement
        };
        conn.prepare_cached(&format!(
            "INSERT OR IGNORE INTO temp.{}(id) VALUES (?1)",
            schema::STATEMENTS_TABLE
        ))?
        .execute([statement])?;
        Ok(())
    }

    /// A row is about to be inserted into the table of `layout_id`; `auto`: SQLite picks its id.
    fn insert_begins(&self, layout_id: usize, auto: bool) {
        let mut st = self.lock();
        if st.inserting.len() <= layout_id {
            st.inserting.resize(layout_id + 1, Inserting::default());
        }
        st.inserting[layout_id] = Inserting {
            auto,
            decided: None,
        };
    }

    /// See `octo_row_id`.
    fn row_id(&self, layout_id: usize, rowid: i64) -> i64 {
        let mut st = self.lock();
        let Some(row) = st.inserting.get_mut(layout_id) else {
            return rowid;
        };
        if let Some((_, to)) = row.decided.filter(|(from, _)| *from == rowid) {
            return to;
        }
        let to = if std::mem::take(&mut row.auto) && self.identity.node_id() != 0 {
            self.identity.row_id_for(rowid)
        } else {
            self.identity.note_given_id(rowid);
            rowid
        };
        row.decided = Some((rowid, to));
        if to != rowid {
            if let Some(layout) = st.layouts.get(layout_id).cloned() {
                st.moved.push(MovedId {
                    layout,
                    from: rowid,
                    to,
                });
            }
        }
        to
    }

    /// The rows the running statement inserted whose id the engine moved, in insert order.
    pub fn moved_ids(&self) -> Vec<MovedId> {
        self.lock().moved.clone()
    }

    /// The id the last statement's row that SQLite gave id `raw` ends with: the last row it
    /// inserted into some table (SQLite's last_insert_rowid names no table; rows inserted by
    /// triggers into other tables keep their own notes).
    pub fn remapped_rowid(&self, raw: i64) -> Option<i64> {
        let st = self.lock();
        st.inserting
            .iter()
            .filter_map(|i| i.decided)
            .find(|(from, _)| *from == raw)
            .map(|(_, to)| to)
    }

    /// Take what the open transaction changed, one change per row (leaving out rows it left
    /// as they were) and schema statement (leaving out those undone).
    pub fn take(&self, conn: &Connection) -> Result<Vec<Captured>> {
        let (items, undone, broken) = {
            let mut st = self.lock();
            let changes = std::mem::take(&mut st.changes);
            (
                changes.items,
                std::mem::take(&mut st.undone),
                st.broken.take(),
            )
        };
        if let Some(why) = broken {
            return Err(Error::rule(why));
        }
        let standing = standing_ddl(conn, &items)?;
        // The read-back statement of each layout, built once (keyed by the shared layout).
        let mut read_sql: HashMap<*const TableLayout, String> = HashMap::new();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Item::Ddl {
                    statement,
                    sql,
                    private,
                } => {
                    if standing.binary_search(&statement).is_ok() {
                        out.push(Captured::Ddl { sql, private });
                    }
                }
                Item::Row {
                    mut change,
                    superseded,
                } => {
                    if undone && !superseded {
                        let sql = read_sql
                            .entry(Arc::as_ptr(&change.layout))
                            .or_insert_with(|| read_back_sql(&change.layout));
                        change.after = read_back(conn, sql, &change.layout, change.rowid)?;
                    }
                    if let Some(change) = change.settled() {
                        out.push(Captured::Row(change));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The ids of the schema statements among `items` that still stand (their marks survived),
/// in order; the marks go.
fn standing_ddl(conn: &Connection, items: &[Item]) -> Result<Vec<i64>> {
    if !items.iter().any(|i| matches!(i, Item::Ddl { .. })) {
        return Ok(Vec::new());
    }
    let standing: Vec<i64> = conn
        .prepare_cached(&format!(
            "SELECT id FROM temp.{} ORDER BY id",
            schema::STATEMENTS_TABLE
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    super::exec(
        conn,
        &format!("DELETE FROM temp.{}", schema::STATEMENTS_TABLE),
    )?;
    Ok(standing)
}

/// The statement reading a row of `layout`'s table in its column order. `main.`: an app's
/// TEMP table of the same name would shadow it.
fn read_back_sql(layout: &TableLayout) -> String {
    let columns: Vec<String> = layout.columns.iter().map(|c| schema::ident(c)).collect();
    format!(
        "SELECT {} FROM main.{} WHERE rowid = ?1",
        columns.join(", "),
        schema::ident(&layout.name)
    )
}

/// Row `rowid` of `layout`'s table as it is now (None: absent); `sql` from [`read_back_sql`].
fn read_back(
    conn: &Connection,
    sql: &str,
    layout: &TableLayout,
    rowid: i64,
) -> Result<Option<Vec<Value>>> {
    let read = || -> rusqlite::Result<Option<Vec<Value>>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let mut rows = stmt.query([rowid])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        (0..layout.columns.len())
            .map(|i| row.get_ref(i).map(Value::from_ref))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map(Some)
    };
    read().map_err(|e| {
        Error::rule(format!(
            "octodb: part of this transaction was undone, and row {rowid} of `{}` cannot be \
             read back to find what stands ({e}); run the transaction again",
            layout.name
        ))
    })
}

/// Register `this_user()` and `this_node()` on `conn`. Every connection on a node's file
/// needs them, the engine's too: the schema may use them (a device's `DEFAULT (this_user())`,
/// a trigger from the primaries), and the engine's writes fire those triggers.
pub fn register_identity_functions(conn: &Connection, identity: &Arc<Identity>) -> Result<()> {
    let (user, node) = (identity.clone(), identity.clone());
    register_functions(
        conn,
        move || {
            let u = user.user_id();
            (u != 0).then_some(u)
        },
        move || i64::from(node.node_id()),
    )
}

/// The same functions on a primary's own engine connections that apply what another primary
/// decided (its Raft state machine; the leader's applier of its followers' transactions): the
/// apps' triggers run again there, and one calling `this_user()` (the guard README shows)
/// failed with "no such function", stopping every follower's state machine for good.
pub fn register_primary_functions(conn: &Connection, node_id: u64) -> Result<()> {
    let node = i64::try_from(node_id).unwrap_or(i64::MAX);
    register_functions(conn, || None, move || node)
}

fn register_functions(
    conn: &Connection,
    user: impl Fn() -> Option<i64> + Send + std::panic::UnwindSafe + 'static,
    node: impl Fn() -> i64 + Send + std::panic::UnwindSafe + 'static,
) -> Result<()> {
    // INNOCUOUS: they are safe inside schema.
    let pure = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("this_user", 0, pure, move |_| Ok(user()))?;
    conn.create_scalar_function("this_node", 0, pure, move |_| Ok(node()))?;
    Ok(())
}

fn value_arg(ctx: &Context<'_>, i: usize) -> Value {
    Value::from_ref(ctx.get_raw(i))
}

fn owner_change_ok(id: &Identity, old: &Value, new: &Value) -> bool {
    let (o, n) = (Owner::of(old), Owner::of(new));
    if o == n {
        return true;
    }
    match (id.role, o, n) {
        (Some(Role::Secondary), Owner::Local, Owner::User(u)) => u == id.user_id(),
        (Some(Role::Secondary), _, _) => false,
        (_, Owner::Local, _) => true,
        (_, Owner::User(_), Owner::Global) => true,
        _ => false,
    }
}

/// What a transaction did, one entry per changed row (in first-touch order) or schema statement.
#[derive(Debug, Clone)]
pub enum Captured {
    Row(RowChange),
    Ddl { sql: String, private: bool },
}

#[derive(Debug, Clone)]
pub struct RowChange {
    pub layout: Arc<TableLayout>,
    pub rowid: i64,
    /// The row before the transaction (None: absent).
    pub before: Option<Vec<Value>>,
    /// The row after the transaction (None: deleted).
    pub after: Option<Vec<Value>>,
    pub changed: u64,
}

/// Whether any of `captured` is a row change that stays local (row_owner NULL before and
/// after, or a row made local): a primary's log leaves those out.
pub fn any_local(captured: &[Captured]) -> bool {
    captured.iter().any(|c| match c {
        Captured::Row(rc) => match (rc.shared(&rc.before), rc.shared(&rc.after)) {
            (false, false) => true,
            (true, false) => rc.after.is_some(),
            _ => false,
        },
        Captured::Ddl { .. } => false,
    })
}

impl RowChange {
    /// The change with its changed columns worked out, or None when the transaction left the
    /// row as it found it.
    fn settled(mut self) -> Option<RowChange> {
        match (&self.before, &self.after) {
            (None, None) => None,
            (Some(before), Some(after)) if self.changed != WHOLE_ROW => {
                self.changed = if before.len() == after.len() {
                    (0..after.len())
                        .filter(|&i| before[i] != after[i])
                        .fold(0, |mask, i| mask | crate::changes::column_bit(i))
                } else {
                    WHOLE_ROW
                };
                (self.changed != 0).then_some(self)
            }
            _ => Some(self),
        }
    }

    fn owner<'a>(&self, row: &'a Option<Vec<Value>>) -> Option<&'a Value> {
        let i = self.layout.owner?;
        row.as_ref().and_then(|r| r.get(i))
    }

    fn shared(&self, row: &Option<Vec<Value>>) -> bool {
        self.owner(row)
            .is_some_and(|v| Owner::of(v) != Owner::Local)
    }

    /// The change as a device sends it, or None when it stays local. Takes the row's values
    /// rather than copying them: they are the bulk of a transaction.
    pub fn into_op(self, cs: &mut ChangeSet) -> Option<Op> {
        let table = cs.table_index(&self.layout.name, &self.layout.columns);
        let rowid = self.rowid;
        match (self.shared(&self.before), self.shared(&self.after)) {
            (false, true) => self.after.map(|values| Op::Insert {
                table,
                rowid,
                values,
            }),
            (true, true) => self.after.map(|values| Op::Update {
                table,
                rowid,
                changed: self.changed,
                values,
            }),
            (true, false) if self.after.is_none() => Some(Op::Delete {
                table,
                rowid,
                owner: self.owner(&self.before).cloned().unwrap_or(Value::Null),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "capture_model.rs"]
mod model;

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: i64 = 7;

    fn id(node: i64, seq: i64) -> i64 {
        (node << 32) | seq
    }

    /// A primary's connection on an in-memory file, capturing table `t`.
    fn capturing() -> (Connection, Capture) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)")
            .unwrap();
        let me = Identity::new(Some(Role::Primary), 0, 0, 1, 1);
        let capture = Capture::new(Arc::new(me));
        capture.register_functions(&conn).unwrap();
        capture.install(&conn, Role::Primary).unwrap();
        (conn, capture)
    }

    /// (rowid, before, after, changed) of each captured row, values as text.
    fn rows(captured: Vec<Captured>) -> Vec<(i64, Option<String>, Option<String>, u64)> {
        let show = |r: Option<Vec<Value>>| r.map(|r| format!("{r:?}"));
        captured
            .into_iter()
            .map(|c| match c {
                Captured::Row(rc) => (rc.rowid, show(rc.before), show(rc.after), rc.changed),
                Captured::Ddl { sql, .. } => panic!("unexpected schema statement {sql}"),
            })
            .collect()
    }

    #[test]
    fn one_change_per_row_from_its_first_state_to_its_last() {
        let (conn, capture) = capturing();
        conn.execute_batch("INSERT INTO t VALUES (1, 'a', '*'), (2, 'b', '*'), (3, 'c', 7)")
            .unwrap();
        capture.forget();
        conn.execute_batch(
            "BEGIN;
             INSERT INTO t VALUES (4, 'new', '*');
             UPDATE t SET v = 'newer' WHERE id = 4;
             UPDATE t SET v = 'A' WHERE id = 1;
             UPDATE t SET v = 'b' WHERE id = 2;
             DELETE FROM t WHERE id = 3;",
        )
        .unwrap();
        let got = rows(capture.take(&conn).unwrap());
        let row = |id: i64, v: &str, owner: Value| {
            Some(format!(
                "{:?}",
                vec![Value::Integer(id), Value::Text(v.into()), owner]
            ))
        };
        let star = || Value::Text("*".into());
        assert_eq!(
            got,
            vec![
                // Inserted then updated: one insert of its last state.
                (4, None, row(4, "newer", star()), WHOLE_ROW),
                (1, row(1, "a", star()), row(1, "A", star()), 0b10),
                // Row 2's update left it as it was: nothing.
                (3, row(3, "c", Value::Integer(7)), None, 0),
            ]
        );
        conn.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_replace_that_moves_a_row_to_another_owner_stays_a_delete_and_an_insert() {
        let (conn, capture) = capturing();
        conn.execute_batch("INSERT INTO t VALUES (1, 'a', 7)")
            .unwrap();
        capture.forget();
        conn.execute_batch("BEGIN; REPLACE INTO t VALUES (1, 'b', 8);")
            .unwrap();
        let got = rows(capture.take(&conn).unwrap());
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0].0, got[0].2.is_none()), (1, true));
        assert_eq!((got[1].0, got[1].1.is_none()), (1, true));
        conn.execute_batch("COMMIT").unwrap();
    }

    /// Writes `bytes` at offset 0 of column `v` of row `rowid` of `t` through a blob handle.
    fn blob_write(conn: &Connection, rowid: i64, bytes: &[u8]) {
        let mut blob: *mut rusqlite::ffi::sqlite3_blob = std::ptr::null_mut();
        // SAFETY: the handle is the open connection's; the names are NUL-terminated; the blob
        // is written within its length and closed before `conn` is used again.
        unsafe {
            let rc = rusqlite::ffi::sqlite3_blob_open(
                conn.handle(),
                c"main".as_ptr(),
                c"t".as_ptr(),
                c"v".as_ptr(),
                rowid,
                1,
                &mut blob,
            );
            assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
            let rc = rusqlite::ffi::sqlite3_blob_write(
                blob,
                bytes.as_ptr().cast(),
                bytes.len() as i32,
                0,
            );
            assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
            assert_eq!(
                rusqlite::ffi::sqlite3_blob_close(blob),
                rusqlite::ffi::SQLITE_OK
            );
        }
    }

    #[test]
    fn a_write_through_a_blob_handle_is_an_update_of_the_row() {
        let (conn, capture) = capturing();
        conn.execute_batch("INSERT INTO t VALUES (1, zeroblob(4), '*')")
            .unwrap();
        capture.forget();
        conn.execute_batch("BEGIN").unwrap();
        blob_write(&conn, 1, b"AB");
        let got = rows(capture.take(&conn).unwrap());
        let row = |v: &[u8]| {
            Some(format!(
                "{:?}",
                vec![
                    Value::Integer(1),
                    Value::Blob(v.to_vec()),
                    Value::Text("*".into())
                ]
            ))
        };
        assert_eq!(
            got,
            vec![(1, row(&[0; 4]), row(b"AB\0\0"), 0b10)],
            "SQLite reports a blob write to the hook as a delete"
        );
        conn.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn what_sqlite_undid_is_read_back_and_drops_out() {
        let (conn, capture) = capturing();
        conn.execute_batch("INSERT INTO t VALUES (1, 'a', '*')")
            .unwrap();
        capture.forget();
        conn.execute_batch(
            "BEGIN;
             SAVEPOINT s;
             INSERT INTO t VALUES (2, 'undone', '*');
             UPDATE t SET v = 'undone' WHERE id = 1;
             ROLLBACK TO s;
             INSERT INTO t VALUES (3, 'kept', '*');",
        )
        .unwrap();
        capture.rolled_back_to();
        let got = rows(capture.take(&conn).unwrap());
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3]);
        conn.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn generated_columns_are_left_out_and_virtual_ones_refused_at_commit() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE s(id INTEGER PRIMARY KEY, g AS (v || '!') STORED, v TEXT, row_owner);
             CREATE TABLE w(id INTEGER PRIMARY KEY, g AS (v || '!') VIRTUAL, v TEXT, row_owner);",
        )
        .unwrap();
        let capture = Capture::new(Arc::new(Identity::new(Some(Role::Primary), 0, 0, 1, 1)));
        capture.register_functions(&conn).unwrap();
        capture.install(&conn, Role::Primary).unwrap();
        conn.execute_batch("BEGIN; INSERT INTO s(id, v, row_owner) VALUES (1, 'x', '*');")
            .unwrap();
        let got = rows(capture.take(&conn).unwrap());
        let want = vec![
            Value::Integer(1),
            Value::Text("x".into()),
            Value::Text("*".into()),
        ];
        assert_eq!(got, vec![(1, None, Some(format!("{want:?}")), WHOLE_ROW)]);
        conn.execute_batch("INSERT INTO w(id, v, row_owner) VALUES (1, 'x', '*');")
            .unwrap();
        let err = capture.take(&conn).unwrap_err().to_string();
        assert!(err.contains("VIRTUAL") && err.contains("STORED"), "{err}");
        conn.execute_batch("ROLLBACK").unwrap();
    }

    #[test]
    fn sqlites_pick_is_kept_only_in_this_nodes_range_above_every_id_handed_out() {
        let me = Identity::new(Some(Role::Secondary), NODE as u32, 3, 10, 1);
        // In range and above the counter: kept, and the counter moves past it.
        assert_eq!(me.row_id_for(id(NODE, 12)), id(NODE, 12));
        assert_eq!(me.next_row_seq(), 13);
        // In range but at or below an id already handed out: a fresh id instead.
        assert_eq!(me.row_id_for(id(NODE, 12)), id(NODE, 13));
        assert_eq!(me.row_id_for(id(NODE, 5)), id(NODE, 14));
        // Another node's range (or a small SQLite id): never kept.
        assert_eq!(me.row_id_for(id(NODE + 1, 1)), id(NODE, 15));
        assert_eq!(me.row_id_for(3), id(NODE, 16));
        assert_eq!(me.next_row_seq(), 17);
    }

    #[test]
    fn a_row_gets_one_final_id_however_often_its_triggers_ask() {
        let me = Identity::new(Some(Role::Secondary), NODE as u32, 3, 10, 1);
        let capture = Capture::new(Arc::new(me));
        capture.begin_statement();
        // SQLite picked 1 for a row inserted without an id: it moves into the node's range,
        // and both AFTER INSERT triggers (in either order) get the same id.
        capture.insert_begins(0, true);
        assert_eq!(capture.row_id(0, 1), id(NODE, 10));
        assert_eq!(capture.row_id(0, 1), id(NODE, 10));
        assert_eq!(capture.remapped_rowid(1), Some(id(NODE, 10)));
        // The next row of the statement gives id 1 itself: kept, and it is the last row.
        capture.insert_begins(0, false);
        assert_eq!(capture.row_id(0, 1), 1);
        assert_eq!(capture.remapped_rowid(1), Some(1));
        // Another table's row in between does not disturb this one's decision.
        capture.insert_begins(0, true);
        assert_eq!(capture.row_id(0, 2), id(NODE, 11));
        capture.insert_begins(1, false);
        assert_eq!(capture.row_id(1, 7), 7);
        assert_eq!(capture.row_id(0, 2), id(NODE, 11));
        // After the statement, SQLite names the last row of the statement's own table (2):
        // the row a trigger inserted into another table (7) does not hide its move.
        assert_eq!(capture.remapped_rowid(2), Some(id(NODE, 11)));
        assert_eq!(capture.remapped_rowid(7), Some(7));
    }
}
