//! One node per database file per process: every connection opened on a file shares it.

use super::Node;
use crate::error::{Error, Result};
use crate::uri::NodeConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A node of this process, by its file.
struct Entry {
    node: Weak<Node>,
    stopped: Arc<Gate>,
}

fn nodes() -> &'static Mutex<HashMap<PathBuf, Entry>> {
    static NODES: OnceLock<Mutex<HashMap<PathBuf, Entry>>> = OnceLock::new();
    NODES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether a node has stopped, and the wake-up of those waiting for it.
#[derive(Default)]
pub(crate) struct Gate {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn is_open(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the node has stopped or `deadline` passes; returns whether it stopped.
    fn wait(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopped = self
                .changed
                .wait_timeout(stopped, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// A node's last part: dropped once everything else of it (its lock on the file among it) is,
/// it opens the gate.
#[derive(Default)]
pub(crate) struct Stopped(Arc<Gate>);

impl Drop for Stopped {
    fn drop(&mut self) {
        *self.0.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.changed.notify_all();
    }
}

/// How long an opener waits for this process's node of the same file to finish stopping.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// The absolute path of a database file that may not exist yet.
fn canonical(path: &Path) -> Result<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Ok(p);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = parent
        .canonicalize()
        .map_err(|e| Error::io(format!("directory {} of the database", parent.display()), e))?;
    Ok(dir.join(path.file_name().unwrap_or(path.as_os_str())))
}

/// Whether `a` and `b` describe the same node. The key of an encrypted file is not compared:
/// SQLCipher checks it on the connection opened with it, and after a `PRAGMA rekey` the node's
/// own URI names the old one.
fn same_node(a: &NodeConfig, b: &NodeConfig) -> bool {
    match (a.cipher, b.cipher) {
        (Some(_), Some(_)) => {
            NodeConfig {
                key: None,
                ..a.clone()
            } == NodeConfig {
                key: None,
                ..b.clone()
            }
        }
        _ => a == b,
    }
}

/// The node for `cfg`'s file, started if this process does not have it open yet. One whose
/// last connection closed a moment ago may still be stopping (an app opening a connection per
/// request does this all the time): it is waited for, then started again, not refused as if
/// another process held the file.
pub(crate) fn open_node(mut cfg: NodeConfig) -> Result<Arc<Node>> {
    cfg.path = canonical(&cfg.path)?;
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        let mut map = nodes().lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| e.node.strong_count() > 0 || !e.stopped.is_open());
        if let Some(entry) = map.get(&cfg.path) {
            if let Some(node) = entry.node.upgrade() {
                if !same_node(&node.shared.cfg, &cfg) {
                    return Err(Error::rule(format!(
                        "database `{}` is already open in this process with other parameters; open it with the same URI",
                        cfg.path.display()
                    )));
                }
                return Ok(node);
            }
            let stopping = entry.stopped.clone();
            drop(map);
            if stopping.wait(deadline) {
                continue;
            }
            // Still stopping after all that time: starting says what holds the file.
            map = nodes().lock().unwrap_or_else(|p| p.into_inner());
        }
        let node = Arc::new(Node::start(cfg.clone())?);
        if let Some(addr) = cfg.authorizer_service.clone() {
            node.set_authorizer_service(addr, crate::api::service_executor(&node.shared))?;
        }
        let entry = Entry {
            node: Arc::downgrade(&node),
            stopped: node.stopped.0.clone(),
        };
        map.insert(cfg.path, entry);
        return Ok(node);
    }
}
