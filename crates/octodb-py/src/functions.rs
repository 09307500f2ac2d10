//! User-defined SQL functions, aggregates, window functions and collations. Each registration
//! hands SQLite a boxed context holding the Python callable; SQLite frees it (through
//! `destroy`) when the function is replaced or the database closes.

use crate::callback::{report, with_gil};
use crate::connection::Connection;
use crate::errors;
use crate::values::{self, ResultError};
use pyo3::exceptions::{PyAttributeError, PyMemoryError, PyOverflowError, PyTypeError};
use pyo3::ffi as pyffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rusqlite::ffi;
use std::ffi::{c_int, c_void, CStr, CString};

/// What a registration keeps: the Python function, aggregate class or collation.
struct Ctx {
    callable: Py<PyAny>,
}

/// SQLite's destructor for a `Ctx`.
unsafe extern "C" fn destroy(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: `p` came from Box::into_raw in `register`; SQLite calls this once. Dropping
        // the Py without the GIL is deferred by PyO3 to the next time it holds the GIL.
        drop(unsafe { Box::from_raw(p as *mut Ctx) });
    }
}

/// The context of the running function.
///
/// # Safety
/// `ctx` is the context of a call to a function registered with a `Ctx`.
unsafe fn callable<'py>(py: Python<'py>, ctx: *mut ffi::sqlite3_context) -> Bound<'py, PyAny> {
    // SAFETY: guaranteed by the caller: user data is the `Ctx` we registered, alive until
    // `destroy`, which SQLite never runs during a call.
    let c = unsafe { &*(ffi::sqlite3_user_data(ctx) as *const Ctx) };
    c.callable.bind(py).clone()
}

/// Report `err` on `ctx` as sqlite3 does: MemoryError → SQLITE_NOMEM, OverflowError →
/// SQLITE_TOOBIG, anything else → an error with `msg`.
///
/// # Safety
/// `ctx` is the valid context of the running call.
unsafe fn fail(
    py: Python<'_>,
    ctx: *mut ffi::sqlite3_context,
    err: PyErr,
    obj: &Bound<'_, PyAny>,
    msg: &CStr,
) {
    // SAFETY: `ctx` is valid (caller); `msg` is NUL-terminated and copied by SQLite.
    unsafe {
        if err.is_instance_of::<PyMemoryError>(py) {
            ffi::sqlite3_result_error_nomem(ctx);
        } else if err.is_instance_of::<PyOverflowError>(py) {
            ffi::sqlite3_result_error_toobig(ctx);
        } else {
            ffi::sqlite3_result_error(ctx, msg.as_ptr(), -1);
        }
    }
    report(py, err, obj);
}

/// Give `result` to SQLite, or the error sqlite3 gives for it.
///
/// # Safety
/// `ctx` is the valid context of the running call.
unsafe fn answer(
    py: Python<'_>,
    ctx: *mut ffi::sqlite3_context,
    result: PyResult<Bound<'_, PyAny>>,
    obj: &Bound<'_, PyAny>,
    msg: &CStr,
) {
    // SAFETY (all): `ctx` is valid (caller).
    match result {
        Err(e) => unsafe { fail(py, ctx, e, obj, msg) },
        Ok(v) => match unsafe { values::set_result(ctx, &v) } {
            Ok(()) => {}
            Err(ResultError::TooBig(e)) => {
                unsafe { ffi::sqlite3_result_error_toobig(ctx) };
                report(py, e, obj);
            }
            Err(ResultError::Py(e)) => unsafe { fail(py, ctx, e, obj, msg) },
            Err(ResultError::Unsupported) => unsafe {
                ffi::sqlite3_result_error(ctx, msg.as_ptr(), -1)
            },
        },
    }
}

unsafe extern "C" fn call_scalar(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    with_gil((), |py| {
        // SAFETY: SQLite calls with a valid context and `argc` valid arguments.
        unsafe {
            let f = callable(py, ctx);
            let result = values::args_tuple(py, argc, argv).and_then(|a| f.call1(a));
            answer(
                py,
                ctx,
                result,
                &f,
                c"user-defined function raised exception",
            );
        }
    })
}

/// The slot SQLite keeps per aggregate invocation: a strong reference to the instance.
///
/// # Safety
/// `ctx` is the valid context of an aggregate call.
unsafe fn slot(ctx: *mut ffi::sqlite3_context, create: bool) -> *mut *mut pyffi::PyObject {
    let size = if create {
        std::mem::size_of::<*mut pyffi::PyObject>() as c_int
    } else {
        0
    };
    // SAFETY: guaranteed by the caller; SQLite zeroes the memory on first use.
    unsafe { ffi::sqlite3_aggregate_context(ctx, size) as *mut *mut pyffi::PyObject }
}

/// The aggregate instance of this invocation, made on first use.
///
/// # Safety
/// `ctx` is the valid context of an aggregate call whose user data is a `Ctx`.
unsafe fn instance<'py>(
    py: Python<'py>,
    ctx: *mut ffi::sqlite3_context,
) -> Option<Bound<'py, PyAny>> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let cls = callable(py, ctx);
        let p = slot(ctx, true);
        if p.is_null() {
            ffi::sqlite3_result_error_nomem(ctx);
            return None;
        }
        if (*p).is_null() {
            match cls.call0() {
                Ok(obj) => *p = obj.into_ptr(),
                Err(e) => {
                    fail(
                        py,
                        ctx,
                        e,
                        &cls,
                        c"user-defined aggregate's '__init__' method raised error",
                    );
                    return None;
                }
            }
        }
        Some(Bound::from_borrowed_ptr(py, *p))
    }
}

/// Call `method` of the aggregate instance, with sqlite3's messages for a missing method or
/// an exception.
///
/// # Safety
/// As for `instance`.
unsafe fn call_method<'py>(
    py: Python<'py>,
    ctx: *mut ffi::sqlite3_context,
    obj: &Bound<'py, PyAny>,
    method: &str,
    args: Bound<'py, PyTuple>,
) -> Option<Bound<'py, PyAny>> {
    // SAFETY: guaranteed by the caller.
    let cls = unsafe { callable(py, ctx) };
    let found = match obj.getattr(method) {
        Ok(m) => m,
        Err(e) => {
            let msg = if e.is_instance_of::<PyAttributeError>(py) {
                format!("user-defined aggregate's '{method}' method not defined")
            } else {
                format!("user-defined aggregate's '{method}' method raised error")
            };
            let msg = CString::new(msg).unwrap_or_default();
            // SAFETY: as above.
            unsafe { ffi::sqlite3_result_error(ctx, msg.as_ptr(), -1) };
            report(py, e, &cls);
            return None;
        }
    };
    match found.call1(args) {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = CString::new(format!(
                "user-defined aggregate's '{method}' method raised error"
            ))
            .unwrap_or_default();
            // SAFETY: as above.
            unsafe { fail(py, ctx, e, &cls, &msg) };
            None
        }
    }
}

unsafe extern "C" fn aggregate_step(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    window_call(ctx, argc, argv, "step")
}

unsafe extern "C" fn window_inverse(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    window_call(ctx, argc, argv, "inverse")
}

fn window_call(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
    method: &str,
) {
    with_gil((), |py| {
        // SAFETY: SQLite calls with a valid context and `argc` valid arguments.
        unsafe {
            let Some(obj) = instance(py, ctx) else { return };
            let args = match values::args_tuple(py, argc, argv) {
                Ok(a) => a,
                Err(e) => {
                    let cls = callable(py, ctx);
                    fail(
                        py,
                        ctx,
                        e,
                        &cls,
                        c"user-defined aggregate's 'step' method raised error",
                    );
                    return;
                }
            };
            call_method(py, ctx, &obj, method, args);
        }
    })
}

unsafe extern "C" fn window_value(ctx: *mut ffi::sqlite3_context) {
    with_gil((), |py| {
        // SAFETY: SQLite calls with a valid context.
        unsafe {
            let Some(obj) = instance(py, ctx) else { return };
            if let Some(v) = call_method(py, ctx, &obj, "value", PyTuple::empty(py)) {
                let cls = callable(py, ctx);
                answer(
                    py,
                    ctx,
                    Ok(v),
                    &cls,
                    c"user-defined aggregate's 'value' method raised error",
                );
            }
        }
    })
}

unsafe extern "C" fn aggregate_final(ctx: *mut ffi::sqlite3_context) {
    with_gil((), |py| {
        // SAFETY: SQLite calls with a valid context; the slot's reference is taken back here,
        // the only place that releases it.
        unsafe {
            let p = slot(ctx, false);
            if p.is_null() || (*p).is_null() {
                // No row reached the aggregate: its result is NULL.
                return;
            }
            let obj = Bound::from_owned_ptr(py, *p);
            *p = std::ptr::null_mut();
            if let Some(v) = call_method(py, ctx, &obj, "finalize", PyTuple::empty(py)) {
                let cls = callable(py, ctx);
                answer(
                    py,
                    ctx,
                    Ok(v),
                    &cls,
                    c"user-defined aggregate's 'finalize' method raised error",
                );
            }
        }
    })
}

type Scalar = unsafe extern "C" fn(*mut ffi::sqlite3_context, c_int, *mut *mut ffi::sqlite3_value);
type Final = unsafe extern "C" fn(*mut ffi::sqlite3_context);
/// User data, then xFunc, xStep, xFinal, xValue, xInverse.
type Callbacks = (
    *mut c_void,
    Option<Scalar>,
    Option<Scalar>,
    Option<Final>,
    Option<Final>,
    Option<Scalar>,
);

/// Which callbacks a registration installs.
enum Kind {
    Scalar,
    Aggregate,
    Window,
}

fn name_cstring(name: &str) -> PyResult<CString> {
    CString::new(name)
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("embedded null character"))
}

/// Register (or, with `callable` None, remove) a function on the connection's database.
fn register(
    conn: &Connection,
    py: Python<'_>,
    name: &str,
    narg: c_int,
    callable: Option<&Bound<'_, PyAny>>,
    kind: Kind,
    flags: c_int,
) -> PyResult<c_int> {
    let inner = conn.checked(py)?;
    let g = inner.db.lock(py);
    let raw = g.raw()?;
    let cname = name_cstring(name)?;
    let (user, scalar, step, fin, value, inverse): Callbacks = match callable {
        None => (std::ptr::null_mut(), None, None, None, None, None),
        Some(c) => {
            let ctx = Box::into_raw(Box::new(Ctx {
                callable: c.clone().unbind(),
            })) as *mut c_void;
            match kind {
                Kind::Scalar => (ctx, Some(call_scalar), None, None, None, None),
                Kind::Aggregate => (
                    ctx,
                    None,
                    Some(aggregate_step),
                    Some(aggregate_final),
                    None,
                    None,
                ),
                Kind::Window => (
                    ctx,
                    None,
                    Some(aggregate_step),
                    Some(aggregate_final),
                    Some(window_value),
                    Some(window_inverse),
                ),
            }
        }
    };
    let flags = ffi::SQLITE_UTF8 | flags;
    // SAFETY: an open handle under its lock; `user` is our boxed Ctx (or null) and SQLite
    // takes ownership of it through `destroy`, calling it even when registration fails.
    let rc = unsafe {
        match kind {
            Kind::Window => ffi::sqlite3_create_window_function(
                raw.0,
                cname.as_ptr(),
                narg,
                flags,
                user,
                step,
                fin,
                value,
                inverse,
                Some(destroy),
            ),
            _ => ffi::sqlite3_create_function_v2(
                raw.0,
                cname.as_ptr(),
                narg,
                flags,
                user,
                scalar,
                step,
                fin,
                Some(destroy),
            ),
        }
    };
    Ok(rc)
}

pub fn create_function(
    conn: &Connection,
    py: Python<'_>,
    name: &str,
    narg: c_int,
    func: Option<&Bound<'_, PyAny>>,
    deterministic: bool,
) -> PyResult<()> {
    let flags = if deterministic {
        ffi::SQLITE_DETERMINISTIC
    } else {
        0
    };
    let func = func.filter(|f| !f.is_none());
    if register(conn, py, name, narg, func, Kind::Scalar, flags)? != ffi::SQLITE_OK {
        return Err(errors::OperationalError::new_err("Error creating function"));
    }
    Ok(())
}

pub fn create_aggregate(
    conn: &Connection,
    py: Python<'_>,
    name: &str,
    narg: c_int,
    class: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let class = class.filter(|f| !f.is_none());
    if register(conn, py, name, narg, class, Kind::Aggregate, 0)? != ffi::SQLITE_OK {
        return Err(errors::OperationalError::new_err(
            "Error creating aggregate",
        ));
    }
    Ok(())
}

pub fn create_window_function(
    conn: &Connection,
    py: Python<'_>,
    name: &str,
    narg: c_int,
    class: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let class = class.filter(|f| !f.is_none());
    if register(conn, py, name, narg, class, Kind::Window, 0)? != ffi::SQLITE_OK {
        return Err(errors::programming("Error creating window function"));
    }
    Ok(())
}

unsafe extern "C" fn collate(
    p: *mut c_void,
    len_a: c_int,
    a: *const c_void,
    len_b: c_int,
    b: *const c_void,
) -> c_int {
    with_gil(0, |py| {
        // SAFETY: `p` is our Ctx (alive until `destroy`); `a`/`b` point to `len_a`/`len_b`
        // bytes of UTF-8 text for the duration of the call.
        let (f, sa, sb) = unsafe {
            let c = &*(p as *const Ctx);
            (
                c.callable.bind(py).clone(),
                std::slice::from_raw_parts(a as *const u8, len_a.max(0) as usize),
                std::slice::from_raw_parts(b as *const u8, len_b.max(0) as usize),
            )
        };
        let call = || -> PyResult<c_int> {
            let sa = pyo3::types::PyString::from_bytes(py, sa)?;
            let sb = pyo3::types::PyString::from_bytes(py, sb)?;
            let r = f.call1((sa, sb))?;
            if !r.is_instance_of::<pyo3::types::PyInt>() {
                return Ok(0);
            }
            Ok(if r.gt(0)? {
                1
            } else if r.lt(0)? {
                -1
            } else {
                0
            })
        };
        call().unwrap_or_else(|e| {
            report(py, e, &f);
            0
        })
    })
}

pub fn create_collation(
    conn: &Connection,
    py: Python<'_>,
    name: &Bound<'_, PyAny>,
    callable: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let inner = conn.checked(py)?;
    let name = name
        .cast::<pyo3::types::PyString>()
        .map_err(|_| PyTypeError::new_err("create_collation() argument 1 must be str"))?
        .to_str()?;
    if !callable.is_none() && !callable.is_callable() {
        return Err(PyTypeError::new_err("parameter must be callable"));
    }
    let cname = name_cstring(name)?;
    let g = inner.db.lock(py);
    let raw = g.raw()?;
    let (ctx, cmp): (
        *mut c_void,
        Option<
            unsafe extern "C" fn(*mut c_void, c_int, *const c_void, c_int, *const c_void) -> c_int,
        >,
    ) = if callable.is_none() {
        (std::ptr::null_mut(), None)
    } else {
        (
            Box::into_raw(Box::new(Ctx {
                callable: callable.clone().unbind(),
            })) as *mut c_void,
            Some(collate),
        )
    };
    // SAFETY: an open handle under its lock; SQLite owns `ctx` through `destroy`.
    let rc = unsafe {
        ffi::sqlite3_create_collation_v2(
            raw.0,
            cname.as_ptr(),
            ffi::SQLITE_UTF8,
            ctx,
            cmp,
            Some(destroy),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(errors::from_db(py, raw));
    }
    Ok(())
}
