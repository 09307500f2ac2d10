//! The cluster's authorization state through its Raft log. A primary's writer transaction that
//! changes nodes or users (a sign-up, a decision, a device's last sighting) proposes the rows
//! it touched, whole as they now are, in that same transaction (written through, as the
//! devices' batches are), so every primary holds the same nodes and users and a decision is
//! taken once, by the leader. A follower's attempt is refused: its cluster does not take it.

use super::Shared;
use crate::cluster::{Batch, Proposed};
use crate::error::{Error, Result};
use crate::store::{self, exec};
use crate::value::Value;
use rusqlite::Connection;

/// Whole rows of a table, each its columns in the table's order.
type Rows = Vec<Vec<Value>>;

/// A row of `_octo_nodes` a transaction may change.
pub(crate) enum Touched {
    Key(String),
    Node(u32),
}

/// Runs `f` in a write transaction on `conn`; on a primary in a cluster, the nodes `touched`
/// (and their users) go to the cluster with it. Without a cluster: a plain transaction.
pub(crate) fn write_txn<T>(
    conn: &Connection,
    shared: &Shared,
    touched: &[Touched],
    f: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let Some(cluster) = shared.cluster.get() else {
        return store::write_txn(conn, f);
    };
    exec(conn, "BEGIN IMMEDIATE")?;
    let done = f(conn).and_then(|value| Ok((value, images(conn, touched)?)));
    let (value, (nodes, users)) = match done {
        Ok(done) => done,
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            return Err(e);
        }
    };
    if nodes.is_empty() && users.is_empty() {
        exec(conn, "COMMIT")?;
        return Ok(value);
    }
    match cluster.propose_in_txn(conn, Batch::Rows { nodes, users }) {
        Proposed::InTxn(proposal) => match exec(conn, "COMMIT") {
            Ok(()) => {
                // Applied here already: nothing waits for the cluster's answer.
                drop(proposal.committed());
                Ok(value)
            }
            Err(e) => {
                let _ = exec(conn, "ROLLBACK");
                proposal.not_committed().after_rollback();
                Err(e.into())
            }
        },
        Proposed::GaveUp(gave_up) => {
            let _ = exec(conn, "ROLLBACK");
            let why = gave_up.why().to_string();
            gave_up.after_rollback();
            Err(Error::rule(format!(
                "the primaries' cluster did not take this change of its nodes or users ({why}): \
                 only its leader changes them (PRAGMA sync_status names it); on the leader, try \
                 again",
            )))
        }
    }
}

/// The rows of the nodes `touched`, and of their users, as they are in the transaction.
fn images(c: &Connection, touched: &[Touched]) -> Result<(Rows, Rows)> {
    let mut nodes: Rows = Vec::new();
    for t in touched {
        let (sql, key): (&str, Value) = match t {
            Touched::Key(k) => (
                "SELECT * FROM _octo_nodes WHERE pubkey = ?1",
                Value::Text(k.clone()),
            ),
            Touched::Node(id) => (
                "SELECT * FROM _octo_nodes WHERE node_id = ?1",
                Value::Integer(i64::from(*id)),
            ),
        };
        nodes.extend(rows(c, sql, &key)?);
    }
    nodes.dedup();
    let mut users: Rows = Vec::new();
    // `_octo_nodes.user_id` is its fourth column.
    for user in nodes.iter().filter_map(|n| n.get(3)) {
        if matches!(user, Value::Integer(_)) {
            users.extend(rows(
                c,
                "SELECT * FROM _octo_users WHERE user_id = ?1",
                user,
            )?);
        }
    }
    users.dedup();
    Ok((nodes, users))
}

fn rows(c: &Connection, sql: &str, key: &Value) -> Result<Rows> {
    let mut stmt = c.prepare_cached(sql)?;
    let width = stmt.column_count();
    let found = stmt
        .query_map([key], |r| {
            (0..width).map(|i| r.get::<_, Value>(i)).collect()
        })?
        .collect::<rusqlite::Result<Rows>>()?;
    Ok(found)
}
