//! The broker's server: runs on a primary, serves the `broker` service channel (or another
//! name), answers requests through its loaders, and tells clients of changes.
//!
//! Ordering: each client has one outgoing queue. An invalidation is queued for every client
//! that holds the object at the moment it is announced (synchronously, before `invalidate`
//! returns); a reply is queued when its request is done. So a reply always follows the
//! invalidations announced before it, and a caller's cache is already fresh when the call that
//! changed something returns.

use crate::codec::{self, Limits, ObjectState, Value};
use crate::error::{BrokerError, RemoteError};
use crate::key::{Key, ObjRef, Secret};
use crate::outbox::{Full, Outbox};
use crate::protocol::{self, Op, Request, SearchMode, ServerFrame};
use octodb::api::channel::Channel;
use octodb::Role;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The loader of objects added with `add_static`.
pub const STATIC_LOADER: &str = "static";
/// Frames waiting for one client; a client that falls this far behind is disconnected (it
/// reconnects and drops its cache, so it misses nothing).
const CLIENT_QUEUE: usize = 4096;
/// Requests of one client handled at once.
const CONCURRENT_REQUESTS: usize = 16;

/// Who is asking, as the node network authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: u32,
    /// 0: no user (a node approved with `auth=node`, or a primary).
    pub user_id: i64,
    /// Hex.
    pub public_key: String,
    pub role: Role,
}

/// A call's arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    pub positional: Vec<Value>,
    pub keywords: Vec<(String, Value)>,
}

/// A field change: its name, the value the client last saw, and the new value.
pub type Change = (String, Value, Value);

/// Where objects come from: the static objects, an exported SQL table, a Python program's
/// objects. Each method that a loader does not support answers so.
pub trait Loader: Send + Sync + 'static {
    /// The object's state (its key unsigned: the server signs every reference it sends).
    fn fetch(&self, peer: &Peer, key: &Key) -> Result<ObjectState, BrokerError>;

    fn call(
        &self,
        _peer: &Peer,
        key: &Key,
        method: &str,
        _args: Args,
    ) -> Result<Value, BrokerError> {
        Err(BrokerError::Unknown(format!(
            "object {key} exports no method `{method}`"
        )))
    }

    /// The objects behind a one-to-many reference (as references or whole).
    fn backref(&self, _peer: &Peer, key: &Key, name: &str) -> Result<Vec<Value>, BrokerError> {
        Err(BrokerError::Unknown(format!(
            "object {key} has no list reference `{name}`"
        )))
    }

    /// `get`/`find` (a list of objects) or `count` (an int) on one of this loader's classes.
    fn search(
        &self,
        _peer: &Peer,
        class: &str,
        _eq: &[(String, Value)],
        _limit: Option<u32>,
        _mode: SearchMode,
    ) -> Result<Value, BrokerError> {
        Err(BrokerError::Unknown(format!(
            "class {class} cannot be searched"
        )))
    }

    fn create(
        &self,
        _peer: &Peer,
        class: &str,
        _values: Vec<(String, Value)>,
    ) -> Result<Value, BrokerError> {
        Err(BrokerError::Permission(format!(
            "class {class} is not writable through the broker"
        )))
    }

    fn update(&self, _peer: &Peer, key: &Key, _changes: Vec<Change>) -> Result<(), BrokerError> {
        Err(BrokerError::Permission(format!(
            "object {key} is not writable through the broker"
        )))
    }

    fn delete(&self, _peer: &Peer, key: &Key) -> Result<(), BrokerError> {
        Err(BrokerError::Permission(format!(
            "object {key} is not deletable through the broker"
        )))
    }
}

/// A plain server call's handler (`call("hello", "you")`).
pub type CallHandler = Arc<dyn Fn(&Peer, Args) -> Result<Value, BrokerError> + Send + Sync>;
/// Handles plain calls by name (a Python server's `do_*` methods).
pub type FallbackHandler =
    Arc<dyn Fn(&Peer, &str, Args) -> Result<Value, BrokerError> + Send + Sync>;

/// What the server tells a client, as the server decides it.
struct ClientSession {
    out: Arc<Outbox>,
    peer: Peer,
    /// Objects sent to it whole: it caches them, so it must hear of their changes.
    held: HashSet<Key>,
    /// Classes it searched or watches.
    classes: HashSet<String>,
    /// Rung to end the session (its queue overflowed).
    kicked: Arc<tokio::sync::Notify>,
}

pub(crate) struct Inner {
    service: String,
    secret: Secret,
    limits: Limits,
    loaders: RwLock<HashMap<String, Arc<dyn Loader>>>,
    /// Class name → loader name.
    classes: RwLock<HashMap<String, String>>,
    root: RwLock<Option<Key>>,
    calls: RwLock<HashMap<String, CallHandler>>,
    /// Handles calls no registered name matches (a Python server's `do_*` methods).
    fallback_call: RwLock<Option<FallbackHandler>>,
    sessions: Mutex<HashMap<u64, ClientSession>>,
    next_session: AtomicU64,
    stopped: AtomicBool,
    /// Exported tables (lower-case name) → the exports of each (a table may be exported under
    /// several names), for invalidations from the feed.
    pub(crate) tables: RwLock<HashMap<String, Vec<String>>>,
    /// Invalidations announced (for tests and benchmarks).
    announced: AtomicU64,
    /// The latest invalidations, numbered: a reply read before one of them and sent after it
    /// must not leave the client with the old state (see `outgoing`).
    recent: Mutex<RecentInvalidations>,
}

/// Keys invalidated lately, with their numbers (bounded: beyond, the oldest are forgotten and
/// a reply older than what is kept is treated as stale).
#[derive(Default)]
struct RecentInvalidations {
    next: u64,
    keys: std::collections::VecDeque<(u64, Key)>,
}

const RECENT_INVALIDATIONS: usize = 4096;

/// A running broker server. Cloning shares it.
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves `service` on the primary behind `conn`, with the secret kept in its database
    /// (see [`Secret::load_or_create`]). Clients connect with [`crate::Client::connect`].
    pub fn start(conn: &octodb::Connection, service: &str) -> Result<Server, BrokerError> {
        let secret = Secret::load_or_create(conn, service)?;
        let server = Server::with_secret(service, secret);
        let inner = server.inner.clone();
        conn.serve_channel(service, move |ch: Channel| {
            let inner = inner.clone();
            async move { run_session(inner, ch).await }
        })?;
        tracing::info!(service, "broker serving");
        Ok(server)
    }

    fn with_secret(service: &str, secret: Secret) -> Server {
        Server {
            inner: Arc::new(Inner {
                service: service.to_string(),
                secret,
                limits: Limits::default(),
                loaders: Default::default(),
                classes: Default::default(),
                root: Default::default(),
                calls: Default::default(),
                fallback_call: Default::default(),
                sessions: Default::default(),
                next_session: AtomicU64::new(1),
                stopped: AtomicBool::new(false),
                tables: Default::default(),
                announced: AtomicU64::new(0),
                recent: Default::default(),
            }),
        }
    }

    /// Stops serving: open sessions end, new channels are refused.
    pub fn stop(&self, conn: &octodb::Connection) -> Result<(), BrokerError> {
        self.inner.stopped.store(true, Ordering::SeqCst);
        conn.stop_serving_channel(&self.inner.service)?;
        let sessions = std::mem::take(&mut *lock(&self.inner.sessions));
        for s in sessions.values() {
            s.kicked.notify_one();
        }
        Ok(())
    }

    /// Adds (or replaces) the loader named `name`: keys whose loader is `name` go to it.
    pub fn add_loader(&self, name: &str, loader: Arc<dyn Loader>) {
        write(&self.inner.loaders).insert(name.to_string(), loader);
    }

    /// `class` is searched and created through the loader named `loader`.
    pub fn add_class(&self, class: &str, loader: &str) {
        write(&self.inner.classes).insert(class.to_string(), loader.to_string());
    }

    /// The object clients get as `root`.
    pub fn set_root(&self, key: Key) {
        *write(&self.inner.root) = Some(key);
    }

    /// Registers a plain call: `call(name, ...)` on a client runs `handler`.
    pub fn add_call(&self, name: &str, handler: CallHandler) {
        write(&self.inner.calls).insert(name.to_string(), handler);
    }

    /// Handles plain calls no [`Server::add_call`] name matches.
    pub fn set_fallback_call(&self, handler: FallbackHandler) {
        *write(&self.inner.fallback_call) = Some(handler);
    }

    /// The reference a client may use for `key` (signed with the server's secret).
    pub fn reference(&self, key: Key) -> ObjRef {
        let mut r = ObjRef::unsigned(key);
        self.inner.secret.sign(&mut r);
        r
    }

    /// These objects changed or were deleted: every client holding one is told, before any
    /// reply queued after this call.
    pub fn invalidate(&self, keys: &[Key]) {
        self.inner.invalidate(keys);
    }

    /// Objects of `class` changed, appeared or went: clients that searched it drop those
    /// searches.
    pub fn class_changed(&self, class: &str) {
        self.inner.class_changed(class);
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// Invalidation frames queued so far.
    pub fn invalidations_announced(&self) -> u64 {
        self.inner.announced.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub(crate) fn invalidate(&self, keys: &[Key]) {
        if keys.is_empty() {
            return;
        }
        let mut sessions = lock(&self.sessions);
        {
            let mut recent = lock(&self.recent);
            for k in keys {
                recent.next += 1;
                let n = recent.next;
                recent.keys.push_back((n, k.clone()));
                if recent.keys.len() > RECENT_INVALIDATIONS {
                    recent.keys.pop_front();
                }
            }
        }
        for s in sessions.values_mut() {
            let told: Vec<Key> = keys.iter().filter(|k| s.held.remove(*k)).cloned().collect();
            if !told.is_empty() {
                self.announced.fetch_add(1, Ordering::Relaxed);
                queue(s, ServerFrame::Invalidate { keys: told });
            }
        }
    }

    pub(crate) fn class_changed(&self, class: &str) {
        let mut sessions = lock(&self.sessions);
        for s in sessions.values_mut() {
            if s.classes.contains(class) {
                queue(
                    s,
                    ServerFrame::ClassChanged {
                        class: class.to_string(),
                    },
                );
            }
        }
    }

    fn loader(&self, name: &str) -> Result<Arc<dyn Loader>, BrokerError> {
        read(&self.loaders)
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::NotFound(format!("(loader `{name}`)")))
    }

    fn class_loader(&self, class: &str) -> Result<Arc<dyn Loader>, BrokerError> {
        let name = read(&self.classes).get(class).cloned().ok_or_else(|| {
            BrokerError::Unknown(format!("the server exports no class named `{class}`"))
        })?;
        self.loader(&name)
    }

    /// The key behind a client's reference, if the server handed it out.
    fn checked(&self, r: ObjRef) -> Result<Key, BrokerError> {
        if self.secret.verify(&r) {
            Ok(r.key)
        } else {
            Err(BrokerError::Permission(format!(
                "unknown or forged object key {}: use references the server sent",
                r.key
            )))
        }
    }

    /// Decodes a value from a client and checks every reference in it.
    fn incoming(&self, bytes: &[u8]) -> Result<Value, BrokerError> {
        let mut v = codec::decode(bytes, &self.limits)?;
        let mut forged = None;
        v.refs_mut(&mut |r| {
            if forged.is_none() && !self.secret.verify(r) {
                forged = Some(r.key.clone());
            }
        });
        match forged {
            Some(k) => Err(BrokerError::Permission(format!(
                "unknown or forged object key {k} in the arguments"
            ))),
            None => Ok(v),
        }
    }

    fn dispatch(&self, session: u64, peer: &Peer, op: Op) -> Result<Value, BrokerError> {
        match op {
            Op::Root => {
                let key = read(&self.root).clone().ok_or_else(|| {
                    BrokerError::Unknown("the server has no root object yet".into())
                })?;
                self.fetch(peer, key)
            }
            Op::Fetch { target } => {
                let key = self.checked(target)?;
                self.fetch(peer, key)
            }
            Op::Call {
                target,
                method,
                args,
            } => {
                let args = args_of(self.incoming(&args)?)?;
                match target {
                    Some(t) => {
                        let key = self.checked(t)?;
                        self.loader(&key.loader)?.call(peer, &key, &method, args)
                    }
                    None => {
                        let handler = read(&self.calls).get(&method).cloned();
                        if let Some(h) = handler {
                            return h(peer, args);
                        }
                        let fallback = read(&self.fallback_call).clone().ok_or_else(|| {
                            BrokerError::Unknown(format!("the server has no call named `{method}`"))
                        })?;
                        fallback(peer, &method, args)
                    }
                }
            }
            Op::BackRef { target, name } => {
                let key = self.checked(target)?;
                Ok(Value::List(
                    self.loader(&key.loader)?.backref(peer, &key, &name)?,
                ))
            }
            Op::Search {
                class,
                eq,
                limit,
                mode,
            } => {
                let eq = pairs_of(self.incoming(&eq)?, "search criteria")?;
                let loader = self.class_loader(&class)?;
                if let Some(s) = lock(&self.sessions).get_mut(&session) {
                    s.classes.insert(class.clone());
                }
                loader.search(peer, &class, &eq, limit, mode)
            }
            Op::New { class, values } => {
                let values = pairs_of(self.incoming(&values)?, "new object's fields")?;
                self.class_loader(&class)?.create(peer, &class, values)
            }
            Op::Update { target, changes } => {
                let key = self.checked(target)?;
                let mut list = Vec::new();
                for (name, v) in pairs_of(self.incoming(&changes)?, "changes")? {
                    match v {
                        Value::Tuple(mut ov) | Value::List(mut ov) if ov.len() == 2 => {
                            let new = ov.pop().unwrap_or(Value::None);
                            let old = ov.pop().unwrap_or(Value::None);
                            list.push((name, old, new));
                        }
                        _ => {
                            return Err(BrokerError::Codec(codec::CodecError::Malformed(
                                "each change is (old value, new value)".into(),
                            )))
                        }
                    }
                }
                self.loader(&key.loader)?.update(peer, &key, list)?;
                Ok(Value::None)
            }
            Op::Delete { target } => {
                let key = self.checked(target)?;
                self.loader(&key.loader)?.delete(peer, &key)?;
                Ok(Value::None)
            }
        }
    }

    /// An object's state. A change announced while it is read is caught by `outgoing`; a
    /// refused or missing object is not held, so the client hears nothing of it.
    fn fetch(&self, peer: &Peer, key: Key) -> Result<Value, BrokerError> {
        let state = self.loader(&key.loader)?.fetch(peer, &key)?;
        Ok(Value::Object(Box::new(state)))
    }

    /// The number of the latest invalidation (taken before a request is handled).
    fn invalidations_so_far(&self) -> u64 {
        lock(&self.recent).next
    }

    /// Signs every reference of a reply and notes the objects sent whole as held. An object
    /// invalidated after the request began (`since`) may have been read before its change,
    /// while the client did not hold it yet: the second frame returned, to be sent right after
    /// the reply, tells the client to drop that copy.
    fn outgoing(&self, session: u64, since: u64, mut v: Value) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut whole = Vec::new();
        collect_objects(&v, &mut whole);
        let mut after = None;
        if !whole.is_empty() {
            let mut sessions = lock(&self.sessions);
            let stale: Vec<Key> = {
                let recent = lock(&self.recent);
                let forgotten = recent.keys.front().is_some_and(|(n, _)| *n > since + 1);
                whole
                    .iter()
                    .filter(|k| {
                        forgotten
                            || recent
                                .keys
                                .iter()
                                .rev()
                                .take_while(|(n, _)| *n > since)
                                .any(|(_, r)| r == *k)
                    })
                    .cloned()
                    .collect()
            };
            if let Some(s) = sessions.get_mut(&session) {
                s.held.extend(whole);
                if !stale.is_empty() {
                    for k in &stale {
                        s.held.remove(k);
                    }
                    after = Some(protocol::encode(&ServerFrame::Invalidate { keys: stale }));
                }
            }
        }
        v.refs_mut(&mut |r| self.secret.sign(r));
        (codec::encode(&v), after)
    }
}

fn collect_objects(v: &Value, out: &mut Vec<Key>) {
    match v {
        Value::Object(o) => {
            out.push(o.key.key.clone());
            o.fields.iter().for_each(|(_, v)| collect_objects(v, out));
        }
        Value::List(items) | Value::Tuple(items) => {
            items.iter().for_each(|i| collect_objects(i, out));
        }
        Value::Dict(pairs) => pairs.iter().for_each(|(_, v)| collect_objects(v, out)),
        Value::Custom { value, .. } | Value::Shared { value, .. } => collect_objects(value, out),
        _ => {}
    }
}

fn queue(s: &mut ClientSession, frame: ServerFrame) {
    if let Err(Full) = s.out.push(protocol::encode(&frame)) {
        tracing::warn!(
            node = s.peer.node_id,
            "broker client too far behind: disconnected (it reconnects and refetches)"
        );
        s.kicked.notify_one();
    }
}

/// `(positional list, keyword dict)` as the client sends a call's arguments.
fn args_of(v: Value) -> Result<Args, BrokerError> {
    let bad = || {
        BrokerError::Codec(codec::CodecError::Malformed(
            "a call's arguments are (list, dict)".into(),
        ))
    };
    let Value::Tuple(mut parts) = v else {
        return Err(bad());
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let keywords = pairs_of(parts.pop().unwrap_or(Value::None), "keyword arguments")?;
    let positional = match parts.pop() {
        Some(Value::List(items)) | Some(Value::Tuple(items)) => items,
        _ => return Err(bad()),
    };
    Ok(Args {
        positional,
        keywords,
    })
}

/// A dict of names to values.
pub(crate) fn pairs_of(v: Value, what: &str) -> Result<Vec<(String, Value)>, BrokerError> {
    let Value::Dict(pairs) = v else {
        return Err(BrokerError::Codec(codec::CodecError::Malformed(format!(
            "{what} must be a dict of names to values"
        ))));
    };
    pairs
        .into_iter()
        .map(|(k, v)| match k {
            Value::Str(s) => Ok((s, v)),
            _ => Err(BrokerError::Codec(codec::CodecError::Malformed(format!(
                "{what}: names must be strings"
            )))),
        })
        .collect()
}

async fn run_session(inner: Arc<Inner>, ch: Channel) {
    if inner.stopped.load(Ordering::SeqCst) {
        return;
    }
    let (mut rd, wr, chpeer) = ch.into_split();
    let peer = Peer {
        node_id: chpeer.node_id,
        user_id: chpeer.user_id,
        public_key: chpeer.public_key.to_hex(),
        role: chpeer.role,
    };
    let id = inner.next_session.fetch_add(1, Ordering::Relaxed);
    let out = Arc::new(Outbox::new(wr, CLIENT_QUEUE));
    let runtime = tokio::runtime::Handle::current();
    let kicked = Arc::new(tokio::sync::Notify::new());
    lock(&inner.sessions).insert(
        id,
        ClientSession {
            out: out.clone(),
            peer: peer.clone(),
            held: HashSet::new(),
            classes: HashSet::new(),
            kicked: kicked.clone(),
        },
    );
    tracing::debug!(
        node = peer.node_id,
        user = peer.user_id,
        "broker client connected"
    );
    let writing = out.run_writer();
    let turns = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_REQUESTS));
    let reading = async {
        loop {
            let bytes = rd.recv().await?;
            let request: Request = match protocol::decode(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(node = peer.node_id, "broker client sent a bad frame: {e}");
                    return Ok(());
                }
            };
            let Ok(turn) = turns.clone().acquire_owned().await else {
                return Ok(());
            };
            let (inner, peer, out) = (inner.clone(), peer.clone(), out.clone());
            let (runtime, kicked) = (runtime.clone(), kicked.clone());
            // Handled on a blocking thread (the program's handler may be slow, or wait for
            // Python's GIL), which sends the reply itself (`Outbox`).
            tokio::task::spawn_blocking(move || {
                let rid = request.id;
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let since = inner.invalidations_so_far();
                    inner
                        .dispatch(id, &peer, request.op)
                        .map(|v| inner.outgoing(id, since, v))
                }));
                let result = handled.unwrap_or_else(|_| {
                    Err(BrokerError::Internal(
                        "the server's handler panicked".into(),
                    ))
                });
                if let Err(e) = &result {
                    tracing::debug!(node = peer.node_id, "broker request failed: {e}");
                }
                let (result, after) = match result {
                    Ok((reply, after)) => (Ok(reply), after),
                    Err(e) => (Err(RemoteError::from(&e)), None),
                };
                let frame = protocol::reply_within_limit(rid, result);
                if let Err(e) = out.send_blocking(&runtime, std::iter::once(frame).chain(after)) {
                    tracing::debug!(node = peer.node_id, "broker reply not sent: {e}");
                    kicked.notify_one();
                }
                drop(turn);
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), octodb::net::NetError>(())
    };
    tokio::select! {
        r = reading => if let Err(e) = r { tracing::debug!("broker client gone: {e}") },
        r = writing => if let Err(e) = r { tracing::debug!("broker client gone: {e}") },
        () = kicked.notified() => {}
    }
    lock(&inner.sessions).remove(&id);
    tracing::debug!(node = peer.node_id, "broker client disconnected");
}
