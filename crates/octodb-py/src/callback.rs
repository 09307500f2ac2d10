//! Calling Python from SQLite's callbacks (functions, collations, hooks): taking the GIL on
//! whatever thread SQLite calls from, never letting a panic cross into C, and reporting the
//! callback's exceptions the way sqlite3 does (`enable_callback_tracebacks`).

use pyo3::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

static TRACEBACKS: AtomicBool = AtomicBool::new(false);

/// enable_callback_tracebacks(flag): print (through `sys.unraisablehook`) the exceptions
/// raised in callbacks instead of dropping them silently.
#[pyfunction]
pub fn enable_callback_tracebacks(flag: bool) {
    TRACEBACKS.store(flag, Ordering::Relaxed);
}

/// An exception raised by a callback: reported when tracebacks are on, dropped otherwise.
pub fn report(py: Python<'_>, err: PyErr, obj: &Bound<'_, PyAny>) {
    if TRACEBACKS.load(Ordering::Relaxed) {
        err.write_unraisable(py, Some(obj));
    }
}

/// Run `f` with the GIL; a panic gives `fallback` instead of unwinding into SQLite, and so does
/// an interpreter that is shutting down or gone (an event listener's thread at the app's exit
/// panicked in `attach`, printing PyO3's message: the suspended-devices walkthrough).
pub fn with_gil<T>(fallback: T, f: impl FnOnce(Python<'_>) -> T) -> T {
    catch_unwind(AssertUnwindSafe(|| Python::try_attach(f)))
        .ok()
        .flatten()
        .unwrap_or(fallback)
}
