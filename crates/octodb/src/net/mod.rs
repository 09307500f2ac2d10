//! The node network: framed, versioned, authenticated and encrypted connections.
mod chunks;
mod claims;
pub mod message;
mod resume;
pub mod ticket;
pub mod transport;
pub mod version;
pub use message::{AuthAsk, Message, PrimaryMember};
pub use ticket::{Resumption, TicketKeys};
pub use transport::{
    HandshakeOptions, NetError, PeerIdentity, SecureReader, SecureStream, SecureWriter,
};
