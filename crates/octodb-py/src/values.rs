//! SQLite values and Python objects: binding parameters, reading result columns (with
//! `text_factory` and converters), function arguments and results.

use crate::errors;
use crate::ffi_util::RawStmt;
use pyo3::exceptions::{PyBufferError, PyOverflowError};
use pyo3::ffi as pyffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyFloat, PyInt, PyString, PyTuple};
use rusqlite::ffi;
use std::ffi::{c_char, c_int};

/// What `text_factory` asks for, read once per fetch.
pub enum TextMode {
    Str,
    Bytes,
    Factory(Py<PyAny>),
}

impl TextMode {
    pub fn of(factory: &Bound<'_, PyAny>) -> TextMode {
        let py = factory.py();
        if factory.is(py.get_type::<PyString>()) {
            TextMode::Str
        } else if factory.is(py.get_type::<PyBytes>()) {
            TextMode::Bytes
        } else {
            TextMode::Factory(factory.clone().unbind())
        }
    }
}

/// How binding a value went, when it did not raise.
pub enum Bind {
    Done,
    /// Not a type SQLite can store.
    Unsupported,
    /// SQLite refused it (result code).
    Failed(c_int),
}

/// An object's bytes when it exports a contiguous buffer (bytes, bytearray, memoryview, array).
pub enum Blob<'py> {
    Bytes(Bound<'py, PyBytes>),
    Owned(Vec<u8>),
}

impl Blob<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Blob::Bytes(b) => b.as_bytes(),
            Blob::Owned(v) => v,
        }
    }
}

/// The bytes of a buffer object; None when `obj` exports no buffer. A non-contiguous buffer
/// is a BufferError, as in sqlite3.
pub fn buffer_bytes<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<Blob<'py>>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Some(Blob::Bytes(b.clone())));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Some(Blob::Owned(b.to_vec())));
    }
    // Other buffers through memoryview (the limited API before 3.11 has no buffer calls).
    let py = obj.py();
    let memoryview = py.import("builtins")?.getattr("memoryview")?;
    let Ok(view) = memoryview.call1((obj,)) else {
        return Ok(None);
    };
    if !view.getattr("c_contiguous")?.is_truthy()? {
        return Err(PyBufferError::new_err(
            "underlying buffer is not C-contiguous",
        ));
    }
    let bytes = view.call_method0("tobytes")?;
    Ok(Some(Blob::Bytes(bytes.cast_into::<PyBytes>()?)))
}

/// The i64 of a Python int, or sqlite3's OverflowError.
pub fn int_value(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    let mut overflow: c_int = 0;
    // SAFETY: `obj` is a live int (the caller checked); the call only reads it.
    let v = unsafe { pyffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
    if overflow != 0 {
        return Err(PyOverflowError::new_err(
            "Python int too large to convert to SQLite INTEGER",
        ));
    }
    if v == -1 {
        if let Some(e) = PyErr::take(obj.py()) {
            return Err(e);
        }
    }
    Ok(v)
}

/// Bind an (already adapted) value to parameter `i` (1-based).
pub fn bind(stmt: RawStmt, i: c_int, obj: &Bound<'_, PyAny>) -> PyResult<Bind> {
    // SAFETY (every call below): the statement is open and its database locked by the caller;
    // text and blob bytes are copied by SQLite (SQLITE_TRANSIENT) before the call returns.
    let rc = if obj.is_none() {
        unsafe { ffi::sqlite3_bind_null(stmt.0, i) }
    } else if obj.is_instance_of::<PyInt>() {
        let v = int_value(obj)?;
        unsafe { ffi::sqlite3_bind_int64(stmt.0, i, v) }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        unsafe { ffi::sqlite3_bind_double(stmt.0, i, f.value()) }
    } else if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_str()?;
        unsafe {
            ffi::sqlite3_bind_text64(
                stmt.0,
                i,
                s.as_ptr() as *const c_char,
                s.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            )
        }
    } else if let Some(blob) = buffer_bytes(obj)? {
        let b = blob.as_slice();
        unsafe {
            ffi::sqlite3_bind_blob64(
                stmt.0,
                i,
                b.as_ptr().cast(),
                b.len() as u64,
                ffi::SQLITE_TRANSIENT(),
            )
        }
    } else {
        return Ok(Bind::Unsupported);
    };
    Ok(match rc {
        ffi::SQLITE_OK => Bind::Done,
        rc => Bind::Failed(rc),
    })
}

/// Wrap a new reference from the C API, or the error it set.
///
/// # Safety
/// `p` is NULL with a Python error set, or a new (owned) reference.
unsafe fn owned(py: Python<'_>, p: *mut pyffi::PyObject) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: guaranteed by the caller.
    unsafe { Bound::from_owned_ptr_or_err(py, p) }
}

/// A UTF-8 `str` from bytes SQLite gave.
fn utf8_str<'py>(py: Python<'py>, p: *const c_char, n: usize) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `p` points to `n` readable bytes (SQLite's text); the function copies them.
    unsafe {
        owned(
            py,
            pyffi::PyUnicode_FromStringAndSize(p, n as pyffi::Py_ssize_t),
        )
    }
}

fn bytes_obj<'py>(py: Python<'py>, p: *const c_char, n: usize) -> PyResult<Bound<'py, PyAny>> {
    if n == 0 {
        return Ok(PyBytes::new(py, b"").into_any());
    }
    // SAFETY: `p` points to `n` readable bytes; the function copies them.
    unsafe {
        owned(
            py,
            pyffi::PyBytes_FromStringAndSize(p, n as pyffi::Py_ssize_t),
        )
    }
}

/// Column `i` of the current row as Python sees it, without a converter.
pub fn column<'py>(
    py: Python<'py>,
    stmt: RawStmt,
    i: c_int,
    text: &TextMode,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY (all calls): the statement has a current row, its database is locked by the
    // caller, and pointers SQLite returns are read (copied) before the next call on it.
    unsafe {
        match ffi::sqlite3_column_type(stmt.0, i) {
            ffi::SQLITE_INTEGER => owned(
                py,
                pyffi::PyLong_FromLongLong(ffi::sqlite3_column_int64(stmt.0, i)),
            ),
            ffi::SQLITE_FLOAT => owned(
                py,
                pyffi::PyFloat_FromDouble(ffi::sqlite3_column_double(stmt.0, i)),
            ),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_column_text(stmt.0, i) as *const c_char;
                let n = ffi::sqlite3_column_bytes(stmt.0, i) as usize;
                text_value(py, p, n, text).map_err(|e| decode_error(py, e, stmt, i, p, n))
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_column_blob(stmt.0, i) as *const c_char;
                let n = ffi::sqlite3_column_bytes(stmt.0, i) as usize;
                bytes_obj(py, p, n)
            }
            _ => Ok(py.None().into_bound(py)),
        }
    }
}

/// Column `i` through `converter`: its bytes (None for NULL or an empty blob).
pub fn converted_column<'py>(
    py: Python<'py>,
    stmt: RawStmt,
    i: c_int,
    converter: &Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: as in `column`.
    let bytes = unsafe {
        if ffi::sqlite3_column_type(stmt.0, i) == ffi::SQLITE_NULL {
            return Ok(py.None().into_bound(py));
        }
        let p = ffi::sqlite3_column_blob(stmt.0, i) as *const c_char;
        if p.is_null() {
            return Ok(py.None().into_bound(py));
        }
        let n = ffi::sqlite3_column_bytes(stmt.0, i) as usize;
        bytes_obj(py, p, n)?
    };
    converter.bind(py).call1((bytes,))
}

fn text_value<'py>(
    py: Python<'py>,
    p: *const c_char,
    n: usize,
    text: &TextMode,
) -> PyResult<Bound<'py, PyAny>> {
    match text {
        TextMode::Str => utf8_str(py, p, n),
        TextMode::Bytes => bytes_obj(py, p, n),
        TextMode::Factory(f) => f.bind(py).call1((bytes_obj(py, p, n)?,)),
    }
}

/// sqlite3's message for text that is not UTF-8; other errors pass through.
fn decode_error(
    py: Python<'_>,
    e: PyErr,
    stmt: RawStmt,
    i: c_int,
    p: *const c_char,
    n: usize,
) -> PyErr {
    if !e.is_instance_of::<pyo3::exceptions::PyUnicodeDecodeError>(py) {
        return e;
    }
    let name = crate::stmt::column_name(stmt, i);
    // SAFETY: `p`/`n` still describe the column's text (no call on the statement since).
    let raw = unsafe { std::slice::from_raw_parts(p as *const u8, n) };
    let shown = String::from_utf8_lossy(raw);
    errors::OperationalError::new_err(format!(
        "Could not decode to UTF-8 column '{name}' with text '{shown}'"
    ))
}

/// A function argument as a Python object.
///
/// # Safety
/// `v` is a valid protected `sqlite3_value` for the duration of the call.
pub unsafe fn from_value<'py>(
    py: Python<'py>,
    v: *mut ffi::sqlite3_value,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: guaranteed by the caller; returned pointers are copied before any other call.
    unsafe {
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_INTEGER => {
                owned(py, pyffi::PyLong_FromLongLong(ffi::sqlite3_value_int64(v)))
            }
            ffi::SQLITE_FLOAT => owned(py, pyffi::PyFloat_FromDouble(ffi::sqlite3_value_double(v))),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_value_text(v) as *const c_char;
                let n = ffi::sqlite3_value_bytes(v) as usize;
                utf8_str(py, p, n)
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_value_blob(v) as *const c_char;
                let n = ffi::sqlite3_value_bytes(v) as usize;
                bytes_obj(py, p, n)
            }
            _ => Ok(py.None().into_bound(py)),
        }
    }
}

/// The arguments of a function call as a tuple.
///
/// # Safety
/// `argv` points to `argc` valid values.
pub unsafe fn args_tuple<'py>(
    py: Python<'py>,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut items = Vec::with_capacity(argc.max(0) as usize);
    for k in 0..argc.max(0) as usize {
        // SAFETY: guaranteed by the caller.
        items.push(unsafe { from_value(py, *argv.add(k))? });
    }
    PyTuple::new(py, items)
}

/// Why a function's result could not be given to SQLite.
pub enum ResultError {
    /// A Python exception (reported as "user-defined function raised exception").
    Py(PyErr),
    /// An int out of SQLite's range: SQLite reports "string or blob too big".
    TooBig(PyErr),
    /// A type SQLite cannot store.
    Unsupported,
}

/// Give a function's Python result to SQLite.
///
/// # Safety
/// `ctx` is the valid context of the running function call.
pub unsafe fn set_result(
    ctx: *mut ffi::sqlite3_context,
    obj: &Bound<'_, PyAny>,
) -> Result<(), ResultError> {
    // SAFETY (all calls): `ctx` is valid (caller); SQLite copies text and blobs (TRANSIENT).
    unsafe {
        if obj.is_none() {
            ffi::sqlite3_result_null(ctx);
        } else if obj.is_instance_of::<PyInt>() {
            let v = int_value(obj).map_err(ResultError::TooBig)?;
            ffi::sqlite3_result_int64(ctx, v);
        } else if let Ok(f) = obj.cast::<PyFloat>() {
            ffi::sqlite3_result_double(ctx, f.value());
        } else if let Ok(s) = obj.cast::<PyString>() {
            let s = s.to_str().map_err(ResultError::Py)?;
            ffi::sqlite3_result_text64(
                ctx,
                s.as_ptr() as *const c_char,
                s.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            );
        } else if let Some(blob) = buffer_bytes(obj).map_err(ResultError::Py)? {
            let b = blob.as_slice();
            ffi::sqlite3_result_blob64(
                ctx,
                b.as_ptr().cast(),
                b.len() as u64,
                ffi::SQLITE_TRANSIENT(),
            );
        } else {
            return Err(ResultError::Unsupported);
        }
    }
    Ok(())
}

/// Read every column of the current row into an octodb value (for rows read ahead).
pub fn engine_value(stmt: RawStmt, i: c_int) -> octodb::Value {
    // SAFETY: as in `column`; bytes are copied into the value.
    unsafe {
        match ffi::sqlite3_column_type(stmt.0, i) {
            ffi::SQLITE_INTEGER => octodb::Value::Integer(ffi::sqlite3_column_int64(stmt.0, i)),
            ffi::SQLITE_FLOAT => octodb::Value::Real(ffi::sqlite3_column_double(stmt.0, i)),
            ffi::SQLITE_TEXT | ffi::SQLITE_BLOB => {
                let is_text = ffi::sqlite3_column_type(stmt.0, i) == ffi::SQLITE_TEXT;
                let p = ffi::sqlite3_column_blob(stmt.0, i) as *const u8;
                let n = ffi::sqlite3_column_bytes(stmt.0, i) as usize;
                let bytes = if p.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(p, n).to_vec()
                };
                if is_text {
                    octodb::Value::Text(String::from_utf8_lossy(&bytes).into_owned())
                } else {
                    octodb::Value::Blob(bytes)
                }
            }
            _ => octodb::Value::Null,
        }
    }
}

/// An octodb value (from a buffered row) as Python sees it.
pub fn from_engine<'py>(
    py: Python<'py>,
    v: &octodb::Value,
    text: &TextMode,
) -> PyResult<Bound<'py, PyAny>> {
    use pyo3::IntoPyObjectExt;
    match v {
        octodb::Value::Null => Ok(py.None().into_bound(py)),
        octodb::Value::Integer(i) => i.into_bound_py_any(py),
        octodb::Value::Real(f) => f.into_bound_py_any(py),
        octodb::Value::Text(s) => text_value(py, s.as_ptr() as *const c_char, s.len(), text),
        octodb::Value::Blob(b) => Ok(PyBytes::new(py, b).into_any()),
    }
}

/// An octodb value's bytes, for a converter (None for NULL or empty).
pub fn engine_bytes<'py>(py: Python<'py>, v: &octodb::Value) -> Option<Bound<'py, PyBytes>> {
    match v {
        octodb::Value::Null => None,
        octodb::Value::Integer(i) => Some(PyBytes::new(py, i.to_string().as_bytes())),
        octodb::Value::Real(f) => Some(PyBytes::new(py, f.to_string().as_bytes())),
        octodb::Value::Text(s) => Some(PyBytes::new(py, s.as_bytes())),
        octodb::Value::Blob(b) if b.is_empty() => None,
        octodb::Value::Blob(b) => Some(PyBytes::new(py, b)),
    }
}
