//! Ordered history. Primaries keep the total order of accepted transactions (`_octo_log`);
//! devices keep their pending transactions (the outbox) and rebase them over what arrives.

pub mod compaction;
pub mod digest;
pub mod epochs;
mod local_rows;
pub mod outbox;
mod predict;
pub mod rebase;
pub mod recent;
mod schema_moves;
mod unique_clash;

use crate::changes::ChangeSet;
use crate::error::Result;
use crate::store::capture::Captured;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// One step of the primaries' history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    /// The node whose transaction this is (the primary itself for its own writes).
    pub origin_node: u32,
    /// That node's transaction id (0 for a primary's own writes).
    pub origin_txn: u64,
    pub body: EntryBody,
    /// A device's transaction: the digest of its change set as the deciding primary received
    /// it (`digest`), so that its origin can tell that the decision is about its own work and
    /// not a copy's. Kept in `_octo_log`, never in the wire's entries (protocol 8 sends it
    /// beside them, `Message::OwnDigests`); None for a primary's own writes, for entries a
    /// follower applied from the Raft log, and for entries from before it was kept.
    #[serde(skip)]
    pub origin_digest: Option<digest::TxnDigest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EntryBody {
    /// The transaction was accepted; these are its effects as the primaries applied them.
    Changes(ChangeSet),
    /// The transaction was rejected as a whole; only its origin hears of it.
    Rejected { reason: String },
    /// A new epoch of the log begins here (`epochs`): a primary began leading. Primaries
    /// only: no device receives it.
    Epoch { id: u64 },
}

impl LogEntry {
    /// What a device (`node`, of `user`) may see of this entry, or None.
    pub fn for_device(&self, node: u32, user: i64) -> Option<LogEntry> {
        let mine = self.origin_node == node;
        let body = match &self.body {
            EntryBody::Changes(cs) => match cs.visible_to_user(user) {
                Some(v) => EntryBody::Changes(v),
                // The origin always hears that its transaction was accepted.
                None if mine => EntryBody::Changes(ChangeSet::default()),
                None => return None,
            },
            EntryBody::Rejected { .. } if mine => self.body.clone(),
            EntryBody::Rejected { .. } | EntryBody::Epoch { .. } => return None,
        };
        Some(LogEntry {
            body,
            ..self.clone()
        })
    }
}

fn encode_body(body: &EntryBody) -> Vec<u8> {
    postcard::to_allocvec(body).unwrap_or_default()
}

/// Append an entry; returns its sequence number. Must run inside a write transaction.
pub fn append(
    conn: &Connection,
    origin_node: u32,
    origin_txn: u64,
    body: &EntryBody,
    origin_digest: Option<&digest::TxnDigest>,
) -> Result<u64> {
    conn.prepare_cached(
        "INSERT INTO _octo_log(origin_node, origin_txn, body, origin_digest) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(rusqlite::params![
        origin_node,
        origin_txn as i64,
        encode_body(body),
        origin_digest.map(|d| d.as_slice())
    ])?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Entries after `seq`, oldest first, at most `limit`.
pub fn read_after(conn: &Connection, seq: u64, limit: usize) -> Result<Vec<LogEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, origin_node, origin_txn, body, origin_digest FROM _octo_log
         WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![seq as i64, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get::<_, Option<Vec<u8>>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, origin_node, origin_txn, body, origin_digest) = row?;
        let body: EntryBody = postcard::from_bytes(&body).map_err(|e| {
            crate::Error::rule(format!("octodb: log entry {seq} cannot be decoded: {e}"))
        })?;
        out.push(LogEntry {
            seq: seq as u64,
            origin_node,
            origin_txn: origin_txn as u64,
            body,
            // (Another length than a digest's: not one this build wrote; treated as none.)
            origin_digest: origin_digest.and_then(|d| d.try_into().ok()),
        });
    }
    Ok(out)
}

pub fn last_seq(conn: &Connection) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM _octo_log")?
        .query_row([], |r| r.get::<_, i64>(0))? as u64)
}

/// Record a primary's own transaction in the log. Returns the new entry, or None when the
/// transaction changed nothing that replicates.
pub fn append_local(
    conn: &Connection,
    node_id: u32,
    captured: Vec<Captured>,
) -> Result<Option<LogEntry>> {
    let cs = primary_changes(captured);
    if cs.is_empty() {
        return Ok(None);
    }
    let body = EntryBody::Changes(cs);
    let seq = append(conn, node_id, 0, &body, None)?;
    Ok(Some(LogEntry {
        seq,
        origin_node: node_id,
        origin_txn: 0,
        body,
        origin_digest: None,
    }))
}

/// Captured changes as a primary's log records them.
pub fn primary_changes(captured: Vec<Captured>) -> ChangeSet {
    let mut cs = ChangeSet::default();
    for c in captured {
        match c {
            Captured::Ddl { sql, private } => cs.ops.push(crate::changes::Op::Ddl { sql, private }),
            Captured::Row(rc) => {
                if let Some(op) = rc.into_op(&mut cs) {
                    cs.ops.push(primary_form(op));
                }
            }
        }
    }
    cs
}

/// What a primary records for a change: inserts and updates become the whole row.
pub fn primary_form(op: crate::changes::Op) -> crate::changes::Op {
    use crate::changes::Op;
    match op {
        Op::Insert {
            table,
            rowid,
            values,
        }
        | Op::Update {
            table,
            rowid,
            values,
            ..
        } => Op::Upsert {
            table,
            rowid,
            values,
        },
        other => other,
    }
}
