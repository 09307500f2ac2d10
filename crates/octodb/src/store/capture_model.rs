//! The capture judged against SQLite itself: random statements (savepoints, `ROLLBACK TO`,
//! statements failing halfway, REPLACE, ids SQLite picks and moves) in one transaction; the
//! captured changes, replayed over the table as the transaction found it, must give the table
//! as the transaction left it, and each change's `before` must be the row as replayed so far.

use super::{Capture, Captured, Identity};
use crate::uri::Role;
use crate::value::Value;
use proptest::prelude::*;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;

type Table = BTreeMap<i64, Vec<Value>>;

fn table(conn: &Connection) -> Table {
    let mut stmt = conn
        .prepare("SELECT id, v, row_owner FROM t ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                (0..3)
                    .map(|i| r.get_ref(i).map(Value::from_ref))
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            ))
        })
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

/// One statement of the generated script, from four random bytes.
fn statement(kind: u8, a: u8, b: u8, c: u8, savepoints: &mut Vec<String>) -> Option<String> {
    let v = |x: u8| format!("'{}'", ["a", "ax", "b", "bx", "c", "cx"][x as usize % 6]);
    let owner = |x: u8| ["'*'", "7", "8", "NULL"][x as usize % 4];
    let id = |x: u8| i64::from(x % 12) + 1;
    Some(match kind % 11 {
        0 => format!(
            "INSERT INTO t(v, row_owner) VALUES ({}, {})",
            v(a),
            owner(b)
        ),
        1 => format!(
            "INSERT INTO t(id, v, row_owner) VALUES ({}, {}, {})",
            id(a),
            v(b),
            owner(c)
        ),
        2 => format!(
            "REPLACE INTO t(id, v, row_owner) VALUES ({}, {}, {})",
            id(a),
            v(b),
            owner(c)
        ),
        3 => format!("UPDATE t SET v = {} WHERE id = {}", v(a), id(b)),
        // Several rows; may fail halfway on the UNIQUE v.
        4 => format!(
            "UPDATE t SET v = v || 'x' WHERE id BETWEEN {} AND {}",
            id(a),
            id(a) + i64::from(b % 4)
        ),
        5 => format!(
            "DELETE FROM t WHERE id BETWEEN {} AND {}",
            id(a),
            id(a) + i64::from(b % 3)
        ),
        6 => format!(
            "INSERT OR FAIL INTO t(id, v, row_owner) VALUES ({}, {}, '*'), ({}, {}, '*')",
            id(a),
            v(b),
            id(c),
            v(a.wrapping_add(c))
        ),
        7 => {
            let name = format!("s{}", savepoints.len());
            savepoints.push(name.clone());
            format!("SAVEPOINT {name}")
        }
        8 => {
            let name = savepoints
                .get(a as usize % savepoints.len().max(1))?
                .clone();
            let at = savepoints.iter().position(|s| *s == name)?;
            savepoints.truncate(at + 1);
            format!("ROLLBACK TO {name}")
        }
        9 => {
            let name = savepoints.pop()?;
            format!("RELEASE {name}")
        }
        _ => format!("UPDATE t SET row_owner = '*' WHERE id = {}", id(a)),
    })
}

fn run(script: &[(u8, u8, u8, u8)]) {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE, row_owner);
         INSERT INTO t VALUES (1, 'a', '*'), (2, 'b', 7), (3, 'c', NULL);",
    )
    .unwrap();
    // A primary with node id 3: ids SQLite picks move into its range.
    let capture = Capture::new(Arc::new(Identity::new(Some(Role::Primary), 3, 0, 1, 1)));
    capture.register_functions(&conn).unwrap();
    capture.install(&conn, Role::Primary).unwrap();
    let start = table(&conn);
    conn.execute_batch("BEGIN").unwrap();
    let mut savepoints = Vec::new();
    for &(kind, a, b, c) in script {
        let Some(sql) = statement(kind, a, b, c, &mut savepoints) else {
            continue;
        };
        // What the connection's driver does around each statement.
        capture.begin_statement();
        if conn.execute_batch(&sql).is_err() {
            capture.statement_failed();
        } else if sql.starts_with("ROLLBACK TO") {
            capture.rolled_back_to();
        }
        assert!(!conn.is_autocommit(), "{sql} ended the transaction");
    }
    let end = table(&conn);
    let mut replayed = start;
    for change in capture.take(&conn).unwrap() {
        let Captured::Row(rc) = change else {
            panic!("a schema statement captured")
        };
        assert_eq!(
            replayed.get(&rc.rowid),
            rc.before.as_ref(),
            "the change of row {} starts from the row as it stood",
            rc.rowid
        );
        match rc.after {
            Some(row) => replayed.insert(rc.rowid, row),
            None => replayed.remove(&rc.rowid),
        };
    }
    assert_eq!(replayed, end, "script {script:?}");
    conn.execute_batch("COMMIT").unwrap();
}

proptest! {
    #![proptest_config(crate::test_support::fuzz_config())]
    #[test]
    fn captured_changes_replayed_give_the_table_the_transaction_left(
        script in proptest::collection::vec(any::<(u8, u8, u8, u8)>(), 1..40)
    ) {
        run(&script);
    }
}
