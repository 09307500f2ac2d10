//! The leader's side of its followers' requests (`cluster::forward`): app transactions, and
//! decisions on nodes that a follower's process took. Only from a member primary, only while
//! this primary leads.

use super::members::Known;
use super::writer::{ask, DeviceTxn, Job};
use super::Shared;
use crate::cluster::forward::{
    Applier, Decision, DecisionScope, DeviceAdmitted, ForwardOutcome, Forwarded, ForwardedDecision,
    ForwardedTxns, LeaderServices, Services,
};
use crate::crypto::PublicKey;
use crate::store::device_txn::Sender;
use rusqlite::OptionalExtension;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long the leader waits for a majority to hold a forwarded transaction.
const MAJORITY_WAIT_MAX: Duration = Duration::from_secs(10);

/// The leader's connection for forwarded transactions, opened on first use.
pub(crate) type Applying = Arc<Mutex<Option<Applier>>>;

/// What this primary does for its members' requests.
pub(super) fn services(shared: &Arc<Shared>) -> Services {
    Arc::new(Leader(Arc::downgrade(shared)))
}

struct Leader(Weak<Shared>);

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl LeaderServices for Leader {
    fn transaction(&self, peer: PublicKey, txn: Forwarded) -> Boxed<ForwardOutcome> {
        Box::pin(decide(self.0.clone(), peer, txn))
    }

    fn decision(
        &self,
        peer: PublicKey,
        decision: ForwardedDecision,
    ) -> Boxed<std::result::Result<(), String>> {
        Box::pin(record_decision(self.0.clone(), peer, decision))
    }

    fn admit_device(
        &self,
        peer: PublicKey,
        pubkey: String,
    ) -> Boxed<std::result::Result<DeviceAdmitted, String>> {
        Box::pin(admit_device(self.0.clone(), peer, pubkey))
    }

    fn device_txns(
        &self,
        peer: PublicKey,
        txns: ForwardedTxns,
    ) -> Boxed<std::result::Result<Option<u64>, String>> {
        Box::pin(device_txns(self.0.clone(), peer, txns))
    }
}

fn refused(reason: impl Into<String>) -> ForwardOutcome {
    ForwardOutcome::Refused {
        reason: reason.into(),
    }
}

/// Not applied because this primary cannot take writes now: the follower may send it again.
fn unavailable(reason: impl Into<String>) -> ForwardOutcome {
    ForwardOutcome::Unavailable {
        reason: reason.into(),
    }
}

/// The node id of `peer` if it is a member of this primary's cluster and this primary leads
/// it; else why the request is refused.
fn leading_for(shared: &Shared, peer: &PublicKey) -> std::result::Result<u32, &'static str> {
    let Some(proposer) = shared.cluster.get() else {
        return Err("the leader is starting");
    };
    if shared.is_shutting_down() {
        return Err("the leader is shutting down");
    }
    if !shared.cluster_view.borrow().leading {
        return Err("the primary it was sent to no longer leads the cluster");
    }
    let metrics = proposer.raft().metrics();
    let m = metrics.borrow();
    let key = peer.to_hex();
    let id = m
        .membership_config
        .membership()
        .nodes()
        .find(|(_, member)| member.public_key == key)
        .and_then(|(id, _)| u32::try_from(*id).ok());
    id.ok_or(NOT_A_MEMBER)
}

/// Why a request from a primary outside the cluster is refused (every other refusal of
/// [`leading_for`] is a matter of time: the request may be sent again).
const NOT_A_MEMBER: &str = "only the cluster's primaries send it requests";

async fn decide(shared: Weak<Shared>, peer: PublicKey, txn: Forwarded) -> ForwardOutcome {
    let Some(shared) = shared.upgrade() else {
        return unavailable("the leader is shutting down");
    };
    let origin = match leading_for(&shared, &peer) {
        Ok(id) => id,
        Err(why) if why == NOT_A_MEMBER => return refused(why),
        Err(why) => return unavailable(why),
    };
    let on_file = shared.clone();
    let decided = tokio::task::spawn_blocking(move || {
        let mut slot = on_file.forwarded.lock().unwrap_or_else(|p| p.into_inner());
        let applier = match slot.as_mut() {
            Some(a) => a,
            None => slot.insert(Applier::open(
                &on_file.cfg.path,
                on_file.file_key.get().as_ref(),
                u64::from(on_file.identity.node_id()),
            )?),
        };
        let Some(proposer) = on_file.cluster.get() else {
            return Ok(Decision::NotApplied(unavailable("the leader is stopping")));
        };
        let decided = applier.decide(proposer, origin, &txn);
        if decided.is_err() {
            *slot = None; // opened again next time (after a rekey, say)
        }
        decided
    })
    .await;
    let (response, entries) = match decided {
        Ok(Ok(Decision::Written { response, entries })) => (response, entries),
        Ok(Ok(Decision::NotApplied(outcome))) => return outcome,
        Ok(Err(e)) => {
            tracing::warn!(
                node = origin,
                "a forwarded transaction failed on the leader: {e}"
            );
            return refused(format!("the leader could not write it: {e}"));
        }
        Err(e) => return refused(format!("the leader's task failed: {e}")),
    };
    let last_seq = entries.last().map_or(0, |e| e.seq);
    let unconfirmed = |reason: String| ForwardOutcome::Unconfirmed { reason };
    match tokio::time::timeout(MAJORITY_WAIT_MAX, response.wait()).await {
        Ok(Ok(_)) => {
            shared.log_committed(entries, |_| None);
            ForwardOutcome::Committed { last_seq }
        }
        Ok(Err(e)) => unconfirmed(e.to_string()),
        Err(_) => unconfirmed("no majority confirmed it within 10 s".into()),
    }
}

async fn record_decision(
    shared: Weak<Shared>,
    peer: PublicKey,
    d: ForwardedDecision,
) -> std::result::Result<(), String> {
    let shared = shared.upgrade().ok_or("the leader is shutting down")?;
    let origin = leading_for(&shared, &peer)?;
    tracing::debug!(node = origin, pubkey = %d.pubkey, "a follower's decision on a node");
    let known = match d.scope {
        DecisionScope::Pending => Known::Pending,
        DecisionScope::Presented => Known::Presented,
        DecisionScope::Any => Known::Any,
    };
    ask(&shared, |reply| Job::AuthDecide {
        pubkey: d.pubkey,
        decision: d.decision,
        known,
        reply,
    })
    .await
    .map(drop)
    .map_err(|e| e.to_string())
}

/// A device that connected to follower `peer`: approved here, and its ids.
async fn admit_device(
    shared: Weak<Shared>,
    peer: PublicKey,
    pubkey: String,
) -> std::result::Result<DeviceAdmitted, String> {
    let shared = shared.upgrade().ok_or("the leader is shutting down")?;
    leading_for(&shared, &peer)?;
    let (registered, last_decided_txn) = approved_device(&shared, pubkey).await?;
    Ok(DeviceAdmitted {
        node_id: registered.node_id,
        user_id: registered.user_id,
        last_decided_txn,
    })
}

/// The device of `pubkey` as this primary's authorization state knows it: approved, its ids
/// and its last decided transaction; else why not.
pub(super) async fn approved_device(
    shared: &Arc<Shared>,
    pubkey: String,
) -> std::result::Result<(super::members::Registered, u64), String> {
    let member = shared
        .read(move |c| super::members::lookup(c, &pubkey))
        .await
        .map_err(|e| e.to_string())?;
    let Some(m) = member.filter(|m| m.auth_state == "approved" && m.node_type == "secondary")
    else {
        return Err("this device is not approved yet: it asks the leader".into());
    };
    let node_id = m.node_id;
    let last_decided = ask(shared, |reply| Job::LastDecided { node_id, reply })
        .await
        .map_err(|e| e.to_string())?;
    let registered = super::members::Registered {
        node_id,
        user_id: m.user_id.unwrap_or(0),
    };
    Ok((registered, last_decided))
}

/// A device's transactions that follower `peer` received: decided by this primary's writer as
/// if the device were connected here; answered once they are written.
async fn device_txns(
    shared: Weak<Shared>,
    peer: PublicKey,
    forwarded: ForwardedTxns,
) -> std::result::Result<Option<u64>, String> {
    let shared = shared.upgrade().ok_or("the leader is shutting down")?;
    leading_for(&shared, &peer)?;
    let node_id = forwarded.node_id;
    let approved = shared
        .read(move |c| {
            let state: Option<(String, Option<i64>)> = c
                .prepare_cached("SELECT auth_state, user_id FROM _octo_nodes WHERE node_id = ?1")?
                .query_row([node_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(state)
        })
        .await
        .map_err(|e| e.to_string())?;
    match approved {
        Some((state, user)) if state == "approved" && user == Some(forwarded.user_id) => {}
        _ => return Err("the device is not approved (any more)".into()),
    }
    let (written, done) = tokio::sync::oneshot::channel();
    let job = Job::DeviceTxns {
        sender: Sender {
            node_id,
            user_id: forwarded.user_id,
        },
        session: super::next_session(),
        txns: forwarded
            .txns
            .into_iter()
            .map(|(id, changes)| DeviceTxn::received(id, changes))
            .collect(),
        written: Some(written),
    };
    shared
        .jobs
        .send(job)
        .await
        .map_err(|_| "the leader is stopping")?;
    let written = done
        .await
        .unwrap_or_else(|_| Err("the leader did not write them (try again)".into()))?;
    // Answered once the cluster holds them: a leader lost before that must not have said
    // they were taken (the follower then sends them to the next one, which decides them).
    let mut feed = shared.feed.subscribe();
    let committed = tokio::time::timeout(
        MAJORITY_WAIT_MAX,
        feed.wait_for(|seq| *seq >= written.last_seq),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    match committed {
        true => Ok(written.copy),
        false => Err("the cluster did not confirm them in time (they are sent again)".into()),
    }
}
