//! Columns that devices may not write freely, declared per table on a primary.
//!
//! Services built on replicated tables keep state in them that only the backend may decide
//! (the task queue's state, progress, result and lease columns) and facts a device states once
//! and may not change later (a task's signed fields). A primary declares such columns in
//! `_octo_column_rules`; when it applies a device's transaction it rejects, as a whole, any
//! change that breaks them (the device sees the rejection in `PRAGMA sync_status` and its
//! local change is undone). The app's own SQL on a primary is trusted and not checked.
//!
//! The rules live in the primary's file and are not replicated: every primary that accepts
//! device transactions declares them (the services do so when they start there).

use crate::changes::column_bit;
use crate::error::{Error, Result};
use crate::value::Value;
use rusqlite::Connection;

/// The internal table of the rules (created with the other internal tables).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS _octo_column_rules(
    table_name TEXT NOT NULL COLLATE NOCASE, column_name TEXT NOT NULL COLLATE NOCASE,
    rule TEXT NOT NULL, PRIMARY KEY(table_name, column_name)) WITHOUT ROWID;";

/// What devices may do with a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRule {
    /// Only primaries write it: a device's insert leaves it NULL, its updates never touch it.
    PrimaryOnly,
    /// A device gives it a value when it inserts the row, and never changes it afterwards.
    SetAtInsert,
    /// As [`ColumnRule::PrimaryOnly`], and a device may delete the row only once the primaries
    /// have given this column a value (a task's end time: a device deletes only ended tasks).
    PrimaryOnlyDeletableOnceSet,
}

impl ColumnRule {
    fn primary_only(self) -> bool {
        matches!(
            self,
            ColumnRule::PrimaryOnly | ColumnRule::PrimaryOnlyDeletableOnceSet
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            ColumnRule::PrimaryOnly => "primary_only",
            ColumnRule::SetAtInsert => "set_at_insert",
            ColumnRule::PrimaryOnlyDeletableOnceSet => "primary_only_deletable_once_set",
        }
    }

    fn parse(s: &str) -> Option<ColumnRule> {
        match s {
            "primary_only" => Some(ColumnRule::PrimaryOnly),
            "set_at_insert" => Some(ColumnRule::SetAtInsert),
            "primary_only_deletable_once_set" => Some(ColumnRule::PrimaryOnlyDeletableOnceSet),
            _ => None,
        }
    }
}

/// Declare (or replace) the rule of `table.column`.
pub fn set(conn: &Connection, table: &str, column: &str, rule: ColumnRule) -> Result<()> {
    if table.is_empty() || column.is_empty() {
        return Err(Error::rule(
            "a column rule needs a table name and a column name",
        ));
    }
    conn.prepare_cached(
        "INSERT OR REPLACE INTO _octo_column_rules(table_name, column_name, rule) VALUES (?1, ?2, ?3)",
    )?
    .execute(rusqlite::params![table, column, rule.as_str()])?;
    Ok(())
}

/// The rules declared for `table` (column name, rule).
pub fn of_table(conn: &Connection, table: &str) -> Result<Vec<(String, ColumnRule)>> {
    let mut stmt = conn
        .prepare_cached("SELECT column_name, rule FROM _octo_column_rules WHERE table_name = ?1")?;
    let rows = stmt.query_map([table], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (column, rule) = row?;
        match ColumnRule::parse(&rule) {
            Some(rule) => out.push((column, rule)),
            // Written by a newer engine: refusing nothing would be unsafe, so treat it as the
            // strictest rule.
            None => out.push((column, ColumnRule::PrimaryOnly)),
        }
    }
    Ok(out)
}

/// The column whose value a device's delete of a row waits for, if `rules` name one.
pub fn delete_gate(rules: &[(String, ColumnRule)]) -> Option<&str> {
    rules
        .iter()
        .find(|(_, rule)| *rule == ColumnRule::PrimaryOnlyDeletableOnceSet)
        .map(|(column, _)| column.as_str())
}

/// Why a device's delete of row `rowid` breaks the rule of `gate`, whose value in the row is
/// `value`, if it does.
pub fn delete_refusal(table: &str, gate: &str, rowid: i64, value: &Value) -> Option<String> {
    (*value == Value::Null).then(|| {
        format!(
            "row {rowid} of `{table}` may be deleted by a device only once the primaries have set its `{gate}` (a task only once it has ended)"
        )
    })
}

/// Why a device's insert of `values` (in the order of `columns`) breaks `rules`, if it does.
pub fn insert_refusal(
    table: &str,
    rules: &[(String, ColumnRule)],
    columns: &[String],
    values: &[Value],
) -> Option<String> {
    rules.iter().find_map(|(column, rule)| {
        let at = columns.iter().position(|c| c.eq_ignore_ascii_case(column))?;
        let given = values.get(at).unwrap_or(&Value::Null);
        (rule.primary_only() && *given != Value::Null).then(|| {
            format!(
                "column `{column}` of `{table}` is written by the primaries only; a device inserts the row with it NULL"
            )
        })
    })
}

/// Why a device's update that changed the columns of `changed` (bit i = `columns[i]`) breaks
/// `rules`, if it does.
pub fn update_refusal(
    table: &str,
    rules: &[(String, ColumnRule)],
    columns: &[String],
    changed: u64,
) -> Option<String> {
    rules.iter().find_map(|(column, rule)| {
        let at = columns.iter().position(|c| c.eq_ignore_ascii_case(column))?;
        (changed & column_bit(at) != 0).then(|| match rule {
            ColumnRule::PrimaryOnly | ColumnRule::PrimaryOnlyDeletableOnceSet => format!(
                "column `{column}` of `{table}` is written by the primaries only; a device may not update it"
            ),
            ColumnRule::SetAtInsert => format!(
                "column `{column}` of `{table}` is set when the row is inserted and never changes; insert a new row instead"
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<(String, ColumnRule)> {
        vec![
            ("state".into(), ColumnRule::PrimaryOnly),
            ("args".into(), ColumnRule::SetAtInsert),
        ]
    }

    #[test]
    fn a_device_inserts_primary_only_columns_as_null_and_set_once_columns_freely() {
        let cols: Vec<String> = ["id", "args", "state"].map(String::from).to_vec();
        let ok = [Value::Integer(1), Value::Text("[]".into()), Value::Null];
        assert_eq!(insert_refusal("t", &rules(), &cols, &ok), None);
        let bad = [
            Value::Integer(1),
            Value::Text("[]".into()),
            Value::Text("done".into()),
        ];
        let reason = insert_refusal("t", &rules(), &cols, &bad).expect("refused");
        assert!(reason.contains("`state`"), "{reason}");
    }

    #[test]
    fn a_delete_waits_for_its_gate_column() {
        let rules = vec![
            ("state".into(), ColumnRule::PrimaryOnly),
            (
                "ended_at_ms".into(),
                ColumnRule::PrimaryOnlyDeletableOnceSet,
            ),
        ];
        let gate = delete_gate(&rules).expect("a gate");
        assert_eq!(gate, "ended_at_ms");
        assert!(delete_refusal("t", gate, 7, &Value::Null).is_some());
        assert_eq!(delete_refusal("t", gate, 7, &Value::Integer(1)), None);
        assert_eq!(delete_gate(&self::tests::rules()), None);
        // It is a primary-only column too.
        let cols: Vec<String> = ["id", "ended_at_ms"].map(String::from).to_vec();
        assert!(
            insert_refusal("t", &rules, &cols, &[Value::Integer(1), Value::Integer(5)]).is_some()
        );
        assert!(update_refusal("t", &rules, &cols, column_bit(1)).is_some());
        assert_eq!(
            ColumnRule::parse(ColumnRule::PrimaryOnlyDeletableOnceSet.as_str()),
            Some(ColumnRule::PrimaryOnlyDeletableOnceSet)
        );
    }

    #[test]
    fn a_device_updates_neither_kind_of_column() {
        let cols: Vec<String> = ["id", "args", "state", "note"].map(String::from).to_vec();
        assert_eq!(update_refusal("t", &rules(), &cols, column_bit(3)), None);
        assert!(update_refusal("t", &rules(), &cols, column_bit(2)).is_some());
        assert!(update_refusal("t", &rules(), &cols, column_bit(1)).is_some());
    }
}
