//! One open database, shared by a `Connection` and the cursors, statements and blobs made from
//! it. Everything that touches the SQLite handle or the engine connection does so while holding
//! the `Db` lock: a reentrant lock, so that a Python callback running inside `sqlite3_step`
//! (a user function, a converter, a progress handler) may use the same connection again on
//! the same thread, while another thread waits. The lock is taken with the GIL released when
//! it is contended, and SQLite calls that may block run with the GIL released too: an engine
//! worker thread calling into Python (an authorization callback) can always get the GIL.

use crate::errors;
use crate::ffi_util::RawDb;
use crate::stmt::{Stmt, StmtCache};
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};
use pyo3::prelude::*;
use std::cell::{Cell, Ref, RefCell};
use std::sync::{Arc, Mutex, Weak};

pub type DbGuard<'a> = ReentrantMutexGuard<'a, DbState>;

pub struct Db {
    state: ReentrantMutex<DbState>,
    /// The handle for `interrupt()`, which must not wait for the lock (the statement it stops
    /// holds it); cleared when the database closes.
    interrupt_handle: Mutex<RawDb>,
}

/// What the lock protects.
pub struct DbState {
    engine: RefCell<Option<octodb::Connection>>,
    raw: Cell<RawDb>,
    /// A primary or a device: statements go through the engine's phases.
    pub replicated: bool,
    pub role: Option<octodb::Role>,
    pub cache: RefCell<StmtCache>,
    /// Every statement prepared on this database, finalized when it closes.
    live: RefCell<Vec<Weak<Stmt>>>,
    /// Open blobs, closed with the database.
    blobs: RefCell<Vec<Weak<crate::blob::BlobHandle>>>,
    /// Contexts of the authorizer, progress handler and trace callback now registered.
    pub hooks: RefCell<crate::hooks::Hooks>,
    /// How many calls into SQLite (or the engine) are running on this database now: a Python
    /// callback inside one must not close the database under it.
    busy: Cell<u32>,
}

/// Marks a call into SQLite in progress (see `DbState::inside`).
pub struct Inside<'a>(&'a Cell<u32>);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Db {
    pub fn new(engine: octodb::Connection, cache_size: usize) -> Arc<Db> {
        // SAFETY: the handle stays valid while `engine` lives, which the Db owns until close();
        // the Db's lock serializes every use, and close() finalizes our statements first.
        let raw = RawDb(unsafe { engine.handle() });
        let role = engine.role();
        Arc::new(Db {
            state: ReentrantMutex::new(DbState {
                engine: RefCell::new(Some(engine)),
                raw: Cell::new(raw),
                replicated: role.is_some(),
                role,
                cache: RefCell::new(StmtCache::new(cache_size)),
                live: RefCell::new(Vec::new()),
                blobs: RefCell::new(Vec::new()),
                hooks: RefCell::new(Default::default()),
                busy: Cell::new(0),
            }),
            interrupt_handle: Mutex::new(raw),
        })
    }

    /// Take the lock, waiting with the GIL released if another thread holds it.
    pub fn lock<'a>(&'a self, py: Python<'_>) -> DbGuard<'a> {
        loop {
            if let Some(g) = self.state.try_lock() {
                return g;
            }
            // Wait for the holder to let go without keeping the GIL from it, then try again
            // with the GIL (another waiter may win the race; then we wait once more).
            py.detach(|| drop(self.state.lock()));
        }
    }

    /// Stop the statement running on this database, from any thread.
    pub fn interrupt(&self) -> bool {
        let h = self
            .interrupt_handle
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if h.0.is_null() {
            return false;
        }
        // SAFETY: the handle is open: close() clears it under this same mutex before closing.
        unsafe { rusqlite::ffi::sqlite3_interrupt(h.0) };
        true
    }

    /// Close the database now: finalize statements, close blobs, drop the engine connection
    /// (with the GIL released: a node may wait for its threads, which may need the GIL).
    pub fn close(&self, py: Python<'_>) -> PyResult<()> {
        let g = self.lock(py);
        if g.raw.get().0.is_null() {
            return Ok(());
        }
        if g.busy.get() > 0 {
            // A callback (function, converter, trace...) of a statement still running: its
            // statement cannot be finalized under it.
            return Err(errors::OperationalError::new_err(
                "cannot close the database from a callback of one of its own running statements",
            ));
        }
        let stmts = g.live.take();
        for s in stmts.iter().filter_map(Weak::upgrade) {
            s.finalize(&g);
        }
        let cached = std::mem::take(&mut *g.cache.borrow_mut());
        drop(cached);
        let blobs = g.blobs.take();
        for b in blobs.iter().filter_map(Weak::upgrade) {
            b.close(&g);
        }
        *self
            .interrupt_handle
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = RawDb(std::ptr::null_mut());
        g.raw.set(RawDb(std::ptr::null_mut()));
        let engine = g.engine.borrow_mut().take();
        py.detach(move || drop(engine));
        // After the handle is gone, SQLite can no longer call the hooks' contexts.
        let hooks = std::mem::take(&mut *g.hooks.borrow_mut());
        drop(hooks);
        Ok(())
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if !self.state.get_mut().raw.get().0.is_null() {
            // Nothing runs on a database nobody references: close() cannot refuse here.
            let _ = Python::attach(|py| self.close(py));
        }
    }
}

impl DbState {
    /// The SQLite handle, or the error of a closed database.
    pub fn raw(&self) -> PyResult<RawDb> {
        let r = self.raw.get();
        if r.0.is_null() {
            return Err(errors::closed_db());
        }
        Ok(r)
    }

    /// Mark a call into SQLite or the engine that may call back into Python.
    pub fn inside(&self) -> Inside<'_> {
        self.busy.set(self.busy.get() + 1);
        Inside(&self.busy)
    }

    pub fn is_open(&self) -> bool {
        !self.raw.get().0.is_null()
    }

    /// The engine connection (for octodb's PRAGMAs, status, events and the replication phases).
    pub fn engine(&self) -> PyResult<Ref<'_, octodb::Connection>> {
        Ref::filter_map(self.engine.borrow(), Option::as_ref).map_err(|_| errors::closed_db())
    }

    /// Remember a new statement so that close() can finalize it.
    pub fn track(&self, s: &Arc<Stmt>) {
        let mut live = self.live.borrow_mut();
        if live.len() >= 64 && live.len().is_power_of_two() {
            live.retain(|w| w.strong_count() > 0);
        }
        live.push(Arc::downgrade(s));
    }

    pub fn track_blob(&self, b: &Arc<crate::blob::BlobHandle>) {
        let mut blobs = self.blobs.borrow_mut();
        blobs.retain(|w| w.strong_count() > 0);
        blobs.push(Arc::downgrade(b));
    }

    /// Whether no transaction is open.
    pub fn autocommit(&self) -> PyResult<bool> {
        let raw = self.raw()?;
        // SAFETY: the handle is open and we hold its lock.
        Ok(unsafe { rusqlite::ffi::sqlite3_get_autocommit(raw.0) } != 0)
    }
}
