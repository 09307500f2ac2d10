//! Events a node reports to the application, so it need not poll `PRAGMA sync_status`.

/// Something that happened on the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The database is authorized and its initial download is complete.
    Ready,
    /// A connection to a peer came up (a device: to a primary).
    Connected { peer: String },
    /// The connection to the primaries was lost (`reason` says how, as `sync_error` does);
    /// writes keep going to the outbox.
    Disconnected { reason: String },
    /// Changes from the primaries were applied, up to log sequence `seq`.
    DataReceived { seq: u64, rows: usize },
    /// The primary said that this device now holds everything it held, up to log sequence
    /// `seq` (once a connection, protocol 10).
    CaughtUp { seq: u64 },
    /// The primaries accepted one of this device's transactions.
    TransactionAccepted { txn_id: u64 },
    /// The primaries rejected one of this device's transactions; it was removed here.
    TransactionRejected { txn_id: u64, reason: String },
    /// The primaries refused this node's sign-up, login or join request.
    AuthorizationRefused { reason: String },
    /// Initial download progress; `total` is 0 until the primary has counted the rows (it
    /// counts them beside sending the first ones).
    Download { rows: u64, total: u64 },
    /// The primary is behind this device (restored from an older copy of its file): the
    /// device downloads its data again, keeping its pending work (`reason` says what was
    /// found).
    PrimaryBehind { reason: String },
    /// That download is complete: the device holds what the primary holds, plus its pending
    /// work. `resent` of this device's transactions that the primary had accepted and lost
    /// went back into its outbox, to be sent again; `rows_removed` rows it had were no longer
    /// on the primary and are gone here too.
    Resynced { resent: u64, rows_removed: u64 },
    /// This device's file is a copy of another device's in use (a phone's backup restored
    /// onto a second phone while the first goes on): the primaries decided other work under
    /// its transaction id `txn`. It stops syncing, keeping its pending work; `PRAGMA
    /// new_identity` and a reopen let it go on under a new key, approved afresh.
    CopiedFile { txn: u64, reason: String },
}
