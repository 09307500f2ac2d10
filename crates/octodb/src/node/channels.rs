//! Service channels (protocol 6): named services a primary serves on its bound port beside
//! sync, for the services built on the engine (the object broker).
//!
//! A connecting node does the usual Noise handshake, then sends `OpenChannel { service }`
//! instead of `Hello`. The primary lets it in by the same rule as sync: its key must be
//! approved in `_octo_nodes` (any node when the primaries run without `auth=`, as sync does),
//! and it never admits anyone here (no sign-up or login goes through a channel: a device is
//! approved by syncing first). It answers `ChannelOpen` and hands the service's handler an
//! authenticated peer and the encrypted, framed duplex; or `Refused` with the reason.
//!
//! A channel ends when the handler returns, when the node shuts down, or at once when the
//! backend takes the node's approval back.

use super::members::{self, Admission, Registered};
use super::writer::{ask, Job};
use super::Shared;
use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::net::{version, Message, NetError, SecureReader, SecureWriter};
use crate::uri::{AuthMode, Role};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// Longest service name: names are chosen by programs, not by peers.
pub const MAX_SERVICE_NAME: usize = 64;

/// Who is at the other end of a channel, as the primary authorized it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPeer {
    /// The peer's node id (0 for the primary as seen by a device: a device does not learn it).
    pub node_id: u32,
    /// The peer's user id (0: no user, e.g. a node approved with `auth=node`, or a primary).
    pub user_id: i64,
    /// The peer's Ed25519 identity, proven by the handshake.
    pub public_key: PublicKey,
    /// The peer's approved role.
    pub role: Role,
    pub addr: SocketAddr,
}

/// One end of an open channel: frames (byte strings) both ways, encrypted and authenticated.
pub struct Channel {
    pub(crate) reader: SecureReader,
    pub(crate) writer: SecureWriter,
    pub(crate) peer: ChannelPeer,
    /// On the connecting side: this node as the primary knows it (node id, user id).
    pub(crate) me: (u32, i64),
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("peer", &self.peer).finish()
    }
}

/// What a service runs for each channel opened to it. It runs on the engine's network
/// runtime: it must not block (use `spawn_blocking` for slow work).
pub type ServiceHandler =
    Arc<dyn Fn(Channel) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The services a primary serves, by name.
#[derive(Default)]
pub(crate) struct Services {
    map: Mutex<HashMap<String, ServiceHandler>>,
    /// Per service: channels open now and opened since the start (the admin console's
    /// figures of the broker and other services).
    counts: Mutex<HashMap<String, (u64, u64)>>,
}

/// A service's channels, for the admin console.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceFigures {
    pub service: String,
    pub serving: bool,
    pub open_channels: u64,
    pub opened: u64,
}

impl Services {
    /// Every service served or once used here, with its channels.
    pub fn figures(&self) -> Vec<ServiceFigures> {
        let serving: Vec<String> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut names: Vec<&String> = serving.iter().chain(counts.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let (open, opened) = counts.get(name).copied().unwrap_or_default();
                ServiceFigures {
                    service: name.clone(),
                    serving: serving.contains(name),
                    open_channels: open,
                    opened,
                }
            })
            .collect()
    }

    /// A channel to `service` opened; it counts as open until the value returned is dropped.
    fn opened<'a>(&'a self, service: &str) -> OpenChannel<'a> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts.entry(service.to_string()).or_default();
        c.0 += 1;
        c.1 += 1;
        OpenChannel {
            services: self,
            service: service.to_string(),
        }
    }

    pub fn set(&self, name: &str, handler: Option<ServiceHandler>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match handler {
            Some(h) => map.insert(name.to_string(), h),
            None => map.remove(name),
        };
    }

    fn get(&self, name: &str) -> Option<ServiceHandler> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

/// The primary's side: the peer asked for `service` as its first message.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    pubkey: PublicKey,
    addr: SocketAddr,
    protocol: u8,
    service: String,
    rd: SecureReader,
    mut wr: SecureWriter,
) -> Result<()> {
    if protocol < version::CHANNELS {
        // Its own build cannot even encode this message: a peer playing tricks.
        return Err(NetError::Malformed(format!(
            "OpenChannel on a connection of protocol {protocol} (channels need {})",
            version::CHANNELS
        ))
        .into());
    }
    let Some(handler) = shared.services.get(&service) else {
        let reason = format!(
            "this primary serves no service named `{}`: start it on the primary (for the \
             object broker: a broker server) before clients connect",
            service.chars().take(MAX_SERVICE_NAME).collect::<String>()
        );
        return super::admission::refuse_session(&mut wr, reason).await;
    };
    let (registered, role) = match authorized(shared, pubkey, addr).await? {
        Ok(found) => found,
        Err(reason) => {
            tracing::info!(%addr, %service, %reason, "service channel refused");
            return super::admission::refuse_session(&mut wr, reason).await;
        }
    };
    let key = pubkey.to_hex();
    let withdrawn = shared.session_opened(&key);
    let _open = OpenKey {
        shared,
        key: key.clone(),
    };
    let withdrawal = withdrawn.notified();
    tokio::pin!(withdrawal);
    withdrawal.as_mut().enable();
    super::admission::send_now(
        &mut wr,
        &Message::ChannelOpen {
            node_id: registered.node_id,
            user_id: registered.user_id,
        },
    )
    .await?;
    tracing::debug!(%addr, %service, node_id = registered.node_id, "service channel open");
    let channel = Channel {
        reader: rd,
        writer: wr,
        peer: ChannelPeer {
            node_id: registered.node_id,
            user_id: registered.user_id,
            public_key: pubkey,
            role,
            addr,
        },
        me: (0, 0),
    };
    let mut stop = shared.shutdown.subscribe();
    let _counted = shared.services.opened(&service);
    tokio::select! {
        () = handler(channel) => {}
        () = &mut withdrawal => {
            tracing::info!(%addr, %service, "service channel closed: the node's approval was taken back");
        }
        _ = stop.changed() => {}
    }
    Ok(())
}

/// Counts a channel as open while it lives.
struct OpenChannel<'a> {
    services: &'a Services,
    service: String,
}

impl Drop for OpenChannel<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .services
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counts.get_mut(&self.service) {
            c.0 = c.0.saturating_sub(1);
        }
    }
}

/// Ends the key's place among the connected ones with the channel.
struct OpenKey<'a> {
    shared: &'a Shared,
    key: String,
}

impl Drop for OpenKey<'_> {
    fn drop(&mut self) {
        self.shared.session_closed(&self.key);
    }
}

/// The peer's ids and role if it may open channels, else why not (for the peer).
async fn authorized(
    shared: &Arc<Shared>,
    pubkey: PublicKey,
    addr: SocketAddr,
) -> Result<std::result::Result<(Registered, Role), String>> {
    let key = pubkey.to_hex();
    let member = match shared.approved.get(&key) {
        Ok(m) => Some(m),
        Err(_) => {
            let k = key.clone();
            shared.read(move |c| members::lookup(c, &k)).await?
        }
    };
    let role_of = |m: &members::Member| {
        if m.node_type == "primary" {
            Role::Primary
        } else {
            Role::Secondary
        }
    };
    match member {
        Some(m) if m.auth_state == "approved" => Ok(Ok((
            Registered {
                node_id: m.node_id,
                user_id: m.user_id.unwrap_or(0),
            },
            role_of(&m),
        ))),
        // Without authorization any node may join, as sync lets it.
        None if shared.cfg.auth == AuthMode::None => {
            let admitted = ask(shared, |reply| Job::Register {
                pubkey,
                address: addr.to_string(),
                info: String::new(),
                reply,
            })
            .await?;
            match admitted {
                Admission::Approved { registered, role } => Ok(Ok((registered, role))),
                Admission::Rejected(reason) => Ok(Err(reason)),
            }
        }
        Some(m) if m.auth_state == "pending" => Ok(Err(
            "this node's request to join waits for the backend's decision: service channels \
             open once the node is approved"
                .into(),
        )),
        Some(m) if m.auth_state == "rejected" => Ok(Err(
            "this node was refused by the backend: it may not open service channels".into(),
        )),
        _ => Ok(Err(format!(
            "this node ({key}) is not approved on this network: sync with the primary and get \
             approved (sign up, log in, or PRAGMA authorize_node on the primary) before \
             opening service channels"
        ))),
    }
}

/// The connecting side: the handshake is done; ask for `service` and wait for the answer.
pub(crate) async fn open(
    stream: crate::net::SecureStream,
    service: &str,
    timeout: std::time::Duration,
) -> Result<Channel> {
    let protocol = stream.protocol_version();
    let peer_key = stream.peer().public_key;
    let addr = stream.peer().addr;
    if protocol < version::CHANNELS {
        return Err(Error::rule(format!(
            "the primary at {addr} speaks octodb protocol {protocol}; service channels need \
             protocol {} or newer: upgrade the primary",
            version::CHANNELS
        )));
    }
    let (mut rd, mut wr) = stream.into_split();
    super::admission::send_now(
        &mut wr,
        &Message::OpenChannel {
            service: service.to_string(),
        },
    )
    .await?;
    let answer = tokio::time::timeout(timeout, rd.recv())
        .await
        .map_err(|_| NetError::Timeout)??;
    match Message::decode(&answer)? {
        Message::ChannelOpen { node_id, user_id } => Ok(Channel {
            reader: rd,
            writer: wr,
            peer: ChannelPeer {
                node_id: 0,
                user_id: 0,
                public_key: peer_key,
                role: Role::Primary,
                addr,
            },
            me: (node_id, user_id),
        }),
        Message::Refused { reason } => Err(Error::rule(format!(
            "the primary at {addr} refused the `{service}` channel: {reason}"
        ))),
        other => Err(NetError::Malformed(format!(
            "unexpected {} in answer to OpenChannel",
            other.kind()
        ))
        .into()),
    }
}

/// How long a channel's connection and its answer may take.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The connecting side: a channel to `service` on this node's primary (a device: the primary it
/// syncs with first, then the others of its `connect=` list; a primary: the primaries of its
/// `connect=` list). Tries each in turn; the error says why the last one failed.
pub(crate) async fn open_from(shared: &Arc<Shared>, service: &str) -> Result<Channel> {
    if service.is_empty() || service.len() > MAX_SERVICE_NAME {
        return Err(Error::rule(format!(
            "a service name has 1 to {MAX_SERVICE_NAME} bytes"
        )));
    }
    // The primary the device syncs with first, then the others sync would try.
    let current = shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .connected_to
        .clone();
    let mut endpoints = super::secondary::endpoints(shared);
    if let Some(i) = current.and_then(|c| endpoints.iter().position(|e| e.to_string() == c)) {
        let ep = endpoints.remove(i);
        endpoints.insert(0, ep);
    }
    let mut last = Error::rule(
        "this node has no primary to open a channel to (open it with connect=tcp://HOST:PORT)",
    );
    for ep in endpoints {
        match open_at(shared, &ep, service).await {
            Ok(ch) => return Ok(ch),
            Err(e) => {
                tracing::debug!(primary = %ep, %service, "service channel not opened: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

async fn open_at(
    shared: &Arc<Shared>,
    ep: &crate::uri::Endpoint,
    service: &str,
) -> Result<Channel> {
    let addr = ep.to_addr_string();
    let tcp = tokio::time::timeout(OPEN_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    let stream = crate::net::SecureStream::connect(tcp, &shared.keys, &shared.handshake).await?;
    // As sync: a device talks only to the primary that admitted it or those it vouched for.
    super::secondary::check_primary_key(shared, ep, &stream.peer().public_key)?;
    open(stream, service, OPEN_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeKeys;
    use crate::net::version::Versions;
    use crate::net::{HandshakeOptions, SecureStream};
    use tokio::net::{TcpListener, TcpStream};

    /// A primary older than protocol 6 cannot serve channels: the connecting side says to upgrade it,
    /// without sending it a message it cannot read.
    #[tokio::test]
    async fn a_primary_older_than_channels_is_named_for_upgrade() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let old = HandshakeOptions {
            versions: Versions {
                oldest: 2,
                newest: version::CHANNELS - 1,
            },
            ..Default::default()
        };
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = SecureStream::accept(tcp, &NodeKeys::generate(), &old)
                .await
                .unwrap();
            // Nothing may arrive: the client gives up before sending.
            s.recv().await.is_err()
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = SecureStream::connect(tcp, &NodeKeys::generate(), &Default::default())
            .await
            .unwrap();
        assert_eq!(stream.protocol_version(), version::CHANNELS - 1);
        let err = open(stream, "broker", std::time::Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("upgrade the primary"), "{err}");
        assert!(
            server.await.unwrap(),
            "no message was sent to the old primary"
        );
    }
}
