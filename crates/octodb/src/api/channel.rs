//! Service channels (protocol 6): the API services built on the engine use to talk over the
//! node network, on the primary's bound port, with the same keys and authorization as sync.
//!
//! A primary serves a named service with [`Connection::serve_channel`]; a device (or another
//! primary) opens a channel to it with [`Connection::open_channel`]. Each side then sends and
//! receives frames (byte strings), encrypted and authenticated; the serving side knows who is
//! at the other end ([`ChannelPeer`]: node id, user id, public key, role). See
//! `node/channels.rs` for the rules.

use super::Connection;
use crate::error::{Error, Result};
use crate::net::{SecureReader, SecureWriter};
use crate::node::Node;
use crate::uri::Role;
use std::future::Future;
use std::sync::Arc;

pub use crate::node::channels::{Channel, ChannelPeer, ServiceHandler, MAX_SERVICE_NAME};

impl Channel {
    /// The node at the other end.
    pub fn peer(&self) -> &ChannelPeer {
        &self.peer
    }

    /// On the connecting side: this node's id and user id as the primary knows them.
    pub fn me(&self) -> (u32, i64) {
        self.me
    }

    /// The next frame; `NetError::Closed` (as [`Error::Net`]) when the peer closed.
    pub async fn recv(&mut self) -> Result<Vec<u8>> {
        Ok(self.reader.recv().await?)
    }

    /// Sends one frame at once.
    pub async fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.writer.send(frame).await?;
        Ok(self.writer.flush().await?)
    }

    /// Halves for a reading and a writing task. The writer's frames go out on `flush`.
    pub fn into_split(self) -> (SecureReader, SecureWriter, ChannelPeer) {
        (self.reader, self.writer, self.peer)
    }
}

/// Opens channels from a node, from any thread or task (a client reconnecting after a primary
/// restart keeps one).
#[derive(Clone)]
pub struct ChannelOpener {
    node: Arc<Node>,
}

impl std::fmt::Debug for ChannelOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelOpener").finish_non_exhaustive()
    }
}

impl ChannelOpener {
    /// A channel to `service` on this node's primary (see [`Connection::open_channel`]).
    pub async fn open(&self, service: &str) -> Result<Channel> {
        crate::node::channels::open_from(&self.node.shared, service).await
    }

    /// This node's public key (hex).
    pub fn public_key(&self) -> String {
        self.node.public_key().to_hex()
    }
}

/// Runs `f` on the engine's network runtime, where channels live.
pub fn spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    crate::node::runtime_handle().spawn(f)
}

/// Waits for `f` on the engine's network runtime, blocking the calling thread (from async
/// code, call it in `spawn_blocking`: it works there too, but holds the task's thread).
pub fn block_on<F: Future>(f: F) -> F::Output {
    crate::node::block_on(f)
}

/// A handle on the engine's network runtime.
pub fn runtime_handle() -> tokio::runtime::Handle {
    crate::node::runtime_handle()
}

impl Connection {
    /// Primaries: serve `service` on this node's bound port(s): each channel an approved node
    /// opens to it runs `handler` (on the network runtime; it must not block). Serving a name
    /// again replaces the handler for later channels.
    pub fn serve_channel<F, Fut>(&self, service: &str, handler: F) -> Result<()>
    where
        F: Fn(Channel) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let node = self.node("serving a channel")?;
        if node.role() != Some(Role::Primary) {
            return Err(Error::rule(
                "only primaries serve channels: open the backend's database with node=primary",
            ));
        }
        check_name(service)?;
        let handler: ServiceHandler = Arc::new(move |ch| Box::pin(handler(ch)));
        node.shared.services.set(service, Some(handler));
        Ok(())
    }

    /// Primaries: stop serving `service` (open channels go on until they end).
    pub fn stop_serving_channel(&self, service: &str) -> Result<()> {
        self.node("serving a channel")?
            .shared
            .services
            .set(service, None);
        Ok(())
    }

    /// A channel to `service` on this node's primary, with this node's keys: a device's goes to
    /// the primary it syncs with (then the others of its `connect=` list), a primary's to the
    /// primaries of its `connect=` list. The node must be approved (as for sync). Call it from
    /// an application thread; async code uses [`Connection::channel_opener`].
    pub fn open_channel(&self, service: &str) -> Result<Channel> {
        let opener = self.channel_opener()?;
        block_on(opener.open(service))
    }

    /// What opens channels from this node later, from any thread.
    pub fn channel_opener(&self) -> Result<ChannelOpener> {
        Ok(ChannelOpener {
            node: self.node("opening a channel")?.clone(),
        })
    }
}

fn check_name(service: &str) -> Result<()> {
    if service.is_empty() || service.len() > MAX_SERVICE_NAME {
        return Err(Error::rule(format!(
            "a service name has 1 to {MAX_SERVICE_NAME} bytes, not {}",
            service.len()
        )));
    }
    Ok(())
}
