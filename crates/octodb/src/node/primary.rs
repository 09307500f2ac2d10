//! A primary's network side: listening, one session per connected node, the initial download,
//! and streaming the log to each device filtered by what its user may see.

use super::admission::{admit, send_now, Applicant};
use super::audiences::{Wake, POSITION_DELAY};
use super::members::Registered;
use super::snapshot;
use super::writer::{ask, DeviceTxn, Job};
use super::{runtime, Shared};
use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::log;
use crate::net::{version, Message, NetError, SecureReader, SecureStream, SecureWriter};
use crate::store::device_txn::Sender;
use crate::uri::{Endpoint, Role};
use crate::wire_size;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Log entries read per step while a device catches up.
const CATCH_UP_BATCH: usize = 2000;
/// Most transactions a device may send in one message.
const MAX_TXNS_PER_MESSAGE: usize = 10_000;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest first message (`Hello`, `OpenChannel`) a node may send before it has said who
/// it is: a sign-up's data is at most 16 KiB. Any key that completes the handshake may send
/// one, so it must not make the primary buffer the 64 MiB a session's messages may reach, for
/// each of as many connections as a stranger opens (the security review).
const FIRST_MESSAGE_MAX: usize = 256 * 1024;

/// Bind every `bind` address (so errors show at open time) and start accepting.
pub(super) fn start(shared: Arc<Shared>) -> Result<Vec<JoinHandle<()>>> {
    let _rt = runtime().enter();
    let mut tasks = Vec::new();
    for ep in &shared.cfg.bind {
        let listener = listen(ep).map_err(|e| {
            Error::io(
                format!("listening on {ep} (is another program using this port?)"),
                e,
            )
        })?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "primary listening");
            shared
                .bound
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(addr);
        }
        tasks.push(runtime().spawn(accept_loop(shared.clone(), listener)));
    }
    tasks.push(
        runtime().spawn(
            shared
                .audiences
                .clone()
                .tick_positions(shared.feed.subscribe(), POSITION_DELAY),
        ),
    );
    Ok(tasks)
}

/// Connections the kernel queues while the accept loop is busy. Rust's std listens with 128:
/// when thousands of devices reconnect at once (a primary restart, a network blip), the
/// overflow drops their SYNs and each waits for TCP's retransmit (1 s, then 3 s ...). The
/// kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on the endpoint's first address that accepts it.
fn listen(ep: &Endpoint) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in ep.to_addr_string().to_socket_addrs()? {
        let listener = (|| {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // As std's listeners do: a restarted primary can bind while old connections
            // linger in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match listener {
            Ok(l) => return Ok(l),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, addr)) => {
                    shared.metrics.connections.inc();
                    tokio::spawn(session(shared.clone(), tcp, addr));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn session(shared: Arc<Shared>, tcp: TcpStream, addr: SocketAddr) {
    match run_session(&shared, tcp, addr).await {
        Ok(()) | Err(Error::Net(NetError::Closed)) => tracing::debug!(%addr, "connection closed"),
        Err(e) => tracing::info!(%addr, "connection closed: {e}"),
    }
}

/// After an admitted device's position is settled: the cluster's primaries (protocol 5) and
/// a fresh session ticket for its next connection (protocol 9, `net::ticket`), flushed with
/// the Welcome and the log's history before them in one write.
async fn tell_members_and_ticket(
    shared: &Shared,
    wr: &mut SecureWriter,
    protocol: u8,
    device: &PublicKey,
) -> Result<()> {
    if protocol >= version::PRIMARY_MEMBERS {
        let members = shared.cluster_view.borrow().members.clone();
        wr.send(&Message::PrimaryMembers { members }.encode())
            .await?;
    }
    let tickets = shared.handshake.tickets.as_ref();
    if let Some(keys) = tickets.filter(|_| protocol >= version::SESSION_TICKETS) {
        match keys.issue(device) {
            Ok((ticket, secret)) => {
                let lifetime_s = crate::net::ticket::TICKET_LIFETIME.as_secs() as u32;
                let ticket = Message::SessionTicket {
                    ticket,
                    secret,
                    lifetime_s,
                };
                wr.send(&ticket.encode()).await?;
            }
            // The device just runs the full handshake next time.
            Err(_) => tracing::warn!(
                "could not issue a session ticket: the system's random source failed"
            ),
        }
    }
    wr.flush().await?;
    Ok(())
}

async fn recv_msg(rd: &mut SecureReader) -> Result<Message> {
    Ok(Message::decode(&rd.recv().await?)?)
}

/// A node's first message (`Hello`, `OpenChannel`), at most [`FIRST_MESSAGE_MAX`] bytes; a
/// larger one is refused, saying so, after the rest of it is read and dropped (so that the
/// refusal reaches the node rather than a reset of the connection).
async fn first_message(rd: &mut SecureReader, wr: &mut SecureWriter) -> Result<Message> {
    let session_max = rd.limit_message_size(FIRST_MESSAGE_MAX);
    let first = tokio::time::timeout(HELLO_TIMEOUT, recv_msg(rd))
        .await
        .map_err(|_| NetError::Timeout)?;
    rd.limit_message_size(session_max);
    match first {
        Err(Error::Net(NetError::TooLarge { .. })) => {
            let reason = format!(
                "the first message is larger than {} KiB: not accepted (a Hello's information \
                 and sign-up data are small)",
                FIRST_MESSAGE_MAX / 1024
            );
            send_now(
                wr,
                &Message::Refused {
                    reason: reason.clone(),
                },
            )
            .await?;
            let _ = tokio::time::timeout(HELLO_TIMEOUT, rd.skip_rest_of_refused()).await;
            Err(Error::rule(reason))
        }
        first => first,
    }
}

async fn run_session(shared: &Arc<Shared>, tcp: TcpStream, addr: SocketAddr) -> Result<()> {
    // The steps whose state is larger than an idle session's are boxed (the handshake, the
    // admission, a follower's asking its leader, a joining primary's session): a future is
    // as large as its largest state, and an idle session (a primary may hold tens of
    // thousands) should not carry their room. `tests::an_idle_device_session_stays_small`
    // keeps it so.
    let stream = Box::pin(SecureStream::accept(tcp, &shared.keys, &shared.handshake)).await;
    shared
        .metrics
        .handshake(stream.as_ref().ok().map(SecureStream::resumed));
    let stream = stream?;
    let pubkey = stream.peer().public_key;
    let protocol = stream.protocol_version();
    tracing::debug!(%addr, protocol, "secure connection up");
    let (mut rd, mut wr) = stream.into_split();
    let hello = Box::pin(first_message(&mut rd, &mut wr)).await?;
    if let Message::OpenChannel { service } = hello {
        return super::channels::serve(shared, pubkey, addr, protocol, service, rd, wr).await;
    }
    let Message::Hello {
        role,
        last_seq,
        info,
        auth,
    } = hello
    else {
        return Err(
            NetError::Malformed(format!("expected Hello first, got {}", hello.kind())).into(),
        );
    };
    if role == Role::Primary {
        return Box::pin(super::join::primary_session(
            shared, pubkey, protocol, addr, info, rd, wr,
        ))
        .await;
    }
    let serving = match serving_devices(shared).await {
        Ok(serving) => serving,
        Err((leader, reason)) => {
            return redirect(&mut wr, protocol, leader, reason).await;
        }
    };
    // Node information is the node's own say; keep it small.
    let info = if info.len() > 16 * 1024 {
        String::new()
    } else {
        info
    };
    // Devices of protocol 4 and newer send heartbeats at the pace they name, which this side
    // answers; a silence longer than that pace allows means a dead connection.
    let told = device_info(&info);
    let heartbeat = (protocol >= version::HEARTBEATS).then_some(told.heartbeat);
    let device_epoch = told.log_epoch;
    let (registered, last_decided_txn, connected, shape) = match &serving {
        Serving::Leader => {
            let applicant = Applicant {
                pubkey,
                addr,
                info,
                ask: auth,
                heartbeat,
            };
            let Some(registered) = Box::pin(admit(shared, applicant, &mut rd, &mut wr)).await?
            else {
                return Ok(());
            };
            let connected = ConnectedKey::open(shared, pubkey.to_hex());
            let node_id = registered.node_id;
            let (last_decided_txn, shape) =
                ask(shared, |reply| Job::Returning { node_id, reply }).await?;
            (
                registered,
                last_decided_txn,
                connected,
                Some(Box::new(shape)),
            )
        }
        Serving::Follower(leader) => {
            // Open first: a withdrawal from now on is not missed.
            let connected = ConnectedKey::open(shared, pubkey.to_hex());
            match Box::pin(admitted_by_leader(shared, &pubkey)).await {
                // Its log's shape is read once it caught up with the device (below).
                Ok((registered, last_decided_txn)) => {
                    (registered, last_decided_txn, connected, None)
                }
                Err(reason) => {
                    let reason = match leader {
                        Some(at) => format!(
                            "{reason}; devices sign up and are approved at the cluster's \
                             leader at {at}"
                        ),
                        None => format!("{reason}; the cluster elects a leader: try again shortly"),
                    };
                    return redirect(&mut wr, protocol, leader.clone(), reason).await;
                }
            }
        }
    };
    let Registered { node_id, user_id } = registered;
    let withdrawal = connected.withdrawn.notified();
    tokio::pin!(withdrawal);
    // Listen from now on: a withdrawal from here to the end of the session is not missed.
    withdrawal.as_mut().enable();
    if shared.approved.get(&connected.key).is_err()
        && !still_approved(shared, &connected.key).await?
    {
        // A decision on this key came after its admission, and took the approval back.
        return Ok(());
    }
    // The Welcome, the log's history, the cluster's primaries and the session ticket go out in
    // one write (`tell_members_and_ticket` flushes), but before a follower waits.
    let welcome = Message::Welcome {
        node_id,
        user_id,
        node_type: Role::Secondary,
        last_decided_txn,
    };
    wr.send(&welcome.encode()).await?;
    tracing::info!(%addr, node_id, user_id, following = matches!(serving, Serving::Follower(_)), "device connected");
    let tells_epochs = protocol >= version::LOG_EPOCHS;
    if let Serving::Follower(leader) = &serving {
        wr.flush().await?;
        if !caught_up_with(shared, last_seq).await {
            let reason = format!(
                "this primary has not yet applied the log as far as this device's position \
                 {last_seq}: the device goes to the cluster's leader"
            );
            return redirect(&mut wr, protocol, leader.clone(), reason).await;
        }
    }
    let Some(last_seq) = judge_position(
        shared,
        &mut wr,
        tells_epochs,
        (last_seq, device_epoch),
        shape,
    )
    .await?
    else {
        return Ok(());
    };
    let tells_members = protocol >= version::PRIMARY_MEMBERS;
    // From here on the device counts as seen, however its session ends.
    // Boxed: it stays in the session's state while the session runs.
    let told = tell_members_and_ticket(shared, &mut wr, protocol, &pubkey)
        .await
        .map_err(Box::new);

    let session = super::next_session();
    shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sessions
        .entry(node_id)
        .or_default()
        .push((addr.to_string(), session));
    let sender = Sender { node_id, user_id };
    rd.set_idle_timeout(heartbeat.map(crate::uri::dead_after));
    // Reading the device's transactions and streaming the log to it end together, so a device
    // never stays connected to a session that stopped sending it anything. A device whose
    // approval the backend takes back is cut off at once (it hears why when it reconnects).
    let beats = tokio::sync::Notify::new();
    let streamed = Streamed {
        node: node_id,
        user: user_id,
        last_seq,
        tells_members,
        tells_epochs,
        tells_digests: protocol >= version::COPIED_FILES,
        tells_caught_up: protocol >= version::CAUGHT_UP,
        counts_later: protocol >= version::DOWNLOAD_TOTAL_LATER,
        takes_renames: protocol >= version::DOWNLOAD_RENAMES,
        session,
    };
    let result = match told {
        Err(e) => Err(*e),
        Ok(()) => tokio::select! {
            r = read_loop(shared, &mut rd, sender, session, &beats) => r,
            r = stream_to_device(shared, streamed, wr, &beats) => r,
            () = &mut withdrawal => {
                tracing::info!(%addr, node_id, "device disconnected: its approval was taken back");
                Ok(())
            }
        },
    };
    {
        // Only this session's entry: the device may have another meanwhile (its old path
        // died silently and this session only now timed out, or this was a copy of its file
        // found out), which `PRAGMA nodes`, `peers` and the metrics still show (the
        // long-offline walkthrough: a copy's end showed the original disconnected).
        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(all) = live.sessions.get_mut(&node_id) {
            all.retain(|(_, s)| *s != session);
            if all.is_empty() {
                live.sessions.remove(&node_id);
            }
        }
    }
    // (Nobody waits for a session's removal: no wake-up.)
    shared.copied_files.send_if_modified(|found| {
        found.remove(&session);
        false
    });
    shared.unwritten.send_if_modified(|failed| {
        failed.remove(&session);
        false
    });
    // Kept when the session ends (while it lasts, `PRAGMA nodes` says it is connected): a
    // write per connection would cost every reconnecting device a commit.
    let seen = super::members::Sighting {
        node_id,
        address: addr.to_string(),
        at: super::writer::unix_now(),
    };
    // (A follower keeps no sightings: the authorization state is the leader's to write.)
    let leading = shared.cluster_view.borrow().leading;
    if leading && shared.jobs.send(Job::Seen(seen)).await.is_err() {
        tracing::debug!(node_id, "node stopping: last-seen time not kept");
    }
    result
}

/// Until the transactions of session `session` could not be written (by this primary's
/// writer or, forwarded, by the leader); then why.
async fn transactions_unwritten(
    unwritten: &mut tokio::sync::watch::Receiver<super::Unwritten>,
    session: u64,
) -> String {
    loop {
        if unwritten.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(reason) = unwritten.borrow_and_update().get(&session) {
            return reason.clone();
        }
    }
}

/// A device's public key among the connected ones for as long as its session lives.
struct ConnectedKey<'a> {
    shared: &'a Shared,
    key: String,
    /// Rung when the backend takes the device's approval back.
    withdrawn: Arc<tokio::sync::Notify>,
}

impl<'a> ConnectedKey<'a> {
    fn open(shared: &'a Shared, key: String) -> ConnectedKey<'a> {
        let withdrawn = shared.session_opened(&key);
        ConnectedKey {
            shared,
            key,
            withdrawn,
        }
    }
}

impl Drop for ConnectedKey<'_> {
    fn drop(&mut self) {
        self.shared.session_closed(&self.key);
    }
}

/// Whether the file still holds `key` as approved (when the cache no longer says so).
async fn still_approved(shared: &Arc<Shared>, key: &str) -> Result<bool> {
    let key = key.to_string();
    shared
        .read(move |c| {
            Ok(super::members::lookup(c, &key)?.is_some_and(|m| m.auth_state == "approved"))
        })
        .await
}

/// Reads the device's messages: its transactions go to the writer, its heartbeats to
/// `beats` (the streaming side answers them).
async fn read_loop(
    shared: &Arc<Shared>,
    rd: &mut SecureReader,
    sender: Sender,
    session: u64,
    beats: &tokio::sync::Notify,
) -> Result<()> {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let msg = tokio::select! {
            m = recv_msg(rd) => m?,
            _ = stop.changed() => return Ok(()),
        };
        match msg {
            Message::Heartbeat => beats.notify_one(),
            Message::Txns { txns } if txns.len() <= MAX_TXNS_PER_MESSAGE => {
                tracing::trace!(
                    node = sender.node_id,
                    count = txns.len(),
                    "transactions received"
                );
                if !shared.cluster_view.borrow().leading {
                    // Boxed: its state (the request to the leader) is over 4 KB, and kept
                    // inline it would sit in every idle device session.
                    if let Err(e) = Box::pin(to_the_leader(shared, sender, session, txns)).await {
                        // The device hears why from the streaming side (as when the leader's
                        // own writer fails), and this side reads nothing more: what the device
                        // sent after must not be decided before what failed.
                        let reason = e.to_string();
                        tracing::warn!(node = sender.node_id, "{reason}");
                        shared.sessions_unwritten(&[session], reason);
                        return std::future::pending().await;
                    }
                    continue;
                }
                to_own_writer(shared, sender, session, txns).await?;
            }
            other => {
                return Err(NetError::Malformed(format!(
                    "unexpected {} from a device",
                    other.kind()
                ))
                .into())
            }
        }
    }
}

/// How this primary serves devices now.
enum Serving {
    /// It leads its cluster: it decides their transactions.
    Leader,
    /// It follows the leader at this address (None: while its cluster elects one): it streams
    /// its own log to them, and their transactions go to the leader (`forwarded`).
    Follower(Option<String>),
}

/// How this primary serves devices now; or why it does not take them (it is joining its
/// cluster, beginning an epoch, or its cluster has no leader), with where the leader is.
async fn serving_devices(
    shared: &Arc<Shared>,
) -> std::result::Result<Serving, (Option<String>, String)> {
    let serving = serving_now(shared)?;
    if let Serving::Follower(leader) = &serving {
        // A primary that led until its restart may hold batches its cluster never confirmed:
        // no device reads them from it.
        let applied = shared
            .cluster
            .get()
            .and_then(|p| p.raft().metrics().borrow().last_applied);
        let tail = shared
            .read(move |c| crate::cluster::own_batches_beyond(c, applied))
            .await
            .unwrap_or(true);
        if tail {
            return Err((
                leader.clone(),
                "this primary is settling its log with its cluster's leader".into(),
            ));
        }
    }
    Ok(serving)
}

fn serving_now(shared: &Shared) -> std::result::Result<Serving, (Option<String>, String)> {
    let Some(proposer) = shared.cluster.get() else {
        let reason = "this primary is starting or joining its cluster: try again shortly";
        return Err((None, reason.into()));
    };
    match crate::cluster::lead(proposer.raft()) {
        // (Its batches would land before the marker: a device ahead of a primary restored
        // from an older copy could then be taken for one that is not.)
        crate::cluster::Lead::Here
            if !shared
                .epoch_settled
                .load(std::sync::atomic::Ordering::Acquire) =>
        {
            // Members that refuse it (it was removed, or its cluster was restored elsewhere)
            // mean the epoch will not begin: say why rather than "shortly" for ever.
            let reason = match proposer.refused() {
                Some(refused) => format!(
                    "this primary cannot begin a new epoch of its log: {refused}; use another \
                     primary"
                ),
                None => {
                    "this primary is beginning a new epoch of its log: try again shortly".into()
                }
            };
            Err((None, reason))
        }
        crate::cluster::Lead::Here => Ok(Serving::Leader),
        // Its devices' transactions could not be confirmed: they go where a majority is.
        crate::cluster::Lead::CutOff(ms) => Err((None, crate::cluster::cut_off(ms))),
        crate::cluster::Lead::At(addr) => Ok(Serving::Follower(Some(addr))),
        // While a member elects a leader its devices stay (their transactions wait for the
        // new leader), so that a fail-over costs them no reconnection. One that has known no
        // leader for longer than an election takes is likely cut off from its majority: its
        // devices go to primaries that can have their transactions decided.
        // Members that refuse it (it was removed, or its cluster was restored elsewhere): it
        // will know no leader, so it says why now. (Started again after it was removed, it
        // comes back leading its old term, unconfirmed: no leader it may follow.)
        crate::cluster::Lead::Unknown => match proposer.refused() {
            Some(refused) => Err((
                None,
                format!("this primary serves no devices: {refused}; use another primary"),
            )),
            None => match shared.cluster_view.borrow().refusal() {
                Some(reason) => Err((None, reason)),
                None => Ok(Serving::Follower(None)),
            },
        },
    }
}

/// Sends the device elsewhere: to `leader` if known (devices of protocol 5 and newer go
/// there at once, or retry soon while the cluster elects one), with `reason`.
async fn redirect(
    wr: &mut SecureWriter,
    protocol: u8,
    leader: Option<String>,
    reason: String,
) -> Result<()> {
    if protocol >= version::PRIMARY_MEMBERS {
        send_now(
            wr,
            &Message::NotLeader {
                leader,
                reason: reason.clone(),
            },
        )
        .await?;
        return Err(Error::rule(reason));
    }
    super::admission::refuse_session(wr, reason).await
}

/// How long a follower waits for its leader's answers about a device.
const LEADER_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a follower waits for the leader to say whether a device is approved before it
/// takes its own copy of the authorization state's word (a leader lost without a word).
const ADMIT_WAIT_MAX: Duration = Duration::from_secs(1);
/// The longest one attempt to hand a device's transactions to the leader waits: a leader
/// lost without a word must not hold them for the whole wait.
const FORWARD_ATTEMPT_MAX: Duration = Duration::from_secs(3);
/// How soon a follower tries its cluster's leader again while a device's transactions wait
/// for one: at first (an election ends within a second), then less often, up to
/// [`LEADER_POLL_MAX`] while the same leader fails, so that one that refuses connections is
/// not called every few ms; a new leader is tried at once.
const LEADER_POLL: Duration = Duration::from_millis(20);
const LEADER_POLL_MAX: Duration = Duration::from_millis(160);
/// How long a follower waits to apply the log as far as a device that connects to it.
const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(5);

/// A follower: the device of `pubkey` as the leader knows it (approved: its ids, and its last
/// decided transaction); else why not.
async fn admitted_by_leader(
    shared: &Arc<Shared>,
    pubkey: &crate::crypto::PublicKey,
) -> std::result::Result<(Registered, u64), String> {
    let proposer = shared.cluster.get().ok_or("this primary is starting")?;
    if !proposer.has_leader() {
        // While its cluster elects a leader: as this primary's own copy of the authorization
        // state knows the device (its last decided transaction may be older than the truth:
        // the leader then skips what the device sends again).
        return super::forwarded::approved_device(shared, pubkey.to_hex()).await;
    }
    match proposer.admit_device(pubkey.to_hex(), ADMIT_WAIT_MAX).await {
        Ok(Ok(a)) => Ok((
            Registered {
                node_id: a.node_id,
                user_id: a.user_id,
            },
            a.last_decided_txn,
        )),
        Ok(Err(why)) => Err(why),
        // The leader it knows is unreachable (lost, not replaced yet): as for an election.
        Err(e) => {
            tracing::debug!("the leader did not answer about a device ({e}): admitted here");
            super::forwarded::approved_device(shared, pubkey.to_hex()).await
        }
    }
}

/// A follower: whether it has applied the log as far as `last_seq` (waiting a little).
async fn caught_up_with(shared: &Shared, last_seq: u64) -> bool {
    let mut feed = shared.feed.subscribe();
    let reached = tokio::time::timeout(CATCH_UP_WAIT_MAX, feed.wait_for(|seq| *seq >= last_seq))
        .await
        .is_ok_and(|r| r.is_ok());
    reached
}

/// The leader: a device's transactions go to this primary's writer, which decides them.
async fn to_own_writer(
    shared: &Shared,
    sender: Sender,
    session: u64,
    txns: Vec<(u64, crate::changes::ChangeSet)>,
) -> Result<()> {
    let job = Job::DeviceTxns {
        sender,
        session,
        txns: txns
            .into_iter()
            .map(|(id, changes)| DeviceTxn::received(id, changes))
            .collect(),
        written: None,
    };
    shared.jobs.send(job).await.map_err(|_| Error::Closed)
}

/// A follower: a device's transactions go to the leader, in order; the session goes on once
/// they are written there (the device hears of their decisions from this primary's log, once
/// the cluster committed them), and ends if they are not. During an election, or while the
/// leader this primary knows is unreachable (lost, not replaced yet), they wait for the new
/// one, which may be this primary. Sending them again is safe: the leader skips a device's
/// transactions it decided already.
async fn to_the_leader(
    shared: &Shared,
    sender: Sender,
    session: u64,
    txns: Vec<(u64, crate::changes::ChangeSet)>,
) -> Result<()> {
    let proposer = shared.cluster.get().ok_or(Error::Closed)?;
    let deadline = tokio::time::Instant::now() + LEADER_WAIT_MAX;
    let mut poll = LEADER_POLL;
    let mut tried = shared.cluster_view.borrow().leader.clone();
    let outcome = loop {
        if shared.cluster_view.borrow().leading {
            // This primary leads now: its own writer decides them.
            return to_own_writer(shared, sender, session, txns).await;
        }
        let forwarded = crate::cluster::forward::ForwardedTxns {
            node_id: sender.node_id,
            user_id: sender.user_id,
            txns: txns.clone(),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match proposer
            .device_txns(forwarded, left.min(FORWARD_ATTEMPT_MAX))
            .await
        {
            Ok(written) => break written,
            Err(e) if tokio::time::Instant::now() + poll < deadline => {
                tracing::debug!("a device's transactions wait for the leader: {e}");
                tokio::time::sleep(poll).await;
                let leader = shared.cluster_view.borrow().leader.clone();
                poll = match leader == tried {
                    true => (poll * 2).min(LEADER_POLL_MAX),
                    false => LEADER_POLL,
                };
                tried = leader;
            }
            Err(e) => {
                return Err(Error::rule(format!(
                    "this device's transactions could not reach the cluster's leader ({e}); \
                     they are sent again on the next connection"
                )))
            }
        }
    };
    match outcome {
        Ok(None) => Ok(()),
        Ok(Some(txn)) => {
            // The streaming side tells the device, and the session ends.
            shared.copied_file_found(session, txn);
            Ok(())
        }
        Err(why) => Err(Error::rule(format!(
            "the cluster's leader did not take this device's transactions: {why}; they are \
             sent again on the next connection"
        ))),
    }
}

/// The device a session streams to.
struct Streamed {
    node: u32,
    user: i64,
    /// Where its copy stands (0: it needs the initial download).
    last_seq: u64,
    /// It speaks protocol 5 or newer: it hears of the cluster's primaries.
    tells_members: bool,
    /// It speaks protocol 7 or newer: it hears of the log's new epochs.
    tells_epochs: bool,
    /// It speaks protocol 8 or newer: it hears the digests of its own decided transactions,
    /// and that its file is a copy of another device's.
    tells_digests: bool,
    /// It speaks protocol 10 or newer: it hears when it has caught up.
    tells_caught_up: bool,
    /// It speaks protocol 11 or newer: its download's row count follows the first rows.
    counts_later: bool,
    /// It speaks protocol 13 or newer: its download brings the primaries' renames.
    takes_renames: bool,
    /// The session reading its transactions (`copied_files`).
    session: u64,
}

/// Where a device that applied the log up to `last_seq` (in epoch `epoch`) goes on from:
/// there, or from a new download (0) when this primary is behind it (`log::epochs`) or its
/// log no longer holds what follows that position (`log::compaction`). A
/// device of protocol 7 hears the log's epochs, and why it downloads again; an older one
/// cannot download over its data, and is refused (None) with what to do.
async fn judge_position(
    shared: &Arc<Shared>,
    wr: &mut SecureWriter,
    tells_epochs: bool,
    (last_seq, epoch): (u64, Option<u64>),
    shape: Option<Box<LogShape>>,
) -> Result<Option<u64>> {
    let LogShape {
        end,
        history,
        start,
    } = match shape {
        Some(shape) => *shape,
        None => {
            let reader = shared.clone();
            shared.read(move |c| LogShape::read(&reader, c)).await?
        }
    };
    let behind = log::epochs::judge(&history, end, last_seq, epoch.filter(|_| tells_epochs))
        .or_else(|| past_compaction(last_seq, start, shared.cfg.log_keep));
    if !tells_epochs {
        let Some(reason) = behind else {
            return Ok(Some(last_seq));
        };
        let reason = format!(
            "{reason}. This device's app is too old to download again over its data: update \
             the app, or give the device a fresh file"
        );
        tracing::warn!("a device cannot go on from its position: {reason}");
        return super::admission::refuse_session(wr, reason)
            .await
            .map(|()| None);
    }
    let epochs = match behind {
        Some(_) => history,
        None => log::epochs::from(&history, epoch),
    };
    if let Some(reason) = &behind {
        tracing::warn!("a device cannot go on from its position; it downloads again: {reason}");
    }
    let resync = behind.is_some();
    // Flushed with what follows it.
    let history = Message::LogHistory {
        epochs,
        resync: behind,
    };
    wr.send(&history.encode()).await?;
    Ok(Some(if resync { 0 } else { last_seq }))
}

/// What says where a device goes on from: the log's end, its epochs and its first entry.
pub(crate) struct LogShape {
    end: u64,
    history: Vec<log::epochs::Epoch>,
    start: u64,
}

impl LogShape {
    pub(crate) fn read(shared: &Shared, c: &rusqlite::Connection) -> Result<LogShape> {
        // The end before the history: an epoch begun since is then in it (`node::epoch`).
        let end = *shared.feed.borrow();
        Ok(LogShape {
            end,
            history: log::epochs::history(c)?,
            start: log::compaction::start(c)?,
        })
    }
}

/// Why a device at `last_seq` cannot catch up from a log that starts at `start` (cut to its
/// newest `keep` entries: `log::compaction`), if it cannot. (0: it downloads anyway.)
fn past_compaction(last_seq: u64, start: u64, keep: u64) -> Option<String> {
    (last_seq > 0 && last_seq + 1 < start).then(|| {
        format!(
            "the primary's log no longer holds the entries after this device's position \
             {last_seq}: it keeps its newest {keep} (log_keep=) and starts at {start}, and this \
             device was away for longer"
        )
    })
}

/// Stream the log to a device from `last_seq` on (after its initial download when 0). Ends
/// when this primary stops leading its cluster: the device then finds the new leader.
async fn stream_to_device(
    shared: &Arc<Shared>,
    device: Streamed,
    mut wr: SecureWriter,
    beats: &tokio::sync::Notify,
) -> Result<()> {
    let Streamed {
        node,
        user,
        last_seq,
        tells_members,
        tells_epochs,
        tells_digests,
        tells_caught_up,
        counts_later,
        takes_renames,
        session,
    } = device;
    let mut copied_files = shared.copied_files.subscribe();
    copied_files.mark_unchanged();
    let mut epoch_marks = shared.epoch_marks.subscribe();
    epoch_marks.mark_unchanged();
    let mut cluster = shared.cluster_view.subscribe();
    cluster.mark_unchanged();
    let mut following = shared.audiences.follow(user);
    let mut unwritten = shared.unwritten.subscribe();
    unwritten.mark_unchanged();
    let mut cursor = last_seq;
    if last_seq == 0 {
        // Boxed: the download's state is large and must not stay in every idle session.
        let download_of = snapshot::Download {
            user,
            total: match counts_later {
                true => snapshot::Total::Later,
                false => snapshot::Total::First,
            },
            renames: takes_renames,
        };
        cursor = Box::pin(download(shared, download_of, &mut wr)).await?;
    }
    // The device's position as it was last told. Entries it may not see are not sent one by
    // one; it hears of its new position with its next visible entry, or at the next position
    // tick (see `audiences`). A device that connects behind entries it may not see hears
    // its position once it has caught up: no tick may come while the log stands still.
    let mut told = cursor;
    let mut tell_position = true;
    let mut caught_up_untold = tells_caught_up;
    loop {
        following.mark_seen();
        let last = *shared.feed.borrow();
        // After the feed: an epoch whose marker the feed passed is seen here, and the device
        // hears of it before any entry after it.
        if tells_epochs && epoch_marks.has_changed().unwrap_or(false) {
            epoch_marks.mark_unchanged();
            let history = shared.read(log::epochs::history).await?;
            let newest = history.last().copied().into_iter().collect();
            send_now(
                &mut wr,
                &Message::LogHistory {
                    epochs: newest,
                    resync: None,
                },
            )
            .await?;
        }
        // Counted (metrics) while this session reads entries older than memory holds.
        let mut catching_up = None;
        while cursor < last {
            if shared.recent.none_for(cursor, last, node, user) {
                cursor = last;
                break;
            }
            let batch = match shared.recent.read_after(cursor, last, CATCH_UP_BATCH) {
                Some(b) => b,
                None => {
                    catching_up.get_or_insert_with(|| shared.metrics.catch_up());
                    let from = cursor;
                    let read = shared
                        .read(move |c| log::read_after(c, from, CATCH_UP_BATCH))
                        .await?;
                    // Cut while this session read it (`log::compaction`): the device hears
                    // why, and downloads again on its next connection.
                    if read.first().is_some_and(|e| e.seq != from + 1) {
                        let reason = past_compaction(from, read[0].seq, shared.cfg.log_keep)
                            .unwrap_or_else(|| {
                                "the primary's log was compacted past this \
                                                 device's position"
                                    .into()
                            });
                        wr.send(
                            &Message::Refused {
                                reason: reason.clone(),
                            }
                            .encode(),
                        )
                        .await?;
                        wr.flush().await?;
                        return Err(Error::rule(reason));
                    }
                    read.into_iter()
                        .map(|e| Arc::new(log::recent::Recorded::new(e)))
                        .collect()
                }
            };
            let Some(up_to) = batch.last().map(|e| e.seq()) else {
                cursor = last;
                break;
            };
            let visible: Vec<_> = batch
                .iter()
                .filter_map(|e| e.for_device(node, user))
                .collect();
            cursor = up_to;
            if !visible.is_empty() {
                tracing::trace!(node, up_to, "streaming entries");
                if tells_digests {
                    send_own_digests(&mut wr, &visible, node).await?;
                }
                let runs = wire_size::runs_within(visible, wire_size::STREAM_BUDGET, |e| {
                    wire_size::entry_bound(e)
                });
                let last_run = runs.len() - 1;
                for (i, run) in runs.into_iter().enumerate() {
                    // Each message's position: its last entry, the batch's end for the last.
                    let position = match run.last() {
                        Some(e) if i < last_run => e.seq,
                        _ => up_to,
                    };
                    send(&mut wr, run, position).await?;
                }
                told = up_to;
            }
        }
        drop(catching_up);
        if std::mem::take(&mut caught_up_untold) {
            // Once a session, where the log stood when the device had it all (its position
            // included, which it would otherwise hear below).
            wr.send(&Message::CaughtUp { up_to: cursor }.encode())
                .await?;
            wr.flush().await?;
            told = cursor;
        }
        if tell_position && told < cursor {
            send(&mut wr, Vec::new(), cursor).await?;
            told = cursor;
        }
        tell_position = loop {
            tokio::select! {
                wake = following.woken() => break wake == Wake::Position,
                // The device's heartbeat, answered: it proves to the device that the path
                // back works. Only devices send them unprompted, so an idle device costs one
                // message each way per its interval.
                () = beats.notified() => {
                    wr.send(&Message::Heartbeat.encode()).await?;
                    wr.flush().await?;
                }
                Ok(()) = cluster.changed() => {
                    let view = cluster.borrow_and_update().clone();
                    // A follower serves its devices too, during an election as well (their
                    // transactions wait for the new leader): only a primary whose Raft node
                    // stopped, or that is cut off from its majority, ends them.
                    if let Some(reason) = view.refusal() {
                        tracing::info!(node, "device disconnected: {reason}");
                        let told = match tells_members {
                            true => Message::NotLeader { leader: view.leader, reason: reason.clone() },
                            false => Message::Refused { reason: reason.clone() },
                        };
                        wr.send(&told.encode()).await?;
                        wr.flush().await?;
                        return Err(Error::rule(reason));
                    }
                    if tells_members {
                        wr.send(&Message::PrimaryMembers { members: view.members }.encode()).await?;
                        wr.flush().await?;
                    }
                }
                // This device sent other work under an id already decided.
                txn = copied_file(&mut copied_files, session) => {
                    let reason = Error::CopiedFile { txn }.to_string();
                    tracing::warn!(node, txn, "device disconnected: its file is a copy of another device's in use");
                    let told = match tells_digests {
                        true => Message::CopiedFile { txn, reason: reason.clone() },
                        false => Message::Refused { reason: reason.clone() },
                    };
                    wr.send(&told.encode()).await?;
                    wr.flush().await?;
                    return Err(Error::rule(reason));
                }
                // The writer could not write this device's transactions: the session ends,
                // telling the device why, and it sends them again when it reconnects.
                reason = transactions_unwritten(&mut unwritten, session) => {
                    tracing::info!(node, "device disconnected: {reason}");
                    wr.send(&Message::Refused { reason: reason.clone() }.encode()).await?;
                    wr.flush().await?;
                    return Err(Error::rule(reason));
                }
            }
        };
    }
}

/// What a device says of itself in its Hello's information, read once: the heartbeat
/// interval it names (the default if none) and the epoch of its log position (protocol 7).
struct DeviceInfo {
    heartbeat: Duration,
    log_epoch: Option<u64>,
}

fn device_info(info: &str) -> DeviceInfo {
    let v = serde_json::from_str::<serde_json::Value>(info).ok();
    let field = |name: &str| v.as_ref().and_then(|v| v.get(name)?.as_u64());
    DeviceInfo {
        heartbeat: field("heartbeat_s").map_or(crate::uri::DEFAULT_HEARTBEAT, |s| {
            Duration::from_secs(s.clamp(1, 60))
        }),
        log_epoch: field("log_epoch"),
    }
}

/// Protocol 8: before entries that decide some of `node`'s own transactions, the digest of
/// each as the deciding primary received it (entries a follower applied carry none).
async fn send_own_digests(
    wr: &mut SecureWriter,
    entries: &[log::LogEntry],
    node: u32,
) -> Result<()> {
    let txns: Vec<(u64, [u8; 16])> = entries
        .iter()
        .filter(|e| e.origin_node == node)
        .filter_map(|e| Some((e.origin_txn, e.origin_digest?)))
        .collect();
    if txns.is_empty() {
        return Ok(());
    }
    wr.send(&Message::OwnDigests { txns }.encode()).await?;
    Ok(())
}

/// Until the writer finds that session `session`'s device sent other work under an id
/// already decided; then that id.
async fn copied_file(
    found: &mut tokio::sync::watch::Receiver<std::collections::HashMap<u64, u64>>,
    session: u64,
) -> u64 {
    loop {
        if found.changed().await.is_err() {
            return std::future::pending().await;
        }
        let txn = found.borrow_and_update().get(&session).copied();
        if let Some(txn) = txn {
            return txn;
        }
    }
}

async fn send(wr: &mut SecureWriter, entries: Vec<log::LogEntry>, up_to: u64) -> Result<()> {
    wr.send(&Message::Entries { entries, up_to }.encode())
        .await?;
    Ok(wr.flush().await?)
}

/// The initial download: the snapshot is read and encoded on a blocking thread and sent from
/// here as its parts arrive. Returns the log position it stands at. With `counts_later` (a
/// device of protocol 11) the rows are counted on another reader meanwhile, and the count
/// follows the first rows (`Message::SnapshotTotal`, before `SnapshotEnd`) rather than
/// holding them up.
async fn download(
    shared: &Arc<Shared>,
    of: snapshot::Download,
    wr: &mut SecureWriter,
) -> Result<u64> {
    let _serving = shared.metrics.download_served();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let (user, counts_later) = (of.user, of.total == snapshot::Total::Later);
    let reading = shared.read(move |c| snapshot::read(c, of, &tx));
    let sending = async {
        // Owned here so that a failed send drops it, which stops the reading side too.
        let mut rx = rx;
        // The count, begun once `SnapshotBegin` has gone.
        let mut count: Option<tokio::sync::oneshot::Receiver<Result<u64>>> = None;
        let mut counted = !counts_later;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { break };
                    wr.send(&m).await?;
                    if !counted && count.is_none() {
                        count = Some(count_beside(shared, user));
                    }
                    if rx.is_empty() {
                        wr.flush().await?;
                    }
                }
                n = async {
                    match count.as_mut() {
                        Some(c) => Some(c.await),
                        None => None,
                    }
                }, if !counted && count.is_some() => {
                    counted = true;
                    send_total(wr, n).await?;
                }
            }
        }
        if !counted {
            if let Some(count) = count {
                send_total(wr, Some(count.await)).await?;
            }
        }
        Ok::<(), Error>(())
    };
    let (seq, sent) = tokio::join!(reading, sending);
    sent?;
    let seq = seq?;
    wr.send(&Message::SnapshotEnd { seq }.encode()).await?;
    wr.flush().await?;
    Ok(seq)
}

/// Counts the rows of a download for `user` on a reader of its own; the count arrives on the
/// channel returned.
fn count_beside(shared: &Arc<Shared>, user: i64) -> tokio::sync::oneshot::Receiver<Result<u64>> {
    let (counted, count) = tokio::sync::oneshot::channel();
    let shared = shared.clone();
    tokio::spawn(async move {
        let _ = counted.send(shared.read(move |c| snapshot::count(c, user)).await);
    });
    count
}

/// Sends a download's row count (a count that failed leaves the device's progress without a
/// total: said at debug).
async fn send_total(
    wr: &mut SecureWriter,
    n: Option<std::result::Result<Result<u64>, tokio::sync::oneshot::error::RecvError>>,
) -> Result<()> {
    match n {
        Some(Ok(Ok(total_rows))) => {
            wr.send(&Message::SnapshotTotal { total_rows }.encode())
                .await?
        }
        Some(Ok(Err(e))) => tracing::debug!("a download's rows could not be counted: {e}"),
        _ => tracing::debug!("a download's rows could not be counted"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Sessions whose transactions fail together each hear their own reason: the failures
    /// were one "last failure", and a session whose failure was replaced before its streaming
    /// side looked never ended (its reading side had stopped: the device's outbox grew for
    /// good, found by the cluster operator's walkthrough with two devices on one follower).
    #[tokio::test]
    async fn every_session_whose_transactions_failed_hears_why() {
        let (failures, _) = tokio::sync::watch::channel(super::super::Unwritten::default());
        let (mut first, mut second, mut other) = (
            failures.subscribe(),
            failures.subscribe(),
            failures.subscribe(),
        );
        for (session, reason) in [(1, "one"), (2, "two")] {
            failures.send_modify(|f| {
                f.insert(session, reason.to_string());
            });
        }
        assert_eq!(super::transactions_unwritten(&mut first, 1).await, "one");
        assert_eq!(super::transactions_unwritten(&mut second, 2).await, "two");
        let waiting = super::transactions_unwritten(&mut other, 3);
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(50), waiting);
        assert!(
            timed_out.await.is_err(),
            "a session that did not fail goes on"
        );
    }

    /// The size of the future an `async fn` of three arguments returns, never called.
    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Each connected device holds one session future, allocated at its largest state's
    /// size: 8.5 KB while a follower's request to its leader (4.6 KB) sat inline in the
    /// reading loop; 4.5 KB with the rare steps boxed. The bound leaves room to grow, and
    /// fails when a large step lands inline again.
    #[test]
    fn an_idle_device_session_stays_small() {
        let bytes = future_size(super::session as fn(_, _, _) -> _);
        assert!(
            bytes <= 5 * 1024,
            "a device session's future is {bytes} bytes: box the large, rare steps"
        );
    }
}
