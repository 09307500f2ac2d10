//! What a device's transaction was, as the primaries received it: a digest of its change
//! set. Two copies of one device file (a phone's backup restored onto a second phone while the
//! first is still in use) hand out the same transaction ids for different work; the digest
//! tells a resend of a transaction from another transaction under the same id, on the
//! primary (a resend of a decided id) and on the device (a decision about its id).

use crate::changes::ChangeSet;

/// The first 128 bits of SHA-256 over the change set's encoding: enough to tell two
/// transactions apart (neither copy is trying to forge the other's digest).
pub type TxnDigest = [u8; 16];

/// The digest of a transaction's change set, as sent (`Message::Txns`) and as kept in the
/// device's outbox: both encode the same value the same way.
pub fn of(changes: &ChangeSet) -> TxnDigest {
    let encoded = postcard::to_allocvec(changes).unwrap_or_default();
    let full = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &encoded);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full.as_ref()[..16]);
    out
}

/// A digest for messages and logs.
pub fn hex(d: &TxnDigest) -> String {
    hex::encode(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::Op;
    use crate::value::Value;

    fn insert(body: &str) -> ChangeSet {
        let mut cs = ChangeSet::default();
        let t = cs.table_index("notes", &["body".to_string()]);
        cs.ops.push(Op::Insert {
            table: t,
            rowid: 1,
            values: vec![Value::Text(body.into())],
        });
        cs
    }

    #[test]
    fn the_same_changes_give_the_same_digest_and_other_changes_another() {
        assert_eq!(of(&insert("a")), of(&insert("a")));
        assert_ne!(of(&insert("a")), of(&insert("b")));
        // What a primary decodes from the wire digests as the device's own value.
        let sent = postcard::to_allocvec(&insert("a")).unwrap();
        let received: ChangeSet = postcard::from_bytes(&sent).unwrap();
        assert_eq!(of(&received), of(&insert("a")));
    }
}
