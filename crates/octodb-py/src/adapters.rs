//! Adapters (Python object → SQLite value) and converters (SQLite bytes → Python object), with
//! the module-level registries `adapters` and `converters` that sqlite3 exposes as dicts.

use crate::errors;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple};
use std::sync::atomic::{AtomicBool, Ordering};

/// The protocol object adapters are registered for (PEP 246's `PrepareProtocol`).
#[pyclass(module = "octodb", subclass)]
pub struct PrepareProtocol;

#[pymethods]
impl PrepareProtocol {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        PrepareProtocol
    }
}

struct Registries {
    adapters: Py<PyDict>,
    converters: Py<PyDict>,
}

static REGISTRIES: PyOnceLock<Registries> = PyOnceLock::new();

/// Set once an adapter is registered for a type that binding otherwise takes as is (int,
/// float, str, bytes, bytearray, None): from then on those are looked up too.
static BASE_TYPE_ADAPTED: AtomicBool = AtomicBool::new(false);

fn registries(py: Python<'_>) -> &Registries {
    REGISTRIES.get_or_init(py, || Registries {
        adapters: PyDict::new(py).unbind(),
        converters: PyDict::new(py).unbind(),
    })
}

pub fn adapters_dict(py: Python<'_>) -> Bound<'_, PyDict> {
    registries(py).adapters.bind(py).clone()
}

pub fn converters_dict(py: Python<'_>) -> Bound<'_, PyDict> {
    registries(py).converters.bind(py).clone()
}

fn is_base_type(py: Python<'_>, t: &Bound<'_, PyAny>) -> bool {
    t.is(py.get_type::<PyInt>())
        || t.is(py.get_type::<PyFloat>())
        || t.is(py.get_type::<PyString>())
        || t.is(py.get_type::<PyBytes>())
        || t.is(py.get_type::<PyByteArray>())
        || t.is(py.None().bind(py).get_type())
        || t.is(py.get_type::<PyBool>())
}

/// register_adapter(type, adapter): `adapter(obj)` turns objects of exactly `type` into a
/// value SQLite stores.
#[pyfunction]
pub fn register_adapter(
    py: Python<'_>,
    r#type: &Bound<'_, PyAny>,
    adapter: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if is_base_type(py, r#type) {
        BASE_TYPE_ADAPTED.store(true, Ordering::Relaxed);
    }
    let key = PyTuple::new(py, [r#type, &py.get_type::<PrepareProtocol>().into_any()])?;
    adapters_dict(py).set_item(key, adapter)
}

/// register_converter(typename, converter): values of columns declared (or named) with
/// `typename` go through `converter(bytes)`; the name is case-insensitive.
#[pyfunction]
pub fn register_converter(
    py: Python<'_>,
    typename: &Bound<'_, PyString>,
    converter: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let upper = typename.call_method0("upper")?;
    converters_dict(py).set_item(upper, converter)
}

/// adapt(obj, proto=PrepareProtocol, alt=<none>): the value `obj` is stored as.
#[pyfunction]
#[pyo3(signature = (obj, *rest))]
pub fn adapt<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    rest: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    if rest.len() > 2 {
        return Err(PyTypeError::new_err("adapt() takes at most 3 arguments"));
    }
    // An explicit None protocol is a protocol (that adapts nothing), as in sqlite3.
    let proto = match rest.len() {
        0 => py.get_type::<PrepareProtocol>().into_any(),
        _ => rest.get_item(0)?,
    };
    match adapt_with(py, obj, &proto)? {
        Some(v) => Ok(v),
        None if rest.len() == 2 => rest.get_item(1),
        None => Err(errors::programming("can't adapt")),
    }
}

/// The registered adapter, else `proto.__adapt__(obj)`, else `obj.__conform__(proto)`; None
/// when nothing adapts it. A TypeError from the last two means "cannot", as in PEP 246.
fn adapt_with<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    proto: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let key = PyTuple::new(py, [obj.get_type().into_any(), proto.clone()])?;
    if let Some(adapter) = adapters_dict(py).get_item(key)? {
        return adapter.call1((obj,)).map(Some);
    }
    let attempts = [(proto, "__adapt__", obj), (obj, "__conform__", proto)];
    for (target, method, arg) in attempts {
        let Some(f) = target.getattr_opt(method)? else {
            continue;
        };
        match f.call1((arg,)) {
            Ok(v) if !v.is_none() => return Ok(Some(v)),
            Ok(_) => {}
            Err(e) if e.is_instance_of::<PyTypeError>(py) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// What binding stores for `obj`: the adapted value when an adapter applies, else `obj`.
pub fn for_binding<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if !BASE_TYPE_ADAPTED.load(Ordering::Relaxed)
        && (obj.is_exact_instance_of::<PyInt>()
            || obj.is_exact_instance_of::<PyFloat>()
            || obj.is_exact_instance_of::<PyString>()
            || obj.is_exact_instance_of::<PyBytes>()
            || obj.is_exact_instance_of::<PyBool>()
            || obj.is_none())
    {
        return Ok(obj.clone());
    }
    let proto = py.get_type::<PrepareProtocol>().into_any();
    Ok(adapt_with(py, obj, &proto)?.unwrap_or_else(|| obj.clone()))
}

/// The converter registered for `typename` (looked up upper-cased), if any.
pub fn converter_for(py: Python<'_>, typename: &str) -> PyResult<Option<Py<PyAny>>> {
    let name = PyString::new(py, typename).call_method0("upper")?;
    Ok(converters_dict(py).get_item(name)?.map(Bound::unbind))
}

/// The name of `obj`'s type, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PrepareProtocol>()?;
    m.add("adapters", adapters_dict(py))?;
    m.add("converters", converters_dict(py))?;
    m.add_function(wrap_pyfunction!(register_adapter, m)?)?;
    m.add_function(wrap_pyfunction!(register_converter, m)?)?;
    m.add_function(wrap_pyfunction!(adapt, m)?)?;
    Ok(())
}
