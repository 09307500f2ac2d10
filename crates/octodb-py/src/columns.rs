//! What a cursor tells of its statement's columns: sqlite3's `description`, and the converter
//! of each column under `detect_types` (PARSE_DECLTYPES / PARSE_COLNAMES).

use crate::db::DbGuard;
use crate::ffi_util::RawStmt;
use crate::stmt::{self, Stmt};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use std::ffi::c_int;
use std::sync::Arc;

pub const PARSE_DECLTYPES: i32 = 1;
pub const PARSE_COLNAMES: i32 = 2;

/// The converter of each column (None: the value as SQLite gives it).
pub type Casts = Arc<[Option<Py<PyAny>>]>;

/// `description` for a statement: a 7-tuple per column, names cut at " [" with PARSE_COLNAMES.
pub fn description(py: Python<'_>, names: &[String], colnames: bool) -> PyResult<Py<PyAny>> {
    let none = py.None();
    let items = names
        .iter()
        .map(|n| {
            let name = if colnames { strip_type(n) } else { n.as_str() };
            PyTuple::new(
                py,
                [
                    PyString::new(py, name).into_any().unbind(),
                    none.clone_ref(py),
                    none.clone_ref(py),
                    none.clone_ref(py),
                    none.clone_ref(py),
                    none.clone_ref(py),
                    none.clone_ref(py),
                ],
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyTuple::new(py, items)?.into_any().unbind())
}

/// "x y [bar]" → "x y": a column name without its `[type]` (and the space before it).
fn strip_type(name: &str) -> &str {
    match name.find('[') {
        Some(i) => name[..i].strip_suffix(' ').unwrap_or(&name[..i]),
        None => name,
    }
}

/// The type named in a column name, "x [bar]" → "bar".
fn colname_type(name: &str) -> Option<&str> {
    let start = name.find('[')? + 1;
    let len = name[start..].find(']')?;
    Some(&name[start..start + len])
}

/// The first word of a declared type: "number(5)" → "number".
fn decl_base(decl: &str) -> &str {
    let end = decl.find([' ', '(']).unwrap_or(decl.len());
    &decl[..end]
}

/// The converter of each column of `stmt` under `detect_types`, or None when none applies.
fn converters(
    py: Python<'_>,
    raw: RawStmt,
    n: c_int,
    detect_types: i32,
) -> PyResult<Option<Casts>> {
    if detect_types & (PARSE_DECLTYPES | PARSE_COLNAMES) == 0 {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(n as usize);
    let mut any = false;
    for i in 0..n {
        let mut conv = None;
        if detect_types & PARSE_COLNAMES != 0 {
            let name = stmt::column_name(raw, i);
            if let Some(t) = colname_type(&name) {
                conv = crate::adapters::converter_for(py, t)?;
            }
        }
        if conv.is_none() && detect_types & PARSE_DECLTYPES != 0 {
            if let Some(decl) = stmt::column_decltype(raw, i) {
                conv = crate::adapters::converter_for(py, decl_base(&decl))?;
            }
        }
        any |= conv.is_some();
        out.push(conv);
    }
    Ok(any.then(|| out.into()))
}

/// Set the cursor's column information for a prepared statement about to run.
pub fn describe(
    py: Python<'_>,
    g: &DbGuard<'_>,
    s: &Stmt,
    detect_types: i32,
) -> PyResult<(usize, Option<Py<PyAny>>, Option<Casts>)> {
    let n = s.column_count(g);
    if n == 0 {
        return Ok((0, None, None));
    }
    let raw = s.raw(g)?;
    let colnames = detect_types & PARSE_COLNAMES != 0;
    let stamp = s.reprepare_count(g) * 2 + colnames as i32;
    let cached = {
        let d = s.description.lock().unwrap_or_else(|p| p.into_inner());
        d.as_ref()
            .filter(|(at, _)| *at == stamp)
            .map(|(_, desc)| desc.clone_ref(py))
    };
    let desc = match cached {
        Some(d) => d,
        None => {
            let names: Vec<String> = (0..n).map(|i| stmt::column_name(raw, i)).collect();
            let d = description(py, &names, colnames)?;
            *s.description.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((stamp, d.clone_ref(py)));
            d
        }
    };
    let cast = converters(py, raw, n, detect_types)?;
    Ok((n as usize, Some(desc), cast))
}
