//! What users call: `Connection` in the style of rusqlite, with octodb's PRAGMAs, typed status
//! and events.

mod authz;
mod backup;
pub mod channel;
mod connection;
mod events;
pub mod feed;
pub(crate) mod local;
mod pragma;
mod rows;
pub mod sql_text;

pub use crate::store::returned_ids::ColumnOrigin;
pub use backup::{backup, mark_restored, restore_cluster, write_copy, RestoredCluster};
pub(crate) use connection::service_executor;
pub use connection::{
    app_signed_bytes, Connection, FeedWatcher, Prepared, Started, Statement, Transaction,
};
pub use events::{next_event, Next};
pub use local::OpenOptions;
pub use rows::{ColumnIndex, Row, Rows};
