//! `Cursor`: executing statements and fetching rows, lazily as sqlite3 does (a SELECT is
//! stepped once by `execute`, then one row ahead of each fetch). On a primary or a device each
//! statement also goes through the engine's phases (`octodb::Connection::before_prepare` ...),
//! and a statement that writes is run to its end at once, its rows (RETURNING) kept.

use crate::connection::{ConnInner, Connection};
use crate::db::Db;
use crate::errors;
use crate::stmt::Stmt;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::columns::Casts;
pub use crate::columns::{PARSE_COLNAMES, PARSE_DECLTYPES};

mod fetching;
mod phases;
mod run;

use fetching::fetch;
pub use phases::{check_sql, run_to_end, step_error};
pub use run::{execute, executemany, executescript};

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
