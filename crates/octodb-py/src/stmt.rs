//! Prepared statements: preparing with sqlite3's checks, stepping with the GIL released, and
//! the per-connection LRU cache (`cached_statements`).

use crate::db::{Db, DbGuard, DbState};
use crate::errors;
use crate::ffi_util::{c_text, RawStmt};
use pyo3::prelude::*;
use rusqlite::ffi;
use std::collections::HashMap;
use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One prepared statement. Its handle is only used while its database's lock is held.
pub struct Stmt {
    raw: AtomicPtr<ffi::sqlite3_stmt>,
    db: Weak<Db>,
    /// A cursor is reading rows from it; another execution must prepare its own.
    pub in_use: AtomicBool,
    /// INSERT, UPDATE, DELETE or REPLACE: counted in `rowcount`, opens the implicit transaction.
    pub is_dml: bool,
    /// `description` built for it, with the re-prepare count it was built at.
    pub description: Mutex<Option<(i32, Py<PyAny>)>>,
}

impl Stmt {
    /// The handle; null once finalized (its database was closed).
    pub fn raw(&self, _g: &DbGuard<'_>) -> PyResult<RawStmt> {
        let p = self.raw.load(Ordering::Relaxed);
        if p.is_null() {
            return Err(errors::closed_db());
        }
        Ok(RawStmt(p))
    }

    pub fn finalize(&self, _g: &DbState) {
        let p = self.raw.swap(std::ptr::null_mut(), Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: `p` came from sqlite3_prepare_v3 and is finalized exactly once (the swap);
            // the caller holds the database lock.
            unsafe { ffi::sqlite3_finalize(p) };
        }
    }

    /// Reset it for the next execution and let others use it.
    pub fn release(&self, g: &DbGuard<'_>) {
        if let Ok(r) = self.raw(g) {
            // SAFETY: an open statement, under the lock.
            unsafe { ffi::sqlite3_reset(r.0) };
        }
        self.in_use.store(false, Ordering::Relaxed);
    }

    pub fn readonly(&self, g: &DbGuard<'_>) -> bool {
        // SAFETY: an open statement, under the lock.
        self.raw(g)
            .map(|r| unsafe { ffi::sqlite3_stmt_readonly(r.0) } != 0)
            .unwrap_or(true)
    }

    pub fn column_count(&self, g: &DbGuard<'_>) -> i32 {
        // SAFETY: an open statement, under the lock.
        self.raw(g)
            .map(|r| unsafe { ffi::sqlite3_column_count(r.0) })
            .unwrap_or(0)
    }

    /// How many times SQLite re-prepared it (after schema changes): a cached description
    /// built at another count may be stale.
    pub fn reprepare_count(&self, g: &DbGuard<'_>) -> i32 {
        // SAFETY: an open statement, under the lock.
        self.raw(g)
            .map(|r| unsafe { ffi::sqlite3_stmt_status(r.0, ffi::SQLITE_STMTSTATUS_REPREPARE, 0) })
            .unwrap_or(0)
    }
}

impl Drop for Stmt {
    fn drop(&mut self) {
        let p = *self.raw.get_mut();
        if p.is_null() {
            return;
        }
        // A database that is gone finalized its statements while closing; if it raced us
        // there is nothing safe left to do but leak this one.
        if let Some(db) = self.db.upgrade() {
            Python::attach(|py| {
                let g = db.lock(py);
                self.finalize(&g);
            });
        }
    }
}

/// Step with the GIL released (the step may wait for a lock, or run long); callbacks inside
/// it take the GIL back themselves.
pub fn step(py: Python<'_>, g: &DbGuard<'_>, stmt: RawStmt) -> c_int {
    let _inside = g.inside();
    // SAFETY: the caller holds the statement's database lock (`g`) for the whole call.
    py.detach(move || {
        let s = stmt;
        unsafe { ffi::sqlite3_step(s.0) }
    })
}

/// Prepare the first statement of `sql`; None when it holds no statement (blank or comments).
/// More than one statement is refused as sqlite3 refuses it.
pub fn prepare(
    py: Python<'_>,
    g: &DbGuard<'_>,
    db: &Arc<Db>,
    sql: &str,
    persistent: bool,
    sqlite_error: &dyn Fn() -> PyErr,
) -> PyResult<Option<Arc<Stmt>>> {
    let (rc, p, tail) = prepare_raw(py, g, sql, persistent)?;
    if rc != ffi::SQLITE_OK {
        return Err(sqlite_error());
    }
    if p.is_null() {
        return Ok(None);
    }
    let stmt = Arc::new(Stmt {
        raw: AtomicPtr::new(p),
        db: Arc::downgrade(db),
        in_use: AtomicBool::new(false),
        is_dml: is_dml(sql),
        description: Mutex::new(None),
    });
    g.track(&stmt);
    if !only_comments(&sql.as_bytes()[tail.min(sql.len())..]) {
        return Err(errors::programming(
            "You can only execute one statement at a time.",
        ));
    }
    Ok(Some(stmt))
}

/// `sqlite3_prepare_v3` on `sql` with the GIL released: the statement handle (or null) and
/// the byte offset where the first statement ends.
pub fn prepare_raw(
    py: Python<'_>,
    g: &DbGuard<'_>,
    sql: &str,
    persistent: bool,
) -> PyResult<(c_int, *mut ffi::sqlite3_stmt, usize)> {
    let db = g.raw()?;
    // The authorizer runs while a statement is prepared.
    let _inside = g.inside();
    let flags = if persistent {
        ffi::SQLITE_PREPARE_PERSISTENT
    } else {
        0
    };
    let len = sql.len().min(c_int::MAX as usize) as c_int;
    let start = sql.as_ptr() as usize;
    let text = crate::ffi_util::Detached(sql.as_ptr() as *mut c_char);
    let (rc, stmt, tail) = py.detach(move || {
        let (db, text) = (db, text);
        let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
        let mut tail: *const c_char = std::ptr::null();
        // SAFETY: `db` is open and locked by the caller; the text pointer and length describe
        // `sql`, which outlives this call; SQLite writes the two out-pointers.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db.0,
                text.0 as *const c_char,
                len,
                flags,
                &mut stmt,
                &mut tail,
            )
        };
        (rc, crate::ffi_util::RawStmt(stmt), tail as usize)
    });
    let tail = if tail == 0 { start + sql.len() } else { tail };
    Ok((rc, stmt.0, tail.saturating_sub(start)))
}

/// Whether the first keyword (after blanks and comments) is INSERT, UPDATE, DELETE or REPLACE.
pub fn is_dml(sql: &str) -> bool {
    let rest = skip_blank(sql.as_bytes());
    let word: Vec<u8> = rest
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .map(u8::to_ascii_uppercase)
        .collect();
    matches!(
        word.as_slice(),
        b"INSERT" | b"UPDATE" | b"DELETE" | b"REPLACE"
    )
}

/// `s` after leading whitespace and comments (an unclosed `/*` runs to the end).
pub fn skip_blank(mut s: &[u8]) -> &[u8] {
    loop {
        match s {
            [b' ' | b'\t' | b'\n' | b'\r' | b'\x0c', rest @ ..] => s = rest,
            [b'-', b'-', rest @ ..] => {
                s = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&[][..], |i| &rest[i + 1..])
            }
            [b'/', b'*', rest @ ..] => {
                s = rest
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(&[][..], |i| &rest[i + 2..])
            }
            _ => return s,
        }
    }
}

fn only_comments(s: &[u8]) -> bool {
    skip_blank(s).is_empty()
}

/// Whether `sql` may be one of octodb's PRAGMAs (checked by the engine only then).
pub fn maybe_pragma(sql: &str) -> bool {
    let rest = skip_blank(sql.as_bytes());
    rest.len() > 6 && rest[..6].eq_ignore_ascii_case(b"PRAGMA")
}

/// The LRU cache of a connection's statements, keyed by SQL text.
#[derive(Default)]
pub struct StmtCache {
    map: HashMap<String, (Arc<Stmt>, u64)>,
    tick: u64,
    capacity: usize,
}

impl StmtCache {
    pub fn new(capacity: usize) -> StmtCache {
        StmtCache {
            capacity,
            ..Default::default()
        }
    }

    /// A cached statement for `sql` that no cursor is reading from.
    pub fn get(&mut self, sql: &str) -> Option<Arc<Stmt>> {
        self.tick += 1;
        let tick = self.tick;
        let (stmt, used) = self.map.get_mut(sql)?;
        if stmt.in_use.load(Ordering::Relaxed) {
            return None;
        }
        *used = tick;
        Some(stmt.clone())
    }

    /// Keep `stmt` for `sql`, evicting the least recently used one when full. Returns what
    /// was evicted, to be dropped once the cache is no longer borrowed.
    pub fn put(&mut self, sql: &str, stmt: &Arc<Stmt>) -> Option<Arc<Stmt>> {
        if self.capacity == 0 {
            return None;
        }
        let mut evicted = None;
        if self.map.len() >= self.capacity && !self.map.contains_key(sql) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                evicted = self.map.remove(&k).map(|(s, _)| s);
            }
        }
        let previous = self
            .map
            .insert(sql.to_string(), (stmt.clone(), self.tick))
            .map(|(s, _)| s);
        evicted.or(previous)
    }
}

/// The name of column `i` as SQLite gives it.
pub fn column_name(stmt: RawStmt, i: c_int) -> String {
    // SAFETY: an open statement under its lock; the name is copied at once.
    unsafe { c_text(ffi::sqlite3_column_name(stmt.0, i)) }
}

/// The declared type of column `i`, if it comes straight from a table column.
pub fn column_decltype(stmt: RawStmt, i: c_int) -> Option<String> {
    // SAFETY: as above.
    let p = unsafe { ffi::sqlite3_column_decltype(stmt.0, i) };
    // SAFETY: NULL or a NUL-terminated string valid until the next call on the statement.
    (!p.is_null()).then(|| unsafe { c_text(p) })
}
