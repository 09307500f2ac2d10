//! Query results.

use crate::error::Result;
use crate::value::Value;
use rusqlite::types::FromSql;

/// All rows of a query, with the column names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// Rows as JSON objects (column name → value). A JSON object keeps one value per name, in
    /// name order: see [`Rows::to_json_text`] for the columns as the query gave them.
    pub fn to_json(&self) -> serde_json::Value {
        self.iter().map(|r| r.to_json()).collect::<Vec<_>>().into()
    }

    /// Rows as the text of a JSON array of objects, each with the columns in the query's order
    /// and every column kept, two of the same name too (`SELECT a.id, b.id`), as sqlite3's
    /// `.mode json` prints them: what the CLI prints with `--json`.
    pub fn to_json_text(&self) -> String {
        let mut out = String::from("[");
        for (i, row) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('{');
            for (j, (column, value)) in row.columns.iter().zip(row.values).enumerate() {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(column.as_str()).to_string());
                out.push(':');
                out.push_str(&value.to_json().to_string());
            }
            out.push('}');
        }
        out.push(']');
        out
    }
}

/// One row of a result.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

/// A column by its position (`0`) or by its name (`"id"`, case-insensitive), as rusqlite's
/// `Row::get` takes them.
pub trait ColumnIndex {
    fn position_in(&self, columns: &[String]) -> Result<usize>;
}

impl ColumnIndex for usize {
    fn position_in(&self, _: &[String]) -> Result<usize> {
        Ok(*self)
    }
}

impl ColumnIndex for &str {
    fn position_in(&self, columns: &[String]) -> Result<usize> {
        columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(self))
            .ok_or_else(|| rusqlite::Error::InvalidColumnName(self.to_string()).into())
    }
}

impl<'a> Row<'a> {
    /// Column `idx` (a position or a name) converted like rusqlite's `Row::get`.
    pub fn get<T: FromSql>(&self, idx: impl ColumnIndex) -> Result<T> {
        let idx = idx.position_in(self.columns)?;
        let v = self
            .values
            .get(idx)
            .ok_or(rusqlite::Error::InvalidColumnIndex(idx))?;
        let r = v.as_value_ref();
        let ty = r.data_type();
        T::column_result(r)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, ty, Box::new(e)).into())
    }
    pub fn values(&self) -> &'a [Value] {
        self.values
    }
    pub fn columns(&self) -> &'a [String] {
        self.columns
    }
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .zip(self.values)
            .map(|(c, v)| (c.clone(), v.to_json()))
            .collect();
        map.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_is_found_by_position_or_by_name() {
        let columns = vec!["id".to_string(), "Title".to_string()];
        let values = vec![Value::Integer(7), Value::Text("milk".into())];
        let row = Row {
            columns: &columns,
            values: &values,
        };
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<String>("title").unwrap(), "milk");
        assert!(row.get::<i64>(2).is_err());
        let err = row.get::<i64>("nope").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
