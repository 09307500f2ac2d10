//! octodb for apps: typed status (`sync_status()`, `nodes()`), waiting without polling
//! (`wait_until_ready`, `wait_for`) and events (`events()` to iterate, `on_event(callback)`
//! to be called on a thread of the module's own).

use crate::callback::with_gil;
use crate::connection::Connection;
use crate::errors;
use crate::ffi_util::detached;
use octodb::{Event as EngineEvent, Next};
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::Receiver;

/// How often a wait re-reads the status even without an event (a commit elsewhere changes it
/// silently), and lets Ctrl-C through.
const TICK: Duration = Duration::from_millis(50);

/// Something that happened on the node: `kind` says what, the other attributes give details
/// (None when they do not apply).
#[pyclass(module = "octodb", frozen, get_all)]
pub struct Event {
    /// "ready", "connected", "disconnected", "data_received", "caught_up",
    /// "transaction_accepted", "transaction_rejected", "authorization_refused", "download",
    /// "primary_behind", "resynced", "copied_file", or "missed" (the listener fell behind and
    /// `rows` events were dropped: read `sync_status()` again).
    kind: &'static str,
    peer: Option<String>,
    seq: Option<u64>,
    rows: Option<u64>,
    total: Option<u64>,
    txn_id: Option<u64>,
    reason: Option<String>,
}

impl Event {
    fn new(kind: &'static str) -> Event {
        Event {
            kind,
            peer: None,
            seq: None,
            rows: None,
            total: None,
            txn_id: None,
            reason: None,
        }
    }

    fn from_engine(e: EngineEvent) -> Event {
        match e {
            EngineEvent::Ready => Event::new("ready"),
            EngineEvent::Connected { peer } => Event {
                peer: Some(peer),
                ..Event::new("connected")
            },
            EngineEvent::Disconnected { reason } => Event {
                reason: Some(reason),
                ..Event::new("disconnected")
            },
            EngineEvent::DataReceived { seq, rows } => Event {
                seq: Some(seq),
                rows: Some(rows as u64),
                ..Event::new("data_received")
            },
            EngineEvent::CaughtUp { seq } => Event {
                seq: Some(seq),
                ..Event::new("caught_up")
            },
            EngineEvent::TransactionAccepted { txn_id } => Event {
                txn_id: Some(txn_id),
                ..Event::new("transaction_accepted")
            },
            EngineEvent::TransactionRejected { txn_id, reason } => Event {
                txn_id: Some(txn_id),
                reason: Some(reason),
                ..Event::new("transaction_rejected")
            },
            EngineEvent::AuthorizationRefused { reason } => Event {
                reason: Some(reason),
                ..Event::new("authorization_refused")
            },
            EngineEvent::Download { rows, total } => Event {
                rows: Some(rows),
                total: Some(total),
                ..Event::new("download")
            },
            EngineEvent::PrimaryBehind { reason } => Event {
                reason: Some(reason),
                ..Event::new("primary_behind")
            },
            EngineEvent::CopiedFile { txn, reason } => Event {
                txn_id: Some(txn),
                reason: Some(reason),
                ..Event::new("copied_file")
            },
            EngineEvent::Resynced {
                resent,
                rows_removed,
            } => Event {
                rows: Some(rows_removed),
                total: Some(resent),
                ..Event::new("resynced")
            },
        }
    }
}

#[pymethods]
impl Event {
    fn __repr__(&self) -> String {
        let mut parts = vec![format!("kind={:?}", self.kind)];
        let nums = [("peer", self.peer.clone().map(|p| format!("{p:?}")))];
        for (k, v) in nums {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        for (k, v) in [
            ("seq", self.seq),
            ("rows", self.rows),
            ("total", self.total),
            ("txn_id", self.txn_id),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        if let Some(r) = &self.reason {
            parts.push(format!("reason={r:?}"));
        }
        format!("octodb.Event({})", parts.join(", "))
    }
}

/// What waiting for an event gave.
enum Got {
    Event(Event),
    Timeout,
    /// The node stopped: no event will come.
    Closed,
}

/// Wait for the next event with the GIL released, letting Ctrl-C through every tick.
fn next(
    py: Python<'_>,
    rx: &mut Receiver<EngineEvent>,
    deadline: Option<Instant>,
) -> PyResult<Got> {
    loop {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(TICK),
            None => TICK,
        };
        let got = py.detach(|| octodb::next_event(rx, wait));
        match got {
            Next::Event(e) => return Ok(Got::Event(Event::from_engine(e))),
            Next::Missed(n) => {
                return Ok(Got::Event(Event {
                    rows: Some(n),
                    ..Event::new("missed")
                }))
            }
            Next::Closed => return Ok(Got::Closed),
            Next::Timeout => {
                py.check_signals()?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Got::Timeout);
                }
            }
        }
    }
}

/// The node's events from the moment it was made: iterate it (blocking), or `get(timeout)`.
#[pyclass(module = "octodb", frozen)]
pub struct EventStream {
    rx: Mutex<Option<Receiver<EngineEvent>>>,
    /// Set by close(), also while another thread waits on the receiver.
    closed: AtomicBool,
}

#[pymethods]
impl EventStream {
    /// The next event, waiting at most `timeout` seconds (forever with None); None on
    /// timeout, once the node has stopped, or once the stream is closed.
    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Event>> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        let mut rx = self
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| errors::programming("another thread is waiting on this event stream"))?;
        let out = next(py, &mut rx, deadline);
        if !self.closed.load(Ordering::Acquire) {
            *self.rx.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        }
        match out? {
            Got::Event(e) => Ok(Some(e)),
            Got::Timeout | Got::Closed => Ok(None),
        }
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Event>> {
        self.get(py, None)
    }

    /// Stop receiving events.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }
}

/// A callback registered with `on_event`; `cancel()` stops it.
#[pyclass(module = "octodb", frozen)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[pymethods]
impl Listener {
    /// Stop calling the callback (waits for a call in progress to end, unless called from it).
    fn cancel(&self, py: Python<'_>) {
        self.stop.store(true, Ordering::Release);
        let t = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            if t.thread().id() != std::thread::current().id() {
                py.detach(move || {
                    let _ = t.join();
                });
            }
        }
    }

    #[getter]
    fn active(&self) -> bool {
        !self.stop.load(Ordering::Acquire)
    }
}

impl Connection {
    fn subscribe(&self, py: Python<'_>) -> PyResult<Receiver<EngineEvent>> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let rx = g.engine()?.subscribe();
        Ok(rx)
    }

    fn status_json(&self, py: Python<'_>) -> PyResult<String> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let engine = g.engine()?;
        // SAFETY: reading the status touches no Python object (it may read the database).
        let status = unsafe { detached(py, || engine.sync_status()) };
        let status = status.map_err(|e| errors::from_engine(py, e))?;
        serde_json::to_string(&status).map_err(|e| errors::OperationalError::new_err(e.to_string()))
    }

    fn status_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = self.status_json(py)?;
        py.import("json")?.call_method1("loads", (json,))
    }

    /// Wait until `pred(status)` holds, re-reading the status on each event and each tick.
    fn wait_status<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        mut pred: impl FnMut(&Bound<'py, PyAny>) -> PyResult<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut rx = self.subscribe(py)?;
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let status = self.status_dict(py)?;
            if pred(&status)? {
                return Ok(status);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(PyTimeoutError::new_err(format!(
                    "the condition was not reached within {:.1} s; last status: {}",
                    timeout.unwrap_or_default(),
                    status.str()?
                )));
            }
            let tick = Some(Instant::now() + TICK);
            let until = match (deadline, tick) {
                (Some(d), Some(t)) => Some(d.min(t)),
                (None, t) => t,
                (d, None) => d,
            };
            if let Got::Closed = next(py, &mut rx, until)? {
                return Err(errors::OperationalError::new_err(
                    "the node stopped before the condition was reached",
                ));
            }
        }
    }
}

/// The methods `Connection` exposes for these (see connection.rs).
impl Connection {
    /// The node's sync status (the JSON of `PRAGMA sync_status`) as a dict.
    pub fn api_sync_status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.status_dict(py)
    }

    /// The nodes a primary knows (`PRAGMA nodes`) as a list of dicts.
    pub fn api_nodes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let engine = g.engine()?;
        // SAFETY: touches no Python object.
        let nodes =
            unsafe { detached(py, || engine.nodes()) }.map_err(|e| errors::from_engine(py, e))?;
        let json = serde_json::to_string(&nodes)
            .map_err(|e| errors::OperationalError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (json,))
    }

    /// Wait until the database is ready (authorized and downloaded); returns the status.
    /// Raises TimeoutError after `timeout` seconds (None: wait as long as it takes), saying
    /// why, and OperationalError at once if the backend refuses the device.
    pub fn api_wait_until_ready<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ready = |s: &Bound<'py, PyAny>| s.get_item("db_is_ready")?.is_truthy();
        self.wait_unless_refused(py, timeout, ready, octodb::not_ready_within)
    }

    /// Wait until the node is in sync (`synced` in its status); returns the status. Raises
    /// TimeoutError after `timeout` seconds (None: wait as long as it takes), saying why, and
    /// OperationalError at once if the backend refuses the device.
    pub fn api_wait_until_synced<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let synced = |s: &Bound<'py, PyAny>| s.get_item("synced")?.is_truthy();
        self.wait_unless_refused(py, timeout, synced, octodb::not_synced_within)
    }

    /// Wait until `is_reached` holds for the status, as the Rust API's waits do: the same
    /// sentences for a timeout and for a refusal.
    fn wait_unless_refused<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        is_reached: impl Fn(&Bound<'py, PyAny>) -> PyResult<bool>,
        timed_out: fn(Option<&octodb::SyncStatus>, Duration) -> String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let refused = |s: &Bound<'py, PyAny>| -> PyResult<bool> {
            Ok(s.get_item("auth_state")?
                .extract::<Option<String>>()?
                .as_deref()
                == Some("rejected"))
        };
        let last_status = || {
            self.status_json(py)
                .ok()
                .and_then(|json| serde_json::from_str::<octodb::SyncStatus>(&json).ok())
        };
        match self.wait_status(py, timeout, |s| Ok(is_reached(s)? || refused(s)?)) {
            Ok(status) if !is_reached(&status)? => {
                let why = last_status()
                    .and_then(|s| s.refused())
                    .unwrap_or_else(|| "the backend refused this device".into());
                Err(errors::OperationalError::new_err(why))
            }
            Err(e) if e.is_instance_of::<PyTimeoutError>(py) => {
                let waited = Duration::from_secs_f64(timeout.unwrap_or_default().max(0.0));
                Err(PyTimeoutError::new_err(timed_out(
                    last_status().as_ref(),
                    waited,
                )))
            }
            other => other,
        }
    }

    /// Wait until `predicate(status)` is true; returns that status. Raises TimeoutError after
    /// `timeout` seconds (None: no limit).
    pub fn api_wait_for<'py>(
        &self,
        py: Python<'py>,
        predicate: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.wait_status(py, timeout, |s| predicate.call1((s,))?.is_truthy())
    }

    /// The node's events from now on, to iterate or `get(timeout)`.
    pub fn api_events(&self, py: Python<'_>) -> PyResult<EventStream> {
        Ok(EventStream {
            rx: Mutex::new(Some(self.subscribe(py)?)),
            closed: AtomicBool::new(false),
        })
    }

    /// Call `callback(event)` for each event from now on, on a thread of the module's own
    /// (as authorization callbacks are); returns a Listener whose `cancel()` stops it.
    /// Exceptions in the callback are reported through `sys.unraisablehook`.
    pub fn api_on_event(&self, py: Python<'_>, callback: &Bound<'_, PyAny>) -> PyResult<Listener> {
        // Said now, not at each event through sys.unraisablehook (Python walkthrough).
        if !callback.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "on_event needs a callable, called with each event; got {}",
                callback.get_type().name()?
            )));
        }
        let mut rx = self.subscribe(py)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let callback = callback.clone().unbind();
        let thread = std::thread::Builder::new()
            .name("octodb-events".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    let got = octodb::next_event(&mut rx, TICK);
                    let event = match got {
                        Next::Event(e) => Event::from_engine(e),
                        Next::Missed(n) => Event {
                            rows: Some(n),
                            ..Event::new("missed")
                        },
                        Next::Closed => return,
                        Next::Timeout => continue,
                    };
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    with_gil((), |py| {
                        let cb = callback.bind(py);
                        if let Err(e) = cb.call1((event,)) {
                            e.write_unraisable(py, Some(cb));
                        }
                    });
                }
            })
            .map_err(|e| {
                errors::OperationalError::new_err(format!("cannot start the event thread: {e}"))
            })?;
        Ok(Listener {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// "primary", "secondary" or "local".
    pub fn api_node_type(&self, py: Python<'_>) -> PyResult<&'static str> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        Ok(g.role.map_or("local", |r| r.as_str()))
    }

    /// Devices: the transaction this connection committed last (see `last_txn_id`).
    pub fn api_last_txn_id(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let id = g.engine()?.last_txn_id();
        Ok(id)
    }

    /// Devices: where transaction `txn_id` stands, as a dict: `status` ("pending",
    /// "accepted", "rejected" or "unknown"), and for a rejection `reason` and `at`.
    pub fn api_txn_status<'py>(&self, py: Python<'py>, txn_id: u64) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let engine = g.engine()?;
        // SAFETY: touches no Python object.
        let status = unsafe { detached(py, || engine.txn_status(txn_id)) }
            .map_err(|e| errors::from_engine(py, e))?;
        let json = serde_json::to_string(&status)
            .map_err(|e| errors::OperationalError::new_err(e.to_string()))?;
        py.import("json")?.call_method1("loads", (json,))
    }

    /// Devices: the ids of the transactions the primaries have not decided yet, oldest first.
    pub fn api_pending_txns(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let engine = g.engine()?;
        // SAFETY: touches no Python object.
        unsafe { detached(py, || engine.pending_txns()) }.map_err(|e| errors::from_engine(py, e))
    }

    /// Devices: wait until the primaries decide transaction `txn_id`; returns its status
    /// (see `api_txn_status`). TimeoutError after `timeout` seconds saying why the device is
    /// not in sync; OperationalError at once if the backend refuses the device.
    pub fn api_wait_for_txn<'py>(
        &self,
        py: Python<'py>,
        txn_id: u64,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let decided = |_: &Bound<'py, PyAny>| -> PyResult<bool> {
            let status = self.api_txn_status(py, txn_id)?;
            Ok(status.get_item("status")?.extract::<String>()? != "pending")
        };
        match self.wait_unless_refused(py, timeout, decided, octodb::not_synced_within) {
            Ok(_) => self.api_txn_status(py, txn_id),
            Err(e) if e.is_instance_of::<PyTimeoutError>(py) => {
                Err(PyTimeoutError::new_err(format!(
                    "transaction {txn_id} still waits for the primaries' decision: {}",
                    e.value(py)
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// This node's public key (hex); "" on a plain local database.
    pub fn api_public_key(&self, py: Python<'_>) -> PyResult<String> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let key = g.engine()?.public_key();
        Ok(key)
    }

    /// The addresses a primary listens on, as tcp://HOST:PORT (the real port when the URI
    /// said port 0).
    pub fn api_bound_addresses(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let inner = self.checked(py)?;
        let g = inner.db.lock(py);
        let addrs = g.engine()?.bound_addrs();
        Ok(addrs.iter().map(|a| format!("tcp://{a}")).collect())
    }
}
