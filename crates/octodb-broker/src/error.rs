//! The broker's errors. A server-side failure reaches the client with its kind and message
//! ([`RemoteError`]), never as a bare assertion.

use crate::codec::CodecError;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A search that must find exactly one object found none.
    #[error("no {class} matches {criteria}")]
    NoData { class: String, criteria: String },
    /// A search that must find exactly one object found several.
    #[error("{count} objects of {class} match {criteria}, expected one: narrow the search")]
    ManyData {
        class: String,
        criteria: String,
        count: u64,
    },
    /// The object is gone (deleted), or never existed.
    #[error("object {0} not found: it was deleted, or never existed")]
    NotFound(String),
    /// The export does not allow this (read-only, attributes only, another user's object,
    /// a key the server never handed out).
    #[error("permission denied: {0}")]
    Permission(String),
    /// An update carried an old value the object no longer has: someone changed it meanwhile.
    #[error("conflict: {0}; fetch the object again and retry")]
    Conflict(String),
    /// The request names something the server does not export.
    #[error("{0}")]
    Unknown(String),
    /// The server's code raised an error.
    #[error("{kind}: {message}")]
    Remote { kind: String, message: String },
    #[error("value encoding: {0}")]
    Codec(#[from] CodecError),
    #[error("database: {0}")]
    Engine(#[from] octodb::Error),
    /// The connection to the server is gone; the client reconnects by itself.
    #[error("broker connection: {0}")]
    Connection(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("internal broker error: {0}")]
    Internal(String),
    /// The server's primaries could not take a write now (no leader, a fail-over under way):
    /// nothing of it was applied, so it may simply be sent again.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The broker cannot start on this primary yet (its secret is made by the cluster's leader
    /// and has not reached this one): a matter of order, said with what to do.
    #[error("{0}")]
    NotYet(String),
}

impl From<rusqlite::Error> for BrokerError {
    fn from(e: rusqlite::Error) -> Self {
        BrokerError::Engine(octodb::Error::Sqlite(e))
    }
}

/// An error as it travels to the client: its kind (for the client to raise the same type) and
/// its message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    pub kind: String,
    pub message: String,
}

impl BrokerError {
    /// The message without the kind in front, for a caller that shows the kind by the error's
    /// type (Python's exception classes): a remote error's own message, else the whole text.
    pub fn detail(&self) -> String {
        match self {
            BrokerError::Remote { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

impl From<&BrokerError> for RemoteError {
    fn from(e: &BrokerError) -> RemoteError {
        // The kinds the client makes the same variant of again travel with their bare detail,
        // else the client's text would say the variant's words twice.
        let bare = match e {
            BrokerError::NotFound(m)
            | BrokerError::Permission(m)
            | BrokerError::Conflict(m)
            | BrokerError::Unavailable(m) => Some(m.clone()),
            BrokerError::Engine(octodb::Error::Unavailable(m)) => Some(m.clone()),
            _ => None,
        };
        let kind = match e {
            BrokerError::NoData { .. } => "NoData",
            BrokerError::ManyData { .. } => "ManyData",
            BrokerError::NotFound(_) => "NotFound",
            BrokerError::Permission(_) => "PermissionError",
            BrokerError::Conflict(_) => "Conflict",
            BrokerError::Unknown(_) => "AttributeError",
            BrokerError::Remote { kind, message } => {
                return RemoteError {
                    kind: kind.clone(),
                    message: message.clone(),
                }
            }
            BrokerError::Codec(_) => "ValueError",
            BrokerError::Unavailable(_) | BrokerError::Engine(octodb::Error::Unavailable(_)) => {
                "Unavailable"
            }
            BrokerError::Engine(_) => "DatabaseError",
            BrokerError::Connection(_) => "ConnectionError",
            BrokerError::Timeout(_) => "TimeoutError",
            BrokerError::Internal(_) | BrokerError::NotYet(_) => "RuntimeError",
        };
        RemoteError {
            kind: kind.into(),
            message: bare.unwrap_or_else(|| e.to_string()),
        }
    }
}

impl From<RemoteError> for BrokerError {
    fn from(r: RemoteError) -> BrokerError {
        BrokerError::Remote {
            kind: r.kind,
            message: r.message,
        }
    }
}

impl RemoteError {
    /// The client's typed error for what the server sent.
    pub fn into_error(self) -> BrokerError {
        match self.kind.as_str() {
            "NotFound" => BrokerError::NotFound(self.message),
            "PermissionError" => BrokerError::Permission(self.message),
            "Conflict" => BrokerError::Conflict(self.message),
            "Unavailable" => BrokerError::Unavailable(self.message),
            _ => BrokerError::Remote {
                kind: self.kind,
                message: self.message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An engine write refused as not applied reaches a Rust client as a variant it can
    /// match on to send the write again.
    #[test]
    fn an_unavailable_write_stays_typed_across_the_wire() {
        let server_side = BrokerError::Engine(octodb::Error::Unavailable("no leader".into()));
        let sent = RemoteError::from(&server_side);
        assert_eq!(sent.kind, "Unavailable");
        assert!(matches!(sent.into_error(), BrokerError::Unavailable(m) if m == "no leader"));
    }
}
