//! The authorizer, progress handler and trace callback. SQLite keeps only a pointer to each
//! one's context (there is no destructor in these APIs), so the `Db` keeps the contexts and
//! drops one only after SQLite stopped using it.

use crate::callback::{report, with_gil};
use crate::connection::Connection;
use crate::errors;
use crate::ffi_util::c_bytes;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};
use rusqlite::ffi;
use std::ffi::{c_char, c_int, c_uint, c_void};

struct Ctx {
    callable: Py<PyAny>,
    /// Trace: leave out the engine's own statements (its tables and triggers, `_octo_*`): on
    /// a node they outnumbered the app's, and wrote the outbox's change sets into app logs.
    engine_hidden: bool,
}

/// The contexts SQLite points to now.
#[derive(Default)]
pub struct Hooks {
    authorizer: Option<Box<Ctx>>,
    progress: Option<Box<Ctx>>,
    trace: Option<Box<Ctx>>,
}

fn new_ctx(callable: &Bound<'_, PyAny>, engine_hidden: bool) -> Option<Box<Ctx>> {
    (!callable.is_none()).then(|| {
        Box::new(Ctx {
            callable: callable.clone().unbind(),
            engine_hidden,
        })
    })
}

fn ctx_ptr(ctx: &Option<Box<Ctx>>) -> *mut c_void {
    ctx.as_ref()
        .map_or(std::ptr::null_mut(), |b| &**b as *const Ctx as *mut c_void)
}

/// A callback argument SQLite gave as a C string, as str or None.
fn text_arg(py: Python<'_>, p: *const c_char) -> Py<PyAny> {
    // SAFETY: SQLite passes NULL or a NUL-terminated string valid during the callback.
    match unsafe { c_bytes(p) } {
        Some(b) => PyString::new(py, &String::from_utf8_lossy(b))
            .into_any()
            .unbind(),
        None => py.None(),
    }
}

unsafe extern "C" fn authorize(
    p: *mut c_void,
    action: c_int,
    a1: *const c_char,
    a2: *const c_char,
    a3: *const c_char,
    a4: *const c_char,
) -> c_int {
    with_gil(ffi::SQLITE_DENY, |py| {
        // SAFETY: `p` is the Ctx the Db keeps while it is registered.
        let f = unsafe { &*(p as *const Ctx) }.callable.bind(py).clone();
        let args = (
            action,
            text_arg(py, a1),
            text_arg(py, a2),
            text_arg(py, a3),
            text_arg(py, a4),
        );
        match f.call1(args) {
            Ok(r) if r.is_instance_of::<PyInt>() => match r.extract::<c_int>() {
                Ok(code) => code,
                Err(e) => {
                    report(py, e, &f);
                    ffi::SQLITE_DENY
                }
            },
            Ok(_) => ffi::SQLITE_DENY,
            Err(e) => {
                report(py, e, &f);
                ffi::SQLITE_DENY
            }
        }
    })
}

unsafe extern "C" fn progress(p: *mut c_void) -> c_int {
    with_gil(1, |py| {
        // SAFETY: as for `authorize`.
        let f = unsafe { &*(p as *const Ctx) }.callable.bind(py).clone();
        match f.call0().and_then(|r| r.is_truthy()) {
            Ok(stop) => stop as c_int,
            Err(e) => {
                report(py, e, &f);
                1
            }
        }
    })
}

unsafe extern "C" fn trace(
    _mask: c_uint,
    p: *mut c_void,
    stmt: *mut c_void,
    sql: *mut c_void,
) -> c_int {
    with_gil(0, |py| {
        // SAFETY: as for `authorize`; `stmt` is the statement starting and `sql` its
        // unexpanded text (or a trigger comment), both valid during the callback.
        let ctx = unsafe { &*(p as *const Ctx) };
        let unexpanded = unsafe { c_bytes(sql as *const c_char) }.unwrap_or_default();
        if ctx.engine_hidden && unexpanded.windows(6).any(|w| w == b"_octo_") {
            return 0;
        }
        let f = ctx.callable.bind(py).clone();
        let text = if unexpanded.starts_with(b"--") {
            String::from_utf8_lossy(unexpanded).into_owned()
        } else {
            // SAFETY: `stmt` is valid; the expanded text is copied then freed once.
            let expanded = unsafe { ffi::sqlite3_expanded_sql(stmt as *mut ffi::sqlite3_stmt) };
            if expanded.is_null() {
                let e = errors::DataError::new_err(
                    "Expanded SQL string exceeds the maximum string length",
                );
                report(py, e, &f);
                String::from_utf8_lossy(unexpanded).into_owned()
            } else {
                // SAFETY: `expanded` is a NUL-terminated string SQLite allocated for us.
                let t = unsafe { crate::ffi_util::c_text(expanded) };
                unsafe { ffi::sqlite3_free(expanded as *mut c_void) };
                t
            }
        };
        if let Err(e) = f.call1((text,)) {
            report(py, e, &f);
        }
        0
    })
}

/// Which hook to set.
pub enum Hook {
    Authorizer,
    Progress(c_int),
    Trace,
}

/// Install (or with None, remove) a hook on the connection's database.
pub fn set(
    conn: &Connection,
    py: Python<'_>,
    hook: Hook,
    callable: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let inner = conn.checked(py)?;
    let g = inner.db.lock(py);
    let raw = g.raw()?;
    let ctx = new_ctx(callable, g.replicated && matches!(hook, Hook::Trace));
    let p = ctx_ptr(&ctx);
    let old = {
        let mut hooks = g.hooks.borrow_mut();
        // SAFETY (each arm): an open handle under its lock; `p` is null or the Ctx stored
        // just below, which stays alive until this hook is replaced or the database closes.
        match hook {
            Hook::Authorizer => {
                if g.replicated {
                    return Err(errors::NotSupportedError::new_err(
                        "set_authorizer is not available on a replicated node: the engine's replication rules use SQLite's authorizer; use it on a plain local database",
                    ));
                }
                let cb = (!p.is_null())
                    .then_some(authorize as unsafe extern "C" fn(_, _, _, _, _, _) -> _);
                unsafe { ffi::sqlite3_set_authorizer(raw.0, cb, p) };
                std::mem::replace(&mut hooks.authorizer, ctx)
            }
            Hook::Progress(n) => {
                let cb = (!p.is_null()).then_some(progress as unsafe extern "C" fn(_) -> _);
                unsafe { ffi::sqlite3_progress_handler(raw.0, n, cb, p) };
                std::mem::replace(&mut hooks.progress, ctx)
            }
            Hook::Trace => {
                let (mask, cb) = if p.is_null() {
                    (0, None)
                } else {
                    (
                        ffi::SQLITE_TRACE_STMT as c_uint,
                        Some(trace as unsafe extern "C" fn(_, _, _, _) -> _),
                    )
                };
                unsafe { ffi::sqlite3_trace_v2(raw.0, mask, cb, p) };
                std::mem::replace(&mut hooks.trace, ctx)
            }
        }
    };
    // SQLite now points to the new context (or none): the old one may go.
    drop(old);
    Ok(())
}
