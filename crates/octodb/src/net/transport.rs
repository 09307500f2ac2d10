//! Secure, framed connections between nodes over TCP.
//!
//! Wire protocol (all lengths are big-endian u16):
//! 1. Noise handshake, `Noise_XXpsk3_25519_AESGCM_BLAKE2s` when a network key is set, else
//!    `Noise_XX_25519_AESGCM_BLAKE2s`; prologue `octodb/1`, so nodes of another protocol
//!    version or network fail here. Each handshake message is `[len][bytes]`.
//! 2. Each side sends an identity proof as its first encrypted message: its Ed25519 key and a
//!    signature over `"octodb-identity-v1" || role || handshake_hash`. The handshake hash is
//!    unique to this connection and covers both Noise static keys, so a proof cannot be replayed
//!    elsewhere; the role byte stops a peer from reflecting our own proof back at us.
//! 3. Messages, split into chunks `[len][ciphertext]` whose plaintext is `[flags][data]`
//!    (flags bit 0 = last chunk). Nonces are implicit counters, so a dropped, replayed or
//!    reordered chunk fails to decrypt.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use snow::HandshakeState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use super::chunks::{SecureReader, SecureWriter};

use crate::crypto::{NodeKeys, PublicKey};

/// Protocol version, mixed into the handshake: peers with a different one cannot connect.
const PROLOGUE: &[u8] = b"octodb/1";
const PATTERN_PSK: &str = "Noise_XXpsk3_25519_AESGCM_BLAKE2s";
const PATTERN_OPEN: &str = "Noise_XX_25519_AESGCM_BLAKE2s";
/// XX handshake messages are at most ~100 bytes; anything bigger is another protocol, and
/// refusing it at once means a stray client fails fast instead of waiting for the timeout.
const MAX_HANDSHAKE_MSG: usize = 256;
const PROOF_VERSION: u8 = 1;
const PROOF_CONTEXT: &[u8] = b"octodb-identity-v1";
const PROOF_LEN: usize = 1 + 32 + 64 + 1;
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
}

fn noise_error(e: snow::Error) -> NetError {
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
}

impl Default for HandshakeOptions {
    fn default() -> Self {
        HandshakeOptions {
            network_key: None,
            timeout: Duration::from_secs(10),
            max_message: 64 * 1024 * 1024,
            bindings: Default::default(),
        }
    }
}

/// Which Ed25519 identity each Noise static key has proven to belong to.
///
/// Why a proof need not be verified again: the Noise handshake proves, in every connection,
/// that the peer holds the private key of its static key S. A proof verified once showed that
/// the holder of identity E signed a handshake hash that covers S, i.e. that E uses S. A later
/// connection that proves S and claims E therefore needs no new signature check; a claim of E
/// with any other static key is verified as usual. (S and E are kept together in a node's file.)
/// This halves the public-key work of a primary's handshake with a returning device.
#[derive(Default)]
pub struct VerifiedBindings {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 32], [u8; 32]>>,
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
}

/// Shows whether a network key is set, never the key itself.
impl fmt::Debug for HandshakeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeOptions")
            .field("network_key", &self.network_key.map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("max_message", &self.max_message)
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
}

impl fmt::Debug for SecureStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureStream")
            .field("peer", &self.peer)
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
        establish(stream, keys, opts, true).await
    }

    /// Runs the handshake as the responder (the side that accepted the connection).
    pub async fn accept(
        stream: TcpStream,
        keys: &NodeKeys,
        opts: &HandshakeOptions,
    ) -> Result<SecureStream, NetError> {
        establish(stream, keys, opts, false).await
    }

    /// The authenticated peer.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
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

async fn establish(
    stream: TcpStream,
    keys: &NodeKeys,
    opts: &HandshakeOptions,
    initiator: bool,
) -> Result<SecureStream, NetError> {
    let addr = stream.peer_addr()?;
    // Messages are batched by the writer and sent on flush, so Nagle would only add latency.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, "could not set TCP_NODELAY: {e}");
    }
    let result = tokio::time::timeout(opts.timeout, handshake(stream, keys, opts, initiator)).await;
    match result {
        Err(_) => Err(NetError::Timeout),
        Ok(Ok((reader, writer, public_key))) => Ok(SecureStream {
            reader,
            writer,
            peer: PeerIdentity { public_key, addr },
        }),
        // A peer that rejects our handshake just hangs up; say what that usually means.
        Ok(Err(e)) if is_disconnect(&e) => Err(NetError::Authentication(
            "peer closed the connection during the handshake: it probably rejected this node \
             (check that both use the same network key and octodb version), or is not an \
             octodb node"
                .into(),
        )),
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

async fn handshake(
    stream: TcpStream,
    keys: &NodeKeys,
    opts: &HandshakeOptions,
    initiator: bool,
) -> Result<(SecureReader, SecureWriter, PublicKey), NetError> {
    // Unbuffered: a buffered reader could swallow the first chunk that follows the handshake.
    let (mut rd, mut wr) = stream.into_split();

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

    let mut buf = [0u8; 2 + MAX_HANDSHAKE_MSG];
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    while !hs.is_handshake_finished() {
        if hs.is_my_turn() {
            let n = hs.write_message(&[], &mut buf[2..]).map_err(noise_error)?;
            buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
            wr.write_all(&buf[..2 + n]).await?;
        } else {
            let len = usize::from(rd.read_u16().await?);
            if len == 0 || len > MAX_HANDSHAKE_MSG {
                return Err(NetError::Malformed(format!(
                    "handshake message of {len} bytes (at most {MAX_HANDSHAKE_MSG} expected): \
                     the peer is not an octodb node or speaks another protocol"
                )));
            }
            rd.read_exact(&mut buf[..len]).await?;
            hs.read_message(&buf[..len], &mut payload).map_err(|e| {
                NetError::Authentication(format!(
                    "peer failed the handshake ({e}): wrong network key, different octodb \
                     version, or not an octodb node"
                ))
            })?;
        }
    }

    let hash = hs.get_handshake_hash().to_vec();
    let remote_static: Option<[u8; 32]> = hs
        .get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok());
    let transport = Arc::new(hs.into_stateless_transport_mode().map_err(noise_error)?);
    // Until the peer is authenticated, accept nothing bigger than an identity proof.
    let mut reader = SecureReader::new(rd, transport.clone(), PROOF_LEN);
    let mut writer = SecureWriter::new(wr, transport);

    let (role, peer_role) = match initiator {
        true => (ROLE_INITIATOR, ROLE_RESPONDER),
        false => (ROLE_RESPONDER, ROLE_INITIATOR),
    };
    writer.send(&create_proof(keys, role, &hash)).await?;
    writer.flush().await?;
    let proof = match reader.recv().await {
        Err(NetError::TooLarge { .. }) => Err(NetError::Malformed(
            "oversized identity proof: the peer is not an octodb node of this version".into(),
        )),
        other => other,
    }?;
    let public_key = match remote_static {
        Some(s) if proven_before(&proof, peer_role, &s, &opts.bindings) => PublicKey(
            proof[1..33]
                .try_into()
                .map_err(|_| NetError::Authentication("identity proof has no key".into()))?,
        ),
        Some(s) => {
            let key = verify_proof(&proof, peer_role, &hash)?;
            opts.bindings.remember(s, key.0);
            key
        }
        None => verify_proof(&proof, peer_role, &hash)?,
    };
    reader.max_message = opts.max_message;
    Ok((reader, writer, public_key))
}

/// The bytes each side signs: fixed context, its role, and this connection's handshake hash.
fn proof_message(role: u8, hash: &[u8]) -> Vec<u8> {
    [PROOF_CONTEXT, &[role], hash].concat()
}

/// Encodes `IdentityProof { version: u8, ed25519_public: [u8; 32], signature: [u8; 64],
/// role: u8 }` as those fixed-size fields in order (serde has no impls for `[u8; 64]`).
fn create_proof(keys: &NodeKeys, role: u8, hash: &[u8]) -> Vec<u8> {
    let signature = keys.sign(&proof_message(role, hash));
    let public = keys.public_key().0;
    [&[PROOF_VERSION][..], &public, &signature, &[role]].concat()
}

/// Whether `proof` is well formed and claims the identity `noise_static` was proven to have.
fn proven_before(
    proof: &[u8],
    expected_role: u8,
    noise_static: &[u8; 32],
    bindings: &VerifiedBindings,
) -> bool {
    proof.len() == PROOF_LEN
        && proof[0] == PROOF_VERSION
        && proof[PROOF_LEN - 1] == expected_role
        && <&[u8; 32]>::try_from(&proof[1..33]).is_ok_and(|id| bindings.holds(noise_static, id))
}

/// Checks a peer's proof and returns its identity.
fn verify_proof(proof: &[u8], expected_role: u8, hash: &[u8]) -> Result<PublicKey, NetError> {
    let auth = |m: String| Err(NetError::Authentication(m));
    if proof.len() != PROOF_LEN {
        return auth(format!(
            "identity proof has {} bytes, expected {PROOF_LEN}",
            proof.len()
        ));
    }
    if proof[0] != PROOF_VERSION {
        return auth(format!(
            "peer uses identity proof version {}, this node supports {PROOF_VERSION}: \
             upgrade the older node",
            proof[0]
        ));
    }
    let role = proof[PROOF_LEN - 1];
    if role != expected_role {
        return auth(format!(
            "peer claims role {role}, expected {expected_role} (a reflected or misrouted proof)"
        ));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&proof[1..33]);
    let key = PublicKey(key);
    match key.verify(&proof_message(role, hash), &proof[33..97]) {
        Ok(()) => Ok(key),
        Err(e) => auth(format!(
            "peer's identity proof for {key} does not hold for this connection: {e}"
        )),
    }
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ck, sk) = (NodeKeys::generate(), NodeKeys::generate());
        let ids = [ck.public_key(), sk.public_key()];
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            SecureStream::accept(tcp, &sk, &server).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = timeout(LIMIT, SecureStream::connect(tcp, &ck, &client));
        let client = client.await.expect("connect hung");
        let server = timeout(LIMIT, server).await.expect("accept hung").unwrap();
        (client, server, ids)
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
    async fn tampered_chunk_fails_to_decrypt() {
        let server_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (server_addr, relay_addr) = (
            server_l.local_addr().unwrap(),
            relay_l.local_addr().unwrap(),
        );
        let tamper = Arc::new(AtomicBool::new(false));
        let flag = tamper.clone();
        tokio::spawn(async move {
            let (client, _) = relay_l.accept().await.unwrap();
            let server = TcpStream::connect(server_addr).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = cr.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                if flag.swap(false, Ordering::SeqCst) {
                    buf[n - 1] ^= 0x40; // inside the authentication tag of the chunk
                }
                sw.write_all(&buf[..n]).await.unwrap();
            }
        });
        let accept = tokio::spawn(async move {
            let (tcp, _) = server_l.accept().await.unwrap();
            SecureStream::accept(tcp, &NodeKeys::generate(), &HandshakeOptions::default()).await
        });
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
    fn identity_proof_is_bound_to_role_and_hash() {
        let keys = NodeKeys::generate();
        let hash = [7u8; 32];
        let proof = create_proof(&keys, ROLE_INITIATOR, &hash);
        assert_eq!(proof.len(), PROOF_LEN);
        assert_eq!(
            verify_proof(&proof, ROLE_INITIATOR, &hash).unwrap(),
            keys.public_key()
        );
        assert!(verify_proof(&proof, ROLE_RESPONDER, &hash).is_err());
        assert!(verify_proof(&proof, ROLE_INITIATOR, &[8u8; 32]).is_err());
        let mut forged = proof.clone();
        forged[1..33].copy_from_slice(&NodeKeys::generate().public_key().0);
        assert!(verify_proof(&forged, ROLE_INITIATOR, &hash).is_err());
        assert!(verify_proof(&proof[..90], ROLE_INITIATOR, &hash).is_err());
    }
}
