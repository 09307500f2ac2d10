//! This primary's place in the primaries' Raft cluster: starting its Raft node, announcing
//! the batches the cluster committed, taking a primary out.

use super::{on_runtime, Shared};
use crate::error::{Error, Result};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A batch written through: the cluster's answer to come, its log entries, and the users of
/// the devices whose transactions it decides.
pub(super) type Announcement = (
    crate::cluster::Response,
    Vec<crate::log::LogEntry>,
    Vec<(u32, i64)>,
);

/// Tells the sessions streaming to devices of each batch, in the order they were handed over,
/// once the cluster has committed it.
pub(super) async fn announce(
    shared: Arc<Shared>,
    mut batches: mpsc::UnboundedReceiver<Announcement>,
) {
    while let Some((response, entries, users)) = batches.recv().await {
        match response.wait().await {
            Ok(applied) => {
                tracing::debug!(
                    last_seq = applied.last_seq,
                    "batch committed by the cluster"
                );
                shared.log_committed(entries, user_in(users))
            }
            // Only when the node stops (or, in a cluster, loses its lead before a majority
            // held the batch: then the cluster decides what stands).
            Err(e) => tracing::warn!("a batch was not committed by the cluster: {e}"),
        }
    }
}

/// The primary is in its cluster now: the writer proposes to `proposer`, and the rows the
/// cluster's state machine writes here (as a follower) move the change feed on.
pub(super) fn joined(shared: &Arc<Shared>, proposer: crate::cluster::Proposer) {
    let mut rows_applied = proposer.rows_applied();
    let news = proposer.news();
    if shared.cluster.set(proposer).is_err() {
        tracing::warn!("the primary joined its cluster twice; the first stands");
        return;
    }
    let weak = Arc::downgrade(shared);
    super::runtime().spawn(async move {
        while rows_applied.changed().await.is_ok() {
            let seq = *rows_applied.borrow_and_update();
            let Some(shared) = weak.upgrade() else {
                return;
            };
            shared.advance_feed(seq);
            shared.audiences.wake_everyone(seq);
        }
    });
    super::runtime().spawn(follow_view(Arc::downgrade(shared)));
    super::runtime().spawn(follow_news(Arc::downgrade(shared), news));
}

/// What the entries applied here (as a follower) changed besides rows: a new epoch is told to
/// the devices this primary serves; a change of the authorization state empties the cache of
/// approved nodes, and a device whose approval was taken back is cut off.
async fn follow_news(
    shared: std::sync::Weak<Shared>,
    mut news: tokio::sync::watch::Receiver<crate::cluster::Applying>,
) {
    let mut seen = *news.borrow_and_update();
    while news.changed().await.is_ok() {
        let now = *news.borrow_and_update();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if now.epoch_seq > seen.epoch_seq {
            shared.epoch_marks.send_if_modified(|mark| {
                let newer = now.epoch_seq > *mark;
                *mark = (*mark).max(now.epoch_seq);
                newer
            });
        }
        if now.auth_changes != seen.auth_changes {
            shared.approved.forget_all();
            let connected: Vec<String> = shared
                .connected_keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            if !connected.is_empty() {
                let approved = shared
                    .read(move |c| {
                        let mut still = Vec::new();
                        for key in connected {
                            let ok = super::members::lookup(c, &key)?
                                .is_some_and(|m| m.auth_state == "approved");
                            still.push((key, ok));
                        }
                        Ok(still)
                    })
                    .await;
                match approved {
                    Ok(keys) => {
                        for (key, _) in keys.into_iter().filter(|(_, ok)| !ok) {
                            shared.approval_withdrawn(&key);
                        }
                    }
                    Err(e) => tracing::warn!("cannot check the connected devices' approval: {e}"),
                }
            }
        }
        seen = now;
    }
}

/// What a primary whose Raft node stopped by itself says (in its `sync_error`, ahead of
/// anything else: it serves nothing until opened again); None for a node stopped on purpose.
pub(crate) fn stopped_because(
    fatal: &openraft::error::Fatal<crate::cluster::RaftNodeId>,
) -> Option<String> {
    if matches!(fatal, openraft::error::Fatal::Stopped) {
        return None;
    }
    Some(format!(
        "this primary's Raft node stopped ({fatal}); it serves nothing until the database is \
         opened again (a primary whose file diverged from its cluster's then rejoins it as a \
         new member)"
    ))
}

/// Keeps `Shared::cluster_view` as the cluster is: the device sessions follow it (to end
/// when this primary stops leading, to tell their devices of the primaries), and only a
/// change of it wakes them, not every commit that moves Raft's metrics.
async fn follow_view(shared: std::sync::Weak<Shared>) {
    let Some(mut metrics) = shared
        .upgrade()
        .and_then(|s| s.cluster.get().map(|p| p.raft().metrics()))
    else {
        return;
    };
    let mut finishing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(proposer) = shared.cluster.get() else {
            return;
        };
        let stopped = proposer
            .raft()
            .metrics()
            .borrow()
            .running_state
            .clone()
            .err();
        if let Some(fatal) = stopped {
            let Some(why) = stopped_because(&fatal) else {
                return; // the node closes
            };
            tracing::error!("{why}");
            shared
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sync_error = Some(why);
            // Its device sessions end too: their transactions would go to a leader whose
            // decisions this primary can no longer apply.
            shared.cluster_view.send_if_modified(|current| {
                let was_serving = !current.stopped;
                current.leading = false;
                current.leader = None;
                current.stopped = true;
                was_serving
            });
            return;
        }
        let view = crate::cluster::view(proposer.raft());
        let mut began_leading = false;
        shared.cluster_view.send_if_modified(|current| {
            let view = view.after(current);
            if view == *current {
                return false;
            }
            if view.leading && !current.leading {
                shared.approved.forget_all();
                tracing::info!("this primary leads its cluster now");
                began_leading = true;
            }
            // Said once each way: its app's commits fail meanwhile (Python walkthrough: only
            // openraft's own messages, nine a second, told of it).
            match (current.cut_off, view.cut_off) {
                (false, true) => tracing::warn!(
                    "quorum lost: this primary leads but hears from no majority of its cluster; \
                     it takes no writes until it does (the others may elect another leader)"
                ),
                (true, false) => {
                    tracing::info!("this primary hears from a majority of its cluster again")
                }
                _ => {}
            }
            *current = view;
            true
        });
        if began_leading {
            tokio::spawn(super::epoch::begin(shared.clone()));
        }
        let half_made = {
            let metrics = proposer.raft().metrics();
            let m = metrics.borrow();
            m.state == openraft::ServerState::Leader
                && m.membership_config.membership().get_joint_config().len() > 1
        };
        if half_made && finishing.as_ref().is_none_or(|f| f.is_finished()) {
            finishing = Some(tokio::spawn(finish_voter_change(proposer.raft().clone())));
        }
        drop(shared);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// How long a change of the voters may stay half-made before the leader finishes it: the
/// call that began it takes its second step as soon as the first commits.
const HALF_MADE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Finishes a change of the voters left half-made: its caller stopped waiting (a removal not
/// confirmed in time) or its leader changed, and the cluster stayed in the joint
/// configuration, needing both the old and the new majorities, until someone sent the change
/// again. Ends when this primary stops leading or the change is done.
async fn finish_voter_change(raft: crate::cluster::Raft) {
    loop {
        tokio::time::sleep(HALF_MADE_GRACE).await;
        let (goal, first_step_committed) = {
            let m = raft.metrics().borrow().clone();
            if m.running_state.is_err() || m.state != openraft::ServerState::Leader {
                return;
            }
            let joint = m.membership_config.membership().get_joint_config();
            let Some(goal) = joint.last().filter(|_| joint.len() > 1).cloned() else {
                return;
            };
            (goal, m.membership_config.log_id() <= &m.last_applied)
        };
        if !first_step_committed {
            continue; // a majority of the old or the new voters is away
        }
        match raft.change_membership(goal.clone(), false).await {
            Ok(_) => {
                tracing::info!(voters = ?goal, "a change of the cluster's voters left half-made is finished");
                return;
            }
            Err(e) => tracing::warn!("cannot finish the change of the cluster's voters yet: {e}"),
        }
    }
}

/// The user of each device node of a batch.
pub(super) fn user_in(users: Vec<(u32, i64)>) -> impl Fn(u32) -> Option<i64> {
    move |node| users.iter().find(|(n, _)| *n == node).map(|(_, u)| *u)
}

/// A primary's Raft node: its cluster as stored, or a new cluster of one. Members reach it
/// at the first address it listens on.
pub(super) fn start(
    shared: &Shared,
) -> impl std::future::Future<Output = Result<crate::cluster::Proposer>> + Send + 'static {
    let member = crate::cluster::Member {
        addr: member_addr(shared),
        public_key: shared.keys.public_key().to_hex(),
    };
    let id = u64::from(shared.identity.node_id());
    let (path, file_key, keys, handshake) = (
        shared.cfg.path.clone(),
        shared.file_key.get(),
        shared.keys.clone(),
        shared.handshake.clone(),
    );
    async move { crate::cluster::start_primary(id, &path, file_key, keys, handshake, member).await }
}

/// The address other primaries reach this one at: its `advertise=`, else the first address
/// it listens on (unreachable for them when that is `0.0.0.0`: said in the log).
pub(super) fn member_addr(shared: &Shared) -> String {
    if let Some(advertised) = &shared.cfg.advertise {
        return advertised.to_addr_string();
    }
    let first = shared
        .bound
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .first()
        .copied();
    if first.is_some_and(|a| a.ip().is_unspecified()) {
        tracing::warn!(
            "this primary listens on every interface and names no advertise=: other primaries \
             cannot reach it at {first:?}; add advertise=tcp://HOST:PORT"
        );
    }
    first.map(|a| a.to_string()).unwrap_or_default()
}

/// Primaries: `PRAGMA remove_primary`: the cluster's leader takes primary `id` out of the
/// cluster (it keeps its file, and no longer receives the log). Blocks until the cluster
/// has committed the change.
pub(super) fn remove_primary(shared: &Shared, id: u64) -> Result<()> {
    let Some(proposer) = shared.cluster.get() else {
        return Err(Error::rule("only a primary in a cluster removes primaries"));
    };
    let raft = proposer.raft().clone();
    let metrics = raft.metrics().borrow().clone();
    if metrics.state != openraft::ServerState::Leader {
        let leader = match crate::cluster::lead(&raft) {
            crate::cluster::Lead::At(addr) => format!("the cluster's leader, at {addr}"),
            _ => "the cluster's leader (none now: an election runs)".to_string(),
        };
        return Err(Error::rule(format!(
            "only the cluster's leader removes primaries: do it on {leader} (its admin \
             console, or PRAGMA remove_primary there)"
        )));
    }
    if id == metrics.id {
        return Err(Error::rule(
            "a primary does not remove itself: run PRAGMA remove_primary on another primary \
             once a new leader is elected, or remove the others first",
        ));
    }
    let membership = metrics.membership_config.membership();
    if membership.get_node(&id).is_none() {
        return Err(Error::rule(format!(
            "node {id} is not a member of this cluster (PRAGMA sync_status lists them)"
        )));
    }
    let voters: std::collections::BTreeSet<u64> =
        membership.voter_ids().filter(|v| *v != id).collect();
    let removed = on_runtime(async move {
        tokio::time::timeout(REMOVAL_WAIT, raft.change_membership(voters, false)).await
    })?;
    let Ok(removed) = removed else {
        return Err(Error::Timeout(format!(
            "the removal of node {id} was not confirmed within {}s: a majority of the current \
             members (with two, both) must be reachable to change the membership. It stays \
             proposed and takes effect once they are: a node removed so is refused when it \
             comes back (PRAGMA sync_status shows the members)",
            REMOVAL_WAIT.as_secs()
        )));
    };
    removed.map_err(|e| match e {
        openraft::error::RaftError::APIError(
            openraft::error::ClientWriteError::ChangeMembershipError(
                openraft::error::ChangeMembershipError::InProgress(_),
            ),
        ) => Error::rule(
            "an earlier change of the cluster's members is still under way (it waits for a \
             majority of the members to confirm it): try again once it ends",
        ),
        e => Error::rule(format!("the cluster could not remove node {id}: {e}")),
    })?;
    tracing::info!(node_id = id, "primary removed from the cluster");
    Ok(())
}

/// How long a removal waits for the cluster to confirm the new membership.
const REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
