//! `Connection`: sqlite3's connection object on an octodb database (a plain local file, a
//! primary or a device); its transaction control is `transactions`'.

use crate::cursor::{self, Cursor};
use crate::db::{Db, DbGuard};
use crate::errors::{self, ProgrammingError};
use crate::ffi_util::detached;
use crate::logging_bridge;
use crate::stmt;
use crate::transactions::{Autocommit, Control, Isolation, ALWAYS_OPEN_BEGIN};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple, PyType};
use rusqlite::ffi;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A database argument (str, bytes or path-like) as the OS path it names, as sqlite3 takes
/// it: any bytes, including names that are not valid UTF-8.
fn fs_path(database: &Bound<'_, PyAny>) -> PyResult<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let os = database.py().import("os")?;
    let encoded = os.call_method1("fsencode", (os.call_method1("fspath", (database,))?,))?;
    let bytes = encoded.cast::<pyo3::types::PyBytes>()?.as_bytes().to_vec();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// The state of an initialized connection.
pub struct ConnInner {
    pub db: Arc<Db>,
    /// The thread that made it, as Python names it (`threading.get_ident()`): sqlite3 checks
    /// that id, so a thread that reuses a finished one's id may use the connection, as there.
    thread_ident: std::ffi::c_ulong,
    check_same_thread: bool,
    pub detect_types: i32,
    transactions: Mutex<Control>,
    pub row_factory: Mutex<Py<PyAny>>,
    pub text_factory: Mutex<Py<PyAny>>,
}

/// This thread's id as Python's `threading.get_ident()` gives it.
fn python_thread_ident() -> std::ffi::c_ulong {
    // SAFETY: PyThread_get_thread_ident reads the calling thread's id (pthread_self); it
    // touches no Python object and needs no GIL.
    unsafe { pyo3::ffi::PyThread_get_thread_ident() }
}

impl ConnInner {
    /// sqlite3's check that a connection is used from the thread that made it.
    pub fn check_thread(&self) -> PyResult<()> {
        let here = python_thread_ident();
        if self.check_same_thread && here != self.thread_ident {
            return Err(errors::programming(format!(
                "SQLite objects created in a thread can only be used in that same thread. \
                 The object was created in thread id {} and this is thread id {here}.",
                self.thread_ident
            )));
        }
        Ok(())
    }

    /// The connection's transaction control as the app set it.
    pub fn transactions(&self) -> Control {
        *self.transactions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_transactions(&self, change: impl FnOnce(&mut Control)) {
        change(&mut self.transactions.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn text_factory(&self, py: Python<'_>) -> Py<PyAny> {
        self.text_factory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_ref(py)
    }

    /// Run an SQL statement of the module's own (BEGIN, COMMIT, ROLLBACK) to its end.
    pub fn run_internal(&self, py: Python<'_>, g: &DbGuard<'_>, sql: &str) -> PyResult<()> {
        cursor::run_to_end(py, &self.db, g, sql)
    }
}

/// A connection to an octodb database: `octodb.connect(...)` makes one.
#[pyclass(module = "octodb", subclass, weakref, frozen)]
pub struct Connection {
    inner: Mutex<Option<Arc<ConnInner>>>,
}

impl Connection {
    /// The state, once `__init__` succeeded.
    pub fn initialized(&self) -> PyResult<Arc<ConnInner>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| errors::programming("Base Connection.__init__ not called."))
    }

    /// The state, checked as sqlite3 checks before most operations: initialized, right
    /// thread, database open.
    pub fn checked(&self, py: Python<'_>) -> PyResult<Arc<ConnInner>> {
        let inner = self.initialized()?;
        inner.check_thread()?;
        if !inner.db.lock(py).is_open() {
            return Err(errors::closed_db());
        }
        Ok(inner)
    }

    /// As [`Connection::checked`] without the thread check: sqlite3 lets a backup's target be
    /// used from any thread (aiosqlite's backup runs on the source's thread).
    pub fn checked_open(&self, py: Python<'_>) -> PyResult<Arc<ConnInner>> {
        let inner = self.initialized()?;
        if !inner.db.lock(py).is_open() {
            return Err(errors::closed_db());
        }
        Ok(inner)
    }

    /// `timeout`: sqlite3's, in seconds. A node's connection keeps the engine's longer wait
    /// unless the app gives one.
    fn open(
        py: Python<'_>,
        database: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        uri: bool,
    ) -> PyResult<octodb::Connection> {
        let path = fs_path(database)?;
        let given = timeout.map(busy_timeout);
        let opts = octodb::OpenOptions {
            uri,
            busy_timeout: given.unwrap_or(Duration::from_secs(5)),
        };
        // A node's URI, or one with a key (`cipher=`): octodb's to read, not SQLite's.
        let octodb_uri = path
            .to_str()
            .filter(|s| octodb::NodeConfig::has_octodb_parameters(s))
            .map(str::to_string);
        if octodb_uri.is_some() {
            logging_bridge::start(py);
        }
        // A URI sqlite3 reads as a plain file name (no uri=True, no node=): a mistyped
        // `node=` (`nodes=secondary`) failed as "unable to open database file: ./file:/..."
        // (Python walkthrough).
        let uri_read_as_name = !uri
            && octodb_uri.is_none()
            && path
                .to_str()
                .is_some_and(|s| s.starts_with("file:") && s.contains('?'));
        // SAFETY: opening touches no Python object; a node's start may take a while.
        let opened = unsafe {
            detached(py, move || match octodb_uri {
                Some(u) => octodb::Connection::open_with(&u, &opts),
                None => octodb::Connection::open_local(&path, &opts),
            })
        };
        let engine = opened.map_err(|e| match e {
            // At open time a broken rule (a file of another role, the same file with other
            // parameters) means the database cannot be opened, not a constraint.
            octodb::Error::Rule(msg) => errors::OperationalError::new_err(msg),
            octodb::Error::Sqlite(rusqlite::Error::SqliteFailure(f, msg)) if uri_read_as_name => {
                let msg = msg.unwrap_or_else(|| "unable to open database file".into());
                errors::with_code(
                    py.get_type::<errors::OperationalError>(),
                    f.extended_code,
                    &format!("{msg}: {URI_READ_AS_NAME}"),
                )
            }
            e => errors::from_engine(py, e),
        })?;
        if let (Some(wait), Some(_)) = (given, engine.role()) {
            engine
                .set_busy_timeout(wait)
                .map_err(|e| errors::from_engine(py, e))?;
        }
        Ok(engine)
    }

    fn make_cursor<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Cursor>> {
        let cur = Bound::new(slf.py(), Cursor::blank())?;
        cur.get().init(slf)?;
        Ok(cur)
    }
}

#[pymethods]
impl Connection {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Connection {
            inner: Mutex::new(None),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (database, timeout = None, detect_types = 0, isolation_level = Isolation(Some("")), check_same_thread = true, factory = None, cached_statements = 128, uri = false, *, autocommit = Autocommit::Legacy))]
    fn __init__(
        &self,
        py: Python<'_>,
        database: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        detect_types: i32,
        isolation_level: Isolation,
        check_same_thread: bool,
        factory: Option<&Bound<'_, PyAny>>,
        cached_statements: i64,
        uri: bool,
        autocommit: Autocommit,
    ) -> PyResult<()> {
        let _ = factory;
        let previous = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(previous);
        let engine = Connection::open(py, database, timeout, uri)?;
        let db = Db::new(engine, cached_statements.max(0) as usize);
        let inner = ConnInner {
            db,
            thread_ident: python_thread_ident(),
            check_same_thread,
            detect_types,
            transactions: Mutex::new(Control {
                isolation: isolation_level.0,
                autocommit,
            }),
            row_factory: Mutex::new(py.None()),
            text_factory: Mutex::new(py.get_type::<PyString>().into_any().unbind()),
        };
        let inner = Arc::new(inner);
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(inner.clone());
        if autocommit == Autocommit::Off {
            let g = inner.db.lock(py);
            inner.run_internal(py, &g, ALWAYS_OPEN_BEGIN)?;
        }
        Ok(())
    }

    /// A new cursor (made by `factory(connection)`, which must return a Cursor).
    #[pyo3(signature = (*args, **kwargs))]
    fn cursor<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().checked(slf.py())?;
        // An explicit factory=None is an error, as in sqlite3: only an absent one means Cursor.
        let factory = match (args.len(), kwargs) {
            (0, None) => None,
            (0, Some(k)) if k.len() == 1 => k.get_item("factory")?,
            (1, None) => Some(args.get_item(0)?),
            _ => None,
        };
        let given = args.len() + kwargs.map_or(0, |k| k.len());
        if given > 0 && factory.is_none() {
            return Err(PyTypeError::new_err(
                "cursor() takes at most one argument, factory",
            ));
        }
        let Some(factory) = factory else {
            return Ok(Connection::make_cursor(slf)?.into_any());
        };
        let made = factory.call1((slf,))?;
        if made.cast::<Cursor>().is_err() {
            return Err(PyTypeError::new_err(format!(
                "factory must return a cursor, not {}",
                crate::adapters::type_name(&made)
            )));
        }
        Ok(made)
    }

    #[pyo3(signature = (sql, parameters = None))]
    fn execute<'py>(
        slf: &Bound<'py, Self>,
        sql: &Bound<'py, PyAny>,
        parameters: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Cursor>> {
        let cur = Connection::make_cursor(slf)?;
        cursor::execute(&cur, sql, parameters)?;
        Ok(cur)
    }

    fn executemany<'py>(
        slf: &Bound<'py, Self>,
        sql: &Bound<'py, PyAny>,
        parameters: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, Cursor>> {
        let cur = Connection::make_cursor(slf)?;
        cursor::executemany(&cur, sql, parameters)?;
        Ok(cur)
    }

    fn executescript<'py>(
        slf: &Bound<'py, Self>,
        sql_script: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, Cursor>> {
        let cur = Connection::make_cursor(slf)?;
        cursor::executescript(&cur, sql_script)?;
        Ok(cur)
    }

    /// Commit the open transaction; with `autocommit=False` open the next one, with
    /// `autocommit=True` do nothing (the app ends its transactions itself).
    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        self.end_transaction(py, "COMMIT")
    }

    /// Roll back the open transaction; as `commit` for the `autocommit` modes.
    fn rollback(&self, py: Python<'_>) -> PyResult<()> {
        self.end_transaction(py, "ROLLBACK")
    }

    /// Close the database; an open transaction is rolled back, not committed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.initialized()?;
        inner.check_thread()?;
        inner.db.close(py)
    }

    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        slf.get().checked(slf.py())?;
        Ok(slf.clone())
    }

    /// Commit when the block succeeded, roll back when it raised (or when the commit failed).
    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        _exc_value: &Bound<'_, PyAny>,
        _traceback: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if exc_type.is_none() {
            if let Err(e) = self.commit(py) {
                let _ = self.rollback(py);
                return Err(e);
            }
        } else {
            self.rollback(py)?;
        }
        Ok(false)
    }

    /// A prepared statement object, as sqlite3's `connection(sql)` returns.
    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<Statement> {
        let inner = self.checked(py)?;
        if args.len() != 1 {
            return Err(PyTypeError::new_err(format!(
                "Connection() takes exactly one argument, the SQL ({} given)",
                args.len()
            )));
        }
        let sql = args.get_item(0)?;
        let sql = sql.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "SQL must be str, not {}",
                crate::adapters::type_name(&sql)
            ))
        })?;
        let text = sql.to_str()?;
        let g = inner.db.lock(py);
        cursor::check_sql(&g, text)?;
        let prepared = stmt::prepare(py, &g, &inner.db, text, false, &|| {
            cursor::step_error(py, &g)
        })?;
        Ok(Statement {
            _stmt: Mutex::new(prepared),
        })
    }

    #[getter]
    fn isolation_level(&self) -> PyResult<Option<&'static str>> {
        Ok(self.initialized()?.transactions().isolation)
    }

    /// Setting None commits an open transaction and turns autocommit on (under legacy
    /// transaction control; otherwise `isolation_level` is kept but not used).
    #[setter]
    fn set_isolation_level(&self, py: Python<'_>, level: Isolation) -> PyResult<()> {
        let inner = self.initialized()?;
        if level.0.is_none() {
            self.commit(py)?;
        }
        inner.set_transactions(|c| c.isolation = level.0);
        Ok(())
    }

    /// Python 3.12's transaction control: True, False or `LEGACY_TRANSACTION_CONTROL`.
    #[getter]
    fn autocommit(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let inner = self.checked(py)?;
        Ok(inner.transactions().autocommit.to_python(py))
    }

    /// Setting True commits an open transaction; setting False opens one if none is open.
    #[setter]
    fn set_autocommit(&self, py: Python<'_>, mode: Autocommit) -> PyResult<()> {
        let inner = self.checked(py)?;
        inner.set_transactions(|c| c.autocommit = mode);
        let g = inner.db.lock(py);
        match mode {
            Autocommit::On if !g.autocommit()? => inner.run_internal(py, &g, "COMMIT"),
            Autocommit::Off if g.autocommit()? => inner.run_internal(py, &g, ALWAYS_OPEN_BEGIN),
            _ => Ok(()),
        }
    }

    /// Python 3.12's `getconfig(op)`: a boolean `SQLITE_DBCONFIG_*` setting.
    fn getconfig(&self, py: Python<'_>, op: i32) -> PyResult<bool> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        crate::dbconfig::get(py, &g, op)
    }

    /// Python 3.12's `setconfig(op, enable=True)`. On a replicated node the settings that
    /// would switch off octodb's rules (triggers) or rewrite the file behind the engine's
    /// back (`RESET_DATABASE`, `WRITABLE_SCHEMA`) are refused.
    #[pyo3(signature = (op, enable = true, /))]
    fn setconfig(&self, py: Python<'_>, op: i32, enable: bool) -> PyResult<()> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        crate::dbconfig::set(py, &g, op, enable)
    }

    #[getter]
    fn in_transaction(&self, py: Python<'_>) -> PyResult<bool> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        Ok(!g.autocommit()?)
    }

    #[getter]
    fn total_changes(&self, py: Python<'_>) -> PyResult<i64> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let raw = g.raw()?;
        // SAFETY: an open handle under its lock.
        Ok(unsafe { ffi::sqlite3_total_changes64(raw.0) })
    }

    #[getter]
    fn row_factory(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let inner = self.initialized()?;
        let f = inner.row_factory.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f.clone_ref(py))
    }

    #[setter]
    fn set_row_factory(&self, factory: Py<PyAny>) -> PyResult<()> {
        let inner = self.initialized()?;
        let old = std::mem::replace(
            &mut *inner.row_factory.lock().unwrap_or_else(|p| p.into_inner()),
            factory,
        );
        drop(old);
        Ok(())
    }

    #[getter]
    fn text_factory(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.initialized()?.text_factory(py))
    }

    #[setter]
    fn set_text_factory(&self, factory: Py<PyAny>) -> PyResult<()> {
        let inner = self.initialized()?;
        let old = std::mem::replace(
            &mut *inner.text_factory.lock().unwrap_or_else(|p| p.into_inner()),
            factory,
        );
        drop(old);
        Ok(())
    }

    /// Stop a running statement (it fails with "interrupted"); callable from any thread.
    fn interrupt(&self) -> PyResult<()> {
        let inner = self.initialized()?;
        if !inner.db.interrupt() {
            return Err(errors::closed_db());
        }
        Ok(())
    }

    fn getlimit(&self, py: Python<'_>, category: i32) -> PyResult<i32> {
        self.limit(py, category, -1)
    }

    /// Set a run-time limit; returns the previous value (a negative `limit` only reads it).
    fn setlimit(&self, py: Python<'_>, category: i32, limit: i32) -> PyResult<i32> {
        self.limit(py, category, limit)
    }

    /// The SQL text that recreates the database, statement by statement; `filter` (Python
    /// 3.13) is a LIKE pattern the names of the objects dumped match.
    #[pyo3(signature = (*, filter = None))]
    fn iterdump<'py>(
        slf: &Bound<'py, Self>,
        filter: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.get().checked(slf.py())?;
        slf.py()
            .import("octodb._dump")?
            .getattr("iterdump")?
            .call1((slf, filter))
    }

    /// create_function(name, narg, func, *, deterministic=False); func None removes it.
    #[pyo3(signature = (name, narg, func, *, deterministic = false))]
    fn create_function(
        &self,
        py: Python<'_>,
        name: &str,
        narg: i32,
        func: Option<&Bound<'_, PyAny>>,
        deterministic: bool,
    ) -> PyResult<()> {
        crate::functions::create_function(self, py, name, narg, func, deterministic)
    }

    /// octodb's alias of create_function; on a primary, "user_signup", "user_login" and
    /// "new_node" register the backend's authorization callbacks instead (SPEC §4.3).
    fn register_function(
        &self,
        py: Python<'_>,
        name: &str,
        narg: i32,
        func: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        crate::auth::register_function(self, py, name, narg, func)
    }

    #[pyo3(signature = (name, n_arg, aggregate_class))]
    fn create_aggregate(
        &self,
        py: Python<'_>,
        name: &str,
        n_arg: i32,
        aggregate_class: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        crate::functions::create_aggregate(self, py, name, n_arg, aggregate_class)
    }

    #[pyo3(signature = (name, num_params, aggregate_class, /))]
    fn create_window_function(
        &self,
        py: Python<'_>,
        name: &str,
        num_params: i32,
        aggregate_class: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        crate::functions::create_window_function(self, py, name, num_params, aggregate_class)
    }

    fn create_collation(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        crate::functions::create_collation(self, py, name, callback)
    }

    fn set_authorizer(
        &self,
        py: Python<'_>,
        authorizer_callback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        crate::hooks::set(
            self,
            py,
            crate::hooks::Hook::Authorizer,
            authorizer_callback,
        )
    }

    fn set_progress_handler(
        &self,
        py: Python<'_>,
        progress_handler: &Bound<'_, PyAny>,
        n: i32,
    ) -> PyResult<()> {
        crate::hooks::set(self, py, crate::hooks::Hook::Progress(n), progress_handler)
    }

    fn set_trace_callback(
        &self,
        py: Python<'_>,
        trace_callback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        crate::hooks::set(self, py, crate::hooks::Hook::Trace, trace_callback)
    }

    fn enable_load_extension(&self, py: Python<'_>, enable: bool) -> PyResult<()> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let raw = g.raw()?;
        // SAFETY: an open handle under its lock.
        if unsafe { ffi::sqlite3_enable_load_extension(raw.0, enable as i32) } != ffi::SQLITE_OK {
            return Err(errors::OperationalError::new_err(
                "Error enabling load extension",
            ));
        }
        Ok(())
    }

    #[pyo3(signature = (name, /, *, entrypoint = None))]
    fn load_extension(&self, py: Python<'_>, name: &str, entrypoint: Option<&str>) -> PyResult<()> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let raw = g.raw()?;
        let c = |s: &str| {
            std::ffi::CString::new(s).map_err(|_| PyValueError::new_err("embedded null character"))
        };
        let name = c(name)?;
        let entry = entrypoint.map(c).transpose()?;
        let mut msg: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: an open handle under its lock; the strings outlive the call; the error
        // message SQLite allocates is copied then freed.
        let rc = unsafe {
            ffi::sqlite3_load_extension(
                raw.0,
                name.as_ptr(),
                entry.as_ref().map_or(std::ptr::null(), |e| e.as_ptr()),
                &mut msg,
            )
        };
        if rc != ffi::SQLITE_OK {
            let text = unsafe { crate::ffi_util::c_text(msg) };
            unsafe { ffi::sqlite3_free(msg as *mut std::ffi::c_void) };
            return Err(errors::OperationalError::new_err(text));
        }
        Ok(())
    }

    /// A Blob for incremental I/O on one value.
    #[pyo3(signature = (table, column, row, /, *, readonly = false, name = "main"))]
    fn blobopen(
        slf: &Bound<'_, Self>,
        table: &str,
        column: &str,
        row: i64,
        readonly: bool,
        name: &str,
    ) -> PyResult<crate::blob::Blob> {
        crate::blob::open(slf, table, column, row, readonly, name)
    }

    /// Copy this database into `target`, `pages` pages at a time (all with -1 or 0).
    #[pyo3(signature = (target, *, pages = -1, progress = None, name = "main", sleep = 0.250))]
    fn backup(
        slf: &Bound<'_, Self>,
        target: &Bound<'_, PyAny>,
        pages: i32,
        progress: Option<&Bound<'_, PyAny>>,
        name: &str,
        sleep: f64,
    ) -> PyResult<()> {
        crate::backup::run(slf, target, pages, progress, name, sleep)
    }

    /// The database as bytes (what its file would hold).
    #[pyo3(signature = (*, name = "main"))]
    fn serialize<'py>(
        &self,
        py: Python<'py>,
        name: &str,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        crate::backup::serialize(self, py, name)
    }

    /// Replace the database with the one in `data` (as `serialize` gives).
    #[pyo3(signature = (data, /, *, name = "main"))]
    fn deserialize(&self, py: Python<'_>, data: &Bound<'_, PyAny>, name: &str) -> PyResult<()> {
        crate::backup::deserialize(self, py, data, name)
    }

    /// The node's sync status (the JSON of `PRAGMA sync_status`) as a dict.
    fn sync_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.api_sync_status(py)
    }

    /// The nodes a primary knows (`PRAGMA nodes`), as a list of dicts.
    fn nodes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.api_nodes(py)
    }

    /// Wait until the database is ready (authorized, initial download done) and return the
    /// status; TimeoutError after `timeout` seconds (None: no limit).
    #[pyo3(signature = (timeout = None))]
    fn wait_until_ready<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.api_wait_until_ready(py, timeout)
    }

    /// Wait until a device is in sync with its primaries (ready, caught up in this
    /// connection, every write of its own decided) and return the status; TimeoutError after
    /// `timeout` seconds (None: no limit). Primaries and local databases are in sync at once.
    #[pyo3(signature = (timeout = None))]
    fn wait_until_synced<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.api_wait_until_synced(py, timeout)
    }

    /// Wait until `predicate(status)` is true and return that status; TimeoutError after
    /// `timeout` seconds (None: no limit). Woken by the node's events, not by polling.
    #[pyo3(signature = (predicate, timeout = None))]
    fn wait_for<'py>(
        &self,
        py: Python<'py>,
        predicate: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.api_wait_for(py, predicate, timeout)
    }

    /// The node's events from now on: iterate it, or `get(timeout)`.
    fn events(&self, py: Python<'_>) -> PyResult<crate::events::EventStream> {
        self.api_events(py)
    }

    /// Call `callback(event)` for each event from now on, on a thread of the module's own.
    fn on_event(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
    ) -> PyResult<crate::events::Listener> {
        self.api_on_event(py, callback)
    }

    /// The change feed's position: the last log position this primary committed (a device:
    /// applied). See docs/change-feed.md.
    fn feed_position(&self, py: Python<'_>) -> PyResult<u64> {
        self.api_feed_position(py)
    }

    /// Wait until the feed passes `after`, at most `timeout` seconds (None: no limit); returns
    /// the position (at most `after` when the time ran out).
    #[pyo3(signature = (after, timeout = None))]
    fn wait_feed(&self, py: Python<'_>, after: i64, timeout: Option<f64>) -> PyResult<u64> {
        self.api_wait_feed(py, feed_position(after)?, timeout)
    }

    /// On a primary, the rows changed by the log entries after `after` (at most
    /// `max_entries` entries), whoever changed them: `(changes, up_to)`, each change a dict;
    /// continue after `up_to`.
    #[pyo3(signature = (after, max_entries = 256))]
    fn changes_after<'py>(
        &self,
        py: Python<'py>,
        after: i64,
        max_entries: usize,
    ) -> PyResult<(Bound<'py, PyList>, u64)> {
        self.api_changes_after(py, feed_position(after)?, max_entries)
    }

    /// "primary", "secondary" or "local".
    #[getter]
    fn node_type(&self, py: Python<'_>) -> PyResult<&'static str> {
        self.api_node_type(py)
    }

    /// Devices: the id of the transaction this connection committed last that the primaries
    /// will decide (one that changed replicated rows), as `transaction_accepted` /
    /// `transaction_rejected` events and `last_rejected` name it; None before any.
    #[getter]
    fn last_txn_id(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        self.api_last_txn_id(py)
    }

    /// Devices: where transaction `txn_id` (from `last_txn_id`, an event or `pending_txns()`)
    /// stands, also after a restart: a dict with `status` ("pending", "accepted", "rejected"
    /// or "unknown": decided before the newest 10,000), and for a rejection `reason` and `at`.
    fn txn_status<'py>(&self, py: Python<'py>, txn_id: u64) -> PyResult<Bound<'py, PyAny>> {
        self.api_txn_status(py, txn_id)
    }

    /// Devices: the ids of this device's transactions the primaries have not decided yet,
    /// oldest first.
    fn pending_txns(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        self.api_pending_txns(py)
    }

    /// Devices: wait until the primaries decide transaction `txn_id` and return its status
    /// (as `txn_status`); TimeoutError after `timeout` seconds (None: no limit), saying why
    /// the device is not in sync; OperationalError at once if the backend refuses the device.
    #[pyo3(signature = (txn_id, timeout = None))]
    fn wait_for_txn<'py>(
        &self,
        py: Python<'py>,
        txn_id: u64,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.api_wait_for_txn(py, txn_id, timeout)
    }

    /// This node's public key (hex); "" on a plain local database.
    #[getter]
    fn public_key(&self, py: Python<'_>) -> PyResult<String> {
        self.api_public_key(py)
    }

    /// The addresses a primary listens on (tcp://HOST:PORT, with the real port for port 0).
    #[getter]
    fn bound_addresses(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.api_bound_addresses(py)
    }

    #[classattr]
    #[pyo3(name = "Warning")]
    fn warning_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::Warning>().unbind()
    }
    #[classattr]
    #[pyo3(name = "Error")]
    fn error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::Error>().unbind()
    }
    #[classattr]
    #[pyo3(name = "InterfaceError")]
    fn interface_error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::InterfaceError>().unbind()
    }
    #[classattr]
    #[pyo3(name = "DatabaseError")]
    fn database_error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::DatabaseError>().unbind()
    }
    #[classattr]
    #[pyo3(name = "DataError")]
    fn data_error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::DataError>().unbind()
    }
    #[classattr]
    #[pyo3(name = "OperationalError")]
    fn operational_error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::OperationalError>().unbind()
    }
    #[classattr]
    #[pyo3(name = "IntegrityError")]
    fn integrity_error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::IntegrityError>().unbind()
    }
    #[classattr]
    #[pyo3(name = "InternalError")]
    fn internal_error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::InternalError>().unbind()
    }
    #[classattr]
    #[pyo3(name = "ProgrammingError")]
    fn programming_error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<ProgrammingError>().unbind()
    }
    #[classattr]
    #[pyo3(name = "NotSupportedError")]
    fn not_supported_error_class(py: Python<'_>) -> Py<PyType> {
        py.get_type::<errors::NotSupportedError>().unbind()
    }
}

impl Connection {
    /// `commit()`/`rollback()` (`word`) as the transaction control asks.
    fn end_transaction(&self, py: Python<'_>, word: &str) -> PyResult<()> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        match inner.transactions().autocommit {
            Autocommit::Legacy if !g.autocommit()? => inner.run_internal(py, &g, word),
            Autocommit::Legacy | Autocommit::On => Ok(()),
            // As sqlite3: the end is not conditional (an app that ended the transaction
            // with its own COMMIT is told there is none), and the next one opens at once.
            Autocommit::Off => {
                inner.run_internal(py, &g, word)?;
                inner.run_internal(py, &g, ALWAYS_OPEN_BEGIN)
            }
        }
    }

    fn limit(&self, py: Python<'_>, category: i32, limit: i32) -> PyResult<i32> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let raw = g.raw()?;
        // SAFETY: an open handle under its lock; an unknown category returns -1.
        let previous = unsafe { ffi::sqlite3_limit(raw.0, category, limit) };
        if previous < 0 {
            return Err(errors::programming("'category' is out of bounds"));
        }
        Ok(previous)
    }
}

/// A prepared statement, as `connection(sql)` returns it; it has no public methods.
#[pyclass(module = "octodb", frozen)]
pub struct Statement {
    _stmt: Mutex<Option<Arc<stmt::Stmt>>>,
}

#[pymethods]
impl Statement {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        Err(PyTypeError::new_err(
            "cannot create 'octodb.Statement' instances",
        ))
    }
}

/// sqlite3's `timeout` in seconds: negative or NaN is no wait, too long for a Duration is
/// the longest (the engine caps it at what SQLite takes).
fn busy_timeout(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::MAX)
}

/// A feed position from Python: 0 or more (a negative one gave a bare OverflowError).
fn feed_position(after: i64) -> PyResult<u64> {
    u64::try_from(after).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "a change feed position is 0 or more (feed_position() gives the current one); got {after}"
        ))
    })
}

const URI_READ_AS_NAME: &str = "a name beginning with file: is read as a file name, as sqlite3 \
     does, unless connect() is given uri=True or the URI names node= (an octodb node: check its \
     spelling)";
