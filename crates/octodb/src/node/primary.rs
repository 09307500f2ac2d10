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

mod download;
mod leader;
mod stream;

use download::*;
use leader::*;
pub(crate) use stream::LogShape;
use stream::*;

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
