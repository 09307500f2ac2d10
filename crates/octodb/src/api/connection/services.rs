//! What services built on the engine (the signed task queue) need from a node, and nothing
//! more: a signature by the node's own key under a domain of the service's choosing, and the
//! columns of a table that devices may not write freely.

use super::Connection;
use crate::error::{Error, Result};
use crate::store::column_rules::{self, ColumnRule};
use crate::uri::Role;

/// Prefix of every message signed for an application; the node's other signatures (the
/// handshake's proof) start with their own context, so neither can pass for the other.
const APP_SIGNATURE_CONTEXT: &[u8] = b"octodb-app-signature-v1\0";

/// The bytes actually signed by [`Connection::sign_with_node_key`] for `domain` and `msg`:
/// the context, then the domain and the message, each behind its length (u32, big endian).
pub fn app_signed_bytes(domain: &str, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(APP_SIGNATURE_CONTEXT.len() + 8 + domain.len() + msg.len());
    out.extend_from_slice(APP_SIGNATURE_CONTEXT);
    out.extend_from_slice(&(domain.len() as u32).to_be_bytes());
    out.extend_from_slice(domain.as_bytes());
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

impl Connection {
    /// Sign `msg` with this node's Ed25519 key, for the service named by `domain` (for example
    /// `"octodb-task-v1"`). The key never leaves the engine. Check the signature with
    /// `PublicKey::verify(&app_signed_bytes(domain, msg), &signature)`.
    pub fn sign_with_node_key(&self, domain: &str, msg: &[u8]) -> Result<[u8; 64]> {
        if domain.is_empty() {
            return Err(Error::rule(
                "a signature needs a domain naming what is signed (e.g. \"myapp-order-v1\")",
            ));
        }
        if u32::try_from(msg.len()).is_err() {
            return Err(Error::rule("the message to sign is larger than 4 GiB"));
        }
        let node = self.node("signing with the node's key")?;
        Ok(node.shared.keys.sign(&app_signed_bytes(domain, msg)))
    }

    /// Primaries: declare what devices may do with `table.column` (see
    /// [`crate::store::column_rules`]). A device transaction breaking it is rejected.
    pub fn set_column_rule(&self, table: &str, column: &str, rule: ColumnRule) -> Result<()> {
        if self.role() != Some(Role::Primary) {
            return Err(Error::rule(
                "column rules are declared on a primary, which checks the devices' transactions: open the primary's database",
            ));
        }
        self.internal(|| column_rules::set(&self.conn, table, column, rule))
    }
}
