//! Attacks made below the API, on the wire, over real loopback sockets: stolen identities,
//! replayed handshakes and chunks, forged changes from an approved device, garbage in every
//! field of an authorization request, and transactions sent again after a primary restart. Each is refused with nothing stored at the primary, and
//! the primary keeps serving real devices throughout.
mod common;
use common::*;
use octodb::auth::{Action, AuthRequest, Decision, MAX_REQUEST_DATA};
use octodb::changes::{column_bit, ChangeSet, Op};
use octodb::crypto::{NodeKeys, PublicKey};
use octodb::log::{EntryBody, LogEntry};
use octodb::net::{AuthAsk, HandshakeOptions, Message, SecureStream};
use octodb::{Connection, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The wire constants of `net::transport`, restated: these tests speak the protocol by hand.
const NOISE_PATTERN: &str = "Noise_XX_25519_AESGCM_BLAKE2s";
const PROLOGUE: &[u8] = b"octodb/2";
/// Protocol 3: message 1 offers versions 3 to 3; the claims are of the negotiated layout.
const OFFER: [u8; 3] = [0xa7, 3, 3];
const CLAIM_VERSION: u8 = 3;
/// The responder's answer to the offer: chosen 3, speaks 3 to 3.
const ANSWER: [u8; 3] = [3, 3, 3];
const PROOF_CONTEXT: &[u8] = b"octodb-identity-v2";
const SIGNATURE_LEN: usize = 64;
const ROLE_INITIATOR: u8 = 0;
const ROLE_RESPONDER: u8 = 1;
const FLAG_LAST: u8 = 1;
const TAG_LEN: usize = 16;

/// A runtime whose worker keeps proxies and fake servers running while the test thread blocks
/// on the engine's synchronous API (which must not be called from inside a runtime).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

// ---------------------------------------------------------------------------------------------
// The primary and what it stores

/// An auth=user primary holding one row of user 5 and one public row. Sign-ups are decided by
/// their data: `user:<id>` joins user <id>; anything else is rejected.
fn user_primary(c: &Cluster) -> Connection {
    let p = c.auth_primary("p.db", "user");
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    p.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (1, 'secret of user 5', 5)",
        [],
    )
    .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('public', '*')", [])
        .unwrap();
    p.set_auth_callback(Action::UserSignup, |r: &AuthRequest| {
        match user_named_in(r) {
            Some(u) => Decision::User(u),
            None => Decision::Reject("sign-up data not accepted".into()),
        }
    })
    .unwrap();
    p
}

/// A device signed up as `user` (see [`user_primary`]), ready.
fn device_of(c: &Cluster, name: &str, addr: &str, user: i64) -> Connection {
    let d = Connection::open(&device_uri(&c.path(name), addr)).unwrap();
    d.execute(&format!("PRAGMA user_signup='user:{user}'"), [])
        .unwrap();
    let s = ready(&d);
    assert_eq!(s.user_id, Some(user));
    d
}

fn rows(c: &Connection, sql: &str) -> Vec<Vec<Value>> {
    c.query(sql, []).unwrap().rows
}

/// Everything at the primary an attack could have changed.
#[derive(Debug, PartialEq)]
struct Stored {
    rows: Vec<Vec<Value>>,
    nodes: Vec<Vec<Value>>,
    users: Vec<Vec<Value>>,
    log: Vec<Vec<Value>>,
}

fn stored(p: &Connection) -> Stored {
    Stored {
        rows: rows(p, "SELECT rowid, * FROM t ORDER BY rowid"),
        nodes: rows(
            p,
            "SELECT node_id, pubkey, node_type, user_id, auth_state, last_txn, request
             FROM _octo_nodes ORDER BY node_id",
        ),
        users: rows(p, "SELECT user_id FROM _octo_users ORDER BY user_id"),
        log: rows(
            p,
            "SELECT seq, origin_node, origin_txn FROM _octo_log ORDER BY seq",
        ),
    }
}

/// A device of `user` still joins, downloads, and syncs both ways.
fn still_serving(c: &Cluster, p: &Connection, name: &str, user: i64) {
    let d = device_of(c, name, &addr_of(p), user);
    assert_eq!(
        count(&d, "SELECT count(*) FROM t WHERE v = 'public'"),
        1,
        "public rows are downloaded"
    );
    if user != 5 {
        assert_eq!(count(&d, "SELECT count(*) FROM t WHERE row_owner = 5"), 0);
    }
    sync_round_trip(p, &d, name);
}

/// A row written on the device reaches the primary, and one written on the primary reaches it.
fn sync_round_trip(p: &Connection, d: &Connection, tag: &str) {
    d.execute("INSERT INTO t(v) VALUES (?1)", [format!("up {tag}")])
        .unwrap();
    wait_count(
        p,
        &format!("SELECT count(*) FROM t WHERE v = 'up {tag}'"),
        1,
    );
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
        [format!("down {tag}")],
    )
    .unwrap();
    wait_count(
        d,
        &format!("SELECT count(*) FROM t WHERE v = 'down {tag}'"),
        1,
    );
}

// ---------------------------------------------------------------------------------------------
// The protocol spoken by hand: frames, a Noise handshake, chunks, identity proofs

async fn write_frame(w: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
    let mut f = (bytes.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(bytes);
    w.write_all(&f).await.unwrap();
}

/// One `[u16 len][bytes]` frame, or None once the peer closed (or reset) the connection.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

fn noise_builder(keys: &NodeKeys) -> snow::Builder<'_> {
    snow::Builder::new(NOISE_PATTERN.parse().unwrap())
        .local_private_key(keys.noise_private())
        .prologue(PROLOGUE)
}

/// The bytes an identity signature signs.
fn proof_message(role: u8, hash: &[u8]) -> Vec<u8> {
    [PROOF_CONTEXT, &[role], hash].concat()
}

/// The claim in handshake message 2 (`wants` None: with the answer to the offer) or 3.
fn claim(identity: &PublicKey, wants: Option<bool>) -> Vec<u8> {
    let mut c = [&[CLAIM_VERSION][..], &identity.0].concat();
    match wants {
        Some(w) => c.push(u8::from(w)),
        None => c.extend_from_slice(&ANSWER),
    }
    c
}

/// `data` as one whole-message chunk, framed.
fn chunk(noise: &mut snow::TransportState, data: &[u8]) -> Vec<u8> {
    let plain = [&[FLAG_LAST][..], data].concat();
    let mut ct = vec![0u8; plain.len() + TAG_LEN];
    let n = noise.write_message(&plain, &mut ct).unwrap();
    [&(n as u16).to_be_bytes()[..], &ct[..n]].concat()
}

/// A client that completed the Noise handshake with a Noise key of its own, claiming
/// `identity` and asking for the primary's signature, and has sent nothing else.
struct RawClient {
    tcp: TcpStream,
    noise: snow::TransportState,
    hash: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr, identity: &PublicKey) -> RawClient {
        let keys = NodeKeys::generate();
        let mut hs = noise_builder(&keys).build_initiator().unwrap();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = hs.write_message(&OFFER, &mut buf).unwrap();
        write_frame(&mut tcp, &buf[..n]).await;
        let reply = within("handshake reply", read_frame(&mut tcp))
            .await
            .expect("the primary answers the handshake");
        hs.read_message(&reply, &mut buf).unwrap();
        let n = hs
            .write_message(&claim(identity, Some(true)), &mut buf)
            .unwrap();
        write_frame(&mut tcp, &buf[..n]).await;
        RawClient {
            hash: hs.get_handshake_hash().to_vec(),
            noise: hs.into_transport_mode().unwrap(),
            tcp,
        }
    }

    fn chunk(&mut self, data: &[u8]) -> Vec<u8> {
        chunk(&mut self.noise, data)
    }

    /// The next chunk's data, or None if the connection closed.
    async fn recv(&mut self) -> Option<Vec<u8>> {
        let ct = read_frame(&mut self.tcp).await?;
        let mut plain = vec![0u8; ct.len()];
        let n = self.noise.read_message(&ct, &mut plain).unwrap();
        assert_eq!(plain[0], FLAG_LAST, "only single-chunk messages expected");
        Some(plain[1..n].to_vec())
    }

    /// Reads the primary's answer, checks that its signature names `primary` for this
    /// connection, and returns whether the primary asks for our signature.
    async fn expect_primary_answer(&mut self, primary: &PublicKey) -> bool {
        let got = within("the primary's answer", self.recv())
            .await
            .expect("the primary answers first");
        assert_eq!(got.len(), 1 + SIGNATURE_LEN);
        primary
            .verify(&proof_message(ROLE_RESPONDER, &self.hash), &got[1..])
            .unwrap();
        got[0] == 1
    }

    /// Waits for the primary to close, returning every chunk it sent meanwhile.
    async fn until_closed(&mut self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while let Some(m) = within("the primary closing the connection", self.recv()).await {
            got.push(m);
        }
        got
    }
}

/// Plays a primary just long enough to receive a connecting node's identity signature, as a
/// fake primary (or a relay in the middle) would see it: the signature and the handshake hash
/// it signs.
async fn capture_signature(listener: TcpListener) -> (Vec<u8>, Vec<u8>) {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let keys = NodeKeys::generate();
    let mut hs = noise_builder(&keys).build_responder().unwrap();
    let mut buf = [0u8; 1024];
    let m1 = read_frame(&mut tcp).await.unwrap();
    hs.read_message(&m1, &mut buf).unwrap();
    let n = hs
        .write_message(&claim(&keys.public_key(), None), &mut buf)
        .unwrap();
    write_frame(&mut tcp, &buf[..n]).await;
    let m3 = read_frame(&mut tcp).await.unwrap();
    let n = hs.read_message(&m3, &mut buf).unwrap();
    let wants_ours = buf[n - 1] == 1;
    let hash = hs.get_handshake_hash().to_vec();
    let mut t = hs.into_transport_mode().unwrap();
    let mut answer = vec![1u8];
    if wants_ours {
        answer.extend_from_slice(&keys.sign(&proof_message(ROLE_RESPONDER, &hash)));
    }
    tcp.write_all(&chunk(&mut t, &answer)).await.unwrap();
    let ct = read_frame(&mut tcp).await.unwrap();
    let n = t.read_message(&ct, &mut buf).unwrap();
    (buf[1..n].to_vec(), hash)
}

// ---------------------------------------------------------------------------------------------
// 1. Claiming an approved device's public key without its private key

/// Connects with a Noise key of the attacker's own, claims to be `victim`, and answers the
/// primary's demand for a signature with `forged`.
fn impersonate(
    addr: SocketAddr,
    primary: &PublicKey,
    victim: &PublicKey,
    rt: &tokio::runtime::Runtime,
    forged: Forged,
) {
    rt.block_on(async {
        let mut raw = RawClient::connect(addr, victim).await;
        // Read the primary's answer before sending, so its reset cannot discard it unread.
        assert!(
            raw.expect_primary_answer(primary).await,
            "the primary asks for a signature: it never saw the victim use this Noise key"
        );
        let signature = match forged {
            Forged::SignedByAnother => NodeKeys::generate()
                .sign(&proof_message(ROLE_INITIATOR, &raw.hash))
                .to_vec(),
            Forged::Replayed(captured) => captured,
            Forged::Omitted => Vec::new(),
        };
        // A Hello right behind the signature: it must never be read.
        let hello = Message::Hello {
            role: octodb::Role::Secondary,
            last_seq: 0,
            info: "{}".into(),
            auth: None,
        };
        let mut bytes = Vec::new();
        if !signature.is_empty() {
            bytes.extend(raw.chunk(&signature));
        }
        bytes.extend(raw.chunk(&hello.encode()));
        raw.tcp.write_all(&bytes).await.unwrap();
        let got = raw.until_closed().await;
        assert!(
            got.is_empty(),
            "the impostor was sent {} messages",
            got.len()
        );
    });
}

enum Forged {
    /// A signature made by another key.
    SignedByAnother,
    /// A signature the victim really made, captured from its connection to someone else.
    Replayed(Vec<u8>),
    /// No signature at all: the Hello comes where it belongs.
    Omitted,
}

#[test]
fn a_node_cannot_claim_an_approved_devices_key_without_its_private_key() {
    let c = Cluster::new();
    let p = user_primary(&c);
    let addr = p.bound_addrs()[0];
    let primary_key = PublicKey::from_hex(&p.public_key()).unwrap();
    let victim = device_of(&c, "victim.db", &addr_of(&p), 5);
    assert_eq!(
        count(&victim, "SELECT count(*) FROM t WHERE row_owner = 5"),
        1
    );
    let victim_key = PublicKey::from_hex(&victim.public_key()).unwrap();
    drop(victim);

    // The victim connects once to a node the attacker runs, which keeps its identity signature.
    let rt = runtime();
    let fake = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let capture = rt.spawn(capture_signature(fake));
    let victim =
        Connection::open(&device_uri(&c.path("victim.db"), &fake_addr.to_string())).unwrap();
    let (captured, hash) = rt
        .block_on(async { within("the victim's signature", capture).await })
        .unwrap();
    drop(victim);
    victim_key
        .verify(&proof_message(ROLE_INITIATOR, &hash), &captured)
        .expect("the captured signature is the victim's");

    // The attacks happen while the real victim is connected to the primary.
    let victim = Connection::open(&device_uri(&c.path("victim.db"), &addr_of(&p))).unwrap();
    ready(&victim);
    wait_until("the victim to be connected", || {
        victim.sync_status().unwrap().connected.then_some(())
    });
    let before = stored(&p);
    for forged in [
        Forged::SignedByAnother,
        Forged::Replayed(captured),
        Forged::Omitted,
    ] {
        impersonate(addr, &primary_key, &victim_key, &rt, forged);
    }
    assert_eq!(stored(&p), before, "the impostor changed nothing");

    // The victim is unaffected: it syncs both ways.
    victim
        .execute("INSERT INTO t(v) VALUES ('from the victim')", [])
        .unwrap();
    wait_count(
        &p,
        "SELECT count(*) FROM t WHERE v = 'from the victim' AND row_owner = 5",
        1,
    );
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('to the victim', 5)",
        [],
    )
    .unwrap();
    wait_count(
        &victim,
        "SELECT count(*) FROM t WHERE v = 'to the victim'",
        1,
    );
    still_serving(&c, &p, "other.db", 7);
}

// ---------------------------------------------------------------------------------------------
// 2. Replaying a captured handshake, or a chunk within a session

/// One connection through the [`Proxy`].
#[derive(Default)]
struct Relayed {
    /// Everything the client sent, in order.
    from_client: Mutex<Vec<u8>>,
    /// The primary closed its side.
    server_closed: AtomicBool,
    /// A chunk of this connection was sent twice.
    duplicated: AtomicBool,
}

/// A TCP relay between devices and the primary that records what clients send and, when
/// armed, sends one post-handshake chunk twice.
struct Proxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Relayed>>>>,
    duplicate_next: Arc<AtomicBool>,
}

/// Client→server frames before the messages of a first connection: XX handshake messages 1
/// and 3, the identity signature, Hello.
const FRAMES_BEFORE_MESSAGES: usize = 4;

impl Proxy {
    fn start(rt: &tokio::runtime::Runtime, primary: SocketAddr) -> Proxy {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            duplicate_next: Arc::default(),
        };
        let (conns, dup) = (proxy.conns.clone(), proxy.duplicate_next.clone());
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(primary).await else {
                    continue;
                };
                let rec = Arc::new(Relayed::default());
                conns.lock().unwrap().push(rec.clone());
                tokio::spawn(relay(client, server, rec, dup.clone()));
            }
        });
        proxy
    }

    fn conn(&self, i: usize) -> Option<Arc<Relayed>> {
        self.conns.lock().unwrap().get(i).cloned()
    }

    fn conn_count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }
}

async fn relay(client: TcpStream, server: TcpStream, rec: Arc<Relayed>, dup: Arc<AtomicBool>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let back = rec.clone();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        back.server_closed.store(true, Ordering::SeqCst);
        // Pass the close on, so the device sees that the primary hung up.
        let _ = cw.shutdown().await;
    });
    let mut index = 0;
    while let Some(body) = read_frame(&mut cr).await {
        let frame = [&(body.len() as u16).to_be_bytes()[..], &body].concat();
        rec.from_client.lock().unwrap().extend_from_slice(&frame);
        if sw.write_all(&frame).await.is_err() {
            break;
        }
        if index >= FRAMES_BEFORE_MESSAGES && dup.swap(false, Ordering::SeqCst) {
            rec.duplicated.store(true, Ordering::SeqCst);
            if sw.write_all(&frame).await.is_err() {
                break;
            }
        }
        index += 1;
    }
    let _ = sw.shutdown().await;
}

/// Log entries the primary holds from `node`.
fn entries_from(p: &Connection, node: u32) -> i64 {
    count(
        p,
        &format!("SELECT count(*) FROM _octo_log WHERE origin_node = {node}"),
    )
}

#[test]
fn a_recorded_session_replayed_to_the_primary_is_refused_and_applies_nothing_twice() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let rt = runtime();
    let proxy = Proxy::start(&rt, p.bound_addrs()[0]);
    let d = Connection::open(&device_uri(&c.path("d.db"), &proxy.addr.to_string())).unwrap();
    ready(&d);
    let node = d.sync_status().unwrap().node_id;
    d.execute("INSERT INTO t(v) VALUES ('captured')", [])
        .unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'captured'", 1);
    drop(d);
    let recorded = proxy.conn(0).unwrap();
    wait_until("the recorded session to end", || {
        recorded.server_closed.load(Ordering::SeqCst).then_some(())
    });
    let bytes = recorded.from_client.lock().unwrap().clone();
    let before = stored(&p);
    assert_eq!(entries_from(&p, node), 1);

    rt.block_on(async {
        let mut tcp = TcpStream::connect(p.bound_addrs()[0]).await.unwrap();
        // The primary may hang up while this is still being written.
        let _ = tcp.write_all(&bytes).await;
        // Its fresh ephemeral key makes the recorded third handshake message fail: at most its
        // own second handshake message comes back before it closes.
        let mut frames = 0;
        while within("the primary closing", read_frame(&mut tcp))
            .await
            .is_some()
        {
            frames += 1;
        }
        assert!(frames <= 1, "{frames} frames answered a replay");
    });
    assert_eq!(stored(&p), before, "the replay changed nothing");
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'captured'"), 1);

    let d = c.device("d.db", &p);
    ready(&d);
    sync_round_trip(&p, &d, "after replay");
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'captured'"), 1);
    assert_eq!(entries_from(&p, node), 2);
}

#[test]
fn a_chunk_sent_twice_closes_the_session_and_the_device_recovers_exactly_once() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let rt = runtime();
    let proxy = Proxy::start(&rt, p.bound_addrs()[0]);
    let d = Connection::open(&device_uri(&c.path("d.db"), &proxy.addr.to_string())).unwrap();
    ready(&d);
    let node = d.sync_status().unwrap().node_id;
    let first = proxy.conn(0).unwrap();

    proxy.duplicate_next.store(true, Ordering::SeqCst);
    d.execute("INSERT INTO t(v) VALUES ('sent twice')", [])
        .unwrap();
    wait_until("the chunk to be duplicated", || {
        first.duplicated.load(Ordering::SeqCst).then_some(())
    });
    wait_until("the primary to close that connection", || {
        first.server_closed.load(Ordering::SeqCst).then_some(())
    });
    // The device reconnects on its own and everything arrives once.
    wait_until("the device to reconnect", || {
        (proxy.conn_count() >= 2).then_some(())
    });
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'sent twice'", 1);
    sync_round_trip(&p, &d, "after the duplicate");
    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v = 'sent twice'"),
        1
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM t WHERE v = 'sent twice'"),
        1
    );
    assert_eq!(entries_from(&p, node), 2, "one log entry per transaction");
    assert!(d.sync_status().unwrap().last_rejected.is_none());
    assert!(proxy
        .conn(1)
        .is_some_and(|c| !c.duplicated.load(Ordering::SeqCst)));
}

// ---------------------------------------------------------------------------------------------
// 3. An approved device forging changes to another user's rows

/// A device of our own making that speaks the real protocol with its own key.
struct RawDevice {
    s: SecureStream,
    node_id: u32,
    /// Every row and log entry the primary sent it.
    rows: Vec<Vec<Value>>,
    entries: Vec<LogEntry>,
}

async fn session_as(addr: SocketAddr, keys: &NodeKeys) -> SecureStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    SecureStream::connect(tcp, keys, &HandshakeOptions::default())
        .await
        .unwrap()
}

async fn send(s: &mut SecureStream, bytes: &[u8]) {
    s.send(bytes).await.unwrap();
    s.flush().await.unwrap();
}

fn hello(last_seq: u64, info: &str, auth: Option<AuthAsk>) -> Message {
    Message::Hello {
        role: octodb::Role::Secondary,
        last_seq,
        info: info.into(),
        auth,
    }
}

fn ask(action: Action, data: &str) -> Option<AuthAsk> {
    Some(AuthAsk {
        action,
        data: data.into(),
    })
}

impl RawDevice {
    async fn sign_up(addr: SocketAddr, user: i64) -> RawDevice {
        RawDevice::sign_up_as(addr, user, &NodeKeys::generate()).await
    }

    /// Connects with `keys` (signing up as `user` the first time) and downloads.
    async fn sign_up_as(addr: SocketAddr, user: i64, keys: &NodeKeys) -> RawDevice {
        let mut s = session_as(addr, keys).await;
        let m = hello(0, "{}", ask(Action::UserSignup, &format!("user:{user}")));
        send(&mut s, &m.encode()).await;
        let mut d = RawDevice {
            s,
            node_id: 0,
            rows: Vec::new(),
            entries: Vec::new(),
        };
        match d.next().await {
            Message::Welcome {
                node_id, user_id, ..
            } => {
                assert_eq!(user_id, user);
                d.node_id = node_id;
            }
            other => panic!("expected Welcome, got {other:?}"),
        }
        loop {
            match d.next().await {
                Message::Renames { .. }
                | Message::SnapshotBegin { .. }
                | Message::SnapshotTotal { .. } => {}
                Message::SnapshotRows { rows, .. } => {
                    d.rows.extend(rows.into_iter().map(|(_, v)| v))
                }
                Message::SnapshotEnd { .. } => return d,
                other => panic!("expected the download, got {other:?}"),
            }
        }
    }

    /// The primary's next message (the list of its cluster's primaries, the log's epochs,
    /// the digests of its own decisions, a session ticket and that it caught up, which this
    /// client does not use, skipped).
    async fn next(&mut self) -> Message {
        loop {
            let bytes = within("a message from the primary", self.s.recv())
                .await
                .expect("the primary keeps the connection open");
            match Message::decode(&bytes).unwrap() {
                Message::PrimaryMembers { .. }
                | Message::LogHistory { .. }
                | Message::OwnDigests { .. }
                | Message::SessionTicket { .. }
                | Message::CaughtUp { .. } => continue,
                m => return m,
            }
        }
    }

    /// Sends one transaction and returns what the primary decided about it.
    async fn submit(&mut self, txn_id: u64, cs: ChangeSet) -> EntryBody {
        let m = Message::Txns {
            txns: vec![(txn_id, cs)],
        };
        send(&mut self.s, &m.encode()).await;
        loop {
            let Message::Entries { entries, .. } = self.next().await else {
                panic!("expected Entries");
            };
            self.entries.extend(entries);
            let mine = self
                .entries
                .iter()
                .find(|e| e.origin_node == self.node_id && e.origin_txn == txn_id);
            if let Some(e) = mine {
                return e.body.clone();
            }
        }
    }

    /// Every row the primary ever sent this device (all tables here are `[id, v, owner]`),
    /// with the owners of the rows it was told were deleted as one-value rows.
    fn received_rows(&self) -> Vec<Vec<Value>> {
        let mut out = self.rows.clone();
        for e in &self.entries {
            if let EntryBody::Changes(cs) = &e.body {
                for op in &cs.ops {
                    match op {
                        Op::Insert { values, .. }
                        | Op::Update { values, .. }
                        | Op::Upsert { values, .. } => out.push(values.clone()),
                        Op::Delete { owner, .. } => out.push(vec![owner.clone()]),
                        Op::Ddl { .. } => {}
                    }
                }
            }
        }
        out
    }
}

const T_COLUMNS: [&str; 3] = ["id", "v", "row_owner"];

/// A transaction of `ops` on `table`, whose header lists `columns`.
fn txn_on(table: &str, columns: &[&str], ops: Vec<Op>) -> ChangeSet {
    let mut cs = ChangeSet::default();
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    assert_eq!(cs.table_index(table, &columns), 0);
    cs.ops = ops;
    cs
}

fn txn_with(columns: &[&str], ops: Vec<Op>) -> ChangeSet {
    txn_on("t", columns, ops)
}

fn txn(ops: Vec<Op>) -> ChangeSet {
    txn_with(&T_COLUMNS, ops)
}

fn row(id: i64, v: &str, owner: Value) -> Vec<Value> {
    vec![Value::Integer(id), Value::Text(v.into()), owner]
}

fn insert(id: i64, v: &str, owner: Value) -> Op {
    Op::Insert {
        table: 0,
        rowid: id,
        values: row(id, v, owner),
    }
}

/// An update of `columns` (indexes into the header) of row `id`.
fn update(id: i64, columns: &[usize], values: Vec<Value>) -> Op {
    Op::Update {
        table: 0,
        rowid: id,
        changed: columns.iter().map(|&i| column_bit(i)).fold(0, |a, b| a | b),
        values,
    }
}

fn user(u: i64) -> Value {
    Value::Integer(u)
}

#[test]
fn a_device_cannot_insert_update_or_delete_another_users_rows_over_the_raw_protocol() {
    let c = Cluster::new();
    let p = user_primary(&c);
    // SQLite column names ignore case, and so does the engine's idea of row_owner.
    p.execute(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT, Row_Owner)",
        [],
    )
    .unwrap();
    p.execute(
        "INSERT INTO u VALUES (50, 'of user 6', 6), (51, 'of user 5', 5)",
        [],
    )
    .unwrap();
    let addr = p.bound_addrs()[0];
    let other = device_of(&c, "other.db", &addr_of(&p), 7);
    let rt = runtime();
    let mut attacker = rt.block_on(RawDevice::sign_up(addr, 6));
    let guarded = || {
        let mut r = rows(
            &p,
            "SELECT rowid, * FROM t WHERE row_owner = 5 ORDER BY rowid",
        );
        r.extend(rows(&p, "SELECT rowid, * FROM u ORDER BY rowid"));
        r
    };
    let guarded_before = guarded();
    assert_eq!(
        guarded_before.len(),
        3,
        "user 5's row in t, and both rows of u"
    );

    // Its own row, to try to give away later.
    let mine = rt.block_on(attacker.submit(1, txn(vec![insert(1000, "mine", user(6))])));
    assert!(matches!(mine, EntryBody::Changes(_)), "{mine:?}");
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM t WHERE id = 1000 AND row_owner = 6"
        ),
        1
    );
    let mine_before = rows(&p, "SELECT * FROM t WHERE id = 1000");

    let attacks: Vec<(&str, ChangeSet)> = vec![
        (
            "insert a row of user 5",
            txn(vec![insert(2000, "planted", user(5))]),
        ),
        (
            "insert a row of user 5 spelled as text",
            txn(vec![insert(2001, "planted", Value::Text("5".into()))]),
        ),
        (
            "update user 5's row",
            txn(vec![update(1, &[1], row(1, "defaced", user(5)))]),
        ),
        (
            "update user 5's row claiming it is its own",
            txn(vec![update(1, &[1, 2], row(1, "defaced", user(6)))]),
        ),
        (
            "delete user 5's row",
            txn(vec![Op::Delete {
                table: 0,
                rowid: 1,
                owner: user(6),
            }]),
        ),
        (
            "move its own row to user 5",
            txn(vec![update(1000, &[2], row(1000, "mine", user(5)))]),
        ),
        (
            "move its own row to user 5 through a second row_owner column",
            txn_with(
                &["id", "v", "row_owner", "row_owner"],
                vec![update(
                    1000,
                    &[2, 3],
                    vec![user(1000), Value::Text("mine".into()), user(6), user(5)],
                )],
            ),
        ),
        (
            // The security review: the duplicate check compared names exactly, the owner check
            // read the first name matching in any case, and the write kept the exact one.
            "move its own row to user 5 through a decoy ROW_OWNER column before row_owner",
            txn_with(
                &["id", "v", "ROW_OWNER", "row_owner"],
                vec![update(
                    1000,
                    &[2, 3],
                    vec![user(1000), Value::Text("mine".into()), user(6), user(5)],
                )],
            ),
        ),
        (
            "insert a public row behind a decoy ROW_OWNER column",
            txn_with(
                &["id", "v", "ROW_OWNER", "row_owner"],
                vec![Op::Insert {
                    table: 0,
                    rowid: 2004,
                    values: vec![
                        Value::Integer(2004),
                        Value::Text("planted".into()),
                        user(6),
                        Value::Text("*".into()),
                    ],
                }],
            ),
        ),
        (
            "update its own row leaving row_owner out of the values",
            txn(vec![update(
                1000,
                &[1, 2],
                vec![user(1000), Value::Text("x".into())],
            )]),
        ),
        (
            "update user 5's row naming row_owner in capitals",
            txn_with(
                &["id", "v", "ROW_OWNER"],
                vec![update(1, &[1], row(1, "defaced", user(6)))],
            ),
        ),
        (
            "move its own row to user 5 in a table whose owner column is Row_Owner",
            txn_on(
                "u",
                &["id", "v", "Row_Owner"],
                vec![update(50, &[2], row(50, "of user 6", user(5)))],
            ),
        ),
        (
            "update user 5's row in a table whose owner column is Row_Owner",
            txn_on(
                "u",
                &["id", "v", "Row_Owner"],
                vec![update(51, &[1], row(51, "defaced", user(6)))],
            ),
        ),
        (
            // (The id column's name was compared exactly: the row moved to an id the log
            // never recorded, and could take another node's next id: the hostile walkthrough.)
            "move its own row to another id, naming the id column in capitals",
            txn_with(
                &["ID", "v", "row_owner"],
                vec![update(
                    1000,
                    &[0],
                    vec![
                        Value::Integer(987_654_321_000),
                        Value::Text("mine".into()),
                        user(6),
                    ],
                )],
            ),
        ),
        (
            "an upsert of user 5's row",
            txn(vec![Op::Upsert {
                table: 0,
                rowid: 1,
                values: row(1, "defaced", user(6)),
            }]),
        ),
        (
            "a schema change",
            txn(vec![Op::Ddl {
                sql: "DROP TABLE t".into(),
                private: false,
            }]),
        ),
        (
            "approving itself as user 5 in the primary's node table",
            txn_on(
                "_octo_nodes",
                &["node_id", "user_id"],
                vec![update(
                    attacker.node_id.into(),
                    &[1],
                    vec![Value::Integer(attacker.node_id.into()), user(5)],
                )],
            ),
        ),
        (
            "a row in SQLite's own schema table",
            txn_on(
                "sqlite_master",
                &["type", "name", "tbl_name", "rootpage", "sql"],
                vec![Op::Delete {
                    table: 0,
                    rowid: 1,
                    owner: user(6),
                }],
            ),
        ),
        (
            "insert a public row",
            txn(vec![insert(2002, "planted", Value::Text("*".into()))]),
        ),
        (
            "a legitimate insert followed by a delete of user 5's row",
            txn(vec![
                insert(2003, "cover", user(6)),
                Op::Delete {
                    table: 0,
                    rowid: 1,
                    owner: user(5),
                },
            ]),
        ),
    ];
    for (i, (what, cs)) in attacks.into_iter().enumerate() {
        let txn_id = i as u64 + 2;
        let verdict = rt.block_on(attacker.submit(txn_id, cs));
        assert!(
            matches!(verdict, EntryBody::Rejected { .. }),
            "{what}: {verdict:?}"
        );
        assert_eq!(
            guarded(),
            guarded_before,
            "{what}: the rows of user 5 and u are unchanged"
        );
        assert_eq!(
            rows(&p, "SELECT * FROM t WHERE id = 1000"),
            mine_before,
            "{what}: its own row is unchanged"
        );
        // Meanwhile another user's device keeps syncing both ways.
        sync_round_trip(&p, &other, &format!("during attack {txn_id}"));
    }
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM t WHERE v IN ('planted', 'cover', 'defaced')"
        ),
        0
    );

    // New rows of user 5 written during the attack never reach the attacker.
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('new secret of user 5', 5)",
        [],
    )
    .unwrap();
    let last = rt.block_on(attacker.submit(100, txn(vec![insert(3000, "probe", user(6))])));
    assert!(matches!(last, EntryBody::Changes(_)), "{last:?}");
    let received = attacker.received_rows();
    assert!(received.contains(&row(1000, "mine", user(6))));
    for r in &received {
        let owner = r.last().unwrap();
        assert!(
            *owner != user(5) && *owner != Value::Text("5".into()),
            "a row of user 5 was sent: {r:?}"
        );
        assert!(!r.contains(&Value::Text("of user 5".into())), "{r:?}");
    }
    still_serving(&c, &p, "after.db", 8);
}

// ---------------------------------------------------------------------------------------------
// 4. Garbage in every field of an authorization request

/// A Hello written out in postcard by hand, so tags and strings can be made invalid.
fn crafted_hello(role_tag: &[u8], action_tag: &[u8], data: &[u8]) -> Vec<u8> {
    assert!(
        data.len() < 128,
        "the length is written as a one-byte varint"
    );
    let mut m = vec![octodb::net::message::MESSAGE_ENCODING, 0]; // version, Message::Hello
    m.extend_from_slice(role_tag);
    m.extend_from_slice(&[0, 2, b'{', b'}', 1]); // last_seq 0, info "{}", Some(AuthAsk)
    m.extend_from_slice(action_tag);
    m.push(data.len() as u8);
    m.extend_from_slice(data);
    m
}

#[derive(Debug)]
enum Expect {
    AuthRequired,
    /// Refused, with this in the reason.
    Refused(&'static str),
    AuthPending,
    Welcome,
    /// Closed without an answer.
    Nothing,
}

/// Sends `messages` on a fresh connection with a fresh key and returns the key and everything
/// the primary answered before closing the connection.
async fn attempt(addr: SocketAddr, messages: &[Vec<u8>]) -> (String, Vec<Message>) {
    let keys = NodeKeys::generate();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = SecureStream::connect(tcp, &keys, &HandshakeOptions::default())
        .await
        .unwrap();
    for m in messages {
        s.send(m).await.unwrap();
    }
    s.flush().await.unwrap();
    let mut got = Vec::new();
    while let Ok(bytes) = within("the primary closing the connection", s.recv()).await {
        match Message::decode(&bytes).unwrap() {
            Message::PrimaryMembers { .. }
            | Message::LogHistory { .. }
            | Message::SessionTicket { .. }
            | Message::CaughtUp { .. } => {}
            m => got.push(m),
        }
    }
    (keys.public_key().to_hex(), got)
}

/// The primary logs a device's inserted row as it stored it: a value its column converts (an
/// integer into a TEXT column) reaches the sender and the user's other devices converted, the
/// same on every node. (Values already in their stored form are logged without reading the row
/// back; these are read back.)
#[test]
fn a_value_its_column_converts_is_logged_as_the_primary_stored_it() {
    let c = Cluster::new();
    let p = user_primary(&c);
    p.execute(
        "CREATE TABLE k(id INTEGER PRIMARY KEY, v TEXT, r REAL, n NUMERIC, row_owner)",
        [],
    )
    .unwrap();
    let addr = p.bound_addrs()[0];
    let other = device_of(&c, "other.db", &addr_of(&p), 6);
    let rt = runtime();
    let mut raw = rt.block_on(RawDevice::sign_up(addr, 6));
    let columns = ["id", "v", "r", "n", "row_owner"];
    let sent = vec![
        Value::Integer(3000),
        Value::Integer(42),
        Value::Integer(7),
        Value::Text("12".into()),
        user(6),
    ];
    let decided = rt.block_on(raw.submit(
        1,
        txn_on(
            "k",
            &columns,
            vec![Op::Insert {
                table: 0,
                rowid: 3000,
                values: sent,
            }],
        ),
    ));
    let stored = vec![
        Value::Integer(3000),
        Value::Text("42".into()),
        Value::Real(7.0),
        Value::Integer(12),
        user(6),
    ];
    let EntryBody::Changes(cs) = decided else {
        panic!("the insert was refused: {decided:?}");
    };
    let logged: Vec<&Vec<Value>> = cs
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Upsert { values, .. } => Some(values),
            _ => None,
        })
        .collect();
    assert_eq!(logged, vec![&stored], "the sender hears the row as stored");
    assert_eq!(rows(&p, "SELECT * FROM k"), vec![stored.clone()]);
    wait_count(&other, "SELECT count(*) FROM k", 1);
    assert_eq!(rows(&other, "SELECT * FROM k"), vec![stored]);
    assert_eq!(
        rows(&other, "SELECT typeof(v), typeof(r), typeof(n) FROM k"),
        vec![vec![
            Value::Text("text".into()),
            Value::Text("real".into()),
            Value::Text("integer".into())
        ]]
    );
}

#[test]
fn garbage_in_every_field_of_an_authorization_request_is_refused_and_stores_nothing() {
    let c = Cluster::new();
    let p = user_primary(&c);
    let seen: Arc<Mutex<Vec<AuthRequest>>> = Arc::default();
    let log = seen.clone();
    p.set_auth_callback(Action::UserSignup, move |r: &AuthRequest| {
        log.lock().unwrap().push(r.clone());
        match r.data.as_deref() {
            Some("wait") => Decision::Pending,
            Some(d) if d.starts_with("user:") => Decision::User(d[5..].parse().unwrap_or(-1)),
            _ => Decision::Reject("sign-up data not accepted".into()),
        }
    })
    .unwrap();
    p.set_auth_callback(Action::UserLogin, |r: &AuthRequest| {
        match r.data.as_deref() {
            Some("ann") => Decision::User(5),
            _ => Decision::Reject("unknown user".into()),
        }
    })
    .unwrap();
    let addr = p.bound_addrs()[0];
    let before = stored(&p);

    let signup = |data: &str| ask(Action::UserSignup, data);
    let plain = |info: &str, last_seq: u64, auth| vec![hello(last_seq, info, auth).encode()];
    let nested_array = format!("{}{}", "[".repeat(8000), "]".repeat(8000));
    let nested_object = format!("{}1{}", "{\"a\":".repeat(2500), "}".repeat(2500));
    let at_limit = "a".repeat(MAX_REQUEST_DATA);
    let over_limit = "a".repeat(MAX_REQUEST_DATA + 1);
    let valid = crafted_hello(&[1], &[0], b"user:1");
    assert_eq!(
        valid,
        hello(0, "{}", signup("user:1")).encode(),
        "the hand-written encoding matches the real one"
    );
    let twice = |auth: Option<AuthAsk>| {
        let m = hello(0, "{}", auth).encode();
        vec![m.clone(), m]
    };
    let cases: Vec<(&str, Vec<Vec<u8>>, Expect)> = vec![
        (
            "info that is not JSON",
            plain("not json {{", 0, None),
            Expect::AuthRequired,
        ),
        (
            "1 MiB of info",
            plain(&"x".repeat(1 << 20), 0, signup("no")),
            Expect::Refused("not accepted"),
        ),
        (
            "info with NULs",
            plain("{\"a\":\"\0\"}\0\0", 0, signup("no")),
            Expect::Refused("not accepted"),
        ),
        (
            "deeply nested info",
            plain(&nested_array, 0, signup("no")),
            Expect::Refused("not accepted"),
        ),
        (
            "last_seq u64::MAX",
            plain("{}", u64::MAX, None),
            Expect::AuthRequired,
        ),
        (
            "last_seq u64::MAX with a sign-up",
            plain("{}", u64::MAX, signup("no")),
            Expect::Refused("not accepted"),
        ),
        (
            "empty sign-up data",
            plain("{}", 0, signup("")),
            Expect::Refused("not accepted"),
        ),
        (
            "odd characters in the data",
            plain("{}", 0, signup("\u{0}\u{fffd}\u{ffff}\u{10ffff}'\"\\")),
            Expect::Refused("not accepted"),
        ),
        (
            "data at the 16 KiB limit",
            plain("{}", 0, signup(&at_limit)),
            Expect::Refused("not accepted"),
        ),
        (
            "data one byte over the limit",
            plain("{}", 0, signup(&over_limit)),
            Expect::Refused("larger than"),
        ),
        (
            "deeply nested JSON data",
            plain("{}", 0, signup(&nested_object)),
            Expect::Refused("not accepted"),
        ),
        (
            "a login for an unknown user",
            plain("{}", 0, ask(Action::UserLogin, "nobody")),
            Expect::Refused("unknown user"),
        ),
        (
            "a node-level request on a user network",
            plain("{}", 0, ask(Action::NewNode, "")),
            Expect::AuthRequired,
        ),
        (
            "data that is not UTF-8",
            vec![crafted_hello(&[1], &[0], b"\xff\xfe\xc0\x80")],
            Expect::Nothing,
        ),
        (
            "action tag 3",
            vec![crafted_hello(&[1], &[3], b"x")],
            Expect::Nothing,
        ),
        (
            "action tag u32::MAX",
            vec![crafted_hello(&[1], &[0xff, 0xff, 0xff, 0xff, 0x0f], b"x")],
            Expect::Nothing,
        ),
        (
            "role tag 2",
            vec![crafted_hello(&[2], &[0], b"x")],
            Expect::Nothing,
        ),
        (
            "role tag u32::MAX",
            vec![crafted_hello(&[0xff, 0xff, 0xff, 0xff, 0x0f], &[0], b"x")],
            Expect::Nothing,
        ),
        (
            "a truncated Hello",
            vec![valid[..valid.len() - 1].to_vec()],
            Expect::Nothing,
        ),
        (
            "Hello twice without a request",
            twice(None),
            Expect::AuthRequired,
        ),
        (
            "Hello twice while pending",
            twice(signup("wait")),
            Expect::AuthPending,
        ),
        (
            "Hello twice once approved",
            twice(signup("user:9")),
            Expect::Welcome,
        ),
    ];
    let rt = runtime();
    let mut keys = Vec::new();
    for (what, messages, expect) in &cases {
        let (key, got) = rt.block_on(attempt(addr, messages));
        let ok = match (expect, got.as_slice()) {
            (Expect::AuthRequired, [Message::AuthRequired { .. }]) => true,
            (Expect::Refused(why), [Message::Refused { reason }]) => reason.contains(why),
            (Expect::AuthPending, [Message::AuthPending]) => true,
            (Expect::Nothing, []) => true,
            // The second Hello ends the session, wherever the download had got to.
            (Expect::Welcome, [Message::Welcome { user_id: 9, .. }, rest @ ..]) => {
                rest.iter().all(|m| match m {
                    Message::SnapshotRows { rows, .. } => {
                        rows.iter().all(|(_, v)| !v.contains(&user(5)))
                    }
                    m => matches!(
                        m,
                        Message::Renames { .. }
                            | Message::SnapshotBegin { .. }
                            | Message::SnapshotTotal { .. }
                            | Message::SnapshotEnd { .. }
                    ),
                })
            }
            _ => false,
        };
        assert!(ok, "{what}: expected {expect:?}, got {got:?}");
        keys.push((*what, key));
        assert_eq!(
            stored(&p).rows,
            before.rows,
            "{what}: no row changed at the primary"
        );
    }

    // Stored: only the bounded records of requests that reached the backend, never approved
    // except the one that the backend approved, and never the oversized parts.
    let after = stored(&p);
    assert_eq!(after.log, before.log);
    assert_eq!(
        after.users.len(),
        before.users.len() + 1,
        "only user 9 was added"
    );
    let key_of = |what: &str| keys.iter().find(|(w, _)| *w == what).unwrap().1.clone();
    let state_of = |key: &str| -> Option<String> {
        p.query_row(
            "SELECT auth_state FROM _octo_nodes WHERE pubkey = ?1",
            [key],
            |r| r.get(0),
        )
        .ok()
    };
    assert_eq!(
        state_of(&key_of("Hello twice once approved")).as_deref(),
        Some("approved")
    );
    assert_eq!(
        state_of(&key_of("Hello twice while pending")).as_deref(),
        Some("pending")
    );
    // A key that connects without a request is kept as "required" (bounded, never approved),
    // so that an admin can approve it by hand; nothing else is stored for it.
    for what in [
        "info that is not JSON",
        "last_seq u64::MAX",
        "data one byte over the limit",
        "a node-level request on a user network",
        "data that is not UTF-8",
        "action tag 3",
        "role tag 2",
        "a truncated Hello",
        "Hello twice without a request",
    ] {
        let state = state_of(&key_of(what));
        assert!(
            matches!(state.as_deref(), None | Some("required")),
            "{what}: nothing stored but the key's presence, got {state:?}"
        );
    }
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM _octo_nodes WHERE node_id > 0 AND auth_state <> 'approved'"
        ),
        0,
        "no node id spent on a key never approved"
    );
    // Before the attacks the primary knew no node, so every record is an attacker's.
    assert!(before.nodes.is_empty());
    let records = rows(&p, "SELECT auth_state, length(info) FROM _octo_nodes");
    assert!(records.len() < cases.len(), "{records:?}");
    for r in &records {
        let Value::Integer(info_len) = r[1] else {
            panic!("{r:?}")
        };
        assert!(info_len < 1024, "node info is kept small: {r:?}");
    }
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM _octo_nodes WHERE auth_state = 'approved'"
        ),
        1
    );
    // The backend saw every request within the limits, and none beyond them.
    let seen = seen.lock().unwrap();
    assert!(seen
        .iter()
        .any(|r| r.data.as_deref() == Some(at_limit.as_str())));
    assert!(seen.iter().all(
        |r| r.data.as_ref().is_some_and(|d| d.len() <= MAX_REQUEST_DATA)
            && r.node_info.len() < 1024
    ));
    drop(seen);
    still_serving(&c, &p, "after.db", 7);
}

// ---------------------------------------------------------------------------------------------
// 4. A transaction sent again after the primary restarted

#[test]
fn a_transaction_resent_after_a_primary_restart_is_not_decided_twice() {
    let c = Cluster::new();
    let p = user_primary(&c);
    let addr = p.bound_addrs()[0];
    let rt = runtime();
    let keys = NodeKeys::generate();
    let mut d = rt.block_on(RawDevice::sign_up_as(addr, 5, &keys));
    for id in 1..=3 {
        let body = rt.block_on(d.submit(
            id,
            txn(vec![insert(100 + id as i64, "v", Value::Integer(5))]),
        ));
        assert!(matches!(body, EntryBody::Changes(_)), "{body:?}");
    }
    let node = d.node_id;
    drop(d);
    // A stop and a start: decisions since the last checkpoint are found again in the log.
    drop(p);
    let p = Connection::open(&format!(
        "{}&auth=user",
        primary_uri(&c.path("p.db"), addr.port())
    ))
    .unwrap();
    let before = stored(&p);
    assert_eq!(entries_from(&p, node), 3);
    // The device never heard of the acceptance of 2 and 3: it sends them again, then 4.
    let mut d = rt.block_on(RawDevice::sign_up_as(addr, 5, &keys));
    assert_eq!(d.node_id, node);
    let m = Message::Txns {
        txns: vec![
            (2, txn(vec![insert(102, "again", Value::Integer(5))])),
            (3, txn(vec![insert(103, "again", Value::Integer(5))])),
        ],
    };
    rt.block_on(send(&mut d.s, &m.encode()));
    let body = rt.block_on(d.submit(4, txn(vec![insert(104, "v", Value::Integer(5))])));
    assert!(matches!(body, EntryBody::Changes(_)), "{body:?}");
    assert_eq!(entries_from(&p, node), 4, "2 and 3 were not decided again");
    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v = 'again'"),
        0,
        "nothing of the resent transactions applied"
    );
    assert_eq!(stored(&p).rows.len(), before.rows.len() + 1);
}

/// Before it has said who it is, a node's first message may be as large as a Hello needs,
/// not the 64 MiB a session's may reach: any key that completes the handshake could
/// otherwise make the primary buffer that much for each connection it opens (the security
/// review). A sign-up the backend accepts, in a Hello padded to 1 MiB, is refused saying why
/// (it was welcomed); a normal one goes on.
#[test]
fn a_first_message_larger_than_a_hello_needs_is_refused() {
    let c = Cluster::new();
    let p = user_primary(&c);
    let addr: SocketAddr = p.bound_addrs()[0];
    let rt = runtime();
    let padded = serde_json::json!({ "padding": "x".repeat(1024 * 1024) }).to_string();
    let answer = rt.block_on(async {
        let mut s = session_as(addr, &NodeKeys::generate()).await;
        let m = hello(0, &padded, ask(Action::UserSignup, "user:6"));
        send(&mut s, &m.encode()).await;
        let answer = within("the primary's answer", s.recv()).await;
        answer.map(|bytes| Message::decode(&bytes))
    });
    match answer {
        Ok(Ok(Message::Refused { reason })) => assert!(reason.contains("256 KiB"), "{reason}"),
        other => panic!("a 1 MiB first message was taken: {other:?}"),
    }
    rt.block_on(RawDevice::sign_up(addr, 6));
}
