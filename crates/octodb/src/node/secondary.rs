//! A device's network side: connect to a primary (failing over along the `connect` list),
//! download the database when empty, apply the stream, and send the outbox.

use super::restored_ids::CLAIM_FIELD;
use super::writer::{answer, ask, submit, Job};
use super::{Event, Shared};
use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::log::outbox;
use crate::net::{
    version, Message, NetError, Resumption, SecureReader, SecureStream, SecureWriter,
};
use crate::store::capture::Identity;
use crate::uri::{Endpoint, Role};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A device the primaries require a sign-up from asks again after this long, then ever less
/// often, whether its key was approved by hand meanwhile.
const APPROVAL_CHECK_FIRST: Duration = Duration::from_secs(2);
const APPROVAL_CHECK_MAX: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Pause before trying the next primary of the list after one failed.
const NEXT_PRIMARY_PAUSE: Duration = Duration::from_millis(20);
/// Pause before trying again while the primaries elect a leader (an election takes about a
/// second: a few tries, not a growing back-off).
const ELECTION_PAUSE: Duration = Duration::from_millis(150);
/// Transactions per message when sending the outbox.
const SEND_BATCH: usize = 500;
/// Download chunks handed to the writer and not yet written: enough that the writer never waits
/// for the network to receive and decode the next one, few enough to bound memory (~1 MB each).
const CHUNKS_IN_FLIGHT: usize = 3;
/// Messages of log entries handed to the writer and not yet written. While the app holds the
/// file, those that queue up are written in one transaction when the engine's turn comes
/// (`write_turns`), instead of one turn and one transaction each.
const ENTRIES_IN_FLIGHT: usize = 8;

pub(super) async fn run(shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    let mut backoff = Duration::from_millis(50);
    let mut approval_check = APPROVAL_CHECK_FIRST;
    // The primary tried next: the same again after a session that was up (a dropped
    // connection, a restart), the next one after a failure to get in.
    let mut turn = 0usize;
    // Where a follower said the leader is: tried next, once.
    let mut leader_hint: Option<Endpoint> = None;
    // The last answer from a primary that could be reached (a refusal, say), kept in
    // `sync_error` beside the failures to reach the others: the one that explains the most.
    let mut last_answer: Option<String> = None;
    note_copied_file(&shared).await;
    loop {
        if shared.is_shutting_down() {
            return;
        }
        // A copy of another device's file in use syncs no more, under this key.
        if let Some(txn) = copied_file(&shared) {
            shared
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sync_error = Some(Error::CopiedFile { txn }.to_string());
            let _ = stop.changed().await;
            return;
        }
        let endpoints = endpoints(&shared);
        let ep = match leader_hint.take() {
            Some(leader) => leader,
            None => endpoints[turn % endpoints.len()].clone(),
        };
        let ep = &ep;
        let started = std::time::Instant::now();
        let position_before = *shared.feed.borrow();
        let (wait_for_request, ended) = match session(&shared, ep).await {
            Ok(Flow::NotLeader { leader, reason }) => {
                // Not a failure of the path: the cluster is moving. To the leader at once, or
                // round the list again soon while it is being elected.
                session_ended(&shared, format!("{ep}: {reason}"));
                let pause = match leader {
                    Some(leader) => {
                        leader_hint = Some(leader);
                        NEXT_PRIMARY_PAUSE
                    }
                    None => {
                        turn = turn.wrapping_add(1);
                        ELECTION_PAUSE
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            Ok(Flow::WaitForRequest) => (true, "the primaries need a sign-up or login".into()),
            Ok(_) => (false, "this node is closing".into()),
            Err(e) => {
                tracing::info!(primary = %ep, "sync connection ended: {e}");
                let here = session_error(&ep.to_string(), &e);
                let shown = match (&e, &last_answer) {
                    (Error::Io { .. } | Error::Net(_), Some(answer)) => {
                        format!("{answer} (and {here})")
                    }
                    (Error::Io { .. } | Error::Net(_), None) => here,
                    _ => {
                        last_answer = Some(here.clone());
                        here
                    }
                };
                shared
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sync_error = Some(shown.clone());
                (false, shown)
            }
        };
        let was_connected = session_ended(&shared, ended);
        if was_connected {
            last_answer = None;
        }
        if !was_connected {
            turn = turn.wrapping_add(1);
        }
        // A session that lasted, or that moved this device's copy on, was a good one: the
        // next try comes soon. (One that a primary ends at once does not reset the back-off:
        // such a primary must not make its devices reconnect in a loop.)
        let moved_on = *shared.feed.borrow() > position_before;
        if started.elapsed() > Duration::from_secs(5) || (was_connected && moved_on) {
            backoff = Duration::from_millis(50);
        }
        if wait_for_request {
            // Nothing to say to the primaries until the app signs up or logs in, or the
            // backend approves this device's key by hand (checked now and then while the
            // primaries require a sign-up). A wake-up left from a request the last session
            // already carried is not a new request: reconnecting for it would replace
            // "rejected" with "required".
            // (A revoked device checks too: an operator may approve its key again. One whose
            // first request was refused waits for the app to ask again.)
            let revoked = auth_state_is(&shared, "rejected") && shared.identity.node_id() != 0;
            let check_approval = auth_state_is(&shared, "required") || revoked;
            let mut waited = false;
            let mut recheck = false;
            while !has_auth_request(&shared) {
                tokio::select! {
                    _ = shared.auth_changed.notified() => {}
                    () = tokio::time::sleep(approval_check), if check_approval => {
                        recheck = true;
                        break;
                    }
                    _ = stop.changed() => return,
                }
                waited = true;
            }
            if recheck {
                approval_check = (approval_check * 2).min(APPROVAL_CHECK_MAX);
                continue;
            }
            if waited {
                backoff = Duration::from_millis(50);
                continue;
            }
            // A request was pending all along: retry it after the usual back-off.
        } else {
            approval_check = APPROVAL_CHECK_FIRST;
        }
        // The back-off grows once per round of the list: after a primary's loss, the others
        // (one of them the new leader) are tried at once, not each after a longer pause.
        let round_done = turn.is_multiple_of(endpoints.len());
        let pause = if round_done || was_connected {
            backoff
        } else {
            NEXT_PRIMARY_PAUSE
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        if round_done {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Whether this file was found to be a copy of another device's in use: at which transaction.
fn copied_file(shared: &Shared) -> Option<u64> {
    shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .copied_file
}

/// Reads from the file whether an earlier run found it to be a copy of another device's.
async fn note_copied_file(shared: &Arc<Shared>) {
    let key = super::writer::COPIED_FILE_KEY;
    match shared
        .read(move |c| crate::store::meta_get::<i64>(c, key))
        .await
    {
        Ok(Some(txn)) => {
            shared
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .copied_file = Some(txn as u64);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!("cannot read whether this file is a copy of another device's: {e}")
        }
    }
}

/// A session ended, for `reason`: the device is not connected any more (and says so, if it
/// was). Returns whether it was connected.
fn session_ended(shared: &Shared, reason: String) -> bool {
    let was_connected = {
        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        live.caught_up = false;
        live.awake = None;
        live.connected_to.take().is_some()
    };
    if was_connected {
        shared.emit(Event::Disconnected { reason });
    }
    was_connected
}

/// The primaries to try in turn: the `connect` list, then the cluster's other primaries as
/// the primaries told (never empty: `connect` is required on a device).
pub(super) fn endpoints(shared: &Shared) -> Vec<Endpoint> {
    let mut out = shared.cfg.connect.clone();
    let known = shared
        .known_primaries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for member in known {
        // A primary that listens on every interface and names no advertise= tells its bind
        // address (0.0.0.0): here that is the device's own machine, not the primary
        // (network walkthrough: a device took it, past the proxy its connect= named).
        let unspecified = |ep: &Endpoint| {
            ep.host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified())
        };
        if let Some(ep) = Endpoint::from_addr(&member.addr).filter(|ep| !unspecified(ep)) {
            if !out.contains(&ep) {
                out.push(ep);
            }
        }
    }
    out
}

/// Meta key of the cluster's primaries as last told (JSON).
const KNOWN_PRIMARIES: &str = "primary_members";
/// Most primaries a device keeps from what a primary tells.
const MAX_KNOWN_PRIMARIES: usize = 64;

/// The cluster's primaries kept in the device's file (none if it never heard of them).
pub(super) fn known_primaries_in(
    c: &rusqlite::Connection,
) -> Result<Vec<crate::net::PrimaryMember>> {
    let Some(json) = crate::store::meta_get::<String>(c, KNOWN_PRIMARIES)? else {
        return Ok(Vec::new());
    };
    let members: Vec<(String, String)> = serde_json::from_str(&json).unwrap_or_else(|e| {
        tracing::warn!("the primaries kept in this file do not read ({e}): forgotten");
        Vec::new()
    });
    Ok(members
        .into_iter()
        .map(|(addr, public_key)| crate::net::PrimaryMember { addr, public_key })
        .collect())
}

/// Keeps the primaries a primary told of, those that make sense (an address, a key), in the
/// device's file; returns them.
pub(super) fn keep_known_primaries(
    c: &rusqlite::Connection,
    told: Vec<crate::net::PrimaryMember>,
) -> Result<Vec<crate::net::PrimaryMember>> {
    let members: Vec<crate::net::PrimaryMember> = told
        .into_iter()
        .filter(|m| {
            Endpoint::from_addr(&m.addr).is_some() && PublicKey::from_hex(&m.public_key).is_ok()
        })
        .take(MAX_KNOWN_PRIMARIES)
        .collect();
    let pairs: Vec<(&str, &str)> = members
        .iter()
        .map(|m| (m.addr.as_str(), m.public_key.as_str()))
        .collect();
    let json = serde_json::to_string(&pairs).unwrap_or_default();
    crate::store::write_txn(c, |c| crate::store::meta_set(c, KNOWN_PRIMARIES, json))?;
    Ok(members)
}

/// A device sends nothing (not even its sign-up data) to a primary other than the one that
/// admitted it, or the primaries of its cluster as that one told: at the same address may
/// now be another network's primary, or an impostor.
pub(super) fn check_primary_key(shared: &Shared, ep: &Endpoint, key: &PublicKey) -> Result<()> {
    let pinned = *shared.primary_key.lock().unwrap_or_else(|p| p.into_inner());
    let vouched = || {
        let hex = key.to_hex();
        shared
            .known_primaries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|m| m.public_key.eq_ignore_ascii_case(&hex))
    };
    match pinned {
        Some(known) if known != *key && !vouched() => Err(Error::rule(format!(
            "the primary at {ep} presents key {key}, not the key {known} of the primary that \
             admitted this device: it is another network's primary or an impostor, and gets \
             nothing from this device. If this network's primary was re-created with a new \
             key, open a fresh device file and sign up or log in again"
        ))),
        _ => Ok(()),
    }
}

fn tickets(
    shared: &Shared,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Resumption>> {
    shared
        .session_tickets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The handshake with the primary at `ep`: resumed with the ticket it last handed this
/// device, if one is still good, else the full one. A ticket that did not serve is dropped.
async fn handshake(shared: &Shared, ep: &Endpoint, tcp: TcpStream) -> Result<SecureStream> {
    let key = ep.to_string();
    let ticket = tickets(shared).get(&key).filter(|t| t.is_fresh()).cloned();
    let Some(ticket) = ticket else {
        return Ok(SecureStream::connect(tcp, &shared.keys, &shared.handshake).await?);
    };
    let stream = SecureStream::resume(tcp, &shared.keys, &shared.handshake, &ticket).await;
    if !stream.as_ref().is_ok_and(SecureStream::resumed) {
        // Not taken (the primary restarted, say) or the handshake failed: a primary of an
        // older version reads a ticket as garbage and hangs up, so the next try goes without.
        tickets(shared).remove(&key);
    }
    Ok(stream?)
}

async fn recv_msg(rd: &mut SecureReader) -> Result<Message> {
    Ok(Message::decode(&rd.recv().await?)?)
}

/// The meta key of the public key (hex) a device went on from with `PRAGMA new_identity`,
/// its file having been found a copy of another device's.
pub(crate) const CLONE_OF_KEY: &str = "clone_of";

/// What a device tells about itself in its Hello: its platform, its heartbeat's pace (the
/// primary sends heartbeats at that pace and expects them at it), the epoch of the log its
/// position belongs to (`log::epochs`; protocol 7), when its file was found a copy of
/// another device's, the key of that device (`clone_of`), for the backend that approves it,
/// and the ids it was approved under (`approved_as`), which a primary restored from an older
/// copy does not know but may have kept for it (`node::restored_ids`).
fn device_info(
    heartbeat: Duration,
    log_epoch: Option<u64>,
    clone_of: Option<String>,
    identity: &Identity,
) -> String {
    let mut info = serde_json::json!({
        "platform": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "engine": concat!("octodb ", env!("CARGO_PKG_VERSION")),
        "heartbeat_s": heartbeat.as_secs(),
        "log_epoch": log_epoch,
    });
    if let Some(key) = clone_of {
        info["clone_of"] = serde_json::Value::String(key);
    }
    if identity.node_id() != 0 {
        info[CLAIM_FIELD] = serde_json::json!({
            "node_id": identity.node_id(),
            "user_id": identity.user_id(),
        });
    }
    info.to_string()
}

/// The log's epochs as the primary told them; with `resync`, the primary is behind this
/// device (restored from an older copy): the device says so, puts back into its outbox its
/// transactions the primary lost, and the download that follows goes over its data.
async fn take_log_history(
    shared: &Arc<Shared>,
    epochs: Vec<crate::log::epochs::Epoch>,
    resync: Option<String>,
) -> Result<bool> {
    let over_data = resync.is_some();
    ask(shared, |reply| Job::LogHistory {
        epochs,
        resync: over_data,
        reply,
    })
    .await?;
    if let Some(reason) = resync {
        tracing::warn!(
            "{reason}: this device downloads the primary's data again, keeping its pending work"
        );
        shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_error = Some(format!("{reason}. {RESYNC_NOTE}"));
        shared.emit(Event::PrimaryBehind { reason });
    }
    Ok(over_data)
}

/// A session's end as `sync_error` tells it: the primary's address, or, when this device's
/// own disk refused a write (the error is not the primary's), this device.
fn session_error(ep: &str, e: &Error) -> String {
    match e {
        Error::Sqlite(s) if crate::store::disk_refused(s) => {
            format!(
                "this device cannot write what it receives from {ep} ({e}): if its disk is \
                 full, free space here; sync goes on by itself"
            )
        }
        _ => format!("{ep}: {e}"),
    }
}

/// What `sync_error` says while a device downloads again; it goes once the download ends.
pub(super) const RESYNC_NOTE: &str = "This device downloads the primary's data again, keeping \
     its pending work (and sending again any of its transactions the primary lost); rows the \
     primary no longer has are removed here";

/// How a session ended without error.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Reconnect,
    /// The primaries need a (new) sign-up or login from the app first.
    WaitForRequest,
    /// This primary does not serve devices now (`reason`): the leader is there (or being
    /// elected).
    NotLeader {
        leader: Option<Endpoint>,
        reason: String,
    },
}

fn auth_state_is(shared: &Shared, state: &str) -> bool {
    shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .auth_state
        .as_deref()
        == Some(state)
}

fn has_auth_request(shared: &Shared) -> bool {
    shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .auth_request
        .is_some()
}

fn set_auth(shared: &Shared, state: Option<&str>, error: Option<String>) {
    let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
    live.auth_state = state.map(String::from);
    if state.is_none() || error.is_some() {
        live.auth_error = error;
    }
}

async fn session(shared: &Arc<Shared>, ep: &Endpoint) -> Result<Flow> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep.to_addr_string()))
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(|e| Error::io(format!("connecting to {ep}"), e))?;
    let stream = handshake(shared, ep, tcp).await?;
    let primary_key = stream.peer().public_key;
    // With a primary of protocol 4 or newer, this device sends heartbeats and the primary
    // answers them, so silence means a dead connection; older ones have none and only TCP
    // can tell.
    let protocol = stream.protocol_version();
    let heartbeat = (protocol >= version::HEARTBEATS).then_some(shared.cfg.heartbeat);
    check_primary_key(shared, ep, &primary_key)?;
    let (mut rd, mut wr) = stream.into_split();
    // The primary answers a Hello at once: a path cut right after the handshake must not
    // leave this device waiting for a Welcome forever.
    rd.set_idle_timeout(heartbeat.map(crate::uri::dead_after));
    let last_seq = *shared.feed.borrow();
    // A device with nothing yet downloads first (and one whose primary is behind it, below).
    let mut downloads = last_seq == 0;
    let (epoch, clone_of) = shared
        .read(move |c| {
            let epoch = crate::log::epochs::at(&crate::log::epochs::load(c)?, last_seq);
            Ok((epoch, crate::store::meta_get::<String>(c, CLONE_OF_KEY)?))
        })
        .await?;
    let unauthorized = shared.identity.node_id() == 0;
    // An approved device makes a request only when the primaries asked it for one (a primary
    // restored from an older copy does not know it: `Node::request_auth`).
    let auth = shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .auth_request
        .clone();
    let hello = Message::Hello {
        role: Role::Secondary,
        last_seq,
        info: device_info(shared.cfg.heartbeat, epoch, clone_of, &shared.identity),
        auth,
    };
    wr.send(&hello.encode()).await?;
    wr.flush().await?;
    // While the backend decides on a request, heartbeats go both ways.
    let mut pending = false;
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let msg = tokio::select! {
            m = recv_msg(&mut rd) => m?,
            () = beat_due(heartbeat.filter(|_| pending), last_sent) => {
                send_message(&mut wr, &Message::Heartbeat).await?;
                last_sent = tokio::time::Instant::now();
                continue;
            }
        };
        match msg {
            Message::Heartbeat => {}
            Message::Welcome {
                node_id,
                user_id,
                last_decided_txn,
                ..
            } => {
                ask(shared, |reply| Job::Welcome {
                    node_id,
                    user_id,
                    primary_key,
                    last_decided_txn,
                    reply,
                })
                .await?;
                {
                    let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
                    live.auth_request = None;
                    live.sync_error = None;
                }
                set_auth(shared, None, None);
                if protocol >= version::LOG_EPOCHS {
                    // Before anything is sent: if the primary is behind this device, the
                    // transactions it lost go back into the outbox first.
                    match recv_msg(&mut rd).await? {
                        Message::LogHistory { epochs, resync } => {
                            downloads |= take_log_history(shared, epochs, resync).await?;
                        }
                        other => {
                            return Err(NetError::Malformed(format!(
                                "expected LogHistory after Welcome, got {}",
                                other.kind()
                            ))
                            .into())
                        }
                    }
                }
                break;
            }
            Message::AuthPending => {
                set_auth(shared, Some("pending"), None);
                pending = true;
            }
            Message::AuthRequired { reason }
                if !unauthorized && reason.starts_with(super::restored_ids::LOG_IN_AGAIN) =>
            {
                // A primary restored from a copy older than this device's approval: the app
                // logs in again (`Node::request_auth` takes it in this state only), and the
                // device keeps its ids.
                tracing::warn!(primary = %ep, "{reason}");
                set_auth(shared, Some("required"), Some(reason));
                return Ok(Flow::WaitForRequest);
            }
            Message::AuthRequired { reason } if !unauthorized => {
                // This device was approved once; the backend has taken that back.
                let reason = if reason.starts_with(super::admission::REVOKED) {
                    reason
                } else {
                    format!("the primaries no longer accept this device ({reason})")
                };
                tracing::warn!(primary = %ep, "{reason}");
                set_auth(shared, Some("rejected"), Some(reason.clone()));
                shared.emit(Event::AuthorizationRefused { reason });
                return Ok(Flow::WaitForRequest);
            }
            Message::AuthRequired { reason } => {
                tracing::info!(primary = %ep, "{reason}");
                set_auth(shared, Some("required"), None);
                return Ok(Flow::WaitForRequest);
            }
            Message::Refused { reason } if unauthorized || has_auth_request(shared) => {
                tracing::warn!(primary = %ep, "the primary refused this node: {reason}");
                shared
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .auth_request = None;
                // An approved device logging in again for a restored primary may try again
                // (as the user whose rows it holds).
                let state = if unauthorized { "rejected" } else { "required" };
                set_auth(shared, Some(state), Some(reason.clone()));
                shared.emit(Event::AuthorizationRefused { reason });
                return Ok(Flow::WaitForRequest);
            }
            Message::Refused { reason } => {
                return Err(Error::rule(format!(
                    "the primary refused this node: {reason}"
                )))
            }
            Message::NotLeader { leader, reason } => {
                tracing::info!(primary = %ep, "{reason}");
                shared
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sync_error = Some(format!("{ep}: {reason}"));
                return Ok(Flow::NotLeader {
                    leader: leader.as_deref().and_then(Endpoint::from_addr),
                    reason,
                });
            }
            other => {
                return Err(
                    NetError::Malformed(format!("expected Welcome, got {}", other.kind())).into(),
                )
            }
        }
    }
    // A process suspended for longer than its primary may let the connection stay silent ends
    // its session on resuming (`awake`). Without heartbeats, the default pace's limit.
    let awake = super::awake::Awake::new(heartbeat.unwrap_or(crate::uri::DEFAULT_HEARTBEAT));
    {
        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        live.connected_to = Some(ep.to_string());
        // A primary of protocol 9 or older never says when this device has caught up: the
        // connection is all it can go by (README, "Waiting for sync").
        live.caught_up = protocol < version::CAUGHT_UP;
        live.awake = Some(awake.clone());
    }
    shared.emit(Event::Connected {
        peer: ep.to_string(),
    });
    tracing::info!(primary = %ep, "connected");
    // Ended with the session even when the session is aborted midway (the node closing): the
    // sender holds the socket's write half, and would keep the connection open forever.
    // While a download runs, nothing is sent: a transaction decided meanwhile would be
    // decided inside the downloaded state, and its decision, before the download's position,
    // never streamed to this device (its outbox would wait for it for ever).
    let (downloaded, download_done) = tokio::sync::watch::channel(!downloads);
    let sender = AbortOnDrop(tokio::spawn(send_outbox(
        shared.clone(),
        wr,
        heartbeat,
        download_done,
    )));
    let mut suspended = AbortOnDrop(tokio::spawn({
        let shared = shared.clone();
        async move {
            let gap = awake.until_suspended().await;
            // Not caught up from now on, before the session ends: what it read on resuming
            // was sent before its primary gave it up.
            shared
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .caught_up = false;
            tracing::info!(
                seconds = gap.as_secs(),
                "this process did not run for a while (suspended): the session ends, and the \
                 next one catches up"
            );
        }
    }));
    let result = tokio::select! {
        result = receive(shared, &mut rd, &downloaded, (ep, primary_key)) => result,
        _ = &mut suspended.0 => Err(Error::rule(
            "this device's process was suspended for longer than its connection may stay \
             silent: it connects again",
        )),
    };
    drop(suspended);
    drop(sender);
    if shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .download
        .take()
        .is_some()
    {
        let _ = shared.jobs.send(Job::SnapshotAbort).await;
    }
    result
}

/// Applies what the primary sends until the session ends: `Reconnect` when it closes (or the
/// node stops), `NotLeader` when the primary stopped leading its cluster.
async fn receive(
    shared: &Arc<Shared>,
    rd: &mut SecureReader,
    downloaded: &tokio::sync::watch::Sender<bool>,
    (ep, primary_key): (&Endpoint, PublicKey),
) -> Result<Flow> {
    let mut stop = shared.shutdown.subscribe();
    let mut writing = WritesInFlight::default();
    let session = super::next_session();
    // Digests of the decisions of this device's own transactions in the next entries.
    let mut own_digests = std::collections::HashMap::new();
    // Protocol 13: the primaries' renames, for the download that follows.
    let mut renames: Option<Vec<crate::store::renames::Rename>> = None;
    loop {
        let msg = tokio::select! {
            m = recv_msg(rd) => m?,
            // The session ends (and the node retries on a new one) as soon as a write fails,
            // not at the next message, which may be long in coming.
            e = writing.failure(shared) => return Err(e),
            _ = stop.changed() => return Ok(Flow::Reconnect),
        };
        match msg {
            Message::Heartbeat => continue,
            // The primary could not take this device's transactions (its disk is full, say),
            // or stopped leading its cluster: they stay in the outbox and go again on the
            // next connection.
            Message::Refused { reason } => {
                return Err(Error::rule(format!(
                    "the primary ended the session: {reason}"
                )))
            }
            Message::PrimaryMembers { members } => {
                ask(shared, |reply| Job::PrimaryMembers { members, reply }).await?;
                continue;
            }
            Message::LogHistory { epochs, resync } => {
                take_log_history(shared, epochs, resync).await?;
                continue;
            }
            Message::OwnDigests { txns } => {
                own_digests.extend(txns);
                continue;
            }
            Message::Renames { renames: list } => {
                renames = Some(list);
                continue;
            }
            Message::SessionTicket {
                ticket,
                secret,
                lifetime_s,
            } => {
                let ticket = Resumption::received(ticket, secret, primary_key, lifetime_s);
                tickets(shared).insert(ep.to_string(), ticket);
                continue;
            }
            Message::CopiedFile { txn, reason } => {
                tracing::warn!("the primary ended the session: {reason}");
                ask(shared, |reply| Job::CopiedFile { txn, reply }).await?;
                return Err(Error::CopiedFile { txn });
            }
            Message::NotLeader { leader, reason } => {
                tracing::info!("{reason}");
                shared
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .sync_error = Some(format!("{ep}: {reason}"));
                return Ok(Flow::NotLeader {
                    leader: leader.as_deref().and_then(Endpoint::from_addr),
                    reason,
                });
            }
            // Protocol 11: the download's row count, for its progress; nothing to write.
            Message::SnapshotTotal { total_rows } => {
                let progress = {
                    let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((_, total)) = live.download.as_mut() {
                        *total = total_rows;
                    }
                    live.download
                };
                if let Some((rows, total)) = progress {
                    shared.emit(Event::Download { rows, total });
                }
                continue;
            }
            _ => {}
        }
        // Only download rows, and entries, may overtake each other's writing; anything else
        // (a position that moved, which the feed must not announce before the entries ahead
        // of it are written) comes after them.
        let limit = match &msg {
            Message::SnapshotRows { .. } => CHUNKS_IN_FLIGHT - 1,
            Message::Entries { entries, .. } if !entries.is_empty() => ENTRIES_IN_FLIGHT - 1,
            _ => 0,
        };
        writing.wait_until_at_most(shared, limit).await?;
        match msg {
            Message::SnapshotBegin {
                schema, total_rows, ..
            } => {
                tracing::debug!(total_rows, "initial download begins");
                set_download(shared, Some((0, total_rows)));
                let renames = renames.take();
                ask(shared, |reply| Job::SnapshotBegin {
                    schema,
                    renames,
                    reply,
                })
                .await?;
            }
            Message::SnapshotRows {
                table,
                columns,
                rows,
            } => {
                let n = rows.len() as u64;
                let written = submit(shared, |reply| Job::SnapshotRows {
                    table,
                    columns,
                    rows,
                    reply,
                })
                .await?;
                writing.0.push_back((n, written));
            }
            Message::SnapshotEnd { seq } => {
                tracing::debug!(seq, "initial download fully received");
                ask(shared, |reply| Job::SnapshotEnd { seq, reply }).await?;
                set_download(shared, None);
                downloaded.send_replace(true);
            }
            // Only the position moved: nothing to write, and the file's position is
            // written with the next entries that change something.
            Message::Entries { entries, up_to } if entries.is_empty() => {
                shared.advance_feed(up_to);
            }
            // Everything before it is written (no write may still be in flight here).
            Message::CaughtUp { up_to } => {
                tracing::debug!(up_to, "caught up with the primary");
                shared.advance_feed(up_to);
                shared
                    .live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .caught_up = true;
                shared.emit(Event::CaughtUp { seq: up_to });
            }
            Message::Entries { entries, up_to } => {
                tracing::trace!(up_to, "entries received");
                let own_digests = std::mem::take(&mut own_digests);
                let written = submit(shared, |reply| Job::Entries {
                    entries,
                    up_to,
                    own_digests,
                    session,
                    reply,
                })
                .await?;
                // No download progress to report for these.
                writing.0.push_back((0, written));
            }
            other => {
                return Err(NetError::Malformed(format!(
                    "unexpected {} from a primary",
                    other.kind()
                ))
                .into())
            }
        }
    }
}

/// Download chunks and messages of entries the writer has been given, oldest first, with
/// their download rows.
#[derive(Default)]
struct WritesInFlight(VecDeque<(u64, oneshot::Receiver<Result<()>>)>);

impl WritesInFlight {
    /// Wait for the oldest to be written until at most `n` remain.
    async fn wait_until_at_most(&mut self, shared: &Shared, n: usize) -> Result<()> {
        while self.0.len() > n {
            self.next_written(shared).await?;
        }
        Ok(())
    }

    /// Pending while every write succeeds (and none is left); the first that fails. Safe to
    /// drop at any await: a write is taken off only once its outcome is in.
    async fn failure(&mut self, shared: &Shared) -> Error {
        loop {
            if self.0.is_empty() {
                return std::future::pending().await;
            }
            if let Err(e) = self.next_written(shared).await {
                return e;
            }
        }
    }

    /// The oldest write's outcome; a written download chunk is reported as progress.
    async fn next_written(&mut self, shared: &Shared) -> Result<()> {
        let Some((rows, written)) = self.0.front_mut() else {
            return Ok(());
        };
        let outcome = answer(written).await;
        let rows = *rows;
        self.0.pop_front();
        outcome?;
        if rows == 0 {
            return Ok(());
        }
        let progress = {
            let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
            live.download = live.download.map(|(d, t)| (d + rows, t));
            live.download
        };
        if let Some((rows, total)) = progress {
            shared.emit(Event::Download { rows, total });
        }
        Ok(())
    }
}

fn set_download(shared: &Shared, d: Option<(u64, u64)>) {
    shared
        .live
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .download = d;
}

/// A task that is aborted when this handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Send every pending transaction once per connection, in order; then each new one as it is
/// committed: as handed over in memory when it comes next in order, else read from the outbox
/// (after a gap, or when the hand-over queue was full). The primaries ignore ids they have
/// already decided, so a resend is harmless. With `heartbeat`, a heartbeat goes out whenever
/// nothing else has for that long.
async fn send_outbox(
    shared: Arc<Shared>,
    mut wr: SecureWriter,
    heartbeat: Option<Duration>,
    mut download_done: tokio::sync::watch::Receiver<bool>,
) {
    // Held for the whole session: the next session waits for this one's sender to end.
    let mut fresh = shared.fresh_txns_rx.lock().await;
    let mut sent = 0u64;
    let mut from_outbox = true;
    let mut last_sent = tokio::time::Instant::now();
    // Heartbeats only, until the download ends.
    while !*download_done.borrow_and_update() {
        tokio::select! {
            changed = download_done.changed() => if changed.is_err() { return },
            () = beat_due(heartbeat, last_sent) => {
                if send_message(&mut wr, &Message::Heartbeat).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
        }
    }
    loop {
        let txns = if from_outbox {
            let after = sent;
            let txns = match shared
                .read(move |c| outbox::read_after(c, after, SEND_BATCH))
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("cannot read the outbox: {e}");
                    return;
                }
            };
            // All sent: from now on, take commits as they are handed over.
            from_outbox = !txns.is_empty();
            txns
        } else {
            let first = tokio::select! {
                t = fresh.recv() => match t {
                    Some(t) => t,
                    None => return,
                },
                _ = shared.outbox_changed.notified() => {
                    from_outbox = true;
                    continue;
                }
                () = beat_due(heartbeat, last_sent) => {
                    if send_message(&mut wr, &Message::Heartbeat).await.is_err() {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                    continue;
                }
            };
            let queued = std::iter::from_fn(|| fresh.try_recv().ok());
            let mut txns: Vec<(u64, crate::changes::ChangeSet)> = Vec::new();
            for (id, changes) in std::iter::once(first).chain(queued) {
                let next = txns.last().map_or(sent, |t| t.0) + 1;
                if id < next {
                    continue; // already sent, from the outbox
                }
                if id > next {
                    from_outbox = true; // one is missing here: the outbox has it
                    break;
                }
                txns.push((id, changes));
            }
            txns
        };
        if txns.is_empty() {
            continue;
        }
        sent = txns.last().map_or(sent, |t| t.0);
        tracing::trace!(up_to = sent, "sending transactions");
        // Counted as sent before they may have left: a transaction the primaries might have
        // must never be taken for the work of another copy of this file (see
        // `Writer::txn_ids_before_sending`).
        shared
            .sent_txn_max
            .fetch_max(sent, std::sync::atomic::Ordering::AcqRel);
        // In 1 MiB messages, as the primary streams: on a link that drops every few megabytes,
        // each connection keeps what it carried (a 16 MiB batch never got through).
        let runs = crate::wire_size::runs_within(txns, crate::wire_size::STREAM_BUDGET, |t| {
            crate::wire_size::change_set_bound(&t.1)
        });
        for txns in runs {
            if send_message(&mut wr, &Message::Txns { txns })
                .await
                .is_err()
            {
                return;
            }
        }
        last_sent = tokio::time::Instant::now();
    }
}

async fn send_message(wr: &mut SecureWriter, msg: &Message) -> Result<(), NetError> {
    wr.send(&msg.encode()).await?;
    wr.flush().await
}

/// Ready when a heartbeat is due: `heartbeat` after the last message sent (never without
/// heartbeats).
async fn beat_due(heartbeat: Option<Duration>, last_sent: tokio::time::Instant) {
    match heartbeat {
        Some(every) => tokio::time::sleep_until(last_sent + every).await,
        None => std::future::pending().await,
    }
}
