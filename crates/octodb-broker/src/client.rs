//! The broker's client: runs on a device (or another node), opens the service channel with the
//! node's keys, sends requests, applies the server's invalidations to its cache before any
//! reply that follows them, and reconnects by itself.
//!
//! After a reconnection the client cannot know what it missed while away: it drops its whole
//! cache (and says so to listeners, [`Notice::Reconnected`]); references stay valid, since keys
//! are stable and their access codes come from the secret all primaries share.

use crate::codec::{self, Limits, ObjectState, Value};
use crate::error::BrokerError;
use crate::key::{Key, ObjRef};
use crate::protocol::{self, Op, Request, SearchMode, ServerFrame};
use octodb::api::channel::{self as channel, ChannelOpener};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How long a request waits for a connection and its reply, unless the client is told
/// otherwise ([`Client::set_request_timeout`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// What the server told the client, for listeners (`on_change`).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Invalidated(Vec<Key>),
    ClassChanged(String),
    /// The connection was lost and made again: anything may have changed meanwhile.
    Reconnected,
}

/// What changed since the last [`Client::take_changes`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub keys: HashSet<Key>,
    pub classes: HashSet<String>,
    /// Everything may have changed (a reconnection).
    pub everything: bool,
}

type Listener = Arc<dyn Fn(Notice) + Send + Sync>;

struct State {
    /// The current connection's writing half (requests are written by the calling thread:
    /// no hand-over to another task).
    writer: Option<Arc<tokio::sync::Mutex<octodb::net::SecureWriter>>>,
    pending: HashMap<u64, oneshot::Sender<Result<Value, BrokerError>>>,
    cache: HashMap<Key, Arc<ObjectState>>,
    changes: Changes,
}

struct Inner {
    opener: ChannelOpener,
    service: String,
    state: Mutex<State>,
    /// Bumped with every change noted in `changes` (a cheap check for the Python proxies).
    epoch: AtomicU64,
    next_id: AtomicU64,
    connected: watch::Sender<bool>,
    /// Why the last connection attempt failed.
    last_error: Mutex<Option<String>>,
    stopped: AtomicBool,
    listener: Mutex<Option<Listener>>,
    notices: mpsc::UnboundedSender<Notice>,
    /// How long a request waits for a connection and its reply.
    request_timeout: Mutex<Duration>,
}

/// A connection to a broker server. Cloning shares it; it ends when the last clone is dropped
/// (or on [`Client::close`]).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _closer: Arc<Closer>,
}

struct Closer(Arc<Inner>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let mut st = lock(&self.state);
        st.writer = None;
        for (_, w) in st.pending.drain() {
            let _ = w.send(Err(BrokerError::Connection("the client was closed".into())));
        }
        drop(st);
        self.connected.send_replace(false);
    }

    fn note(&self, notice: Notice) {
        {
            let mut st = lock(&self.state);
            match &notice {
                Notice::Invalidated(keys) => {
                    for k in keys {
                        st.cache.remove(k);
                        st.changes.keys.insert(k.clone());
                    }
                }
                Notice::ClassChanged(c) => {
                    st.changes.classes.insert(c.clone());
                }
                Notice::Reconnected => {
                    st.cache.clear();
                    st.changes.everything = true;
                }
            }
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let _ = self.notices.send(notice);
    }
}

/// How often a client waiting for its first connection looks whether its node was refused.
const REFUSAL_CHECK: Duration = Duration::from_millis(100);

impl Client {
    /// Connects to the broker `service` on the primary of the node behind `conn` (usually a
    /// device), with that node's keys. Waits for the first connection at most `timeout`.
    pub fn connect(
        conn: &octodb::Connection,
        service: &str,
        timeout: Duration,
    ) -> Result<Client, BrokerError> {
        let opener = conn.channel_opener()?;
        let (notices, notices_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            opener,
            service: service.to_string(),
            state: Mutex::new(State {
                writer: None,
                pending: HashMap::new(),
                cache: HashMap::new(),
                changes: Changes::default(),
            }),
            epoch: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            connected: watch::channel(false).0,
            last_error: Mutex::new(None),
            stopped: AtomicBool::new(false),
            listener: Mutex::new(None),
            notices,
            request_timeout: Mutex::new(REQUEST_TIMEOUT),
        });
        spawn_listener_thread(inner.clone(), notices_rx)?;
        channel::spawn(maintain(inner.clone()));
        let client = Client {
            _closer: Arc::new(Closer(inner.clone())),
            inner,
        };
        client.wait_connected(conn, timeout)?;
        Ok(client)
    }

    /// Waits for the first connection; ends at once when the backend refused the node (no
    /// wait can help then).
    fn wait_connected(
        &self,
        conn: &octodb::Connection,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut rx = self.inner.connected.subscribe();
            let ok = channel::block_on(async {
                tokio::time::timeout(left.min(REFUSAL_CHECK), rx.wait_for(|c| *c))
                    .await
                    .is_ok_and(|r| r.is_ok())
            });
            if ok {
                return Ok(());
            }
            if let Some(refused) = conn.sync_status().ok().and_then(|s| s.refused()) {
                return Err(BrokerError::Connection(format!(
                    "cannot reach the broker `{}`: {refused}",
                    self.inner.service
                )));
            }
            if left <= REFUSAL_CHECK {
                break;
            }
        }
        let why = lock(&self.inner.last_error)
            .clone()
            .unwrap_or_else(|| "no answer".into());
        Err(BrokerError::Connection(format!(
            "cannot reach the broker `{}` within {timeout:?}: {why}",
            self.inner.service
        )))
    }

    /// How long each request waits, from now on, for a connection and its reply.
    pub fn set_request_timeout(&self, timeout: Duration) {
        *lock(&self.inner.request_timeout) = timeout;
    }

    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Ends the connection; requests fail from now on.
    pub fn close(&self) {
        self.inner.stop();
    }

    /// Called (on a thread of the client's own) for every notice from the server.
    pub fn set_listener(&self, f: impl Fn(Notice) + Send + Sync + 'static) {
        *lock(&self.inner.listener) = Some(Arc::new(f));
    }

    /// A counter that moves whenever the server invalidated something (cheap to poll).
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// What changed since the last call: invalidations are noted here before the replies that
    /// follow them are handed out.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut lock(&self.inner.state).changes)
    }

    /// Sends `op` and waits for its reply (from an application thread, not async code).
    pub fn request(&self, op: Op) -> Result<Value, BrokerError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = protocol::encode(&Request { id, op });
        // Refused here, with the limit named: the server would drop the connection on it.
        if frame.len() > protocol::MAX_FRAME {
            return Err(crate::codec::CodecError::TooLarge {
                size: frame.len(),
                max: protocol::MAX_FRAME,
            }
            .into());
        }
        let timeout = *lock(&inner.request_timeout);
        channel::block_on(async {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut connected = inner.connected.subscribe();
            loop {
                if inner.stopped.load(Ordering::SeqCst) {
                    return Err(BrokerError::Connection("the client was closed".into()));
                }
                let sending = {
                    let mut st = lock(&inner.state);
                    st.writer.clone().map(|w| {
                        let (tx, rx) = oneshot::channel();
                        st.pending.insert(id, tx);
                        (w, rx)
                    })
                };
                let rx = match sending {
                    Some((w, rx)) => {
                        let mut w = w.lock().await;
                        let sent = match w.send(&frame).await {
                            Ok(()) => w.flush().await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = sent {
                            // The reading side notices the dead connection and reconnects.
                            lock(&inner.state).pending.remove(&id);
                            return Err(BrokerError::Connection(format!(
                                "the request could not be sent: {e}"
                            )));
                        }
                        Some(rx)
                    }
                    None => None,
                };
                match rx {
                    Some(rx) => {
                        return match tokio::time::timeout_at(deadline, rx).await {
                            Ok(Ok(result)) => result,
                            Ok(Err(_)) => Err(BrokerError::Connection(
                                "the connection was lost before the reply; the request may \
                                 or may not have run"
                                    .into(),
                            )),
                            Err(_) => {
                                lock(&inner.state).pending.remove(&id);
                                Err(BrokerError::Timeout(format!("no reply within {timeout:?}")))
                            }
                        };
                    }
                    None => {
                        // Not connected: wait for the connection (the maintaining task makes it).
                        let waited =
                            tokio::time::timeout_at(deadline, connected.wait_for(|c| *c)).await;
                        if waited.is_err() {
                            let why = lock(&inner.last_error).clone().unwrap_or_default();
                            return Err(BrokerError::Connection(format!(
                                "not connected to the broker: {why}"
                            )));
                        }
                    }
                }
            }
        })
    }

    /// The root object.
    pub fn root(&self) -> Result<Arc<ObjectState>, BrokerError> {
        let v = self.request(Op::Root)?;
        self.cached_object(v)
    }

    /// The object behind `r`: from the cache when the server has not invalidated it, else
    /// fetched (and cached). One state per key while it is valid.
    pub fn fetch(&self, r: &ObjRef) -> Result<Arc<ObjectState>, BrokerError> {
        if let Some(o) = lock(&self.inner.state).cache.get(&r.key) {
            return Ok(o.clone());
        }
        let v = self.request(Op::Fetch { target: r.clone() })?;
        self.cached_object(v)
    }

    /// Whether `key` is in the cache now (a second access then makes no request).
    pub fn is_cached(&self, key: &Key) -> bool {
        lock(&self.inner.state).cache.contains_key(key)
    }

    /// The object of a reply, as cached (the reading task cached it, in order with the
    /// invalidations; one already invalidated again is handed out uncached).
    fn cached_object(&self, v: Value) -> Result<Arc<ObjectState>, BrokerError> {
        match v {
            Value::Object(o) => {
                let cached = lock(&self.inner.state).cache.get(&o.key.key).cloned();
                Ok(cached.unwrap_or_else(|| Arc::from(o)))
            }
            other => Err(BrokerError::Internal(format!(
                "the server answered with {other} instead of an object"
            ))),
        }
    }

    /// Runs `method` of the object behind `target` on the server.
    pub fn call_method(
        &self,
        target: &ObjRef,
        method: &str,
        positional: Vec<Value>,
        keywords: Vec<(String, Value)>,
    ) -> Result<Value, BrokerError> {
        self.request(Op::Call {
            target: Some(target.clone()),
            method: method.to_string(),
            args: encode_args(positional, keywords),
        })
    }

    /// A plain server call: `call("hello", ["you"])`.
    pub fn call(&self, name: &str, positional: Vec<Value>) -> Result<Value, BrokerError> {
        self.request(Op::Call {
            target: None,
            method: name.to_string(),
            args: encode_args(positional, Vec::new()),
        })
    }

    /// The objects of a one-to-many reference.
    pub fn backref(&self, target: &ObjRef, name: &str) -> Result<Vec<Value>, BrokerError> {
        match self.request(Op::BackRef {
            target: target.clone(),
            name: name.to_string(),
        })? {
            Value::List(items) => Ok(items),
            other => Err(BrokerError::Internal(format!(
                "a list reference answered {other}"
            ))),
        }
    }

    fn search(
        &self,
        class: &str,
        eq: Vec<(String, Value)>,
        limit: Option<u32>,
        mode: SearchMode,
    ) -> Result<Value, BrokerError> {
        let eq = codec::encode(&Value::Dict(
            eq.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
        ));
        self.request(Op::Search {
            class: class.to_string(),
            eq,
            limit,
            mode,
        })
    }

    /// The one object of `class` whose fields equal `eq`; `NoData` / `ManyData` otherwise.
    pub fn get(&self, class: &str, eq: Vec<(String, Value)>) -> Result<Value, BrokerError> {
        match self.search(class, eq, None, SearchMode::Get)? {
            Value::List(mut items) if items.len() == 1 => Ok(items.remove(0)),
            other => Err(BrokerError::Internal(format!("get answered {other}"))),
        }
    }

    /// The objects of `class` whose fields equal `eq`, at most `limit` (whole under a small
    /// limit, else as references).
    pub fn find(
        &self,
        class: &str,
        eq: Vec<(String, Value)>,
        limit: Option<u32>,
    ) -> Result<Vec<Value>, BrokerError> {
        match self.search(class, eq, limit, SearchMode::Find)? {
            Value::List(items) => Ok(items),
            other => Err(BrokerError::Internal(format!("find answered {other}"))),
        }
    }

    pub fn count(&self, class: &str, eq: Vec<(String, Value)>) -> Result<i64, BrokerError> {
        match self.search(class, eq, None, SearchMode::Count)? {
            Value::Int(n) => Ok(n),
            other => Err(BrokerError::Internal(format!("count answered {other}"))),
        }
    }

    /// A new object of `class` (writable exports only).
    pub fn create(&self, class: &str, values: Vec<(String, Value)>) -> Result<Value, BrokerError> {
        let values = codec::encode(&Value::Dict(
            values
                .into_iter()
                .map(|(k, v)| (Value::Str(k), v))
                .collect(),
        ));
        self.request(Op::New {
            class: class.to_string(),
            values,
        })
    }

    /// Changes fields: each with the value this client last saw (refused if it changed).
    pub fn update(
        &self,
        target: &ObjRef,
        changes: Vec<(String, Value, Value)>,
    ) -> Result<(), BrokerError> {
        let changes = codec::encode(&Value::Dict(
            changes
                .into_iter()
                .map(|(k, old, new)| (Value::Str(k), Value::Tuple(vec![old, new])))
                .collect(),
        ));
        self.request(Op::Update {
            target: target.clone(),
            changes,
        })
        .map(|_| ())
    }

    pub fn delete(&self, target: &ObjRef) -> Result<(), BrokerError> {
        self.request(Op::Delete {
            target: target.clone(),
        })
        .map(|_| ())
    }
}

/// A call's arguments as the server reads them: (list, dict).
pub fn encode_args(positional: Vec<Value>, keywords: Vec<(String, Value)>) -> Vec<u8> {
    codec::encode(&Value::Tuple(vec![
        Value::List(positional),
        Value::Dict(
            keywords
                .into_iter()
                .map(|(k, v)| (Value::Str(k), v))
                .collect(),
        ),
    ]))
}

/// Listeners run on a thread of their own: a slow or blocking one (a Python callback waiting
/// for the GIL) never holds up the connection.
fn spawn_listener_thread(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Notice>,
) -> Result<(), BrokerError> {
    let weak = Arc::downgrade(&inner);
    drop(inner);
    std::thread::Builder::new()
        .name("octodb-broker-notices".into())
        .spawn(move || {
            while let Some(n) = rx.blocking_recv() {
                let Some(inner) = weak.upgrade() else { return };
                let listener = lock(&inner.listener).clone();
                drop(inner);
                if let Some(f) = listener {
                    f(n);
                }
            }
        })
        .map_err(|e| BrokerError::Internal(format!("cannot start the notices thread: {e}")))?;
    Ok(())
}

/// Keeps the client connected: opens the channel, reads frames, reconnects with back-off.
async fn maintain(inner: Arc<Inner>) {
    let mut pause = RECONNECT_FIRST;
    let mut first = true;
    let limits = Limits::default();
    while !inner.stopped.load(Ordering::SeqCst) {
        let ch = match inner.opener.open(&inner.service).await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::debug!(service = %inner.service, "broker connection failed: {e}");
                *lock(&inner.last_error) = Some(e.to_string());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        pause = RECONNECT_FIRST;
        let (mut rd, wr, _) = ch.into_split();
        if !first {
            // Before any reply of the new connection: the cache is dropped first.
            inner.note(Notice::Reconnected);
        }
        first = false;
        lock(&inner.state).writer = Some(Arc::new(tokio::sync::Mutex::new(wr)));
        inner.connected.send_replace(true);
        let reading = async {
            loop {
                let bytes = rd.recv().await?;
                let frame: ServerFrame = match protocol::decode(&bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("broker server sent a bad frame: {e}");
                        return Ok(());
                    }
                };
                match frame {
                    ServerFrame::Reply { id, result } => {
                        let result = result
                            .map_err(|e| e.into_error())
                            .and_then(|bytes| Ok(codec::decode(&bytes, &limits)?));
                        let waiter = {
                            let mut st = lock(&inner.state);
                            // Cached here, in the order of the frames: an invalidation that
                            // follows the reply finds the copy to drop.
                            if let Ok(v) = &result {
                                cache_whole(&mut st.cache, v);
                            }
                            st.pending.remove(&id)
                        };
                        if let Some(w) = waiter {
                            let _ = w.send(result);
                        }
                    }
                    ServerFrame::Invalidate { keys } => inner.note(Notice::Invalidated(keys)),
                    ServerFrame::ClassChanged { class } => inner.note(Notice::ClassChanged(class)),
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), octodb::net::NetError>(())
        };
        let mut stopped = inner.connected.subscribe();
        tokio::select! {
            r = reading => if let Err(e) = r { tracing::info!("broker connection lost: {e}") },
            _ = stopped.wait_for(|c| !*c) => {}
        }
        inner.connected.send_replace(false);
        let mut st = lock(&inner.state);
        st.writer = None;
        for (_, w) in st.pending.drain() {
            let _ = w.send(Err(BrokerError::Connection(
                "the connection was lost before the reply; the request may or may not have run"
                    .into(),
            )));
        }
    }
}

/// The objects a reply brings whole (itself, or the items of a list), into the cache.
fn cache_whole(cache: &mut HashMap<Key, Arc<ObjectState>>, v: &Value) {
    match v {
        Value::Object(o) => {
            cache.insert(o.key.key.clone(), Arc::new(ObjectState::clone(o)));
        }
        Value::List(items) => {
            for item in items {
                if let Value::Object(o) = item {
                    cache.insert(o.key.key.clone(), Arc::new(ObjectState::clone(o)));
                }
            }
        }
        _ => {}
    }
}
