//! Fetching: rows made from a live statement or from buffered values, by the cursor's row
//! factory.

use crate::columns::Casts;
use crate::db::DbGuard;
use crate::errors;
use crate::row::Row;
use crate::stmt::{self, Stmt};
use crate::values::{self, TextMode};
use pyo3::ffi as pyffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rusqlite::ffi;
use std::ffi::c_int;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::phases::{changes, step_error};
use super::{Cursor, Source, Unlock};

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
pub(super) fn fetch<'py>(
    cursor: &Bound<'py, Cursor>,
    max: Option<usize>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
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
