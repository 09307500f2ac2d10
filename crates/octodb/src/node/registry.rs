//! One node per database file per process: every connection opened on a file shares it.

use super::Node;
use crate::error::{Error, Result};
use crate::uri::NodeConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

fn nodes() -> &'static Mutex<HashMap<PathBuf, Weak<Node>>> {
    static NODES: OnceLock<Mutex<HashMap<PathBuf, Weak<Node>>>> = OnceLock::new();
    NODES.get_or_init(|| Mutex::new(HashMap::new()))
}

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

/// The node for `cfg`'s file, started if this process does not have it open yet.
pub(crate) fn open_node(mut cfg: NodeConfig) -> Result<Arc<Node>> {
    cfg.path = canonical(&cfg.path)?;
    let mut map = nodes().lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(node) = map.get(&cfg.path).and_then(Weak::upgrade) {
        if !same_node(&node.shared.cfg, &cfg) {
            return Err(Error::rule(format!(
                "database `{}` is already open in this process with other parameters; open it with the same URI",
                cfg.path.display()
            )));
        }
        return Ok(node);
    }
    let node = Arc::new(Node::start(cfg.clone())?);
    if let Some(addr) = cfg.authorizer_service.clone() {
        node.set_authorizer_service(addr, crate::api::service_executor(&node.shared))?;
    }
    map.insert(cfg.path, Arc::downgrade(&node));
    Ok(node)
}
