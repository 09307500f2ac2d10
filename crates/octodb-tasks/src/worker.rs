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
//! On a follower primary of a cluster the engine refuses app writes: claims fail, are logged,
//! and the dispatcher tries again at the next wake-up (the leader's workers do the work).

use crate::policy::{Policy, Signer};
use crate::record::{verify_cancel, TaskRecord};
use crate::schema::{self, TASKS_TABLE};
use crate::{now_ms, TaskError};
use octodb::crypto::PublicKey;
use octodb::feed::ChangeKind;
use octodb::{Connection, Role, Value};
use rand::RngCore;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Clock difference tolerated between a submitter and the primary judging its record.
const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
/// Attempts a task may lose to dying workers (lease ran out) beyond its retries, so a task
/// that kills its worker every time does not run for ever.
const LOST_ATTEMPTS_ALLOWED: i64 = 2;

/// An error a handler ends with: its type's name and message reach the submitter as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{type_name}: {message}")]
pub struct HandlerError {
    pub type_name: String,
    pub message: String,
}

impl HandlerError {
    pub fn new(type_name: impl Into<String>, message: impl Into<String>) -> HandlerError {
        HandlerError {
            type_name: type_name.into(),
            message: message.into(),
        }
    }
    /// What a progress report returns once the task is cancelled (or this worker lost it):
    /// return it from the handler.
    pub fn cancelled() -> HandlerError {
        HandlerError::new("Cancelled", "the task was cancelled")
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

/// Why a running handler must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The submitter's signed cancel was seen.
    Cancelled,
    /// Another worker may own the task now (lease renewal failed, or the row is gone).
    LeaseLost,
}

/// What a handler sees of its task. Cheap to clone; a clone reports for the same run (the
/// Python module keeps one in the object it hands to `run`). Not `Send`: it is used on the
/// worker thread that runs the handler.
#[derive(Clone)]
pub struct TaskContext {
    pub id: i64,
    /// 1 for the first attempt.
    pub attempt: i64,
    fixed: Rc<RunFixed>,
    reporting: Rc<RefCell<Reporting>>,
}

/// What a run's reports are written with.
struct RunFixed {
    lease_id: String,
    conn: Rc<Connection>,
    submitter: PublicKey,
    nonce: Vec<u8>,
    interval: Duration,
    lost: Arc<AtomicBool>,
}

/// What a run has reported so far, and whether it must stop.
#[derive(Default)]
struct Reporting {
    progress: Option<f64>,
    total: Option<f64>,
    expected_duration: Option<f64>,
    last_write: Option<Instant>,
    stop: Option<Stop>,
}

impl TaskContext {
    /// A key unique to this task and attempt, for the handler's side effects.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.id, self.attempt)
    }
    fn reporting(&self) -> std::cell::RefMut<'_, Reporting> {
        self.reporting.borrow_mut()
    }
    pub fn set_progress(&self, progress: f64) {
        self.reporting().progress = Some(progress);
    }
    pub fn set_total(&self, total: f64) {
        self.reporting().total = Some(total);
    }
    pub fn set_expected_duration(&self, seconds: f64) {
        self.reporting().expected_duration = Some(seconds);
    }
    /// Set progress and total and publish them.
    pub fn report(&self, progress: f64, total: f64) -> Result<(), HandlerError> {
        self.set_progress(progress);
        self.set_total(total);
        self.publish()
    }

    /// Publish progress, total and expected duration (written at most once per progress
    /// interval; the last values are always written when the task ends). Returns
    /// [`HandlerError::cancelled`] once the task is cancelled or this worker lost it: the
    /// handler should return that error.
    pub fn publish(&self) -> Result<(), HandlerError> {
        let mut r = self.reporting();
        let f = &self.fixed;
        if r.stop.is_none() && f.lost.load(Ordering::Acquire) {
            r.stop = Some(Stop::LeaseLost);
        }
        if r.stop.is_some() {
            return Err(HandlerError::cancelled());
        }
        if r.last_write.is_some_and(|at| at.elapsed() < f.interval) {
            return Ok(());
        }
        r.last_write = Some(Instant::now());
        let rows = f.conn.query(
            "UPDATE octo_tasks SET progress = ?1, total = ?2, expected_duration = ?3 \
             WHERE id = ?4 AND attempts = ?5 AND lease_id = ?6 AND state = 'running' \
             RETURNING cancel_signature",
            (
                r.progress,
                r.total,
                r.expected_duration,
                self.id,
                self.attempt,
                f.lease_id.as_str(),
            ),
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // The write failed (a follower now, a full disk): carry on, the final write
                // or the lease decides.
                tracing::warn!(task = self.id, "cannot write progress: {e}");
                return Ok(());
            }
        };
        let Some(row) = rows.iter().next() else {
            r.stop = Some(Stop::LeaseLost);
            return Err(HandlerError::cancelled());
        };
        if let Ok(Some(cancel)) = row.get::<Option<Vec<u8>>>(0) {
            if verify_cancel(&f.submitter, self.id, &f.nonce, &cancel) {
                r.stop = Some(Stop::Cancelled);
                return Err(HandlerError::cancelled());
            }
            tracing::warn!(
                task = self.id,
                "ignoring a cancel request with a bad signature"
            );
        }
        Ok(())
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
}

/// A task running on this process, as the lease keeper renews it.
struct Active {
    attempt: i64,
    lease_id: String,
    lost: Arc<AtomicBool>,
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

/// The intake's notes, written down together once a tick (one commit for many tasks rather
/// than one each); the origins are read from here meanwhile.
#[derive(Default)]
struct IntakeBuffer {
    origins: HashMap<i64, u32>,
    notes: Vec<Note>,
    /// The feed position everything up to which is noted here or in the file.
    up_to: u64,
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
                shared.wake.wait_past(u64::MAX, shared.config.tick);
            }
        }
    }
    None
}

// ---------------------------------------------------------------- intake and housekeeping

fn intake(shared: &Shared, conn: Connection) {
    let mut position: u64 = conn
        .query_row(
            "SELECT position FROM private_octo_task_intake WHERE id = 1",
            [],
            |r| r.get::<i64>(0),
        )
        .map(|p| p.max(0) as u64)
        .unwrap_or(0);
    let mut stored = position;
    let mut last_housekeeping: Option<Instant> = None;
    while !shared.stopping() {
        conn.wait_feed(position, shared.config.tick);
        match take_in(&conn, shared, position) {
            Ok((next, touched)) => {
                position = next;
                if touched {
                    shared.wake.bump();
                }
            }
            Err(e) => tracing::warn!("task intake cannot read the change feed: {e}"),
        }
        let tick_due = last_housekeeping.is_none_or(|at| at.elapsed() >= shared.config.tick);
        let flush_due = tick_due || shared.intake().notes.len() >= FLUSH_NOTES;
        // A follower writes nothing: what it read stays in memory until it leads.
        let leading = flush_due && leads(&conn);
        if leading {
            if let Err(e) = write_down(&conn, shared, &mut stored) {
                tracing::debug!("the task intake cannot write its notes now: {e}");
            }
        }
        if tick_due {
            last_housekeeping = Some(Instant::now());
            let cleaned = if leading {
                housekeeping(&conn, &shared.config)
            } else {
                Ok(false)
            };
            match cleaned {
                Ok(true) => shared.wake.bump(),
                Ok(false) => {}
                Err(e) => tracing::debug!("task housekeeping skipped: {e}"),
            }
            // Timed events (leases out, retries due) need no feed change to be seen.
            shared.wake.bump();
        }
    }
    if let Err(e) = write_down(&conn, shared, &mut stored) {
        tracing::debug!("the task intake cannot write its notes: {e}");
    }
}

/// Entries the intake may read past without writing its position down: after a restart it
/// reads them again, harmlessly. (Writing it at every read would cost a commit for each.)
const POSITION_SLACK: u64 = 10_000;

/// What the intake writes for one task change.
enum Note {
    Origin { task: i64, node: u32, seq: u64 },
    Acknowledged { task: i64 },
    Forget { task: i64 },
}

/// Notes past which the intake writes down before its tick.
const FLUSH_NOTES: usize = 1024;

/// Read the feed after `position`: note each task row's inserting node and the submitter's
/// acknowledgements (in memory, see [`write_down`]). Returns the new position and whether any
/// task changed.
fn take_in(
    conn: &Connection,
    shared: &Shared,
    position: u64,
) -> Result<(u64, bool), octodb::Error> {
    let batch = conn.changes_after(position, 512)?;
    if batch.up_to == position {
        return Ok((position, false));
    }
    let mut touched = false;
    let mut notes = Vec::new();
    let mut fresh: HashMap<i64, u32> = HashMap::new();
    for change in batch
        .changes
        .iter()
        .filter(|c| c.table.eq_ignore_ascii_case(TASKS_TABLE))
    {
        touched = true;
        let task = change.rowid;
        if change.kind == ChangeKind::Delete {
            fresh.remove(&task);
            notes.push(Note::Forget { task });
            continue;
        }
        let buffered = fresh.contains_key(&task) || shared.intake().origins.contains_key(&task);
        let acked = if buffered {
            None
        } else {
            let known = conn.query(
                "SELECT acked_ms FROM private_octo_task_origins WHERE task_id = ?1",
                [task],
            )?;
            let acked = known.iter().next().map(|r| r.values()[0] != Value::Null);
            acked
        };
        if !buffered && acked.is_none() {
            // The first upsert of a row in the log is its insert.
            fresh.insert(task, change.origin_node);
            notes.push(Note::Origin {
                task,
                node: change.origin_node,
                seq: change.seq,
            });
        }
        let seen_final = matches!(change.get("final_seen"), Some(v) if *v != Value::Null);
        if seen_final && acked != Some(true) {
            notes.push(Note::Acknowledged { task });
        }
    }
    let mut buffer = shared.intake();
    for note in &notes {
        if let Note::Forget { task } = note {
            buffer.origins.remove(task);
        }
    }
    buffer.origins.extend(fresh);
    buffer.notes.extend(notes);
    buffer.up_to = batch.up_to;
    Ok((batch.up_to, touched))
}

/// Write the intake's notes and position down, in one transaction; nothing when there is
/// nothing new and the stored position lags by less than [`POSITION_SLACK`].
fn write_down(conn: &Connection, shared: &Shared, stored: &mut u64) -> Result<(), octodb::Error> {
    let (notes, up_to) = {
        let mut buffer = shared.intake();
        if buffer.notes.is_empty() && buffer.up_to < stored.saturating_add(POSITION_SLACK) {
            return Ok(());
        }
        (std::mem::take(&mut buffer.notes), buffer.up_to)
    };
    let now = now_ms();
    let written = (|| -> Result<(), octodb::Error> {
        conn.execute("BEGIN IMMEDIATE", [])?;
        for note in &notes {
            match *note {
                Note::Origin { task, node, seq } => conn.execute(
                    "INSERT OR IGNORE INTO private_octo_task_origins(task_id, origin_node, seq) \
                     VALUES (?1, ?2, ?3)",
                    (task, i64::from(node), seq as i64),
                )?,
                Note::Acknowledged { task } => conn.execute(
                    "UPDATE private_octo_task_origins SET acked_ms = ?1 \
                     WHERE task_id = ?2 AND acked_ms IS NULL",
                    (now, task),
                )?,
                Note::Forget { task } => conn.execute(
                    "DELETE FROM private_octo_task_origins WHERE task_id = ?1",
                    [task],
                )?,
            };
        }
        conn.execute(
            "INSERT OR REPLACE INTO private_octo_task_intake(id, position) VALUES (1, ?1)",
            [up_to as i64],
        )?;
        conn.execute("COMMIT", [])?;
        Ok(())
    })();
    let mut buffer = shared.intake();
    match written {
        Ok(()) => {
            for note in &notes {
                if let Note::Origin { task, .. } = note {
                    buffer.origins.remove(task);
                }
            }
            *stored = up_to;
            Ok(())
        }
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute("ROLLBACK", []);
            }
            // Keep them, in order, for the next try.
            let later = std::mem::replace(&mut buffer.notes, notes);
            buffer.notes.extend(later);
            Err(e)
        }
    }
}

/// Refuse expired tasks, delete ended ones past their retention, forget expired nonces.
fn housekeeping(conn: &Connection, config: &WorkerConfig) -> Result<bool, octodb::Error> {
    let now = now_ms();
    let expired = conn.execute(
        "UPDATE octo_tasks SET state = 'refused', reason = 'expired', ended_at_ms = ?1, \
         error_message = 'not started before its expiry' \
         WHERE (state IS NULL OR state = 'queued') AND not_after_ms < ?1",
        [now],
    )?;
    let retention = config.retention.as_millis() as i64;
    let cap = config.retention_cap.as_millis() as i64;
    let deleted = conn.execute(
        "DELETE FROM octo_tasks WHERE state IN ('done', 'failed', 'cancelled', 'refused') AND (
             ended_at_ms < ?1 - ?3
             OR id IN (SELECT task_id FROM private_octo_task_origins
                       WHERE acked_ms IS NOT NULL AND acked_ms <= ?1 - ?2)
             OR (row_owner = 0 AND ended_at_ms <= ?1 - ?2))",
        (now, retention, cap),
    )?;
    conn.execute(
        "DELETE FROM private_octo_task_nonces WHERE expires_ms < ?1",
        [now],
    )?;
    if deleted > 0 {
        tracing::debug!(deleted, "tasks deleted after their retention");
    }
    Ok(expired > 0)
}

// ---------------------------------------------------------------- lease keeper

fn keeper(shared: &Shared) {
    let Some(conn) = open(shared) else { return };
    let every = (shared.config.lease / 3).max(Duration::from_millis(50));
    while !shared.stopping() {
        shared.wake.wait_past(u64::MAX, every);
        let running: Vec<(i64, i64, String, Arc<AtomicBool>)> = shared
            .active()
            .iter()
            .map(|(id, a)| (*id, a.attempt, a.lease_id.clone(), a.lost.clone()))
            .collect();
        if running.is_empty() || !leads(&conn) {
            continue;
        }
        let until = now_ms() + shared.config.lease.as_millis() as i64;
        for (id, attempt, lease_id, lost) in running {
            let renewed = conn.execute(
                "UPDATE octo_tasks SET lease_until_ms = ?1 \
                 WHERE id = ?2 AND attempts = ?3 AND lease_id = ?4 AND state = 'running'",
                (until, id, attempt, lease_id.as_str()),
            );
            match renewed {
                // Zero rows also when the task ended here since the list was taken.
                Ok(0)
                    if shared
                        .active()
                        .get(&id)
                        .is_some_and(|a| a.lease_id == lease_id) =>
                {
                    tracing::warn!(
                        task = id,
                        attempt,
                        "lease lost: the task was taken over or deleted"
                    );
                    lost.store(true, Ordering::Release);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(task = id, "cannot renew the lease: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------- claiming and running

/// A task claimed by this worker.
struct Job {
    id: i64,
    attempt: i64,
    lease_id: String,
    task_type: String,
    args: String,
    submitter: PublicKey,
    nonce: Vec<u8>,
}

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

/// This primary, as a signer of its own tasks.
struct Me {
    node_id: u32,
    public_key: String,
}

impl Me {
    fn of(conn: &Connection) -> Me {
        Me {
            node_id: conn.sync_status().map(|s| s.node_id).unwrap_or(0),
            public_key: conn.public_key(),
        }
    }
}

/// A waiting task's row, as read for examination.
struct Candidate {
    id: i64,
    values: Vec<Value>,
    attempts: i64,
    origin: Option<u32>,
}

const CANDIDATE_SQL: &str = "
SELECT t.id, t.task_type, t.args, t.priority, t.not_before_ms, t.not_after_ms, t.submitter,
       t.nonce, t.created_at_ms, t.signature, t.cancel_signature, coalesce(t.attempts, 0),
       o.origin_node
FROM octo_tasks t LEFT JOIN private_octo_task_origins o ON o.task_id = t.id
WHERE (t.state IS NULL OR t.state = 'queued' OR (t.state = 'running' AND t.lease_until_ms < ?1))
  AND (t.next_try_ms IS NULL OR t.next_try_ms <= ?1)
  AND (t.not_before_ms IS NULL OR t.not_before_ms <= ?1 OR t.cancel_signature IS NOT NULL)
  AND t.task_type IN (SELECT value FROM json_each(?2))
ORDER BY t.priority DESC, t.id
LIMIT ?3";

/// Examine the waiting tasks in priority order; refuse or cancel those that must be, and
/// claim the first that may run. One write transaction, so two workers never claim one task.
fn claim(
    shared: &Shared,
    conn: &Connection,
    me: &Me,
    outcomes: &[Outcome],
    wanted: usize,
) -> Result<Vec<Job>, octodb::Error> {
    conn.execute("BEGIN IMMEDIATE", [])?;
    // The clock is read once the write lock is held: read before, a long wait for the lock
    // would give a lease that has already run out when it is written.
    let now = now_ms();
    let claimed = (|| -> Result<Vec<Job>, octodb::Error> {
        for o in outcomes {
            o.write(conn)?;
        }
        let mut jobs = Vec::new();
        if wanted == 0 {
            return Ok(jobs);
        }
        let rows = conn.query(
            CANDIDATE_SQL,
            (now, shared.registry.types_json(), (wanted + 16) as i64),
        )?;
        if rows.is_empty() {
            return Ok(jobs);
        }
        let nodes = conn.nodes()?;
        for row in rows.iter() {
            let id: i64 = row.get(0)?;
            let origin = row.get::<Option<i64>>(12)?.map(|n| n as u32);
            let candidate = Candidate {
                id,
                values: row.values().to_vec(),
                attempts: row.get(11)?,
                origin: origin.or_else(|| shared.intake().origins.get(&id).copied()),
            };
            if let Some(job) = examine(shared, conn, me, &nodes, &candidate, now)? {
                jobs.push(job);
                if jobs.len() == wanted {
                    break;
                }
            }
        }
        Ok(jobs)
    })();
    match claimed {
        Ok(jobs) => {
            conn.execute("COMMIT", [])?;
            Ok(jobs)
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK", []);
            Err(e)
        }
    }
}

/// Why a task may not run: one of the reasons the issue names, and the detail.
struct Refusal {
    reason: &'static str,
    detail: String,
}

fn refusal(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// The signed record of a candidate row; any value of the wrong type is a bad record.
/// A row's signed record, its signature and its cancel request (if any).
type StoredRecord = (TaskRecord, Vec<u8>, Option<Vec<u8>>);

fn record_of(c: &Candidate) -> Result<StoredRecord, Refusal> {
    let bad = |what: &str| refusal("bad signature", format!("the stored {what} is malformed"));
    let text = |i: usize, what: &str| match &c.values[i] {
        Value::Text(s) => Ok(s.clone()),
        _ => Err(bad(what)),
    };
    let int = |i: usize, what: &str| match &c.values[i] {
        Value::Integer(n) => Ok(*n),
        _ => Err(bad(what)),
    };
    let blob = |i: usize, what: &str| match &c.values[i] {
        Value::Blob(b) => Ok(b.clone()),
        _ => Err(bad(what)),
    };
    let submitter = PublicKey::from_hex(&text(6, "submitter key")?).map_err(|e| {
        refusal(
            "bad signature",
            format!("the submitter key is not valid: {e}"),
        )
    })?;
    let nonce: [u8; 16] = blob(7, "nonce")?
        .try_into()
        .map_err(|_| bad("nonce (not 16 bytes)"))?;
    let not_before_ms = match &c.values[4] {
        Value::Null => None,
        Value::Integer(n) => Some(*n),
        _ => return Err(bad("not-before time")),
    };
    let cancel = match &c.values[10] {
        Value::Blob(b) => Some(b.clone()),
        _ => None,
    };
    Ok((
        TaskRecord {
            task_type: text(1, "task type")?,
            args: text(2, "arguments")?,
            priority: int(3, "priority")?,
            not_before_ms,
            not_after_ms: int(5, "expiry")?,
            submitter,
            nonce,
            created_at_ms: int(8, "creation time")?,
        },
        blob(9, "signature")?,
        cancel,
    ))
}

/// Checks everything but the nonce: signature, signer (the inserting node, approved, allowed
/// by the policy), expiry judged by this primary's clock.
fn check(
    policy: &Policy,
    me: &Me,
    nodes: &[octodb::NodeRecord],
    record: &TaskRecord,
    signature: &[u8],
    origin: u32,
    now: i64,
) -> Result<(), Refusal> {
    record
        .verify(signature)
        .map_err(|e| refusal("bad signature", e.to_string()))?;
    let signer_hex = record.submitter.to_hex();
    let inserter = if origin == me.node_id {
        Some(me.public_key.clone())
    } else {
        nodes
            .iter()
            .find(|n| n.node_id == origin)
            .map(|n| n.public_key.to_lowercase())
    };
    if inserter.as_deref() != Some(signer_hex.as_str()) {
        return Err(refusal(
            "signer not allowed",
            format!("the row was inserted by node {origin}, not by the node that signed it"),
        ));
    }
    let signer = if signer_hex == me.public_key {
        Signer {
            public_key: signer_hex,
            node_id: me.node_id,
            node_type: "primary".into(),
            user_id: None,
        }
    } else {
        let Some(node) = nodes
            .iter()
            .find(|n| n.public_key.eq_ignore_ascii_case(&signer_hex))
            .filter(|n| n.auth_state == "approved")
        else {
            return Err(refusal(
                "signer not allowed",
                "the signer is not an approved node",
            ));
        };
        Signer {
            public_key: signer_hex,
            node_id: node.node_id,
            node_type: node.node_type.clone(),
            user_id: node.user_id,
        }
    };
    if !policy.allows(&signer, &record.task_type) {
        return Err(refusal(
            "signer not allowed",
            format!(
                "the policy does not let this node submit `{}`",
                record.task_type
            ),
        ));
    }
    if record.not_after_ms < now {
        return Err(refusal("expired", "not started before its expiry"));
    }
    let cap = crate::client::MAX_EXPIRY.as_millis() as i64;
    if record.not_after_ms > now + cap + CLOCK_SKEW_MS {
        return Err(refusal("expired", "its expiry lies beyond the 7-day cap"));
    }
    if record.created_at_ms > now + CLOCK_SKEW_MS {
        return Err(refusal(
            "expired",
            "created in the future (clock skew beyond 5 minutes)",
        ));
    }
    Ok(())
}

/// Decide about one candidate inside the claim transaction: `Some(job)` when claimed.
fn examine(
    shared: &Shared,
    conn: &Connection,
    me: &Me,
    nodes: &[octodb::NodeRecord],
    c: &Candidate,
    now: i64,
) -> Result<Option<Job>, octodb::Error> {
    if shared.active().contains_key(&c.id) {
        // Running here, its lease late to be renewed (a starved keeper): not another attempt.
        return Ok(None);
    }
    let Some(origin) = c.origin else {
        // The intake has not read this row's insert from the feed yet; it wakes us when it has.
        return Ok(None);
    };
    let checked = record_of(c).and_then(|(record, signature, cancel)| {
        check(&shared.policy, me, nodes, &record, &signature, origin, now)
            .map(|()| (record, cancel))
    });
    let (record, cancel) = match checked {
        Ok(ok) => ok,
        Err(r) => {
            tracing::warn!(task = c.id, reason = r.reason, detail = %r.detail, "task refused");
            end(conn, c, "refused", Some(r.reason), Some(&r.detail), now)?;
            return Ok(None);
        }
    };
    if let Some(cancel) = cancel {
        if verify_cancel(&record.submitter, c.id, &record.nonce, &cancel) {
            end(conn, c, "cancelled", None, None, now)?;
            return Ok(None);
        }
        tracing::warn!(
            task = c.id,
            "ignoring a cancel request with a bad signature"
        );
    }
    // The nonce: the first task to show it owns it until its expiry. Its row is owned by
    // user 0, which no device has (0 asks the engine for a new user, it is never given):
    // the row replicates among the primaries only. ('*' would do for a `private_` table by
    // the SPEC, but the engine streams '*' rows of private tables to devices too, which skip
    // them: reported.)
    conn.execute(
        "INSERT INTO private_octo_task_nonces(nonce, task_id, expires_ms, row_owner) \
         VALUES (?1, ?2, ?3, 0) ON CONFLICT(nonce) DO NOTHING",
        (record.nonce.to_vec(), c.id, record.not_after_ms),
    )?;
    let owner: i64 = conn.query_row(
        "SELECT task_id FROM private_octo_task_nonces WHERE nonce = ?1",
        [record.nonce.to_vec()],
        |r| r.get(0),
    )?;
    if owner != c.id {
        tracing::warn!(
            task = c.id,
            first = owner,
            "task refused: its nonce was used before"
        );
        end(
            conn,
            c,
            "refused",
            Some("replayed"),
            Some(&format!("its nonce was first used by task {owner}")),
            now,
        )?;
        return Ok(None);
    }
    let options = shared
        .registry
        .handlers
        .get(&record.task_type)
        .map(|(_, o)| o.clone())
        .unwrap_or_default();
    if c.attempts > i64::from(options.max_retries) + LOST_ATTEMPTS_ALLOWED {
        conn.execute(
            "UPDATE octo_tasks SET state = 'failed', error_type = 'WorkerLost', \
             error_message = 'its workers stopped without finishing it, attempt after attempt', \
             ended_at_ms = ?1, lease_id = NULL WHERE id = ?2 AND coalesce(attempts, 0) = ?3",
            (now, c.id, c.attempts),
        )?;
        return Ok(None);
    }
    let lease_id = {
        let mut b = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    };
    let attempt = c.attempts + 1;
    let claimed = conn.execute(
        "UPDATE octo_tasks SET state = 'running', attempts = ?1, lease_id = ?2, \
         lease_until_ms = ?3, worker = ?4, started_at_ms = coalesce(started_at_ms, ?5), \
         next_try_ms = NULL WHERE id = ?6 AND coalesce(attempts, 0) = ?7",
        (
            attempt,
            lease_id.as_str(),
            now + shared.config.lease.as_millis() as i64,
            shared.config.name.as_str(),
            now,
            c.id,
            c.attempts,
        ),
    )?;
    if claimed == 0 {
        return Ok(None);
    }
    Ok(Some(Job {
        id: c.id,
        attempt,
        lease_id,
        task_type: record.task_type,
        args: record.args,
        submitter: record.submitter,
        nonce: record.nonce.to_vec(),
    }))
}

/// End a waiting task without running it.
fn end(
    conn: &Connection,
    c: &Candidate,
    state: &str,
    reason: Option<&str>,
    detail: Option<&str>,
    now: i64,
) -> Result<(), octodb::Error> {
    conn.execute(
        "UPDATE octo_tasks SET state = ?1, reason = ?2, error_message = ?3, ended_at_ms = ?4, \
         lease_id = NULL WHERE id = ?5 AND coalesce(attempts, 0) = ?6",
        (state, reason, detail, now, c.id, c.attempts),
    )?;
    Ok(())
}

/// Run a claimed task's handler; returns the outcome to write, unless this worker lost it.
fn run(shared: &Shared, conn: &Rc<Connection>, job: Job) -> Option<Outcome> {
    let (handler, options) = shared.registry.handlers.get(&job.task_type).cloned()?;
    let lost = Arc::new(AtomicBool::new(false));
    shared.active().insert(
        job.id,
        Active {
            attempt: job.attempt,
            lease_id: job.lease_id.clone(),
            lost: lost.clone(),
        },
    );
    let ctx = TaskContext {
        id: job.id,
        attempt: job.attempt,
        fixed: Rc::new(RunFixed {
            lease_id: job.lease_id.clone(),
            conn: conn.clone(),
            submitter: job.submitter,
            nonce: job.nonce.clone(),
            interval: shared.config.progress_interval,
            lost: lost.clone(),
        }),
        reporting: Rc::default(),
    };
    tracing::debug!(task = job.id, attempt = job.attempt, task_type = %job.task_type, "running");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.run(&ctx, &job.args)
    }))
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the handler panicked".into());
        Err(HandlerError::new("panic", message))
    });
    shared.active().remove(&job.id);
    let r = std::mem::take(&mut *ctx.reporting());
    let stop = match r.stop {
        None if lost.load(Ordering::Acquire) => Some(Stop::LeaseLost),
        stop => stop,
    };
    let now = now_ms();
    let opt = |v: Option<f64>| v.map_or(Value::Null, Value::Real);
    let fence = [
        Value::Integer(job.id),
        Value::Integer(job.attempt),
        Value::Text(job.lease_id.clone()),
    ];
    let (set, values): (&str, Vec<Value>) = match (stop, outcome) {
        (Some(Stop::LeaseLost), _) => {
            tracing::warn!(
                task = job.id,
                attempt = job.attempt,
                "the outcome is dropped: this worker lost the task"
            );
            return None;
        }
        (Some(Stop::Cancelled), _) => (
            "state = 'cancelled', ended_at_ms = ?4, lease_id = NULL, progress = ?5, total = ?6, \
             expected_duration = ?7",
            vec![
                Value::Integer(now),
                opt(r.progress),
                opt(r.total),
                opt(r.expected_duration),
            ],
        ),
        (None, Ok(result)) => (
            "state = 'done', result = ?4, ended_at_ms = ?5, lease_id = NULL, progress = ?6, \
             total = ?7, expected_duration = ?8, error_type = NULL, error_message = NULL",
            vec![
                Value::Text(result),
                Value::Integer(now),
                opt(r.progress),
                opt(r.total),
                opt(r.expected_duration),
            ],
        ),
        (None, Err(error)) => {
            let retries_used = job.attempt - 1;
            if retries_used < i64::from(options.max_retries) {
                let backoff = options
                    .backoff
                    .saturating_mul(1u32 << retries_used.clamp(0, 16) as u32)
                    .min(Duration::from_secs(600));
                (
                    "state = 'queued', next_try_ms = ?4, lease_id = NULL, error_type = ?5, \
                     error_message = ?6",
                    vec![
                        Value::Integer(now + backoff.as_millis() as i64),
                        Value::Text(error.type_name),
                        Value::Text(error.message),
                    ],
                )
            } else {
                (
                    "state = 'failed', ended_at_ms = ?4, lease_id = NULL, error_type = ?5, \
                     error_message = ?6, progress = ?7, total = ?8",
                    vec![
                        Value::Integer(now),
                        Value::Text(error.type_name),
                        Value::Text(error.message),
                        opt(r.progress),
                        opt(r.total),
                    ],
                )
            }
        }
    };
    Some(Outcome {
        task: job.id,
        sql: format!(
            "UPDATE octo_tasks SET {set} \
             WHERE id = ?1 AND attempts = ?2 AND lease_id = ?3 AND state = 'running'"
        ),
        params: fence.into_iter().chain(values).collect(),
    })
}

/// A run's outcome, to be written (fenced) with the worker's next claim: one commit for both.
struct Outcome {
    task: i64,
    sql: String,
    params: Vec<Value>,
}

impl Outcome {
    fn write(&self, conn: &Connection) -> Result<(), octodb::Error> {
        let written = conn.execute(&self.sql, rusqlite::params_from_iter(self.params.iter()))?;
        if written == 0 {
            tracing::warn!(
                task = self.task,
                "the outcome is dropped: the task was taken over or deleted"
            );
        }
        Ok(())
    }
}
