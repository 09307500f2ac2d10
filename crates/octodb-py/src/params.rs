//! Binding a statement's parameters from a sequence (`?`) or a mapping (`:name`), with the
//! errors sqlite3 gives.

use crate::adapters;
use crate::errors;
use crate::ffi_util::{c_bytes, RawStmt};
use crate::values::{self, Bind};
use pyo3::exceptions::PyLookupError;
use pyo3::ffi as pyffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use rusqlite::ffi;
use std::ffi::c_int;

/// Bind `params` (None: no parameters) to `stmt`, whose database the caller holds locked.
pub fn bind_all(py: Python<'_>, stmt: RawStmt, params: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    // SAFETY: an open statement under its lock.
    let needed = unsafe { ffi::sqlite3_bind_parameter_count(stmt.0) };
    let Some(params) = params else {
        return check_count(needed, 0);
    };
    let positional = params.is_exact_instance_of::<PyTuple>()
        || params.is_exact_instance_of::<PyList>()
        || (!params.is_instance_of::<PyDict>()
            // SAFETY: `params` is a live object; the check only reads its type.
            && unsafe { pyffi::PySequence_Check(params.as_ptr()) } != 0);
    if positional {
        let n = params.len()?;
        check_count(needed, n)?;
        for i in 0..n {
            let item = params.get_item(i)?;
            bind_one(py, stmt, i as c_int + 1, &item, &format!("{}", i + 1))?;
        }
        Ok(())
    } else if let Ok(map) = params.cast::<PyDict>() {
        for i in 1..=needed {
            // SAFETY: as above; the name is copied before the next call on the statement.
            let name = unsafe { c_bytes(ffi::sqlite3_bind_parameter_name(stmt.0, i)) }
                .map(|b| String::from_utf8_lossy(b).into_owned());
            let Some(name) = name else {
                return Err(errors::programming(format!(
                    "Binding {i} has no name, but you supplied a dictionary (which has only names)."
                )));
            };
            let key = PyString::new(py, name.get(1..).unwrap_or(""));
            let missing = || {
                errors::programming(format!(
                    "You did not supply a value for binding parameter {name}."
                ))
            };
            let value = if params.is_exact_instance_of::<PyDict>() {
                map.get_item(&key)?.ok_or_else(missing)?
            } else {
                match params.get_item(&key) {
                    Ok(v) => v,
                    Err(e) if e.is_instance_of::<PyLookupError>(py) => return Err(missing()),
                    Err(e) => return Err(e),
                }
            };
            bind_one(py, stmt, i, &value, &name)?;
        }
        Ok(())
    } else {
        Err(errors::programming("parameters are of unsupported type"))
    }
}

fn check_count(needed: c_int, given: usize) -> PyResult<()> {
    if needed as usize != given {
        return Err(errors::programming(format!(
            "Incorrect number of bindings supplied. The current statement uses {needed}, and there are {given} supplied."
        )));
    }
    Ok(())
}

fn bind_one(
    py: Python<'_>,
    stmt: RawStmt,
    i: c_int,
    value: &Bound<'_, PyAny>,
    label: &str,
) -> PyResult<()> {
    let adapted = adapters::for_binding(py, value)?;
    match values::bind(stmt, i, &adapted)? {
        Bind::Done => Ok(()),
        Bind::Unsupported => Err(errors::programming(format!(
            "Error binding parameter {label}: type '{}' is not supported",
            adapters::type_name(&adapted)
        ))),
        Bind::Failed(ffi::SQLITE_TOOBIG) => {
            Err(errors::DataError::new_err("string or blob too big"))
        }
        Bind::Failed(rc) => Err(errors::from_code(
            py,
            rc,
            &format!("Error binding parameter {label}"),
        )),
    }
}
