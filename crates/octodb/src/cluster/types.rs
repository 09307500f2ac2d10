//! What the primaries' Raft log carries, and how a member is addressed.

use crate::log::EntryBody;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Cursor;

/// One entry of the Raft log, as the leader proposes it. Stored in every primary's file and
/// sent between primaries: never reorder its variants or fields (postcard encodes them by
/// position); add new ones at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Proposal {
    /// Transactions the leader decided, in order: each becomes one entry of the primaries'
    /// log, with the next sequence number, on every primary.
    Decided(Vec<Decided>),
    /// A batch the leader wrote in the same SQLite transaction as its effects (see
    /// `write_through`): its transactions are the leader's `_octo_log` rows
    /// `first_seq..=last_seq`. Only stored in the leader's own Raft log; sent to other
    /// primaries as the `Decided` it stands for.
    InLog { first_seq: u64, last_seq: u64 },
    /// A batch a primary proposes from inside its write transaction, under an id that lets
    /// it void the batch when it gives it up (`write_through`). Its entry is either written
    /// through, stored as [`Proposal::InLog`], or voided, so it is proposed with no
    /// transactions; entries stored by older versions may hold them, applied as
    /// [`Proposal::Decided`].
    Batch { id: u64, txns: Vec<Decided> },
    /// The authorization state a primary changed (its nodes' and users' rows, whole, as they
    /// now are in `_octo_nodes` and `_octo_users`), under an id as [`Proposal::Batch`].
    Rows {
        id: u64,
        nodes: Vec<Vec<crate::Value>>,
        users: Vec<Vec<crate::Value>>,
    },
    /// [`Proposal::Rows`] as the primary that wrote them through stores it: its rows are in
    /// its file already, and its state machine must not write them again (an older image
    /// applied late would overwrite a newer decision). Sent to other primaries as `Rows`.
    RowsWritten {
        nodes: Vec<Vec<crate::Value>>,
        users: Vec<Vec<crate::Value>>,
    },
    /// [`Proposal::Decided`] with, for each transaction, the digest of the device's work it
    /// decided as the leader received it (`log::digest`; None for a primary's own writes):
    /// how a leader sends its written-through batches to primaries of protocol 8 and newer,
    /// so that they keep the digests too and, once one of them leads, still tell a copy of a
    /// device's file from the device.
    DecidedChecked {
        txns: Vec<Decided>,
        digests: Vec<Option<[u8; 16]>>,
    },
}

impl Proposal {
    /// Its effects were written with it, in the same SQLite transaction, by this primary
    /// (only its own Raft log stores such entries): nothing to apply, nothing to take back.
    pub fn is_written_through(&self) -> bool {
        matches!(self, Proposal::InLog { .. } | Proposal::RowsWritten { .. })
    }
}

/// A transaction as the leader decided it: its effects as the primaries apply them (triggers'
/// effects on replicated tables included), or its rejection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decided {
    /// The node whose transaction this is (a primary's own writes: that primary).
    pub origin_node: u32,
    /// That node's transaction id (0 for a primary's own writes).
    pub origin_txn: u64,
    pub body: EntryBody,
}

/// What applying a proposal gave: the log position after it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub last_seq: u64,
}

/// A primary as the cluster knows it: where it listens and the key it proves in every
/// handshake (a connection to an address that presents another key is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` other primaries reach it at (its `advertise=`, else its `bind=`).
    pub addr: String,
    /// Its Ed25519 identity, hex.
    pub public_key: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.public_key)
    }
}

openraft::declare_raft_types!(
    /// The primaries' Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);
