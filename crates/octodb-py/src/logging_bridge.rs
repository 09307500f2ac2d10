//! The engine's logs, handed to Python's `logging`. The engine logs with `tracing` on its
//! own threads (a device refused, a pending row stepping aside, a leader losing its
//! majority); without this, a Python app would never see them. Each record goes to
//! the logger `octodb.<module>` (`octodb.node.secondary`, `octodb.tasks.worker.claim`, ...), at
//! the level of the `octodb` logger, read again every second.
//!
//! An engine thread never takes the GIL here: it may hold a lock that a Python thread
//! holding the GIL waits for. It queues the record; a thread of the module's own hands
//! records to `logging`. A full queue drops records (counted, and said so once the
//! forwarding catches up) rather than slow the engine or grow without bound.

use pyo3::prelude::*;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, Once};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Records waiting for the forwarding thread.
const QUEUE: usize = 4096;
/// How often the forwarding thread reads the loggers' levels, so that an app's `setLevel`
/// takes effect even when no record comes.
const LEVEL_REFRESH: Duration = Duration::from_secs(1);
/// The logger every record's logger descends from.
const ROOT_LOGGER: &str = "octodb";
/// openraft reports a cluster's ordinary events (a member unreachable, an election) as
/// warnings; as in the CLI, they are forwarded only when the app sets this logger's level.
const RAFT_LOGGER: &str = "octodb.openraft";

/// The most verbose level forwarded, for octodb's targets and for openraft's (as `u8`,
/// see `to_code`); warnings and errors until the forwarding thread reads the loggers.
static LEVEL: AtomicU8 = AtomicU8::new(2);
static RAFT_LEVEL: AtomicU8 = AtomicU8::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Where records go, and the process that made the channel: a child made by `fork` has
/// the channel but not the thread that drains it, so it makes its own.
static QUEUE_IN: Mutex<Option<(u32, SyncSender<Record>)>> = Mutex::new(None);
static INSTALLED: Once = Once::new();

struct Record {
    level: Level,
    logger: String,
    message: String,
    /// When and where the engine logged it: the record shows the engine's thread, time and
    /// source line, not the forwarding thread's.
    created: f64,
    thread: String,
    file: &'static str,
    line: u32,
}

/// Forward the engine's logs to `logging` from now on (idempotent; called before a node
/// opens, as nodes are what log).
pub fn start(py: Python<'_>) {
    // The levels as the app set them before this open, so that its first records follow them.
    if let Err(e) = read_levels(py) {
        e.write_unraisable(py, None);
    }
    INSTALLED.call_once(|| {
        // Another global subscriber (an embedding Rust program's) keeps its place.
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ToQueue));
    });
    let mut queue_in = match QUEUE_IN.lock() {
        Ok(q) => q,
        Err(poisoned) => poisoned.into_inner(),
    };
    let pid = std::process::id();
    if queue_in.as_ref().is_some_and(|(owner, _)| *owner == pid) {
        return;
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("octodb-logging".into())
        .spawn(move || forward(rx));
    match spawned {
        Ok(_) => *queue_in = Some((pid, tx)),
        // Logging is not worth refusing the open for; the records stay with `tracing`.
        Err(e) => eprintln!("octodb: cannot start the thread forwarding engine logs: {e}"),
    }
}

/// The forwarding thread: records to `logging`, and the loggers' levels back, until the
/// interpreter shuts down.
fn forward(rx: Receiver<Record>) {
    loop {
        let mut batch = Vec::new();
        match rx.recv_timeout(LEVEL_REFRESH) {
            Ok(first) => {
                batch.push(first);
                batch.extend(rx.try_iter().take(QUEUE));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let alive = Python::try_attach(|py| {
            if let Err(e) = hand_to_logging(py, batch) {
                e.write_unraisable(py, None);
            }
        });
        if alive.is_none() {
            return;
        }
    }
}

fn hand_to_logging(py: Python<'_>, batch: Vec<Record>) -> PyResult<()> {
    let logging = py.import("logging")?;
    let get_logger = logging.getattr("getLogger")?;
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        get_logger.call1((ROOT_LOGGER,))?.call_method1(
            "warning",
            (format!(
                "{dropped} engine log records were dropped: Python's logging did not keep up"
            ),),
        )?;
    }
    let started: f64 = logging
        .getattr("_startTime")
        .and_then(|t| t.extract())
        .unwrap_or(0.0);
    for record in batch {
        let logger = get_logger.call1((record.logger.as_str(),))?;
        let level = python_level(record.level);
        if !logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
            continue;
        }
        let made = logger.call_method1(
            "makeRecord",
            (
                record.logger,
                level,
                record.file,
                record.line,
                record.message,
                pyo3::types::PyTuple::empty(py),
                py.None(),
            ),
        )?;
        made.setattr("created", record.created)?;
        made.setattr("msecs", (record.created.fract() * 1000.0).floor())?;
        made.setattr("relativeCreated", (record.created - started) * 1000.0)?;
        made.setattr("threadName", record.thread)?;
        made.setattr("thread", py.None())?;
        logger.call_method1("handle", (made,))?;
    }
    read_levels(py)
}

/// Read the `octodb` and `octodb.openraft` loggers' levels into the filter.
fn read_levels(py: Python<'_>) -> PyResult<()> {
    let get_logger = py.import("logging")?.getattr("getLogger")?;
    let root: i32 = get_logger
        .call1((ROOT_LOGGER,))?
        .call_method0("getEffectiveLevel")?
        .extract()?;
    let raft = get_logger.call1((RAFT_LOGGER,))?;
    let raft_set: i32 = raft.getattr("level")?.extract()?;
    let raft_level = match raft_set {
        0 => 0, // NOTSET: off, as in the CLI
        _ => to_code(raft.call_method0("getEffectiveLevel")?.extract()?),
    };
    let octodb_level = to_code(root);
    let octodb_changed = LEVEL.swap(octodb_level, Ordering::Relaxed) != octodb_level;
    let raft_changed = RAFT_LEVEL.swap(raft_level, Ordering::Relaxed) != raft_level;
    if octodb_changed || raft_changed {
        // Callsites cache whether they are enabled; a new level must reach them.
        tracing::callsite::rebuild_interest_cache();
    }
    Ok(())
}

/// A Python level (10 DEBUG ... 40 ERROR) as the most verbose tracing level it lets
/// through: 0 none, 1 ERROR, 2 WARN, 3 INFO, 4 DEBUG, 5 TRACE.
fn to_code(python_level: i32) -> u8 {
    match python_level {
        i32::MIN..=9 => 5,
        10..=19 => 4,
        20..=29 => 3,
        30..=39 => 2,
        40..=49 => 1,
        _ => 0,
    }
}

fn filter(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn python_level(level: Level) -> i32 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

fn is_raft(target: &str) -> bool {
    target == "openraft" || target.starts_with("openraft::")
}

/// `octodb::node::secondary` -> `octodb.node.secondary`; the other crates' under `octodb`
/// (`octodb_tasks::worker` -> `octodb.tasks.worker`, `openraft::core` ->
/// `octodb.openraft.core`), so that the `octodb` logger's level and handlers cover them all.
fn logger_name(target: &str) -> String {
    let dotted = target.replace("::", ".");
    if dotted == ROOT_LOGGER || dotted.starts_with("octodb.") {
        dotted
    } else if let Some(rest) = dotted.strip_prefix("octodb_") {
        format!("{ROOT_LOGGER}.{rest}")
    } else {
        format!("{ROOT_LOGGER}.{dotted}")
    }
}

/// The tracing layer: enabled records, formatted, into the queue.
struct ToQueue;

impl ToQueue {
    fn level_for(target: &str) -> LevelFilter {
        let code = if is_raft(target) { &RAFT_LEVEL } else { &LEVEL };
        filter(code.load(Ordering::Relaxed))
    }
}

impl<S: Subscriber> Layer<S> for ToQueue {
    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        *metadata.level() <= ToQueue::level_for(metadata.target())
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let octodb = filter(LEVEL.load(Ordering::Relaxed));
        let raft = filter(RAFT_LEVEL.load(Ordering::Relaxed));
        Some(octodb.max(raft))
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let mut text = Text::default();
        event.record(&mut text);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let record = Record {
            level: *metadata.level(),
            logger: logger_name(metadata.target()),
            message: text.message + &text.fields,
            created,
            thread: std::thread::current()
                .name()
                .unwrap_or("octodb engine")
                .to_string(),
            file: metadata.file().unwrap_or(""),
            line: metadata.line().unwrap_or(0),
        };
        let queue_in = match QUEUE_IN.lock() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some((_, tx)) = queue_in.as_ref() else {
            return;
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(record) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An event's message, then its other fields as ` name=value`, as the CLI prints them.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
