//! Turns at writing a node's file, between the app's connections and the engine's writer.
//!
//! SQLite lets one connection write at a time; the others retry from its busy handler, which
//! sleeps 1, 2, 5 ... 100 ms between tries. An app committing without pause wins nearly every
//! time: its next transaction starts microseconds after the last, while the engine's writer
//! sleeps. Rows from the primaries and the acceptances of the device's own transactions then
//! waited for the app to pause, for seconds or for ever. A node's connections all live in one
//! process (`store::lock`), so they can take turns here instead:
//!
//! - the engine's writer waits for the app's open write transactions to end, woken as soon as
//!   the last one does, rather than sleeping in SQLite's busy handler;
//! - once it has waited [`ENGINE_GRACE`], an app connection about to write, and holding no read
//!   snapshot yet, lets it go first and goes on when the engine's turn ends (readers never wait:
//!   WAL lets them read beside any writer);
//! - the engine keeps its turn while it has queued work, at most [`ENGINE_TURN_MAX`].
//!
//! So neither side can shut the other out: incoming data waits at most the grace plus the
//! app's transaction in progress, and an app at most the engine's turn. SQLite's own locks still
//! decide who writes; these turns only order who asks when. Every wait here is bounded, so a
//! mistake in them can slow a writer down but never block it for good.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the engine waits for the app before apps about to write let it go first.
/// Long enough that the engine's work gathers into few transactions while an app writes (each
/// hand-over costs both sides), short enough that incoming data is not held up noticeably.
pub const ENGINE_GRACE: Duration = Duration::from_millis(2);
/// The longest the engine keeps its turn while jobs are queued; apps then get theirs.
pub const ENGINE_TURN_MAX: Duration = Duration::from_millis(10);
/// Beyond this the engine stops waiting for an app's transaction here and waits in SQLite's
/// busy handler instead (a long or forgotten app transaction).
const ENGINE_WAIT_MAX: Duration = Duration::from_millis(100);
/// Beyond this an app stops letting the engine go first and queues in SQLite's busy handler
/// (a long engine transaction, such as an initial download).
const APP_YIELD_MAX: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct State {
    /// App connections with a write transaction open (or opening).
    app_writers: usize,
    /// App connections waiting in [`WriteTurns::app_starting`].
    apps_waiting: usize,
    /// The engine asked for a turn and is waiting for the app's transactions to end.
    engine_waiting_since: Option<Instant>,
    /// The engine has its turn.
    engine_writing: bool,
    /// The engine's last turn ended: apps that waited for it go before its next one.
    apps_first: bool,
}

impl State {
    fn app_must_yield(&self) -> bool {
        !self.apps_first
            && (self.engine_writing
                || self
                    .engine_waiting_since
                    .is_some_and(|since| since.elapsed() >= ENGINE_GRACE))
    }

    fn engine_must_wait(&self) -> bool {
        self.app_writers > 0 || (self.apps_first && self.apps_waiting > 0)
    }
}

/// The turns of one node's file.
#[derive(Debug)]
pub struct WriteTurns {
    state: Mutex<State>,
    changed: Condvar,
    engine_wait_max: Duration,
    app_yield_max: Duration,
}

impl Default for WriteTurns {
    fn default() -> Self {
        WriteTurns::with_limits(ENGINE_WAIT_MAX, APP_YIELD_MAX)
    }
}

impl WriteTurns {
    fn with_limits(engine_wait_max: Duration, app_yield_max: Duration) -> Self {
        WriteTurns {
            state: Default::default(),
            changed: Condvar::new(),
            engine_wait_max,
            app_yield_max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The engine's turn: waits (bounded) for the app's write transactions to end. Held until
    /// the returned value is dropped.
    pub fn engine(self: &Arc<Self>) -> EngineTurn {
        let mut state = self.lock();
        let asked = Instant::now();
        state.engine_waiting_since = Some(asked);
        while state.engine_must_wait() {
            let left = self.engine_wait_max.saturating_sub(asked.elapsed());
            if left.is_zero() {
                tracing::debug!(
                    apps = state.app_writers,
                    "an app transaction is still open; waiting for it in SQLite instead"
                );
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.engine_waiting_since = None;
        state.engine_writing = true;
        state.apps_first = false;
        EngineTurn {
            turns: self.clone(),
            since: Instant::now(),
        }
    }

    /// An app connection without a read snapshot is about to write: let the engine go first
    /// if it is writing or has waited its grace; then count it (undo with
    /// [`WriteTurns::app_done`]).
    fn app_starting(&self) {
        let mut state = self.lock();
        let asked = Instant::now();
        state.apps_waiting += 1;
        while state.app_must_yield() {
            let left = self.app_yield_max.saturating_sub(asked.elapsed());
            if left.is_zero() {
                break;
            }
            // Yielding ends only when the engine's turn does (its drop wakes us): an engine
            // past its grace stays so until it has had its turn.
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.apps_waiting -= 1;
        state.apps_first = false;
        state.app_writers += 1;
    }

    fn app_writing(&self) {
        self.lock().app_writers += 1;
    }

    fn app_done(&self) {
        let mut state = self.lock();
        state.app_writers = state.app_writers.saturating_sub(1);
        if state.app_writers == 0 && state.engine_waiting_since.is_some() {
            self.changed.notify_all();
        }
    }
}

/// The engine's turn; ends when dropped.
#[derive(Debug)]
pub struct EngineTurn {
    turns: Arc<WriteTurns>,
    since: Instant,
}

impl EngineTurn {
    /// The turn has lasted long enough that apps waiting must get theirs.
    pub fn is_over(&self) -> bool {
        self.since.elapsed() >= ENGINE_TURN_MAX
    }
}

impl Drop for EngineTurn {
    fn drop(&mut self) {
        let mut state = self.turns.lock();
        state.engine_writing = false;
        state.apps_first = true;
        self.turns.changed.notify_all();
    }
}

/// One app connection's part in its node's turns. Not `Sync`, like the connection.
#[derive(Debug, Default)]
pub struct AppTurn {
    turns: Option<Arc<WriteTurns>>,
    /// This connection is counted among the app's writers.
    writing: std::cell::Cell<bool>,
}

impl AppTurn {
    pub fn new(turns: Arc<WriteTurns>) -> AppTurn {
        AppTurn {
            turns: Some(turns),
            writing: Default::default(),
        }
    }

    /// The connection holds no read snapshot and is about to write (a write in a transaction
    /// of its own, `BEGIN IMMEDIATE`, or the first statement after a deferred `BEGIN`): this
    /// may wait for the engine's turn.
    pub fn begins_writing(&self) {
        let Some(turns) = &self.turns else { return };
        self.idle();
        turns.app_starting();
        self.writing.set(true);
    }

    /// A statement inside the open transaction is about to write: count it, without waiting
    /// (its read snapshot is taken; letting the engine commit first would make it fail).
    pub fn writes(&self) {
        let Some(turns) = &self.turns else { return };
        if !self.writing.replace(true) {
            turns.app_writing();
        }
    }

    /// Counted among the app's writers already (its open transaction has written).
    pub fn is_writing(&self) -> bool {
        self.writing.get()
    }

    /// The connection holds no transaction any more.
    pub fn idle(&self) {
        if let Some(turns) = &self.turns {
            if self.writing.replace(false) {
                turns.app_done();
            }
        }
    }
}

impl Drop for AppTurn {
    fn drop(&mut self) {
        self.idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Turns whose waits never time out within a test, so that only the turns' own rules can
    /// let a side through.
    fn patient() -> Arc<WriteTurns> {
        Arc::new(WriteTurns::with_limits(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ))
    }

    #[test]
    fn the_engine_goes_as_soon_as_the_app_transaction_ends() {
        let turns = patient();
        let app = AppTurn::new(turns.clone());
        app.begins_writing();
        let (tx, rx) = mpsc::channel();
        let engine = {
            let turns = turns.clone();
            std::thread::spawn(move || {
                let turn = turns.engine();
                tx.send(Instant::now()).ok();
                drop(turn);
            })
        };
        // The engine is held back while the app writes...
        assert!(rx.recv_timeout(Duration::from_millis(20)).is_err());
        let ended = Instant::now();
        app.idle();
        // ...and is let through by the end of the app's transaction, not by a timeout.
        let went = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("engine turn");
        assert!(went >= ended);
        engine.join().expect("engine thread");
    }

    #[test]
    fn an_app_opening_a_transaction_lets_an_engine_that_waited_its_grace_go_first() {
        let turns = patient();
        let busy_app = AppTurn::new(turns.clone());
        busy_app.begins_writing();
        let engine = {
            let turns = turns.clone();
            std::thread::spawn(move || {
                let turn = turns.engine();
                let got = Instant::now();
                // Hold the turn a little so the app's wait is visible.
                std::thread::sleep(Duration::from_millis(5));
                drop(turn);
                got
            })
        };
        // Wait until the engine has asked and its grace is over.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !turns.lock().app_must_yield() {
            assert!(
                Instant::now() < deadline,
                "the engine never asked for a turn"
            );
            std::thread::yield_now();
        }
        // The app's transaction ends and it opens the next at once: the engine goes first.
        busy_app.idle();
        busy_app.begins_writing();
        let app_went = Instant::now();
        let engine_went = engine.join().expect("engine thread");
        assert!(engine_went < app_went);
        busy_app.idle();
        assert_eq!(turns.lock().app_writers, 0);
    }

    #[test]
    fn an_app_does_not_wait_for_an_engine_within_its_grace() {
        let turns = patient();
        // An engine that asked just now (dated ahead so that a slow test cannot outlast the
        // grace): the app must not wait for it, and these turns would wait for ever.
        turns.lock().engine_waiting_since = Some(Instant::now() + Duration::from_secs(60));
        let app = AppTurn::new(turns.clone());
        app.begins_writing();
        assert_eq!(turns.lock().app_writers, 1);
        drop(app);
        assert_eq!(turns.lock().app_writers, 0);
    }

    #[test]
    fn apps_that_waited_for_the_engine_write_before_its_next_turn() {
        let turns = patient();
        let first = turns.engine();
        let (tx, rx) = mpsc::channel();
        let app = {
            let turns = turns.clone();
            std::thread::spawn(move || {
                let app = AppTurn::new(turns);
                app.begins_writing();
                tx.send(()).ok();
                app.idle();
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while turns.lock().apps_waiting == 0 {
            assert!(Instant::now() < deadline, "the app never asked to write");
            std::thread::yield_now();
        }
        // The engine ends its turn and asks for the next one at once (more work queued).
        drop(first);
        let _second = turns.engine();
        assert!(
            rx.try_recv().is_ok(),
            "the engine went again before the waiting app"
        );
        app.join().expect("app thread");
    }

    #[test]
    fn a_write_inside_a_read_snapshot_never_waits_for_the_engine() {
        let turns = patient();
        let _engine = turns.engine();
        let (tx, rx) = mpsc::channel();
        let app = {
            let turns = turns.clone();
            std::thread::spawn(move || {
                let app = AppTurn::new(turns);
                app.writes();
                tx.send(()).ok();
                app.idle();
            })
        };
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the write waited for the engine's turn");
        app.join().expect("app thread");
    }
}
