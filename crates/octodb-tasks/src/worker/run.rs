//! Running a claimed task's handler, and the outcome it leaves to be written (fenced).

use super::*;

/// Run a claimed task's handler; returns the outcome to write, unless this worker lost it.
pub(super) fn run(shared: &Shared, conn: &Rc<Connection>, job: Job) -> Option<Outcome> {
    let (handler, options) = shared.registry.handlers.get(&job.task_type).cloned()?;
    let lost = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicBool::new(false));
    shared.active().insert(
        job.id,
        Active {
            attempt: job.attempt,
            lease_id: job.lease_id.clone(),
            lost: lost.clone(),
            cancelled: cancelled.clone(),
            submitter: job.submitter,
            nonce: job.nonce.clone(),
        },
    );
    let ctx = TaskContext {
        id: job.id,
        attempt: job.attempt,
        submitted_by: job.signer.clone(),
        fixed: Rc::new(RunFixed {
            lease_id: job.lease_id.clone(),
            conn: conn.clone(),
            submitter: job.submitter,
            nonce: job.nonce.clone(),
            interval: shared.config.progress_interval,
            lost: lost.clone(),
            cancelled,
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
            let backoff = options
                .backoff
                .saturating_mul(1u32 << retries_used.clamp(0, 16) as u32)
                .min(Duration::from_secs(600));
            // Attempts in all: the first, the retries, and those lost to dying workers, with
            // which an unavailable database's attempts are counted (`claim` ends the task
            // past them).
            let last_attempt = i64::from(options.max_retries) + 1 + LOST_ATTEMPTS_ALLOWED;
            let again = retries_used < i64::from(options.max_retries)
                || (error.is_unavailable() && job.attempt < last_attempt);
            if again {
                if error.is_unavailable() {
                    tracing::warn!(
                        task = job.id,
                        attempt = job.attempt,
                        error = %error,
                        "the database was unavailable to the task's handler: it runs again"
                    );
                }
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
pub(super) struct Outcome {
    pub(super) task: i64,
    pub(super) sql: String,
    pub(super) params: Vec<Value>,
}

impl Outcome {
    pub(super) fn write(&self, conn: &Connection) -> Result<(), octodb::Error> {
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
