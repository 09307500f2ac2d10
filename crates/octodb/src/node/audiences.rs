//! Which of a primary's device sessions a new log entry wakes.
//!
//! Each session streams the log to one device, filtered by what the device's user may see.
//! When every session followed the log's position itself, each commit woke every connected
//! device's session, and most found nothing they may see: work of devices x commits (with
//! 19,900 devices connected, ~8 ms of CPU per commit of one user's row; 0.1 ms now).
//! Entries now wake the sessions of the users whose rows they hold and of the device whose
//! transaction they decide; entries every device may see (a `'*'` row, a schema change), or
//! whose audience is unknown, wake all. A session woken reads the log from its position as
//! before: the wakes decide only when it looks.
//!
//! Devices also hear of positions past entries they may not see (so that a reconnecting
//! device does not re-read them): a ticker wakes every session while the log moves, at most
//! once per [`POSITION_DELAY`], and less often the more sessions there are, so that all of
//! them together get about [`POSITIONS_PER_SECOND`] such messages (with 20,000 devices
//! connected, each hears its position every ~10 s rather than 5 times a second: 100,000
//! messages a second cost a core). On a busy log it ticks sooner, before the log has moved
//! past a quarter of the recent entries kept in memory: a session catching up past unseen
//! entries then reads memory, not the file.

use crate::log::recent::Recorded;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// How long a device may go without hearing that the log moved on past entries it may not
/// see: often enough that a reconnecting device rarely re-reads much, rarely enough that busy
/// primaries do not send every device a message per commit.
pub const POSITION_DELAY: Duration = Duration::from_millis(200);
/// Position messages per second to all devices together, beyond which the ticker slows down.
pub const POSITIONS_PER_SECOND: u32 = 2_000;
/// A tick comes sooner once the log has moved this far: a session catches up past unseen
/// entries from the window of recent ones in memory, and one left behind that window reads
/// the file instead (a quarter of the window, which also gives way to large transactions).
const TICK_AFTER_ENTRIES: u64 = crate::log::recent::MAX_ENTRIES as u64 / 4;

/// The wake-ups of a primary's device sessions. Each channel carries the newest sequence
/// number it woke for; sessions read the log itself to learn what is there.
pub struct Audiences {
    /// Entries every device may see, or whose audience is unknown.
    everyone: watch::Sender<u64>,
    /// The log moved: devices may be told their new position.
    positions: watch::Sender<u64>,
    /// Per user with a session now: entries holding that user's rows or deciding one of its
    /// devices' transactions. Dropped with the user's last session.
    users: Mutex<HashMap<i64, Weak<watch::Sender<u64>>>>,
    /// Sessions following now.
    sessions: AtomicUsize,
}

impl Default for Audiences {
    fn default() -> Self {
        Audiences {
            everyone: watch::channel(0).0,
            positions: watch::channel(0).0,
            users: Mutex::new(HashMap::new()),
            sessions: AtomicUsize::new(0),
        }
    }
}

/// Raise a channel's value to `seq` (never lower it), waking its receivers if it rose.
fn raise(channel: &watch::Sender<u64>, seq: u64) {
    channel.send_if_modified(|v| {
        let newer = seq > *v;
        if newer {
            *v = seq;
        }
        newer
    });
}

impl Audiences {
    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Weak<watch::Sender<u64>>>> {
        // The map holds no invariant a panic could break halfway.
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The wake-ups of a session streaming to a device of `user`.
    pub fn follow(self: &Arc<Self>, user: i64) -> Following {
        let channel = {
            let mut users = self.users();
            match users.get(&user).and_then(Weak::upgrade) {
                Some(c) => c,
                None => {
                    let c = Arc::new(watch::channel(0).0);
                    users.insert(user, Arc::downgrade(&c));
                    c
                }
            }
        };
        self.sessions.fetch_add(1, Ordering::Relaxed);
        Following {
            mine: channel.subscribe(),
            everyone: self.everyone.subscribe(),
            positions: self.positions.subscribe(),
            user,
            channel,
            audiences: self.clone(),
        }
    }

    /// Committed `entries` wake their audiences. `origin_user` names the user of a device
    /// whose transaction an entry decides (it hears of the decision even when it may see none
    /// of the rows, or the entry is a rejection without rows).
    pub fn wake(&self, entries: &[Arc<Recorded>], origin_user: impl Fn(u32) -> Option<i64>) {
        let mut for_everyone = 0;
        let mut for_users: Vec<(i64, u64)> = Vec::new();
        for e in entries {
            let seq = e.seq();
            if e.is_for_everyone() {
                for_everyone = for_everyone.max(seq);
                continue;
            }
            let origin = origin_user(e.entry.origin_node);
            for &user in e.users().iter().chain(origin.as_ref()) {
                match for_users.iter_mut().find(|(u, _)| *u == user) {
                    Some((_, s)) => *s = (*s).max(seq),
                    None => for_users.push((user, seq)),
                }
            }
        }
        if for_everyone > 0 {
            raise(&self.everyone, for_everyone);
        }
        if !for_users.is_empty() {
            let users = self.users();
            for (user, seq) in for_users {
                if let Some(channel) = users.get(&user).and_then(Weak::upgrade) {
                    raise(&channel, seq);
                }
            }
        }
    }

    /// Entries up to `seq` whose audience is not known here (read back from the file): every
    /// session looks.
    pub fn wake_everyone(&self, seq: u64) {
        raise(&self.everyone, seq);
    }

    /// Tells sessions the log's position while it moves, at most once per `every` (more
    /// rarely with many sessions, see the module; sooner when the log moves fast, see
    /// [`TICK_AFTER_ENTRIES`]); ends when `feed` closes.
    pub async fn tick_positions(self: Arc<Self>, mut feed: watch::Receiver<u64>, every: Duration) {
        let mut ticked = *feed.borrow_and_update();
        while feed.changed().await.is_ok() {
            let due = tokio::time::Instant::now() + self.position_interval(every);
            while feed.borrow_and_update().saturating_sub(ticked) < TICK_AFTER_ENTRIES {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    moved = feed.changed() => if moved.is_err() { return },
                }
            }
            ticked = *feed.borrow_and_update();
            raise(&self.positions, ticked);
        }
    }

    /// The time between position ticks with the sessions following now.
    fn position_interval(&self, at_least: Duration) -> Duration {
        let sessions = self.sessions.load(Ordering::Relaxed) as u32;
        at_least.max(Duration::from_secs(1) * sessions / POSITIONS_PER_SECOND)
    }
}

/// Why a session woke.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Entries it may see may have been committed.
    Entries,
    /// The log moved on; its device may be told its position.
    Position,
}

/// One session's wake-ups; leaves the user's channel to be dropped with its last session.
pub struct Following {
    mine: watch::Receiver<u64>,
    everyone: watch::Receiver<u64>,
    positions: watch::Receiver<u64>,
    user: i64,
    channel: Arc<watch::Sender<u64>>,
    audiences: Arc<Audiences>,
}

impl Following {
    /// Forget the wakes so far: call before reading the log, so that an entry committed while
    /// it reads wakes the session again.
    pub fn mark_seen(&mut self) {
        self.mine.borrow_and_update();
        self.everyone.borrow_and_update();
    }

    /// Until an entry for this session or a position tick comes.
    pub async fn woken(&mut self) -> Wake {
        // The senders live as long as `self` (its channel and its `Audiences`): these never
        // fail, and a failure would only mean a spurious wake.
        tokio::select! {
            _ = self.mine.changed() => Wake::Entries,
            _ = self.everyone.changed() => Wake::Entries,
            _ = self.positions.changed() => Wake::Position,
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.audiences.sessions.fetch_sub(1, Ordering::Relaxed);
        let mut users = self.audiences.users();
        // Under the map's lock no other session can take this channel meanwhile: when this is
        // its only holder, the user has no session left.
        if Arc::strong_count(&self.channel) == 1 {
            users.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{ChangeSet, Op};
    use crate::log::{EntryBody, LogEntry};
    use crate::value::Value;

    /// An entry inserting one row owned by `owner`, from `origin_node`.
    fn entry(seq: u64, origin_node: u32, owner: Value) -> Arc<Recorded> {
        let mut cs = ChangeSet::default();
        let table = cs.table_index("t", &["v".to_string(), "row_owner".to_string()]);
        cs.ops.push(Op::Insert {
            table,
            rowid: seq as i64,
            values: vec![Value::Integer(1), owner],
        });
        Arc::new(Recorded::new(LogEntry {
            seq,
            origin_node,
            origin_txn: 1,
            body: EntryBody::Changes(cs),
            origin_digest: None,
        }))
    }

    fn woke(f: &mut Following) -> bool {
        f.mine.has_changed().unwrap_or(true) || f.everyone.has_changed().unwrap_or(true)
    }

    #[test]
    fn an_entry_wakes_only_its_users_sessions_and_its_origin() {
        let audiences = Arc::new(Audiences::default());
        let mut alice = audiences.follow(1);
        let mut alices_phone = audiences.follow(1);
        let mut bob = audiences.follow(2);
        let nobody = |_| None;
        audiences.wake(&[entry(5, 9, Value::Integer(1))], nobody);
        assert!(woke(&mut alice) && woke(&mut alices_phone));
        assert!(!woke(&mut bob), "bob's session sleeps through alice's row");
        bob.mark_seen();
        alice.mark_seen();
        alices_phone.mark_seen();
        // A decision on one of bob's devices' transactions reaches bob's sessions even when
        // its rows are local to the primary (or it has none).
        audiences.wake(&[entry(6, 7, Value::Null)], |node| (node == 7).then_some(2));
        assert!(woke(&mut bob) && !woke(&mut alice));
        bob.mark_seen();
        // A '*' row and an entry of unknown audience wake everyone.
        audiences.wake(&[entry(7, 9, Value::Text("*".into()))], nobody);
        assert!(woke(&mut alice) && woke(&mut bob));
        alice.mark_seen();
        bob.mark_seen();
        audiences.wake_everyone(8);
        assert!(woke(&mut alice) && woke(&mut bob));
    }

    #[test]
    fn positions_slow_down_with_many_sessions() {
        let audiences = Arc::new(Audiences::default());
        let few: Vec<_> = (0..10).map(|u| audiences.follow(u)).collect();
        assert_eq!(audiences.position_interval(POSITION_DELAY), POSITION_DELAY);
        let many: Vec<_> = (0..20_000).map(|u| audiences.follow(u)).collect();
        assert_eq!(
            audiences.position_interval(POSITION_DELAY),
            Duration::from_millis(10_005),
            "20,010 sessions at 2,000 position messages a second"
        );
        drop(many);
        drop(few);
        assert_eq!(audiences.position_interval(POSITION_DELAY), POSITION_DELAY);
    }

    #[test]
    fn a_fast_log_ticks_before_the_interval() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let audiences = Arc::new(Audiences::default());
        let mut positions = audiences.positions.subscribe();
        let (feed, watching) = watch::channel(0u64);
        // An interval far longer than the test: only the log's progress can tick.
        rt.spawn(
            audiences
                .clone()
                .tick_positions(watching, Duration::from_secs(3600)),
        );
        // (The ticker counts from the position it first sees, which may already be this one.)
        let moved_far = TICK_AFTER_ENTRIES / 2 + TICK_AFTER_ENTRIES + 1;
        rt.block_on(async {
            feed.send_replace(TICK_AFTER_ENTRIES / 2);
            tokio::task::yield_now().await;
            feed.send_replace(moved_far);
            tokio::time::timeout(Duration::from_secs(30), positions.changed())
                .await
                .expect("a tick once the log moved past the threshold")
                .expect("the ticker's channel is open");
        });
        assert_eq!(*positions.borrow(), moved_far);
    }

    #[test]
    fn a_users_channel_goes_with_its_last_session() {
        let audiences = Arc::new(Audiences::default());
        let first = audiences.follow(1);
        let second = audiences.follow(1);
        drop(first);
        assert!(
            audiences.users().contains_key(&1),
            "one session of user 1 is left"
        );
        drop(second);
        assert!(audiences.users().is_empty());
        let mut again = audiences.follow(1);
        audiences.wake(&[entry(3, 9, Value::Integer(1))], |_| None);
        assert!(
            woke(&mut again),
            "a new session of the user gets a fresh channel"
        );
    }
}
