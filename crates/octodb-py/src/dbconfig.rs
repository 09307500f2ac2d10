//! Python 3.12's `getconfig`/`setconfig`: SQLite's boolean `sqlite3_db_config` settings.

use crate::db::DbGuard;
use crate::errors;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rusqlite::ffi;

/// The settings sqlite3 exposes (and so the module's `SQLITE_DBCONFIG_*` constants).
pub const CODES: &[(&str, i32)] = crate::codes::named![
    SQLITE_DBCONFIG_DEFENSIVE,
    SQLITE_DBCONFIG_DQS_DDL,
    SQLITE_DBCONFIG_DQS_DML,
    SQLITE_DBCONFIG_ENABLE_FKEY,
    SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER,
    SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION,
    SQLITE_DBCONFIG_ENABLE_QPSG,
    SQLITE_DBCONFIG_ENABLE_TRIGGER,
    SQLITE_DBCONFIG_ENABLE_VIEW,
    SQLITE_DBCONFIG_LEGACY_ALTER_TABLE,
    SQLITE_DBCONFIG_LEGACY_FILE_FORMAT,
    SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
    SQLITE_DBCONFIG_RESET_DATABASE,
    SQLITE_DBCONFIG_TRIGGER_EQP,
    SQLITE_DBCONFIG_TRUSTED_SCHEMA,
    SQLITE_DBCONFIG_WRITABLE_SCHEMA,
];

fn known(op: i32) -> PyResult<i32> {
    if CODES.iter().any(|&(_, code)| code == op) {
        Ok(op)
    } else {
        Err(PyValueError::new_err(format!("unknown config 'op': {op}")))
    }
}

/// The value a replicated node refuses for `op`, with the reason.
fn refused_on_a_node(op: i32, enable: bool) -> Option<&'static str> {
    match (op, enable) {
        (ffi::SQLITE_DBCONFIG_ENABLE_TRIGGER, false) => Some(
            "triggers stay enabled on a replicated node: octodb's rules (row ownership, \
             collision-free ids) are triggers",
        ),
        (ffi::SQLITE_DBCONFIG_RESET_DATABASE, true) => Some(
            "a replicated node cannot be reset from a connection: the engine's state would \
             go with it; start the node from a new file instead",
        ),
        (ffi::SQLITE_DBCONFIG_WRITABLE_SCHEMA, true) => Some(
            "the schema of a replicated node changes only through SQL statements the engine \
             sees (CREATE, ALTER, DROP), not by writing sqlite_schema",
        ),
        _ => None,
    }
}

/// Query the boolean setting `op`.
pub fn get(py: Python<'_>, g: &DbGuard<'_>, op: i32) -> PyResult<bool> {
    let op = known(op)?;
    let raw = g.raw()?;
    let mut current: std::ffi::c_int = 0;
    // SAFETY: an open handle under its lock; the boolean settings take (int, int*), and -1
    // only reads the setting into `current`, which outlives the call.
    let rc = unsafe { ffi::sqlite3_db_config(raw.0, op, -1 as std::ffi::c_int, &mut current) };
    if rc != ffi::SQLITE_OK {
        return Err(crate::cursor::step_error(py, g));
    }
    Ok(current != 0)
}

/// Set the boolean setting `op` (refusing what would bypass a replicated node's engine).
pub fn set(py: Python<'_>, g: &DbGuard<'_>, op: i32, enable: bool) -> PyResult<()> {
    let op = known(op)?;
    if g.replicated {
        if let Some(reason) = refused_on_a_node(op, enable) {
            return Err(errors::NotSupportedError::new_err(reason));
        }
    }
    let raw = g.raw()?;
    let mut actual: std::ffi::c_int = 0;
    // SAFETY: as in `get`; `enable` is 0 or 1.
    let rc = unsafe { ffi::sqlite3_db_config(raw.0, op, enable as std::ffi::c_int, &mut actual) };
    if rc != ffi::SQLITE_OK {
        return Err(crate::cursor::step_error(py, g));
    }
    if (actual != 0) != enable {
        return Err(errors::OperationalError::new_err("Unable to set config"));
    }
    Ok(())
}
