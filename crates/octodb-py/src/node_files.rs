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
/// a cluster: restored, it rejoins its cluster as a new member.
#[pyfunction]
pub fn backup_node(py: Python<'_>, uri: &str, dest: PathBuf) -> PyResult<bool> {
    let cfg = node_config(py, uri)?;
    py.detach(move || octodb::backup(&cfg, &dest))
        .map_err(|e| failed(py, e))
}

/// mark_restored(uri): with the node stopped, marks the primary's file `uri` names as a
/// restored copy (a file system snapshot, a copy of its files), so that it rejoins its cluster
/// as a new member, as `octodb mark-restored` does. Returns False for a primary alone, which
/// needs no mark.
#[pyfunction]
pub fn mark_restored(py: Python<'_>, uri: &str) -> PyResult<bool> {
    let cfg = node_config(py, uri)?;
    py.detach(move || octodb::mark_restored(&cfg))
        .map_err(|e| failed(py, e))
}

/// restore_cluster(uri): when every primary of a cluster is lost, makes the stopped primary's
/// copy `uri` names the first and only member of a new cluster, as `octodb restore-cluster`
/// does. Returns a dict: `node_id`, the id it keeps, and `former_members`, the addresses of
/// the old cluster's other members (stop them: the new cluster does not call them).
#[pyfunction]
pub fn restore_cluster<'py>(py: Python<'py>, uri: &str) -> PyResult<Bound<'py, PyDict>> {
    let cfg = node_config(py, uri)?;
    let restored = py
        .detach(move || octodb::restore_cluster(&cfg))
        .map_err(|e| failed(py, e))?;
    let out = PyDict::new(py);
    out.set_item("node_id", restored.node_id)?;
    out.set_item("former_members", restored.former_members)?;
    Ok(out)
}

pub fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(backup_node, m)?)?;
    m.add_function(wrap_pyfunction!(mark_restored, m)?)?;
    m.add_function(wrap_pyfunction!(restore_cluster, m)?)?;
    Ok(())
}
