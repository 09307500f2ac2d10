//! octodb's object broker (SPEC §8): a primary exports objects (fields, references, methods)
//! and SQL tables as classes; devices and other nodes use them through a client that caches
//! them by key and is told when they change. It runs over the node network's service channels
//! (protocol 6): only approved nodes reach it, each request knows its node and user.
//!
//! - [`codec`]: the self-describing value encoding, decoded under limits;
//! - [`key`]: stable keys and their access codes (HMAC under a secret the primaries share);
//! - [`server`]: [`Server`], its [`Loader`]s, invalidation and reply ordering;
//! - [`statics`]: in-memory objects for Rust servers; [`sql`]: SQL tables as classes;
//! - [`client`]: [`Client`], its cache, reconnection and notices.
//!
//! See docs/broker.md.

pub mod client;
pub mod codec;
pub mod error;
pub mod key;
mod outbox;
pub mod protocol;
pub mod server;
pub mod sql;
pub mod statics;

pub use client::{Client, Notice};
pub use codec::{ObjectState, Value};
pub use error::{BrokerError, RemoteError};
pub use key::{Key, KeyPart, ObjRef, Secret};
pub use server::{Args, Loader, Peer, Server};
pub use sql::{Access, SqlTables};
pub use statics::{StaticObject, Statics};

/// The service name brokers use unless told otherwise.
pub const DEFAULT_SERVICE: &str = "broker";
