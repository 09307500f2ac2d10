//! Primary: keeps its log to its newest `log_keep=` entries (`log::compaction`), watching
//! the log's end move. In a cluster with other members the Raft log is compacted first
//! (a snapshot, then a purge): its entries name positions of this log, and a member behind
//! the purge installs the snapshot instead of replaying them.

use super::writer::{ask, Job};
use super::Shared;
use crate::log::compaction;
use std::sync::Arc;
use std::time::Duration;

/// How long the Raft snapshot and purge may take before this round of compaction gives up
/// (the next move of the log's end tries again).
const RAFT_COMPACT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs until the node stops.
pub(super) async fn keep_log_bounded(shared: Arc<Shared>) {
    let keep = shared.cfg.log_keep;
    let mut feed = shared.feed.subscribe();
    let mut stop = shared.shutdown.subscribe();
    let mut start = match shared.read(compaction::start).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("the log will not be compacted: cannot read where it starts: {e}");
            return;
        }
    };
    // After a round that could not cut all it wanted (or failed), the next waits for another
    // tenth of `keep` entries: each round of a cluster builds a Raft snapshot.
    let mut next_try = 0;
    loop {
        let last = *feed.borrow_and_update();
        if let Some(below) = compaction::due(start, last, keep).filter(|_| last >= next_try) {
            match cut_below(&shared, below).await {
                Ok(now) => {
                    start = now;
                    if now < below {
                        next_try = last + (keep / 10).max(1);
                    }
                }
                Err(e) => {
                    next_try = last + (keep / 10).max(1);
                    tracing::warn!(below, "compacting the log failed; tried again later: {e}");
                }
            }
        }
        tokio::select! {
            changed = feed.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// Cuts the log below `below` (or less, as far as the Raft log allows); returns where it
/// starts now.
async fn cut_below(shared: &Arc<Shared>, below: u64) -> crate::Result<u64> {
    let others = shared.cluster_view.borrow().members.len() > 1;
    let mut below = below;
    if let (true, Some(cluster)) = (others, shared.cluster.get()) {
        crate::cluster::compact(cluster.raft(), RAFT_COMPACT_TIMEOUT).await?;
        // A purge may wait for the next Raft entries written (`log_store::purge`): the
        // entries it leaves still name their positions, which stay until a later round.
        if let Some(named) = shared.read(crate::cluster::oldest_log_seq_named).await? {
            if named < below {
                // Said, or a log that stays long would be a silent mystery.
                tracing::info!(
                    wanted = below,
                    named,
                    "the log is cut only up to the oldest position its Raft log still names \
                     (a purge waits for the next Raft entries written); more at a later round"
                );
                below = named;
            }
        }
    }
    let started = std::time::Instant::now();
    let before = shared.read(compaction::start).await?;
    let mut start = before;
    while start < below {
        let now = ask(shared, |reply| Job::CutLog { below, reply }).await?;
        if now == start {
            break;
        }
        start = now;
    }
    if start > before {
        tracing::info!(
            start,
            removed = start - before,
            millis = started.elapsed().as_millis() as u64,
            "log compacted: its older entries removed (log_keep=)"
        );
    }
    Ok(start)
}
