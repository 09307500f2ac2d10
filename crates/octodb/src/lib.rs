//! octodb: a replicated SQLite for apps and their backend.
//!
//! Layers, each depending only on those listed before it (see ARCHITECTURE.md):
//! `uri` → `store` → `log` → `crypto` → `net` → `node` → `api`.

pub mod crypto;
pub mod net;
pub mod uri;

pub mod changes;
pub mod error;
pub mod log;
pub mod store;
pub mod value;
pub mod wire_size;

pub mod admin;
pub mod api;
pub mod auth;
pub mod cluster;

/// The change feed: committed row changes on a primary, in log order.
pub use api::feed;
pub use api::{
    app_signed_bytes, backup, mark_restored, next_event, restore_cluster, write_copy, ColumnIndex,
    Connection, FeedWatcher, Next, OpenOptions, RestoredCluster, Row, Rows, Statement, Transaction,
};
pub use cluster::RestoreMark;
pub use error::{Error, Result};
pub use log::outbox::decisions::TxnStatus;
pub use node::{not_ready_within, not_synced_within, Event, NodeRecord, ReservedIds, SyncStatus};
/// The SQLite binding the API's parameters, functions and `Error::Sqlite` come from, so that an
/// app writes `octodb::rusqlite::params![...]` without a dependency of its own to keep in step.
pub use rusqlite;
pub use uri::{NodeConfig, Role};
pub use value::Value;

/// What the crate's own tests share.
#[cfg(test)]
pub(crate) mod test_support {
    /// Property tests of decoders that read bytes from the network or a file: bounded in CI
    /// (`OCTODB_FUZZ_CASES` for a longer hunt), no failure files written into the tree.
    pub fn fuzz_config() -> proptest::prelude::ProptestConfig {
        proptest::prelude::ProptestConfig {
            cases: std::env::var("OCTODB_FUZZ_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2_000),
            failure_persistence: None,
            ..Default::default()
        }
    }
}

/// The column that decides where a row replicates.
pub const ROW_OWNER: &str = "row_owner";
pub mod node;
