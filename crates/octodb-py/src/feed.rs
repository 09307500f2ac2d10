//! The change feed for Python: every row committed on a primary, whoever changed it (its own
//! app, a device's transaction, another primary), in log order (docs/change-feed.md).
//! `feed_position()`, `wait_feed(after, timeout)` and `changes_after(after, max_entries)` are
//! the Rust API's calls; a change is a dict.

use crate::connection::Connection;
use crate::errors;
use crate::ffi_util::detached;
use crate::values::{self, TextMode};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::time::{Duration, Instant};

/// How long a wait holds the connection, and how often it lets Ctrl-C through.
const TICK: Duration = Duration::from_millis(50);

impl Connection {
    /// The feed's position: the last log position this node has committed (a device: applied).
    pub fn api_feed_position(&self, py: Python<'_>) -> PyResult<u64> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let position = g.engine()?.feed_position();
        Ok(position)
    }

    /// Wait until the feed's position passes `after`, at most `timeout` seconds (None: as long
    /// as it takes); returns the position, which is `after` or less when the time ran out.
    pub fn api_wait_feed(&self, py: Python<'_>, after: u64, timeout: Option<f64>) -> PyResult<u64> {
        let deadline = match timeout {
            Some(t) if !(t >= 0.0 && t.is_finite()) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "timeout must be a number of seconds, 0 or more (got {t})"
                )))
            }
            Some(t) => Some(Instant::now() + Duration::from_secs_f64(t)),
            None => None,
        };
        loop {
            let wait = deadline.map_or(TICK, |d| {
                d.saturating_duration_since(Instant::now()).min(TICK)
            });
            let position = {
                let inner = self.checked(py)?;
                let g = inner.db.lock(py);
                let engine = g.engine()?;
                // SAFETY: waiting touches no Python object.
                unsafe { detached(py, || engine.wait_feed(after, wait)) }
            };
            if position > after || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(position);
            }
            py.check_signals()?;
        }
    }

    /// The rows changed by the log entries after `after`, reading at most `max_entries`
    /// entries: `(changes, up_to)`, each change a dict; continue after `up_to`.
    pub fn api_changes_after<'py>(
        &self,
        py: Python<'py>,
        after: u64,
        max_entries: usize,
    ) -> PyResult<(Bound<'py, PyList>, u64)> {
        let batch = {
            let inner = self.checked(py)?;
            let g = inner.db.lock(py);
            let engine = g.engine()?;
            // SAFETY: reading the log touches no Python object.
            unsafe { detached(py, || engine.changes_after(after, max_entries)) }
                .map_err(|e| errors::from_engine(py, e))?
        };
        let list = PyList::empty(py);
        for change in &batch.changes {
            list.append(change_dict(py, change)?)?;
        }
        Ok((list, batch.up_to))
    }
}

/// `{"seq", "origin_node", "table", "rowid", "kind": "upsert" | "delete", "row": {column:
/// value} (empty for a delete)}`.
fn change_dict<'py>(py: Python<'py>, c: &octodb::feed::Change) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("seq", c.seq)?;
    d.set_item("origin_node", c.origin_node)?;
    d.set_item("table", &c.table)?;
    d.set_item("rowid", c.rowid)?;
    let kind = match c.kind {
        octodb::feed::ChangeKind::Upsert => "upsert",
        octodb::feed::ChangeKind::Delete => "delete",
    };
    d.set_item("kind", kind)?;
    let row = PyDict::new(py);
    for (column, v) in c.columns.iter().zip(&c.values) {
        row.set_item(column, values::from_engine(py, v, &TextMode::Str)?)?;
    }
    d.set_item("row", row)?;
    Ok(d)
}
