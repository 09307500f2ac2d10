//! Whether SQLite stores a value exactly as it was bound, from the column's declared type.
//!
//! A primary records a device's inserted row in its log as the row it stored. Reading the row
//! back after the insert cost a fifth of the primary's writer thread in the streaming
//! benchmark; when the column's affinity cannot change the value (and nothing else can: no
//! triggers, every column given), the values sent are the values stored, and the read is
//! skipped. The rules here are deliberately narrower than SQLite's: a value they are unsure
//! of is read back, never guessed.

use crate::value::Value;

/// A column's type affinity, by SQLite's rules for a declared type
/// (<https://sqlite.org/datatype3.html#determination_of_column_affinity>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    /// No conversion at all (declared BLOB or no type).
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    /// The affinity of a column declared with type `declared`, rules applied in SQLite's order.
    pub fn of_declared(declared: &str) -> Affinity {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.trim().is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            // ANY included: a STRICT table's ANY keeps every value, but NUMERIC's rules are
            // stricter, so taking it as NUMERIC only sends more rows to be read back.
            Affinity::Numeric
        }
    }
}

/// What the primary needs to know of a column to tell whether a value is stored unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnKind {
    pub affinity: Affinity,
    /// NOT NULL: a NULL is refused or, under `ON CONFLICT REPLACE`, replaced by the default.
    pub not_null: bool,
}

impl ColumnKind {
    /// True only when SQLite certainly stores `v` in this column as it is (reads it back
    /// equal, to the bit).
    pub fn keeps(&self, v: &Value) -> bool {
        match v {
            Value::Null => !self.not_null,
            // Blobs are never converted.
            Value::Blob(_) => true,
            Value::Integer(_) => matches!(
                self.affinity,
                Affinity::Integer | Affinity::Numeric | Affinity::Blob
            ),
            // NaN is stored as NULL; a zero may lose its sign (a REAL column stores integral
            // values as integers); INTEGER and NUMERIC columns turn integral reals into
            // integers.
            Value::Real(x) => {
                !x.is_nan() && *x != 0.0 && matches!(self.affinity, Affinity::Real | Affinity::Blob)
            }
            // Numeric affinities turn text that looks like a number into one.
            Value::Text(_) => matches!(self.affinity, Affinity::Text | Affinity::Blob),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn affinities_follow_sqlites_rules_in_order() {
        for (declared, affinity) in [
            ("INTEGER", Affinity::Integer),
            ("int", Affinity::Integer),
            ("BIGINT", Affinity::Integer),
            ("POINT", Affinity::Integer), // "INT" wins, as SQLite's documentation warns
            ("VARCHAR(20)", Affinity::Text),
            ("CLOB", Affinity::Text),
            ("text", Affinity::Text),
            ("CHARINT", Affinity::Integer),
            ("BLOB", Affinity::Blob),
            ("", Affinity::Blob),
            ("REAL", Affinity::Real),
            ("DOUBLE PRECISION", Affinity::Real),
            ("FLOATING POINT", Affinity::Integer),
            ("NUMERIC", Affinity::Numeric),
            ("DECIMAL(10,5)", Affinity::Numeric),
            ("BOOLEAN", Affinity::Numeric),
            ("DATETIME", Affinity::Numeric),
            ("STRING", Affinity::Numeric),
            ("ANY", Affinity::Numeric),
        ] {
            assert_eq!(Affinity::of_declared(declared), affinity, "{declared}");
        }
    }

    /// Every value the rules say is kept is read back from real SQLite equal to the bit, for
    /// every declared type (the rules may be too careful, never too bold).
    #[test]
    fn a_value_said_to_be_kept_reads_back_identical() {
        let declared = [
            "INTEGER",
            "TEXT",
            "BLOB",
            "",
            "REAL",
            "NUMERIC",
            "BOOLEAN",
            "FLOAT",
            "VARCHAR(3)",
        ];
        let values = [
            Value::Null,
            Value::Integer(0),
            Value::Integer(-7),
            Value::Integer(i64::MAX),
            Value::Real(1.5),
            Value::Real(5.0),
            Value::Real(-0.0),
            Value::Real(0.0),
            Value::Real(f64::NAN),
            Value::Real(f64::INFINITY),
            Value::Real(1e300),
            Value::Text("12".into()),
            Value::Text("1.5".into()),
            Value::Text(" 3".into()),
            Value::Text("abc".into()),
            Value::Text(String::new()),
            Value::Blob(vec![0, 1, 2]),
            Value::Blob(Vec::new()),
        ];
        let c = Connection::open_in_memory().unwrap();
        let mut kept_somewhere = 0;
        for (i, d) in declared.iter().enumerate() {
            for not_null in [false, true] {
                let constraint = if not_null {
                    "NOT NULL ON CONFLICT REPLACE DEFAULT 9"
                } else {
                    ""
                };
                let table = format!("t{i}_{not_null}");
                c.execute_batch(&format!("CREATE TABLE {table}(v {d} {constraint})"))
                    .unwrap();
                let kind = ColumnKind {
                    affinity: Affinity::of_declared(d),
                    not_null,
                };
                for v in &values {
                    c.execute(&format!("DELETE FROM {table}"), []).unwrap();
                    c.execute(&format!("INSERT INTO {table}(v) VALUES (?1)"), [v])
                        .unwrap();
                    let back: Value = c
                        .query_row(&format!("SELECT v FROM {table}"), [], |r| r.get(0))
                        .unwrap();
                    if kind.keeps(v) {
                        kept_somewhere += 1;
                        let same = match (v, &back) {
                            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
                            _ => *v == back,
                        };
                        assert!(same, "{v:?} in a `{d}` column came back as {back:?}");
                    }
                }
            }
        }
        assert!(kept_somewhere > 50, "the rules keep almost nothing");
    }
}
