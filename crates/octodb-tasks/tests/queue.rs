//! The signed task queue with real nodes: a primary running workers, devices submitting.
//! Its life cycle: progress, errors, cancel, retries, retention, several workers. What a
//! worker refuses to run is in `refusals.rs`.

mod common;

use common::*;
use octodb_tasks::{Policy, State, SubmitOptions, TaskError};
use std::time::Duration;

#[test]
fn happy_path_progress_never_goes_back_and_ends_at_total() {
    let setup = Setup::new();
    let counter = Counter::default();
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(2));
    let device = setup.device("d.db");
    let task = device
        .start("count", serde_json::json!([20]), SubmitOptions::default())
        .unwrap();
    let mut seen: Vec<f64> = Vec::new();
    let result = task
        .join(Some(DEADLINE), |p| seen.push(p.progress.unwrap_or(0.0)))
        .unwrap();
    assert_eq!(result, serde_json::json!(20));
    assert!(!seen.is_empty(), "progress was reported");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {seen:?}"
    );
    assert_eq!(seen.last().copied(), Some(20.0));
    let info = task.info().unwrap();
    assert_eq!(info.state, State::Done);
    assert_eq!(info.attempts, 1);
    assert_eq!(info.progress.total, Some(20.0));
    assert_eq!(counter.of(task.id), 1);
    // An explicit delete acts at once, on every node (the retention here is 5 minutes).
    task.delete().unwrap();
    assert!(device.info(task.id).unwrap().is_none());
    wait_until("the deleted task leaves the primary", || {
        let n: i64 = setup
            .primary
            .query_row("SELECT count(*) FROM octo_tasks", [], |r| r.get(0))
            .ok()?;
        (n == 0).then_some(())
    });
}

#[test]
fn a_handler_error_keeps_its_type_and_message() {
    let setup = Setup::new();
    let counter = Counter::default();
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(1));
    let device = setup.device("d.db");
    let task = device
        .start("fail", serde_json::json!([]), SubmitOptions::default())
        .unwrap();
    match task.join(Some(DEADLINE), |_| {}) {
        Err(TaskError::Failed { type_name, message }) => {
            assert_eq!(type_name, "ZeroDivisionError");
            assert_eq!(message, "division by zero");
        }
        other => panic!("expected the handler's error, got {other:?}"),
    }
    assert_eq!(task.state().unwrap(), State::Failed);
}

#[test]
fn join_times_out_when_no_worker_runs_the_task() {
    let setup = Setup::new();
    let device = setup.device("d.db");
    let task = device
        .start("count", serde_json::json!([1]), SubmitOptions::default())
        .unwrap();
    let started = std::time::Instant::now();
    match task.join(Some(Duration::from_millis(300)), |_| {}) {
        Err(TaskError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(task.state().unwrap(), State::Queued);
}

#[test]
fn cancel_while_queued_and_while_running() {
    let setup = Setup::new();
    let counter = Counter::default();
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(2));
    let device = setup.device("d.db");
    // Queued: it may not start for an hour.
    let later = device
        .submit(
            "count",
            "[1]",
            SubmitOptions {
                not_before_ms: Some(octodb_now_ms() + 3_600_000),
                ..SubmitOptions::default()
            },
        )
        .unwrap();
    device.cancel(later).unwrap();
    assert!(matches!(
        device.join(later, Some(DEADLINE), |_| {}),
        Err(TaskError::Cancelled)
    ));
    // Running: `spin` reports progress until it sees the cancel.
    let spinning = device
        .submit("spin", "[]", SubmitOptions::default())
        .unwrap();
    wait_until("the spinning task runs on the device's view", || {
        let info = device.info(spinning).ok()??;
        (info.state == State::Running && info.progress.progress.is_some()).then_some(())
    });
    device.cancel(spinning).unwrap();
    assert!(matches!(
        device.join(spinning, Some(DEADLINE), |_| {}),
        Err(TaskError::Cancelled)
    ));
    assert_eq!(
        device.info(spinning).unwrap().unwrap().state,
        State::Cancelled
    );
    assert_eq!(counter.total(), 0);
}

#[test]
fn a_running_task_sees_a_cancel_at_a_report_that_is_not_written() {
    // Progress is written at most once an hour here: only the first report reaches the row.
    // The cancel must still stop the handler at its next report.
    let setup = Setup::new();
    let counter = Counter::default();
    let config = octodb_tasks::WorkerConfig {
        progress_interval: Duration::from_secs(3600),
        ..quick_config(1)
    };
    let _workers = setup.workers(registry(&counter), Policy::default(), config);
    let device = setup.device("d.db");
    let spinning = device
        .submit("spin", "[]", SubmitOptions::default())
        .unwrap();
    wait_until("the spinning task reports its first progress", || {
        let info = device.info(spinning).ok()??;
        (info.state == State::Running && info.progress.progress.is_some()).then_some(())
    });
    device.cancel(spinning).unwrap();
    assert!(matches!(
        device.join(spinning, Some(DEADLINE), |_| {}),
        Err(TaskError::Cancelled)
    ));
}

#[test]
fn a_task_whose_expiry_passes_before_its_retry_fails_saying_so() {
    // It ran once (so it is not "refused": it was accepted), failed, and its retry would
    // start after its expiry.
    let setup = Setup::new();
    let mut registry = octodb_tasks::Registry::default();
    let runs = Counter::default();
    let counted = runs.clone();
    registry.register(
        "flaky",
        octodb_tasks::TypeOptions {
            max_retries: 3,
            backoff: Duration::from_secs(120),
        },
        move |ctx: &octodb_tasks::TaskContext, _args: serde_json::Value| {
            counted.add(ctx.id);
            Err::<serde_json::Value, _>(octodb_tasks::HandlerError::new("IOError", "not yet"))
        },
    );
    let _workers = setup.workers(registry, Policy::default(), quick_config(1));
    let device = setup.device("d.db");
    let id = device
        .submit(
            "flaky",
            "[]",
            SubmitOptions {
                expires_in: Duration::from_secs(10),
                ..SubmitOptions::default()
            },
        )
        .unwrap();
    match device.join(id, Some(DEADLINE), |_| {}) {
        Err(TaskError::Failed { type_name, message }) => {
            assert_eq!(type_name, "TaskExpired");
            assert!(message.contains("attempt 2"), "{message}");
        }
        other => panic!("expected the expiry's failure, got {other:?}"),
    }
    assert_eq!(runs.of(id), 1);
}

#[test]
fn an_attempt_the_database_was_unavailable_to_runs_again_beyond_the_retries() {
    // A cluster's election fails a handler's write with `Error::Unavailable` (nothing
    // applied): that must not fail a task allowing no retry. One that never gets through ends
    // failed with its own error after the attempts lost workers are allowed.
    let setup = Setup::new();
    let mut registry = octodb_tasks::Registry::default();
    let runs = Counter::default();
    let (once, always) = (runs.clone(), runs.clone());
    let unavailable = || octodb::Error::Unavailable("the cluster knows no leader".into());
    let no_retry = octodb_tasks::TypeOptions {
        max_retries: 0,
        backoff: Duration::from_millis(20),
    };
    registry.register(
        "unavailable_once",
        no_retry.clone(),
        move |ctx: &octodb_tasks::TaskContext, _args: serde_json::Value| {
            once.add(ctx.id);
            if ctx.attempt == 1 {
                return Err(unavailable().into());
            }
            Ok(serde_json::json!("done"))
        },
    );
    registry.register(
        "unavailable_always",
        no_retry,
        move |ctx: &octodb_tasks::TaskContext, _args: serde_json::Value| {
            always.add(ctx.id);
            Err::<serde_json::Value, _>(unavailable().into())
        },
    );
    let _workers = setup.workers(registry, Policy::default(), quick_config(1));
    let device = setup.device("d.db");
    let once = device
        .submit("unavailable_once", "[]", SubmitOptions::default())
        .unwrap();
    let always = device
        .submit("unavailable_always", "[]", SubmitOptions::default())
        .unwrap();
    assert_eq!(
        device.join(once, Some(DEADLINE), |_| {}).unwrap(),
        "\"done\""
    );
    assert_eq!(runs.of(once), 2);
    match device.join(always, Some(DEADLINE), |_| {}) {
        Err(TaskError::Failed { type_name, message }) => {
            assert_eq!(type_name, "Unavailable");
            assert!(message.contains("no leader"), "{message}");
        }
        other => panic!("expected the task failed with its error, got {other:?}"),
    }
    assert_eq!(
        runs.of(always),
        3,
        "the first attempt and the two a lost worker has"
    );
}

#[test]
fn an_ended_task_nobody_acknowledges_is_deleted_at_the_retention_cap() {
    let setup = Setup::new();
    let counter = Counter::default();
    let config = octodb_tasks::WorkerConfig {
        retention_cap: Duration::from_secs(1),
        ..quick_config(1)
    };
    let _workers = setup.workers(registry(&counter), Policy::default(), config);
    let device = setup.device("d.db");
    // Submitted by hand on the device's connection and never looked at through the queue.
    let id = submitted(&setup, &device, SubmitOptions::default());
    assert_eq!(ended_on_primary(&setup, id).0, "done");
    wait_until(
        "the unacknowledged task is deleted on the primary after the cap",
        || (rows_of(&setup.primary, id) == 0).then_some(()),
    );
    wait_until("and on the device", || {
        (rows_of(device.connection(), id) == 0).then_some(())
    });
}

#[test]
fn ended_tasks_are_deleted_everywhere_after_the_submitter_saw_them() {
    let setup = Setup::new();
    let counter = Counter::default();
    let config = octodb_tasks::WorkerConfig {
        retention: Duration::ZERO,
        ..quick_config(1)
    };
    let _workers = setup.workers(registry(&counter), Policy::default(), config);
    let device = setup.device("d.db");
    let task = device
        .start("count", serde_json::json!([1]), SubmitOptions::default())
        .unwrap();
    task.join(Some(DEADLINE), |_| {}).unwrap();
    wait_until("the ended task is deleted on the device", || {
        device.info(task.id).unwrap().is_none().then_some(())
    });
    wait_until("and on the primary", || {
        let n: i64 = setup
            .primary
            .query_row("SELECT count(*) FROM octo_tasks", [], |r| r.get(0))
            .ok()?;
        (n == 0).then_some(())
    });
}

#[test]
fn only_an_acknowledgement_of_the_end_starts_the_retention() {
    // A `final_seen` written before the task ended (by a buggy app, say) acknowledges
    // nothing: the ended task stays until its submitter has seen the end.
    let setup = Setup::new();
    let counter = Counter::default();
    let config = octodb_tasks::WorkerConfig {
        retention: Duration::ZERO,
        ..quick_config(1)
    };
    let device = setup.device("d.db");
    let early = submitted(&setup, &device, SubmitOptions::default());
    device
        .connection()
        .execute(
            "UPDATE octo_tasks SET final_seen = 1 WHERE id = ?1",
            [early],
        )
        .unwrap();
    wait_until("the early final_seen reaches the primary", || {
        let seen: Option<i64> = setup
            .primary
            .query_row(
                "SELECT final_seen FROM octo_tasks WHERE id = ?1",
                [early],
                |r| r.get(0),
            )
            .ok()?;
        seen.map(|_| ())
    });
    let _workers = setup.workers(registry(&counter), Policy::default(), config);
    assert_eq!(ended_on_primary(&setup, early).0, "done");
    // Another task, acknowledged by its join: once the housekeeping has deleted it, it has
    // looked at the first one too.
    let later = device
        .start("count", serde_json::json!([1]), SubmitOptions::default())
        .unwrap();
    later.join(Some(DEADLINE), |_| {}).unwrap();
    let on_primary = |id: i64| rows_of(&setup.primary, id);
    wait_until("the acknowledged task is deleted on the primary", || {
        (on_primary(later.id) == 0).then_some(())
    });
    assert_eq!(
        on_primary(early),
        1,
        "deleted before its submitter saw its end"
    );
    // Now the submitter looks (a join acknowledges the end): the retention (zero here) starts.
    device.join(early, Some(DEADLINE), |_| {}).unwrap();
    wait_until("the first task is deleted on the primary", || {
        (on_primary(early) == 0).then_some(())
    });
}

#[test]
fn an_offline_submitter_receives_the_result_later() {
    let setup = Setup::new();
    let counter = Counter::default();
    let id = {
        let device = setup.device("d.db");
        let id = device
            .submit("count", "[3]", SubmitOptions::default())
            .unwrap();
        on_primary(&setup, id);
        id
        // the device's node stops here: it is offline while the task runs
    };
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(1));
    assert_eq!(ended_on_primary(&setup, id).0, "done");
    let device = setup.device("d.db");
    let result = device.join(id, Some(DEADLINE), |_| {}).unwrap();
    assert_eq!(result, "3");
    let info = device.info(id).unwrap().unwrap();
    assert_eq!((info.state, info.attempts), (State::Done, 1));
    assert_eq!(info.progress.progress, Some(3.0));
    assert!(info.ended_at_ms.is_some());
}

#[test]
fn several_workers_run_each_task_exactly_once() {
    let setup = Setup::new();
    let counter = Counter::default();
    let device = setup.device("d.db");
    let mut ids = Vec::new();
    for i in 0..30 {
        let opts = SubmitOptions {
            priority: i % 3,
            ..SubmitOptions::default()
        };
        ids.push(device.submit("count", "[2]", opts).unwrap());
    }
    // A lease long enough that a loaded machine never lets one run out here: this test is
    // about claims, the crash test about leases.
    let config = octodb_tasks::WorkerConfig {
        lease: Duration::from_secs(30),
        ..quick_config(3)
    };
    let _a = setup.workers(registry(&counter), Policy::default(), config.clone());
    let _b = setup.workers(registry(&counter), Policy::default(), config);
    for id in &ids {
        assert_eq!(device.join(*id, Some(DEADLINE), |_| {}).unwrap(), "2");
    }
    for id in &ids {
        assert_eq!(counter.of(*id), 1, "task {id}");
        assert_eq!(device.info(*id).unwrap().unwrap().attempts, 1);
    }
    assert_eq!(counter.total(), 30);
}

#[test]
fn handler_errors_are_retried_with_backoff_up_to_the_types_maximum() {
    let setup = Setup::new();
    let mut registry = octodb_tasks::Registry::default();
    registry.register(
        "flaky",
        octodb_tasks::TypeOptions {
            max_retries: 2,
            backoff: Duration::from_millis(50),
        },
        |ctx: &octodb_tasks::TaskContext, _args: serde_json::Value| {
            if ctx.attempt < 2 {
                return Err(octodb_tasks::HandlerError::new("IOError", "try again"));
            }
            Ok(serde_json::json!(ctx.idempotency_key()))
        },
    );
    let _workers = setup.workers(registry, Policy::default(), quick_config(1));
    let device = setup.device("d.db");
    let id = device
        .submit("flaky", "[]", SubmitOptions::default())
        .unwrap();
    let result = device.join(id, Some(DEADLINE), |_| {}).unwrap();
    assert_eq!(result, format!("\"{id}:2\""));
    assert_eq!(device.info(id).unwrap().unwrap().attempts, 2);
}

#[test]
fn the_engine_refuses_a_devices_writes_to_worker_and_signed_columns_and_deletes_of_unended_tasks() {
    let setup = Setup::new();
    let device = setup.device("d.db");
    let id = submitted(&setup, &device, SubmitOptions::default());
    let conn = device.connection();
    for (sql, column) in [
        (
            "UPDATE octo_tasks SET state = 'done' WHERE id = ?1",
            "state",
        ),
        ("UPDATE octo_tasks SET args = '[99]' WHERE id = ?1", "args"),
    ] {
        conn.execute(sql, [id]).unwrap();
        let status = conn
            .wait_for(DEADLINE, |s| {
                s.last_rejected
                    .as_ref()
                    .is_some_and(|r| format!("{r:?}").contains(&format!("`{column}`")))
            })
            .expect("the primary rejects the device's transaction");
        assert_eq!(status.outbox_len, 0);
    }
    let (state, args): (Option<String>, String) = setup
        .primary
        .query_row(
            "SELECT state, args FROM octo_tasks WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (state, args.as_str()),
        (None, "[2]"),
        "the primary's row is untouched"
    );
    // The device converges back to the primary's row.
    wait_until("the device undoes its rejected writes", || {
        let info = device.info(id).ok()??;
        (info.state == State::Queued && info.args == "[2]").then_some(())
    });
    // A delete of the unfinished task is rejected, and the row comes back on the device.
    conn.execute("DELETE FROM octo_tasks WHERE id = ?1", [id])
        .unwrap();
    conn.wait_for(DEADLINE, |s| {
        s.last_rejected.as_ref().is_some_and(|r| {
            format!("{r:?}").contains("only once the primaries have set its `ended_at_ms`")
        })
    })
    .expect("the delete is rejected");
    wait_until("the device has the undeleted task back", || {
        device.info(id).ok()?.map(|_| ())
    });
    assert_eq!(rows_of(&setup.primary, id), 1);
    // An insert naming a worker column is rejected too.
    conn.execute(
        "INSERT INTO octo_tasks(task_type, args, not_after_ms, submitter, nonce, created_at_ms, \
         signature, state) VALUES ('count', '[]', 0, 'x', x'00', 0, x'00', 'done')",
        [],
    )
    .unwrap();
    conn.wait_for(DEADLINE, |s| {
        s.last_rejected
            .as_ref()
            .is_some_and(|r| format!("{r:?}").contains("inserts the row with it NULL"))
    })
    .expect("the insert is rejected");
}

#[test]
fn a_worker_takes_higher_priority_first() {
    let setup = Setup::new();
    let device = setup.device("d.db");
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut ids = Vec::new();
    for priority in [0, 5, 1, 5, 9] {
        let opts = SubmitOptions {
            priority,
            ..SubmitOptions::default()
        };
        let id = device
            .submit("note", &format!("[{priority}]"), opts)
            .unwrap();
        on_primary(&setup, id);
        ids.push(id);
    }
    let mut registry = octodb_tasks::Registry::default();
    let seen = order.clone();
    registry.register(
        "note",
        octodb_tasks::TypeOptions::default(),
        move |ctx: &octodb_tasks::TaskContext, args: serde_json::Value| {
            seen.lock()
                .unwrap()
                .push((args[0].as_i64().unwrap_or(-1), ctx.id));
            Ok(serde_json::Value::Null)
        },
    );
    let _workers = setup.workers(registry, Policy::default(), quick_config(1));
    for id in &ids {
        device.join(*id, Some(DEADLINE), |_| {}).unwrap();
    }
    let order = order.lock().unwrap().clone();
    let priorities: Vec<i64> = order.iter().map(|(p, _)| *p).collect();
    assert_eq!(priorities, vec![9, 5, 5, 1, 0]);
    // Equal priorities: the older first.
    assert_eq!((order[1].1, order[2].1), (ids[1], ids[3]));
}

#[test]
fn a_chatty_handler_writes_progress_about_ten_times_a_second_and_leases_are_renewed_calmly() {
    let setup = Setup::new();
    let mut registry = octodb_tasks::Registry::default();
    registry.register(
        "chatty",
        octodb_tasks::TypeOptions::default(),
        |ctx: &octodb_tasks::TaskContext, _args: serde_json::Value| {
            // 50,000 reports over about half a second.
            let started = std::time::Instant::now();
            let mut i = 0.0;
            while started.elapsed() < Duration::from_millis(500) {
                i += 1.0;
                ctx.report(i, 1e9)?;
            }
            Ok(serde_json::json!(i))
        },
    );
    let config = octodb_tasks::WorkerConfig {
        progress_interval: Duration::from_millis(100),
        ..quick_config(1)
    };
    let before = setup.primary.feed_position();
    let _workers = setup.workers(registry, Policy::default(), config);
    let device = setup.device("d.db");
    let id = device
        .submit("chatty", "[]", SubmitOptions::default())
        .unwrap();
    let reports: f64 = device
        .join(id, Some(DEADLINE), |_| {})
        .unwrap()
        .parse()
        .unwrap();
    assert!(reports > 1000.0, "the handler reported {reports} times");
    // Every write of the task's row, from the primary's log: insert, claim, progress, lease
    // renewals (every third of the 2 s lease), outcome.
    let mut writes = 0;
    let mut after = before;
    loop {
        let batch = setup.primary.changes_after(after, 1000).unwrap();
        writes += batch
            .changes
            .iter()
            .filter(|c| c.table == "octo_tasks" && c.rowid == id)
            .count();
        if batch.up_to == after {
            break;
        }
        after = batch.up_to;
    }
    // About 5 progress writes in half a second, with room for a slow machine's pauses.
    assert!(
        writes <= 12,
        "{writes} writes of the task's row for {reports} reports"
    );
}
