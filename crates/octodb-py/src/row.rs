//! `Row`: a result row usable as a tuple and by column name (case-insensitively), as
//! `row_factory = octodb.Row` asks.

use crate::cursor::Cursor;
use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyIndexError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyList, PySlice, PyString, PyTuple};
use std::sync::Arc;

#[pyclass(module = "octodb", subclass, frozen, sequence)]
pub struct Row {
    description: Py<PyAny>,
    data: Py<PyTuple>,
    /// The column names, shared by the rows of one fetch.
    names: Arc<[String]>,
}

impl Row {
    pub fn new(description: Py<PyAny>, data: Py<PyTuple>, names: Arc<[String]>) -> Row {
        Row {
            description,
            data,
            names,
        }
    }
}

/// The column names in a cursor's description (first item of each entry).
pub fn names_of(description: &Bound<'_, PyAny>) -> PyResult<Arc<[String]>> {
    if description.is_none() {
        return Ok(Arc::from(Vec::new()));
    }
    description
        .try_iter()?
        .map(|d| d?.get_item(0)?.str().map(|s| s.to_string()))
        .collect::<PyResult<Vec<_>>>()
        .map(Arc::from)
}

/// Column names compare ASCII letters without case, everything else exactly (as sqlite3).
fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[pymethods]
impl Row {
    #[new]
    fn py_new(cursor: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Row> {
        let cursor = cursor
            .cast::<Cursor>()
            .map_err(|_| PyTypeError::new_err("Row() argument 1 must be an octodb Cursor"))?;
        let data = data
            .cast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("Row() argument 2 must be a tuple"))?;
        let description = cursor.getattr("description")?;
        Ok(Row {
            names: names_of(&description)?,
            description: description.unbind(),
            data: data.clone().unbind(),
        })
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.data.bind(py).len()
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = self.data.bind(py);
        if key.is_instance_of::<PyInt>() {
            let n = data.len() as isize;
            let i: isize = key.extract().map_err(|_| {
                PyIndexError::new_err("Cannot fit 'int' into an index-sized integer")
            })?;
            let i = if i < 0 { i + n } else { i };
            if i < 0 || i >= n {
                return Err(PyIndexError::new_err("tuple index out of range"));
            }
            return data.get_item(i as usize);
        }
        if let Ok(name) = key.cast::<PyString>() {
            let name = name.to_str()?;
            return match self.names.iter().position(|col| same_name(col, name)) {
                Some(i) => data.get_item(i),
                None => Err(PyIndexError::new_err("No item with that key")),
            };
        }
        if let Ok(slice) = key.cast::<PySlice>() {
            return data.as_any().get_item(slice);
        }
        Err(PyIndexError::new_err("Index must be int or string"))
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.data.bind(py).as_any().try_iter()?.into_any())
    }

    /// The column names.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.names.iter())
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        Ok(self.description.bind(py).hash()? ^ self.data.bind(py).hash()?)
    }

    fn __richcmp__(
        &self,
        py: Python<'_>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<Row>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.get();
        let equal = || -> PyResult<bool> {
            Ok(self.description.bind(py).eq(other.description.bind(py))?
                && self.data.bind(py).eq(other.data.bind(py))?)
        };
        use pyo3::IntoPyObjectExt;
        match op {
            CompareOp::Eq => equal()?.into_py_any(py),
            CompareOp::Ne => (!equal()?).into_py_any(py),
            _ => Ok(py.NotImplemented()),
        }
    }
}
