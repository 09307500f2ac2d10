//! The PEP 249 exception hierarchy, and turning SQLite and engine errors into it the way
//! `sqlite3` does (class by result code, `sqlite_errorcode` / `sqlite_errorname` attributes).

use crate::codes;
use crate::ffi_util::RawDb;
use pyo3::exceptions::{PyException, PyMemoryError};
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::PyTypeInfo;
use rusqlite::ffi;

pyo3::create_exception!(octodb, Warning, PyException, "Important warnings.");
pyo3::create_exception!(
    octodb,
    Error,
    PyException,
    "The base class of octodb's errors."
);
pyo3::create_exception!(
    octodb,
    InterfaceError,
    Error,
    "Misuse of the module's interface."
);
pyo3::create_exception!(octodb, DatabaseError, Error, "Errors of the database.");
pyo3::create_exception!(
    octodb,
    DataError,
    DatabaseError,
    "Values out of range or too big."
);
pyo3::create_exception!(
    octodb,
    OperationalError,
    DatabaseError,
    "Errors of the database's operation: locked, I/O, SQL that cannot run, ..."
);
pyo3::create_exception!(
    octodb,
    IntegrityError,
    DatabaseError,
    "A constraint or a replication rule was broken."
);
pyo3::create_exception!(
    octodb,
    InternalError,
    DatabaseError,
    "The database's internal state is inconsistent."
);
pyo3::create_exception!(
    octodb,
    ProgrammingError,
    DatabaseError,
    "The program used the API wrongly: a closed object, bad parameters, ..."
);
pyo3::create_exception!(
    octodb,
    NotSupportedError,
    DatabaseError,
    "A feature the database does not support."
);

/// The exception class for a SQLite result code (primary or extended).
fn class_for(py: Python<'_>, code: i32) -> Bound<'_, PyType> {
    match code & 0xff {
        ffi::SQLITE_INTERNAL | ffi::SQLITE_NOTFOUND => InternalError::type_object(py),
        ffi::SQLITE_NOMEM => PyMemoryError::type_object(py),
        ffi::SQLITE_ERROR
        | ffi::SQLITE_PERM
        | ffi::SQLITE_ABORT
        | ffi::SQLITE_BUSY
        | ffi::SQLITE_LOCKED
        | ffi::SQLITE_READONLY
        | ffi::SQLITE_INTERRUPT
        | ffi::SQLITE_IOERR
        | ffi::SQLITE_FULL
        | ffi::SQLITE_CANTOPEN
        | ffi::SQLITE_PROTOCOL
        | ffi::SQLITE_EMPTY
        | ffi::SQLITE_SCHEMA => OperationalError::type_object(py),
        ffi::SQLITE_TOOBIG => DataError::type_object(py),
        ffi::SQLITE_CONSTRAINT | ffi::SQLITE_MISMATCH => IntegrityError::type_object(py),
        ffi::SQLITE_MISUSE | ffi::SQLITE_RANGE => InterfaceError::type_object(py),
        _ => DatabaseError::type_object(py),
    }
}

/// An exception for SQLite's `code` with `msg`, carrying the code and its name.
pub fn from_code(py: Python<'_>, code: i32, msg: &str) -> PyErr {
    if code & 0xff == ffi::SQLITE_NOMEM {
        return PyMemoryError::new_err(msg.to_string());
    }
    with_code(class_for(py, code), code, msg)
}

/// An exception of `class` with `msg`, carrying SQLite's `code` and its name.
pub fn with_code(class: Bound<'_, PyType>, code: i32, msg: &str) -> PyErr {
    let made = class.call1((msg,)).and_then(|exc| {
        exc.setattr("sqlite_errorcode", code)?;
        exc.setattr("sqlite_errorname", codes::error_name(code))?;
        Ok(exc)
    });
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// The error SQLite last reported on `db`.
pub fn from_db(py: Python<'_>, db: RawDb) -> PyErr {
    let (code, msg) = db.last_error();
    from_code(py, code, &msg)
}

/// An engine error, with the class a Python programmer would look for.
pub fn from_engine(py: Python<'_>, e: octodb::Error) -> PyErr {
    use octodb::Error as E;
    match e {
        E::Sqlite(rusqlite::Error::SqliteFailure(f, msg)) => {
            let msg = msg.unwrap_or_else(|| {
                // SAFETY: sqlite3_errstr returns a pointer to a static, NUL-terminated string.
                unsafe { crate::ffi_util::c_text(ffi::sqlite3_errstr(f.extended_code)) }
            });
            from_code(py, f.extended_code, &msg)
        }
        E::Uri(_) | E::Pragma { .. } => ProgrammingError::new_err(e.to_string()),
        E::Rule(_) => IntegrityError::new_err(e.to_string()),
        // As a read-only database refuses a write: SQLite's own class and code for it.
        E::NotPermitted(msg) => {
            with_code(py.get_type::<OperationalError>(), ffi::SQLITE_AUTH, &msg)
        }
        // Nothing applied, safe to run again: SQLite's code for "try again", which apps
        // already retry on.
        E::Unavailable(msg) => with_code(py.get_type::<OperationalError>(), ffi::SQLITE_BUSY, &msg),
        // sqlite3 reports a file it cannot read as a database (SQLITE_NOTADB) so.
        E::Corrupt(..) | E::Crypto(_) | E::WrongKey { .. } => DatabaseError::new_err(e.to_string()),
        _ => OperationalError::new_err(e.to_string()),
    }
}

pub fn programming(msg: impl Into<String>) -> PyErr {
    ProgrammingError::new_err(msg.into())
}

pub fn closed_db() -> PyErr {
    programming("Cannot operate on a closed database.")
}

pub fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    for (name, class) in classes(py) {
        m.add(name, class)?;
    }
    Ok(())
}

/// Every exception class by name, as the module and `Connection` expose them.
pub fn classes(py: Python<'_>) -> [(&'static str, Bound<'_, PyType>); 10] {
    [
        ("Warning", Warning::type_object(py)),
        ("Error", Error::type_object(py)),
        ("InterfaceError", InterfaceError::type_object(py)),
        ("DatabaseError", DatabaseError::type_object(py)),
        ("DataError", DataError::type_object(py)),
        ("OperationalError", OperationalError::type_object(py)),
        ("IntegrityError", IntegrityError::type_object(py)),
        ("InternalError", InternalError::type_object(py)),
        ("ProgrammingError", ProgrammingError::type_object(py)),
        ("NotSupportedError", NotSupportedError::type_object(py)),
    ]
}
