//! Small wrappers around raw SQLite pointers: sending them into `Python::detach` closures and
//! reading C strings.

use rusqlite::ffi;
use std::ffi::{c_char, CStr};

/// A SQLite connection handle. Valid while the `Db` that owns it is open; every use happens
/// while holding that `Db`'s lock (see `db.rs`), which is what makes moving it across threads
/// sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDb(pub *mut ffi::sqlite3);

// SAFETY: a SQLite handle may be used from any thread provided uses never overlap; octodb-py
// serializes every use of a handle through its `Db` lock.
unsafe impl Send for RawDb {}

impl RawDb {
    /// The extended code and message of SQLite's last error on this handle.
    pub fn last_error(self) -> (i32, String) {
        if self.0.is_null() {
            return (ffi::SQLITE_MISUSE, "the database is closed".into());
        }
        // SAFETY: the handle is open (the caller holds its Db lock); both calls only read the
        // handle's error state, and the message is copied before any other call can change it.
        unsafe {
            (
                ffi::sqlite3_extended_errcode(self.0),
                c_text(ffi::sqlite3_errmsg(self.0)),
            )
        }
    }
}

/// A prepared statement handle, under the same rule as [`RawDb`].
#[derive(Clone, Copy, Debug)]
pub struct RawStmt(pub *mut ffi::sqlite3_stmt);

// SAFETY: as for RawDb: statements are only used while their Db lock is held.
unsafe impl Send for RawStmt {}

/// Copy a C string SQLite returned (NULL gives ""); invalid UTF-8 is replaced.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the duration of the call.
pub unsafe fn c_text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The bytes of a C string SQLite returned, or None for NULL.
///
/// # Safety
/// As for [`c_text`]; the slice must not outlive the string.
pub unsafe fn c_bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// Run `f` with the GIL released, for engine calls that may block (waiting for the node's
/// writer thread, for a lock, for the network). Unlike `Python::detach`, `f` may use values
/// that are not `Send` (the engine connection is not `Sync`).
///
/// # Safety
/// `f` must not touch any Python object: it runs without the GIL.
pub unsafe fn detached<T>(py: pyo3::Python<'_>, f: impl FnOnce() -> T) -> T {
    /// Carries a value into and out of the closure `Python::detach` runs.
    struct SameThread<V>(V);
    // SAFETY: Python::detach runs its closure on the calling thread, so what it carries never
    // reaches another thread; the caller guarantees no Python object is touched in it.
    unsafe impl<V> Send for SameThread<V> {}
    let job = SameThread(f);
    let out = py.detach(move || {
        let job = job;
        SameThread((job.0)())
    });
    out.0
}

/// A raw pointer carried into a `Python::detach` closure, which runs on this same thread.
#[derive(Clone, Copy)]
pub struct Detached<T>(pub *mut T);

// SAFETY: `Python::detach` runs its closure on the calling thread; the pointer never reaches
// another thread, and whoever made it keeps what it points to alive and locked meanwhile.
unsafe impl<T> Send for Detached<T> {}

/// Where each of the first `n` result columns of `stmt` comes from, as SQLite says (None for
/// an expression); see `octodb::Connection::correct_returned_ids`.
pub fn column_origins(stmt: RawStmt, n: usize) -> Vec<Option<octodb::api::ColumnOrigin>> {
    let text = |p: *const c_char| -> Option<String> {
        // SAFETY: SQLite's column metadata strings live as long as the statement, which the
        // caller holds (under its Db lock); the text is copied at once.
        let bytes = unsafe { c_bytes(p) }?;
        std::str::from_utf8(bytes).ok().map(str::to_string)
    };
    (0..n as std::ffi::c_int)
        .map(|i| {
            // SAFETY: `stmt` is a live prepared statement and `i` one of its result columns.
            let (database, table, column) = unsafe {
                (
                    ffi::sqlite3_column_database_name(stmt.0, i),
                    ffi::sqlite3_column_table_name(stmt.0, i),
                    ffi::sqlite3_column_origin_name(stmt.0, i),
                )
            };
            Some(octodb::api::ColumnOrigin {
                database: text(database)?,
                table: text(table)?,
                column: text(column)?,
            })
        })
        .collect()
}
