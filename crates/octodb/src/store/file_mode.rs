//! A node's file holds its secret key (and a primary's admin token): it is created readable by
//! its owner only, as `ssh-keygen` does for a private key. SQLite gives a new database the
//! umask's mode (0644 on most systems) and gives its WAL and shared-memory files the mode of the
//! database, so creating the empty file first, 0600, keeps all three private.

use crate::error::{Error, Result};
use std::path::Path;

/// Create `path` empty and private when it does not exist; warn when an existing node file can
/// be read by other users.
pub fn keep_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::metadata(path) {
            Ok(meta) => {
                if meta.is_file() && meta.permissions().mode() & 0o044 != 0 {
                    tracing::warn!(
                        "{} can be read by other users of this machine, and it holds this \
                         node's secret key: make it private (chmod 600 {})",
                        path.display(),
                        path.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let created = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path);
                match created {
                    Ok(_) => {}
                    // Another process created it in between: SQLite opens that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Error::io(
                            format!("creating the database {}", path.display()),
                            e,
                        ))
                    }
                }
            }
            // SQLite will say what is wrong with it.
            Err(_) => {}
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
