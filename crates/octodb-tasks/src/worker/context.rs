//! What a running handler reports through: progress, total, expected duration, each write
//! fenced by (attempt, lease id); a cancel or a lost lease is seen at the next report.

use super::*;

/// Why a running handler must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
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
    /// Who submitted it: the node that signed it (its user, for a device), as checked when
    /// this attempt was claimed. A handler checks with it what its arguments name (an order
    /// of this user's), which the type's policy cannot see.
    pub submitted_by: Signer,
    pub(super) fixed: Rc<RunFixed>,
    pub(super) reporting: Rc<RefCell<Reporting>>,
}

/// What a run's reports are written with.
pub(super) struct RunFixed {
    pub(super) lease_id: String,
    pub(super) conn: Rc<Connection>,
    pub(super) submitter: PublicKey,
    pub(super) nonce: Vec<u8>,
    pub(super) interval: Duration,
    pub(super) lost: Arc<AtomicBool>,
    /// The intake saw the submitter's valid cancel request in the feed.
    pub(super) cancelled: Arc<AtomicBool>,
}

/// What a run has reported so far, and whether it must stop.
#[derive(Default)]
pub(super) struct Reporting {
    pub(super) progress: Option<f64>,
    pub(super) total: Option<f64>,
    pub(super) expected_duration: Option<f64>,
    pub(super) last_write: Option<Instant>,
    pub(super) stop: Option<Stop>,
}

impl TaskContext {
    /// A key unique to this task and attempt, for the handler's side effects.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.id, self.attempt)
    }
    pub(super) fn reporting(&self) -> std::cell::RefMut<'_, Reporting> {
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
        // Checked at every report, also those the progress interval does not write.
        if r.stop.is_none() && f.cancelled.load(Ordering::Acquire) {
            r.stop = Some(Stop::Cancelled);
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
