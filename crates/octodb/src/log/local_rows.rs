//! A device's local rows (row_owner NULL) in a table the primaries drop: they are the app's
//! own, and the primaries never had them. A schema statement of the primaries that drops such
//! a table (a `DROP TABLE`, and SQLite's table rebuild, which Django's and Alembic's
//! migrations run: a new table made, the rows copied, the old one dropped, the new one renamed
//! to its name) keeps them aside first; at the end of the batch they go into the table that
//! holds the name then, by column name. A table dropped for good takes them with it, as its
//! DROP would have anywhere, and the log says how many. (They disappeared at every rebuild,
//! with nothing said: the ORM walkthrough.)

use crate::error::{Error, Result};
use crate::store::schema::{self, ident};
use rusqlite::Connection;
use std::collections::HashSet;

/// Local rows set aside during a batch, each table's in a TEMP table of its own.
#[derive(Debug, Default)]
pub struct KeptLocal(Vec<Kept>);

#[derive(Debug)]
struct Kept {
    table: String,
    /// The TEMP table holding the rows, their ids in `_octo_rid`.
    aside: String,
    rows: i64,
}

/// Before the primaries' schema statement `sql` runs: when it drops replicated tables holding
/// local rows, those rows go aside into `kept`. Which tables it drops is found by running it
/// in a savepoint rolled back at once (no statement text is parsed: names may be quoted,
/// qualified or written in any case).
pub fn set_aside_before_drop(
    conn: &Connection,
    sql: &str,
    kept: &mut KeptLocal,
    run: impl Fn() -> rusqlite::Result<()>,
) -> Result<()> {
    let mut words = crate::api::sql_text::words(sql);
    if words.next().as_deref() != Some("DROP") || words.next().as_deref() != Some("TABLE") {
        return Ok(());
    }
    let before: Vec<schema::TableLayout> = schema::user_tables(conn)?
        .into_iter()
        .filter(|t| t.is_replicated())
        .collect();
    conn.execute_batch("SAVEPOINT _octo_find_dropped")?;
    let ran = run();
    let after = schema::user_tables(conn);
    conn.execute_batch("ROLLBACK TO _octo_find_dropped; RELEASE _octo_find_dropped")?;
    // A statement that fails here fails again when it runs for real, with its own error.
    let (Ok(()), Ok(after)) = (ran, after) else {
        return Ok(());
    };
    let after: HashSet<String> = after.into_iter().map(|t| t.name).collect();
    for t in before.iter().filter(|t| !after.contains(&t.name)) {
        let Some(owner) = t.owner else { continue };
        let aside = format!("_octo_local_{}", kept.0.len());
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.{aside};
             CREATE TEMP TABLE {aside} AS SELECT rowid AS _octo_rid, * FROM main.{table}
                 WHERE {owner} IS NULL;",
            table = ident(&t.name),
            owner = ident(&t.columns[owner]),
        ))?;
        let rows: i64 = conn.query_row(&format!("SELECT count(*) FROM temp.{aside}"), [], |r| {
            r.get(0)
        })?;
        if rows == 0 {
            conn.execute_batch(&format!("DROP TABLE temp.{aside}"))?;
            continue;
        }
        kept.0.push(Kept {
            table: t.name.clone(),
            aside,
            rows,
        });
    }
    Ok(())
}

/// At the end of the batch: the rows kept aside go into the table holding their table's name
/// now (made again by a rebuild), in the columns it still has by name; a table dropped for
/// good takes them with it. Rows that do not fit the new table (a new NOT NULL column without
/// a default, a unique value the primaries' rows hold) stop the sync, saying so: the batch is
/// rolled back, and the rows stay where they were for the app to move or change.
pub fn put_back(conn: &Connection, kept: KeptLocal) -> Result<()> {
    for k in kept.0 {
        match schema::table_layout(conn, &k.table)? {
            Some(t) => {
                let aside_columns: Vec<String> = conn
                    .prepare_cached("SELECT name FROM pragma_table_info(?1, 'temp')")?
                    .query_map([&k.aside], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let (kept_columns, left_out): (Vec<&String>, Vec<&String>) = aside_columns
                    .iter()
                    .filter(|c| *c != "_octo_rid")
                    .partition(|c| t.columns.iter().any(|tc| tc.eq_ignore_ascii_case(c)));
                let columns: Vec<String> = kept_columns.iter().map(|c| ident(c)).collect();
                let sql = format!(
                    "INSERT INTO main.{table}(rowid, {cols}) SELECT _octo_rid, {cols} \
                     FROM temp.{aside}",
                    table = ident(&t.name),
                    cols = columns.join(", "),
                    aside = k.aside,
                );
                conn.execute_batch(&sql).map_err(|e| {
                    Error::rule(format!(
                        "the primaries made `{}` again (a table rebuild: a migration), and this \
                         device's {} local rows of it (row_owner NULL) do not fit its new shape \
                         ({e}): move them to another table or delete them, and sync resumes",
                        k.table, k.rows
                    ))
                })?;
                if !left_out.is_empty() {
                    tracing::info!(
                        table = %k.table,
                        rows = k.rows,
                        columns = ?left_out,
                        "the primaries made this table again: this device's local rows of it \
                         are kept, without the values of columns it no longer has"
                    );
                }
            }
            None => tracing::warn!(
                table = %k.table,
                rows = k.rows,
                "the primaries dropped this table: this device's local rows of it (row_owner \
                 NULL) go with it, as its DROP takes them anywhere"
            ),
        }
        conn.execute_batch(&format!("DROP TABLE temp.{}", k.aside))?;
    }
    Ok(())
}
