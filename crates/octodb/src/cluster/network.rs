//! Raft's messages between primaries, over the nodes' Noise connections. A primary opens a
//! connection to a member as a device would (handshake, then `Hello` with the role
//! `primary`), refuses a member whose key is not the one the cluster knows for it, and then
//! sends one request at a time and reads its reply. The receiving primary serves it with
//! [`serve_connection`].

use super::forward::{
    DeviceAdmitted, ForwardOutcome, Forwarded, ForwardedDecision, ForwardedTxns, Services,
};
use super::types::{Member, Proposal, TypeConfig};
use super::{Raft, RaftNodeId};
use crate::crypto::{NodeKeys, PublicKey};
use crate::net::{HandshakeOptions, Message, NetError, SecureReader, SecureStream, SecureWriter};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

/// First byte of every cluster frame: the encoding of [`Request`] and [`Reply`]. Never reorder
/// their variants; add new ones at the end.
const CLUSTER_ENCODING: u8 = 1;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const NO_SERVICES: &str = "this primary serves no followers' requests";

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<RaftNodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's app transaction, for the leader to decide (`forward`).
    Forward(Forwarded),
    /// A decision on a node a follower's process took, for the leader to record.
    Decide(ForwardedDecision),
    /// A device connected to a follower: the leader says whether it is approved, and its ids.
    AdmitDevice(String),
    /// A device's transactions received by a follower, for the leader to decide.
    DeviceTxns(ForwardedTxns),
    /// A follower asks the leader up to which Raft index the cluster has committed, to catch
    /// up to it before its app goes on (protocol 12, `version::READ_INDEX`).
    ReadIndex,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    AppendEntries(Result<AppendEntriesResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    Vote(Result<VoteResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<RaftNodeId>, RaftError<RaftNodeId, InstallSnapshotError>>,
    ),
    Forward(ForwardOutcome),
    Decide(Result<(), String>),
    AdmitDevice(Result<DeviceAdmitted, String>),
    DeviceTxns(Result<Option<u64>, String>),
    /// The Raft index the cluster has committed up to, confirmed by a majority; Err: why not
    /// (this primary does not lead).
    ReadIndex(Result<u64, String>),
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, NetError> {
    let mut out = vec![CLUSTER_ENCODING];
    postcard::to_extend(value, out.split_off(0))
        .map(|body| {
            out.extend_from_slice(&body);
            out
        })
        .map_err(|e| NetError::Malformed(format!("cannot encode a cluster message: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, NetError> {
    match bytes.split_first() {
        Some((&CLUSTER_ENCODING, body)) => postcard::from_bytes(body)
            .map_err(|e| NetError::Malformed(format!("undecodable cluster message: {e}"))),
        Some((v, _)) => Err(NetError::Malformed(format!(
            "cluster message in encoding {v}, this primary reads {CLUSTER_ENCODING}: the \
             primaries run incompatible versions"
        ))),
        None => Err(NetError::Malformed("empty cluster message".into())),
    }
}

/// Serves Raft's requests from another primary on an established connection (its `Hello`
/// already read) until it closes. Only the cluster's members are served, and while this
/// primary has no membership yet (it waits to be added), whom `before` allows. `services`
/// serve followers' requests (a running primary's).
pub async fn serve_connection(
    raft: Raft,
    (peer, before): (PublicKey, BeforeMembership),
    protocol: u8,
    (mut rd, mut wr): (SecureReader, SecureWriter),
    services: Option<Services>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), NetError> {
    // A node that stops closes its members' connections at once: a peer must not take a
    // connection kept to a stopped node for a live one (its next request would be lost on
    // the way, its outcome unknown), and finds the cluster's leader anew.
    let mut stopping = stopping;
    loop {
        let frame = tokio::select! {
            frame = rd.recv() => frame?,
            // (Also when the node is gone, its sender with it.)
            _ = stopping.wait_for(|stop| *stop) => return Err(NetError::Closed),
        };
        let request: Request = decode(&frame)?;
        // (So does a Raft node stopped by a fatal error, its file diverged say.)
        if raft.metrics().borrow().running_state.is_err() {
            return Err(NetError::Closed);
        }
        if !may_call(&raft, &peer, &before) {
            return Err(NetError::Authentication(format!(
                "{peer} is not a member of this cluster"
            )));
        }
        let reply = match request {
            Request::AppendEntries(r) => Reply::AppendEntries(raft.append_entries(r).await),
            Request::Vote(r) => Reply::Vote(raft.vote(r).await),
            Request::InstallSnapshot(r) => Reply::InstallSnapshot(raft.install_snapshot(r).await),
            Request::Forward(txn) => Reply::Forward(match &services {
                Some(s) => s.transaction(peer, txn).await.for_protocol(protocol),
                None => ForwardOutcome::Refused {
                    reason: "this primary decides no forwarded transactions".into(),
                },
            }),
            Request::Decide(decision) => Reply::Decide(match &services {
                Some(s) => s.decision(peer, decision).await,
                None => Err(NO_SERVICES.into()),
            }),
            Request::AdmitDevice(key) => Reply::AdmitDevice(match &services {
                Some(s) => s.admit_device(peer, key).await,
                None => Err(NO_SERVICES.into()),
            }),
            Request::DeviceTxns(txns) => Reply::DeviceTxns(match &services {
                Some(s) => s.device_txns(peer, txns).await,
                None => Err(NO_SERVICES.into()),
            }),
            Request::ReadIndex => Reply::ReadIndex(match raft.get_read_log_id().await {
                Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
                Err(e) => Err(e.to_string()),
            }),
        };
        wr.send(&encode(&reply)?).await?;
        wr.flush().await?;
        // This node's Raft stopped (it is shutting down, or a new instance took its place):
        // the peer must reconnect rather than keep hearing "stopped" on this connection.
        if reply.is_fatal() {
            return Err(NetError::Closed);
        }
    }
}

impl Reply {
    fn is_fatal(&self) -> bool {
        match self {
            Reply::AppendEntries(r) => matches!(r, Err(RaftError::Fatal(_))),
            Reply::Vote(r) => matches!(r, Err(RaftError::Fatal(_))),
            Reply::InstallSnapshot(r) => matches!(r, Err(RaftError::Fatal(_))),
            Reply::Forward(_)
            | Reply::Decide(_)
            | Reply::AdmitDevice(_)
            | Reply::DeviceTxns(_)
            | Reply::ReadIndex(_) => false,
        }
    }
}

/// Accepts other primaries' connections on `listener` and serves their Raft requests, each
/// after its handshake and `Hello`, until the listener fails. (A running primary will route
/// the `Hello`s of primaries from its own listener here instead.)
pub async fn serve_members(
    listener: tokio::net::TcpListener,
    keys: NodeKeys,
    handshake: HandshakeOptions,
    raft: Raft,
) {
    let handshake = Arc::new(handshake);
    // Owned here: when this server is stopped, its connections end with it.
    let mut connections = tokio::task::JoinSet::new();
    let (_serving, stopping) = tokio::sync::watch::channel(false);
    while let Ok((tcp, addr)) = listener.accept().await {
        while connections.try_join_next().is_some() {}
        let (keys, handshake, raft) = (keys.clone(), handshake.clone(), raft.clone());
        let stopping = stopping.clone();
        connections.spawn(async move {
            let served = async {
                let stream = SecureStream::accept(tcp, &keys, &handshake).await?;
                let peer = stream.peer().public_key;
                let protocol = stream.protocol_version();
                let (mut rd, wr) = stream.into_split();
                match Message::decode(&rd.recv().await?)? {
                    Message::Hello { .. } => {
                        let caller = (peer, BeforeMembership::Anyone);
                        serve_connection(raft, caller, protocol, (rd, wr), None, stopping).await
                    }
                    other => Err(NetError::Malformed(format!(
                        "expected Hello first, got {}",
                        other.kind()
                    ))),
                }
            };
            if let Err(e) = served.await {
                tracing::debug!(%addr, "cluster connection closed: {e}");
            }
        });
    }
}

/// Whom a primary with no membership yet (it waits to be added) takes Raft's calls from.
#[derive(Clone)]
pub enum BeforeMembership {
    /// Anyone who completes the handshake: the Raft layer run alone (`serve_members`), whose
    /// caller adds the members itself.
    Anyone,
    /// The leaders that admitted it (their `Welcome`, hex keys): a running primary. Anyone
    /// else could otherwise, in the window before the leader's first call (a snapshot of a
    /// large database may take minutes), vote it into a term of their own or install a
    /// membership and state of theirs (the security review).
    Admitters(Arc<Mutex<std::collections::HashSet<String>>>),
}

/// Meta key: the leaders that admitted this primary (JSON list of hex keys), kept so that a
/// primary restarted before its membership came (its vote saved, so it does not join again)
/// still takes their calls.
const ADMITTED_BY_KEY: &str = "raft_admitted_by";

impl BeforeMembership {
    /// A running primary's: the leaders that admitted it, as its file keeps them (none until
    /// one does).
    pub(crate) fn admitters(conn: &rusqlite::Connection) -> crate::Result<BeforeMembership> {
        let kept: Option<String> = crate::store::meta_get(conn, ADMITTED_BY_KEY)?;
        let keys: std::collections::HashSet<String> = kept
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default();
        Ok(BeforeMembership::Admitters(Arc::new(Mutex::new(keys))))
    }

    /// `key`'s primary admitted this one (its `Welcome` came). Returns the keys to keep in
    /// the file ([`BeforeMembership::keep`]).
    pub(crate) fn admitted_by(&self, key: &PublicKey) -> Option<String> {
        let BeforeMembership::Admitters(keys) = self else {
            return None;
        };
        let mut keys = keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.insert(key.to_hex());
        serde_json::to_string(&*keys).ok()
    }

    /// Keeps `keys` (from [`BeforeMembership::admitted_by`]) in the file.
    pub(crate) fn keep(conn: &rusqlite::Connection, keys: &str) -> crate::Result<()> {
        crate::store::meta_set(conn, ADMITTED_BY_KEY, keys)
    }

    fn allows(&self, key: &str) -> bool {
        match self {
            BeforeMembership::Anyone => true,
            BeforeMembership::Admitters(keys) => {
                keys.lock().unwrap_or_else(|p| p.into_inner()).contains(key)
            }
        }
    }
}

/// Whether `peer` may send this primary Raft's messages: a member, or, while this primary has
/// no membership yet, whom `before` allows.
pub(crate) fn may_call(raft: &Raft, peer: &PublicKey, before: &BeforeMembership) -> bool {
    let membership = raft.metrics().borrow().membership_config.clone();
    let key = peer.to_hex();
    let mut members = membership.nodes().peekable();
    match members.peek() {
        None => before.allows(&key),
        Some(_) => members.any(|(_, m)| m.public_key == key),
    }
}

/// Opens connections to the other primaries, with this primary's keys.
#[derive(Clone)]
pub struct PeerNetwork {
    keys: NodeKeys,
    handshake: Arc<HandshakeOptions>,
    batches: WrittenBatches,
    refusals: Refusals,
}

/// The members that refuse this primary's calls, and why, until one answers again: how a
/// primary removed from its cluster while it was stopped learns it from its old peers.
#[derive(Clone, Default)]
pub(crate) struct Refusals(Arc<Mutex<std::collections::BTreeMap<RaftNodeId, String>>>);

impl Refusals {
    fn note(&self, member: RaftNodeId, reason: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Logged when it begins or changes, not at every call.
        if map.get(&member).map(String::as_str) != Some(reason) {
            tracing::warn!(member, %reason, "a member of the cluster refuses this primary");
            map.insert(member, reason.to_string());
        }
    }

    fn clear(&self, member: RaftNodeId) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.remove(&member).is_some() {
            tracing::info!(member, "a member of the cluster answers this primary again");
        }
    }

    /// What the refusing members say, for the primary's status; None while none refuses.
    /// Members no longer in the cluster (`is_member` false) are forgotten: this primary calls
    /// them no more, so they never answer again to clear their refusal (a member that rejoined
    /// under a new id left its old one refusing on the leader's status for good).
    pub(crate) fn summary(&self, is_member: impl Fn(RaftNodeId) -> bool) -> Option<String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|id, _| is_member(*id));
        let (first, reason) = map.iter().next()?;
        let ids: Vec<String> = map.keys().map(|id| id.to_string()).collect();
        Some(match ids.len() {
            1 => format!("cluster member {first} refuses this primary: {reason}"),
            _ => format!(
                "cluster members {} refuse this primary: {reason}",
                ids.join(", ")
            ),
        })
    }
}

impl PeerNetwork {
    /// The network of the primary whose file is at `path` (encrypted with `file_key`).
    pub fn new(
        keys: NodeKeys,
        handshake: HandshakeOptions,
        path: &Path,
        file_key: Option<crate::uri::NetworkKey>,
    ) -> PeerNetwork {
        PeerNetwork {
            keys,
            handshake: Arc::new(handshake),
            batches: WrittenBatches {
                path: Arc::new(path.to_path_buf()),
                file_key: Arc::new(file_key),
                conn: Arc::default(),
            },
            refusals: Refusals::default(),
        }
    }

    pub(crate) fn refusals(&self) -> &Refusals {
        &self.refusals
    }
}

/// The batches this primary wrote through, read back from its `_octo_log` to be sent whole
/// (its Raft log holds only their positions there).
#[derive(Clone)]
struct WrittenBatches {
    path: Arc<PathBuf>,
    file_key: Arc<Option<crate::uri::NetworkKey>>,
    conn: Arc<Mutex<Option<rusqlite::Connection>>>,
}

impl WrittenBatches {
    /// `rpc` with every written-through batch replaced by the transactions it stands for.
    /// `digests`: the receiver speaks protocol 8 or newer, and keeps the digests of the
    /// devices' work the transactions decided (`Proposal::DecidedChecked`).
    async fn expand(
        &self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        digests: bool,
    ) -> Result<AppendEntriesRequest<TypeConfig>, NetError> {
        let compact = |e: &openraft::Entry<TypeConfig>| matches!(&e.payload, EntryPayload::Normal(p) if p.is_written_through());
        if !rpc.entries.iter().any(compact) {
            return Ok(rpc);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = me.conn.lock().unwrap_or_else(|p| p.into_inner());
            let conn = match slot.as_mut() {
                Some(c) => c,
                None => slot.insert(
                    crate::store::open_connection(&me.path, me.file_key.as_ref().as_ref())
                        .map_err(|e| NetError::Malformed(format!("reading the log: {e}")))?,
                ),
            };
            for entry in &mut rpc.entries {
                match &mut entry.payload {
                    EntryPayload::Normal(Proposal::InLog {
                        first_seq,
                        last_seq,
                    }) => {
                        let (txns, checked) = read_batch(conn, *first_seq, *last_seq)?;
                        entry.payload = EntryPayload::Normal(match digests {
                            true => Proposal::DecidedChecked {
                                txns,
                                digests: checked,
                            },
                            false => Proposal::Decided(txns),
                        });
                    }
                    // The rows are in the entry: the receiver writes them (its id only
                    // matters to the primary that proposed it).
                    EntryPayload::Normal(Proposal::RowsWritten { nodes, users }) => {
                        entry.payload = EntryPayload::Normal(Proposal::Rows {
                            id: 0,
                            nodes: std::mem::take(nodes),
                            users: std::mem::take(users),
                        });
                    }
                    _ => {}
                }
            }
            Ok(rpc)
        })
        .await
        .map_err(|e| NetError::Malformed(format!("reading the log: {e}")))?
    }
}

/// Transactions of the log, and the digest of each one's device work (`log::digest`).
type CheckedBatch = (Vec<super::types::Decided>, Vec<Option<[u8; 16]>>);

/// The transactions of `_octo_log` rows `first..=last`, with their digests.
fn read_batch(
    conn: &rusqlite::Connection,
    first: u64,
    last: u64,
) -> Result<CheckedBatch, NetError> {
    let want = last.saturating_sub(first) as usize + 1;
    let entries = crate::log::read_after(conn, first.saturating_sub(1), want)
        .map_err(|e| NetError::Malformed(format!("reading the log: {e}")))?;
    if entries.len() != want || entries.first().map(|e| e.seq) != Some(first) {
        return Err(NetError::Malformed(format!(
            "the log no longer holds positions {first}..={last} that a Raft entry names"
        )));
    }
    let digests = entries.iter().map(|e| e.origin_digest).collect();
    let txns = entries
        .into_iter()
        .map(|e| super::types::Decided {
            origin_node: e.origin_node,
            origin_txn: e.origin_txn,
            body: e.body,
        })
        .collect();
    Ok((txns, digests))
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: RaftNodeId, node: &Member) -> PeerClient {
        PeerClient::new(target, node.clone(), self.clone())
    }
}

/// One member, as this primary's Raft talks to it: connected on first use, and again after a
/// failure.
pub struct PeerClient {
    target: RaftNodeId,
    member: Member,
    network: PeerNetwork,
    conn: Option<(SecureReader, SecureWriter)>,
    /// The protocol version agreed on `conn`.
    protocol: u8,
    /// The member answered a request on `conn`.
    answered: bool,
}

/// A follower's request that got no answer, and whether the member may have acted on it.
#[derive(Debug)]
pub(super) struct Unanswered {
    pub error: NetError,
    /// False when the request never reached the member (no connection, a refused session).
    pub maybe_received: bool,
}

/// How a call failed: before reaching the member (back off), or on the way.
enum CallError {
    Unreachable(NetError),
    Network(NetError),
}

impl CallError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<RaftNodeId, Member, E> {
        match self {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl PeerClient {
    pub(super) fn new(target: RaftNodeId, member: Member, network: PeerNetwork) -> PeerClient {
        PeerClient {
            target,
            member,
            network,
            conn: None,
            protocol: 0,
            answered: false,
        }
    }

    /// Whether it talks to `target` at `member`'s address and key.
    pub(super) fn is_for(&self, target: RaftNodeId, member: &Member) -> bool {
        self.target == target && self.member == *member
    }

    /// Sends a follower's request to this member (the leader) and reads its reply.
    /// The protocol version agreed with the member, connecting first if need be (0 if it
    /// cannot be reached).
    pub(super) async fn protocol(&mut self) -> u8 {
        match self.ensure_connected().await {
            Ok(()) => self.protocol,
            Err(_) => 0,
        }
    }

    pub(super) async fn request(
        &mut self,
        request: Request,
        wait: Duration,
    ) -> Result<Reply, Unanswered> {
        self.call(request, wait).await.map_err(|e| match e {
            // No connection, or the member refused the session: the request was not read.
            // (A fresh connection closed before any answer may have been read first.)
            CallError::Unreachable(e) if !matches!(e, NetError::Closed) => Unanswered {
                error: e,
                maybe_received: false,
            },
            CallError::Unreachable(e) | CallError::Network(e) => Unanswered {
                error: e,
                maybe_received: true,
            },
        })
    }

    /// A connection to the member, and the protocol version agreed on it.
    async fn connect(&self) -> Result<(SecureReader, SecureWriter, u8), NetError> {
        let tcp = TcpStream::connect(&self.member.addr).await?;
        let net = &self.network;
        let stream = SecureStream::connect(tcp, &net.keys, &net.handshake).await?;
        let key = stream.peer().public_key.to_hex();
        let protocol = stream.protocol_version();
        if key != self.member.public_key {
            return Err(NetError::Authentication(format!(
                "the primary at {} presents key {key}, not member {}'s {}: refused",
                self.member.addr, self.target, self.member.public_key
            )));
        }
        let (rd, mut wr) = stream.into_split();
        // Which member the messages are for: a primary that rejoined under a new id, at the
        // address and with the key of an old member, must not take the old member's log.
        let hello = Message::Hello {
            role: crate::Role::Primary,
            last_seq: 0,
            info: serde_json::json!({ "to": self.target }).to_string(),
            auth: None,
        };
        wr.send(&hello.encode()).await?;
        Ok((rd, wr, protocol))
    }

    /// Connected (if it was not), so that what is sent can suit the member's version.
    async fn ensure_connected(&mut self) -> Result<(), CallError> {
        if self.conn.is_none() {
            // Bounded whole: a member stopped (SIGSTOP, a frozen machine) accepts the TCP
            // connection in its kernel and never answers the handshake.
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
                .await
                .map_err(|_| CallError::Unreachable(NetError::Timeout))?;
            let (rd, wr, protocol) = connected.map_err(CallError::Unreachable)?;
            self.conn = Some((rd, wr));
            self.protocol = protocol;
            self.answered = false;
        }
        Ok(())
    }

    async fn call(&mut self, request: Request, ttl: Duration) -> Result<Reply, CallError> {
        let bytes = encode(&request).map_err(CallError::Network)?;
        // A kept connection the member closed meanwhile (it stopped): connect again, so that
        // a member gone for good reads as unreachable (nothing sent), not as a request lost
        // on its way.
        if self.conn.as_ref().is_some_and(|(rd, _)| rd.peer_closed()) {
            self.conn = None;
        }
        self.ensure_connected().await?;
        let Some((mut rd, mut wr)) = self.conn.take() else {
            return Err(CallError::Unreachable(NetError::Closed));
        };
        let exchange = async {
            wr.send(&bytes).await?;
            wr.flush().await?;
            let frame = rd.recv().await?;
            decode::<Reply>(&frame).map_err(|e| refusal_in(&frame).unwrap_or(e))
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(reply)) => {
                self.conn = Some((rd, wr));
                self.answered = true;
                self.network.refusals.clear(self.target);
                Ok(reply)
            }
            // Refused (no longer a member there, or it is another member now): openraft backs
            // off rather than calling again at once, and the primary's status says why.
            Ok(Err(NetError::Refused(reason))) => {
                self.network.refusals.note(self.target, &reason);
                Err(CallError::Unreachable(NetError::Refused(reason)))
            }
            // A member that closes a new connection at once refuses it (it is another
            // member now, or stopping): openraft backs off rather than calling again at once.
            Ok(Err(NetError::Closed)) if !self.answered => {
                Err(CallError::Unreachable(NetError::Closed))
            }
            Ok(Err(e)) => Err(CallError::Network(e)),
            Err(_) => Err(CallError::Network(NetError::Timeout)),
        }
    }
}

/// A member's refusal of the session (a node message, not a cluster frame), if `frame` is one.
fn refusal_in(frame: &[u8]) -> Option<NetError> {
    match Message::decode(frame) {
        Ok(Message::Refused { reason }) => Some(NetError::Refused(reason)),
        _ => None,
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<RaftNodeId, Member, E> {
    RPCError::Network(NetworkError::new(&NetError::Malformed(
        "a reply of another kind than the request".into(),
    )))
}

fn remote<E: std::error::Error>(
    target: RaftNodeId,
    member: &Member,
    e: E,
) -> RPCError<RaftNodeId, Member, E> {
    RPCError::RemoteError(openraft::error::RemoteError::new_with_node(
        target,
        member.clone(),
        e,
    ))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<RaftNodeId>,
        RPCError<RaftNodeId, Member, RaftError<RaftNodeId>>,
    > {
        self.ensure_connected().await.map_err(CallError::into_rpc)?;
        let digests = self.protocol >= crate::net::version::COPIED_FILES;
        let rpc = self
            .network
            .batches
            .expand(rpc, digests)
            .await
            .map_err(|e| CallError::Network(e).into_rpc())?;
        match self
            .call(Request::AppendEntries(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::AppendEntries(r)) => r.map_err(|e| remote(self.target, &self.member, e)),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftNodeId>, RPCError<RaftNodeId, Member, RaftError<RaftNodeId>>> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(r)) => r.map_err(|e| remote(self.target, &self.member, e)),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftNodeId>,
        RPCError<RaftNodeId, Member, RaftError<RaftNodeId, InstallSnapshotError>>,
    > {
        match self
            .call(Request::InstallSnapshot(rpc), option.hard_ttl())
            .await
        {
            Ok(Reply::InstallSnapshot(r)) => r.map_err(|e| remote(self.target, &self.member, e)),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(e.into_rpc()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::test_support::fuzz_config())]
        /// A member's frames come from the network: any bytes decode or fail, never panic.
        #[test]
        fn any_cluster_frame_decodes_or_fails_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Reply>(&bytes);
            let mut framed = vec![CLUSTER_ENCODING];
            framed.extend_from_slice(&bytes);
            let _ = decode::<Request>(&framed);
            let _ = decode::<Reply>(&framed);
        }
    }

    #[test]
    fn requests_round_trip() {
        let vote = VoteRequest::new(openraft::Vote::new(3, 2), None);
        let bytes = encode(&Request::Vote(vote.clone())).unwrap();
        assert!(matches!(decode::<Request>(&bytes), Ok(Request::Vote(v)) if v == vote));
        assert!(decode::<Request>(&[9, 0]).is_err());
        assert!(decode::<Request>(&[]).is_err());
    }
}
