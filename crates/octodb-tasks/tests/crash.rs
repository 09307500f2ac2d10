//! kill -9 of the process running a task's worker, mid-task: after a restart of that process
//! the task finishes, and its side effect happened once.

mod common;

use common::{init_tracing, wait_until, DEADLINE};
use octodb::Connection;
use octodb_tasks::{State, SubmitOptions, TaskQueue};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A worker process, killed when the test ends (also when it fails).
struct Worker(Child);

impl Worker {
    fn kill(&mut self) {
        // Already gone is fine: the point is that it is.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start the demo worker process on `uri`; returns once it printed `ready`.
fn start_worker(uri: &str, side_effects: &std::path::Path) -> Worker {
    start_worker_with_lease(uri, side_effects, "1000")
}

fn start_worker_with_lease(uri: &str, side_effects: &std::path::Path, lease_ms: &str) -> Worker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_octodb-tasks-demo-worker"))
        .args([uri, &side_effects.display().to_string(), lease_ms])
        .stdout(Stdio::piped())
        // The killed leader's peers log their elections loudly: shown only when asked for.
        .stderr(if std::env::var_os("OCTODB_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start the worker process");
    let stdout = child.stdout.take().expect("worker's stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the worker's first line");
    assert_eq!(line.trim(), "ready", "the worker process started");
    Worker(child)
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
    worker.kill();

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
    worker.kill();
}

#[test]
fn a_task_whose_leader_is_killed_finishes_on_another_primary_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let side_effects = dir.path().join("side-effects.txt");
    let ports = [free_port(), free_port(), free_port()];
    let uri = |i: usize| {
        let own = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:{}",
            dir.path().join(format!("p{i}.db")).display(),
            ports[i]
        );
        match i {
            0 => own,
            _ => format!("{own}&connect=tcp://127.0.0.1:{}", ports[0]),
        }
    };
    let mut leader = start_worker_with_lease(&uri(0), &side_effects, "2000");
    // One after the other: a cluster takes one membership change at a time.
    let second = start_worker_with_lease(&uri(1), &side_effects, "2000");
    let third = start_worker_with_lease(&uri(2), &side_effects, "2000");
    let others = vec![second, third];
    let device_uri = format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{}",
        dir.path().join("d.db").display(),
        ports[0]
    );
    let conn = Connection::open(&device_uri).unwrap();
    conn.wait_until_ready(DEADLINE).unwrap();
    conn.wait_for(DEADLINE, |s| s.primaries.len() == 3)
        .expect("the device hears of the cluster's three primaries");
    wait_until("the task table reaches the device", || {
        conn.query("SELECT 1 FROM octo_tasks", [])
            .is_ok()
            .then_some(())
    });
    let device = TaskQueue::new(conn);
    let id = device
        .submit("steps", "[40, 50]", SubmitOptions::default())
        .unwrap();
    wait_until("the task runs on the leader and reports progress", || {
        let info = device.info(id).ok()??;
        (info.state == State::Running && info.progress.progress >= Some(3.0)).then_some(())
    });
    leader.kill();

    let result = device.join(id, Some(DEADLINE * 2), |_| {}).unwrap();
    assert_eq!(result, "40");
    let info = device.info(id).unwrap().unwrap();
    assert_eq!(
        info.attempts, 2,
        "another primary's worker ran the second attempt"
    );
    let completed: Vec<String> = std::fs::read_to_string(&side_effects)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(completed, vec![format!("completed {id}:2")]);
    drop(others);
}
