//! kill -9 of the process running a task's worker, mid-task: after a restart of that process
//! the task finishes, and its side effect happened once.

mod common;

use common::{init_tracing, wait_until, DEADLINE};
use octodb::Connection;
use octodb_tasks::{State, SubmitOptions, TaskQueue};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Start the demo worker process on `uri`; returns once it printed `ready`.
fn start_worker(uri: &str, side_effects: &std::path::Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_octodb-tasks-demo-worker"))
        .args([uri, &side_effects.display().to_string(), "1000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the worker process");
    let stdout = child.stdout.take().expect("worker's stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the worker's first line");
    assert_eq!(line.trim(), "ready", "the worker process started");
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn a_task_whose_worker_process_is_killed_finishes_after_a_restart_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let primary_uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{port}",
        dir.path().join("p.db").display()
    );
    let side_effects = dir.path().join("side-effects.txt");
    let mut worker = start_worker(&primary_uri, &side_effects);

    let device_uri = format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{port}",
        dir.path().join("d.db").display()
    );
    let conn = Connection::open(&device_uri).unwrap();
    conn.wait_until_ready(DEADLINE).unwrap();
    wait_until("the task table reaches the device", || {
        conn.query("SELECT 1 FROM octo_tasks", [])
            .is_ok()
            .then_some(())
    });
    let device = TaskQueue::new(conn);
    let id = device
        .submit("steps", "[30, 50]", SubmitOptions::default())
        .unwrap();
    wait_until("the task runs and reports progress", || {
        let info = device.info(id).ok()??;
        (info.state == State::Running && info.progress.progress >= Some(3.0)).then_some(())
    });
    worker.kill().expect("kill -9 the worker process");
    worker.wait().unwrap();

    let mut worker = start_worker(&primary_uri, &side_effects);
    let result = device.join(id, Some(DEADLINE), |_| {}).unwrap();
    assert_eq!(result, "30");
    let info = device.info(id).unwrap().unwrap();
    assert_eq!(info.attempts, 2, "the second attempt finished it");
    let completed: Vec<String> = std::fs::read_to_string(&side_effects)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(completed, vec![format!("completed {id}:2")]);
    worker.kill().unwrap();
    worker.wait().unwrap();
}
