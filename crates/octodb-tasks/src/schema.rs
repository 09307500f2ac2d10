//! The queue's tables, created on a primary (schema flows from the primaries to every node),
//! and the column rules that keep devices from writing what only workers decide.

use octodb::store::column_rules::ColumnRule;
use octodb::Connection;

/// The replicated table of tasks: `row_owner` is the submitter's user, so a task reaches the
/// primaries and its submitter's devices.
pub const TASKS_TABLE: &str = "octo_tasks";

/// Signed by the submitter at insert; a device may never change them afterwards.
pub const SIGNED_COLUMNS: &[&str] = &[
    "task_type",
    "args",
    "priority",
    "not_before_ms",
    "not_after_ms",
    "submitter",
    "nonce",
    "created_at_ms",
    "signature",
];

/// Written by workers on the primaries only.
/// The column a worker sets when, and only when, a task ends.
pub const END_COLUMN: &str = "ended_at_ms";

pub const WORKER_COLUMNS: &[&str] = &[
    "state",
    "reason",
    "attempts",
    "lease_id",
    "lease_until_ms",
    "worker",
    "progress",
    "total",
    "expected_duration",
    "result",
    "error_type",
    "error_message",
    "started_at_ms",
    "ended_at_ms",
    "next_try_ms",
];

pub const CREATE_SQL: &str = "
CREATE TABLE IF NOT EXISTS octo_tasks(
    id INTEGER PRIMARY KEY,
    row_owner,
    -- the signed record (set at insert, never changed)
    task_type TEXT NOT NULL, args TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
    not_before_ms INTEGER, not_after_ms INTEGER NOT NULL, submitter TEXT NOT NULL,
    nonce BLOB NOT NULL, created_at_ms INTEGER NOT NULL, signature BLOB NOT NULL,
    -- the submitter's requests: a signed cancel, and 'I have seen the final state'
    cancel_signature BLOB, final_seen INTEGER,
    -- written by workers only; state NULL = submitted, not examined yet (shown as queued)
    state TEXT, reason TEXT, attempts INTEGER, lease_id TEXT, lease_until_ms INTEGER,
    worker TEXT, progress REAL, total REAL, expected_duration REAL, result TEXT,
    error_type TEXT, error_message TEXT, started_at_ms INTEGER, ended_at_ms INTEGER,
    next_try_ms INTEGER);
CREATE INDEX IF NOT EXISTS octo_tasks_waiting ON octo_tasks(state, priority DESC, id);
-- primaries only: every nonce accepted, kept until its task's expiry (replicated among the
-- primaries, so a replay is caught whichever primary sees it)
CREATE TABLE IF NOT EXISTS private_octo_task_nonces(
    id INTEGER PRIMARY KEY, nonce BLOB NOT NULL UNIQUE, task_id INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL, row_owner);
-- primaries only, local to each: which node inserted each task's row (from the change feed),
-- and when this primary saw the submitter acknowledge the final state
CREATE TABLE IF NOT EXISTS private_octo_task_origins(
    task_id INTEGER PRIMARY KEY, origin_node INTEGER NOT NULL, seq INTEGER NOT NULL,
    acked_ms INTEGER);
CREATE TABLE IF NOT EXISTS private_octo_task_intake(id INTEGER PRIMARY KEY, position INTEGER NOT NULL);
";

/// The queue's tables, all of which [`install`] creates.
const TABLES: &[&str] = &[
    TASKS_TABLE,
    "private_octo_task_nonces",
    "private_octo_task_origins",
    "private_octo_task_intake",
];

/// Create the tables (if missing) and declare the column rules on this primary. On a
/// follower of a cluster, which takes no schema statements, the tables must have come from
/// the leader (where the queue was installed first).
pub fn install(conn: &Connection) -> octodb::Result<()> {
    let present: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN \
         (SELECT value FROM json_each(?1))",
        [serde_json::Value::from(TABLES.to_vec()).to_string()],
        |r| r.get(0),
    )?;
    if present < TABLES.len() as i64 {
        conn.execute_batch(CREATE_SQL)?;
    }
    for column in SIGNED_COLUMNS {
        conn.set_column_rule(TASKS_TABLE, column, ColumnRule::SetAtInsert)?;
    }
    for column in WORKER_COLUMNS {
        // The end time also gates a device's delete: a device deletes only ended tasks.
        let rule = if *column == END_COLUMN {
            ColumnRule::PrimaryOnlyDeletableOnceSet
        } else {
            ColumnRule::PrimaryOnly
        };
        conn.set_column_rule(TASKS_TABLE, column, rule)?;
    }
    Ok(())
}
