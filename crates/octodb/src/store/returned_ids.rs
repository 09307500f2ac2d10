//! The ids an `INSERT ... RETURNING` returns. SQLite computes a statement's RETURNING values
//! as it inserts each row, before the AFTER INSERT trigger that moves a row SQLite numbered
//! into this node's id range (`schema::trigger_sql`): left alone, `RETURNING id` would give
//! the id SQLite first chose, which is another node's next id. The driver corrects the rows
//! the statement returned once it has run: each returned id that SQLite chose is replaced by
//! the id the row ended with, matching the statement's moved rows in the order it inserted
//! them (SQLite returns an INSERT's rows in that order, and may choose the same id for
//! several rows when each is moved away before the next).

use super::schema::TableLayout;
use crate::value::Value;
use std::sync::Arc;

/// A row the running statement inserted whose id the engine moved.
#[derive(Debug, Clone)]
pub struct MovedId {
    pub layout: Arc<TableLayout>,
    /// The id SQLite chose.
    pub from: i64,
    /// The id the row has now.
    pub to: i64,
}

/// Where a result column's values come from, as SQLite says
/// (`sqlite3_column_database_name`, `sqlite3_column_table_name`,
/// `sqlite3_column_origin_name`); an expression has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnOrigin {
    pub database: String,
    pub table: String,
    pub column: String,
}

/// Replace, in `rows` (the statement's results, in order), the ids SQLite chose for the rows
/// in `moved` by the ids they ended with. Only columns whose origin is the moved table's
/// rowid (or its INTEGER PRIMARY KEY) change; an expression computed from the id (`id + 1`)
/// cannot be told apart from any other value and keeps what SQLite computed.
pub fn correct(moved: &[MovedId], origins: &[Option<ColumnOrigin>], rows: &mut [Vec<Value>]) {
    // RETURNING reports the rows of the statement's own table only; rows its triggers
    // inserted into other tables may be among `moved` too.
    let Some((layout, id_columns)) = moved.iter().find_map(|m| {
        let columns: Vec<usize> = origins
            .iter()
            .enumerate()
            .filter(|(_, o)| o.as_ref().is_some_and(|o| is_id_of(o, &m.layout)))
            .map(|(i, _)| i)
            .collect();
        (!columns.is_empty()).then_some((&m.layout, columns))
    }) else {
        return;
    };
    let probe = id_columns[0];
    let mut pending = moved
        .iter()
        .filter(|m| m.layout.name == layout.name)
        .peekable();
    for row in rows.iter_mut() {
        let Some(next) = pending.peek() else { return };
        if row.get(probe) != Some(&Value::Integer(next.from)) {
            // A row the statement gave an id itself, or one an upsert updated.
            continue;
        }
        for &c in &id_columns {
            if let Some(v) = row.get_mut(c) {
                if *v == Value::Integer(next.from) {
                    *v = Value::Integer(next.to);
                }
            }
        }
        pending.next();
    }
}

/// Whether `origin` is `layout`'s rowid: its INTEGER PRIMARY KEY, or the rowid itself (which
/// SQLite names `rowid` whatever alias the statement used, unless a column has that name).
fn is_id_of(origin: &ColumnOrigin, layout: &TableLayout) -> bool {
    if !origin.database.eq_ignore_ascii_case("main")
        || !origin.table.eq_ignore_ascii_case(&layout.name)
    {
        return false;
    }
    match layout.rowid_alias {
        Some(i) => layout.columns[i].eq_ignore_ascii_case(&origin.column),
        None => {
            origin.column.eq_ignore_ascii_case("rowid")
                && !layout
                    .columns
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case("rowid"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(columns: &[&str], rowid_alias: Option<usize>) -> Arc<TableLayout> {
        Arc::new(TableLayout {
            name: "notes".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rowid_alias,
            owner: Some(columns.len() - 1),
            without_rowid: false,
            hook_index: (0..columns.len() as i32).collect(),
            width: columns.len() as i32,
            virtual_columns: false,
            kinds: Vec::new(),
            update_of_triggers: false,
        })
    }

    fn origin(column: &str) -> Option<ColumnOrigin> {
        Some(ColumnOrigin {
            database: "main".into(),
            table: "notes".into(),
            column: column.into(),
        })
    }

    fn moved(layout: &Arc<TableLayout>, pairs: &[(i64, i64)]) -> Vec<MovedId> {
        pairs
            .iter()
            .map(|&(from, to)| MovedId {
                layout: layout.clone(),
                from,
                to,
            })
            .collect()
    }

    use Value::Integer as I;

    #[test]
    fn rows_numbered_alike_by_sqlite_get_their_own_ids_in_order() {
        let t = layout(&["id", "body", "row_owner"], Some(0));
        // SQLite chose 70 for both rows (the first was moved away before the second).
        let moves = moved(&t, &[(70, 1001), (70, 1002)]);
        let origins = vec![origin("id"), origin("body"), None, origin("id")];
        let mut rows = vec![
            vec![I(70), Value::Text("a".into()), I(71), I(70)],
            vec![I(5), Value::Text("given".into()), I(6), I(5)],
            vec![I(70), Value::Text("b".into()), I(71), I(70)],
        ];
        correct(&moves, &origins, &mut rows);
        assert_eq!(
            rows[0],
            vec![I(1001), Value::Text("a".into()), I(71), I(1001)]
        );
        assert_eq!(rows[1][0], I(5), "an id the app gave stays");
        assert_eq!(rows[2][0], I(1002));
        assert_eq!(
            rows[2][2],
            I(71),
            "an expression keeps what SQLite computed"
        );
    }

    #[test]
    fn the_rowid_of_a_table_without_an_alias_is_corrected_but_a_column_named_rowid_is_not() {
        let t = layout(&["body", "row_owner"], None);
        let moves = moved(&t, &[(9, 4009)]);
        let mut rows = vec![vec![I(9)]];
        correct(&moves, &[origin("rowid")], &mut rows);
        assert_eq!(rows[0][0], I(4009));

        let t = layout(&["rowid", "row_owner"], None);
        let moves = moved(&t, &[(9, 4009)]);
        let mut rows = vec![vec![I(9)]];
        correct(&moves, &[origin("rowid")], &mut rows);
        assert_eq!(rows[0][0], I(9));
    }

    #[test]
    fn another_table_or_database_is_left_alone() {
        let t = layout(&["id", "row_owner"], Some(0));
        let moves = moved(&t, &[(9, 4009)]);
        let other = Some(ColumnOrigin {
            database: "temp".into(),
            table: "notes".into(),
            column: "id".into(),
        });
        let mut rows = vec![vec![I(9)]];
        correct(&moves, &[other], &mut rows);
        assert_eq!(rows[0][0], I(9));
    }
}
