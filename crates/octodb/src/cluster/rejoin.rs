//! A primary whose file holds what its cluster did not keep rejoins it as a new member.
//!
//! A leader writes a batch in the same SQLite commit as its Raft entry (`write_through`), so
//! when it dies before a majority held the entry, its file keeps a tail the next leader never
//! had. When it comes back as a follower, the new leader asks it to truncate that tail, which
//! it cannot do (the effects are committed rows): its log store refuses, openraft stops its
//! Raft node, and the file is marked as diverged. At the next start the primary clears its
//! Raft state (log, vote, applied position, membership) and joins again through the
//! members it knew; the leader gives its key a new node id (Raft's safety: a member that
//! forgot its vote must not come back under its old id) and sends it a snapshot, which
//! replaces the shared state, the divergent tail with it. Local rows stay.
//!
//! Nothing of value is lost with the tail: devices hear that a transaction was accepted only
//! once the cluster committed it, so they send the tail's transactions again to the new
//! leader; and an app's COMMIT on a leader with other primaries returns only once a majority
//! held it (else it says it was not confirmed).

use super::state_machine::{applied_state, APPLIED_KEY, MEMBERSHIP_KEY, SNAPSHOT_KEY};
use crate::error::Result;
use crate::store::{meta_get, meta_set, write_txn};
use rusqlite::Connection;

/// Meta key: the Raft index from which this primary's log diverged from its cluster's.
pub(crate) const DIVERGED_KEY: &str = "raft_diverged";
/// Meta key: the file is a backup of a member of a cluster of several (`octodb::backup`).
const RESTORED_KEY: &str = "raft_restored_copy";
/// Meta key: the members' addresses to rejoin through (JSON), kept until it has rejoined.
const REJOIN_THROUGH_KEY: &str = "raft_rejoin_through";

/// Marks the file as diverged from its cluster at Raft index `index` (called by the log
/// store as it refuses to truncate a written-through entry).
pub(crate) fn mark_diverged(c: &Connection, index: u64) -> Result<()> {
    meta_set(c, DIVERGED_KEY, index as i64)
}

/// In a backup just written: if it is of a member of a cluster of several, marks it so that
/// once restored it rejoins as a new member (it may be older than what the member
/// acknowledged). Returns whether it did.
pub(crate) fn mark_restored_copy(c: &Connection) -> Result<bool> {
    let Ok((_, membership)) = applied_state(c) else {
        return Ok(false); // not a primary's file (no Raft state)
    };
    if membership.membership().nodes().count() < 2 {
        return Ok(false);
    }
    meta_set(c, RESTORED_KEY, 1)?;
    Ok(true)
}

/// At a primary's start: if its file diverged from its cluster, or is a restored backup of a
/// member, clears its Raft state so that it joins again as a new member. Returns the
/// addresses to join through: those of the members it knew, kept until the join succeeds
/// (empty when it has nothing to rejoin).
pub(crate) fn prepare(c: &Connection) -> Result<Vec<String>> {
    let diverged = meta_get::<i64>(c, DIVERGED_KEY)?.is_some();
    let restored = meta_get::<i64>(c, RESTORED_KEY)?.is_some();
    if diverged || restored {
        let (_, membership) = applied_state(c)?;
        let addrs: Vec<String> = membership
            .membership()
            .nodes()
            .map(|(_, m)| m.addr.clone())
            .collect();
        let json = serde_json::to_string(&addrs).unwrap_or_default();
        write_txn(c, |c| {
            c.execute_batch("DELETE FROM _octo_raft_log; DELETE FROM _octo_raft;")?;
            // (`decided_upto`: the checkpoint of decided transactions is of a log the
            // snapshot replaces.)
            c.prepare_cached("DELETE FROM _octo_meta WHERE key IN (?1, ?2, ?3, ?4, ?5, ?6)")?
                .execute([
                    APPLIED_KEY,
                    MEMBERSHIP_KEY,
                    SNAPSHOT_KEY,
                    DIVERGED_KEY,
                    RESTORED_KEY,
                    "decided_upto",
                ])?;
            meta_set(c, REJOIN_THROUGH_KEY, json)
        })?;
        if diverged {
            tracing::warn!(
                "this primary's file held transactions its cluster did not keep (it led, and \
                 stopped before the others held them): it rejoins the cluster as a new member"
            );
        } else {
            tracing::warn!(
                "this primary's file is a restored backup, perhaps older than what it told its \
                 cluster: it rejoins the cluster as a new member"
            );
        }
    }
    addresses(c)
}

/// The members' addresses a primary that rejoins joins through (none when it does not).
pub(crate) fn addresses(c: &Connection) -> Result<Vec<String>> {
    let Some(json) = meta_get::<String>(c, REJOIN_THROUGH_KEY)? else {
        return Ok(Vec::new());
    };
    Ok(serde_json::from_str(&json).unwrap_or_default())
}

/// The primary has rejoined: the addresses are not needed any more.
pub(crate) fn done(c: &Connection) -> Result<()> {
    c.prepare_cached("DELETE FROM _octo_meta WHERE key = ?1")?
        .execute([REJOIN_THROUGH_KEY])?;
    Ok(())
}
