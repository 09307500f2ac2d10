//! Executing: `execute`, `executemany` and `executescript` on a cursor.

use crate::columns::{describe, description};
use crate::connection::ConnInner;
use crate::db::{Db, DbGuard};
use crate::errors;
use crate::ffi_util::{column_origins, RawStmt};
use crate::params;
use crate::stmt::{self, Stmt};
use crate::values;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyIterator, PyString};
use rusqlite::ffi;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::phases::{
    after_steps, answer_pragma, before_prepare, before_step, changes, check_sql, run_to_end,
    sql_text, statement, step_error,
};
use super::{release_source, Cursor, Source};

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
