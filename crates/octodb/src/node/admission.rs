//! A primary deciding whether a connected node may join (SPEC §4.2–4.3). Until it is approved a
//! node gets nothing but answers about its request, and nothing it sends is accepted.

use super::members::{self, Admission, Member, Registered};
use super::restored_ids;
use super::writer::{ask, Job};
use super::Shared;
use crate::auth::{self, Action, AuthRequest, Decision, MAX_PENDING, MAX_REQUEST_DATA};
use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::net::{AuthAsk, Message, NetError, SecureReader, SecureWriter};
use crate::uri::{AuthMode, Role};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Who is asking, as the session knows it after the handshake and Hello.
pub(super) struct Applicant {
    pub pubkey: PublicKey,
    pub addr: SocketAddr,
    pub info: String,
    pub ask: Option<AuthAsk>,
    /// The device's heartbeat interval when it sends heartbeats (protocol 4 and newer).
    pub heartbeat: Option<std::time::Duration>,
}

/// Decide on the node at the other end. `Ok(None)`: it was told why it cannot join (yet) and
/// the session ends.
pub(super) async fn admit(
    shared: &Arc<Shared>,
    who: Applicant,
    rd: &mut SecureReader,
    wr: &mut SecureWriter,
) -> Result<Option<Registered>> {
    if shared.cfg.auth == AuthMode::None {
        let (pubkey, address, info) = (who.pubkey, who.addr.to_string(), who.info);
        let admitted = ask(shared, |reply| Job::Register {
            pubkey,
            address,
            info,
            reply,
        })
        .await?;
        return finish(wr, admitted).await;
    }
    let key = who.pubkey.to_hex();
    let known: Option<Member> = match shared.approved.get(&key) {
        Ok(m) => Some(m),
        Err(generation) => {
            let k2 = key.clone();
            let m = shared.read(move |c| members::lookup(c, &k2)).await?;
            if let Some(m) = m.as_ref().filter(|m| m.auth_state == "approved") {
                shared.approved.remember(&key, m.clone(), generation);
            }
            m
        }
    };
    if let Some(m) = known.as_ref().filter(|m| m.auth_state == "approved") {
        let role = if m.node_type == "primary" {
            Role::Primary
        } else {
            Role::Secondary
        };
        let registered = Registered {
            node_id: m.node_id,
            user_id: m.user_id.unwrap_or(0),
        };
        return finish(wr, Admission::Approved { registered, role }).await;
    }
    // A key this primary does not know, approved under ids a newer copy of its file handed
    // out: the backend decides again, but on ids it may keep (`restored_ids`).
    let rejected = known.as_ref().is_some_and(|m| m.auth_state == "rejected");
    // (A key the backend rejected stays out: its claim is not heard.)
    let claim = restored_ids::claim_in(&who.info).filter(|_| !rejected);
    if let Some(claim) = claim {
        let judged = shared.read(move |c| restored_ids::judge(c, claim)).await?;
        if let Err(reason) = judged {
            return refuse(wr, reason).await;
        }
    }
    // A device whose approval the backend took back stays out, whatever it asks: a new
    // sign-up or login would put it to the backend's callbacks or service again, which may
    // approve it anew (a key rejected before it was ever approved may ask again, with a
    // better password say). Only an operator's approval lets it back.
    if known
        .as_ref()
        .is_some_and(|m| m.auth_state == "rejected" && m.node_id != 0)
    {
        let reason = format!(
            "{REVOKED}: it stays out, whatever it asks, until an operator approves its key again \
             (the admin console, or PRAGMA authorize_user on a primary)"
        );
        send_now(wr, &Message::AuthRequired { reason }).await?;
        return Ok(None);
    }
    let already_waiting = known.as_ref().is_some_and(|m| m.auth_state == "pending");
    let (action, data) = match (shared.cfg.auth, who.ask) {
        (
            AuthMode::User,
            Some(AuthAsk {
                action: a @ (Action::UserSignup | Action::UserLogin),
                data,
            }),
        ) => (a, Some(data)),
        (AuthMode::User, _) if already_waiting => (Action::UserSignup, None),
        (AuthMode::User, _) => {
            if known.is_none() {
                let (pubkey, address) = (key.clone(), who.addr.to_string());
                let info = node_info(&key, "secondary", &who.addr, &who.info);
                ask(shared, |reply| Job::Presence {
                    pubkey,
                    address,
                    info,
                    reply,
                })
                .await?;
            }
            let reason = match claim {
                Some(claim) => format!(
                    "{} (node {}), and does not know it: log in again with PRAGMA \
                     user_login='...' on the device, as its user {}. It keeps its node id, its \
                     data and its pending work",
                    restored_ids::LOG_IN_AGAIN,
                    claim.node_id,
                    claim.user_id
                ),
                None => "this network needs a user: run PRAGMA user_signup='...' or PRAGMA \
                         user_login='...' on the device"
                    .into(),
            };
            send_now(wr, &Message::AuthRequired { reason }).await?;
            return Ok(None);
        }
        _ => (Action::NewNode, None),
    };
    if data.as_ref().is_some_and(|d| d.len() > MAX_REQUEST_DATA) {
        return refuse(
            wr,
            format!("the request data is larger than {MAX_REQUEST_DATA} bytes"),
        )
        .await;
    }
    let Some(_slot) = WaitingSlot::take(shared) else {
        return refuse(
            wr,
            "too many requests are waiting for the backend; try again later".into(),
        )
        .await;
    };
    // Subscribe before anything can decide, so that no decision is missed.
    let mut decided = shared.auth_decided.subscribe();
    let node_info = node_info(&key, "secondary", &who.addr, &who.info);
    let fresh_request = !(already_waiting && data.is_none());
    // This session puts a fresh request to this process's callback: the task deciding waiting
    // requests (`waiting_requests`) leaves it alone meanwhile. One carried over from another
    // leader is that task's to put.
    let _asking = fresh_request.then(|| shared.asking.begin(&key));
    let decision = if fresh_request {
        let (pubkey, address, info, d) = (
            key.clone(),
            who.addr.to_string(),
            node_info.clone(),
            data.clone(),
        );
        ask(shared, |reply| Job::AuthRecord {
            pubkey,
            address,
            info,
            action,
            data: d,
            reply,
        })
        .await?;
        let request = AuthRequest {
            action,
            data,
            pubkey: key.clone(),
            node_info,
        };
        decide_now(shared, request).await
    } else {
        Decision::Pending
    };
    // The callback's answer counts only while the request still waits: an operator may have
    // decided it meanwhile (the first decision stands), and a sign-up answered with a user
    // that exists is refused. Either way the session waits for the decision that stands.
    let recorded = match decision {
        Decision::Pending => None,
        d => match record(shared, key.clone(), d, members::Known::Pending).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                tracing::warn!(pubkey = %key, "the backend's answer is not recorded: {e}");
                None
            }
        },
    };
    let outcome = match recorded {
        Some(outcome) => outcome,
        None => {
            send_now(wr, &Message::AuthPending).await?;
            // The backend may take long: the device's heartbeats (answered here) tell a quiet
            // wait from a dead connection, which must not hold a waiting slot forever.
            rd.set_idle_timeout(who.heartbeat.map(crate::uri::dead_after));
            wait_for_decision(shared, &key, &mut decided, rd, wr).await?
        }
    };
    finish(wr, outcome).await
}

/// How a revoked device is told why it is refused (it checks again now and then, so that an
/// operator's new approval lets it back).
pub(crate) const REVOKED: &str = "the backend revoked this device's approval";

/// Under `auth=`: the node id of a primary asking to join the cluster, once its key is
/// approved as a primary. A key not decided yet is recorded as seen (listed by `PRAGMA nodes`
/// and the admin console, so that `PRAGMA authorize_node` and the console can approve it) and
/// put to the backend's `new_node` callback at each attempt; meanwhile the joiner is told it
/// waits, and asks again. It is not kept as a waiting request: the task that puts waiting
/// requests to the callbacks would record an answer meant for devices ("secondary") as this
/// key's, where only a primary's approval may let it join.
pub(super) async fn approved_primary(
    shared: &Arc<Shared>,
    key: &str,
    addr: SocketAddr,
    told: &str,
) -> std::result::Result<u32, String> {
    let k = key.to_string();
    let found = shared
        .read(move |c| members::lookup(c, &k))
        .await
        .map_err(|e| format!("cannot read the nodes: {e}"))?;
    let waiting = format!(
        "this primary waits for the backend to approve its key as a primary: on the leader run \
         PRAGMA authorize_node='{key}:primary' (or approve it in the admin console), or let the \
         new_node callback answer \"primary\"; it asks again meanwhile"
    );
    match &found {
        Some(m) if m.auth_state == "approved" && m.node_type == "primary" => return Ok(m.node_id),
        Some(m) if m.auth_state == "approved" => {
            return Err(format!(
                "this key is approved as a device, not as a primary: on the leader run PRAGMA \
                 authorize_node='{key}:primary'"
            ))
        }
        Some(m) if m.auth_state == "rejected" => {
            return Err("the backend rejected this primary's key".into())
        }
        _ => {}
    }
    let info = node_info(key, "primary", &addr, told);
    if found.is_none() {
        let (pubkey, address, seen_info) = (key.to_string(), addr.to_string(), info.clone());
        ask(shared, |reply| Job::Presence {
            pubkey,
            address,
            info: seen_info,
            reply,
        })
        .await
        .map_err(|e| format!("cannot record the primary's key: {e}"))?;
    }
    let Some(_slot) = WaitingSlot::take(shared) else {
        return Err("too many requests are waiting for the backend; try again later".into());
    };
    let request = AuthRequest {
        action: Action::NewNode,
        data: None,
        pubkey: key.to_string(),
        node_info: info,
    };
    let decision = match decide_now(shared, request).await {
        // An answer for a device ("secondary", a user) is no approval as a primary.
        Decision::Pending | Decision::Node(Role::Secondary) | Decision::User(_) => {
            return Err(waiting)
        }
        d => d,
    };
    match authorize(shared, key.to_string(), decision).await {
        Ok(Admission::Approved {
            registered,
            role: Role::Primary,
        }) => Ok(registered.node_id),
        Ok(Admission::Approved { .. }) => Err(format!(
            "the backend approved this key as a device, not as a primary: on the leader run \
             PRAGMA authorize_node='{key}:primary'"
        )),
        Ok(Admission::Rejected(reason)) => Err(reason),
        Err(e) => Err(format!("cannot record the decision: {e}")),
    }
}

/// Ask the backend's callback now, on a worker thread; without one the request waits for
/// `PRAGMA authorize_*`.
async fn decide_now(shared: &Arc<Shared>, request: AuthRequest) -> Decision {
    let service = shared
        .service
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|(_, requests)| requests.clone());
    if let Some(service) = service {
        return match service.try_send(request) {
            Ok(()) => Decision::Pending,
            Err(_) => Decision::Reject("the authorization service is busy; try again later".into()),
        };
    }
    let Some(f) = shared.callbacks.get(request.action) else {
        return Decision::Pending;
    };
    tokio::task::spawn_blocking(move || auth::call(&f, &request))
        .await
        .unwrap_or_else(|_| Decision::Reject("the backend failed to decide (error)".into()))
}

/// Record a decision (from a callback or a PRAGMA) and let waiting sessions know.
pub(super) async fn authorize(
    shared: &Arc<Shared>,
    pubkey: String,
    decision: Decision,
) -> Result<Admission> {
    record(shared, pubkey, decision, members::Known::Any).await
}

/// Record `decision` on the keys `known` allows (a session's own request: only while it
/// still waits).
async fn record(
    shared: &Arc<Shared>,
    pubkey: String,
    decision: Decision,
    known: members::Known,
) -> Result<Admission> {
    ask(shared, |reply| Job::AuthDecide {
        pubkey,
        decision,
        known,
        reply,
    })
    .await
}

async fn wait_for_decision(
    shared: &Arc<Shared>,
    key: &str,
    decided: &mut tokio::sync::broadcast::Receiver<(String, Admission)>,
    rd: &mut SecureReader,
    wr: &mut SecureWriter,
) -> Result<Admission> {
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            d = decided.recv() => match d {
                Ok((k, outcome)) if k == key => return Ok(outcome),
                Ok(_) => continue,
                // Missed decisions while lagging: look at the file.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let k2 = key.to_string();
                    if let Some(m) = shared.read(move |c| members::lookup(c, &k2)).await? {
                        if m.auth_state != "pending" {
                            return Err(Error::rule("the decision arrived while busy; the node will reconnect"));
                        }
                    }
                }
                Err(_) => return Err(Error::Closed),
            },
            m = rd.recv() => {
                // A waiting node has nothing to say but heartbeats; anything else ends the
                // session.
                let bytes = m?;
                let message = Message::decode(&bytes);
                if matches!(message, Ok(Message::Heartbeat)) {
                    send_now(wr, &Message::Heartbeat).await?;
                    continue;
                }
                let kind = message.map(|m| m.kind()).unwrap_or("garbage");
                return Err(NetError::Malformed(format!("{kind} from a node that is not authorized")).into());
            }
            _ = stop.changed() => return Err(Error::Closed),
        }
    }
}

async fn finish(wr: &mut SecureWriter, outcome: Admission) -> Result<Option<Registered>> {
    match outcome {
        Admission::Approved {
            registered,
            role: Role::Secondary,
        } => Ok(Some(registered)),
        Admission::Approved {
            role: Role::Primary,
            ..
        } => {
            refuse(
                wr,
                "this key is approved as a primary: open that node with node=primary and \
                 connect= to join the cluster"
                    .into(),
            )
            .await
        }
        Admission::Rejected(reason) => refuse(wr, reason).await,
    }
}

async fn refuse(wr: &mut SecureWriter, reason: String) -> Result<Option<Registered>> {
    tracing::info!(%reason, "node refused");
    send_now(wr, &Message::Refused { reason }).await?;
    Ok(None)
}

pub(super) async fn send_now(wr: &mut SecureWriter, m: &Message) -> Result<()> {
    wr.send(&m.encode()).await?;
    wr.flush().await?;
    Ok(())
}

/// Tells the peer why it is refused; the session ends with that reason.
pub(super) async fn refuse_session(wr: &mut SecureWriter, reason: String) -> Result<()> {
    send_now(
        wr,
        &Message::Refused {
            reason: reason.clone(),
        },
    )
    .await?;
    Err(Error::rule(reason))
}

/// The node_info JSON the backend sees: SPEC §4.3.
fn node_info(pubkey: &str, node_type: &str, addr: &SocketAddr, told: &str) -> String {
    let told: serde_json::Value = serde_json::from_str(told).unwrap_or(serde_json::Value::Null);
    let mut info = serde_json::json!({
        "public_key": pubkey,
        "node_type": node_type,
        "address": addr.to_string(),
    });
    if let (Some(obj), serde_json::Value::Object(extra)) = (info.as_object_mut(), told) {
        for (k, v) in extra {
            obj.entry(k).or_insert(v);
        }
    }
    info.to_string()
}

/// One of the bounded places for a session waiting on the backend.
struct WaitingSlot<'a>(&'a Shared);

impl<'a> WaitingSlot<'a> {
    fn take(shared: &'a Shared) -> Option<WaitingSlot<'a>> {
        let prev = shared.waiting.fetch_add(1, Ordering::AcqRel);
        if prev >= MAX_PENDING {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WaitingSlot(shared))
    }
}

impl Drop for WaitingSlot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
