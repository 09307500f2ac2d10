//! `octodb tasks URI` on a live primary's file: states, progress bars, attempts, reasons.

use octodb_tasks::{
    HandlerError, Policy, Registry, SubmitOptions, TaskContext, TaskQueue, TypeOptions,
    WorkerConfig, Workers,
};
use std::process::Command;
use std::time::Duration;

#[test]
fn lists_tasks_with_state_progress_attempts_and_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.path().join("p.db").display()
    );
    let queue = TaskQueue::open(&uri).unwrap();
    let mut registry = Registry::default();
    registry.register(
        "count",
        TypeOptions::default(),
        |ctx: &TaskContext, _args: serde_json::Value| {
            ctx.report(4.0, 4.0)?;
            Ok(serde_json::json!(4))
        },
    );
    registry.register(
        "fail",
        TypeOptions::default(),
        |_ctx: &TaskContext, _args: serde_json::Value| {
            Err::<serde_json::Value, _>(HandlerError::new("ZeroDivisionError", "division by zero"))
        },
    );
    let config = WorkerConfig {
        threads: 1,
        tick: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    registry.register(
        "forbidden",
        TypeOptions::default(),
        |_ctx: &TaskContext, _args: serde_json::Value| Ok(serde_json::json!("ran")),
    );
    let policy = Policy::default().allow_keys("forbidden", Vec::<String>::new());
    let workers = Workers::start(&uri, registry, policy, config).unwrap();
    let done = queue
        .submit("count", "[]", SubmitOptions::default())
        .unwrap();
    let failed = queue
        .submit("fail", "[]", SubmitOptions::default())
        .unwrap();
    let deadline = Some(Duration::from_secs(60));
    queue.join(done, deadline, |_| {}).unwrap();
    assert!(queue.join(failed, deadline, |_| {}).is_err());
    let refused = queue
        .submit("forbidden", "[]", SubmitOptions::default())
        .unwrap();
    assert!(queue.join(refused, deadline, |_| {}).is_err());
    workers.stop();

    let out = Command::new(env!("CARGO_BIN_EXE_octodb"))
        .args(["tasks", &uri])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line_of = |id: i64| {
        text.lines()
            .find(|l| l.starts_with(&id.to_string()))
            .unwrap_or_else(|| panic!("task {id} listed in:\n{text}"))
            .to_string()
    };
    let line = line_of(done);
    assert!(
        line.contains("done") && line.contains("[####################] 100%"),
        "{line}"
    );
    let line = line_of(failed);
    assert!(
        line.contains("failed") && line.contains("ZeroDivisionError: division by zero"),
        "{line}"
    );
    let line = line_of(refused);
    assert!(
        line.contains("refused") && line.contains("signer not allowed: the policy"),
        "{line}"
    );
    assert!(text.contains("(3 tasks)"), "{text}");

    let out = Command::new(env!("CARGO_BIN_EXE_octodb"))
        .args(["tasks", "--json", &uri])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
    let row_of = |id: i64| {
        rows.as_array()
            .and_then(|all| all.iter().find(|r| r["id"] == id))
            .unwrap_or_else(|| panic!("task {id} in {rows}"))
    };
    assert_eq!(row_of(done)["attempts"], 1);
    assert_eq!(row_of(refused)["attempts"], 0);
    assert_eq!(row_of(refused)["reason"], "signer not allowed");
}
