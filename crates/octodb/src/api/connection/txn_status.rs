//! A device's transactions after their commit: where one stands, which still wait, and a wait
//! for one's decision (`log::outbox::decisions`). Also after a restart, when the app no longer
//! has the events of their decisions.

use super::Connection;
use crate::error::{Error, Result};
use crate::log::outbox::decisions::{self, TxnStatus};
use crate::node::Node;
use crate::uri::Role;
use std::sync::Arc;
use std::time::Duration;

impl Connection {
    /// Devices: where transaction `txn_id` stands: pending, accepted, rejected (with the
    /// primaries' reason) or unknown (decided longer ago than the newest 10,000). The id is
    /// the one [`Connection::last_txn_id`] gave after its commit, an event named or
    /// [`Connection::pending_txns`] lists.
    pub fn txn_status(&self, txn_id: u64) -> Result<TxnStatus> {
        self.device("txn_status")?
            .shared
            .read_blocking(|c| decisions::status(c, txn_id))
    }

    /// Devices: the ids of this device's transactions the primaries have not decided yet,
    /// oldest first.
    pub fn pending_txns(&self) -> Result<Vec<u64>> {
        self.device("pending_txns")?
            .shared
            .read_blocking(decisions::pending)
    }

    /// Devices: waits until the primaries decide transaction `txn_id`, at most `timeout`, and
    /// returns their decision. A timeout says why the device is not in sync (offline, with so
    /// many transactions in its outbox, ...); a device its backend refused ends the wait at
    /// once ([`Error::Refused`]). It blocks its thread (from async code, call it in
    /// `spawn_blocking`).
    pub fn wait_for_txn(&self, txn_id: u64, timeout: Duration) -> Result<TxnStatus> {
        self.device("wait_for_txn")?;
        // (An error reading the status ends the wait; it is reported just below.)
        let decided = |_: &_| self.txn_status(txn_id).map_or(true, |s| s.is_decided());
        match self.wait_unless_refused(timeout, decided, crate::node::not_synced_within) {
            Ok(_) => self.txn_status(txn_id),
            Err(Error::Timeout(why)) => Err(Error::Timeout(format!(
                "transaction {txn_id} still waits for the primaries' decision: {why}"
            ))),
            Err(e) => Err(e),
        }
    }

    fn device(&self, call: &str) -> Result<&Arc<Node>> {
        match &self.node {
            Some(node) if node.role() == Some(Role::Secondary) => Ok(node),
            _ => Err(Error::NotPermitted(format!(
                "{call}: only a device's transactions wait for the primaries' decision; on a \
                 primary or a plain database a commit that returned is decided"
            ))),
        }
    }
}
