//! Helpers of the task queue's tests: real files in a temp dir, real loopback sockets, waits
//! on conditions with deadlines (never fixed sleeps).
#![allow(dead_code)]

use octodb::Connection;
use octodb_tasks::{
    HandlerError, Policy, Registry, TaskContext, TaskQueue, TypeOptions, WorkerConfig, Workers,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OCTODB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A primary (with the queue's tables) and the directory of the test's files.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub primary_uri: String,
    pub primary: Connection,
}

impl Setup {
    pub fn new() -> Setup {
        Setup::with_options("")
    }

    /// A primary whose URI also has `options` (`&`-separated, e.g. `log_keep=100`).
    pub fn with_options(options: &str) -> Setup {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let primary_uri = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:0{}{options}",
            dir.path().join("p.db").display(),
            if options.is_empty() { "" } else { "&" },
        );
        let primary = Connection::open(&primary_uri).expect("open primary");
        octodb_tasks::schema::install(&primary).expect("install the queue");
        Setup {
            dir,
            primary_uri,
            primary,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn device_uri(&self, name: &str) -> String {
        let addr = self.primary.bound_addrs()[0];
        format!(
            "file:{}?node=secondary&connect=tcp://{addr}",
            self.path(name).display()
        )
    }

    /// A device connected to the primary, ready, with the queue's table received.
    pub fn device(&self, name: &str) -> TaskQueue {
        let conn = Connection::open(&self.device_uri(name)).expect("open device");
        conn.wait_until_ready(DEADLINE).expect("device ready");
        wait_until("the task table reaches the device", || {
            conn.query("SELECT 1 FROM octo_tasks LIMIT 1", [])
                .is_ok()
                .then_some(())
        });
        TaskQueue::new(conn)
    }

    pub fn workers(&self, registry: Registry, policy: Policy, config: WorkerConfig) -> Workers {
        Workers::start(&self.primary_uri, registry, policy, config).expect("start workers")
    }
}

/// Workers fit for tests: short lease, quick ticks.
pub fn quick_config(threads: usize) -> WorkerConfig {
    WorkerConfig {
        threads,
        lease: Duration::from_secs(2),
        tick: Duration::from_millis(100),
        progress_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    }
}

/// Completed runs per task id: the handlers' side effect.
#[derive(Clone, Default)]
pub struct Counter(pub Arc<Mutex<HashMap<i64, u32>>>);

impl Counter {
    pub fn add(&self, id: i64) {
        *self.0.lock().unwrap().entry(id).or_default() += 1;
    }
    pub fn of(&self, id: i64) -> u32 {
        self.0.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
}

/// `count` (args [steps]): reports progress 1..=steps of steps, then counts one completed run
/// and returns steps. `fail` raises ZeroDivisionError. `spin` reports progress until cancelled.
pub fn registry(counter: &Counter) -> Registry {
    let mut r = Registry::default();
    let c = counter.clone();
    r.register(
        "count",
        TypeOptions::default(),
        move |ctx: &TaskContext, args: serde_json::Value| {
            let steps = args[0].as_i64().unwrap_or(3);
            ctx.set_expected_duration(0.1);
            for i in 1..=steps {
                ctx.report(i as f64, steps as f64)?;
                std::thread::sleep(Duration::from_millis(5));
            }
            c.add(ctx.id);
            Ok(serde_json::json!(steps))
        },
    );
    r.register(
        "fail",
        TypeOptions::default(),
        |_ctx: &TaskContext, _args: serde_json::Value| {
            Err::<serde_json::Value, _>(HandlerError::new("ZeroDivisionError", "division by zero"))
        },
    );
    r.register(
        "spin",
        TypeOptions::default(),
        |ctx: &TaskContext, _args: serde_json::Value| {
            let mut i = 0.0;
            loop {
                i += 1.0;
                ctx.report(i, 1e9)?;
                std::thread::sleep(Duration::from_millis(10));
            }
        },
    );
    r
}

pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Wait until the primary sees task `id` (the device's insert arrived).
pub fn on_primary(setup: &Setup, id: i64) {
    wait_until(&format!("task {id} reaches the primary"), || {
        (rows_of(&setup.primary, id) == 1).then_some(())
    });
}

/// The state and reason of task `id` on the primary, once it has ended.
pub fn ended_on_primary(setup: &Setup, id: i64) -> (String, Option<String>) {
    wait_until(&format!("task {id} ends on the primary"), || {
        let row = setup
            .primary
            .query_row(
                "SELECT state, reason FROM octo_tasks WHERE id = ?1",
                [id],
                |r| Ok((r.get::<Option<String>>(0)?, r.get::<Option<String>>(1)?)),
            )
            .ok()?;
        match row.0.as_deref() {
            Some("done" | "failed" | "cancelled" | "refused") => Some((row.0.unwrap(), row.1)),
            _ => None,
        }
    })
}

/// The detail a refused or failed task `id` carries on the primary.
pub fn error_message_on_primary(setup: &Setup, id: i64) -> String {
    setup
        .primary
        .query_row(
            "SELECT error_message FROM octo_tasks WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("the task's error message")
}

/// How many rows task `id` has on `conn` (0 once deleted, else 1).
pub fn rows_of(conn: &Connection, id: i64) -> i64 {
    conn.query_row("SELECT count(*) FROM octo_tasks WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .expect("counting the task's rows")
}

/// Submit one `count` task from `device` and wait until the primary has its row.
pub fn submitted(
    setup: &Setup,
    device: &octodb_tasks::TaskQueue,
    opts: octodb_tasks::SubmitOptions,
) -> i64 {
    let id = device.submit("count", "[2]", opts).unwrap();
    on_primary(setup, id);
    id
}

/// The time now as task records give it (Unix ms).
pub fn octodb_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
