//! Whether this primary serves devices now (joining its cluster, beginning an epoch, without a
//! leader), and a follower's path to its leader for a device's admission and transactions.

use super::*;

/// How this primary serves devices now.
pub(super) enum Serving {
    /// It leads its cluster: it decides their transactions.
    Leader,
    /// It follows the leader at this address (None: while its cluster elects one): it streams
    /// its own log to them, and their transactions go to the leader (`forwarded`).
    Follower(Option<String>),
}

/// How this primary serves devices now; or why it does not take them (it is joining its
/// cluster, beginning an epoch, or its cluster has no leader), with where the leader is.
pub(super) async fn serving_devices(
    shared: &Arc<Shared>,
) -> std::result::Result<Serving, (Option<String>, String)> {
    let serving = serving_now(shared)?;
    if let Serving::Follower(leader) = &serving {
        // A primary that led until its restart may hold batches its cluster never confirmed:
        // no device reads them from it.
        let applied = shared
            .cluster
            .get()
            .and_then(|p| p.raft().metrics().borrow().last_applied);
        let tail = shared
            .read(move |c| crate::cluster::own_batches_beyond(c, applied))
            .await
            .unwrap_or(true);
        if tail {
            return Err((
                leader.clone(),
                "this primary is settling its log with its cluster's leader".into(),
            ));
        }
    }
    Ok(serving)
}

pub(super) fn serving_now(
    shared: &Shared,
) -> std::result::Result<Serving, (Option<String>, String)> {
    let Some(proposer) = shared.cluster.get() else {
        let reason = "this primary is starting or joining its cluster: try again shortly";
        return Err((None, reason.into()));
    };
    match crate::cluster::lead(proposer.raft()) {
        // (Its batches would land before the marker: a device ahead of a primary restored
        // from an older copy could then be taken for one that is not.)
        crate::cluster::Lead::Here
            if !shared
                .epoch_settled
                .load(std::sync::atomic::Ordering::Acquire) =>
        {
            // Members that refuse it (it was removed, or its cluster was restored elsewhere)
            // mean the epoch will not begin: say why rather than "shortly" for ever.
            let reason = match proposer.refused() {
                Some(refused) => format!(
                    "this primary cannot begin a new epoch of its log: {refused}; use another \
                     primary"
                ),
                None => {
                    "this primary is beginning a new epoch of its log: try again shortly".into()
                }
            };
            Err((None, reason))
        }
        crate::cluster::Lead::Here => Ok(Serving::Leader),
        // Its devices' transactions could not be confirmed: they go where a majority is.
        crate::cluster::Lead::CutOff(ms) => Err((None, crate::cluster::cut_off(ms))),
        crate::cluster::Lead::At(addr) => Ok(Serving::Follower(Some(addr))),
        // While a member elects a leader its devices stay (their transactions wait for the
        // new leader), so that a fail-over costs them no reconnection. One that has known no
        // leader for longer than an election takes is likely cut off from its majority: its
        // devices go to primaries that can have their transactions decided.
        // Members that refuse it (it was removed, or its cluster was restored elsewhere): it
        // will know no leader, so it says why now. (Started again after it was removed, it
        // comes back leading its old term, unconfirmed: no leader it may follow.)
        crate::cluster::Lead::Unknown => match proposer.refused() {
            Some(refused) => Err((
                None,
                format!("this primary serves no devices: {refused}; use another primary"),
            )),
            None => match shared.cluster_view.borrow().refusal() {
                Some(reason) => Err((None, reason)),
                None => Ok(Serving::Follower(None)),
            },
        },
    }
}

/// Sends the device elsewhere: to `leader` if known (devices of protocol 5 and newer go
/// there at once, or retry soon while the cluster elects one), with `reason`.
pub(super) async fn redirect(
    wr: &mut SecureWriter,
    protocol: u8,
    leader: Option<String>,
    reason: String,
) -> Result<()> {
    if protocol >= version::PRIMARY_MEMBERS {
        send_now(
            wr,
            &Message::NotLeader {
                leader,
                reason: reason.clone(),
            },
        )
        .await?;
        return Err(Error::rule(reason));
    }
    crate::node::admission::refuse_session(wr, reason).await
}

/// How long a follower waits for its leader's answers about a device.
pub(super) const LEADER_WAIT_MAX: Duration = Duration::from_secs(10);
/// How long a follower waits for the leader to say whether a device is approved before it
/// takes its own copy of the authorization state's word (a leader lost without a word).
pub(super) const ADMIT_WAIT_MAX: Duration = Duration::from_secs(1);
/// The longest one attempt to hand a device's transactions to the leader waits: a leader
/// lost without a word must not hold them for the whole wait.
pub(super) const FORWARD_ATTEMPT_MAX: Duration = Duration::from_secs(3);
/// How soon a follower tries its cluster's leader again while a device's transactions wait
/// for one: at first (an election ends within a second), then less often, up to
/// [`LEADER_POLL_MAX`] while the same leader fails, so that one that refuses connections is
/// not called every few ms; a new leader is tried at once.
pub(super) const LEADER_POLL: Duration = Duration::from_millis(20);
pub(super) const LEADER_POLL_MAX: Duration = Duration::from_millis(160);
/// How long a follower waits to apply the log as far as a device that connects to it.
pub(super) const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(5);

/// A follower: the device of `pubkey` as the leader knows it (approved: its ids, and its last
/// decided transaction); else why not.
pub(super) async fn admitted_by_leader(
    shared: &Arc<Shared>,
    pubkey: &crate::crypto::PublicKey,
) -> std::result::Result<(Registered, u64), String> {
    let proposer = shared.cluster.get().ok_or("this primary is starting")?;
    if !proposer.has_leader() {
        // While its cluster elects a leader: as this primary's own copy of the authorization
        // state knows the device (its last decided transaction may be older than the truth:
        // the leader then skips what the device sends again).
        return crate::node::forwarded::approved_device(shared, pubkey.to_hex()).await;
    }
    match proposer.admit_device(pubkey.to_hex(), ADMIT_WAIT_MAX).await {
        Ok(Ok(a)) => Ok((
            Registered {
                node_id: a.node_id,
                user_id: a.user_id,
            },
            a.last_decided_txn,
        )),
        Ok(Err(why)) => Err(why),
        // The leader it knows is unreachable (lost, not replaced yet): as for an election.
        Err(e) => {
            tracing::debug!("the leader did not answer about a device ({e}): admitted here");
            crate::node::forwarded::approved_device(shared, pubkey.to_hex()).await
        }
    }
}

/// A follower: whether it has applied the log as far as `last_seq` (waiting a little).
pub(super) async fn caught_up_with(shared: &Shared, last_seq: u64) -> bool {
    let mut feed = shared.feed.subscribe();
    let reached = tokio::time::timeout(CATCH_UP_WAIT_MAX, feed.wait_for(|seq| *seq >= last_seq))
        .await
        .is_ok_and(|r| r.is_ok());
    reached
}

/// The leader: a device's transactions go to this primary's writer, which decides them.
pub(super) async fn to_own_writer(
    shared: &Shared,
    sender: Sender,
    session: u64,
    txns: Vec<(u64, crate::changes::ChangeSet)>,
) -> Result<()> {
    let job = Job::DeviceTxns {
        sender,
        session,
        txns: txns
            .into_iter()
            .map(|(id, changes)| DeviceTxn::received(id, changes))
            .collect(),
        written: None,
    };
    shared.jobs.send(job).await.map_err(|_| Error::Closed)
}

/// A follower: a device's transactions go to the leader, in order; the session goes on once
/// they are written there (the device hears of their decisions from this primary's log, once
/// the cluster committed them), and ends if they are not. During an election, or while the
/// leader this primary knows is unreachable (lost, not replaced yet), they wait for the new
/// one, which may be this primary. Sending them again is safe: the leader skips a device's
/// transactions it decided already.
pub(super) async fn to_the_leader(
    shared: &Shared,
    sender: Sender,
    session: u64,
    txns: Vec<(u64, crate::changes::ChangeSet)>,
) -> Result<()> {
    let proposer = shared.cluster.get().ok_or(Error::Closed)?;
    let deadline = tokio::time::Instant::now() + LEADER_WAIT_MAX;
    let mut poll = LEADER_POLL;
    let mut tried = shared.cluster_view.borrow().leader.clone();
    let outcome = loop {
        if shared.cluster_view.borrow().leading {
            // This primary leads now: its own writer decides them.
            return to_own_writer(shared, sender, session, txns).await;
        }
        let forwarded = crate::cluster::forward::ForwardedTxns {
            node_id: sender.node_id,
            user_id: sender.user_id,
            txns: txns.clone(),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match proposer
            .device_txns(forwarded, left.min(FORWARD_ATTEMPT_MAX))
            .await
        {
            Ok(written) => break written,
            Err(e) if tokio::time::Instant::now() + poll < deadline => {
                tracing::debug!("a device's transactions wait for the leader: {e}");
                tokio::time::sleep(poll).await;
                let leader = shared.cluster_view.borrow().leader.clone();
                poll = match leader == tried {
                    true => (poll * 2).min(LEADER_POLL_MAX),
                    false => LEADER_POLL,
                };
                tried = leader;
            }
            Err(e) => {
                return Err(Error::rule(format!(
                    "this device's transactions could not reach the cluster's leader ({e}); \
                     they are sent again on the next connection"
                )))
            }
        }
    };
    match outcome {
        Ok(None) => Ok(()),
        Ok(Some(txn)) => {
            // The streaming side tells the device, and the session ends.
            shared.copied_file_found(session, txn);
            Ok(())
        }
        Err(why) => Err(Error::rule(format!(
            "the cluster's leader did not take this device's transactions: {why}; they are \
             sent again on the next connection"
        ))),
    }
}
