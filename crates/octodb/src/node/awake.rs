//! Whether a device's process ran all along during a session. A phone suspends an app sent to
//! the background (SIGSTOP, or the system freezing it) for minutes; meanwhile its primary
//! drops the silent session and goes on, and what reaches the socket is read only on resuming.
//! A device that was caught up before must not say so on resuming: its `wait_until_synced`
//! returned at once, with 780 of the primary's 913 rows (the suspended-devices walkthrough).
//!
//! A ticker notes each second that the process runs. The status reads how long ago it last
//! did (on resuming, before the ticker has run again, that is the whole suspension), and the
//! ticker, finding a gap longer than a live connection may stay silent, ends the session: the
//! next one catches up afresh and says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the ticker notes that the process runs.
const TICK: Duration = Duration::from_secs(1);

/// When the process was last seen running.
#[derive(Debug)]
pub struct Awake {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
    /// A gap longer than this ends the session.
    limit: Duration,
}

impl Awake {
    pub fn new(limit: Duration) -> Arc<Awake> {
        Arc::new(Awake {
            since: Instant::now(),
            last: AtomicU64::new(0),
            limit,
        })
    }

    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
    }

    fn not_seen_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }

    /// The process has not been seen running for longer than a live connection may stay
    /// silent: what the session knew may be stale.
    pub fn was_suspended(&self) -> bool {
        self.not_seen_for() > self.limit
    }

    /// Ticks until the process is found not to have run for longer than the limit; returns
    /// that gap. (A task of its own, so that a long write in the session cannot hold it up.)
    pub async fn until_suspended(self: Arc<Self>) -> Duration {
        loop {
            tokio::time::sleep(TICK).await;
            let gap = self.not_seen_for();
            if gap > self.limit {
                return gap;
            }
            self.touch();
        }
    }
}
