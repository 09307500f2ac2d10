//! The leader's side of followers' app transactions (`cluster::forward`): only from a member
//! primary, only while this primary leads; decided on a connection of its own, answered once
//! a majority holds the transaction.

use super::Shared;
use crate::cluster::forward::{Applier, DecideForwarded, Decision, ForwardOutcome, Forwarded};
use crate::crypto::PublicKey;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long the leader waits for a majority to hold a forwarded transaction.
const MAJORITY_WAIT_MAX: Duration = Duration::from_secs(10);

/// The leader's connection for forwarded transactions, opened on first use.
pub(crate) type Applying = Arc<Mutex<Option<Applier>>>;

/// How this primary decides the forwarded transactions its members send it.
pub(super) fn decider(shared: &Arc<Shared>) -> DecideForwarded {
    let weak = Arc::downgrade(shared);
    Arc::new(move |peer, txn| Box::pin(decide(weak.clone(), peer, txn)))
}

fn refused(reason: impl Into<String>) -> ForwardOutcome {
    ForwardOutcome::Refused {
        reason: reason.into(),
    }
}

async fn decide(shared: Weak<Shared>, peer: PublicKey, txn: Forwarded) -> ForwardOutcome {
    let Some(shared) = shared.upgrade() else {
        return refused("the leader is shutting down");
    };
    let Some(proposer) = shared.cluster.get() else {
        return refused("the leader is starting");
    };
    if !shared.cluster_view.borrow().leading {
        return refused("the primary it was sent to no longer leads the cluster");
    }
    // The sender's node id: a member's (the connection was served because it is one).
    let origin = {
        let metrics = proposer.raft().metrics();
        let m = metrics.borrow();
        let key = peer.to_hex();
        let id = m
            .membership_config
            .membership()
            .nodes()
            .find(|(_, member)| member.public_key == key)
            .and_then(|(id, _)| u32::try_from(*id).ok());
        id
    };
    let Some(origin) = origin else {
        return refused("only the cluster's primaries forward transactions");
    };
    let shared2 = shared.clone();
    let decided = tokio::task::spawn_blocking(move || {
        let mut slot = shared2.forwarded.lock().unwrap_or_else(|p| p.into_inner());
        let applier = match slot.as_mut() {
            Some(a) => a,
            None => slot.insert(Applier::open(
                &shared2.cfg.path,
                shared2.file_key.get().as_ref(),
            )?),
        };
        let Some(proposer) = shared2.cluster.get() else {
            return Ok(Decision::NotApplied(refused("the leader is stopping")));
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
