//! The signed task record: what a submitter states about a task, in one canonical byte form.
//!
//! Every field a worker acts on is in the signed bytes. Each field is written behind its
//! length (u32, big endian), so no two different records share an encoding, and the whole is
//! signed under the domain [`TASK_DOMAIN`] by the engine (which adds its own context, so a
//! task signature can never pass for a handshake's or any other service's).

use octodb::crypto::PublicKey;

/// The signature domain of task records.
pub const TASK_DOMAIN: &str = "octodb-task-v1";
/// The signature domain of a submitter's request to cancel one of its tasks.
pub const CANCEL_DOMAIN: &str = "octodb-task-cancel-v1";

/// What a submitter signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// The name of the handler a worker registered.
    pub task_type: String,
    /// The arguments, as JSON text (kept as the exact text signed).
    pub args: String,
    /// Higher runs first.
    pub priority: i64,
    /// Unix milliseconds before which the task does not start.
    pub not_before_ms: Option<i64>,
    /// Unix milliseconds after which the task is refused as expired (primary's clock).
    pub not_after_ms: i64,
    /// The submitting node's public key.
    pub submitter: PublicKey,
    /// 128 random bits, never to be accepted twice.
    pub nonce: [u8; 16],
    /// Unix milliseconds, the submitter's clock.
    pub created_at_ms: i64,
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded far below 4 GiB (the engine's messages are); saturate rather than wrap.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

impl TaskRecord {
    /// The canonical bytes that are signed: a version tag, then every field in a fixed order,
    /// each behind its length. `not_before` absent is an empty field, present is 8 bytes.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.args.len() + self.task_type.len());
        field(&mut out, TASK_DOMAIN.as_bytes());
        field(&mut out, self.task_type.as_bytes());
        field(&mut out, self.args.as_bytes());
        field(&mut out, &self.priority.to_be_bytes());
        match self.not_before_ms {
            Some(t) => field(&mut out, &t.to_be_bytes()),
            None => field(&mut out, &[]),
        }
        field(&mut out, &self.not_after_ms.to_be_bytes());
        field(&mut out, &self.submitter.0);
        field(&mut out, &self.nonce);
        field(&mut out, &self.created_at_ms.to_be_bytes());
        out
    }

    /// Checks `signature` over this record by its submitter's key.
    pub fn verify(&self, signature: &[u8]) -> Result<(), octodb::crypto::CryptoError> {
        self.submitter.verify(
            &octodb::app_signed_bytes(TASK_DOMAIN, &self.signed_bytes()),
            signature,
        )
    }
}

/// The bytes a submitter signs to cancel task `task_id` with nonce `nonce`: bound to both, so
/// a cancel of one task can never be replayed against another.
pub fn cancel_bytes(task_id: i64, nonce: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    field(&mut out, CANCEL_DOMAIN.as_bytes());
    field(&mut out, &task_id.to_be_bytes());
    field(&mut out, nonce);
    out
}

/// Checks a cancel request's signature by `submitter`.
pub fn verify_cancel(submitter: &PublicKey, task_id: i64, nonce: &[u8], signature: &[u8]) -> bool {
    submitter
        .verify(
            &octodb::app_signed_bytes(CANCEL_DOMAIN, &cancel_bytes(task_id, nonce)),
            signature,
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TaskRecord {
        TaskRecord {
            task_type: "add".into(),
            args: "[1,2]".into(),
            priority: 0,
            not_before_ms: None,
            not_after_ms: 2,
            submitter: PublicKey([7; 32]),
            nonce: [1; 16],
            created_at_ms: 1,
        }
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_encoding() {
        let a = TaskRecord {
            task_type: "ab".into(),
            args: "c".into(),
            ..record()
        };
        let b = TaskRecord {
            task_type: "a".into(),
            args: "bc".into(),
            ..record()
        };
        assert_ne!(a.signed_bytes(), b.signed_bytes());
    }

    #[test]
    fn an_absent_not_before_differs_from_zero() {
        let zero = TaskRecord {
            not_before_ms: Some(0),
            ..record()
        };
        assert_ne!(zero.signed_bytes(), record().signed_bytes());
    }
}
