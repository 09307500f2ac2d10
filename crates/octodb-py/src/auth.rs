//! `register_function("user_signup" | "user_login" | "new_node", nargs, f)` on a primary: the
//! backend's authorization callbacks (SPEC §4.3). The engine calls them on a worker thread;
//! they take the GIL there, so they run even while the main thread is inside a call on the
//! same connection (every engine call releases the GIL). An exception is reported through
//! `sys.unraisablehook` and counts as -3 (error).

use crate::callback::with_gil;
use crate::connection::Connection;
use crate::errors;
use octodb::auth::{Action, AuthRequest, Decision};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

/// The decision a callback's return value stands for.
fn decision(action: Action, answer: &Bound<'_, PyAny>) -> PyResult<Decision> {
    if action == Action::NewNode {
        if let Ok(s) = answer.cast::<PyString>() {
            return Ok(Decision::from_node_answer(s.to_str()?));
        }
    }
    // bool is an int to Python: True would log the node in as user 1 and False make a new
    // user, which is not what a callback answering "allowed?" means.
    if answer.is_instance_of::<PyBool>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "the {} callback returned {}: a bool is not an answer here (True would mean user \
             1, False a new user); return {}",
            action.as_str(),
            answer,
            match action {
                Action::NewNode => "\"primary\", \"secondary\", -1, -2 or -3",
                _ => "a user id, 0 (new user), -1, -2 or -3",
            }
        )));
    }
    if answer.is_instance_of::<PyInt>() {
        let code: i64 = answer.extract()?;
        return Ok(match action {
            Action::NewNode => Decision::from_node_answer(&code.to_string()),
            _ => Decision::from_user_code(code),
        });
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "the {} callback returned {}; return {}",
        action.as_str(),
        crate::adapters::type_name(answer),
        match action {
            Action::NewNode => "\"primary\", \"secondary\", -1, -2 or -3",
            _ => "a user id, 0 (new user), -1, -2 or -3",
        }
    )))
}

/// Ask the Python callback `f` about `req`.
fn ask(f: &Py<PyAny>, req: &AuthRequest) -> Decision {
    let failed = || Decision::from_user_code(-3);
    with_gil(failed(), |py| {
        let f = f.bind(py);
        let answer = match req.action {
            Action::NewNode => f.call1((req.node_info.as_str(),)),
            _ => f.call1((req.data.as_deref().unwrap_or(""), req.node_info.as_str())),
        };
        match answer.and_then(|a| decision(req.action, &a)) {
            Ok(d) => d,
            Err(e) => {
                e.write_unraisable(py, Some(f));
                failed()
            }
        }
    })
}

/// Register `f` for `name`: an authorization callback for octodb's names on a primary, a SQL
/// function otherwise.
pub fn register_function(
    conn: &Connection,
    py: Python<'_>,
    name: &str,
    narg: i32,
    f: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let Some(action) = Action::from_name(name) else {
        return crate::functions::create_function(conn, py, name, narg, Some(f), false);
    };
    let inner = conn.checked(py)?;
    let g = inner.db.lock(py);
    if g.role != Some(octodb::Role::Primary) {
        return Err(errors::programming(format!(
            "{name} is the backend's authorization callback: register it on a primary (node=primary&auth=user or auth=node); this connection is {}",
            g.role.map_or("a plain local database", |r| if r == octodb::Role::Secondary { "a device (node=secondary)" } else { "a primary" })
        )));
    }
    if !f.is_callable() {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "the {name} callback must be callable"
        )));
    }
    let takes = match action {
        Action::NewNode => 1,
        _ => 2,
    };
    if narg != takes && narg != -1 {
        return Err(errors::programming(format!(
            "the {name} callback is called with {takes} argument{} ({}): register it with \
             narg={takes}, not {narg}",
            if takes == 1 { "" } else { "s" },
            match action {
                Action::NewNode => "node_info",
                _ => "data, node_info",
            }
        )));
    }
    let func = f.clone().unbind();
    let result = g
        .engine()?
        .set_auth_callback(action, move |req: &AuthRequest| ask(&func, req));
    result.map_err(|e| errors::from_engine(py, e))
}
