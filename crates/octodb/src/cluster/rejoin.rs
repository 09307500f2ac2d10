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
/// Meta key: the file started a new cluster from the state it held (`start_new_cluster`), so
/// its Raft log does not hold its whole history: a member joining it must take a snapshot.
const STARTED_FROM_FILE_KEY: &str = "raft_started_from_file";

/// Marks the file as diverged from its cluster at Raft index `index` (called by the log
/// store as it refuses to truncate a written-through entry).
pub(crate) fn mark_diverged(c: &Connection, index: u64) -> Result<()> {
    meta_set(c, DIVERGED_KEY, index as i64)
}

/// What marking a primary's file as a restored copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreMark {
    /// Not a primary's file (or one from before clusters): nothing to mark.
    Unmarked,
    /// A member of a cluster of several: restored, it rejoins its cluster as a new member
    /// and takes the cluster's current state.
    Rejoins,
    /// A primary alone: the node and user ids above the copy's are reserved for the devices
    /// approved after it was taken, which keep theirs when they come back
    /// (`node::restored_ids`). None: reserved already, nothing handed out since.
    IdsReserved(Option<crate::ReservedIds>),
}

/// In a backup just written, or a primary's file restored from a copy: if it is of a member
/// of a cluster of several, marks it so that once restored it rejoins as a new member (it may
/// be older than what the member acknowledged); if of a primary alone, reserves the ids it
/// may have handed out after the copy.
pub(crate) fn mark_restored_copy(c: &Connection) -> Result<RestoreMark> {
    let Ok((_, membership)) = applied_state(c) else {
        return Ok(RestoreMark::Unmarked); // not a primary's file (no Raft state)
    };
    if membership.membership().nodes().count() < 2 {
        let reserved = write_txn(c, crate::node::restored_ids::reserve)?;
        return Ok(RestoreMark::IdsReserved(reserved));
    }
    meta_set(c, RESTORED_KEY, 1)?;
    Ok(RestoreMark::Rejoins)
}

/// At a primary's start: if its file diverged from its cluster, or is a restored backup of a
/// member, clears its Raft state so that it joins again as a new member. Returns the
/// addresses to join through: those of the members it knew, kept until the join succeeds
/// (empty when it has nothing to rejoin).
pub(crate) fn prepare(c: &Connection) -> Result<Vec<String>> {
    let diverged = meta_get::<i64>(c, DIVERGED_KEY)?.is_some();
    let restored = meta_get::<i64>(c, RESTORED_KEY)?.is_some();
    if diverged || restored {
        clear_raft_state(c, Next::Rejoin)?;
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

/// What a file whose Raft state is cleared does next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Joins its cluster again through the members it knew, which it notes in the same
    /// transaction (were it to start without them, it would form a cluster of its own). It
    /// takes the cluster's log by snapshot, so the checkpoint of decided transactions, which
    /// is of the log the snapshot replaces, goes too.
    Rejoin,
    /// Forms a new cluster of its own, keeping its log (and the checkpoint, which is of it);
    /// members that join it take a snapshot, since its Raft log will not hold that history.
    StartNew,
}

/// Clears the file's Raft state (log, vote, applied position, membership, snapshot) and its
/// marks (diverged, restored copy, members to rejoin through), in one transaction, and
/// prepares it for `next`. Returns the members its membership named, with their addresses.
fn clear_raft_state(c: &Connection, next: Next) -> Result<Vec<(u64, String)>> {
    let (_, membership) = applied_state(c)?;
    let members: Vec<(u64, String)> = membership
        .membership()
        .nodes()
        .map(|(id, m)| (*id, m.addr.clone()))
        .collect();
    write_txn(c, |c| {
        c.execute_batch("DELETE FROM _octo_raft_log; DELETE FROM _octo_raft;")?;
        let mut keys = vec![
            APPLIED_KEY,
            MEMBERSHIP_KEY,
            SNAPSHOT_KEY,
            DIVERGED_KEY,
            RESTORED_KEY,
            REJOIN_THROUGH_KEY,
            STARTED_FROM_FILE_KEY,
        ];
        if next == Next::Rejoin {
            keys.push("decided_upto");
        }
        let mut delete = c.prepare_cached("DELETE FROM _octo_meta WHERE key = ?1")?;
        for key in keys {
            delete.execute([key])?;
        }
        match next {
            Next::Rejoin => {
                let addrs: Vec<&str> = members.iter().map(|(_, a)| a.as_str()).collect();
                let json = serde_json::to_string(&addrs).unwrap_or_default();
                meta_set(c, REJOIN_THROUGH_KEY, json)
            }
            Next::StartNew => meta_set(c, STARTED_FROM_FILE_KEY, 1),
        }
    })?;
    Ok(members)
}

/// Disaster recovery, every primary of a cluster lost: makes this primary's file (a backup,
/// restored) the first and only member of a new cluster. Its Raft state and marks are
/// cleared, so that opened as a primary it forms a cluster of one from its own data, as a
/// primary alone does, and other primaries join it as new members. Returns the addresses of
/// the other members its old cluster had (this one is node `own`). Its log and rows stay:
/// devices that had more from the lost cluster find their primary behind them and are
/// handled as after any restored primary.
///
/// The whole cluster went back to the file's state, so the ids handed out after it are
/// reserved for the devices that hold them (`node::restored_ids`).
pub(crate) fn start_new_cluster(
    c: &Connection,
    own: u32,
) -> Result<(Vec<String>, Option<crate::ReservedIds>)> {
    let reserved = write_txn(c, crate::node::restored_ids::reserve)?;
    let addrs: Vec<String> = clear_raft_state(c, Next::StartNew)?
        .into_iter()
        .filter(|(id, _)| *id != u64::from(own))
        .map(|(_, addr)| addr)
        .collect();
    tracing::warn!(
        former_members = ?addrs,
        "this primary's file starts a new cluster of its own: its old cluster's members are \
         not called again"
    );
    Ok((addrs, reserved))
}

/// Whether the file was made the first member of a new cluster (`start_new_cluster`) and
/// has not formed it yet.
pub(crate) fn starts_new_cluster(c: &Connection) -> Result<bool> {
    Ok(meta_get::<i64>(c, STARTED_FROM_FILE_KEY)?.is_some() && !super::is_formed(c)?)
}

/// Whether a primary joining this one's cluster must take a snapshot of the whole state
/// rather than the Raft log from its start: the log does not reach back to the file's
/// beginning (its oldest entries were cut, `log::compaction`, or the file started a new
/// cluster with the state it held).
pub(crate) fn joiners_need_snapshot(c: &Connection) -> Result<bool> {
    Ok(crate::log::compaction::start(c)? > 1
        || meta_get::<i64>(c, STARTED_FROM_FILE_KEY)?.is_some())
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
