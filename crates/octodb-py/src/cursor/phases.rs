//! A statement through the engine's phases on a node (`before_prepare`, `before_step`,
//! `after_steps`), sqlite3's checks on SQL text, and the errors of a failed step.

use crate::db::{Db, DbGuard};
use crate::errors;
use crate::ffi_util::detached;
use crate::stmt::{self, Stmt};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use rusqlite::ffi;
use std::sync::Arc;

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

pub(super) fn sql_text<'a>(sql: &'a Bound<'_, PyAny>) -> PyResult<&'a Bound<'a, PyString>> {
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
    let (_, msg) = raw.last_error();
    if g.replicated && msg.starts_with("no such table") && device_not_ready(g) {
        // The app wrote before the device had the primaries' schema (Python walkthrough: a
        // bare "no such table" while sync_status said db_is_ready False).
        return errors::from_code(py, code, &format!("{msg}: {NOT_READY}"));
    }
    errors::from_db(py, raw)
}

const NOT_READY: &str = "this device does not have the primaries' schema yet: it is not ready \
     (sign up or log in with PRAGMA user_signup / user_login where the network asks for it, \
     then wait_until_ready())";

/// A device whose first download is not done (its tables are not there yet).
fn device_not_ready(g: &DbGuard<'_>) -> bool {
    g.engine()
        .ok()
        .filter(|e| e.role() == Some(octodb::Role::Secondary))
        .and_then(|e| e.sync_status().ok())
        .is_some_and(|s| !s.db_is_ready)
}

/// Why a write fails after the transaction read, on a replicated node.
const STALE_SNAPSHOT: &str = "database is locked: this transaction read the database before \
     its first write, and the node's engine has written since (rows from the primaries, or the \
     decision on this connection's own last commit); roll back and run it again. A cursor of \
     this connection still being read keeps that read going: fetch its rows first (fetchall) \
     or commit once after the loop. A transaction that reads then writes should take the write \
     lock first (BEGIN IMMEDIATE)";

/// Prepare `sql` for a cursor: from the cache when possible.
pub(super) fn statement(
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
pub(super) fn before_prepare(
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

pub(super) fn before_step(
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

pub(super) fn after_steps(
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

pub(super) fn changes(g: &DbGuard<'_>) -> i64 {
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
pub(super) fn answer_pragma(
    py: Python<'_>,
    g: &DbGuard<'_>,
    sql: &str,
) -> PyResult<Option<octodb::Rows>> {
    let engine = g.engine()?;
    // SAFETY: the engine call touches no Python object (PRAGMA authorize_* blocks until the
    // node's writer stores the decision, which is why the GIL is released).
    let _inside = g.inside();
    let r = unsafe { detached(py, || engine.answer_pragma(sql)) };
    r.map_err(|e| errors::from_engine(py, e))
}
