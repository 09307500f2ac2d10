//! A consistent copy of a node's file while the node runs (`octodb backup`, the shell's
//! `.backup`): SQLite's `VACUUM INTO` on a read-only connection of its own, so the node goes on
//! writing meanwhile. An encrypted file's copy is encrypted with the same key.
//!
//! A copy of a primary that has other members in its cluster is marked as a restored copy:
//! opened as a primary it rejoins its cluster as a new member. Raft's safety needs it: the
//! copy may be older than what this primary acknowledged to the others (entries it held,
//! a vote it cast), and a member that forgot those must not count under its old id. A copy
//! of a primary alone reserves the node and user ids above its own instead: restored, the
//! primary would otherwise hand out again the ids of the devices approved after the copy
//! (`node::restored_ids`).

use super::local::{open_plain, Encrypted, OpenOptions};
use crate::cluster::RestoreMark;
use crate::error::{Error, Result};
use crate::uri::NodeConfig;
use std::path::{Path, PathBuf};

/// Copies the database `cfg` names into the new file `dest` (never overwritten). Returns what
/// the copy of a primary will do once restored (`RestoreMark`).
pub fn backup(cfg: &NodeConfig, dest: &Path) -> Result<RestoreMark> {
    if !cfg.path.exists() {
        return Err(Error::rule(format!(
            "there is no database at `{}`",
            cfg.path.display()
        )));
    }
    // A plain connection that only reads: the node's lock is not taken, and reading its file
    // beside it is what WAL allows.
    let opts = file_options();
    let key = cfg.file_key();
    let encrypted = |file| key.map(|key| Encrypted { file, key });
    let source = open_plain(&cfg.path, &opts, encrypted(&cfg.path))?;
    copy_into(dest, key, true, |partial| {
        let partial_str = partial
            .to_str()
            .ok_or_else(|| Error::rule("the backup's path is not valid UTF-8"))?;
        // SQLCipher writes the copy with the source's key and salt. (VACUUM INTO writes into
        // an empty file.)
        source
            .execute("VACUUM INTO ?1", [partial_str])
            .map_err(|e| crate::store::not_a_database(&cfg.path, e))?;
        Ok(())
    })
}

/// A copy of a node's file `source` made another way (`octodb encrypt` and `octodb decrypt`
/// export it through SQLCipher): `write` fills the empty file it is given, readable by its
/// owner only, which takes `target`'s path once complete. A copy of a running node's file is
/// marked as [`backup`] marks its copies (opened with `target`'s file key): a member's copy put
/// in place under its old identity would break Raft's safety. A stopped node's is its file
/// exactly, and is not marked (marked, a converted member would leave its cluster to rejoin
/// it, which a cluster of two, or one whose members were all converted, cannot let it do):
/// its node's lock is held meanwhile, so that none starts on it.
pub fn write_copy(
    source: &Path,
    target: &NodeConfig,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<RestoreMark> {
    use crate::store::lock::{lock_path, ProcessLock};
    let running = ProcessLock::holder(source)?.is_some();
    // (A file no node ever ran on has no lock file, and gets none.)
    let _held = match running || !lock_path(source).exists() {
        true => None,
        false => match ProcessLock::acquire(source) {
            Ok(lock) => Some(lock),
            // It started meanwhile: a running node's copy.
            Err(Error::Locked { .. }) => return write_copy(source, target, write),
            Err(e) => return Err(e),
        },
    };
    copy_into(&target.path, target.file_key(), running, write)
}

/// `write` fills a [`PartialCopy`] of `dest`, which is marked (opened with `key`) when `mark`,
/// and then published.
fn copy_into(
    dest: &Path,
    key: Option<&crate::uri::NetworkKey>,
    mark: bool,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<RestoreMark> {
    let partial = PartialCopy::new(dest)?;
    write(&partial.path)?;
    if !mark {
        partial.publish(dest)?;
        return Ok(RestoreMark::Unmarked);
    }
    let opts = file_options();
    let encrypted = key.map(|key| Encrypted {
        file: &partial.path,
        key,
    });
    let copy = open_plain(&partial.path, &opts, encrypted)?;
    let mark = crate::cluster::mark_restored_copy(&copy)?;
    drop(copy);
    partial.publish(dest)?;
    Ok(mark)
}

/// How the tools here open a node's file beside the node: a path, not a URI, waiting out the
/// node's writes.
fn file_options() -> OpenOptions {
    OpenOptions {
        uri: false,
        busy_timeout: std::time::Duration::from_secs(30),
    }
}

/// The backup being written, under a name of its own beside the destination
/// (`DEST.partial-PID`), created empty and readable by its owner only: the copy holds the
/// node's secret key (and its admin token), so it must not be readable by every user of the
/// machine as a file created with the usual umask is. It takes the destination's name only
/// once complete, so a backup cut off half way (a full disk, or the process killed: the ops
/// walkthrough's SIGTERM left 14 MB and a journal that rolled back to an empty database) never
/// leaves a file at the destination to be restored, or to refuse the next attempt as existing.
/// Removed unless published; a process killed outright leaves it under its `.partial-` name.
struct PartialCopy {
    path: PathBuf,
    published: bool,
}

impl PartialCopy {
    fn new(dest: &Path) -> Result<PartialCopy> {
        if dest.exists() {
            return Err(exists_already(dest));
        }
        let mut name = dest.as_os_str().to_owned();
        name.push(format!(".partial-{}", std::process::id()));
        let path = PathBuf::from(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(_) => Ok(PartialCopy {
                path,
                published: false,
            }),
            Err(e) => Err(Error::io(format!("creating `{}`", path.display()), e)),
        }
    }

    /// Gives the complete copy the destination's name, never over a file that appeared there
    /// meanwhile (a hard link fails if the name is taken; where links are not supported, a
    /// rename after a check), and makes the new name durable.
    fn publish(mut self, dest: &Path) -> Result<()> {
        match std::fs::hard_link(&self.path, dest) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(exists_already(dest))
            }
            Err(_) if dest.exists() => return Err(exists_already(dest)),
            Err(_) => std::fs::rename(&self.path, dest)
                .map_err(|e| Error::io(format!("naming the backup `{}`", dest.display()), e))?,
        }
        self.published = true;
        sync_directory_of(dest);
        Ok(())
    }
}

impl Drop for PartialCopy {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
            // (A conversion's copy may have been switched to WAL before it failed.)
            for suffix in ["-journal", "-wal", "-shm"] {
                let mut beside = self.path.as_os_str().to_owned();
                beside.push(suffix);
                let _ = std::fs::remove_file(beside);
            }
        }
    }
}

fn exists_already(dest: &Path) -> Error {
    Error::rule(format!(
        "`{}` exists already: name a new file for the backup",
        dest.display()
    ))
}

/// A new directory entry survives a power cut once its directory is synced (best effort: the
/// copy itself was synced by SQLite as it was written).
fn sync_directory_of(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!("cannot sync `{}` after the backup: {e}", dir.display());
        }
    }
}

/// What [`restore_cluster`] made of a primary's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredCluster {
    /// The primary's node id, under which it forms the new cluster.
    pub node_id: u32,
    /// The addresses of the members of the cluster the file came from, which the new cluster
    /// does not call: a primary there that is still running would make a second cluster.
    pub former_members: Vec<String>,
    /// The node and user ids reserved for the devices approved after the copy was taken
    /// (None: reserved already).
    pub reserved: Option<crate::ReservedIds>,
}

/// Disaster recovery, when every primary of a cluster is lost: makes the primary's file `cfg`
/// names (typically a backup put back in place) the first and only member of a new cluster.
/// Opened as a primary afterwards, it leads a cluster of one with the rows and log of the
/// copy, and other primaries join it with `connect=` as new members (from fresh files). The
/// node must not be running. Without this a restored copy of a member waits for its old
/// members to let it rejoin.
pub fn restore_cluster(cfg: &NodeConfig) -> Result<RestoredCluster> {
    let (_lock, conn) = open_stopped_primary(cfg)?;
    if !crate::cluster::has_raft_tables(&conn)? {
        return Err(Error::rule(format!(
            "`{}` has no cluster state (a primary's file from before clusters): opened as a \
             primary it forms a cluster of its own by itself",
            cfg.path.display()
        )));
    }
    // The first primary of a cluster is node 1 without noting it (`node::load_identity`).
    let node_id = crate::store::meta_get::<i64>(&conn, "node_id")?
        .and_then(|id| u32::try_from(id).ok())
        .filter(|id| *id > 0)
        .unwrap_or(1);
    let (former_members, reserved) = crate::cluster::start_new_cluster(&conn, node_id)?;
    Ok(RestoredCluster {
        node_id,
        former_members,
        reserved,
    })
}

/// For a primary's file restored from a copy that `octodb backup` did not make (a file system
/// snapshot, a copy of its files, `VACUUM INTO`): marks it as `octodb backup` marks its
/// copies. A member of a cluster of several then rejoins its cluster as a new member (the
/// copy may be older than what the member acknowledged to the others, which Raft's safety
/// cannot allow under its old identity); a primary alone reserves the node and user ids it
/// may have handed out after the copy, for the devices that hold them. The node must not be
/// running.
pub fn mark_restored(cfg: &NodeConfig) -> Result<RestoreMark> {
    let (_lock, conn) = open_stopped_primary(cfg)?;
    crate::cluster::mark_restored_copy(&conn)
}

/// The file of a primary whose node is stopped, held so that none starts meanwhile, opened
/// with the key `cfg` gives.
fn open_stopped_primary(
    cfg: &NodeConfig,
) -> Result<(crate::store::lock::ProcessLock, rusqlite::Connection)> {
    if !cfg.path.exists() {
        return Err(Error::rule(format!(
            "there is no database at `{}`",
            cfg.path.display()
        )));
    }
    // The node's own lock: a running node would go on with its state changed under it.
    let lock = crate::store::lock::ProcessLock::acquire(&cfg.path)?;
    let opts = file_options();
    let key = cfg.file_key();
    let conn = open_plain(
        &cfg.path,
        &opts,
        key.map(|key| Encrypted {
            file: &cfg.path,
            key,
        }),
    )?;
    // The first read: an encrypted file opened without its key fails here.
    let has_meta: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = '_octo_meta')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| crate::store::not_a_database(&cfg.path, e))?;
    let node_type = match has_meta {
        true => crate::store::meta_get::<String>(&conn, "node_type")?,
        false => None,
    };
    if node_type.as_deref() != Some("primary") {
        return Err(Error::rule(format!(
            "`{}` is not the file of a primary (it is a {})",
            cfg.path.display(),
            node_type
                .as_deref()
                .map_or("plain database", |_| "device's file")
        )));
    }
    Ok((lock, conn))
}
