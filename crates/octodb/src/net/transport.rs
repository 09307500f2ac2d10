//! Secure, framed connections between nodes over TCP.
//!
//! Wire protocol (all lengths are big-endian u16):
//! 1. Noise handshake, `Noise_XXpsk3_25519_AESGCM_BLAKE2s` when a network key is set, else
//!    `Noise_XX_25519_AESGCM_BLAKE2s`; prologue `octodb/2` (the handshake's own layout, which
//!    every protocol version since 2 shares). Each handshake message is `[len][bytes]`.
//!    Message 1 carries the initiator's offer of protocol versions ([`super::version`]; none
//!    from a node of version 2). Message 2 carries the responder's claim `[claim version]
//!    [Ed25519 identity]`, followed by `[chosen version][oldest][newest]` when an offer was
//!    made; message 3 the initiator's claim and one byte: whether it needs the responder's
//!    signature (encrypted, as Noise does for payloads after the first message).
//!    A device holding a session ticket from this primary offers it instead, and the two run
//!    the cheaper resumed handshake ([`super::resume`]); a ticket not taken falls back to XX
//!    on the same connection.
//! 2. An identity is proven by an Ed25519 signature over `"octodb-identity-v2" || role ||
//!    handshake_hash`. The handshake hash is unique to this connection and covers both Noise
//!    static keys, so a signature cannot be replayed elsewhere; the role byte stops a peer from
//!    reflecting our own signature back at us. A side asks for it only when it does not yet
//!    know that the claimed identity uses the peer's Noise static key ([`VerifiedBindings`]):
//!    the responder's first encrypted message is `[needs the initiator's signature: 0|1]`
//!    followed by its own signature if asked; the initiator then sends its signature if asked.
//!    A returning node thus connects without any signature made or checked.
//! 3. Messages, split into chunks `[len][ciphertext]` whose plaintext is `[flags][data]`
//!    (flags bit 0 = last chunk). Nonces are implicit counters, so a dropped, replayed or
//!    reordered chunk fails to decrypt.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use snow::HandshakeState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub use super::chunks::{SecureReader, SecureWriter};

use super::claims::{agreed_by_responder, answer_offer, ClaimLayout, Negotiation};
use super::resume::{self, Offered};
use super::ticket::{Resumption, TicketKeys};
use super::version::{self, Versions};
use crate::crypto::{NodeKeys, PublicKey};

/// The handshake's layout, mixed into it: nodes of version 1 (which always sent signatures)
/// cannot connect. Protocol versions since 2 share it and negotiate inside it.
const PROLOGUE: &[u8] = b"octodb/2";
const PATTERN_PSK: &str = "Noise_XXpsk3_25519_AESGCM_BLAKE2s";
const PATTERN_OPEN: &str = "Noise_XX_25519_AESGCM_BLAKE2s";
/// XX handshake messages are at most ~100 bytes; anything bigger is another protocol, and
/// refusing it at once means a stray client fails fast instead of waiting for the timeout.
pub(super) const MAX_HANDSHAKE_MSG: usize = 256;
const PROOF_CONTEXT: &[u8] = b"octodb-identity-v2";
const SIGNATURE_LEN: usize = 64;
/// The responder's answer: `[needs the initiator's signature]` and perhaps its own.
const ANSWER_MAX_LEN: usize = 1 + SIGNATURE_LEN;
const ROLE_INITIATOR: u8 = 0;
const ROLE_RESPONDER: u8 = 1;

/// Errors of secure connections.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The socket failed.
    #[error("network I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection cleanly between messages.
    #[error("connection closed by the peer")]
    Closed,
    /// The handshake took longer than `HandshakeOptions::timeout`.
    #[error("handshake timed out: the peer is slow, unreachable, or not an octodb node")]
    Timeout,
    /// Encryption failed: corrupted/replayed data after the handshake, or a local Noise error.
    #[error("encryption error: {0}")]
    Noise(String),
    /// The peer could not prove it belongs to the network or owns the identity it claims.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// An incoming message is larger than `HandshakeOptions::max_message`.
    #[error(
        "message of at least {size} bytes exceeds the limit of {max} bytes \
         (HandshakeOptions::max_message): raise it on the receiver or send smaller messages"
    )]
    TooLarge {
        /// Bytes received for the message so far.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The peer sent bytes that do not follow the protocol.
    #[error("malformed data from peer: {0}")]
    Malformed(String),
    /// Nothing at all arrived for this long from a peer that sends heartbeats: the path is
    /// silently cut (a NAT or mobile network dropping the connection's packets).
    #[error(
        "no data from the peer for {} s although it sends heartbeats: the connection is \
         dead (the network silently stopped passing its packets); the session ends (a device \
         connects again)",
        .0.as_secs_f64()
    )]
    Dead(Duration),
    /// The two nodes speak no protocol version in common; says which one to upgrade.
    #[error("incompatible octodb versions: {0}")]
    Version(String),
    /// The peer refused this node's session, saying why.
    #[error("refused by the peer: {0}")]
    Refused(String),
}

pub(super) fn noise_error(e: snow::Error) -> NetError {
    NetError::Noise(e.to_string())
}

/// Handshake and framing settings.
#[derive(Clone)]
pub struct HandshakeOptions {
    /// 32-byte network secret (already hashed by the caller), used as the Noise PSK. Peers must
    /// have the same key, or both none.
    pub network_key: Option<[u8; 32]>,
    /// Limit for the whole handshake, including the identity exchange.
    pub timeout: Duration,
    /// Largest message this side accepts; bigger ones fail with [`NetError::TooLarge`].
    pub max_message: usize,
    /// Identity bindings already proven to this node (shared by its connections).
    pub bindings: Arc<VerifiedBindings>,
    /// The protocol versions this side speaks (this build's, but for tests that play an
    /// older or newer node).
    pub versions: Versions,
    /// A responder that takes session tickets (a primary serving devices): the keys that
    /// sealed them. `None`: every ticket offered is refused and the full handshake runs.
    pub tickets: Option<Arc<TicketKeys>>,
}

impl Default for HandshakeOptions {
    fn default() -> Self {
        HandshakeOptions {
            network_key: None,
            timeout: Duration::from_secs(10),
            max_message: 64 * 1024 * 1024,
            bindings: Default::default(),
            versions: Versions::default(),
            tickets: None,
        }
    }
}

/// Which Ed25519 identity each Noise static key has proven to belong to.
///
/// Why a signature need not be asked for again: the Noise handshake proves, in every
/// connection, that the peer holds the private key of its static key S. A signature checked
/// once showed that the holder of identity E signed a handshake hash that covers S, i.e. that
/// E uses S. A later connection that proves S and claims E therefore needs no new signature; a
/// claim of E with any other static key must be signed. (S and E are kept together in a node's
/// file.) A returning node's handshake thus has no signature work on either side.
#[derive(Default)]
pub struct VerifiedBindings {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 32], [u8; 32]>>,
    /// Signatures checked so far (what the tests look at).
    checked: std::sync::atomic::AtomicU64,
}

/// Bindings kept at most; beyond, the oldest knowledge is simply dropped (and re-proven).
const MAX_BINDINGS: usize = 200_000;

impl VerifiedBindings {
    fn holds(&self, noise_static: &[u8; 32], identity: &[u8; 32]) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(noise_static) == Some(identity)
    }

    fn remember(&self, noise_static: [u8; 32], identity: [u8; 32]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_BINDINGS {
            map.clear();
        }
        map.insert(noise_static, identity);
    }

    /// How many identity signatures this node has checked.
    pub fn signatures_checked(&self) -> u64 {
        self.checked.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Shows whether a network key is set, never the key itself.
impl fmt::Debug for HandshakeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeOptions")
            .field("network_key", &self.network_key.map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("max_message", &self.max_message)
            .field("versions", &self.versions)
            .field("tickets", &self.tickets.is_some())
            .finish()
    }
}

/// Who is at the other end of a [`SecureStream`], as proven by the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's Ed25519 identity.
    pub public_key: PublicKey,
    /// The peer's socket address.
    pub addr: SocketAddr,
}

/// An authenticated, encrypted, message-framed connection.
pub struct SecureStream {
    reader: SecureReader,
    writer: SecureWriter,
    peer: PeerIdentity,
    protocol: u8,
    resumed: bool,
}

impl fmt::Debug for SecureStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureStream")
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .field("resumed", &self.resumed)
            .finish()
    }
}

impl SecureStream {
    /// Runs the handshake as the initiator (the side that opened the connection).
    pub async fn connect(
        stream: TcpStream,
        keys: &NodeKeys,
        opts: &HandshakeOptions,
    ) -> Result<SecureStream, NetError> {
        establish(stream, keys, opts, Side::Initiator(None)).await
    }

    /// Runs the handshake as the initiator, offering a session ticket this node received
    /// from the same primary: the resumed handshake when the primary takes it, else the full
    /// one on the same connection ([`super::resume`]).
    pub async fn resume(
        stream: TcpStream,
        keys: &NodeKeys,
        opts: &HandshakeOptions,
        resumption: &Resumption,
    ) -> Result<SecureStream, NetError> {
        establish(stream, keys, opts, Side::Initiator(Some(resumption))).await
    }

    /// Runs the handshake as the responder (the side that accepted the connection).
    pub async fn accept(
        stream: TcpStream,
        keys: &NodeKeys,
        opts: &HandshakeOptions,
    ) -> Result<SecureStream, NetError> {
        establish(stream, keys, opts, Side::Responder).await
    }

    /// The authenticated peer.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The protocol version the two sides agreed on.
    pub fn protocol_version(&self) -> u8 {
        self.protocol
    }

    /// Whether the handshake was a resumption with a session ticket.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Splits into halves that can be moved to separate tasks.
    pub fn into_split(self) -> (SecureReader, SecureWriter) {
        (self.reader, self.writer)
    }

    /// Same as [`SecureReader::recv`].
    pub async fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        self.reader.recv().await
    }

    /// Same as [`SecureWriter::send`].
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), NetError> {
        self.writer.send(msg).await
    }

    /// Same as [`SecureWriter::flush`].
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.writer.flush().await
    }
}

/// Which end of the connection this node is.
#[derive(Clone, Copy)]
enum Side<'a> {
    /// It opened the connection, perhaps with a ticket to offer.
    Initiator(Option<&'a Resumption>),
    Responder,
}

/// Unsent bytes a socket holds before a write must wait (`TCP_NOTSENT_LOWAT`).
///
/// A connection counts as alive while bytes move (`chunks::Progress`), and the writer learns
/// that they move only when it had to wait for room. Left to itself the kernel takes megabytes
/// in one write: over a slow link a large message then drained for longer than a connection
/// may stay silent, with nothing noted, and was declared dead and sent again whole, for ever
/// (an 8 MB row at 150 KB/s). With little unsent data allowed, the writer waits, and notes
/// progress, every time this much has gone; the bytes in flight are not limited, so a fast
/// link is not slowed.
const UNSENT_LIMIT: u32 = 256 * 1024;

fn keep_little_unsent(stream: &TcpStream, addr: std::net::SocketAddr) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LIMIT) {
        tracing::debug!(%addr, "could not set TCP_NOTSENT_LOWAT: {e}");
    }
    // Elsewhere, a message that drains for longer than a connection may stay silent is
    // still taken for a dead connection.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, addr, UNSENT_LIMIT);
}

async fn establish(
    stream: TcpStream,
    keys: &NodeKeys,
    opts: &HandshakeOptions,
    side: Side<'_>,
) -> Result<SecureStream, NetError> {
    let addr = stream.peer_addr()?;
    // Messages are batched by the writer and sent on flush, so Nagle would only add latency.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, "could not set TCP_NODELAY: {e}");
    }
    keep_little_unsent(&stream, addr);
    let initiator = matches!(side, Side::Initiator(_));
    let result = tokio::time::timeout(opts.timeout, handshake(stream, keys, opts, side)).await;
    match result {
        Err(_) => Err(NetError::Timeout),
        Ok(Ok(Established {
            reader,
            writer,
            public_key,
            protocol,
            resumed,
        })) => Ok(SecureStream {
            reader,
            writer,
            peer: PeerIdentity { public_key, addr },
            protocol,
            resumed,
        }),
        // A responder's peer that hangs up is gone, nothing more: a port probe (a leader
        // checking a joiner's address, a health check), or an initiator that refused this
        // node, which says so on its side.
        Ok(Err(e)) if !initiator && is_disconnect(&e) => Err(NetError::Closed),
        // A peer that rejects our handshake just hangs up; say what that usually means.
        Ok(Err(e)) if is_disconnect(&e) => Err(NetError::Authentication(format!(
            "peer closed the connection during the handshake: it probably rejected this \
                 node (check that both use the same network key and octodb version), or is \
                 not an octodb node. {NETWORK_KEY_OF_ENCRYPTED_NODES}"
        ))),
        Ok(Err(e)) => Err(e),
    }
}

fn is_disconnect(e: &NetError) -> bool {
    use std::io::ErrorKind::*;
    match e {
        NetError::Closed => true,
        NetError::Io(e) => matches!(
            e.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        ),
        _ => false,
    }
}

/// What a finished handshake hands over.
pub(super) struct Established {
    pub(super) reader: SecureReader,
    pub(super) writer: SecureWriter,
    pub(super) public_key: PublicKey,
    pub(super) protocol: u8,
    /// A session ticket stood in for the full handshake.
    pub(super) resumed: bool,
}

/// Reads one handshake frame `[len][bytes]` into `buf`; returns its length.
pub(super) async fn read_frame(
    rd: &mut OwnedReadHalf,
    buf: &mut [u8; MAX_HANDSHAKE_MSG],
) -> Result<usize, NetError> {
    let len = usize::from(rd.read_u16().await?);
    if len == 0 || len > MAX_HANDSHAKE_MSG {
        return Err(NetError::Malformed(format!(
            "handshake message of {len} bytes (at most {MAX_HANDSHAKE_MSG} expected): \
             the peer is not an octodb node or speaks another protocol"
        )));
    }
    rd.read_exact(&mut buf[..len]).await?;
    Ok(len)
}

/// Writes one handshake frame `[len][parts...]` (the parts together at most
/// [`MAX_HANDSHAKE_MSG`] bytes, as every sender here builds them).
pub(super) async fn write_frame(wr: &mut OwnedWriteHalf, parts: &[&[u8]]) -> Result<(), NetError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut frame = Vec::with_capacity(2 + len);
    frame.extend_from_slice(&(len as u16).to_be_bytes());
    for part in parts {
        frame.extend_from_slice(part);
    }
    wr.write_all(&frame).await?;
    Ok(())
}

async fn handshake(
    stream: TcpStream,
    keys: &NodeKeys,
    opts: &HandshakeOptions,
    side: Side<'_>,
) -> Result<Established, NetError> {
    // Unbuffered: a buffered reader could swallow the first chunk that follows the handshake.
    let (rd, wr) = stream.into_split();
    match side {
        Side::Initiator(Some(resumption)) => match resume::offer(rd, wr, opts, resumption).await? {
            Offered::Resumed(established) => Ok(*established),
            Offered::Refused(rd, wr) => {
                tracing::debug!("the primary did not take this node's session ticket");
                full_handshake(rd, wr, keys, opts, true, None).await
            }
        },
        Side::Initiator(None) => full_handshake(rd, wr, keys, opts, true, None).await,
        Side::Responder => respond(rd, wr, keys, opts).await,
    }
}

/// The responder's first frame is a resumption or XX's message 1.
async fn respond(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    keys: &NodeKeys,
    opts: &HandshakeOptions,
) -> Result<Established, NetError> {
    let mut first = [0u8; MAX_HANDSHAKE_MSG];
    let mut len = read_frame(&mut rd, &mut first).await?;
    if let Some((ticket, message_1)) = resume::parse(&first[..len]) {
        match opts.tickets.as_ref().map(|keys| keys.open(ticket)) {
            Some(Ok(opened)) => {
                return resume::respond(rd, wr, opts, opened, ticket, message_1).await
            }
            Some(Err(why)) => tracing::debug!("session ticket not taken ({why:?}): full handshake"),
            None => tracing::debug!("session ticket offered to a node that takes none"),
        }
        resume::refuse(&mut wr).await?;
        len = read_frame(&mut rd, &mut first).await?;
    }
    full_handshake(rd, wr, keys, opts, false, Some(&first[..len])).await
}

/// Noise XX with identity claims (module docs). A responder passes the first frame it read.
async fn full_handshake(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    keys: &NodeKeys,
    opts: &HandshakeOptions,
    initiator: bool,
    mut first_frame: Option<&[u8]>,
) -> Result<Established, NetError> {
    let pattern = if opts.network_key.is_some() {
        PATTERN_PSK
    } else {
        PATTERN_OPEN
    };
    let suite = Box::new(crate::crypto::NoiseSuite);
    let mut builder = snow::Builder::with_resolver(pattern.parse().map_err(noise_error)?, suite)
        .local_private_key(keys.noise_private())
        .prologue(PROLOGUE);
    if let Some(psk) = &opts.network_key {
        builder = builder.psk(3, psk);
    }
    let mut hs: HandshakeState = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
    .map_err(noise_error)?;

    let own_identity = keys.public_key().0;
    let ours = opts.versions;
    let mut negotiation = Negotiation::Pending {
        offered: initiator && ours.makes_offer(),
    };
    // The peer's claimed identity, and whether we asked it for a signature.
    let mut peer: Option<([u8; 32], bool)> = None;
    // Whether the peer asked us for a signature (the responder learns it from message 3).
    let mut peer_wants_ours = true;
    let mut out = [0u8; MAX_HANDSHAKE_MSG];
    let mut frame = [0u8; MAX_HANDSHAKE_MSG];
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    let (mut sent, mut received) = (0, 0);
    while !hs.is_handshake_finished() {
        if hs.is_my_turn() {
            // Message 1 carries the offer; 2 the responder's claim (and the version chosen);
            // 3 the initiator's claim and whether it needs the responder's signature.
            let layout = ClaimLayout {
                with_offer: negotiation.with_offer(),
                from_initiator: initiator,
            };
            let message: Vec<u8> = match (sent, &peer) {
                (0, _) if initiator && layout.with_offer => ours.encode_offer().to_vec(),
                (0, _) if initiator => Vec::new(),
                (_, Some((_, wants))) => layout.encode(own_identity, Some(*wants), None),
                _ => layout.encode(own_identity, None, Some((&negotiation, &ours))),
            };
            let n = hs.write_message(&message, &mut out).map_err(noise_error)?;
            write_frame(&mut wr, &[&out[..n]]).await?;
            sent += 1;
            if let Negotiation::NoneInCommon { theirs } = negotiation {
                // Told the peer in message 2; nothing more to say to it.
                return Err(NetError::Version(version::mismatch_advice(&ours, &theirs)));
            }
        } else {
            let message = match first_frame.take() {
                Some(frame) => frame,
                None => match read_frame(&mut rd, &mut frame).await {
                    Ok(len) => &frame[..len],
                    Err(e) if negotiation.with_offer() && received == 0 => {
                        return Err(refused_offer(e))
                    }
                    Err(e) => return Err(e),
                },
            };
            let n = hs.read_message(message, &mut payload).map_err(|e| {
                NetError::Authentication(format!(
                    "peer failed the handshake ({e}): wrong network key, different octodb \
                     version, or not an octodb node"
                ))
            })?;
            received += 1;
            if !initiator && received == 1 {
                negotiation = answer_offer(&ours, &payload[..n])?;
                continue;
            }
            let layout = ClaimLayout {
                with_offer: negotiation.with_offer(),
                from_initiator: !initiator,
            };
            let claim = layout.decode(&payload[..n])?;
            if let Some((chosen, theirs)) = claim.answer {
                negotiation = agreed_by_responder(&ours, chosen, theirs)?;
            } else if let Negotiation::Pending { offered: false } = negotiation {
                negotiation = Negotiation::Agreed {
                    version: version::PRE_NEGOTIATION,
                    with_offer: false,
                };
            }
            let remote_static = hs
                .get_remote_static()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or_else(|| NetError::Noise("no remote static key after its claim".into()))?;
            let known = opts.bindings.holds(&remote_static, &claim.identity);
            peer = Some((claim.identity, !known));
            if let Some(wants) = claim.wants_proof {
                peer_wants_ours = wants;
            }
        }
    }
    let (peer_identity, we_want_theirs) =
        peer.ok_or_else(|| NetError::Noise("handshake ended without the peer's claim".into()))?;
    let Negotiation::Agreed {
        version: protocol, ..
    } = negotiation
    else {
        return Err(NetError::Noise(
            "handshake ended without a protocol version".into(),
        ));
    };

    let hash = hs.get_handshake_hash().to_vec();
    let remote_static: Option<[u8; 32]> = hs
        .get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok());
    let transport = Arc::new(hs.into_stateless_transport_mode().map_err(noise_error)?);
    // Until the peer is authenticated, accept nothing bigger than an answer with a proof.
    let progress = super::chunks::Progress::new();
    let mut reader = SecureReader::new(rd, transport.clone(), ANSWER_MAX_LEN, progress.clone());
    let mut writer = SecureWriter::new(wr, transport, progress);

    let public_key = PublicKey(peer_identity);
    let asked = Asked {
        by_peer: peer_wants_ours,
        of_peer: we_want_theirs,
    };
    if let Some(signature) =
        exchange_signatures(&mut reader, &mut writer, keys, initiator, asked, &hash).await?
    {
        opts.bindings
            .checked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        verify_signature(&public_key, peer_role(initiator), &hash, &signature)?;
        if let Some(s) = remote_static {
            opts.bindings.remember(s, peer_identity);
        }
    }
    reader.max_message = opts.max_message;
    Ok(Established {
        reader,
        writer,
        public_key,
        protocol,
        resumed: false,
    })
}

/// A peer that hangs up on our offer before answering it: a node of version 2 refuses any
/// data in the first message (and a TCP proxy whose node is down accepts, then closes).
fn refused_offer(e: NetError) -> NetError {
    if !is_disconnect(&e) {
        return e;
    }
    NetError::Authentication(format!(
        "the peer closed the connection on this node's version offer (protocol {}), before \
         answering it. Either something on the way closes connections (a proxy or load \
         balancer whose node is down, a network resetting them: likely when this node reached \
         the same peer before), or the peer refused this node: the two use different network \
         keys (check that both give the same key=, or that neither does), or it runs an octodb \
         from before version negotiation (protocol {}; upgrade the primaries before their \
         devices). {NETWORK_KEY_OF_ENCRYPTED_NODES}",
        Versions::default(),
        version::PRE_NEGOTIATION
    ))
}

/// Where a "same network key" hint misleads: nodes whose files are encrypted do not use their
/// file's key on the network (the encryption walkthrough followed the hint and failed again).
/// (An earlier hint advised a plain device a decrypted copy of a member's file, which holds the
/// primary's secret key and every user's rows: the cluster walkthrough followed it.)
const NETWORK_KEY_OF_ENCRYPTED_NODES: &str = "With cipher=, a node's network key is derived \
     from the key its file was first created with, and kept across rekeys: a plain node cannot \
     join by giving that key as key=, and a node created with a later key cannot join either; \
     create it (a new file) with the key the network began with, then give it a key of its own \
     with PRAGMA rekey, or a plain file with `octodb decrypt` of that new file: either keeps \
     the network key. Never give a device a copy of a primary's file: it holds the primary's \
     secret key and every user's rows";

/// Which signatures the two sides asked each other for.
#[derive(Clone, Copy)]
struct Asked {
    /// The peer needs ours.
    by_peer: bool,
    /// We need the peer's.
    of_peer: bool,
}

fn own_role(initiator: bool) -> u8 {
    if initiator {
        ROLE_INITIATOR
    } else {
        ROLE_RESPONDER
    }
}

fn peer_role(initiator: bool) -> u8 {
    own_role(!initiator)
}

/// After the Noise handshake: the responder answers at once, saying whether it needs the
/// initiator's signature and adding its own if the initiator asked (the initiator's request
/// came in message 3); the initiator then sends its signature only if asked. Returns the
/// peer's signature when we asked for it, still to be checked.
async fn exchange_signatures(
    reader: &mut SecureReader,
    writer: &mut SecureWriter,
    keys: &NodeKeys,
    initiator: bool,
    asked: Asked,
    hash: &[u8],
) -> Result<Option<Vec<u8>>, NetError> {
    let ours = || keys.sign(&proof_message(own_role(initiator), hash));
    if initiator {
        let answer = recv_before_auth(reader).await?;
        let (&needs_ours, signature) = answer
            .split_first()
            .ok_or_else(|| NetError::Malformed("empty handshake answer".into()))?;
        let expected_len = if asked.of_peer { SIGNATURE_LEN } else { 0 };
        if needs_ours > 1 || signature.len() != expected_len {
            return Err(NetError::Malformed(format!(
                "handshake answer of {} bytes does not match this protocol: the peer is not \
                 an octodb node of this version",
                answer.len()
            )));
        }
        if needs_ours == 1 {
            writer.send(&ours()).await?;
            writer.flush().await?;
        }
        Ok(asked.of_peer.then(|| signature.to_vec()))
    } else {
        let mut answer = vec![u8::from(asked.of_peer)];
        if asked.by_peer {
            answer.extend_from_slice(&ours());
        }
        writer.send(&answer).await?;
        writer.flush().await?;
        match asked.of_peer {
            true => Ok(Some(recv_before_auth(reader).await?)),
            false => Ok(None),
        }
    }
}

/// The first messages after the Noise handshake, refusing anything bigger than they can be.
async fn recv_before_auth(reader: &mut SecureReader) -> Result<Vec<u8>, NetError> {
    match reader.recv().await {
        Err(NetError::TooLarge { .. }) => Err(NetError::Malformed(
            "oversized handshake answer: the peer is not an octodb node of this version".into(),
        )),
        other => other,
    }
}

/// The bytes each side signs: fixed context, its role, and this connection's handshake hash.
fn proof_message(role: u8, hash: &[u8]) -> Vec<u8> {
    [PROOF_CONTEXT, &[role], hash].concat()
}

/// Checks that the holder of `identity` signed this connection's handshake hash in `role`.
fn verify_signature(
    identity: &PublicKey,
    role: u8,
    hash: &[u8],
    signature: &[u8],
) -> Result<(), NetError> {
    identity
        .verify(&proof_message(role, hash), signature)
        .map_err(|e| {
            NetError::Authentication(format!(
                "peer's identity proof for {identity} does not hold for this connection: {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    const LIMIT: Duration = Duration::from_secs(10);

    fn with_key(key: Option<u8>) -> HandshakeOptions {
        HandshakeOptions {
            network_key: key.map(|k| [k; 32]),
            ..Default::default()
        }
    }

    type Side = Result<SecureStream, NetError>;

    /// Connects a fresh client to a fresh server over loopback, never hanging. Returns both
    /// results and the client's and server's identities.
    async fn pair(
        client: HandshakeOptions,
        server: HandshakeOptions,
    ) -> (Side, Side, [PublicKey; 2]) {
        let (ck, sk) = (NodeKeys::generate(), NodeKeys::generate());
        let ids = [ck.public_key(), sk.public_key()];
        let (c, s) = pair_of(&ck, &sk, &client, &server).await;
        (c, s, ids)
    }

    /// Connects `client` to `server` with the given keys and options over loopback.
    async fn pair_of(
        client_keys: &NodeKeys,
        server_keys: &NodeKeys,
        client: &HandshakeOptions,
        server: &HandshakeOptions,
    ) -> (Side, Side) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sk, server) = (server_keys.clone(), server.clone());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            SecureStream::accept(tcp, &sk, &server).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = timeout(LIMIT, SecureStream::connect(tcp, client_keys, client));
        let client = client.await.expect("connect hung");
        let server = timeout(LIMIT, server).await.expect("accept hung").unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn round_trip_both_directions_and_identities() {
        let opts = HandshakeOptions::default;
        let (c, s, [client_id, server_id]) = pair(opts(), opts()).await;
        let (mut s, c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.peer().public_key, client_id);
        assert_eq!(c.peer().public_key, server_id);
        assert_eq!(c.peer().addr.ip(), s.peer().addr.ip());
        let server = tokio::spawn(async move {
            // Echo four messages back.
            for _ in 0..4 {
                let m = s.recv().await?;
                s.send(&m).await?;
                s.flush().await?;
            }
            Ok::<_, NetError>(())
        });
        let (mut rd, mut wr) = c.into_split();
        let msgs: Vec<Vec<u8>> = [0usize, 1, 70_000, 1_000_000]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 % 251) as u8).collect())
            .collect();
        let to_send = msgs.clone();
        let writer = tokio::spawn(async move {
            for m in &to_send {
                wr.send(m).await?;
                wr.flush().await?;
            }
            Ok::<_, NetError>(wr)
        });
        for m in &msgs {
            assert_eq!(&timeout(LIMIT, rd.recv()).await.unwrap().unwrap(), m);
        }
        let mut wr = writer.await.unwrap().unwrap();
        server.await.unwrap().unwrap();
        wr.shutdown().await.unwrap();
        assert!(matches!(rd.recv().await, Err(NetError::Closed)));
    }

    #[tokio::test]
    async fn many_small_messages_one_flush() {
        let (c, s, _) = pair(with_key(Some(1)), with_key(Some(1))).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        let n = 10_000u32;
        let sender = tokio::spawn(async move {
            for i in 0..n {
                c.send(&i.to_be_bytes()).await.unwrap();
            }
            c.flush().await.unwrap();
            c
        });
        for i in 0..n {
            assert_eq!(s.recv().await.unwrap(), i.to_be_bytes());
        }
        drop(sender.await.unwrap());
        assert!(matches!(s.recv().await, Err(NetError::Closed)));
    }

    #[tokio::test]
    async fn mismatched_network_keys_fail_both_sides() {
        for (a, b) in [(Some(1), Some(2)), (Some(1), None), (None, Some(1))] {
            let (c, s, _) = pair(with_key(a), with_key(b)).await;
            let (c, s) = (c.unwrap_err(), s.unwrap_err());
            assert!(matches!(c, NetError::Authentication(_)), "{a:?}/{b:?}: {c}");
            assert!(matches!(s, NetError::Authentication(_)), "{a:?}/{b:?}: {s}");
        }
    }

    #[tokio::test]
    async fn oversized_message_is_refused_then_stream_continues() {
        let small = HandshakeOptions {
            max_message: 100_000,
            ..Default::default()
        };
        let (c, s, _) = pair(HandshakeOptions::default(), small).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        c.send(&vec![1u8; 100_000]).await.unwrap();
        c.send(&vec![2u8; 300_000]).await.unwrap();
        c.send(b"after").await.unwrap();
        let sender = tokio::spawn(async move { c.flush().await.map(|_| c) });
        assert_eq!(s.recv().await.unwrap().len(), 100_000);
        match s.recv().await {
            Err(NetError::TooLarge { size, max }) => assert!(size > max && max == 100_000),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(s.recv().await.unwrap(), b"after");
        sender.await.unwrap().unwrap();
    }

    async fn accept_raw(opts: HandshakeOptions, garbage: &[u8]) -> NetError {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut raw = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        raw.write_all(garbage).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        // `raw` stays open, so only the server's own checks can end the handshake.
        let keys = NodeKeys::generate();
        let r = timeout(
            Duration::from_secs(2),
            SecureStream::accept(tcp, &keys, &opts),
        )
        .await;
        drop(raw);
        r.expect("accept did not fail promptly").unwrap_err()
    }

    #[tokio::test]
    async fn garbage_client_is_rejected_promptly() {
        let http = accept_raw(HandshakeOptions::default(), b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(matches!(http, NetError::Malformed(_)), "{http}");
        let empty = accept_raw(HandshakeOptions::default(), &[0, 0, 1, 2, 3]).await;
        assert!(matches!(empty, NetError::Malformed(_)), "{empty}");
        let short = accept_raw(with_key(Some(1)), &[0, 5, 1, 2, 3, 4, 5]).await;
        assert!(matches!(short, NetError::Authentication(_)), "{short}");
        // Well framed but then silent: the handshake timeout ends it.
        let quick = HandshakeOptions {
            timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let silent = accept_raw(quick, &[&[0, 32][..], &[9; 32]].concat()).await;
        assert!(matches!(silent, NetError::Timeout), "{silent}");
    }

    #[tokio::test]
    async fn a_port_probe_is_a_closed_connection_not_a_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let probe = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        drop(probe);
        let (tcp, _) = listener.accept().await.unwrap();
        let (keys, opts) = (NodeKeys::generate(), HandshakeOptions::default());
        let accepted = timeout(LIMIT, SecureStream::accept(tcp, &keys, &opts));
        let err = accepted.await.expect("accept hung").unwrap_err();
        assert!(matches!(err, NetError::Closed), "{err}");
    }

    /// A server behind a relay that hands every read from the client to `hook` before passing
    /// it on (the server's bytes pass untouched). Returns the relay's address and the server's
    /// side of the handshake.
    async fn behind_relay(
        mut hook: impl FnMut(&mut [u8]) + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<Side>) {
        let server_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (server_addr, relay_addr) = (
            server_l.local_addr().unwrap(),
            relay_l.local_addr().unwrap(),
        );
        tokio::spawn(async move {
            let (client, _) = relay_l.accept().await.unwrap();
            let server = TcpStream::connect(server_addr).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = cr.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                hook(&mut buf[..n]);
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio::spawn(async move {
            let (tcp, _) = server_l.accept().await.unwrap();
            SecureStream::accept(tcp, &NodeKeys::generate(), &HandshakeOptions::default()).await
        });
        (relay_addr, accept)
    }

    #[tokio::test]
    async fn tampered_chunk_fails_to_decrypt() {
        let tamper = Arc::new(AtomicBool::new(false));
        let flag = tamper.clone();
        let (relay_addr, accept) = behind_relay(move |bytes| {
            if flag.swap(false, Ordering::SeqCst) {
                let n = bytes.len();
                bytes[n - 1] ^= 0x40; // inside the authentication tag of the chunk
            }
        })
        .await;
        let tcp = TcpStream::connect(relay_addr).await.unwrap();
        let opts = HandshakeOptions::default();
        let mut c = SecureStream::connect(tcp, &NodeKeys::generate(), &opts)
            .await
            .unwrap();
        let mut s = accept.await.unwrap().unwrap();
        c.send(b"intact").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(s.recv().await.unwrap(), b"intact");
        tamper.store(true, Ordering::SeqCst);
        c.send(b"tampered").await.unwrap();
        c.flush().await.unwrap();
        let err = timeout(LIMIT, s.recv()).await.unwrap().unwrap_err();
        assert!(matches!(err, NetError::Noise(_)), "{err}");
        // The stream stays refused afterwards.
        assert!(s.recv().await.is_err());
    }

    #[test]
    fn identity_signature_is_bound_to_role_and_hash() {
        let keys = NodeKeys::generate();
        let hash = [7u8; 32];
        let signature = keys.sign(&proof_message(ROLE_INITIATOR, &hash));
        let id = keys.public_key();
        assert!(verify_signature(&id, ROLE_INITIATOR, &hash, &signature).is_ok());
        assert!(verify_signature(&id, ROLE_RESPONDER, &hash, &signature).is_err());
        assert!(verify_signature(&id, ROLE_INITIATOR, &[8u8; 32], &signature).is_err());
        let other = NodeKeys::generate().public_key();
        assert!(verify_signature(&other, ROLE_INITIATOR, &hash, &signature).is_err());
        assert!(verify_signature(&id, ROLE_INITIATOR, &hash, &signature[..63]).is_err());
    }

    fn speaking(oldest: u8, newest: u8) -> HandshakeOptions {
        HandshakeOptions {
            versions: Versions { oldest, newest },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_newest_common_version_is_agreed() {
        let current = version::NEWEST;
        let cases = [
            (speaking(2, current), speaking(2, current), current),
            // A device from before negotiation (no offer) at this build's primary.
            (speaking(2, 2), speaking(2, current), 2),
            // This build's device at a primary that speaks 2 and 3 only... and at a newer one.
            (speaking(2, current), speaking(2, current + 1), current),
            (
                speaking(current, current + 2),
                speaking(2, current + 1),
                current + 1,
            ),
        ];
        for (client, server, expected) in cases {
            let (c, s, _) = pair(client.clone(), server.clone()).await;
            let (c, s) = (c.unwrap(), s.unwrap());
            assert_eq!(
                (c.protocol_version(), s.protocol_version()),
                (expected, expected),
                "{:?} / {:?}",
                client.versions,
                server.versions
            );
        }
    }

    #[tokio::test]
    async fn no_common_version_says_which_side_to_upgrade() {
        // A device newer than anything its primary speaks.
        let (c, s, _) = pair(speaking(9, 10), speaking(2, 3)).await;
        let (c, s) = (c.unwrap_err(), s.unwrap_err());
        assert!(
            matches!(&c, NetError::Version(m) if m.contains("upgrade the peer")),
            "{c}"
        );
        assert!(
            matches!(&s, NetError::Version(m) if m.contains("upgrade this node")),
            "{s}"
        );
        // A device of version 2 at a primary that no longer serves it.
        let (_, s, _) = pair(speaking(2, 2), speaking(3, 4)).await;
        let s = s.unwrap_err();
        assert!(
            matches!(&s, NetError::Version(m) if m.contains("protocol 2")),
            "{s}"
        );
    }

    #[tokio::test]
    async fn an_offer_refused_by_an_old_node_is_explained() {
        // What a node of version 2 does with any first message that carries data: hang up.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let old = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let len = tcp.read_u16().await.unwrap();
            let mut first = vec![0u8; usize::from(len)];
            tcp.read_exact(&mut first).await.unwrap();
            assert!(first.len() > 32, "the offer rides in message 1");
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let opts = HandshakeOptions::default();
        let err = SecureStream::connect(tcp, &NodeKeys::generate(), &opts)
            .await
            .unwrap_err();
        old.await.unwrap();
        assert!(
            err.to_string().contains("before version negotiation"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_tampered_offer_fails_the_handshake() {
        // A relay that rewrites the offer to force version 2 breaks the handshake hash.
        let mut first = true;
        let (relay_addr, accept) = behind_relay(move |bytes| {
            if std::mem::take(&mut first) {
                let n = bytes.len();
                bytes[n - 1] = 2; // the offer's newest version, last in message 1
            }
        })
        .await;
        let tcp = TcpStream::connect(relay_addr).await.unwrap();
        let client = timeout(
            LIMIT,
            SecureStream::connect(tcp, &NodeKeys::generate(), &HandshakeOptions::default()),
        )
        .await
        .expect("connect hung");
        assert!(client.is_err(), "a downgraded handshake must fail");
        let server = timeout(LIMIT, accept).await.expect("accept hung").unwrap();
        assert!(server.is_err(), "a downgraded handshake must fail");
    }

    #[tokio::test]
    async fn a_returning_node_connects_without_signatures() {
        let (ck, sk) = (NodeKeys::generate(), NodeKeys::generate());
        let (copts, sopts) = (HandshakeOptions::default(), HandshakeOptions::default());
        for (round, checked) in [(1, 1), (2, 1), (3, 1)] {
            let (c, s) = pair_of(&ck, &sk, &copts, &sopts).await;
            let (c, s) = (c.unwrap(), s.unwrap());
            assert_eq!(c.peer().public_key, sk.public_key(), "round {round}");
            assert_eq!(s.peer().public_key, ck.public_key(), "round {round}");
            assert_eq!(
                copts.bindings.signatures_checked(),
                checked,
                "round {round}"
            );
            assert_eq!(
                sopts.bindings.signatures_checked(),
                checked,
                "round {round}"
            );
        }
        // The same identity with another Noise static key must sign again; the server's
        // knowledge of the client stays, so only the server asks.
        let mut bytes = ck.to_bytes();
        bytes[32..].copy_from_slice(NodeKeys::generate().noise_private());
        let moved = NodeKeys::from_bytes(&bytes).unwrap();
        assert_eq!(moved.public_key(), ck.public_key());
        let (c, s) = pair_of(&moved, &sk, &copts, &sopts).await;
        assert_eq!(s.unwrap().peer().public_key, ck.public_key());
        drop(c.unwrap());
        assert_eq!(copts.bindings.signatures_checked(), 1);
        assert_eq!(sopts.bindings.signatures_checked(), 2);
    }
}
