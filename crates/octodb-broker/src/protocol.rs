//! The frames of a broker channel. Envelopes are postcard-encoded (serde); the values inside
//! are in the broker's own encoding ([`crate::codec`]), decoded under its limits.

use crate::error::RemoteError;
use crate::key::{Key, ObjRef};
use serde::{Deserialize, Serialize};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A client's request; the server answers each with a [`ServerFrame::Reply`] of the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

/// Encoded values (see [`crate::codec`]).
pub type Encoded = Vec<u8>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// The root object.
    Root,
    /// An object's state, by its reference.
    Fetch {
        target: ObjRef,
    },
    /// A method of an object (`target`), or a plain server call (None). `args` is a tuple of
    /// (positional list, keyword dict).
    Call {
        target: Option<ObjRef>,
        method: String,
        args: Encoded,
    },
    /// The objects behind a one-to-many reference.
    BackRef {
        target: ObjRef,
        name: String,
    },
    /// `get`/`find`/`count` on a class; `eq` is a dict of field to value.
    Search {
        class: String,
        eq: Encoded,
        limit: Option<u32>,
        mode: SearchMode,
    },
    /// A new object of a class, with its fields (a dict).
    New {
        class: String,
        values: Encoded,
    },
    /// Field changes: a dict of field to `(old, new)`; refused if the old value changed.
    Update {
        target: ObjRef,
        changes: Encoded,
    },
    Delete {
        target: ObjRef,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchMode {
    /// Exactly one result, else NoData / ManyData.
    Get,
    Find,
    Count,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    Reply {
        id: u64,
        result: Result<Encoded, RemoteError>,
    },
    /// These objects changed or were deleted: drop them, fetch them again on next use.
    Invalidate { keys: Vec<Key> },
    /// Objects of this class changed, appeared or went: cached searches of it are stale.
    ClassChanged { class: String },
}

/// A reply's frame; a reply larger than the client accepts becomes the error that says so
/// (sent as it was, the client would drop the connection, and its caller would hear only that
/// the request "may or may not have run").
pub fn reply_within_limit(id: u64, result: Result<Encoded, RemoteError>) -> Vec<u8> {
    let frame = encode(&ServerFrame::Reply { id, result });
    if frame.len() <= MAX_FRAME {
        return frame;
    }
    let too_large = crate::BrokerError::Codec(crate::codec::CodecError::TooLarge {
        size: frame.len(),
        max: MAX_FRAME,
    });
    encode(&ServerFrame::Reply {
        id,
        result: Err(RemoteError::from(&too_large)),
    })
}

pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    // Serialising owned data into a Vec cannot fail.
    postcard::to_allocvec(frame).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, crate::BrokerError> {
    if bytes.len() > MAX_FRAME {
        return Err(crate::codec::CodecError::TooLarge {
            size: bytes.len(),
            max: MAX_FRAME,
        }
        .into());
    }
    postcard::from_bytes(bytes).map_err(|e| {
        crate::codec::CodecError::Malformed(format!("undecodable broker frame: {e}")).into()
    })
}
