//! How a connection opens and ends transactions: sqlite3's legacy control (`isolation_level`:
//! an implicit `BEGIN` before DML) and Python 3.12's `autocommit` attribute (PEP 249's
//! always-open transaction, or SQLite's own autocommit with no implicit control at all).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

/// The levels `isolation_level` accepts ("" is a plain `BEGIN`).
const LEVELS: [&str; 4] = ["", "DEFERRED", "IMMEDIATE", "EXCLUSIVE"];

/// sqlite3's `LEGACY_TRANSACTION_CONTROL`: the value of `autocommit` that means "as before
/// Python 3.12, by `isolation_level`".
pub const LEGACY_TRANSACTION_CONTROL: i64 = -1;

/// A valid `isolation_level`: None (autocommit) or one of `LEVELS`.
#[derive(Clone, Copy)]
pub struct Isolation(pub Option<&'static str>);

impl<'a, 'py> FromPyObject<'a, 'py> for Isolation {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Isolation> {
        if obj.is_none() {
            return Ok(Isolation(None));
        }
        let Ok(s) = obj.cast::<PyString>() else {
            return Err(PyTypeError::new_err(format!(
                "isolation_level must be str or None, not {}",
                crate::adapters::type_name(&obj)
            )));
        };
        let s = s.to_str()?;
        LEVELS
            .iter()
            .find(|l| l.eq_ignore_ascii_case(s))
            .map(|l| Isolation(Some(l)))
            .ok_or_else(|| {
                PyValueError::new_err(
                    "isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'",
                )
            })
    }
}

/// The `autocommit` attribute (Python 3.12).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Autocommit {
    /// `LEGACY_TRANSACTION_CONTROL`: `isolation_level` decides (the default).
    Legacy,
    /// `True`: SQLite's autocommit; `commit()` and `rollback()` do nothing, the app runs
    /// `BEGIN`/`COMMIT` itself.
    On,
    /// `False`: a transaction is always open; `commit()` and `rollback()` open the next.
    Off,
}

impl<'a, 'py> FromPyObject<'a, 'py> for Autocommit {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Autocommit> {
        // Only the bools themselves: 1 and 0 are refused, as by sqlite3.
        if let Ok(b) = obj.cast::<PyBool>() {
            return Ok(if b.is_true() {
                Autocommit::On
            } else {
                Autocommit::Off
            });
        }
        if obj.cast::<PyInt>().is_ok()
            && obj.extract::<i64>().ok() == Some(LEGACY_TRANSACTION_CONTROL)
        {
            return Ok(Autocommit::Legacy);
        }
        Err(PyValueError::new_err(
            "autocommit must be True, False, or sqlite3.LEGACY_TRANSACTION_CONTROL",
        ))
    }
}

impl Autocommit {
    /// The attribute's value as Python reads it.
    pub fn to_python(self, py: Python<'_>) -> Py<PyAny> {
        match self {
            Autocommit::On => PyBool::new(py, true).to_owned().into_any().unbind(),
            Autocommit::Off => PyBool::new(py, false).to_owned().into_any().unbind(),
            Autocommit::Legacy => LEGACY_TRANSACTION_CONTROL
                .into_pyobject(py)
                .map(|i| i.into_any().unbind())
                .unwrap_or_else(|never| match never {}),
        }
    }
}

/// A connection's transaction control: both attributes, as set by the app.
#[derive(Clone, Copy)]
pub struct Control {
    pub isolation: Option<&'static str>,
    pub autocommit: Autocommit,
}

impl Control {
    /// The statement that opens a transaction before DML: only under legacy control, and
    /// None with `isolation_level = None`. On a replicated node a deferred one takes the
    /// write lock at once: the node's writer thread commits concurrently, and a deferred
    /// transaction could not upgrade past its commits.
    pub fn begin_before_dml(&self, replicated: bool) -> Option<String> {
        if self.autocommit != Autocommit::Legacy {
            return None;
        }
        self.isolation.map(|l| match l {
            "" | "DEFERRED" if replicated => "BEGIN IMMEDIATE".to_string(),
            l => format!("BEGIN {l}"),
        })
    }

    /// Whether `executescript` commits an open transaction before the script (legacy only).
    pub fn commits_before_script(&self) -> bool {
        self.autocommit == Autocommit::Legacy
    }
}

/// The statement that opens the always-open transaction of `autocommit=False`: a plain,
/// deferred `BEGIN`, as sqlite3's. It takes no lock until the first statement, so an idle
/// connection never holds up the node's writer; a first statement that writes takes the
/// write lock through the engine's turns (README, "Reliability").
pub const ALWAYS_OPEN_BEGIN: &str = "BEGIN";
