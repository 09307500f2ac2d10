//! The Python module `octodb`: Python's `sqlite3` API (PEP 249 and sqlite3's extras) on the
//! octodb engine, plus what apps of a replicated database need (status, events, the
//! backend's authorization callbacks). The package around it (python/octodb) adds the pure
//! Python parts: `connect`, the DB-API constructors, default adapters, `iterdump`.

/// octodb's threads hand rows to one another all the time (app thread, network tasks, the
/// writer), so much memory is freed on another thread than the one that allocated it; glibc's
/// allocator then contends on its arena locks (14% of all CPU in the streaming benchmark).
/// mimalloc frees across threads without a lock. Built without transparent huge pages
/// (`no_thp`), which otherwise cost an idle device ~15 MB of RSS. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod adapters;
mod auth;
mod backup;
mod blob;
mod broker;
mod broker_codec;
mod callback;
mod codes;
mod columns;
mod connection;
mod cursor;
mod db;
mod dbconfig;
mod errors;
mod events;
mod feed;
mod ffi_util;
mod functions;
mod hooks;
mod logging_bridge;
mod node_files;
mod params;
mod row;
mod stmt;
mod tasks;
mod transactions;
mod values;

use pyo3::prelude::*;
use rusqlite::ffi;

/// complete_statement(statement): whether `statement` ends with a complete SQL statement.
#[pyfunction]
fn complete_statement(statement: &str) -> PyResult<bool> {
    Ok(octodb::api::sql_text::is_complete(statement))
}

/// A device's CREATE TABLE as the primaries wrote it (for `iterdump`: restorable anywhere).
#[pyfunction]
fn _as_primaries_wrote_it(sql: &str) -> String {
    octodb::store::schema::as_primaries_wrote_it(sql)
}

/// enable_shared_cache(enable): SQLite's (deprecated) shared cache for later connections.
#[pyfunction]
fn enable_shared_cache(enable: bool) -> PyResult<()> {
    // SAFETY: a process-wide setting SQLite reads when connections open.
    let rc = unsafe { ffi::sqlite3_enable_shared_cache(enable as i32) };
    if rc != ffi::SQLITE_OK {
        return Err(errors::OperationalError::new_err(
            "Changing the shared_cache flag failed",
        ));
    }
    Ok(())
}

#[pymodule(gil_used = true)]
fn _octodb(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<connection::Connection>()?;
    m.add_class::<cursor::Cursor>()?;
    m.add_class::<row::Row>()?;
    m.add_class::<blob::Blob>()?;
    m.add_class::<connection::Statement>()?;
    m.add_class::<events::Event>()?;
    m.add_class::<events::EventStream>()?;
    m.add_class::<events::Listener>()?;
    errors::add_to_module(m)?;
    broker::add_to_module(m)?;
    tasks::add_to_module(m)?;
    node_files::add_to_module(m)?;
    adapters::add_to_module(m)?;
    m.add_function(wrap_pyfunction!(complete_statement, m)?)?;
    m.add_function(wrap_pyfunction!(_as_primaries_wrote_it, m)?)?;
    m.add_function(wrap_pyfunction!(enable_shared_cache, m)?)?;
    m.add_function(wrap_pyfunction!(callback::enable_callback_tracebacks, m)?)?;
    let constants = codes::RESULT_CODES.iter().chain(codes::OTHER_CONSTANTS);
    for (name, value) in constants.chain(dbconfig::CODES) {
        m.add(*name, *value)?;
    }
    m.add(
        "LEGACY_TRANSACTION_CONTROL",
        transactions::LEGACY_TRANSACTION_CONTROL,
    )?;
    m.add("PARSE_DECLTYPES", cursor::PARSE_DECLTYPES)?;
    m.add("PARSE_COLNAMES", cursor::PARSE_COLNAMES)?;
    // SAFETY: sqlite3_libversion returns a static NUL-terminated string.
    let version = unsafe { ffi_util::c_text(ffi::sqlite3_libversion()) };
    m.add("sqlite_version", version)?;
    // The version of sqlite3's module API this one follows.
    m.add("version", "2.6.0")?;
    // SAFETY: a constant of the linked SQLite.
    let threadsafe = unsafe { ffi::sqlite3_threadsafe() };
    // sqlite3's mapping of SQLite's threading mode to DB-API's levels (connections are
    // additionally serialized by the module's own lock).
    m.add("threadsafety", if threadsafe == 0 { 0 } else { 3 })?;
    m.add("octodb_version", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
