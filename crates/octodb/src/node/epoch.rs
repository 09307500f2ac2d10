//! A primary that begins leading starts a new epoch of the log (`log::epochs`): a marker
//! entry in the primaries' log, written through like a device batch, which no device
//! receives. Devices then hear of the new epoch before any entry after it.

use super::writer::Job;
use super::Shared;
use crate::cluster::{Batch, Decided, Proposed};
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
    let written = log::append(conn, me, 0, &body)
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
    };
    let proposed = shared.cluster.get().map(|cluster| {
        let txns = vec![Decided {
            origin_node: me,
            origin_txn: 0,
            body: entry.body.clone(),
        }];
        cluster.propose_in_txn(
            conn,
            Batch::Txns {
                txns,
                seqs: seq..=seq,
            },
        )
    });
    let txn = match proposed {
        None => None,
        Some(Proposed::InTxn(txn)) => Some(txn),
        Some(Proposed::GaveUp(gave_up)) => {
            let _ = exec(conn, "ROLLBACK");
            gave_up.after_rollback();
            return Err(Error::rule(
                "the cluster did not take the new epoch's entry",
            ));
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

/// Begins a new epoch now that this primary leads; waits until the cluster committed it.
pub(super) async fn begin(shared: Arc<Shared>) {
    let written = super::writer::ask(&shared, |reply| Job::BeginEpoch { reply }).await;
    match written {
        Ok(seq) => {
            let mut feed = shared.feed.subscribe();
            let _ = feed.wait_for(|at| *at >= seq).await;
            tracing::info!(seq, "a new epoch of the log begins");
        }
        Err(e) => tracing::warn!(
            "this primary could not begin a new epoch of its log ({e}): devices that are ahead \
             of it are recognized by their position only"
        ),
    }
}
