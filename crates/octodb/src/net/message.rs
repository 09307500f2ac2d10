//! The messages nodes exchange once a secure connection is up. Each encoded message starts with
//! its encoding's number. The protocol version is agreed in the handshake ([`super::version`]);
//! versions that encode messages alike share an encoding, and a version that changes one gets
//! a new encoding, in which a node then writes to the peers that agreed on it. The encoding of
//! each message is frozen in `tests/fixtures/wire/` (tests/wire_fixtures.rs).

use super::NetError;
use crate::changes::ChangeSet;
use crate::log::LogEntry;
use crate::uri::Role;
use crate::value::Value;
use serde::{Deserialize, Serialize};

/// The encoding of protocol versions 2 to 10 (2: Welcome tells a device the last of its
/// transactions the primaries decided; 4 adds `Heartbeat` at the end, which only peers of 4
/// receive, and leaves every other message's bytes as they were; 5 adds `PrimaryMembers` and
/// `NotLeader` after it, likewise; 6 appends `OpenChannel` and `ChannelOpen` the same way,
/// exchanged only with peers of 6; 7 appends `LogHistory`; 8 appends `OwnDigests` and
/// `CopiedFile`; 9 appends `SessionTicket`; 10 appends `CaughtUp`).
pub const MESSAGE_ENCODING: u8 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message of the connecting node: who it is and where its copy stands.
    Hello {
        role: Role,
        /// Last sequence number applied; 0 = empty, needs the initial download.
        last_seq: u64,
        /// JSON describing the node (platform, app-supplied fields).
        info: String,
        /// A node not yet authorized: its sign-up / login request (None: none made yet, or
        /// node-level authorization, where connecting is the request).
        auth: Option<AuthAsk>,
    },
    /// The primary needs a sign-up or login before anything else (auth=user).
    AuthRequired {
        reason: String,
    },
    /// The request reached the backend, which decides later; the connection stays open.
    AuthPending,
    /// The primary accepts the node.
    Welcome {
        node_id: u32,
        user_id: i64,
        node_type: Role,
        /// The last of this device's outbox transactions the primaries decided (0: none):
        /// a device whose file went back in time (restored from a backup) must not hand out
        /// those ids again for new work.
        last_decided_txn: u64,
    },
    /// The primary refuses the node; the connection closes after it.
    Refused {
        reason: String,
    },
    /// Initial download: schema first, then rows, then the sequence number it stands at.
    SnapshotBegin {
        seq: u64,
        schema: Vec<String>,
        total_rows: u64,
    },
    SnapshotRows {
        table: String,
        columns: Vec<String>,
        rows: Vec<(i64, Vec<Value>)>,
    },
    SnapshotEnd {
        seq: u64,
    },
    /// Log entries the receiver may see; `up_to` covers entries it may not see too.
    Entries {
        entries: Vec<LogEntry>,
        up_to: u64,
    },
    /// A device's pending transactions, oldest first, each with its id.
    Txns {
        txns: Vec<(u64, ChangeSet)>,
    },
    /// Protocol 4 and newer: sent when the connection has been silent for a heartbeat
    /// interval, so that the peer can tell a quiet connection from a dead one.
    Heartbeat,
    /// Protocol 5 and newer, primary → device after `Welcome` and whenever the primaries'
    /// cluster changes: every primary of the cluster, so that the device can fail over to
    /// them (it trusts their keys because the primary it trusts vouches for them).
    PrimaryMembers {
        members: Vec<PrimaryMember>,
    },
    /// Protocol 5 and newer, primary → device instead of `Hello`'s answer: this primary does
    /// not serve devices now (it follows, or its cluster is electing a leader); `leader` is
    /// where the leader listens when known. The connection closes after it.
    NotLeader {
        leader: Option<String>,
        reason: String,
    },
    /// Protocol 6 and newer, first message of the connecting node instead of `Hello`: it asks
    /// for the named service (`node::channels`) on this connection. The frames that follow
    /// belong to the service.
    OpenChannel {
        service: String,
    },
    /// Protocol 6: the primary opened the channel for this approved node (its node and user
    /// ids as the primary knows them); the service's frames follow. A refusal is `Refused`.
    ChannelOpen {
        node_id: u32,
        user_id: i64,
    },
    /// Protocol 7, primary → device after `Welcome`, and again when a new epoch of the log
    /// begins: the epochs of the primaries' log from the device's own on (`log::epochs`),
    /// and, when `resync` says why, that this primary is behind the device (restored from an
    /// older copy): the device downloads again, keeping its pending work.
    LogHistory {
        epochs: Vec<(u64, u64)>,
        resync: Option<String>,
    },
    /// Protocol 8, primary → device, just before an `Entries` message that decides some of
    /// the device's own transactions: by transaction id, the digest (`log::digest`) of each
    /// as the deciding primary received it. A device whose pending transaction under such an
    /// id is other work runs on a copy of another device's file: it stops rather than take
    /// that decision for its own work.
    OwnDigests {
        txns: Vec<(u64, [u8; 16])>,
    },
    /// Protocol 8, primary → device: the device sent, under transaction id `txn`, other work
    /// than the primaries decided under it, so its file is a copy of another device's in use.
    /// The connection closes after it.
    CopiedFile {
        txn: u64,
        reason: String,
    },
    /// Protocol 9, primary → device after its admission: a session ticket and its secret
    /// (`net::ticket`), good for `lifetime_s` seconds, with which the device's next connection
    /// to this primary takes the cheaper resumed handshake.
    SessionTicket {
        ticket: Vec<u8>,
        secret: [u8; 32],
        lifetime_s: u32,
    },
    /// Protocol 10, primary → device, once a session: the device has been sent everything
    /// visible to it up to `up_to`, where the log stood when it had caught up; from here on
    /// entries stream as they are decided. Lets a device (a script, a test, `octodb --sync`)
    /// know that it holds what the primaries held, rather than guess from a quiet connection.
    CaughtUp {
        up_to: u64,
    },
    /// Protocol 11, primary → device during its initial download, after `SnapshotBegin`
    /// (which then says 0 rows): how many rows the download holds, counted meanwhile, for its
    /// progress. Counting them first held the first rows back (a scan of each table: 80 ms
    /// for a million rows). Always before `SnapshotEnd`; none if the count failed.
    SnapshotTotal {
        total_rows: u64,
    },
    /// Protocol 13, primary → device, just before `SnapshotBegin`: the tables and columns the
    /// primaries' schema statements renamed, in order (`store::renames`): a device downloading
    /// again, its position beyond what their log still holds, missed those statements, and
    /// finds its local rows' tables and columns under their new names by them.
    Renames {
        renames: Vec<crate::store::renames::Rename>,
    },
}

/// A primary of the cluster as a device needs it: where to reach it and the key it proves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryMember {
    /// `host:port`.
    pub addr: String,
    /// Its Ed25519 public key, hex.
    pub public_key: String,
}

/// Builds the bytes of a [`Message::SnapshotRows`] row by row, straight from SQLite's values:
/// the initial download of a large database must not copy every value twice.
pub struct SnapshotRowsEncoder {
    head: Vec<u8>,
    body: Vec<u8>,
    rows: usize,
}

impl SnapshotRowsEncoder {
    pub fn new(table: &str, columns: &[String]) -> SnapshotRowsEncoder {
        let mut head = Message::SnapshotRows {
            table: table.to_string(),
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
        .encode();
        // The empty list's length (one 0 byte) is last; `finish` writes the real one.
        head.pop();
        SnapshotRowsEncoder {
            head,
            body: Vec::new(),
            rows: 0,
        }
    }

    /// Add a row: its rowid and its values (a sequence of [`WireValueRef`] or [`Value`]) in
    /// the order of the columns given to `new`.
    pub fn push(&mut self, rowid: i64, values: &impl Serialize) -> Result<(), NetError> {
        self.body = postcard::to_extend(&(rowid, values), std::mem::take(&mut self.body))
            .map_err(|e| NetError::Malformed(format!("cannot encode a row: {e}")))?;
        self.rows += 1;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The encoded message, as [`Message::encode`] would give it.
    pub fn finish(self) -> Result<Vec<u8>, NetError> {
        let mut out = postcard::to_extend(&self.rows, self.head)
            .map_err(|e| NetError::Malformed(format!("cannot encode a row count: {e}")))?;
        out.extend_from_slice(&self.body);
        Ok(out)
    }
}

/// A sign-up or login request with the app's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthAsk {
    pub action: crate::auth::Action,
    pub data: String,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MESSAGE_ENCODING];
        // Serialising owned data into a Vec cannot fail.
        if let Ok(body) = postcard::to_allocvec(self) {
            out.extend_from_slice(&body);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, NetError> {
        match bytes.split_first() {
            Some((&MESSAGE_ENCODING, body)) => postcard::from_bytes(body)
                .map_err(|e| NetError::Malformed(format!("undecodable message: {e}"))),
            Some((v, _)) => Err(NetError::Malformed(format!(
                "message in encoding {v}, which the protocol version agreed in the handshake \
                 does not use (it uses {MESSAGE_ENCODING})"
            ))),
            None => Err(NetError::Malformed("empty message".into())),
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Refused { .. } => "Refused",
            Message::AuthRequired { .. } => "AuthRequired",
            Message::AuthPending => "AuthPending",
            Message::SnapshotBegin { .. } => "SnapshotBegin",
            Message::SnapshotRows { .. } => "SnapshotRows",
            Message::SnapshotEnd { .. } => "SnapshotEnd",
            Message::Entries { .. } => "Entries",
            Message::Txns { .. } => "Txns",
            Message::Heartbeat => "Heartbeat",
            Message::PrimaryMembers { .. } => "PrimaryMembers",
            Message::NotLeader { .. } => "NotLeader",
            Message::OpenChannel { .. } => "OpenChannel",
            Message::ChannelOpen { .. } => "ChannelOpen",
            Message::LogHistory { .. } => "LogHistory",
            Message::OwnDigests { .. } => "OwnDigests",
            Message::CopiedFile { .. } => "CopiedFile",
            Message::SessionTicket { .. } => "SessionTicket",
            Message::CaughtUp { .. } => "CaughtUp",
            Message::SnapshotTotal { .. } => "SnapshotTotal",
            Message::Renames { .. } => "Renames",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let m = Message::Hello {
            role: Role::Secondary,
            last_seq: 7,
            info: "{}".into(),
            auth: None,
        };
        let b = m.encode();
        assert_eq!(Message::decode(&b).ok(), Some(m));
        let mut wrong = b.clone();
        wrong[0] = 99;
        assert!(
            matches!(Message::decode(&wrong), Err(NetError::Malformed(m)) if m.contains("encoding 99"))
        );
        assert!(Message::decode(&[MESSAGE_ENCODING, 0xff, 0xff]).is_err());
        assert!(Message::decode(&[]).is_err());
    }

    #[test]
    fn snapshot_rows_built_row_by_row_decode_as_the_message() {
        use crate::value::WireValueRef;
        let columns = vec!["a".to_string(), "b".to_string()];
        let rows = vec![
            (1, vec![Value::Integer(5), Value::Text("x".into())]),
            (1 << 40, vec![Value::Null, Value::Blob(vec![1, 2])]),
        ];
        let mut enc = SnapshotRowsEncoder::new("t", &columns);
        for (rowid, values) in &rows {
            let refs: Vec<WireValueRef<'_>> = values
                .iter()
                .map(|v| WireValueRef(v.as_value_ref()))
                .collect();
            enc.push(*rowid, &refs).unwrap();
        }
        let bytes = enc.finish().unwrap();
        let whole = Message::SnapshotRows {
            table: "t".into(),
            columns,
            rows,
        };
        assert_eq!(bytes, whole.encode());
        assert_eq!(Message::decode(&bytes).ok(), Some(whole));
    }
}
