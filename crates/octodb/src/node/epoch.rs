//! A primary that begins leading starts a new epoch of the log (`log::epochs`): a marker
//! entry in the primaries' log, written through like a device batch, which no device
//! receives. Devices then hear of the new epoch before any entry after it.

use super::writer::Job;
use super::Shared;
use crate::cluster::{Batch, Proposed};
use crate::error::{Error, Result};
use crate::log::{self, EntryBody, LogEntry};
use crate::store::exec;
use rusqlite::Connection;
use std::sync::Arc;

/// The writer's part: in one transaction, the marker entry, its epoch, and its Raft entry.
/// Returns the marker's entry and the cluster's answer to await (None: no cluster here).
pub(super) fn write_marker(
    conn: &Connection,
    shared: &Shared,
) -> Result<(LogEntry, Option<crate::cluster::Response>)> {
    let id: u64 = rand::random();
    let me = shared.identity.node_id();
    let body = EntryBody::Epoch { id };
    exec(conn, "BEGIN IMMEDIATE")?;
    let written = log::append(conn, me, 0, &body, None)
        .and_then(|seq| log::epochs::begin(conn, id, seq).map(|()| seq));
    let seq = match written {
        Ok(seq) => seq,
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            return Err(e);
        }
    };
    let entry = LogEntry {
        seq,
        origin_node: me,
        origin_txn: 0,
        body,
        origin_digest: None,
    };
    let proposed = shared
        .cluster
        .get()
        .map(|cluster| cluster.propose_in_txn(conn, Batch::Txns { seqs: seq..=seq }));
    let txn = match proposed {
        None => None,
        Some(Proposed::InTxn(txn)) => Some(txn),
        Some(Proposed::GaveUp(gave_up)) => {
            let _ = exec(conn, "ROLLBACK");
            let why = gave_up.why().to_string();
            gave_up.after_rollback();
            return Err(Error::rule(format!(
                "the cluster did not take the new epoch's entry ({why})"
            )));
        }
    };
    if let Err(e) = exec(conn, "COMMIT") {
        let _ = exec(conn, "ROLLBACK");
        if let Some(txn) = txn {
            txn.not_committed().after_rollback();
        }
        return Err(e.into());
    }
    // Before the feed passes the marker (it moves once the cluster commits it): sessions
    // that read the feed and then this see the new epoch in time.
    shared.epoch_marks.send_replace(seq);
    Ok((entry, txn.map(|t| t.committed())))
}

/// Attempts at writing a new epoch's marker while this primary leads (a leader just elected
/// may still be settling its cluster's membership).
const ATTEMPTS: u32 = 5;

/// Devices may be served: the epoch began, or will not (a warning said so).
fn settled(shared: &Shared) {
    shared
        .epoch_settled
        .store(true, std::sync::atomic::Ordering::Release);
}

/// How long a primary alone waits at open for its new epoch's marker.
const ALONE_MARKER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A primary that is its cluster's only voter leads at once: its open returns only once its
/// new epoch's marker is in the log, so that nothing its app or devices write in this run
/// lands before it. (Entries before the marker would count as the old epoch's: a device
/// ahead of a primary restored from an older copy, its position among them, would be taken
/// for one that is not ahead.) Blocks; never on a runtime thread.
pub(super) fn await_first_marker_alone(shared: &Arc<Shared>) {
    let alone = shared.cluster.get().is_some_and(|p| {
        let voters = p
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        voters <= 1
    });
    if !alone {
        return;
    }
    let mut marks = shared.epoch_marks.subscribe();
    let waited = super::on_runtime(async move {
        let begun = marks.wait_for(|seq| *seq > 0);
        matches!(
            tokio::time::timeout(ALONE_MARKER_WAIT, begun).await,
            Ok(Ok(_))
        )
    });
    if !matches!(waited, Ok(true)) {
        tracing::warn!(
            "this primary's new epoch did not begin within {ALONE_MARKER_WAIT:?}: devices \
             ahead of it are recognized by their position only"
        );
    }
}

/// Begins a new epoch now that this primary leads; waits until the cluster committed it.
/// Gives up quietly when it stops leading meanwhile (the next leader begins its own).
pub(super) async fn begin(shared: Arc<Shared>) {
    let mut pause = std::time::Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        if !shared.cluster_view.borrow().leading || shared.is_shutting_down() {
            tracing::debug!("no longer leading: no new epoch from this primary");
            return;
        }
        // A primary reopened may see itself as leader from its stored vote for a moment,
        // while another leads: only a leadership a majority confirms writes the marker (a
        // marker written under a stale one would be a tail its cluster refuses).
        let Some(raft) = shared.cluster.get().map(|p| p.raft().clone()) else {
            return;
        };
        if let Err(e) = raft.ensure_linearizable().await {
            tracing::debug!(attempt, "leadership not confirmed yet: {e}");
            tokio::time::sleep(pause).await;
            pause *= 2;
            continue;
        }
        match super::writer::ask(&shared, |reply| Job::BeginEpoch { reply }).await {
            Ok(seq) => {
                // (Not past the node's stop: this task holds the node's state, its connections
                // to the file among it, and nothing moves the feed once the node stops.)
                let mut feed = shared.feed.subscribe();
                let mut stop = shared.shutdown.subscribe();
                tokio::select! {
                    _ = feed.wait_for(|at| *at >= seq) => {}
                    _ = stop.wait_for(|stopping| *stopping) => return,
                }
                tracing::info!(seq, "a new epoch of the log begins");
                settled(&shared);
                return;
            }
            Err(e) if attempt == ATTEMPTS => {
                settled(&shared);
                if shared.cluster_view.borrow().leading && !shared.is_shutting_down() {
                    tracing::warn!(
                        "this primary could not begin a new epoch of its log ({e}): devices \
                         that are ahead of it are recognized by their position only"
                    );
                }
            }
            Err(e) => {
                tracing::debug!(attempt, "a new epoch's marker was not written: {e}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}
