//! Primaries joining a cluster. A new primary opened with `connect=` (and a file that has no
//! cluster yet) asks a primary of the cluster to add it; every primary answers other
//! primaries' connections here: Raft's messages from members, joins from new ones.
//!
//! A join, over one Noise connection (the messages a device's admission uses):
//! 1. the new primary says `Hello` with the role `primary` and the address others reach it at;
//! 2. the leader admits it as any node (automatically without `auth=`, else only a key
//!    approved as `primary`: `PRAGMA authorize_node` / `preauthorize_node='<key>:primary'`, or
//!    the `new_node` callback answering "primary") and answers `Welcome` with its node id;
//! 3. the new primary starts its Raft node under that id and says it is ready (a heartbeat);
//! 4. the leader adds it as a learner, which receives a snapshot of the shared state and the
//!    log after it, then makes it a voter once it has caught up, and answers with a heartbeat.
//!
//! A primary that is not the leader refuses a join and names the leader; the new primary tries
//! the next of its `connect=` addresses, again and again until one takes it. After a restart
//! the stored membership decides and `connect=` is not used.

use super::admission::{refuse_session, send_now};
use super::members::{Admission, Known};
use super::writer::{ask, Job};
use super::Shared;
use crate::cluster::{Lead, Member, Raft};
use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::net::{Message, NetError, SecureReader, SecureStream, SecureWriter};
use crate::uri::{AuthMode, Role};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a step of a join may wait for the other side (catching up excluded).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between rounds of join attempts over the `connect=` addresses, doubling up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// A connection from another primary (its `Hello` read): Raft's messages if it is a member
/// (or while this primary waits to be added: its admission by the leader vouches for the
/// leader), else a join.
pub(super) async fn primary_session(
    shared: &Arc<Shared>,
    peer: PublicKey,
    protocol: u8,
    addr: SocketAddr,
    info: String,
    rd: SecureReader,
    mut wr: SecureWriter,
) -> Result<()> {
    let Some(proposer) = shared.cluster.get() else {
        let reason = "this primary is starting or joining its cluster: try again shortly";
        return refuse_session(&mut wr, reason.into()).await;
    };
    let raft = proposer.raft().clone();
    let hello = PrimaryHello::parse(&info);
    if !hello.asks_to_join() {
        if !crate::cluster::network::may_call(&raft, &peer, &shared.admitters) {
            // Raft's calls from a primary that is no member (any more): it backs off and shows
            // this in its status, so it is not logged at every call.
            tracing::debug!(%addr, "Raft calls from a primary that is not a member refused");
            let refusal = Message::Refused {
                reason: NOT_A_MEMBER.into(),
            };
            return send_now(&mut wr, &refusal).await;
        }
        let me = raft.metrics().borrow().id;
        if hello.to.is_some_and(|to| to != me) {
            // Seen on the caller's side (its sync_error): say what usually happened here.
            let reason = format!(
                "the primary at this address is node {me} of the cluster, not the member \
                 called (an older copy of its file put in place after it had rejoined under a \
                 new id, say: stop it, run `octodb mark-restored` on its file and start it, and \
                 it rejoins as a new member)"
            );
            return refuse_session(&mut wr, reason).await;
        }
        let services = Some(super::forwarded::services(shared));
        return Ok(crate::cluster::serve_connection(
            raft,
            (peer, shared.admitters.clone()),
            protocol,
            (rd, wr),
            services,
            shared.shutdown.subscribe(),
        )
        .await?);
    }
    match admit_joiner(shared, &raft, peer, addr, &info, hello).await {
        Ok(Joiner {
            node_id,
            member,
            rejoins,
        }) => {
            tracing::info!(%addr, node_id, ?rejoins, "a primary joins the cluster");
            let log_cut = shared
                .read(crate::cluster::rejoin::joiners_need_snapshot)
                .await?;
            add_member(&raft, node_id, member, rejoins, log_cut, rd, wr).await
        }
        Err(reason) => {
            tracing::info!(%addr, %reason, "a primary's join refused");
            refuse_session(&mut wr, reason).await
        }
    }
}

/// The answer to Raft's calls from a primary whose key is not a member.
const NOT_A_MEMBER: &str = "its key is not a member of this cluster: it was removed (PRAGMA \
     remove_primary), or its file belongs to another cluster. To serve in this cluster again, \
     start it from a new file with connect= naming a member: it then joins and receives the \
     cluster's data";

/// What a primary says of itself in its `Hello`: a member's Raft connection names the member
/// it is for (`to`; older builds do not say); a join names the address members reach the
/// joiner at, and whether it rejoins after clearing its Raft state.
#[derive(Debug, Default, serde::Deserialize)]
struct PrimaryHello {
    to: Option<u64>,
    member_addr: Option<String>,
    #[serde(default)]
    rejoin: bool,
}

impl PrimaryHello {
    /// Read from the `Hello`'s info; anything else there (or no JSON) says nothing.
    fn parse(info: &str) -> PrimaryHello {
        serde_json::from_str(info).unwrap_or_default()
    }

    fn asks_to_join(&self) -> bool {
        self.member_addr.is_some()
    }
}

/// A primary admitted to join the cluster.
struct Joiner {
    node_id: u32,
    member: Member,
    /// It rejoins as a new member (its file holds a state of its own): with its old node id
    /// when that is still a member.
    rejoins: Option<Option<u64>>,
}

/// The joining primary's node id and how members reach it, or why it may not join.
async fn admit_joiner(
    shared: &Arc<Shared>,
    raft: &Raft,
    peer: PublicKey,
    addr: SocketAddr,
    info: &str,
    hello: PrimaryHello,
) -> std::result::Result<Joiner, String> {
    match crate::cluster::lead(raft) {
        Lead::Here => {}
        Lead::At(addr) => return Err(format!("{THROUGH_THE_LEADER}{addr}")),
        Lead::Unknown => return Err("the cluster has no leader now; try again shortly".into()),
        Lead::CutOff(ms) => return Err(crate::cluster::cut_off(ms)),
    }
    let member_addr = hello
        .member_addr
        .filter(|a| a.len() <= 256 && crate::uri::Endpoint::from_addr(a).is_some())
        .ok_or("a joining primary must name the address members reach it at")?;
    let key = peer.to_hex();
    // A member with another key at the same address is one this primary replaces (a new
    // disk): joined beside it, the old voter stayed in the cluster for good, unreachable,
    // one failure away from losing the majority while every page looked healthy.
    let holder = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .find(|(_, m)| m.addr == member_addr && m.public_key != key)
        .map(|(id, _)| *id);
    if let Some(old) = holder {
        return Err(format!(
            "member {old} of this cluster is at {member_addr}, with another key: to replace it \
             (a new disk, a new file), take it out first (on the leader PRAGMA \
             remove_primary={old}, or the admin console's remove), then start this primary \
             again; to add a primary beside it, give this one another address"
        ));
    }
    let node_id = match shared.cfg.auth {
        AuthMode::None => {
            let decided = ask(shared, |reply| Job::AuthDecide {
                pubkey: key.clone(),
                decision: crate::auth::Decision::Node(Role::Primary),
                known: Known::Any,
                reply,
            })
            .await
            .map_err(|e| format!("cannot record the new primary: {e}"))?;
            match decided {
                Admission::Approved { registered, .. } => registered.node_id,
                Admission::Rejected(reason) => return Err(reason),
            }
        }
        _ => super::admission::approved_primary(shared, &key, addr, info).await?,
    };
    // A member that says it rejoins lost its Raft state (its file diverged from the
    // cluster's): it comes back under a new node id, so that the vote it forgot cannot count
    // twice. (A member joining again without saying so retries a join whose answer it
    // missed, its Raft node already running under its id: it keeps it.)
    let rejoins = hello.rejoin;
    // Its old place among the members, found by its key (the first primary of a cluster was
    // never recorded as a node, so its key may have a new id already).
    let old_id = rejoins
        .then(|| {
            raft.metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .find(|(_, m)| m.public_key == key)
                .map(|(id, _)| *id)
        })
        .flatten();
    let node_id = match old_id {
        Some(old) if old == u64::from(node_id) => {
            let k = key.clone();
            ask(shared, |reply| Job::RenumberPrimary { pubkey: k, reply })
                .await
                .map_err(|e| format!("cannot give the rejoining primary a new node id: {e}"))?
        }
        _ => node_id,
    };
    // The members will reach it at `member_addr`: a mistyped advertise= made a voter that no
    // one could reach, leaving a cluster one failure away from losing its majority, silently.
    if let Err(why) = reachable(&member_addr).await {
        return Err(format!(
            "this primary cannot reach the joining primary at {member_addr}, the address it \
             gives for its cluster's members (its advertise=, else its bind=): {why}; correct \
             it and start it again"
        ));
    }
    Ok(Joiner {
        node_id,
        member: Member {
            addr: member_addr,
            public_key: key,
        },
        rejoins: rejoins.then_some(old_id),
    })
}

/// Whether a TCP connection to `addr` opens, in a few seconds.
async fn reachable(addr: &str) -> std::result::Result<(), String> {
    match tokio::time::timeout(REACH_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", REACH_TIMEOUT.as_secs())),
    }
}

/// How long the leader tries to reach a joining primary's address.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells the joiner its id, waits until its Raft node runs, then adds it: a learner that
/// catches up (from a snapshot), then a voter. `log_cut`: this primary's log was cut
/// (`log::compaction`).
async fn add_member(
    raft: &Raft,
    node_id: u32,
    member: Member,
    rejoins: Option<Option<u64>>,
    log_cut: bool,
    mut rd: SecureReader,
    mut wr: SecureWriter,
) -> Result<()> {
    let welcome = Message::Welcome {
        node_id,
        user_id: 0,
        node_type: Role::Primary,
        last_decided_txn: 0,
    };
    send_now(&mut wr, &welcome).await?;
    match tokio::time::timeout(STEP_TIMEOUT, rd.recv()).await {
        Ok(Ok(bytes)) if matches!(Message::decode(&bytes), Ok(Message::Heartbeat)) => {}
        _ => {
            return Err(Error::rule(
                "the joining primary did not start its Raft node",
            ))
        }
    }
    // One membership change at a time: openraft refuses a second while one is under way, and
    // joiners arriving together would retry against each other with growing pauses.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let id = u64::from(node_id);
    // A rejoining primary's old member goes first (it cannot vote any more: it forgot its
    // vote), then the log is compacted so that the new one receives a snapshot, which replaces
    // its shared state whole (a log replayed over its old state would apply twice). A primary
    // whose log was cut (`log::compaction`) compacts too before any new member: the Raft log's
    // oldest entries name log entries that are gone. So does one whose Raft log was purged
    // (it rejoined itself, or compacted before): the new member would get the snapshot stored
    // then, whose membership may not name this leader (it joined after it), so the new
    // member, trusting only the members it names, would refuse this leader for good.
    let raft_log_purged = raft.metrics().borrow().purged.is_some();
    if rejoins.is_some() || log_cut || raft_log_purged {
        let compacted = async {
            if let Some(Some(old)) = rejoins {
                let mut voters = voter_ids(raft);
                voters.remove(&old);
                raft.change_membership(voters, false)
                    .await
                    .map_err(|e| Error::rule(format!("taking out its old member: {e}")))?;
            }
            crate::cluster::compact(raft, STEP_TIMEOUT).await
        };
        if let Err(e) = compacted.await {
            let reason = format!("the cluster could not take this primary in: {e}");
            return super::admission::refuse_session(&mut wr, reason).await;
        }
    }
    let added = async {
        raft.add_learner(id, member, true).await?;
        let mut voters = voter_ids(raft);
        voters.insert(id);
        raft.change_membership(voters, false).await?;
        Ok::<(), openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, Member>>>(())
    };
    if let Err(e) = added.await {
        let reason = format!("the cluster could not add this primary: {e}");
        send_now(
            &mut wr,
            &Message::Refused {
                reason: reason.clone(),
            },
        )
        .await?;
        return Err(Error::rule(reason));
    }
    tracing::info!(node_id, "a primary joined the cluster as a voter");
    send_now(&mut wr, &Message::Heartbeat).await?;
    Ok(())
}

fn voter_ids(raft: &Raft) -> BTreeSet<u64> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

/// A member that is not the leader refuses a join with this, followed by the leader's address,
/// which the joining primary tries next.
const THROUGH_THE_LEADER: &str =
    "this primary is not the cluster's leader; join through the leader at ";

/// The leader's address named in a refusal, when it names one that parses as an address.
fn leader_named_in(reason: &str) -> Option<String> {
    let addr = reason.strip_prefix(THROUGH_THE_LEADER)?;
    (addr.len() <= 256 && crate::uri::Endpoint::from_addr(addr).is_some()).then(|| addr.to_string())
}

/// The new primary's side: joins through its `connect=` addresses (and the leader a member
/// names when it is not the leader), retrying until one of them adds it. Sets the node's
/// cluster once its Raft node runs.
pub(super) async fn join(shared: Arc<Shared>) {
    let mut pause = RETRY_FIRST;
    let mut targets: Vec<String> = shared
        .cfg
        .connect
        .iter()
        .map(|ep| ep.to_addr_string())
        .collect();
    let rejoin_addrs = rejoin_through(&shared).await;
    let rejoins = !rejoin_addrs.is_empty();
    // The members it knew include itself, which cannot add it.
    let own = super::cluster_member::member_addr(&shared);
    for addr in rejoin_addrs {
        if !targets.contains(&addr) && addr != own {
            targets.push(addr);
        }
    }
    if targets.is_empty() {
        let why = "no other member of its cluster is known to join through: give one with connect=";
        tracing::warn!("this primary cannot rejoin its cluster: {why}");
        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        live.sync_error = Some(format!("rejoining the cluster: {why}"));
        return;
    }
    loop {
        let mut round: std::collections::VecDeque<String> = targets.iter().cloned().collect();
        let mut tried = Vec::new();
        while let Some(ep) = round.pop_front() {
            if tried.contains(&ep) {
                continue;
            }
            tried.push(ep.clone());
            // Said until its Raft node runs under the id the leader gives it.
            let rejoining = rejoins && shared.cluster.get().is_none();
            let mut redirect = None;
            let joined = join_through(&shared, &ep, rejoining, &mut redirect).await;
            if let Some(leader) = redirect {
                // A follower named the leader: tried next, in this round.
                round.push_front(leader);
            }
            // The app sees why its primary is not in the cluster yet (`sync_status`).
            let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
            match joined {
                Ok(()) => {
                    live.sync_error = None;
                    return;
                }
                Err(e) => {
                    tracing::info!(primary = %ep, "joining the cluster: {e}");
                    live.sync_error = Some(format!("joining the cluster through {ep}: {e}"));
                }
            }
        }
        if shared.is_shutting_down() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// The members a primary that rejoins as a new member knew (see `cluster::rejoin`).
async fn rejoin_through(shared: &Arc<Shared>) -> Vec<String> {
    shared
        .read(crate::cluster::rejoin::addresses)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!("cannot read the members to rejoin through: {e}");
            Vec::new()
        })
}

/// One attempt through the member at `addr`; `redirect` is set when it names the leader.
async fn join_through(
    shared: &Arc<Shared>,
    addr: &str,
    rejoining: bool,
    redirect: &mut Option<String>,
) -> Result<()> {
    let member_addr = super::cluster_member::member_addr(shared);
    if member_addr.is_empty() {
        return Err(Error::rule(
            "a primary joins a cluster only with bind= (members reach it there)",
        ));
    }
    let tcp = tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| NetError::Timeout)?
        .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    let stream = SecureStream::connect(tcp, &shared.keys, &shared.handshake).await?;
    let member = stream.peer().public_key;
    let (mut rd, mut wr) = stream.into_split();
    let hello = Message::Hello {
        role: Role::Primary,
        last_seq: 0,
        info: serde_json::json!({ "member_addr": member_addr, "rejoin": rejoining }).to_string(),
        auth: None,
    };
    send_now(&mut wr, &hello).await?;
    let node_id = match next(&mut rd).await? {
        Message::Welcome { node_id, .. } => node_id,
        Message::Refused { reason } => {
            *redirect = leader_named_in(&reason);
            return Err(Error::rule(reason));
        }
        other => return Err(NetError::Malformed(format!("unexpected {}", other.kind())).into()),
    };
    // Its Raft calls are taken before this primary has a membership; nobody else's.
    let admitters = shared.admitters.admitted_by(&member);
    start_raft(shared, node_id, admitters).await?;
    send_now(&mut wr, &Message::Heartbeat).await?;
    // The leader answers once this primary is a voter: after a snapshot of the whole shared
    // state, which may take a while.
    match Message::decode(&rd.recv().await?)? {
        Message::Heartbeat => {
            tracing::info!(node_id, "joined the primaries' cluster");
            Ok(())
        }
        Message::Refused { reason } => Err(Error::rule(reason)),
        other => Err(NetError::Malformed(format!("unexpected {}", other.kind())).into()),
    }
}

async fn next(rd: &mut SecureReader) -> Result<Message> {
    let bytes = tokio::time::timeout(STEP_TIMEOUT, rd.recv())
        .await
        .map_err(|_| NetError::Timeout)??;
    Ok(Message::decode(&bytes)?)
}

/// Takes `node_id` as this primary's and starts its Raft node (once: a join tried again after
/// a failure keeps the node). `admitters`: the leaders that admitted it so far, kept in the file at every join (see
/// `BeforeMembership`).
async fn start_raft(shared: &Arc<Shared>, node_id: u32, admitters: Option<String>) -> Result<()> {
    let starts = shared.cluster.get().is_none();
    let path = shared.cfg.path.clone();
    let file_key = shared.file_key.get();
    tokio::task::spawn_blocking(move || {
        let c = crate::store::open_connection(&path, file_key.as_ref())?;
        if let Some(keys) = admitters {
            crate::cluster::network::BeforeMembership::keep(&c, &keys)?;
        }
        if !starts {
            return Ok(());
        }
        crate::store::meta_set(&c, "node_id", i64::from(node_id))?;
        crate::cluster::rejoin::done(&c)
    })
    .await
    .map_err(|_| Error::Closed)??;
    if !starts {
        return Ok(());
    }
    shared.identity.set_authorized(node_id, 0);
    let (_, proposer) = crate::cluster::start_node(
        u64::from(node_id),
        &shared.cfg.path,
        shared.file_key.get(),
        shared.keys.clone(),
        shared.handshake.clone(),
    )
    .await?;
    super::cluster_member::joined(shared, proposer);
    Ok(())
}
