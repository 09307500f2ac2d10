//! What a worker refuses to run, with real nodes: tampered, replayed, expired tasks, signers
//! the backend does not allow, tasks whose inserting node cannot be known.

mod common;

use common::*;
use octodb_tasks::{Policy, SubmitOptions, TaskError};
use std::time::Duration;

#[test]
fn a_task_whose_insert_was_compacted_from_the_log_before_a_worker_read_it_is_refused() {
    // Workers start long after the task came in: the log has been compacted past its insert,
    // so no one can tell which node inserted the row. It is refused with the reason, not left
    // waiting forever; later tasks run.
    let setup = Setup::with_options("log_keep=100");
    let counter = Counter::default();
    let device = setup.device("d.db");
    let early = submitted(&setup, &device, SubmitOptions::default());
    let inserted_by = setup.primary.feed_position();
    setup
        .primary
        .execute_batch("CREATE TABLE filler(id INTEGER PRIMARY KEY, row_owner, v)")
        .unwrap();
    for i in 0..300 {
        setup
            .primary
            .execute("INSERT INTO filler(row_owner, v) VALUES ('*', ?1)", [i])
            .unwrap();
    }
    wait_until("the log is compacted past the task's insert", || {
        let start = setup.primary.sync_status().ok()?.log_start?;
        (start > inserted_by).then_some(())
    });
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(1));
    let (state, reason) = ended_on_primary(&setup, early);
    assert_eq!(
        (state.as_str(), reason.as_deref()),
        ("refused", Some("signer not allowed"))
    );
    let detail = error_message_on_primary(&setup, early);
    assert!(detail.contains("compacted"), "{detail}");
    let later = device
        .start("count", serde_json::json!([2]), SubmitOptions::default())
        .unwrap();
    assert_eq!(
        later.join(Some(DEADLINE), |_| {}).unwrap(),
        serde_json::json!(2)
    );
    assert_eq!((counter.of(early), counter.of(later.id)), (0, 1));
}

#[test]
fn tampering_with_any_signed_field_in_the_stored_row_is_refused() {
    let setup = Setup::new();
    let counter = Counter::default();
    let device = setup.device("d.db");
    let tampering = [
        "task_type = 'fail'",
        "args = '[5]'",
        "priority = priority + 1",
        "not_before_ms = 0",
        "not_after_ms = not_after_ms + 1000",
        "submitter = '0000000000000000000000000000000000000000000000000000000000000000'",
        "nonce = randomblob(16)",
        "created_at_ms = created_at_ms + 1",
        "signature = randomblob(64)",
        "args = x'5b355d'",
    ];
    let mut ids = Vec::new();
    for change in tampering {
        let id = submitted(&setup, &device, SubmitOptions::default());
        setup
            .primary
            .execute(
                &format!("UPDATE octo_tasks SET {change} WHERE id = ?1"),
                [id],
            )
            .unwrap();
        ids.push((id, change));
    }
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(2));
    for (id, change) in ids {
        let (state, reason) = ended_on_primary(&setup, id);
        assert_eq!(state, "refused", "{change}");
        assert_eq!(reason.as_deref(), Some("bad signature"), "{change}");
    }
    assert_eq!(counter.total(), 0, "no tampered task ran");
    // An untouched task still runs.
    let id = submitted(&setup, &device, SubmitOptions::default());
    assert_eq!(ended_on_primary(&setup, id).0, "done");
}

#[test]
fn a_replayed_copy_under_a_new_id_is_refused() {
    let setup = Setup::new();
    let counter = Counter::default();
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(2));
    let device = setup.device("d.db");
    let task = device
        .start("count", serde_json::json!([2]), SubmitOptions::default())
        .unwrap();
    task.join(Some(DEADLINE), |_| {}).unwrap();
    assert_eq!(counter.of(task.id), 1);
    // The same signed record, inserted again by the same node: signature and signer check out.
    device
        .connection()
        .execute(
            "INSERT INTO octo_tasks(task_type, args, priority, not_before_ms, not_after_ms, \
             submitter, nonce, created_at_ms, signature) SELECT task_type, args, priority, \
             not_before_ms, not_after_ms, submitter, nonce, created_at_ms, signature \
             FROM octo_tasks WHERE id = ?1",
            [task.id],
        )
        .unwrap();
    let copy = device.connection().last_insert_rowid();
    assert_ne!(copy, task.id);
    match device.join(copy, Some(DEADLINE), |_| {}) {
        Err(TaskError::Refused { reason }) => assert_eq!(reason, "replayed"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(counter.total(), 1, "the replay did not run");
}

#[test]
fn a_replayed_copy_under_the_same_id_after_a_delete_is_refused() {
    let setup = Setup::new();
    let counter = Counter::default();
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(2));
    let device = setup.device("d.db");
    let task = device
        .start("count", serde_json::json!([2]), SubmitOptions::default())
        .unwrap();
    task.join(Some(DEADLINE), |_| {}).unwrap();
    let signed = "task_type, args, priority, not_before_ms, not_after_ms, submitter, nonce, \
                  created_at_ms, signature";
    let copy: Vec<rusqlite::types::Value> = device
        .connection()
        .query_row(
            &format!("SELECT id, {signed} FROM octo_tasks WHERE id = ?1"),
            [task.id],
            |r| (0..10).map(|i| r.get(i)).collect(),
        )
        .unwrap();
    task.delete().unwrap();
    wait_until("the deleted row gone from the primary", || {
        let n: i64 = setup
            .primary
            .query_row(
                "SELECT count(*) FROM octo_tasks WHERE id = ?1",
                [task.id],
                |r| r.get(0),
            )
            .ok()?;
        (n == 0).then_some(())
    });
    // The same row, id included, inserted again by the node that signed it.
    device
        .connection()
        .execute(
            &format!("INSERT INTO octo_tasks(id, {signed}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            rusqlite::params_from_iter(copy),
        )
        .unwrap();
    match device.join(task.id, Some(DEADLINE), |_| {}) {
        Err(TaskError::Refused { reason }) => assert_eq!(reason, "replayed"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(counter.of(task.id), 1, "the replay did not run again");
}

#[test]
fn a_signer_the_policy_refuses_or_that_did_not_insert_the_row_is_refused() {
    let setup = Setup::new();
    let counter = Counter::default();
    let device = setup.device("d.db");
    let other = setup.device("other.db");
    let only_other = Policy::default().allow_keys("fail", [other.connection().public_key()]);
    // A type limited to another node's key.
    let limited = device
        .submit("fail", "[]", SubmitOptions::default())
        .unwrap();
    on_primary(&setup, limited);
    // The device's signed record, inserted by the primary's app: the inserter is not the signer.
    let original = submitted(&setup, &device, SubmitOptions::default());
    setup
        .primary
        .execute(
            "INSERT INTO octo_tasks(task_type, args, priority, not_before_ms, not_after_ms, \
             submitter, nonce, created_at_ms, signature, row_owner) SELECT task_type, args, \
             priority, not_before_ms, not_after_ms, submitter, nonce, created_at_ms, signature, \
             row_owner FROM octo_tasks WHERE id = ?1",
            [original],
        )
        .unwrap();
    let foreign = setup.primary.last_insert_rowid();
    // Delete the original before workers start, so only the foreign copy shows the nonce.
    setup
        .primary
        .execute("DELETE FROM octo_tasks WHERE id = ?1", [original])
        .unwrap();
    let _workers = setup.workers(registry(&counter), only_other, quick_config(1));
    assert_eq!(
        ended_on_primary(&setup, limited),
        ("refused".into(), Some("signer not allowed".into()))
    );
    assert_eq!(
        ended_on_primary(&setup, foreign),
        ("refused".into(), Some("signer not allowed".into()))
    );
    // The node the policy names may submit it (and its handler then fails, as it does).
    let allowed = other
        .submit("fail", "[]", SubmitOptions::default())
        .unwrap();
    assert_eq!(ended_on_primary(&setup, allowed).0, "failed");
    assert_eq!(counter.total(), 0);
}

#[test]
fn an_expired_task_is_refused() {
    let setup = Setup::new();
    let counter = Counter::default();
    let device = setup.device("d.db");
    let id = submitted(
        &setup,
        &device,
        SubmitOptions {
            expires_in: Duration::from_millis(1),
            ..SubmitOptions::default()
        },
    );
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(1));
    match device.join(id, Some(DEADLINE), |_| {}) {
        Err(TaskError::Refused { reason }) => assert_eq!(reason, "expired"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(counter.total(), 0);
}

#[test]
fn a_task_of_a_device_revoked_before_it_ran_is_refused() {
    let setup = Setup::new();
    let counter = Counter::default();
    let device = setup.device("d.db");
    let id = submitted(&setup, &device, SubmitOptions::default());
    let key = device.connection().public_key();
    setup
        .primary
        .execute(&format!("PRAGMA authorize_user=\"{key}:-1\""), [])
        .unwrap();
    wait_until("the device no longer approved", || {
        let nodes = setup.primary.nodes().ok()?;
        let node = nodes
            .iter()
            .find(|n| n.public_key.eq_ignore_ascii_case(&key))?;
        (node.auth_state != "approved").then_some(())
    });
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(1));
    assert_eq!(
        ended_on_primary(&setup, id),
        (
            "refused".to_string(),
            Some("signer not allowed".to_string())
        )
    );
    let detail = error_message_on_primary(&setup, id);
    assert!(detail.contains("not an approved node"), "{detail}");
    assert_eq!(counter.total(), 0);
}

/// Insert a task whose record is signed by `device`'s own key with the times given: what a
/// modified client could submit.
fn signed_by_hand(device: &octodb_tasks::TaskQueue, not_after_ms: i64, created_at_ms: i64) -> i64 {
    use octodb_tasks::record::{TaskRecord, TASK_DOMAIN};
    let conn = device.connection();
    let record = TaskRecord {
        task_type: "count".into(),
        args: "[1]".into(),
        priority: 0,
        not_before_ms: None,
        not_after_ms,
        submitter: octodb::crypto::PublicKey::from_hex(&conn.public_key()).unwrap(),
        nonce: rand::random(),
        created_at_ms,
    };
    let signature = conn
        .sign_with_node_key(TASK_DOMAIN, &record.signed_bytes())
        .unwrap();
    record.verify(&signature).expect("a good signature");
    conn.execute(
        "INSERT INTO octo_tasks(task_type, args, priority, not_after_ms, submitter, nonce, \
         created_at_ms, signature) VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7)",
        (
            record.task_type.as_str(),
            record.args.as_str(),
            not_after_ms,
            conn.public_key(),
            record.nonce.to_vec(),
            created_at_ms,
            signature,
        ),
    )
    .unwrap();
    conn.last_insert_rowid()
}

#[test]
fn a_well_signed_task_beyond_the_expiry_cap_or_from_the_future_is_refused() {
    let setup = Setup::new();
    let counter = Counter::default();
    let _workers = setup.workers(registry(&counter), Policy::default(), quick_config(1));
    let device = setup.device("d.db");
    let now = octodb_now_ms();
    let day = 24 * 3600 * 1000;
    let beyond_cap = signed_by_hand(&device, now + 8 * day, now);
    let from_the_future = signed_by_hand(&device, now + 2 * day, now + day);
    // A phone whose clock is two hours behind: its task arrives expired, and the reason says
    // which clock to look at (it blamed the queue alone: the suspended-devices walkthrough).
    let hour = 3600 * 1000;
    let clock_behind = signed_by_hand(&device, now - hour, now - 2 * hour);
    for (id, why) in [
        (beyond_cap, "beyond the 7-day cap"),
        (from_the_future, "created in the future"),
        (clock_behind, "clock is behind"),
    ] {
        match device.join(id, Some(DEADLINE), |_| {}) {
            Err(TaskError::Refused { reason }) => assert_eq!(reason, "expired", "{why}"),
            other => panic!("{why}: expected a refusal, got {other:?}"),
        }
        let detail = error_message_on_primary(&setup, id);
        assert!(detail.contains(why), "{detail}");
    }
    // The same hand, within the rules, runs: the refusals were about the times.
    let fine = signed_by_hand(&device, now + day, now);
    assert_eq!(device.join(fine, Some(DEADLINE), |_| {}).unwrap(), "1");
    assert_eq!(counter.total(), 1);
}

#[test]
fn node_signatures_are_separated_by_domain() {
    let setup = Setup::new();
    let key = octodb::crypto::PublicKey::from_hex(&setup.primary.public_key()).unwrap();
    let signature = setup
        .primary
        .sign_with_node_key("octodb-task-v1", b"message")
        .unwrap();
    let signed = |domain: &str, msg: &[u8]| octodb::app_signed_bytes(domain, msg);
    assert!(key
        .verify(&signed("octodb-task-v1", b"message"), &signature)
        .is_ok());
    assert!(key
        .verify(&signed("octodb-task-cancel-v1", b"message"), &signature)
        .is_err());
    assert!(
        key.verify(b"message", &signature).is_err(),
        "never a signature of the bare bytes"
    );
    // Moving bytes between domain and message changes what is signed.
    assert!(key
        .verify(&signed("octodb-task-v", b"1message"), &signature)
        .is_err());
    assert!(setup.primary.sign_with_node_key("", b"x").is_err());
}
