//! The signed task queue's core for `octodb.tasks` (python/octodb/tasks.py builds the
//! thread-like API on it): a queue handle to submit and follow tasks, workers that call
//! Python classes registered by name, and the object a running task reports through.

use crate::errors;
use octodb_tasks::{
    Handler, HandlerError, Policy, Registry, SubmitOptions, TaskContext, TaskError, TaskInfo,
    TaskQueue, TypeOptions, WorkerConfig, Workers,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

fn task_error(py: Python<'_>, e: TaskError) -> PyErr {
    match e {
        TaskError::Db(e) => errors::from_engine(py, e),
        TaskError::Timeout(_) => pyo3::exceptions::PyTimeoutError::new_err(e.to_string()),
        TaskError::NotFound(_) => pyo3::exceptions::PyLookupError::new_err(e.to_string()),
        other => pyo3::exceptions::PyValueError::new_err(other.to_string()),
    }
}

fn seconds(what: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!("{what} must be a number of seconds >= 0"))
    })
}

fn info_dict<'py>(py: Python<'py>, i: &TaskInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", i.id)?;
    d.set_item("type", &i.task_type)?;
    d.set_item("args", &i.args)?;
    d.set_item("priority", i.priority)?;
    d.set_item("state", i.state.as_str())?;
    d.set_item("reason", &i.reason)?;
    d.set_item("attempts", i.attempts)?;
    d.set_item("progress", i.progress.progress)?;
    d.set_item("total", i.progress.total)?;
    d.set_item("expected_duration", i.progress.expected_duration)?;
    d.set_item("result", &i.result)?;
    d.set_item("error_type", &i.error_type)?;
    d.set_item("error_message", &i.error_message)?;
    d.set_item("created_at", i.created_at_ms as f64 / 1000.0)?;
    d.set_item("started_at", i.started_at_ms.map(|t| t as f64 / 1000.0))?;
    d.set_item("ended_at", i.ended_at_ms.map(|t| t as f64 / 1000.0))?;
    d.set_item("submitter", &i.submitter)?;
    d.set_item("cancel_requested", i.cancel_requested)?;
    Ok(d)
}

/// A node's handle on the queue (`octodb.tasks.Queue` wraps it).
#[pyclass(module = "octodb._octodb", name = "_TaskQueue", frozen)]
pub struct PyTaskQueue {
    /// None once closed.
    queue: Mutex<Option<TaskQueue>>,
    /// Read apart from the queue's lock, which a submit holds (GIL released) for as long as
    /// it waits for the file: a `join` loop reading the feed with the GIL held must not wait
    /// behind it.
    feed: octodb::FeedWatcher,
    public_key: String,
}

impl PyTaskQueue {
    fn queue(&self) -> MutexGuard<'_, Option<TaskQueue>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the open queue (call it with the GIL released: it takes the queue's lock,
    /// which a submit waiting for the file holds).
    fn with_queue<T>(
        &self,
        f: impl FnOnce(&TaskQueue) -> Result<T, TaskError>,
    ) -> Result<T, TaskError> {
        match &*self.queue() {
            Some(q) => f(q),
            None => Err(TaskError::Usage(
                "the task queue is closed: open a new octodb.tasks.Queue".into(),
            )),
        }
    }
}

#[pymethods]
impl PyTaskQueue {
    #[new]
    fn new(py: Python<'_>, uri: String) -> PyResult<Self> {
        // A process that only submits (or only runs workers) logs through `logging` too.
        crate::logging_bridge::start(py);
        let queue = py
            .detach(|| TaskQueue::open(&uri))
            .map_err(|e| task_error(py, e))?;
        let feed = queue.connection().feed_watcher();
        let public_key = queue.connection().public_key();
        Ok(PyTaskQueue {
            queue: Mutex::new(Some(queue)),
            feed,
            public_key,
        })
    }

    #[pyo3(signature = (task_type, args_json, priority=0, not_before=None, expires_in=3600.0))]
    fn submit(
        &self,
        py: Python<'_>,
        task_type: String,
        args_json: String,
        priority: i64,
        not_before: Option<f64>,
        expires_in: f64,
    ) -> PyResult<i64> {
        let opts = SubmitOptions {
            priority,
            not_before_ms: not_before.map(|t| (t * 1000.0) as i64),
            expires_in: seconds("expires_in", expires_in)?,
        };
        py.detach(|| self.with_queue(|q| q.submit(&task_type, &args_json, opts)))
            .map_err(|e| task_error(py, e))
    }

    /// The task as a dict, or None once deleted.
    fn info<'py>(&self, py: Python<'py>, task_id: i64) -> PyResult<Option<Bound<'py, PyDict>>> {
        let info = py
            .detach(|| self.with_queue(|q| q.info(task_id)))
            .map_err(|e| task_error(py, e))?;
        info.map(|i| info_dict(py, &i)).transpose()
    }

    fn list<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let all = py
            .detach(|| self.with_queue(|q| q.list()))
            .map_err(|e| task_error(py, e))?;
        all.iter().map(|i| info_dict(py, i)).collect()
    }

    fn cancel(&self, py: Python<'_>, task_id: i64) -> PyResult<()> {
        py.detach(|| self.with_queue(|q| q.cancel(task_id)))
            .map_err(|e| task_error(py, e))
    }

    fn delete(&self, py: Python<'_>, task_id: i64) -> PyResult<()> {
        py.detach(|| self.with_queue(|q| q.delete(task_id)))
            .map_err(|e| task_error(py, e))
    }

    /// Record that this node has seen the task's final state (starts its retention).
    fn acknowledge(&self, py: Python<'_>, task_id: i64) -> PyResult<()> {
        py.detach(|| {
            self.with_queue(|q| match q.info(task_id)? {
                Some(info) => q.acknowledge(&info),
                None => Ok(()),
            })
        })
        .map_err(|e| task_error(py, e))
    }

    fn feed_position(&self) -> u64 {
        self.feed.position()
    }

    /// Wait (GIL released) until the node's feed passes `after`, at most `timeout` seconds.
    fn wait_feed(&self, py: Python<'_>, after: u64, timeout: f64) -> PyResult<u64> {
        let timeout = seconds("timeout", timeout)?;
        Ok(py.detach(|| self.feed.wait(after, timeout)))
    }

    #[getter]
    fn public_key(&self) -> String {
        self.public_key.clone()
    }

    /// Closes the queue's connection to its node, with the GIL released: left to the garbage
    /// collector, it would be dropped with the GIL held, and as the node's last connection its
    /// shutdown joins threads that may need the GIL. Closing twice does nothing.
    fn close(&self, py: Python<'_>) {
        py.detach(|| drop(self.queue().take()));
    }
}

/// What a running task's `run` reports through (one per run, on the worker's thread).
#[pyclass(module = "octodb._octodb", name = "_TaskRun", unsendable)]
pub struct PyTaskRun {
    ctx: TaskContext,
}

#[pymethods]
impl PyTaskRun {
    #[getter]
    fn id(&self) -> i64 {
        self.ctx.id
    }
    #[getter]
    fn attempt(&self) -> i64 {
        self.ctx.attempt
    }
    #[getter]
    fn idempotency_key(&self) -> String {
        self.ctx.idempotency_key()
    }
    /// Who submitted the task, as a dict: `public_key`, `node_id`, `node_type` and
    /// `user_id` (None for a primary).
    #[getter]
    fn submitted_by<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let s = &self.ctx.submitted_by;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("public_key", &s.public_key)?;
        d.set_item("node_id", s.node_id)?;
        d.set_item("node_type", &s.node_type)?;
        d.set_item("user_id", s.user_id)?;
        Ok(d)
    }
    /// Publish the values (coalesced); returns True when the task must stop (cancelled, or
    /// this worker lost it): `octodb.tasks` raises `Cancelled` inside `run` then.
    /// With `write` false the values are only kept, for the outcome's write.
    /// The write runs with the GIL released: it may wait for the file's write lock (up to
    /// the connection's busy timeout), which another of the program's threads may hold while
    /// it needs the GIL to go on (a handler's own insert, as in the broker and tasks
    /// walkthrough: every Python thread, and the engine waiting for that lock, stood still
    /// for the whole timeout).
    #[pyo3(signature = (progress=None, total=None, expected_duration=None, write=true))]
    fn publish(
        &self,
        py: Python<'_>,
        progress: Option<f64>,
        total: Option<f64>,
        expected_duration: Option<f64>,
        write: bool,
    ) -> bool {
        if let Some(p) = progress {
            self.ctx.set_progress(p);
        }
        if let Some(t) = total {
            self.ctx.set_total(t);
        }
        if let Some(d) = expected_duration {
            self.ctx.set_expected_duration(d);
        }
        let ctx = OnThisThread(&self.ctx);
        write && py.detach(move || ctx.publish()).is_err()
    }
}

/// The task's context, taken into a `detach` closure: it is `Rc`-based, so not `Send`.
struct OnThisThread<'a>(&'a TaskContext);

// SAFETY: `Python::detach` runs its closure on the calling thread and returns only once it is
// done, so the context's `Rc`s are only ever touched by the thread that owns them. No other
// thread reaches them meanwhile either: the context lives in a `_TaskRun`, an `unsendable`
// pyclass, which PyO3 refuses to borrow from any thread but its own.
unsafe impl Send for OnThisThread<'_> {}

impl OnThisThread<'_> {
    /// (A method, so that the closure takes the whole wrapper, not its non-`Send` field.)
    fn publish(self) -> Result<(), HandlerError> {
        self.0.publish()
    }
}

/// A task type implemented in Python: `runner(run, args_json)` returns
/// `(True, result_json)` or `(False, error_type_name, message, unavailable)`.
struct PyHandler {
    runner: Py<PyAny>,
}

impl Handler for PyHandler {
    fn run(&self, ctx: &TaskContext, args: &str) -> Result<String, HandlerError> {
        Python::attach(|py| {
            let run = Py::new(py, PyTaskRun { ctx: ctx.clone() })
                .map_err(|e| HandlerError::new("RuntimeError", e.to_string()))?;
            let out = self.runner.call1(py, (run, args)).map_err(|e| {
                let type_name = e
                    .get_type(py)
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|_| "Exception".into());
                HandlerError::new(type_name, e.value(py).to_string())
            })?;
            let out = out.bind(py);
            let tuple = out
                .cast::<PyTuple>()
                .map_err(|_| HandlerError::new("TypeError", "the task runner returned no tuple"))?;
            let ok: bool = tuple
                .get_item(0)
                .and_then(|v| v.extract())
                .map_err(|e| HandlerError::new("TypeError", e.to_string()))?;
            let text = |i: usize| -> Result<String, HandlerError> {
                tuple
                    .get_item(i)
                    .and_then(|v| v.extract())
                    .map_err(|e| HandlerError::new("TypeError", e.to_string()))
            };
            if ok {
                return text(1);
            }
            // A fourth item, true: the database was unavailable to the handler (the runner
            // tells; see `HandlerError::is_unavailable`).
            let unavailable = tuple
                .get_item(3)
                .and_then(|v| v.extract::<bool>())
                .unwrap_or(false);
            if unavailable {
                Err(HandlerError::unavailable(text(1)?, text(2)?))
            } else {
                Err(HandlerError::new(text(1)?, text(2)?))
            }
        })
    }
}

/// Workers on a primary, running Python task classes (`octodb.tasks.Worker` wraps it).
#[pyclass(module = "octodb._octodb", name = "_TaskWorkers", frozen)]
pub struct PyTaskWorkers {
    workers: Mutex<Option<Workers>>,
}

#[pymethods]
impl PyTaskWorkers {
    /// `handlers`: name → (runner, max_retries, backoff seconds); `allowed`: name → list of
    /// public keys that may submit that type, or a callable `(signer: dict, task_type) -> bool`
    /// (types not named: every approved node). The callable runs while the claim holds the
    /// database's write lock: it may read, not write.
    #[new]
    #[pyo3(signature = (uri, handlers, allowed, threads=4, lease=30.0, retention=300.0, retention_cap=604800.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        uri: String,
        handlers: &Bound<'_, PyDict>,
        allowed: &Bound<'_, PyDict>,
        threads: usize,
        lease: f64,
        retention: f64,
        retention_cap: f64,
    ) -> PyResult<Self> {
        // The intake's warnings (a type no worker runs, a refused task) reach `logging` in a
        // process that runs workers only (the Celery walkthrough's saw none).
        crate::logging_bridge::start(py);
        let mut registry = Registry::default();
        for (name, spec) in handlers.iter() {
            let name: String = name.extract()?;
            let (runner, max_retries, backoff): (Py<PyAny>, u32, f64) = spec.extract()?;
            registry.register(
                &name,
                TypeOptions {
                    max_retries,
                    backoff: seconds("backoff", backoff)?,
                },
                PyHandler { runner },
            );
        }
        let mut policy = Policy::default();
        for (name, rule) in allowed.iter() {
            let name: String = name.extract()?;
            if rule.is_callable() {
                let decide: Py<PyAny> = rule.unbind();
                policy = policy.allow_if(&name, move |signer, task_type| {
                    Python::attach(|py| {
                        let asked = (|| -> PyResult<bool> {
                            let info = PyDict::new(py);
                            info.set_item("public_key", &signer.public_key)?;
                            info.set_item("node_id", signer.node_id)?;
                            info.set_item("node_type", &signer.node_type)?;
                            info.set_item("user_id", signer.user_id)?;
                            decide.call1(py, (info, task_type))?.bind(py).is_truthy()
                        })();
                        // An error in the backend's callback refuses, and says why.
                        asked.unwrap_or_else(|e| {
                            report_unraisable(py, &e);
                            false
                        })
                    })
                });
            } else {
                let keys: Vec<String> = rule.extract()?;
                policy = policy.allow_keys(&name, keys);
            }
        }
        let config = WorkerConfig {
            threads,
            lease: seconds("lease", lease)?,
            retention: seconds("retention", retention)?,
            retention_cap: seconds("retention_cap", retention_cap)?,
            ..WorkerConfig::default()
        };
        let workers = py
            .detach(|| Workers::start(&uri, registry, policy, config))
            .map_err(|e| task_error(py, e))?;
        Ok(PyTaskWorkers {
            workers: Mutex::new(Some(workers)),
        })
    }

    /// Stop taking tasks, let running ones finish, and join the threads.
    fn stop(&self, py: Python<'_>) {
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = workers {
            // Running Python handlers need the GIL to finish.
            py.detach(|| w.stop());
        }
    }
}

impl Drop for PyTaskWorkers {
    fn drop(&mut self) {
        let workers = self
            .workers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = workers {
            // Collected with the GIL held: release it while the threads finish.
            Python::attach(|py| py.detach(|| w.stop()));
        }
    }
}

/// Show a failed policy callback's error the way Python shows unraisable ones.
fn report_unraisable(py: Python<'_>, e: &PyErr) {
    e.clone_ref(py).write_unraisable(py, None);
}

pub fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTaskQueue>()?;
    m.add_class::<PyTaskRun>()?;
    m.add_class::<PyTaskWorkers>()?;
    Ok(())
}
