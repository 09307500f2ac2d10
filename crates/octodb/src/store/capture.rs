//! Capture of a user's transaction: the SQL functions the TEMP triggers call, and the merge of
//! the captured rows into one change per row when the transaction commits.
//!
//! Captured rows are kept in the connection's memory, each tagged with the statement that
//! made it. A statement's first captured row also writes a mark (its id) into a TEMP table;
//! SQLite undoes that mark with the statement's other changes (a statement that aborts, a
//! `ROLLBACK TO`), so at commit the rows of statements without a mark are dropped. This costs
//! one small TEMP write per statement instead of one per row.

use super::schema::{self, TableLayout, OP_DELETE, OP_INSERT, OP_UPDATE};
use crate::changes::{ChangeSet, Op};
use crate::error::{Error, Result};
use crate::uri::Role;
use crate::value::{Owner, Value};
use rusqlite::functions::{Context, FunctionFlags};
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

/// Per-connection state of the capture functions.
#[derive(Debug, Default)]
struct State {
    layouts: Vec<Arc<TableLayout>>,
    /// Per layout id: the row being inserted into that table now, or last.
    inserting: Vec<Inserting>,
    /// The statement running now (see the module's documentation).
    statement: i64,
    /// Whether `statement` has written its mark.
    marked: bool,
    /// What the open transaction captured so far, in order.
    captured: Vec<Tagged>,
}

/// What the triggers know of the row being inserted into one table. SQLite runs a row's
/// BEFORE INSERT triggers, inserts it, then runs its AFTER INSERT triggers, before the next
/// row: the BEFORE trigger starts the note, the AFTER triggers read it.
#[derive(Debug, Default, Clone, Copy)]
struct Inserting {
    /// The INSERT gave no id: SQLite picks it.
    auto: bool,
    /// The id SQLite gave the row (`.0`) and the one it ends with (`.1`), once decided.
    decided: Option<(i64, i64)>,
}

/// A captured row or schema statement and the statement that made it.
#[derive(Debug)]
struct Tagged {
    statement: i64,
    what: Raw,
}

#[derive(Debug)]
enum Raw {
    Row {
        layout_id: usize,
        op: i64,
        rowid: i64,
        mask: u64,
        vals: Option<Vec<Value>>,
        old: Option<Vec<Value>>,
    },
    Ddl {
        sql: String,
        private: bool,
    },
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
fn mine_or_local(identity: &Identity, v: rusqlite::types::ValueRef<'_>) -> bool {
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
        // `rowid`. Both AFTER INSERT triggers call it, in whichever order SQLite runs them.
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
        let me = self.clone();
        // octo_capture(layout, op, rowid, mask, values...): the new row's values (insert), the
        // new then the old (update), or the old (delete). True when the statement's mark is
        // still to be written.
        conn.create_scalar_function("octo_capture", -1, pure, move |ctx| {
            me.capture_row(ctx)
                .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))
        })?;
        let me = self.clone();
        conn.create_scalar_function("octo_statement", 0, pure, move |_| Ok(me.lock().statement))?;
        // The mark table is written at every statement and emptied at every commit: keep it
        // (and its journal) in memory rather than in a temporary file.
        conn.execute_batch("PRAGMA temp_store=MEMORY")?;
        conn.execute_batch(schema::CAPTURE_TABLE)?;
        Ok(())
    }

    /// (Re)create the TEMP triggers for the current schema.
    pub fn install_triggers(&self, conn: &Connection, role: Role) -> Result<()> {
        schema::drop_triggers(conn)?;
        let mut sql = String::new();
        let mut st = self.lock();
        for t in schema::user_tables(conn)? {
            if !t.is_replicated() || t.without_rowid {
                continue;
            }
            let id = st.layouts.len();
            sql += &schema::trigger_sql(&t, id, role);
            st.layouts.push(Arc::new(t));
        }
        drop(st);
        conn.execute_batch(&sql)?;
        Ok(())
    }

    /// A new statement begins: forget what the last one noted.
    pub fn begin_statement(&self) {
        let mut st = self.lock();
        st.inserting.clear();
        st.statement += 1;
        st.marked = false;
    }

    /// The running statement failed. Its mark may have been undone with it; a statement it
    /// ran inside (SQL run from a user function) marks again at its next row.
    pub fn statement_failed(&self) {
        self.lock().marked = false;
    }

    /// The transaction ended (committed after `take`, or rolled back): drop what is left.
    pub fn forget(&self) {
        self.lock().captured.clear();
    }

    /// Record a schema statement of the running statement (primaries replicate them).
    pub fn record_ddl(&self, conn: &Connection, sql: &str, private: bool) -> Result<()> {
        let statement = {
            let mut st = self.lock();
            let statement = st.statement;
            st.captured.push(Tagged {
                statement,
                what: Raw::Ddl {
                    sql: sql.to_string(),
                    private,
                },
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

    fn capture_row(&self, ctx: &Context<'_>) -> Result<bool> {
        let int = |i: usize| -> Result<i64> {
            match ctx.get_raw(i) {
                rusqlite::types::ValueRef::Integer(v) => Ok(v),
                _ => Err(Error::rule("octodb: octo_capture needs integer arguments")),
            }
        };
        let (layout_id, op, rowid, mask) = (int(0)? as usize, int(1)?, int(2)?, int(3)? as u64);
        let mut st = self.lock();
        let n = st
            .layouts
            .get(layout_id)
            .map(|l| l.columns.len())
            .ok_or_else(|| Error::rule("octodb: change captured for an unknown table layout"))?;
        let values =
            |from: usize| -> Vec<Value> { (from..from + n).map(|i| value_arg(ctx, i)).collect() };
        let expected = match op {
            OP_UPDATE => 4 + 2 * n,
            OP_INSERT | OP_DELETE => 4 + n,
            _ => 0,
        };
        if ctx.len() != expected {
            return Err(Error::rule(
                "octodb: octo_capture called with the wrong arguments",
            ));
        }
        let (vals, old) = match op {
            OP_INSERT => (Some(values(4)), None),
            OP_UPDATE => (Some(values(4)), Some(values(4 + n))),
            _ => (None, Some(values(4))),
        };
        let statement = st.statement;
        st.captured.push(Tagged {
            statement,
            what: Raw::Row {
                layout_id,
                op,
                rowid,
                mask,
                vals,
                old,
            },
        });
        Ok(!std::mem::replace(&mut st.marked, true))
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
            rowid
        };
        row.decided = Some((rowid, to));
        to
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

    /// Take what the open transaction captured, one change per row, leaving out what was
    /// undone (statements whose mark is gone).
    pub fn take(&self, conn: &Connection) -> Result<Vec<Captured>> {
        // In order (the table's rowids), to be searched without hashing.
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
        let (layouts, captured) = {
            let mut st = self.lock();
            // Later rows of the running statement need a new mark.
            st.marked = false;
            (st.layouts.clone(), std::mem::take(&mut st.captured))
        };
        let mut merger = Merger::default();
        for tagged in captured {
            if standing.binary_search(&tagged.statement).is_err() {
                continue;
            }
            match tagged.what {
                Raw::Ddl { sql, private } => {
                    merger.barrier();
                    merger.out.push(Captured::Ddl { sql, private });
                }
                Raw::Row {
                    layout_id,
                    op,
                    rowid,
                    mask,
                    mut vals,
                    old,
                } => {
                    let layout = layouts.get(layout_id).cloned().ok_or_else(|| {
                        Error::rule("octodb: change captured for an unknown table layout")
                    })?;
                    // The INTEGER PRIMARY KEY column was read before the row's id was moved.
                    if let (Some(i), Some(v)) = (layout.rowid_alias, vals.as_mut()) {
                        if let Some(v) = v.get_mut(i) {
                            *v = Value::Integer(rowid);
                        }
                    }
                    merger.add(layout_id, layout, op, rowid, mask, vals, old);
                }
            }
        }
        merger.barrier();
        Ok(merger.out)
    }
}

/// Register `this_user()` and `this_node()` on `conn`. Every connection on a node's file
/// needs them, the engine's too: the schema may use them (a device's `DEFAULT (this_user())`,
/// a trigger from the primaries), and the engine's writes fire those triggers.
pub fn register_identity_functions(conn: &Connection, identity: &Arc<Identity>) -> Result<()> {
    // INNOCUOUS: they are safe inside schema.
    let pure = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
    let id = identity.clone();
    conn.create_scalar_function("this_user", 0, pure, move |_| {
        let u = id.user_id();
        Ok((u != 0).then_some(u))
    })?;
    let id = identity.clone();
    conn.create_scalar_function("this_node", 0, pure, move |_| Ok(id.node_id() as i64))?;
    Ok(())
}

fn value_arg(ctx: &Context<'_>, i: usize) -> Value {
    ctx.get_raw(i).into()
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Value {
        Value::from_ref(v)
    }
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

#[derive(Default)]
struct Merger {
    out: Vec<Captured>,
    group: Vec<RowChange>,
    /// (layout id, rowid) -> position in `group`. A layout id names one table's layout for
    /// the life of the connection; layouts change only with schema statements, which are
    /// barriers here.
    /// Hashed with foldhash: one lookup per captured row, keys from this node's own app.
    index: HashMap<(usize, i64), usize, foldhash::fast::RandomState>,
}

impl Merger {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        layout_id: usize,
        layout: Arc<TableLayout>,
        op: i64,
        rowid: i64,
        mask: u64,
        vals: Option<Vec<Value>>,
        old: Option<Vec<Value>>,
    ) {
        let key = (layout_id, rowid);
        if let Some(&i) = self.index.get(&key) {
            let rc = &mut self.group[i];
            // Deleted, then inserted again under another owner (what REPLACE does): the
            // delete must reach the old owner's nodes, so the two stay two changes.
            let owner_of = |row: &Option<Vec<Value>>| {
                layout
                    .owner
                    .and_then(|o| row.as_ref().and_then(|r| r.get(o)))
                    .map(Owner::of)
            };
            if op == OP_INSERT && rc.after.is_none() && owner_of(&rc.before) != owner_of(&vals) {
                self.index.insert(key, self.group.len());
                self.group.push(RowChange {
                    layout,
                    rowid,
                    before: None,
                    after: vals,
                    changed: u64::MAX,
                });
                return;
            }
            match op {
                OP_INSERT => {
                    rc.after = vals;
                    rc.changed = u64::MAX;
                }
                OP_UPDATE => {
                    rc.after = vals;
                    rc.changed |= mask;
                }
                _ => rc.after = None,
            }
            rc.layout = layout;
            return;
        }
        let (before, after, changed) = match op {
            OP_INSERT => (None, vals, u64::MAX),
            OP_UPDATE => (old, vals, mask),
            OP_DELETE => (old, None, 0),
            _ => return,
        };
        self.index.insert(key, self.group.len());
        self.group.push(RowChange {
            layout,
            rowid,
            before,
            after,
            changed,
        });
    }

    fn barrier(&mut self) {
        self.index.clear();
        self.out.extend(self.group.drain(..).map(Captured::Row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: i64 = 7;

    fn id(node: i64, seq: i64) -> i64 {
        (node << 32) | seq
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
