//! A running node: the file, its identity, the engine's writer thread and the network tasks.
//!
//! One `Node` per database file per process (a registry hands the same node to every
//! connection opened on that file). The node's engine applies what the network brings on its
//! own SQLite connection, in its writer thread, one write transaction per batch (group commit).

mod admission;
mod audiences;
mod auth_batch;
mod awake;
pub mod channels;
mod cluster_member;
mod compaction;
mod decided;
mod epoch;
mod events;
mod forwarded;
mod join;
pub(crate) mod members;
mod primary;
mod registry;
pub(crate) mod restored_ids;
mod resync;
mod secondary;
mod shared_rows;
mod snapshot;
mod start;
mod status;
mod waiting_requests;
pub(crate) mod write_turns;
mod writer;

pub use events::Event;
pub use restored_ids::ReservedIds;
pub(crate) use status::sync_error_of;
pub use status::{not_ready_within, not_synced_within, NodeRecord, SyncStatus};

use crate::crypto::NodeKeys;
use crate::error::{Error, Result};
use crate::net::HandshakeOptions;
use crate::store::capture::{register_identity_functions, Identity};
use crate::store::lock::ProcessLock;
use crate::store::{self, meta_get, meta_i64, meta_set};
use crate::uri::{NodeConfig, Role};
use rusqlite::Connection;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use tokio::sync::{broadcast, mpsc, watch, Notify};

pub(crate) use registry::open_node;

/// Read connections a node keeps, and reads its network tasks run at once.
const READERS: usize = 8;

/// Committed device transactions waiting in memory for the sending task; beyond this they are
/// read back from the outbox.
const FRESH_TXNS: usize = 1024;

/// Devices: the meta key of the admitting primary's public key (hex).
pub(crate) const PRIMARY_KEY: &str = "primary_key";

/// The runtime that carries every node's network tasks in this process.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("octodb-net")
            .enable_all()
            .build()
            // Without a runtime no node can run at all; this fails only if threads cannot start.
            .expect("octodb: cannot start the network runtime threads")
    })
}

/// A handle on the network runtime, for services that run their tasks beside the engine's.
pub(crate) fn runtime_handle() -> tokio::runtime::Handle {
    runtime().handle().clone()
}

/// Wait for `f` on the network runtime, blocking the calling thread (from async code too,
/// where it blocks that task's thread: async apps call the waits in `spawn_blocking`).
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    if tokio::runtime::Handle::try_current().is_ok() {
        // Called from async code (the app's runtime, `#[tokio::main]`), where tokio's
        // `block_on` panics: the future is polled on this thread, its timers and sockets in
        // the node's runtime, which its own threads drive. The caller's thread blocks
        // meanwhile, as the API's waits are documented to.
        let _node_runtime = runtime().enter();
        return futures_executor::block_on(f);
    }
    runtime().block_on(f)
}

/// Device sessions whose transactions could not be written, and why, by session: every one
/// is kept until its session ends (a single "last failure" lost the earlier ones when several
/// sessions failed together, and those sessions stopped reading for good).
pub(crate) type Unwritten = HashMap<u64, String>;

/// What the node's tasks share.
pub(crate) struct Shared {
    pub cfg: NodeConfig,
    pub keys: NodeKeys,
    pub identity: Arc<Identity>,
    pub jobs: mpsc::Sender<writer::Job>,
    /// Primary: last committed log sequence. Device: last applied sequence.
    pub feed: watch::Sender<u64>,
    /// Primary: the newest log entries, for the sessions streaming to devices.
    pub recent: crate::log::recent::Recent,
    /// Primary: which sessions streaming to devices a new entry wakes.
    pub audiences: Arc<audiences::Audiences>,
    /// Devices: a committed transaction could not be handed over in memory.
    pub outbox_changed: Notify,
    /// Devices: transactions just committed, for the task that sends them (see `secondary`).
    pub fresh_txns: mpsc::Sender<(u64, crate::changes::ChangeSet)>,
    pub fresh_txns_rx: tokio::sync::Mutex<mpsc::Receiver<(u64, crate::changes::ChangeSet)>>,
    /// Devices: the highest outbox transaction id sent since the node started (see
    /// `Writer::txn_ids_before_sending`).
    pub sent_txn_max: std::sync::atomic::AtomicU64,
    pub events: broadcast::Sender<Event>,
    pub live: Mutex<status::Live>,
    pub shutdown: watch::Sender<bool>,
    /// Primary: whose Raft calls it takes while it has no membership (a joining primary: the
    /// leaders that admitted it).
    pub admitters: crate::cluster::network::BeforeMembership,
    pub handshake: HandshakeOptions,
    pub bound: Mutex<Vec<SocketAddr>>,
    /// Pooled read connections, each with the generation of the file's key it was opened with.
    readers: Mutex<Vec<(u64, Connection)>>,
    /// The file's key (`cipher=`) as it is now; `PRAGMA rekey` changes it.
    pub file_key: Arc<crate::store::at_rest::CurrentKey>,
    read_turns: tokio::sync::Semaphore,
    /// Primaries: approved nodes, as last read from the file.
    pub approved: members::ApprovedCache,
    /// Primaries: the backend's deciding callbacks.
    pub callbacks: crate::auth::Callbacks,
    /// Primaries: each decision, for the sessions waiting on it.
    pub auth_decided: broadcast::Sender<(String, members::Admission)>,
    /// Primaries: connected devices by public key (hex), each with the wake-up its sessions
    /// wait on to end when the backend takes the device's approval back.
    pub connected_keys: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    /// Primaries: the devices whose transactions the writer could not write (a full disk, an
    /// I/O error), and why: their sessions end, telling them, so that they send those
    /// transactions again (after the device's back-off) once the primary can write.
    pub unwritten: watch::Sender<Unwritten>,
    /// Primaries: sessions whose device sent other work under a transaction id already
    /// decided (its file is a copy of another device's), with that id. Such a session ends,
    /// telling its device, and takes itself out.
    pub copied_files: watch::Sender<HashMap<u64, u64>>,
    /// Primaries: sessions waiting for a decision now (bounded by auth::MAX_PENDING).
    pub waiting: std::sync::atomic::AtomicUsize,
    /// Devices: the app made a sign-up or login request.
    pub auth_changed: Notify,
    /// Primaries: requests go to this external authorization service when set (its address,
    /// `host:port`, and its client's queue).
    pub service: Mutex<Option<(String, mpsc::Sender<crate::auth::AuthRequest>)>>,
    /// Turns at writing the file between the app's connections and the engine's writer.
    pub write_turns: Arc<write_turns::WriteTurns>,
    /// Devices: the key of the primary that admitted this device (kept in the file from its
    /// first welcome); a primary presenting another key gets nothing from it.
    pub primary_key: Mutex<Option<crate::crypto::PublicKey>>,
    /// Primaries: the Raft cluster the writer proposes its batches to (set at the start).
    pub cluster: OnceLock<crate::cluster::Proposer>,
    /// Primaries: whether this primary leads its cluster, and its members (see
    /// `cluster_member::follow_view`).
    pub cluster_view: watch::Sender<crate::cluster::ClusterView>,
    /// Primaries: the sequence number of the newest epoch marker this primary wrote
    /// (`node::epoch`); its device sessions then tell their devices the new epoch.
    pub epoch_marks: watch::Sender<u64>,
    /// Primaries: this run's first leadership began its epoch (or gave up trying): devices
    /// are served from then on, so that no batch of theirs lands before the marker.
    pub epoch_settled: std::sync::atomic::AtomicBool,
    /// Devices: the cluster's primaries as the primaries last told (kept in the file): where
    /// to fail over to, and the keys trusted besides the pinned one.
    pub known_primaries: Mutex<Vec<crate::net::PrimaryMember>>,
    /// Primaries: this one was opened to join a cluster (`connect=`, no cluster in its file
    /// yet, or a rejoin): its app's writes wait for the join (`Connection`'s driver).
    pub joins: bool,
    /// Devices: the session ticket each primary (by the endpoint it was reached at) last
    /// handed this device, for a resumed handshake on the next connection (`net::ticket`).
    /// In memory only: a restarted device runs the full handshake once.
    pub session_tickets: Mutex<HashMap<String, crate::net::Resumption>>,
    /// Primaries: batches written through, announced once the cluster committed them.
    announcements: mpsc::UnboundedSender<cluster_member::Announcement>,
    /// Primaries: the services served on service channels (`channels`).
    pub services: channels::Services,
    /// Counters and histograms for `/metrics` (kept whether or not the console runs).
    pub metrics: crate::admin::metrics::Metrics,
    /// Primaries: where the admin console listens, once it does.
    pub admin_addr: OnceLock<SocketAddr>,
    /// Primaries (the leader): the connection deciding followers' app transactions.
    pub forwarded: forwarded::Applying,
    /// Primaries: keys whose request a session is putting to this process's callback now.
    pub asking: waiting_requests::Asking,
}

pub(crate) use writer::unix_now;

/// `PRAGMA sync_status` of the node whose state is `shared` (for the admin console).
pub(crate) fn sync_status_of(shared: &Shared) -> Result<SyncStatus> {
    status::sync_status(shared)
}

/// `PRAGMA nodes` of the node whose state is `shared` (for the admin console).
pub(crate) fn nodes_of(shared: &Shared) -> Result<Vec<NodeRecord>> {
    status::nodes(shared)
}

pub(crate) fn cluster_status_of(p: &crate::cluster::Proposer) -> status::ClusterStatus {
    status::cluster_status(p.raft())
}

/// Primaries: `PRAGMA remove_primary` for the admin console (the leader's).
pub(crate) fn remove_primary(shared: &Shared, id: u64) -> Result<()> {
    cluster_member::remove_primary(shared, id)
}

/// Primaries: decide on `pubkey` by hand, as `PRAGMA authorize_*` does (the admin console's
/// buttons too). `preapproval`: the key may be one no node has presented yet (else that is an
/// error: most likely a mistyped key). Blocks until the decision is stored.
pub(crate) fn authorize(
    shared: &Shared,
    pubkey: String,
    decision: crate::auth::Decision,
    preapproval: bool,
) -> Result<()> {
    if shared.cfg.role != Some(Role::Primary) {
        return Err(Error::rule("only primaries authorize nodes"));
    }
    // A follower's decision goes to the leader, which records it for every primary.
    if let Some(proposer) = shared
        .cluster
        .get()
        .filter(|_| !shared.cluster_view.borrow().leading)
    {
        use crate::cluster::forward::{DecisionScope, ForwardedDecision};
        let forwarded = ForwardedDecision {
            pubkey,
            decision,
            scope: match preapproval {
                true => DecisionScope::Any,
                false => DecisionScope::Presented,
            },
        };
        return block_on(proposer.forward_decision(forwarded, FORWARD_WAIT_MAX));
    }
    let known = match preapproval {
        true => members::Known::Any,
        false => members::Known::Presented,
    };
    ask_writer(shared, |reply| writer::Job::AuthDecide {
        pubkey,
        decision,
        known,
        reply,
    })
    .map(drop)
}

/// Hands the writer a job and waits for its reply, blocking the calling thread: from async
/// code too (an app's `#[tokio::main]`), where tokio's own blocking calls panic ([`block_on`]).
fn ask_writer<T>(shared: &Shared, make: impl FnOnce(writer::Reply<T>) -> writer::Job) -> Result<T> {
    block_on(writer::ask(shared, make))
}

/// How long a follower waits for its leader to record a decision it forwards.
const FORWARD_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// A number for a session between two nodes, unique in this process: the writer refuses
/// what a session queued after some of its work failed.
pub(crate) fn next_session() -> u64 {
    static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Shared {
    /// A session of the device with `pubkey` begins: the wake-up that ends it on withdrawal.
    pub fn session_opened(&self, pubkey: &str) -> Arc<Notify> {
        let mut keys = self
            .connected_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = keys
            .entry(pubkey.to_string())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        entry.0.clone()
    }

    pub fn session_closed(&self, pubkey: &str) {
        let mut keys = self
            .connected_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = keys.get_mut(pubkey) {
            entry.1 -= 1;
            if entry.1 == 0 {
                keys.remove(pubkey);
            }
        }
    }

    /// The writer could not write these sessions' transactions: they end with `reason`,
    /// and the primary's `sync_error` says it until a write succeeds again.
    pub fn writes_failed(&self, sessions: &[u64], reason: String) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sync_error = Some(reason.clone());
        self.sessions_unwritten(sessions, reason);
    }

    /// These sessions' transactions were not written (by this primary's writer, or the
    /// leader's): each ends, telling its device `reason`.
    pub fn sessions_unwritten(&self, sessions: &[u64], reason: String) {
        self.unwritten.send_modify(|failed| {
            for session in sessions {
                failed.insert(*session, reason.clone());
            }
        });
    }

    /// Session `session`'s device sent other work under transaction id `txn`, already
    /// decided: its file is a copy of another device's.
    pub fn copied_file_found(&self, session: u64, txn: u64) {
        self.copied_files.send_modify(|found| {
            found.insert(session, txn);
        });
    }

    /// The download a resync began has ended: its note leaves `sync_error` (which is for
    /// what stops or slows sync now).
    pub fn resync_done(&self) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live
            .sync_error
            .as_deref()
            .is_some_and(|e| e.ends_with(secondary::RESYNC_NOTE))
        {
            live.sync_error = None;
        }
    }

    /// A write succeeded: whatever failed before is over.
    pub fn writes_succeed(&self) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.sync_error.is_some() {
            tracing::info!("the primary writes again");
            live.sync_error = None;
        }
    }

    /// The backend took the approval of `pubkey` back: end its open sessions now.
    pub fn approval_withdrawn(&self, pubkey: &str) {
        let keys = self
            .connected_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((notify, _)) = keys.get(pubkey) {
            notify.notify_waiters();
        }
    }

    pub fn path(&self) -> &PathBuf {
        &self.cfg.path
    }

    /// Run `f` with a read connection of the pool, off the async threads. At most `READERS`
    /// run at once: a burst of connecting devices must not open a SQLite connection (three
    /// files) each, nor occupy a blocking thread each.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _turn = self.read_turns.acquire().await.map_err(|_| Error::Closed)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.read_blocking(f))
            .await
            .map_err(|_| Error::Closed)?
    }

    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (generation, conn) = match pooled {
            Some(c) => c,
            None => {
                let generation = self.file_key.generation();
                let key = self.file_key.get();
                let c = store::open_connection(self.path(), key.as_ref())?;
                register_identity_functions(&c, &self.identity)?;
                (generation, c)
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        // One opened before a rekey holds the old key: closed, not pooled.
        if pool.len() < READERS && conn.is_autocommit() && generation == self.file_key.generation()
        {
            pool.push((generation, conn));
        }
        out
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Primaries: `entries` were committed; the sessions streaming to devices that may see
    /// them (or whose transaction they decide: `origin_user` names a device node's user) look.
    pub fn log_committed(
        &self,
        entries: Vec<crate::log::LogEntry>,
        origin_user: impl Fn(u32) -> Option<i64>,
    ) {
        let last = entries.iter().map(|e| e.seq).max().unwrap_or(0);
        let recorded = self.recent.push(entries);
        self.advance_feed(last);
        self.audiences.wake(&recorded, origin_user);
    }

    /// Primaries: `entries` were committed with their Raft entry; the sessions hear of them
    /// once the cluster has committed it (`users`: the users of the device nodes they decide).
    /// Announced by a task of its own, in order, even when the commit decided the batch by
    /// itself: the writer's thread, which every device's transaction goes through, does not
    /// also wake the sessions.
    pub fn announce_when_committed(
        &self,
        response: crate::cluster::Response,
        entries: Vec<crate::log::LogEntry>,
        users: Vec<(u32, i64)>,
    ) {
        if self.announcements.send((response, entries, users)).is_err() {
            tracing::debug!("the node stops: a batch is not announced");
        }
    }

    /// Move the feed forward to `seq` (never back), waking the tasks that follow it.
    pub fn advance_feed(&self, seq: u64) {
        self.feed.send_if_modified(|v| {
            let newer = seq > *v;
            if newer {
                *v = seq;
            }
            newer
        });
    }

    pub fn emit(&self, e: Event) {
        // No subscriber is fine: events are a convenience, status stays pollable.
        let _ = self.events.send(e);
    }
}

/// A node open in this process.
pub struct Node {
    pub(crate) shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    _lock: ProcessLock,
    /// Last, so dropped after the lock: tells this process's next opener of the file that it
    /// is free.
    pub(super) stopped: registry::Stopped,
}

impl Node {
    pub fn role(&self) -> Option<Role> {
        self.shared.cfg.role
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.shared.identity
    }

    pub fn public_key(&self) -> crate::crypto::PublicKey {
        self.shared.keys.public_key()
    }

    /// The addresses a primary listens on (with the real port when bound to port 0).
    pub fn bound_addrs(&self) -> Vec<SocketAddr> {
        self.shared
            .bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A user connection committed these log entries (primaries).
    pub fn committed_local(&self, entries: Vec<crate::log::LogEntry>) {
        // The primary's own transactions: no device is waiting for a decision on them.
        self.shared.log_committed(entries, |_| None);
    }

    /// A user connection committed log entries up to `seq` that are to be read from the file
    /// (primaries; its copies in memory were made before a `ROLLBACK TO`).
    pub fn committed_in_file(&self, seq: u64) {
        self.shared.advance_feed(seq);
        self.shared.audiences.wake_everyone(seq);
    }

    /// A user connection committed to the outbox; the sender reads it from the file (devices).
    pub fn outbox_changed(&self) {
        self.shared.outbox_changed.notify_one();
    }

    /// A user connection committed outbox transaction `txn_id` with these changes (devices).
    /// They are handed to the sending task in memory; if it cannot take them now (offline, or
    /// behind), it reads them from the outbox later.
    pub fn outbox_committed(&self, txn_id: u64, changes: crate::changes::ChangeSet) {
        tracing::trace!(txn_id, "outbox transaction committed");
        if self.shared.fresh_txns.try_send((txn_id, changes)).is_err() {
            // The sender reads the outbox instead (a stored permit if it is busy now).
            self.shared.outbox_changed.notify_one();
        }
    }

    /// `PRAGMA rekey`: re-encrypt the node's file with `new_key` through `conn`, the app's
    /// connection asking (the only one open on the node). The writer waits meanwhile and then
    /// reopens its connection with the new key; pooled readers are closed. The network key,
    /// kept in the file, stays as it was.
    pub fn rekey(&self, conn: &Connection, new_key: crate::uri::NetworkKey) -> Result<()> {
        if self.shared.cfg.cipher.is_none() {
            return Err(Error::rule(
                "PRAGMA rekey needs an encrypted file (cipher=sqlcipher); encrypt a copy of a \
                 plain file with `octodb encrypt`",
            ));
        }
        if let Some(proposer) = self.shared.cluster.get() {
            let members = proposer
                .raft()
                .metrics()
                .borrow()
                .membership_config
                .nodes()
                .count();
            if members > 1 {
                // Not a broken replication rule: a call this node does not offer now.
                return Err(Error::NotPermitted(
                    "PRAGMA rekey on a primary of a cluster of several is not supported while \
                     it runs: stop it, run the PRAGMA on its file opened without node= \
                     (file:PATH?cipher=sqlcipher&key=OLD; the file keeps its network key), and \
                     start it again with the new key"
                        .into(),
                ));
            }
        }
        let (paused_tx, paused_rx) = tokio::sync::oneshot::channel();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel();
        let pause = writer::Job::PauseForRekey {
            paused: paused_tx,
            resume: resume_rx,
        };
        // (Through `block_on`: from async code too, where tokio's blocking calls panic.)
        block_on(self.shared.jobs.send(pause)).map_err(|_| Error::Closed)?;
        block_on(paused_rx).map_err(|_| Error::Closed)??;
        let done =
            crate::store::at_rest::rekey(conn, self.shared.path(), new_key, &self.shared.file_key)
                .and_then(|()| match self.shared.cluster.get() {
                    // The Raft log's and state machine's connections hold the old key.
                    Some(p) => p
                        .reopen_storage(self.shared.path(), self.shared.file_key.get().as_ref())
                        .map_err(|e| {
                            Error::rule(format!(
                                "the file now has the new key, but the cluster's storage could \
                                 not reopen with it ({e}): restart the node with the new key"
                            ))
                        }),
                    None => Ok(()),
                });
        self.shared
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let _ = resume_tx.send(done.is_ok());
        done
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    pub fn sync_status(&self) -> Result<SyncStatus> {
        status::sync_status(&self.shared)
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        status::nodes(&self.shared)
    }

    /// Devices: the app signs up or logs in (`PRAGMA user_signup` / `user_login`).
    pub fn request_auth(&self, action: crate::auth::Action, data: String) -> Result<()> {
        let bad = |reason: String| Error::Pragma {
            name: action.as_str().into(),
            reason,
        };
        if self.role() != Some(Role::Secondary) {
            return Err(bad("only devices (node=secondary) sign up or log in".into()));
        }
        let id = &self.shared.identity;
        // An approved device asks again only when a primary restored from an older copy,
        // which does not know it, asked it to (`restored_ids`); one whose approval the backend
        // took back ("rejected") stays out.
        let asked_again = self
            .shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .auth_state
            .as_deref()
            == Some("required");
        if id.node_id() != 0 && !asked_again {
            return Err(bad(format!(
                "this device is already authorized (node {}, user {}); no new sign-up or login is needed",
                id.node_id(),
                id.user_id()
            )));
        }
        if data.len() > crate::auth::MAX_REQUEST_DATA {
            return Err(bad(format!(
                "the data is larger than {} bytes",
                crate::auth::MAX_REQUEST_DATA
            )));
        }
        {
            let mut live = self.shared.live.lock().unwrap_or_else(|p| p.into_inner());
            live.auth_request = Some(crate::net::AuthAsk { action, data });
            // A refusal of an earlier request no longer stands: "requested" until answered.
            live.auth_state = None;
            live.auth_error = None;
        }
        self.shared.auth_changed.notify_one();
        Ok(())
    }

    /// Devices whose file was found a copy of another device's (`PRAGMA new_identity`): a new
    /// key pair for the next open; returns its public key (hex).
    pub fn new_identity(&self) -> Result<String> {
        ask_writer(&self.shared, |reply| writer::Job::NewIdentity { reply })
    }

    /// Primaries: the node id of `pubkey`, given to it now if it waits for approval (0 for a
    /// key no node presented).
    pub fn reserve_node_id(&self, pubkey: String) -> Result<u32> {
        ask_writer(&self.shared, |reply| writer::Job::ReserveNodeId {
            pubkey,
            reply,
        })
    }

    /// Primaries: the user `pubkey` becomes if approved as a device: the one it had, else a
    /// new one made now (an authorization service's `@user_id`).
    pub fn reserve_user_id(&self, pubkey: String) -> Result<i64> {
        ask_writer(&self.shared, |reply| writer::Job::ReserveUserId {
            pubkey,
            reply,
        })
    }

    /// Primaries: decide on `pubkey` by hand. `preapproval`: the key may be one no node has
    /// presented yet (else that is an error: most likely a mistyped key).
    pub fn authorize(
        &self,
        pubkey: String,
        decision: crate::auth::Decision,
        preapproval: bool,
    ) -> Result<()> {
        authorize(&self.shared, pubkey, decision, preapproval)
    }

    /// Primaries: where the admin console listens (`admin=`), once it does.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.shared.admin_addr.get().copied()
    }

    /// Primaries: the admin console's token (the URI's, or the one kept in the file).
    pub fn admin_token(&self) -> Result<Option<String>> {
        if let Some(t) = self
            .shared
            .cfg
            .admin
            .as_ref()
            .and_then(|a| a.token.as_ref())
        {
            return Ok(Some(t.0.clone()));
        }
        self.shared
            .read_blocking(|c| meta_get::<String>(c, crate::admin::auth::TOKEN_KEY))
    }

    /// Primaries: send authorization requests to the service at `addr` ("host:port") from now
    /// on, keeping a connection to it (re-established when the service restarts).
    pub fn set_authorizer_service(
        &self,
        addr: String,
        exec: crate::auth::service::Executor,
    ) -> Result<()> {
        if self.role() != Some(Role::Primary) {
            return Err(Error::rule("only primaries use an authorization service"));
        }
        let (req_tx, req_rx) = mpsc::channel(crate::auth::MAX_PENDING);
        let (ans_tx, mut ans_rx) = mpsc::channel::<crate::auth::service::Decided>(64);
        let shared = self.shared.clone();
        let settled = self.shared.auth_decided.subscribe();
        let client = runtime().spawn(crate::auth::service::run(
            addr.clone(),
            req_rx,
            exec,
            ans_tx,
            settled,
        ));
        let applier = runtime().spawn(async move {
            while let Some((a, applied)) = ans_rx.recv().await {
                // Only a request that still waits: a late answer (the console decided
                // meanwhile) or one for a key that never asked changes nothing.
                let recorded = waiting_requests::record(&shared, a.pubkey, a.decision).await;
                if let Err(e) = &recorded {
                    tracing::warn!("the authorization service's answer is not applied: {e}");
                }
                let _ = applied.send(recorded.is_ok());
            }
        });
        *self
            .shared
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((addr, req_tx));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([client, applier]);
        Ok(())
    }

    /// Primaries: the authorization service's address (`host:port`), when one decides.
    pub fn authorizer_service(&self) -> Option<String> {
        self.shared
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(addr, _)| addr.clone())
    }

    /// Primaries: `PRAGMA remove_primary`: the cluster's leader takes primary `id` out of the
    /// cluster. Blocks until the cluster has committed the change.
    pub fn remove_primary(&self, id: u64) -> Result<()> {
        cluster_member::remove_primary(&self.shared, id)
    }

    /// Primaries: the backend's deciding function for `action`, called on a worker thread.
    pub fn set_auth_callback(
        &self,
        action: crate::auth::Action,
        f: crate::auth::Callback,
    ) -> Result<()> {
        if self.role() != Some(Role::Primary) {
            return Err(Error::rule(format!(
                "the {} callback decides on a primary; this node is not one",
                action.as_str()
            )));
        }
        self.shared.callbacks.set(action, f);
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.shared.cfg.role == Some(Role::Secondary) {
            // A record of it for the app (the CLI's shell says it on its own): a normal
            // state for a device closed offline, so not a warning.
            let unsent = self.shared.read_blocking(crate::log::outbox::len);
            if let Ok(n @ 1..) = unsent {
                tracing::info!(
                    transactions = n,
                    "device closed with work not yet sent to the primaries: kept in its file, \
                     sent when it next runs connected"
                );
            }
        }
        let _ = self.shared.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in &tasks {
            t.abort();
        }
        // Wait (briefly) so that listening sockets are closed when the node is gone: a node
        // reopened right away in this process must be able to bind the same port.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while tasks.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            send_stop(
                &self.shared.jobs,
                || w.is_finished(),
                || std::thread::sleep(std::time::Duration::from_millis(1)),
            );
            let _ = w.join();
        }
        // The connection that applies the followers' transactions closes (once the one it
        // may be deciding is written).
        *self
            .shared
            .forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        // The Raft node's task holds connections to the file: it ends with the node (and so
        // do the member connections it serves), a leader's once a majority holds its writes.
        if let Some(proposer) = self.shared.cluster.get() {
            let raft = proposer.raft().clone();
            let stopped = on_runtime(async move {
                crate::cluster::hand_over_before_stopping(&raft).await;
                raft.shutdown().await
            });
            if let Ok(Err(e)) = stopped {
                tracing::warn!("stopping the primary's Raft node: {e}");
            }
        }
    }
}

/// Runs `f` on the network runtime and waits for it, from any thread (unlike [`block_on`],
/// also from one of the runtime's own, though it then holds that thread meanwhile).
fn on_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime().spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| Error::Closed)
}

/// Queue the writer's stop job. The queue may be full (sessions ending together each queue a
/// job): wait for room, with `pause` between tries, rather than give up, or the writer would
/// wait for jobs for ever and the node's close with it; stop trying once `writer_finished`.
/// Not `blocking_send`: a node may be dropped on a runtime thread.
fn send_stop(
    jobs: &mpsc::Sender<writer::Job>,
    writer_finished: impl Fn() -> bool,
    pause: impl Fn(),
) {
    let mut stop = writer::Job::Stop;
    loop {
        match jobs.try_send(stop) {
            Err(mpsc::error::TrySendError::Full(job)) if !writer_finished() => {
                stop = job;
                pause();
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;

    #[test]
    fn the_stop_job_waits_for_room_in_a_full_queue() {
        let (jobs, mut queue) = mpsc::channel(2);
        while jobs.try_send(writer::Job::Stop).is_ok() {}
        // A writer that drains the queue only once the sender has met it full.
        let (release, released) = std_mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let _ = released.recv();
            let mut stops = 0;
            while let Some(job) = queue.blocking_recv() {
                if matches!(job, writer::Job::Stop) {
                    stops += 1;
                }
                if stops == 3 {
                    return true;
                }
            }
            false
        });
        send_stop(
            &jobs,
            || false,
            || {
                let _ = release.send(());
            },
        );
        drop(jobs);
        drop(release);
        assert!(
            writer.join().expect("writer thread"),
            "the third stop, sent while the queue held two, reached the writer"
        );
    }
}
