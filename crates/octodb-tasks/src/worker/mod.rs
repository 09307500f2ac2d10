//! Workers: threads in the process that holds a primary. They examine each new task (signature,
//! signer, expiry, nonce), claim it with a lease, run the handler registered for its type and
//! write its progress and outcome, every write fenced by (attempt, lease id).
//!
//! Threads of one [`Workers`]:
//! - an *intake* thread follows the change feed: it records which node inserted each task's
//!   row (the signer must be that node), notes when the submitter acknowledged the final state,
//!   wakes the workers, and does the housekeeping (expired tasks refused, retention deletion,
//!   old nonces dropped) once a tick; what it reads is kept in memory and written down once a
//!   tick (one commit for many tasks);
//! - a *dispatcher* thread: one write transaction per round writes the outcomes the runners
//!   handed back and claims as many tasks as runners are idle (examining each);
//! - `threads` *runners*, each with its own connection (for progress reports), running the
//!   handlers of the tasks the dispatcher claimed;
//! - a *keeper* thread renews the leases of the tasks running here.
//!
//! In a cluster of primaries only the leader's workers write: on a follower the dispatcher,
//! the intake's writes, the housekeeping and the keeper wait while it follows.
//!
//! Modules: `claim` (examining and claiming), `context` (what a handler reports through),
//! `run` (a run and its outcome), `intake` (the feed, housekeeping), `lease` (the keeper).

mod claim;
mod context;
mod intake;
mod lease;
mod run;

use claim::*;
pub use context::TaskContext;
use context::*;
use intake::*;
use lease::*;
use run::*;

use crate::policy::{Policy, Signer};
use crate::record::{verify_cancel, TaskRecord};
use crate::schema::{self, END_COLUMN, TASKS_TABLE};
use crate::{now_ms, TaskError};
use octodb::crypto::PublicKey;
use octodb::feed::ChangeKind;
use octodb::{Connection, Role, Value};
use rand::RngCore;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An error a handler ends with: its type's name and message reach the submitter as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{type_name}: {message}")]
pub struct HandlerError {
    pub type_name: String,
    pub message: String,
    /// The database could not take the handler's write for a while (no leader in the
    /// cluster, the file's lock held too long) and applied nothing of the failing statement:
    /// the attempt is run again like one its worker lost, beyond the task's retries.
    unavailable: bool,
}

impl HandlerError {
    pub fn new(type_name: impl Into<String>, message: impl Into<String>) -> HandlerError {
        HandlerError {
            type_name: type_name.into(),
            message: message.into(),
            unavailable: false,
        }
    }
    /// A handler's error caused by the database being unavailable for a while (see
    /// [`HandlerError::is_unavailable`]); `From<octodb::Error>` makes it for the engine's
    /// `Unavailable` and `SQLITE_BUSY` errors.
    pub fn unavailable(type_name: impl Into<String>, message: impl Into<String>) -> HandlerError {
        HandlerError {
            unavailable: true,
            ..HandlerError::new(type_name, message)
        }
    }
    /// Whether the attempt failed only because the database was unavailable: the worker runs
    /// it again after the type's backoff even when its retries are spent, as far as the two
    /// more attempts it allows for workers lost (a cluster's election must not fail a task
    /// that allows no retry).
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
    /// What a progress report returns once the task is cancelled (or this worker lost it):
    /// return it from the handler.
    pub fn cancelled() -> HandlerError {
        HandlerError::new("Cancelled", "the task was cancelled")
    }
}

impl From<octodb::Error> for HandlerError {
    fn from(e: octodb::Error) -> HandlerError {
        let busy = matches!(
            &e,
            octodb::Error::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy
        );
        match e {
            octodb::Error::Unavailable(message) => {
                HandlerError::unavailable("Unavailable", message)
            }
            e if busy => HandlerError::unavailable("OperationalError", e.to_string()),
            e => HandlerError::new("OctodbError", e.to_string()),
        }
    }
}

/// A task type's code on the workers. Arguments and result are JSON text.
pub trait Handler: Send + Sync {
    fn run(&self, ctx: &TaskContext, args: &str) -> Result<String, HandlerError>;
}

impl<F> Handler for F
where
    F: Fn(&TaskContext, serde_json::Value) -> Result<serde_json::Value, HandlerError> + Send + Sync,
{
    fn run(&self, ctx: &TaskContext, args: &str) -> Result<String, HandlerError> {
        let args = serde_json::from_str(args)
            .map_err(|e| HandlerError::new("ValueError", format!("arguments are not JSON: {e}")))?;
        self(ctx, args).map(|v| v.to_string())
    }
}

/// How a task type is retried.
#[derive(Debug, Clone)]
pub struct TypeOptions {
    /// Handler errors retried this many times (default 0: no retry).
    pub max_retries: u32,
    /// The first retry waits this long, each next one twice as long (at most 10 minutes).
    pub backoff: Duration,
}

impl Default for TypeOptions {
    fn default() -> Self {
        TypeOptions {
            max_retries: 0,
            backoff: Duration::from_secs(1),
        }
    }
}

/// The task types a worker runs, by name.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<String, (Arc<dyn Handler>, TypeOptions)>,
}

impl Registry {
    pub fn register(
        &mut self,
        task_type: &str,
        options: TypeOptions,
        handler: impl Handler + 'static,
    ) -> &mut Self {
        self.handlers
            .insert(task_type.to_string(), (Arc::new(handler), options));
        self
    }
    fn types_json(&self) -> String {
        serde_json::Value::from(self.handlers.keys().cloned().collect::<Vec<_>>()).to_string()
    }
    fn runs(&self, task_type: &str) -> bool {
        self.handlers.contains_key(task_type)
    }
    /// The types registered, sorted, for messages.
    fn type_list(&self) -> String {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

/// How workers behave.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker threads (each runs one task at a time).
    pub threads: usize,
    /// A claim lasts this long unless renewed (renewed every third of it while running).
    pub lease: Duration,
    /// Ended tasks are deleted this long after their submitter has seen the final state.
    pub retention: Duration,
    /// ... and at the latest this long after they ended, seen or not.
    pub retention_cap: Duration,
    /// Progress is written at most once per this interval per task.
    pub progress_interval: Duration,
    /// Housekeeping and timed events (leases running out, retries, not-before) are checked
    /// at least this often; new tasks wake the workers at once through the change feed.
    pub tick: Duration,
    /// Shown in the `worker` column.
    pub name: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            threads: 4,
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(300),
            retention_cap: Duration::from_secs(7 * 24 * 3600),
            progress_interval: Duration::from_millis(100),
            tick: Duration::from_secs(1),
            name: format!("pid {}", std::process::id()),
        }
    }
}

/// Wakes idle workers when the feed brings task changes.
#[derive(Default)]
struct Wake {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Wake {
    fn lock(&self) -> MutexGuard<'_, u64> {
        self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn bump(&self) {
        *self.lock() += 1;
        self.cv.notify_all();
    }
    fn wait_past(&self, seen: u64, timeout: Duration) {
        let guard = self.lock();
        if *guard != seen {
            return;
        }
        drop(
            self.cv
                .wait_timeout_while(guard, timeout, |g| *g == seen)
                .unwrap_or_else(|p| p.into_inner()),
        );
    }

    /// Sleep `timeout`, or less if `stopping` becomes true (a stop bumps the generation).
    fn sleep(&self, timeout: Duration, stopping: &AtomicBool) {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock();
        while !stopping.load(Ordering::Acquire) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            guard = self
                .cv
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A task running on this process, as the lease keeper renews it.
struct Active {
    attempt: i64,
    lease_id: String,
    lost: Arc<AtomicBool>,
    /// Set by the intake when the feed shows the submitter's valid cancel request: the
    /// handler sees it at its next report, whether or not that report is written.
    cancelled: Arc<AtomicBool>,
    submitter: PublicKey,
    nonce: Vec<u8>,
}

struct Shared {
    uri: String,
    registry: Registry,
    policy: Policy,
    config: WorkerConfig,
    stopping: AtomicBool,
    wake: Wake,
    active: Mutex<HashMap<i64, Active>>,
    /// What the intake read from the feed and has not written down yet.
    intake: Mutex<IntakeBuffer>,
    dispatch: Dispatch,
}

impl Shared {
    fn intake(&self) -> MutexGuard<'_, IntakeBuffer> {
        self.intake.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn active(&self) -> MutexGuard<'_, HashMap<i64, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// Running workers; stopped (threads joined) by [`Workers::stop`] or when dropped.
pub struct Workers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Start workers on the primary of `uri` (opened in this process if it is not yet).
    pub fn start(
        uri: &str,
        registry: Registry,
        policy: Policy,
        config: WorkerConfig,
    ) -> Result<Workers, TaskError> {
        let conn = Connection::open(uri)?;
        if conn.role() != Some(Role::Primary) {
            return Err(TaskError::Usage(
                "workers run on a primary (node=primary): tasks are checked and claimed there"
                    .into(),
            ));
        }
        schema::install(&conn)?;
        let threads_wanted = config.threads.max(1);
        let shared = Arc::new(Shared {
            uri: uri.to_string(),
            registry,
            policy,
            config,
            stopping: AtomicBool::new(false),
            wake: Wake::default(),
            active: Mutex::new(HashMap::new()),
            intake: Mutex::new(IntakeBuffer::default()),
            dispatch: Dispatch::default(),
        });
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name)
                .spawn(f)
                .map_err(|e| TaskError::Usage(format!("cannot start a worker thread: {e}")))
        };
        let s = shared.clone();
        threads.push(spawn(
            "octodb-tasks-intake".into(),
            Box::new(move || intake(&s, conn)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "octodb-tasks-keeper".into(),
            Box::new(move || keeper(&s)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "octodb-tasks-dispatch".into(),
            Box::new(move || dispatch(&s)),
        )?);
        for i in 0..threads_wanted {
            let s = shared.clone();
            threads.push(spawn(
                format!("octodb-task-worker-{i}"),
                Box::new(move || work(&s)),
            )?);
        }
        Ok(Workers { shared, threads })
    }

    /// Stop taking tasks, let running handlers finish, and join the threads.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.bump();
        self.shared.dispatch.jobs_ready.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a task worker thread panicked");
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Whether this primary writes now: alone, or its cluster's leader. A follower's app writes
/// would wait for a leader that is not itself (and hold its file's write lock meanwhile, which
/// its Raft state machine needs): its workers wait instead.
fn leads(conn: &Connection) -> bool {
    match conn.sync_status() {
        Ok(status) => status.cluster.is_none_or(|c| c.role == "leader"),
        Err(_) => false,
    }
}

/// Open a connection for a worker thread, retrying while the node starts.
fn open(shared: &Shared) -> Option<Connection> {
    while !shared.stopping() {
        match Connection::open(&shared.uri) {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::error!("task worker cannot open its database: {e}");
                shared.wake.sleep(shared.config.tick, &shared.stopping);
            }
        }
    }
    None
}

// ---------------------------------------------------------------- dispatching to the runners

/// Claimed tasks waiting for a runner, and the outcomes of runs waiting to be written.
#[derive(Default)]
struct Dispatch {
    jobs: Mutex<VecDeque<Job>>,
    jobs_ready: Condvar,
    outcomes: Mutex<Vec<Outcome>>,
    /// Claimed and not yet ended: jobs waiting or running, outcomes not yet handed back.
    busy: AtomicUsize,
}

impl Dispatch {
    fn jobs(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn outcomes(&self) -> MutexGuard<'_, Vec<Outcome>> {
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The dispatcher: one write transaction per round writes every outcome the runners handed
/// back and claims as many tasks as there are idle runners (SQLite commits one at a time,
/// so one commit for several tasks is what lets workers share a primary's disk).
fn dispatch(shared: &Shared) {
    let Some(conn) = open(shared) else { return };
    let me = Me::of(&conn);
    let runners = shared.config.threads.max(1);
    loop {
        let seen = *shared.wake.lock();
        let stopping = shared.stopping();
        let outcomes = std::mem::take(&mut *shared.dispatch.outcomes());
        let busy = shared.dispatch.busy.load(Ordering::Acquire);
        if stopping && busy == 0 && outcomes.is_empty() {
            return;
        }
        let wanted = if stopping {
            0
        } else {
            runners.saturating_sub(busy)
        };
        if !leads(&conn) {
            // Outcomes wait too: a new leader's workers take over once the leases run out.
            shared.dispatch.outcomes().extend(outcomes);
            if stopping {
                return;
            }
            shared.wake.wait_past(seen, shared.config.tick);
            continue;
        }
        if wanted == 0 && outcomes.is_empty() {
            shared.wake.wait_past(seen, shared.config.tick);
            continue;
        }
        let round = Instant::now();
        let claimed = claim(shared, &conn, &me, &outcomes, wanted);
        tracing::debug!(
            outcomes = outcomes.len(),
            wanted,
            claimed = claimed.as_ref().map_or(0, Vec::len),
            elapsed = ?round.elapsed(),
            "dispatch round"
        );
        match claimed {
            Ok(jobs) if jobs.is_empty() => {
                if outcomes.is_empty() {
                    shared.wake.wait_past(seen, shared.config.tick);
                }
            }
            Ok(jobs) => {
                shared.dispatch.busy.fetch_add(jobs.len(), Ordering::AcqRel);
                shared.dispatch.jobs().extend(jobs);
                shared.dispatch.jobs_ready.notify_all();
            }
            Err(e) => {
                tracing::debug!("cannot claim tasks now: {e}");
                // Alone, the outcomes may still be written (a claim's read can fail where a
                // write would not); otherwise they are kept for the next round.
                let mut kept = Vec::new();
                for o in outcomes {
                    if let Err(e) = o.write(&conn) {
                        tracing::warn!(task = o.task, "cannot write the task's outcome yet: {e}");
                        kept.push(o);
                    }
                }
                shared.dispatch.outcomes().extend(kept);
                shared.wake.wait_past(seen, shared.config.tick);
            }
        }
    }
}

/// A runner: runs the jobs the dispatcher claimed, one at a time, and hands back outcomes.
fn work(shared: &Shared) {
    let Some(conn) = open(shared).map(Rc::new) else {
        // Another runner takes its jobs.
        return;
    };
    loop {
        let job = {
            let mut jobs = shared.dispatch.jobs();
            loop {
                if let Some(job) = jobs.pop_front() {
                    break Some(job);
                }
                // Jobs claimed before a stop are still run: their leases are taken.
                if shared.stopping() {
                    break None;
                }
                jobs = shared
                    .dispatch
                    .jobs_ready
                    .wait_timeout(jobs, shared.config.tick)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let Some(job) = job else { return };
        if let Some(outcome) = run(shared, &conn, job) {
            shared.dispatch.outcomes().push(outcome);
        }
        shared.dispatch.busy.fetch_sub(1, Ordering::AcqRel);
        shared.wake.bump();
    }
}
