//! The engine's error type. Messages say what went wrong and what the user can do about it.

use std::path::PathBuf;

/// What went wrong, with a message that says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URI (or a parameter of it) is wrong; the message names the parameter and the form
    /// it takes.
    #[error(transparent)]
    Uri(#[from] crate::uri::UriError),
    /// SQLite's own error (a constraint, a syntax error, a busy database), as rusqlite gives it
    /// (`octodb::rusqlite::Error`): match its code as with rusqlite.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An encrypted file opened with another key or none, or a key given for a plain file.
    #[error("cannot open `{path}`: wrong key or not an encrypted database; give the key the file was encrypted with (cipher=sqlcipher&key=...), or open a plain file without `cipher`")]
    WrongKey { path: PathBuf },
    /// Another process runs a node on this file (`holder`: its process id, when known).
    #[error("database `{path}` is already open in another process{}; close that process or open another file", holder.map(|pid| format!(" (process {pid})")).unwrap_or_default())]
    Locked { path: PathBuf, holder: Option<u32> },
    /// A file or socket operation failed; `what` says on what.
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The network layer (a handshake, a message, a peer that broke the protocol).
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A cryptographic operation failed (a key, a signature).
    #[error(transparent)]
    Crypto(#[from] crate::crypto::CryptoError),
    /// The admin console could not start or answer.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// A replication rule was broken by the statement; the message names the rule.
    #[error("{0}")]
    Rule(String),
    /// The backend refused this device (its sign-up or login, or its key was revoked), or its
    /// file was found to be a copy of another device's in use: no wait helps, and the message
    /// says what does. The waits (`wait_until_ready`, `wait_until_synced`) end with it at once;
    /// `sync_status().auth_error` holds the backend's own words, to show a user.
    #[error("{0}")]
    Refused(String),
    /// A statement a replicated node does not permit (lowering `synchronous`, renaming
    /// `row_owner`), refused before it ran, as a read-only database refuses a write.
    #[error("{0}")]
    NotPermitted(String),
    /// The primaries' cluster could not take or confirm a transaction now (a leader change, a
    /// lost majority, a disk that refuses): a matter of availability, not a broken rule.
    #[error("{0}")]
    Cluster(String),
    /// The primaries' cluster could not take a transaction now (no leader yet, a leader
    /// change, its leader out of reach, a primary still joining): nothing of it was applied,
    /// so running it again is safe. (Python: `OperationalError` with SQLite's
    /// `SQLITE_BUSY`, the code apps already retry on.)
    #[error("{0}")]
    Unavailable(String),
    /// One of octodb's PRAGMAs was given a value it cannot take, or asked where it does not
    /// apply (a device's PRAGMA on a primary).
    #[error("PRAGMA {name}: {reason}")]
    Pragma { name: String, reason: String },
    /// The node's own data in the file is damaged.
    #[error("internal data of `{0}` is damaged: {1}; restore the file from a backup or delete it to download again")]
    Corrupt(PathBuf, String),
    /// A wait ran out; the message says what it waited for and why it is not there.
    #[error("timed out: {0}")]
    Timeout(String),
    /// On a follower of a cluster, a transaction that changed a row another transaction
    /// changed since it began: nothing of it was applied; read again and retry.
    #[error(
        "conflict: {0}. Nothing of this transaction was applied: read the rows again and retry it"
    )]
    Conflict(String),
    /// The node of this connection stopped.
    #[error("the octodb node has shut down; open the database again")]
    Closed,
    /// This device's file is a copy of another device's in use (its sync stops; see the
    /// message, and `PRAGMA new_identity`).
    #[error("this device's file is a copy of another device's that is in use: the primaries decided other work under its transaction id {txn}. It stops syncing, its pending work kept; run PRAGMA new_identity and open the database again to go on under a new key, which the backend approves afresh")]
    CopiedFile { txn: u64 },
    /// A change-feed position older than the primary's (compacted) log.
    #[error("the change feed's position {after} is older than the primary's log, which now starts at {start} (compacted to its newest log_keep= entries): read again from {start} on, or from the current position")]
    LogCompacted { after: u64, start: u64 },
    /// A change-feed position past the log's end (kept from before a restore, or another
    /// primary's).
    #[error("the change feed's position {after} is past its end ({end}): a position kept from before the primary was restored from an older copy (the entries after {end} were lost with it; new ones take their numbers), or from another primary's feed; read again from a position at or before {end}")]
    FeedAhead { after: u64, end: u64 },
}

/// How [`Error::CopiedFile`]'s message begins (a device's `sync_error` shows it): a stop that
/// lasts until the app acts, so waits for sync end at once on it.
pub(crate) const COPIED_FILE_BEGINS: &str = "this device's file is a copy of another device's";

impl Error {
    pub fn rule(msg: impl Into<String>) -> Error {
        Error::Rule(msg.into())
    }
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[test]
    fn the_copied_file_message_begins_as_the_waits_look_for() {
        let e = super::Error::CopiedFile { txn: 7 }.to_string();
        assert!(e.starts_with(super::COPIED_FILE_BEGINS), "{e}");
    }
}
