//! One process per database file: an exclusive lock on a side file `<db>.octolock`.
//!
//! SQLite's own locks let several processes share a file; a replicated node must not, because
//! two engines would hand out the same row ids and sequence numbers.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Held for as long as the node is open; the OS releases it if the process dies.
#[derive(Debug)]
pub struct ProcessLock {
    _file: File,
}

pub fn lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".octolock");
    PathBuf::from(s)
}

impl ProcessLock {
    pub fn acquire(db: &Path) -> Result<ProcessLock> {
        let path = lock_path(db);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("lock file {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {
                // Which process holds it, for the operator and for the refusal of another.
                // (`flock` locks: reading or closing other handles of the file keeps them.)
                let mut file = file;
                let noted = file
                    .set_len(0)
                    .and_then(|()| writeln!(file, "{}", std::process::id()));
                if let Err(e) = noted {
                    tracing::debug!("cannot write the process id into {}: {e}", path.display());
                }
                Ok(ProcessLock { _file: file })
            }
            Err(TryLockError::WouldBlock) => Err(Error::Locked {
                path: db.to_path_buf(),
                holder: std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok()),
            }),
            Err(TryLockError::Error(e)) => {
                Err(Error::io(format!("lock file {}", path.display()), e))
            }
        }
    }

    /// Whether a node holds `db`'s lock now: `Some(process id)` (0 when its file does not
    /// say), without taking it or writing its file (it may be the service user's, read-only
    /// here). A file with no lock file beside it has never had a node.
    pub fn holder(db: &Path) -> Result<Option<u32>> {
        let path = lock_path(db);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("lock file {}", path.display()), e)),
        };
        match file.try_lock() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => Ok(Some(
                std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0),
            )),
            Err(TryLockError::Error(e)) => {
                Err(Error::io(format!("lock file {}", path.display()), e))
            }
        }
    }
}
