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
use std::time::{Duration, Instant, SystemTime};

/// When the process was last seen running, by two clocks: the monotonic one runs on while a
/// process is stopped, but not, on Linux and Apple's systems, while the machine sleeps (a
/// phone's screen off); the wall clock runs on through both, but may jump (a jump only costs
/// a reconnect).
#[derive(Debug)]
pub struct Awake {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
    /// Milliseconds since the Unix epoch.
    last_wall: AtomicU64,
    /// A gap longer than this ends the session.
    limit: Duration,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Awake {
    /// `heartbeat`: the pace of the session's heartbeats. Its primary counts the silence from
    /// this device's last message, which may have gone a whole heartbeat before the process
    /// stopped: so the session may be dead after the primary's limit less one heartbeat.
    pub fn new(heartbeat: Duration) -> Arc<Awake> {
        let limit = crate::uri::dead_after(heartbeat).saturating_sub(heartbeat);
        Arc::new(Awake {
            since: Instant::now(),
            last: AtomicU64::new(0),
            last_wall: AtomicU64::new(wall_ms()),
            limit,
        })
    }

    /// How often the ticker notes that the process runs: a few times within the limit.
    fn tick(&self) -> Duration {
        (self.limit / 4).max(Duration::from_millis(100))
    }

    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last.fetch_max(now, Ordering::Relaxed);
        self.last_wall.fetch_max(wall_ms(), Ordering::Relaxed);
    }

    fn not_seen_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        let monotonic = self.since.elapsed().saturating_sub(last);
        let wall =
            Duration::from_millis(wall_ms().saturating_sub(self.last_wall.load(Ordering::Relaxed)));
        monotonic.max(wall)
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
            tokio::time::sleep(self.tick()).await;
            let gap = self.not_seen_for();
            if gap > self.limit {
                return gap;
            }
            self.touch();
        }
    }
}
