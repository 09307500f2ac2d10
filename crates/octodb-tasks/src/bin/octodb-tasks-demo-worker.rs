//! A process holding a primary and running task workers with demonstration handlers, for
//! trying the queue by hand and for the crash tests (kill -9 of a worker mid-task).
//!
//! Usage: `octodb-tasks-demo-worker PRIMARY_URI SIDE_EFFECT_FILE [LEASE_MS]`
//!
//! Handler `steps` (args `[n, step_ms]`): reports progress 1..=n, sleeping `step_ms` between
//! steps, then appends `completed <idempotency key>` to SIDE_EFFECT_FILE: the side effect that
//! must happen once per task. Prints `ready` on standard output once the workers run, and
//! runs until killed.

use octodb_tasks::{Policy, Registry, TaskContext, TypeOptions, WorkerConfig, Workers};
use std::io::Write;
use std::time::Duration;

fn main() -> std::process::ExitCode {
    tracing_subscriber_init();
    let args: Vec<String> = std::env::args().collect();
    let (Some(uri), Some(side_effects)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: octodb-tasks-demo-worker PRIMARY_URI SIDE_EFFECT_FILE [LEASE_MS]");
        return std::process::ExitCode::from(2);
    };
    let lease_ms: u64 = match args.get(3).map(|s| s.parse()) {
        None => 30_000,
        Some(Ok(ms)) => ms,
        Some(Err(_)) => {
            eprintln!("LEASE_MS must be a number of milliseconds");
            return std::process::ExitCode::from(2);
        }
    };
    let side_effects = side_effects.clone();
    let mut registry = Registry::default();
    registry.register(
        "steps",
        TypeOptions::default(),
        move |ctx: &TaskContext, args: serde_json::Value| {
            let n = args[0].as_u64().unwrap_or(10);
            let step = Duration::from_millis(args[1].as_u64().unwrap_or(100));
            for i in 1..=n {
                ctx.report(i as f64, n as f64)?;
                std::thread::sleep(step);
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&side_effects)
                .map_err(|e| octodb_tasks::HandlerError::new("OSError", e.to_string()))?;
            writeln!(file, "completed {}", ctx.idempotency_key())
                .and_then(|()| file.sync_all())
                .map_err(|e| octodb_tasks::HandlerError::new("OSError", e.to_string()))?;
            Ok(serde_json::json!(n))
        },
    );
    let config = WorkerConfig {
        threads: 2,
        lease: Duration::from_millis(lease_ms),
        tick: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    // A primary joining a cluster receives the queue's tables from the leader: until they
    // are there, starting fails; try again for a minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let workers = loop {
        match Workers::start(uri, registry.clone(), Policy::default(), config.clone()) {
            Ok(w) => break w,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::info!("the workers cannot start yet: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                eprintln!("cannot start the workers: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    };
    // A primary joining a cluster is ready once it votes in it (a test then knows how many
    // primaries a majority is).
    if uri.contains("connect=") {
        let voting = match octodb::Connection::open(uri) {
            Ok(conn) => conn
                .wait_for(Duration::from_secs(120), |s| {
                    s.cluster.as_ref().is_some_and(|c| {
                        c.members
                            .iter()
                            .any(|m| m.voter && m.public_key == s.public_key)
                    })
                })
                .is_ok(),
            Err(_) => false,
        };
        if !voting {
            eprintln!("this primary did not become a voter of its cluster within 2 minutes");
            return std::process::ExitCode::FAILURE;
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
        // Never returns: the process runs until killed (parking may wake spuriously).
        let _ = &workers;
    }
}

fn tracing_subscriber_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OCTODB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
