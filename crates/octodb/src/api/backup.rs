//! A consistent copy of a node's file while the node runs (`octodb backup`, the shell's
//! `.backup`): SQLite's `VACUUM INTO` on a read-only connection of its own, so the node goes on
//! writing meanwhile. An encrypted file's copy is encrypted with the same key.
//!
//! A copy of a primary that has other members in its cluster is marked as a restored copy:
//! opened as a primary it rejoins its cluster as a new member. Raft's safety needs it: the
//! copy may be older than what this primary acknowledged to the others (entries it held,
//! a vote it cast), and a member that forgot those must not count under its old id.

use super::local::{open_plain, Encrypted, OpenOptions};
use crate::error::{Error, Result};
use crate::uri::NodeConfig;
use std::path::Path;

/// Copies the database `cfg` names into the new file `dest` (never overwritten). Returns
/// whether the copy is marked to rejoin its cluster as a new member once restored.
pub fn backup(cfg: &NodeConfig, dest: &Path) -> Result<bool> {
    if dest.exists() {
        return Err(Error::rule(format!(
            "`{}` exists already: name a new file for the backup",
            dest.display()
        )));
    }
    if !cfg.path.exists() {
        return Err(Error::rule(format!(
            "there is no database at `{}`",
            cfg.path.display()
        )));
    }
    let dest_str = dest
        .to_str()
        .ok_or_else(|| Error::rule("the backup's path is not valid UTF-8"))?;
    // A plain connection that only reads: the node's lock is not taken, and reading its file
    // beside it is what WAL allows.
    let opts = OpenOptions {
        uri: false,
        busy_timeout: std::time::Duration::from_secs(30),
    };
    let key = cfg.file_key();
    let encrypted = |file| key.map(|key| Encrypted { file, key });
    let source = open_plain(&cfg.path, &opts, encrypted(&cfg.path))?;
    // SQLCipher writes the copy with the source's key and salt.
    source.execute("VACUUM INTO ?1", [dest_str])?;
    drop(source);
    let copy = open_plain(dest, &opts, encrypted(dest))?;
    crate::cluster::mark_restored_copy(&copy)
}
