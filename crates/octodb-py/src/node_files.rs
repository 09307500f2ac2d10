//! What the CLI's `backup`, `mark-restored` and `restore-cluster` do, from Python: copying a
//! node's file, and preparing a primary's copy to come back into a cluster.

use crate::errors;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// The node's configuration from `uri` (a `file:` URI, or a plain path).
fn node_config(py: Python<'_>, uri: &str) -> PyResult<octodb::NodeConfig> {
    let uri = match uri.starts_with("file:") {
        true => uri.to_string(),
        false => format!("file:{uri}"),
    };
    octodb::NodeConfig::parse(&uri).map_err(|e| errors::from_engine(py, e.into()))
}

/// An engine error of these tools: what the engine calls a broken rule here (a running node,
/// a file that is not a primary's) is a failed operation, not an integrity error.
fn failed(py: Python<'_>, e: octodb::Error) -> PyErr {
    match e {
        octodb::Error::Rule(msg) => errors::OperationalError::new_err(msg),
        e => errors::from_engine(py, e),
    }
}

/// backup_node(uri, dest): copies the database of the node `uri` names (running or not) into
/// the new file `dest`, as `octodb backup` does. Returns True when the copy is of a primary of
/// a cluster: restored, it rejoins its cluster as a new member. (The copy of a primary alone
/// reserves the ids handed out after it, for their devices: see `mark_restored`.)
#[pyfunction]
pub fn backup_node(py: Python<'_>, uri: &str, dest: PathBuf) -> PyResult<bool> {
    let cfg = node_config(py, uri)?;
    py.detach(move || octodb::backup(&cfg, &dest))
        .map(|mark| mark == octodb::RestoreMark::Rejoins)
        .map_err(|e| failed(py, e))
}

/// mark_restored(uri): with the node stopped, marks the primary's file `uri` names as a
/// restored copy (a file system snapshot, a copy of its files), as `octodb mark-restored`
/// does. Returns a dict: `rejoins`, True for a member of a cluster of several, which rejoins
/// its cluster as a new member; and for a primary alone `reserved_node_ids` and
/// `reserved_user_ids`, the ranges `(first, end)` kept for the devices approved after the
/// copy (None when they were reserved already).
#[pyfunction]
pub fn mark_restored<'py>(py: Python<'py>, uri: &str) -> PyResult<Bound<'py, PyDict>> {
    let cfg = node_config(py, uri)?;
    let mark = py
        .detach(move || octodb::mark_restored(&cfg))
        .map_err(|e| failed(py, e))?;
    let out = PyDict::new(py);
    out.set_item("rejoins", mark == octodb::RestoreMark::Rejoins)?;
    let reserved = match mark {
        octodb::RestoreMark::IdsReserved(ids) => ids,
        _ => None,
    };
    set_reserved(&out, reserved)?;
    Ok(out)
}

/// The ranges of ids a restore reserved, as the dicts above give them.
fn set_reserved(out: &Bound<'_, PyDict>, ids: Option<octodb::ReservedIds>) -> PyResult<()> {
    out.set_item("reserved_node_ids", ids.map(|i| i.nodes))?;
    out.set_item("reserved_user_ids", ids.map(|i| i.users))
}

/// restore_cluster(uri): when every primary of a cluster is lost, makes the stopped primary's
/// copy `uri` names the first and only member of a new cluster, as `octodb restore-cluster`
/// does. Returns a dict: `node_id`, the id it keeps; `former_members`, the addresses of the
/// old cluster's other members (stop them: the new cluster does not call them); and
/// `reserved_node_ids`, `reserved_user_ids` as `mark_restored` gives them.
#[pyfunction]
pub fn restore_cluster<'py>(py: Python<'py>, uri: &str) -> PyResult<Bound<'py, PyDict>> {
    let cfg = node_config(py, uri)?;
    let restored = py
        .detach(move || octodb::restore_cluster(&cfg))
        .map_err(|e| failed(py, e))?;
    let out = PyDict::new(py);
    out.set_item("node_id", restored.node_id)?;
    out.set_item("former_members", restored.former_members)?;
    set_reserved(&out, restored.reserved)?;
    Ok(out)
}

pub fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(backup_node, m)?)?;
    m.add_function(wrap_pyfunction!(mark_restored, m)?)?;
    m.add_function(wrap_pyfunction!(restore_cluster, m)?)?;
    Ok(())
}
