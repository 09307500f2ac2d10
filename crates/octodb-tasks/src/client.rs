//! The submitter's side: start a task, follow it, join it, cancel or delete it. Works on a
//! device (the usual case) and on a primary.

use crate::record::{cancel_bytes, TaskRecord, CANCEL_DOMAIN, TASK_DOMAIN};
use crate::schema::TASKS_TABLE;
use crate::{now_ms, TaskError};
use octodb::crypto::PublicKey;
use octodb::{Connection, Role, Value};
use rand::RngCore;
use std::time::{Duration, Instant};

/// The default time a task may wait before a worker refuses it as expired.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(3600);
/// The longest expiry a worker accepts (it bounds how long nonces are kept).
pub const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How a task is submitted.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Higher runs first (default 0).
    pub priority: i64,
    /// Do not start before this Unix time (milliseconds).
    pub not_before_ms: Option<i64>,
    /// Refused as expired if not started within this time (default 1 hour, at most 7 days).
    pub expires_in: Duration,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            priority: 0,
            not_before_ms: None,
            expires_in: DEFAULT_EXPIRY,
        }
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    Refused,
}

impl State {
    pub fn parse(s: Option<&str>) -> State {
        match s {
            None | Some("queued") => State::Queued,
            Some("running") => State::Running,
            Some("done") => State::Done,
            Some("failed") => State::Failed,
            Some("cancelled") => State::Cancelled,
            // Anything else was not written by a worker: treat as refused rather than wait.
            Some(_) => State::Refused,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Refused => "refused",
        }
    }
    pub fn has_ended(self) -> bool {
        !matches!(self, State::Queued | State::Running)
    }
}

/// What a progress callback receives.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub progress: Option<f64>,
    pub total: Option<f64>,
    pub expected_duration: Option<f64>,
}

/// A task as a node sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    pub id: i64,
    pub task_type: String,
    pub args: String,
    pub priority: i64,
    pub state: State,
    pub reason: Option<String>,
    pub attempts: i64,
    pub progress: Progress,
    pub result: Option<String>,
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub submitter: String,
    pub cancel_requested: bool,
    pub final_seen: bool,
}

const INFO_COLUMNS: &str = "id, task_type, args, priority, state, reason, attempts, progress, \
    total, expected_duration, result, error_type, error_message, created_at_ms, started_at_ms, \
    ended_at_ms, submitter, cancel_signature IS NOT NULL, \
    coalesce(final_seen = ended_at_ms, 0)";

fn info_of(r: octodb::Row<'_>) -> octodb::Result<TaskInfo> {
    Ok(TaskInfo {
        id: r.get(0)?,
        task_type: r.get(1)?,
        args: r.get(2)?,
        priority: r.get(3)?,
        state: State::parse(r.get::<Option<String>>(4)?.as_deref()),
        reason: r.get(5)?,
        attempts: r.get::<Option<i64>>(6)?.unwrap_or(0),
        progress: Progress {
            progress: r.get(7)?,
            total: r.get(8)?,
            expected_duration: r.get(9)?,
        },
        result: r.get(10)?,
        error_type: r.get(11)?,
        error_message: r.get(12)?,
        created_at_ms: r.get(13)?,
        started_at_ms: r.get(14)?,
        ended_at_ms: r.get(15)?,
        submitter: r.get(16)?,
        cancel_requested: r.get(17)?,
        final_seen: r.get(18)?,
    })
}

/// A node's view of the queue, through one connection (a device's or a primary's).
pub struct TaskQueue {
    conn: Connection,
}

impl TaskQueue {
    /// Use `conn` to submit and follow tasks. On a primary it also creates the queue's tables
    /// (devices receive them with the schema).
    pub fn new(conn: Connection) -> TaskQueue {
        TaskQueue { conn }
    }

    /// Open `uri` and use it (see [`TaskQueue::new`]).
    pub fn open(uri: &str) -> Result<TaskQueue, TaskError> {
        let queue = TaskQueue::new(Connection::open(uri)?);
        if queue.conn.role() == Some(Role::Primary) {
            crate::schema::install(&queue.conn)?;
        }
        Ok(queue)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Sign and insert a task; returns at once. The task runs when a worker on a primary has
    /// received and accepted it.
    pub fn start(
        &self,
        task_type: &str,
        args: serde_json::Value,
        opts: SubmitOptions,
    ) -> Result<Task<'_>, TaskError> {
        let id = self.submit(task_type, &args.to_string(), opts)?;
        Ok(Task { queue: self, id })
    }

    /// [`TaskQueue::start`] with the arguments as JSON text; returns the task's id.
    pub fn submit(
        &self,
        task_type: &str,
        args_json: &str,
        opts: SubmitOptions,
    ) -> Result<i64, TaskError> {
        if task_type.is_empty() {
            return Err(TaskError::Usage(
                "a task needs a type (the name a worker registered)".into(),
            ));
        }
        if serde_json::from_str::<serde_json::Value>(args_json).is_err() {
            return Err(TaskError::Usage("a task's arguments must be JSON".into()));
        }
        if opts.expires_in > MAX_EXPIRY || opts.expires_in.is_zero() {
            return Err(TaskError::Usage(format!(
                "expires_in must be more than 0 and at most {} days",
                MAX_EXPIRY.as_secs() / 86400
            )));
        }
        let submitter = PublicKey::from_hex(&self.conn.public_key()).map_err(|_| {
            TaskError::Usage(
                "tasks are submitted from a node (node=secondary or node=primary); a plain database has no key".into(),
            )
        })?;
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let created_at_ms = now_ms();
        let record = TaskRecord {
            task_type: task_type.to_string(),
            args: args_json.to_string(),
            priority: opts.priority,
            not_before_ms: opts.not_before_ms,
            not_after_ms: created_at_ms + opts.expires_in.as_millis() as i64,
            submitter,
            nonce,
            created_at_ms,
        };
        let signature = self
            .conn
            .sign_with_node_key(TASK_DOMAIN, &record.signed_bytes())?;
        // A device's row is its user's (row_owner left out: the engine fills it in); a
        // primary's own tasks are owned by user 0, which no device has, so they stay among the
        // primaries.
        let mut params = record_params(&record, &signature);
        let sql = if self.conn.role() == Some(Role::Primary) {
            params.push(Value::Integer(0));
            "INSERT INTO octo_tasks(task_type, args, priority, not_before_ms, not_after_ms, \
             submitter, nonce, created_at_ms, signature, row_owner) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        } else {
            "INSERT INTO octo_tasks(task_type, args, priority, not_before_ms, not_after_ms, \
             submitter, nonce, created_at_ms, signature) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        };
        match self
            .conn
            .execute(sql, rusqlite::params_from_iter(params.iter()))
        {
            Ok(_) => Ok(self.conn.last_insert_rowid()),
            // A device gets the queue's table with its download from the primaries.
            Err(e) if e.to_string().contains("no such table: octo_tasks") => Err(TaskError::Usage(
                "the task queue has not reached this device yet: it comes with the \
                     device's first download from a primary running a Worker (or a Queue). \
                     Wait for the download (Queue.wait_until_ready, or \
                     Connection::wait_until_ready) and start the task again"
                    .into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// A handle on task `id` (submitted earlier, perhaps before a restart).
    pub fn task(&self, id: i64) -> Task<'_> {
        Task { queue: self, id }
    }

    /// The task as this node sees it, or None once deleted.
    pub fn info(&self, id: i64) -> Result<Option<TaskInfo>, TaskError> {
        let rows = self.conn.query(
            &format!("SELECT {INFO_COLUMNS} FROM {TASKS_TABLE} WHERE id = ?1"),
            [id],
        )?;
        let info = rows.iter().next().map(info_of).transpose()?;
        Ok(info)
    }

    /// Every task this node sees, newest first.
    pub fn list(&self) -> Result<Vec<TaskInfo>, TaskError> {
        let rows = self.conn.query(
            &format!("SELECT {INFO_COLUMNS} FROM {TASKS_TABLE} ORDER BY id DESC"),
            [],
        )?;
        Ok(rows.iter().map(info_of).collect::<octodb::Result<_>>()?)
    }

    /// Wait until task `id` ends, calling `on_progress` whenever its progress changes; returns
    /// the result (JSON text) or the reason it has none. `None` waits for ever.
    pub fn join(
        &self,
        id: i64,
        timeout: Option<Duration>,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<String, TaskError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut last: Option<Progress> = None;
        loop {
            // Read the position first: a change landing after it wakes the wait below.
            let position = self.conn.feed_position();
            let info = self.info(id)?.ok_or(TaskError::NotFound(id))?;
            if info.progress.progress.is_some() && last.as_ref() != Some(&info.progress) {
                on_progress(&info.progress);
                last = Some(info.progress.clone());
            }
            if info.state.has_ended() {
                self.acknowledge(&info)?;
                return outcome(info);
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(Duration::from_secs(1)),
                    _ => return Err(TaskError::Timeout(timeout.unwrap_or_default())),
                },
                None => Duration::from_secs(1),
            };
            self.conn.wait_feed(position, wait);
        }
    }

    /// Tell the primaries this node has the final state: the retention period starts. The
    /// acknowledgement names the end it saw (its time), so that nothing written before the
    /// task ended can pass for one.
    pub fn acknowledge(&self, info: &TaskInfo) -> Result<(), TaskError> {
        if !info.final_seen && self.conn.role() == Some(Role::Secondary) {
            self.conn.execute(
                "UPDATE octo_tasks SET final_seen = ended_at_ms WHERE id = ?1 \
                 AND ended_at_ms IS NOT NULL AND final_seen IS NOT ended_at_ms",
                [info.id],
            )?;
        }
        Ok(())
    }

    /// Ask for task `id` to be cancelled: a queued task never runs; a running one sees
    /// `Cancelled` at its next progress report. The request is signed by this node, which must
    /// be the task's submitter.
    pub fn cancel(&self, id: i64) -> Result<(), TaskError> {
        let rows = self.conn.query(
            "SELECT nonce, submitter FROM octo_tasks WHERE id = ?1",
            [id],
        )?;
        let row = rows.iter().next().ok_or(TaskError::NotFound(id))?;
        let nonce: Vec<u8> = row.get(0)?;
        let submitter: String = row.get(1)?;
        if submitter != self.conn.public_key() {
            return Err(TaskError::Usage(format!(
                "task {id} was submitted by another node; only its submitter can cancel it"
            )));
        }
        let signature = self
            .conn
            .sign_with_node_key(CANCEL_DOMAIN, &cancel_bytes(id, &nonce))?;
        self.conn.execute(
            "UPDATE octo_tasks SET cancel_signature = ?1 WHERE id = ?2",
            (signature.to_vec(), id),
        )?;
        Ok(())
    }

    /// Delete task `id` now, on every node. Only an ended task can be deleted: cancel a
    /// running one first.
    pub fn delete(&self, id: i64) -> Result<(), TaskError> {
        let Some(info) = self.info(id)? else {
            return Ok(());
        };
        if !info.state.has_ended() {
            return Err(TaskError::Usage(format!(
                "task {id} is {}; cancel it and wait for it to end before deleting it",
                info.state.as_str()
            )));
        }
        self.conn
            .execute("DELETE FROM octo_tasks WHERE id = ?1", [id])?;
        Ok(())
    }
}

fn record_params(record: &TaskRecord, signature: &[u8; 64]) -> Vec<Value> {
    vec![
        Value::Text(record.task_type.clone()),
        Value::Text(record.args.clone()),
        Value::Integer(record.priority),
        record.not_before_ms.map_or(Value::Null, Value::Integer),
        Value::Integer(record.not_after_ms),
        Value::Text(record.submitter.to_hex()),
        Value::Blob(record.nonce.to_vec()),
        Value::Integer(record.created_at_ms),
        Value::Blob(signature.to_vec()),
    ]
}

/// The result of an ended task, or why there is none.
fn outcome(info: TaskInfo) -> Result<String, TaskError> {
    match info.state {
        State::Done => Ok(info.result.unwrap_or_else(|| "null".into())),
        State::Failed => Err(TaskError::Failed {
            type_name: info.error_type.unwrap_or_else(|| "Exception".into()),
            message: info.error_message.unwrap_or_default(),
        }),
        State::Cancelled => Err(TaskError::Cancelled),
        _ => Err(TaskError::Refused {
            reason: info.reason.unwrap_or_else(|| "unknown".into()),
        }),
    }
}

/// A submitted task, thread-like: [`Task::join`] waits for it.
pub struct Task<'q> {
    queue: &'q TaskQueue,
    pub id: i64,
}

impl Task<'_> {
    pub fn join(
        &self,
        timeout: Option<Duration>,
        on_progress: impl FnMut(&Progress),
    ) -> Result<serde_json::Value, TaskError> {
        let text = self.queue.join(self.id, timeout, on_progress)?;
        serde_json::from_str(&text).map_err(|e| {
            TaskError::Usage(format!(
                "task {} has a result that is not JSON: {e}",
                self.id
            ))
        })
    }
    /// The task as this node sees it now. Seeing it ended acknowledges the final state (its
    /// retention starts).
    pub fn info(&self) -> Result<TaskInfo, TaskError> {
        let info = self
            .queue
            .info(self.id)?
            .ok_or(TaskError::NotFound(self.id))?;
        if info.state.has_ended() {
            self.queue.acknowledge(&info)?;
        }
        Ok(info)
    }
    pub fn state(&self) -> Result<State, TaskError> {
        Ok(self.info()?.state)
    }
    /// The result, once done.
    pub fn result(&self) -> Result<Option<serde_json::Value>, TaskError> {
        let info = self.info()?;
        Ok(match (info.state, info.result) {
            (State::Done, Some(text)) => serde_json::from_str(&text).ok(),
            _ => None,
        })
    }
    /// Why it has no result, once ended without one.
    pub fn error(&self) -> Result<Option<TaskError>, TaskError> {
        let info = self.info()?;
        Ok(match info.state {
            State::Queued | State::Running | State::Done => None,
            _ => outcome(info).err(),
        })
    }
    pub fn cancel(&self) -> Result<(), TaskError> {
        self.queue.cancel(self.id)
    }
    pub fn delete(&self) -> Result<(), TaskError> {
        self.queue.delete(self.id)
    }
}
