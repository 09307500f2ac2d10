//! `Cursor`: executing statements and fetching rows, lazily as sqlite3 does (a SELECT is
//! stepped once by `execute`, then one row ahead of each fetch). On a primary or a device each
//! statement also goes through the engine's phases (`octodb::Connection::before_prepare` ...),
//! and a statement that writes is run to its end at once, its rows (RETURNING) kept.

use crate::connection::{ConnInner, Connection};
use crate::db::{Db, DbGuard};
use crate::errors;
use crate::ffi_util::{column_origins, detached, RawStmt};
use crate::params;
use crate::row::Row;
use crate::stmt::{self, Stmt};
use crate::values::{self, TextMode};
use pyo3::exceptions::PyTypeError;
use pyo3::ffi as pyffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyList, PyString, PyTuple};
use rusqlite::ffi;
use std::collections::VecDeque;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::columns::{describe, description, Casts};
pub use crate::columns::{PARSE_COLNAMES, PARSE_DECLTYPES};

/// Where the rows of the current statement come from.
#[derive(Default)]
enum Source {
    #[default]
    Empty,
    /// A statement stepped to a row not yet fetched.
    Live { db: Arc<Db>, stmt: Arc<Stmt> },
    /// Rows the engine answered (octodb's PRAGMAs) or read ahead (a replicated write).
    Buffered(VecDeque<Vec<octodb::Value>>),
}

#[derive(Default)]
struct State {
    initialized: bool,
    closed: bool,
    connection: Option<Py<Connection>>,
    source: Source,
    /// The converter of each column, when `detect_types` found any.
    cast: Option<Casts>,
    columns: usize,
    description: Option<Py<PyAny>>,
    /// The column names for octodb.Row, read from `description` on first need.
    names: Option<Arc<[String]>>,
    rowcount: i64,
    lastrowid: Option<i64>,
    row_factory: Option<Py<PyAny>>,
    /// Bumped by every execution, so that a fetch loop notices a re-execution from a callback.
    generation: u64,
}

/// A cursor over a connection: `connection.cursor()` makes one.
#[pyclass(module = "octodb", subclass, weakref, frozen)]
pub struct Cursor {
    state: Mutex<State>,
    /// Set while the cursor runs or fetches: a callback using it then is "recursive use".
    locked: AtomicBool,
    arraysize: AtomicIsize,
}

/// Clears `locked` when dropped.
struct Unlock<'a>(&'a AtomicBool);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Cursor {
    pub fn blank() -> Cursor {
        Cursor {
            state: Mutex::new(State::default()),
            locked: AtomicBool::new(false),
            arraysize: AtomicIsize::new(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn init(&self, connection: &Bound<'_, Connection>) -> PyResult<()> {
        if self.locked.load(Ordering::Acquire) {
            return Err(errors::programming("Recursive use of cursors not allowed."));
        }
        let row_factory = connection.get().initialized()?.row_factory(connection.py());
        let old = std::mem::replace(
            &mut *self.state(),
            State {
                initialized: true,
                connection: Some(connection.clone().unbind()),
                rowcount: -1,
                row_factory: Some(row_factory),
                ..State::default()
            },
        );
        self.arraysize.store(1, Ordering::Relaxed);
        release_source(connection.py(), old.source);
        Ok(())
    }

    /// sqlite3's checks before running or fetching: initialized, open, not in use, and the
    /// connection's own checks. Returns the connection's state and marks the cursor in use.
    fn enter(&self, py: Python<'_>) -> PyResult<(Arc<ConnInner>, Unlock<'_>)> {
        let conn = {
            let st = self.state();
            if !st.initialized {
                return Err(errors::programming("Base Cursor.__init__ not called."));
            }
            if st.closed {
                return Err(errors::programming("Cannot operate on a closed cursor."));
            }
            st.connection.as_ref().map(|c| c.clone_ref(py))
        };
        if self.locked.swap(true, Ordering::AcqRel) {
            return Err(errors::programming("Recursive use of cursors not allowed."));
        }
        let unlock = Unlock(&self.locked);
        let conn = conn.ok_or_else(|| errors::programming("Base Cursor.__init__ not called."))?;
        let inner = conn.get().checked(py)?;
        Ok((inner, unlock))
    }
}

impl ConnInner {
    pub fn row_factory(&self, py: Python<'_>) -> Py<PyAny> {
        self.row_factory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_ref(py)
    }
}

/// Reset a statement the cursor no longer reads from.
fn release_source(py: Python<'_>, source: Source) {
    if let Source::Live { db, stmt } = source {
        let g = db.lock(py);
        stmt.release(&g);
    }
}

/// sqlite3's checks on SQL text before it is prepared.
pub fn check_sql(g: &DbGuard<'_>, sql: &str) -> PyResult<()> {
    if sql.as_bytes().contains(&0) {
        return Err(errors::programming("the query contains a null character"));
    }
    let raw = g.raw()?;
    // SAFETY: an open handle under its lock; a negative value only reads the limit.
    let max = unsafe { ffi::sqlite3_limit(raw.0, ffi::SQLITE_LIMIT_SQL_LENGTH, -1) };
    if sql.len() > max.max(0) as usize {
        return Err(errors::DataError::new_err("query string is too large"));
    }
    Ok(())
}

fn sql_text<'a>(sql: &'a Bound<'_, PyAny>) -> PyResult<&'a Bound<'a, PyString>> {
    sql.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "execute() argument 1 must be str, not {}",
            crate::adapters::type_name(sql)
        ))
    })
}

/// The error of a failed prepare or step: the engine's own rule when it refused the
/// statement (`SQLITE_AUTH` on a replicated node), else SQLite's error.
pub fn step_error(py: Python<'_>, g: &DbGuard<'_>) -> PyErr {
    let raw = match g.raw() {
        Ok(r) => r,
        Err(e) => return e,
    };
    let (code, _) = raw.last_error();
    if g.replicated && code & 0xff == ffi::SQLITE_AUTH {
        if let Some(reason) = g.engine().ok().and_then(|e| e.take_denied_reason()) {
            // A statement the node does not permit (a device's CREATE TABLE, a write to
            // octodb's own tables): refused as a write to a read-only database would be.
            let class = py.get_type::<errors::OperationalError>();
            return errors::with_code(class, code, &reason);
        }
    }
    if g.replicated && code == ffi::SQLITE_BUSY_SNAPSHOT {
        // SQLite's "database is locked" would send the app looking for another process.
        return errors::from_code(py, code, STALE_SNAPSHOT);
    }
    errors::from_db(py, raw)
}

/// Why a write fails after the transaction read, on a replicated node.
const STALE_SNAPSHOT: &str = "database is locked: this transaction read the database before \
     its first write, and the node's engine has written since (rows from the primaries); roll \
     back and run it again. A transaction that reads then writes should take the write lock \
     first (BEGIN IMMEDIATE)";

/// Prepare `sql` for a cursor: from the cache when possible.
fn statement(
    py: Python<'_>,
    g: &DbGuard<'_>,
    db: &Arc<Db>,
    sql: &str,
    cacheable: bool,
) -> PyResult<Option<Arc<Stmt>>> {
    if cacheable {
        let cached = g.cache.borrow_mut().get(sql);
        if let Some(s) = cached {
            return Ok(Some(s));
        }
    }
    let prepared = stmt::prepare(py, g, db, sql, cacheable, &|| step_error(py, g))?;
    if let (true, Some(s)) = (cacheable, &prepared) {
        let evicted = g.cache.borrow_mut().put(sql, s);
        drop(evicted);
    }
    Ok(prepared)
}

/// The engine's phase 2 on a replicated node.
fn before_prepare(
    py: Python<'_>,
    g: &DbGuard<'_>,
    sql: &str,
) -> PyResult<Option<octodb::api::Prepared>> {
    if !g.replicated {
        return Ok(None);
    }
    let engine = g.engine()?;
    // SAFETY: the engine call touches no Python object.
    let _inside = g.inside();
    let r = unsafe { detached(py, || engine.before_prepare(sql)) };
    r.map(Some).map_err(|e| errors::from_engine(py, e))
}

fn before_step(
    py: Python<'_>,
    g: &DbGuard<'_>,
    prepared: Option<octodb::api::Prepared>,
    sql: &str,
    readonly: bool,
) -> PyResult<Option<octodb::api::Started>> {
    let Some(prepared) = prepared else {
        return Ok(None);
    };
    let engine = g.engine()?;
    // SAFETY: as above.
    let _inside = g.inside();
    let r = unsafe { detached(py, || engine.before_step(prepared, sql, readonly)) };
    r.map(Some).map_err(|e| errors::from_engine(py, e))
}

fn after_steps(
    py: Python<'_>,
    g: &DbGuard<'_>,
    started: Option<octodb::api::Started>,
    changes: Result<u64, ()>,
) -> PyResult<()> {
    let Some(started) = started else {
        return Ok(());
    };
    let engine = g.engine()?;
    // SAFETY: as above.
    let _inside = g.inside();
    let r = unsafe { detached(py, || engine.after_steps(started, changes)) };
    r.map_err(|e| errors::from_engine(py, e))
}

fn changes(g: &DbGuard<'_>) -> i64 {
    // SAFETY: an open handle under its lock.
    g.raw()
        .map(|r| unsafe { ffi::sqlite3_changes64(r.0) })
        .unwrap_or(0)
}

/// Run one statement of the module's own or of a script to its end, through the engine's
/// phases on a replicated node; rows are stepped through and dropped.
pub fn run_to_end(py: Python<'_>, db: &Arc<Db>, g: &DbGuard<'_>, sql: &str) -> PyResult<()> {
    if stmt::maybe_pragma(sql) {
        if let Some(_rows) = answer_pragma(py, g, sql)? {
            return Ok(());
        }
    }
    let prepared = before_prepare(py, g, sql)?;
    let Some(s) = statement(py, g, db, sql, false)? else {
        return Ok(());
    };
    let raw = s.raw(g)?;
    let started = before_step(py, g, prepared, sql, s.readonly(g))?;
    let rc = loop {
        match stmt::step(py, g, raw) {
            ffi::SQLITE_ROW => continue,
            rc => break rc,
        }
    };
    let failed = (rc != ffi::SQLITE_DONE).then(|| step_error(py, g));
    let ok = if failed.is_none() {
        Ok(changes(g).max(0) as u64)
    } else {
        Err(())
    };
    after_steps(py, g, started, ok)?;
    failed.map_or(Ok(()), Err)
}

/// octodb's PRAGMAs, answered by the engine; None when `sql` is another statement.
fn answer_pragma(py: Python<'_>, g: &DbGuard<'_>, sql: &str) -> PyResult<Option<octodb::Rows>> {
    let engine = g.engine()?;
    // SAFETY: the engine call touches no Python object (PRAGMA authorize_* blocks until the
    // node's writer stores the decision, which is why the GIL is released).
    let _inside = g.inside();
    let r = unsafe { detached(py, || engine.answer_pragma(sql)) };
    r.map_err(|e| errors::from_engine(py, e))
}

/// One execution (execute / executemany) on a cursor that passed `enter`.
struct Run<'a, 'py> {
    py: Python<'py>,
    cur: &'a Cursor,
    conn: &'a ConnInner,
}

impl<'py> Run<'_, 'py> {
    fn go(&self, sql: &Bound<'py, PyAny>, params: ParamSets<'_, 'py>, many: bool) -> PyResult<()> {
        let py = self.py;
        let sql = sql_text(sql)?;
        let text = sql.to_str()?;
        let db = self.conn.db.clone();
        let g = db.lock(py);
        let old = {
            let mut st = self.cur.state();
            st.generation += 1;
            st.description = None;
            st.names = None;
            st.cast = None;
            st.columns = 0;
            st.rowcount = -1;
            std::mem::take(&mut st.source)
        };
        release_source(py, old);
        check_sql(&g, text)?;
        if stmt::maybe_pragma(text) {
            if let Some(rows) = answer_pragma(py, &g, text)? {
                let desc = (!rows.columns.is_empty())
                    .then(|| description(py, &rows.columns, false))
                    .transpose()?;
                let mut st = self.cur.state();
                st.columns = rows.columns.len();
                st.description = desc;
                st.source = Source::Buffered(rows.rows.into());
                return Ok(());
            }
        }
        // On a replicated node the engine's phase 2 comes before preparing: its authorizer
        // notes schema statements while they are prepared.
        let prepared = before_prepare(py, &g, text)?;
        // (A write on a follower is prepared afresh too: the engine's authorizer notes the
        // tables it writes.)
        let cacheable =
            !g.replicated || !(is_schema(text) || prepared.as_ref().is_some_and(|p| p.fresh()));
        let Some(s) = statement(py, &g, &db, text, cacheable)? else {
            return Ok(());
        };
        if many && !s.is_dml {
            return Err(errors::programming(
                "executemany() can only execute DML statements.",
            ));
        }
        s.in_use.store(true, Ordering::Relaxed);
        let result = self.with_statement(&g, &db, &s, text, prepared, params, many);
        if result.is_err() || !matches!(self.cur.state().source, Source::Live { .. }) {
            s.release(&g);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn with_statement(
        &self,
        g: &DbGuard<'_>,
        db: &Arc<Db>,
        s: &Arc<Stmt>,
        text: &str,
        mut prepared: Option<octodb::api::Prepared>,
        mut params: ParamSets<'_, 'py>,
        many: bool,
    ) -> PyResult<()> {
        let py = self.py;
        if s.is_dml && g.autocommit()? {
            if let Some(begin) = self.conn.transactions().begin_before_dml(g.replicated) {
                run_to_end(py, db, g, &begin)?;
            }
        }
        if s.is_dml {
            self.cur.state().rowcount = 0;
        }
        let mut described = false;
        while let Some(p) = params.next()? {
            let raw = s.raw(g)?;
            // SAFETY: an open statement under its lock.
            unsafe { ffi::sqlite3_reset(raw.0) };
            let prepared = match prepared.take() {
                Some(first) => Some(first),
                None => before_prepare(py, g, text)?,
            };
            params::bind_all(py, raw, p.as_ref())?;
            let readonly = s.readonly(g);
            let started = before_step(py, g, prepared, text, readonly)?;
            if g.replicated && !readonly {
                self.write_ahead(g, s, raw, started)?;
            } else {
                let rc = stmt::step(py, g, raw);
                if !described {
                    // After the first step: SQLite may have re-prepared the statement for a
                    // changed schema, with other columns.
                    self.describe(g, s)?;
                    described = true;
                }
                let ok = matches!(rc, ffi::SQLITE_ROW | ffi::SQLITE_DONE);
                let failure = (!ok).then(|| step_error(py, g));
                after_steps(py, g, started, if ok { Ok(0) } else { Err(()) })?;
                if let Some(e) = failure {
                    return Err(e);
                }
                if rc == ffi::SQLITE_DONE && s.is_dml {
                    self.cur.state().rowcount += changes(g);
                }
                if rc == ffi::SQLITE_ROW && !many {
                    self.cur.state().source = Source::Live {
                        db: db.clone(),
                        stmt: s.clone(),
                    };
                }
            }
        }
        if !described {
            self.describe(g, s)?;
        }
        if !many {
            let id = if g.replicated {
                g.engine()?.last_insert_rowid()
            } else {
                // SAFETY: an open handle under its lock.
                unsafe { ffi::sqlite3_last_insert_rowid(g.raw()?.0) }
            };
            self.cur.state().lastrowid = Some(id);
        }
        Ok(())
    }

    fn describe(&self, g: &DbGuard<'_>, s: &Stmt) -> PyResult<()> {
        let (columns, desc, cast) = describe(self.py, g, s, self.conn.detect_types)?;
        let mut st = self.cur.state();
        st.columns = columns;
        st.description = desc;
        st.names = None;
        st.cast = cast;
        Ok(())
    }

    /// A write on a replicated node: run to its end now so that the engine records it, and
    /// keep what it returned (RETURNING) for the fetches.
    fn write_ahead(
        &self,
        g: &DbGuard<'_>,
        s: &Stmt,
        raw: RawStmt,
        started: Option<octodb::api::Started>,
    ) -> PyResult<()> {
        let py = self.py;
        let mut rows = VecDeque::new();
        let rc = loop {
            match stmt::step(py, g, raw) {
                ffi::SQLITE_ROW => {
                    // Counted after the step: a re-prepare may have changed the columns.
                    let n = s.column_count(g);
                    rows.push_back((0..n).map(|i| values::engine_value(raw, i)).collect())
                }
                rc => break rc,
            }
        };
        let failure = (rc != ffi::SQLITE_DONE).then(|| step_error(py, g));
        if failure.is_none() && !rows.is_empty() {
            let n = s.column_count(g).max(0) as usize;
            g.engine()?
                .correct_returned_ids(|| column_origins(raw, n), rows.make_contiguous());
        }
        let changed = changes(g);
        let ok = if failure.is_none() {
            Ok(changed.max(0) as u64)
        } else {
            Err(())
        };
        after_steps(py, g, started, ok)?;
        if let Some(e) = failure {
            return Err(e);
        }
        let mut st = self.cur.state();
        if s.is_dml {
            st.rowcount += changed;
        }
        if !rows.is_empty() {
            st.source = Source::Buffered(rows);
        }
        Ok(())
    }
}

/// CREATE / DROP / ALTER: on a replicated node prepared afresh each time (the engine's
/// authorizer notes schema statements while they are prepared).
fn is_schema(sql: &str) -> bool {
    let rest = stmt::skip_blank(sql.as_bytes());
    let word: Vec<u8> = rest
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .map(u8::to_ascii_uppercase)
        .collect();
    matches!(word.as_slice(), b"CREATE" | b"DROP" | b"ALTER")
}

/// The parameter sets of an execution: one (execute) or an iterator's (executemany).
enum ParamSets<'a, 'py> {
    One(Option<Option<&'a Bound<'py, PyAny>>>),
    Many(Bound<'py, PyIterator>),
}

impl<'py> ParamSets<'_, 'py> {
    #[allow(clippy::type_complexity)]
    fn next(&mut self) -> PyResult<Option<Option<Bound<'py, PyAny>>>> {
        match self {
            ParamSets::One(p) => Ok(p.take().map(|p| p.cloned())),
            ParamSets::Many(it) => match it.next() {
                Some(Ok(p)) => Ok(Some(Some(p))),
                Some(Err(e)) => Err(e),
                None => Ok(None),
            },
        }
    }
}

pub fn execute(
    cur: &Bound<'_, Cursor>,
    sql: &Bound<'_, PyAny>,
    params: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let py = cur.py();
    let me = cur.get();
    let (conn, _unlock) = me.enter(py)?;
    Run {
        py,
        cur: me,
        conn: &conn,
    }
    .go(sql, ParamSets::One(Some(params)), false)
}

pub fn executemany(
    cur: &Bound<'_, Cursor>,
    sql: &Bound<'_, PyAny>,
    seq: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = cur.py();
    let me = cur.get();
    let (conn, _unlock) = me.enter(py)?;
    sql_text(sql)?;
    let it = seq.try_iter()?;
    Run {
        py,
        cur: me,
        conn: &conn,
    }
    .go(sql, ParamSets::Many(it), true)
}

/// Run every statement of a script, ignoring `isolation_level` (under legacy transaction
/// control an open transaction is committed first; with `autocommit` set, nothing implicit).
pub fn executescript(cur: &Bound<'_, Cursor>, script: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = cur.py();
    let me = cur.get();
    let (conn, _unlock) = me.enter(py)?;
    let script = script.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "executescript() argument 1 must be str, not {}",
            crate::adapters::type_name(script)
        ))
    })?;
    let text = script.to_str()?;
    if text.as_bytes().contains(&0) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "embedded null character",
        ));
    }
    let db = conn.db.clone();
    let g = db.lock(py);
    let old = {
        let mut st = me.state();
        st.generation += 1;
        std::mem::take(&mut st.source)
    };
    release_source(py, old);
    let raw_db = g.raw()?;
    // SAFETY: an open handle under its lock.
    let max = unsafe { ffi::sqlite3_limit(raw_db.0, ffi::SQLITE_LIMIT_SQL_LENGTH, -1) };
    if text.len() > max.max(0) as usize {
        return Err(errors::DataError::new_err("query string is too large"));
    }
    if conn.transactions().commits_before_script() && !g.autocommit()? {
        run_to_end(py, &db, &g, "COMMIT")?;
    }
    let mut rest = text;
    loop {
        let skipped = stmt::skip_blank(rest.as_bytes()).len();
        rest = &rest[rest.len() - skipped..];
        if rest.is_empty() {
            return Ok(());
        }
        // Find where this statement ends, then run it on its own (through the engine's
        // phases on a replicated node).
        let (rc, p, tail) = stmt::prepare_raw(py, &g, rest, false)?;
        if !p.is_null() {
            // SAFETY: `p` was just prepared and is not used elsewhere; finalized once.
            unsafe { ffi::sqlite3_finalize(p) };
        }
        if rc != ffi::SQLITE_OK {
            return Err(step_error(py, &g));
        }
        let tail = tail.clamp(1, rest.len());
        let one = &rest[..tail];
        if p.is_null() && stmt::skip_blank(one.as_bytes()).iter().all(|&b| b == b';') {
            rest = &rest[tail..];
            continue;
        }
        run_to_end(py, &db, &g, one)?;
        rest = &rest[tail..];
    }
}

/// How rows are made from values: read once per fetch call.
struct RowMaker {
    text: TextMode,
    cast: Option<Casts>,
    columns: usize,
    description: Option<Py<PyAny>>,
    factory: Factory,
}

enum Factory {
    Tuple,
    /// octodb.Row, made directly, with the column names read once per fetch.
    Row(Arc<[String]>),
    Call(Py<PyAny>),
}

impl RowMaker {
    fn live_tuple<'py>(
        &self,
        py: Python<'py>,
        g: &DbGuard<'_>,
        s: &Stmt,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let n = self.columns;
        // SAFETY: PyTuple_New returns a new tuple or NULL with an error set.
        let t = unsafe {
            Bound::from_owned_ptr_or_err(py, pyffi::PyTuple_New(n as pyffi::Py_ssize_t))?
        };
        for i in 0..n {
            // Re-read the handle for each column: a converter may have closed the database.
            let raw = s.raw(g)?;
            let v = match self.cast.as_ref().and_then(|c| c.get(i)?.as_ref()) {
                Some(conv) => values::converted_column(py, raw, i as c_int, conv)?,
                None => values::column(py, raw, i as c_int, &self.text)?,
            };
            // SAFETY: `t` is a new tuple of length n with slot i still empty; SetItem steals
            // the reference `into_ptr` gives.
            unsafe { pyffi::PyTuple_SetItem(t.as_ptr(), i as pyffi::Py_ssize_t, v.into_ptr()) };
        }
        // SAFETY: `t` is a tuple.
        Ok(unsafe { t.cast_into_unchecked() })
    }

    fn buffered_tuple<'py>(
        &self,
        py: Python<'py>,
        row: &[octodb::Value],
    ) -> PyResult<Bound<'py, PyTuple>> {
        let items = row
            .iter()
            .enumerate()
            .map(
                |(i, v)| match self.cast.as_ref().and_then(|c| c.get(i)?.as_ref()) {
                    Some(conv) => match values::engine_bytes(py, v) {
                        Some(b) => conv.bind(py).call1((b,)),
                        None => Ok(py.None().into_bound(py)),
                    },
                    None => values::from_engine(py, v, &self.text),
                },
            )
            .collect::<PyResult<Vec<_>>>()?;
        PyTuple::new(py, items)
    }

    fn finish<'py>(
        &self,
        cursor: &Bound<'py, Cursor>,
        tuple: Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = cursor.py();
        match &self.factory {
            Factory::Tuple => Ok(tuple.into_any()),
            Factory::Row(names) => {
                let desc = self
                    .description
                    .as_ref()
                    .map(|d| d.clone_ref(py))
                    .unwrap_or_else(|| py.None());
                Ok(Bound::new(py, Row::new(desc, tuple.unbind(), names.clone()))?.into_any())
            }
            Factory::Call(f) => f.bind(py).call1((cursor, tuple)),
        }
    }
}

/// Fetch up to `max` rows (all with None). One row: `single` returns it or None.
fn fetch<'py>(cursor: &Bound<'py, Cursor>, max: Option<usize>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let py = cursor.py();
    let me = cursor.get();
    let (conn, unlock) = me.enter(py)?;
    let (maker, generation) = {
        let mut st = me.state();
        let factory = match &st.row_factory {
            None => Factory::Tuple,
            Some(f) if f.is_none(py) => Factory::Tuple,
            Some(f) if f.bind(py).is(py.get_type::<Row>()) => {
                let names = match &st.names {
                    Some(n) => n.clone(),
                    None => {
                        let desc = st
                            .description
                            .as_ref()
                            .map_or_else(|| py.None(), |d| d.clone_ref(py));
                        let n = crate::row::names_of(desc.bind(py))?;
                        st.names = Some(n.clone());
                        n
                    }
                };
                Factory::Row(names)
            }
            Some(f) => Factory::Call(f.clone_ref(py)),
        };
        (
            RowMaker {
                text: TextMode::of(conn.text_factory(py).bind(py)),
                cast: st.cast.clone(),
                columns: st.columns,
                description: st.description.as_ref().map(|d| d.clone_ref(py)),
                factory,
            },
            st.generation,
        )
    };
    let mut out = Vec::new();
    let mut held = Some(unlock);
    while max.is_none_or(|m| out.len() < m) {
        if held.is_none() {
            // The row factory ran unlocked; take the cursor again before the next row.
            if me.locked.swap(true, Ordering::AcqRel) {
                return Err(errors::programming("Recursive use of cursors not allowed."));
            }
            held = Some(Unlock(&me.locked));
        }
        let source = {
            let st = me.state();
            if st.generation != generation {
                break;
            }
            match &st.source {
                Source::Empty => break,
                Source::Live { db, stmt } => Some((db.clone(), stmt.clone())),
                Source::Buffered(_) => None,
            }
        };
        let tuple = match source {
            Some((db, s)) => {
                let g = db.lock(py);
                let tuple = maker.live_tuple(py, &g, &s);
                let tuple = match tuple {
                    Ok(t) => t,
                    Err(e) => {
                        // sqlite3 leaves the statement where it was: the next fetch retries.
                        return Err(e);
                    }
                };
                let raw = s.raw(&g)?;
                let rc = stmt::step(py, &g, raw);
                if rc != ffi::SQLITE_ROW {
                    let failure = (rc != ffi::SQLITE_DONE).then(|| step_error(py, &g));
                    let changed = (s.is_dml && rc == ffi::SQLITE_DONE).then(|| changes(&g));
                    s.release(&g);
                    let mut st = me.state();
                    if st.generation == generation {
                        st.source = Source::Empty;
                        if let Some(c) = changed {
                            st.rowcount = c;
                        }
                    }
                    drop(st);
                    if let Some(e) = failure {
                        return Err(e);
                    }
                }
                tuple
            }
            None => {
                let row = {
                    let mut st = me.state();
                    match &mut st.source {
                        Source::Buffered(rows) => {
                            let r = rows.pop_front();
                            if rows.is_empty() {
                                st.source = Source::Empty;
                            }
                            r
                        }
                        _ => None,
                    }
                };
                match row {
                    Some(r) => maker.buffered_tuple(py, &r)?,
                    None => break,
                }
            }
        };
        // The row factory may use the cursor (reading its description, say).
        drop(held.take());
        out.push(maker.finish(cursor, tuple)?);
    }
    Ok(out)
}

#[pymethods]
impl Cursor {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Cursor::blank()
    }

    fn __init__(&self, connection: &Bound<'_, PyAny>) -> PyResult<()> {
        let conn = connection.cast::<Connection>().map_err(|_| {
            PyTypeError::new_err(format!(
                "Cursor() argument must be an octodb Connection, not {}",
                crate::adapters::type_name(connection)
            ))
        })?;
        self.init(conn)
    }

    #[pyo3(signature = (sql, parameters = None))]
    fn execute<'py>(
        slf: &Bound<'py, Self>,
        sql: &Bound<'py, PyAny>,
        parameters: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Self>> {
        execute(slf, sql, parameters)?;
        Ok(slf.clone())
    }

    #[pyo3(name = "executemany")]
    fn execute_many<'py>(
        slf: &Bound<'py, Self>,
        sql: &Bound<'py, PyAny>,
        seq_of_parameters: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, Self>> {
        executemany(slf, sql, seq_of_parameters)?;
        Ok(slf.clone())
    }

    #[pyo3(name = "executescript")]
    fn execute_script<'py>(
        slf: &Bound<'py, Self>,
        sql_script: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, Self>> {
        executescript(slf, sql_script)?;
        Ok(slf.clone())
    }

    fn fetchone<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        Ok(fetch(slf, Some(1))?
            .pop()
            .unwrap_or_else(|| py.None().into_bound(py)))
    }

    #[pyo3(signature = (size = None))]
    fn fetchmany<'py>(slf: &Bound<'py, Self>, size: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let size = size.unwrap_or_else(|| slf.get().arraysize.load(Ordering::Relaxed));
        let rows = fetch(slf, Some(size.max(0) as usize))?;
        PyList::new(slf.py(), rows)
    }

    fn fetchall<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyList>> {
        let rows = fetch(slf, None)?;
        PyList::new(slf.py(), rows)
    }

    fn __iter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        Ok(slf.clone())
    }

    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(fetch(slf, Some(1))?.pop())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let conn = {
            let st = self.state();
            if !st.initialized {
                return Err(errors::programming("Base Cursor.__init__ not called."));
            }
            st.connection.as_ref().map(|c| c.clone_ref(py))
        };
        if self.locked.load(Ordering::Acquire) {
            return Err(errors::programming("Recursive use of cursors not allowed."));
        }
        if let Some(c) = conn {
            c.get().checked(py)?;
        }
        let old = {
            let mut st = self.state();
            st.closed = true;
            std::mem::take(&mut st.source)
        };
        release_source(py, old);
        Ok(())
    }

    #[allow(unused_variables)]
    fn setinputsizes(&self, sizes: &Bound<'_, PyAny>) {}

    #[allow(unused_variables)]
    #[pyo3(signature = (size, column = None))]
    fn setoutputsize(&self, size: &Bound<'_, PyAny>, column: Option<&Bound<'_, PyAny>>) {}

    #[getter]
    fn connection(&self, py: Python<'_>) -> Option<Py<Connection>> {
        self.state().connection.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn description(&self, py: Python<'_>) -> Py<PyAny> {
        self.state()
            .description
            .as_ref()
            .map_or_else(|| py.None(), |d| d.clone_ref(py))
    }

    #[getter]
    fn rowcount(&self) -> i64 {
        self.state().rowcount
    }

    #[getter]
    fn lastrowid(&self) -> Option<i64> {
        self.state().lastrowid
    }

    #[getter]
    fn arraysize(&self) -> isize {
        self.arraysize.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_arraysize(&self, size: isize) {
        self.arraysize.store(size, Ordering::Relaxed);
    }

    #[getter]
    fn row_factory(&self, py: Python<'_>) -> Py<PyAny> {
        self.state()
            .row_factory
            .as_ref()
            .map_or_else(|| py.None(), |f| f.clone_ref(py))
    }

    #[setter]
    fn set_row_factory(&self, factory: Py<PyAny>) {
        let old = self.state().row_factory.replace(factory);
        drop(old);
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let source = std::mem::take(
            &mut self
                .state
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .source,
        );
        if matches!(source, Source::Live { .. }) {
            Python::attach(|py| release_source(py, source));
        }
    }
}
