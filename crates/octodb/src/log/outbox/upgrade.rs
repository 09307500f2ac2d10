//! Bringing an outbox written by an older octodb to the current layout, at every start.

use super::{decode_change, insert_part, part_id, PART_BITS};
use crate::changes::ChangeSet;
use crate::error::Result;
use rusqlite::Connection;

/// Bring an outbox written by an older octodb to this layout, keeping every pending
/// transaction. Runs inside the caller's write transaction, at every start.
pub fn upgrade(conn: &Connection) -> Result<()> {
    let base_has_range: bool = conn
        .prepare(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info('_octo_base') WHERE name = 'last_txn')",
        )?
        .query_row([], |r| r.get(0))?;
    if !base_has_range {
        conn.execute_batch(
            "ALTER TABLE _octo_base ADD COLUMN first_txn INTEGER;
             ALTER TABLE _octo_base ADD COLUMN last_txn INTEGER;",
        )?;
    }
    if table_exists(conn, "_octo_pending")? {
        upgrade_row_per_change(conn)?;
    }
    if table_exists(conn, "_octo_outbox_part")? {
        let moved = conn.execute(
            &format!(
                "INSERT INTO _octo_undecided(id, changes)
                 SELECT (txn_id << {PART_BITS}) | part, changes FROM _octo_outbox_part"
            ),
            [],
        )?;
        conn.execute_batch("DROP TABLE _octo_outbox_part; DROP TABLE _octo_outbox;")?;
        tracing::info!(
            parts = moved,
            "outbox moved to one table of transaction parts"
        );
    }
    Ok(())
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .prepare("SELECT EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)")?
        .query_row([name], |r| r.get(0))?)
}

/// The first layout: a row per changed row in `_octo_pending`, transactions in `_octo_outbox`.
fn upgrade_row_per_change(conn: &Connection) -> Result<()> {
    let txns: Vec<i64> = conn
        .prepare("SELECT txn_id FROM _octo_outbox ORDER BY txn_id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for txn in &txns {
        let mut cs = ChangeSet::default();
        let mut stmt =
            conn.prepare("SELECT change FROM _octo_pending WHERE txn_id = ?1 ORDER BY ord")?;
        let mut rows = stmt.query([txn])?;
        while let Some(r) = rows.next()? {
            cs.extend(decode_change(
                r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?,
            )?);
        }
        insert_part(conn, part_id(*txn as u64, 1), &cs)?;
    }
    conn.execute_batch(
        "UPDATE _octo_base SET
           first_txn = (SELECT min(txn_id) FROM _octo_pending p WHERE p.tbl = _octo_base.tbl AND p.rid = _octo_base.rid),
           last_txn = (SELECT max(txn_id) FROM _octo_pending p WHERE p.tbl = _octo_base.tbl AND p.rid = _octo_base.rid);
         DROP TABLE _octo_pending;
         DROP TABLE _octo_outbox;",
    )?;
    tracing::info!(
        transactions = txns.len(),
        "outbox moved to one entry per transaction"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{insert, one_change, rows_of_txn};
    use super::super::{last_txn_id, len, pending_changes, rows_of};
    use super::*;
    use rusqlite::params;

    #[test]
    fn an_outbox_of_the_row_per_change_layout_keeps_every_pending_transaction() {
        let conn = Connection::open_in_memory().unwrap();
        // The layout octodb wrote before one entry per transaction.
        conn.execute_batch(
            "CREATE TABLE _octo_outbox(txn_id INTEGER PRIMARY KEY, created_at REAL);
             CREATE TABLE _octo_pending(
                 txn_id INTEGER NOT NULL, ord INTEGER NOT NULL, tbl TEXT NOT NULL,
                 rid INTEGER NOT NULL, change BLOB NOT NULL, PRIMARY KEY(txn_id, ord));
             CREATE TABLE _octo_base(
                 tbl TEXT NOT NULL, rid INTEGER NOT NULL, row BLOB, PRIMARY KEY(tbl, rid)) WITHOUT ROWID;
             INSERT INTO _octo_outbox VALUES (4, 0), (9, 0);
             INSERT INTO _octo_base VALUES ('t', 5, NULL), ('t', 6, NULL);",
        )
        .unwrap();
        let pending = [(4, 1, 5), (4, 2, 6), (9, 1, 5)];
        for (txn, ord, rid) in pending {
            conn.execute(
                "INSERT INTO _octo_pending VALUES (?1, ?2, 't', ?3, ?4)",
                params![txn, ord, rid, one_change(insert(rid))],
            )
            .unwrap();
        }
        crate::store::init_internal_schema(&conn).unwrap();
        crate::store::write_txn(&conn, upgrade).unwrap();

        let rows = |txn| {
            let cs = pending_changes(&conn, txn).unwrap();
            rows_of(&cs)
                .map(|(t, r)| format!("{t}{r}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(rows(4), ["t5", "t6"]);
        assert_eq!(rows(9), ["t5"]);
        let ranges: Vec<(i64, i64, i64)> = conn
            .prepare("SELECT rid, first_txn, last_txn FROM _octo_base ORDER BY rid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(ranges, [(5, 4, 9), (6, 4, 4)]);
        let old_left: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name IN ('_octo_pending', '_octo_outbox')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_left, 0);
        // Running again (every start does) changes nothing.
        crate::store::write_txn(&conn, upgrade).unwrap();
        assert_eq!(rows(4), ["t5", "t6"]);
    }

    #[test]
    fn an_outbox_of_the_table_per_transaction_layout_keeps_every_pending_transaction() {
        let conn = Connection::open_in_memory().unwrap();
        // The layout octodb wrote before one table of parts: transactions and their parts apart.
        conn.execute_batch(
            "CREATE TABLE _octo_outbox(txn_id INTEGER PRIMARY KEY, created_at REAL);
             CREATE TABLE _octo_outbox_part(
                 txn_id INTEGER NOT NULL, part INTEGER NOT NULL, changes BLOB NOT NULL,
                 PRIMARY KEY(txn_id, part));
             INSERT INTO _octo_outbox VALUES (4, 0), (9, 0);",
        )
        .unwrap();
        for (txn, part, rid) in [(4, 1, 5), (4, 2, 6), (9, 1, 5)] {
            conn.execute(
                "INSERT INTO _octo_outbox_part VALUES (?1, ?2, ?3)",
                params![txn, part, one_change(insert(rid))],
            )
            .unwrap();
        }
        conn.execute_batch("CREATE TABLE _octo_meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID; INSERT INTO _octo_meta VALUES ('last_txn_id', 9)").unwrap();
        crate::store::init_internal_schema(&conn).unwrap();
        crate::store::write_txn(&conn, upgrade).unwrap();

        assert_eq!(rows_of_txn(&conn, 4), [5, 6]);
        assert_eq!(rows_of_txn(&conn, 9), [5]);
        assert_eq!(len(&conn).unwrap(), 2);
        assert_eq!(last_txn_id(&conn).unwrap(), 9);
        for gone in ["_octo_outbox", "_octo_outbox_part"] {
            assert!(!table_exists(&conn, gone).unwrap(), "{gone} dropped");
        }
        crate::store::write_txn(&conn, upgrade).unwrap();
        assert_eq!(len(&conn).unwrap(), 2, "running again changes nothing");
    }
}
