//! Change sets: what one transaction did to replicated tables, in a compact wire form.
//!
//! Column names are sent once per table per change set (a header), not once per row, so a
//! batch of many rows costs little more than its values.

use crate::value::{Owner, Value};
use serde::{Deserialize, Serialize};

/// The columns of one table as the sender saw them when the change set was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableHeader {
    pub name: String,
    pub columns: Vec<String>,
}

/// One change. `table` indexes `ChangeSet::tables`; `values` follow that header's columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Device → primary: a new row; fails if the row id (or another unique key) exists.
    Insert {
        table: u32,
        rowid: i64,
        values: Vec<Value>,
    },
    /// Device → primary: the row after the update and which columns the device changed
    /// (bit i = column i; columns past 63 are all covered by bit 63).
    Update {
        table: u32,
        rowid: i64,
        changed: u64,
        values: Vec<Value>,
    },
    /// Primary → everyone: the row as it now is at the primaries.
    Upsert {
        table: u32,
        rowid: i64,
        values: Vec<Value>,
    },
    /// A row removed; `owner` is the row_owner it had, which decides who must hear of it.
    Delete {
        table: u32,
        rowid: i64,
        owner: Value,
    },
    /// A schema statement executed on a primary. `private` ones (on `private_*` tables) stay
    /// among the primaries.
    Ddl { sql: String, private: bool },
}

impl Op {
    /// The row it changes, as (table header index, row id, the row's values after it or None
    /// when it deletes the row); None for a schema statement.
    pub fn row(&self) -> Option<(u32, i64, Option<&[Value]>)> {
        match self {
            Op::Insert {
                table,
                rowid,
                values,
            }
            | Op::Update {
                table,
                rowid,
                values,
                ..
            }
            | Op::Upsert {
                table,
                rowid,
                values,
            } => Some((*table, *rowid, Some(values.as_slice()))),
            Op::Delete { table, rowid, .. } => Some((*table, *rowid, None)),
            Op::Ddl { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub tables: Vec<TableHeader>,
    pub ops: Vec<Op>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Index of the header for `name` with `columns`, adding it if new.
    pub fn table_index(&mut self, name: &str, columns: &[String]) -> u32 {
        if let Some(i) = self
            .tables
            .iter()
            .position(|t| t.name == name && t.columns == columns)
        {
            return i as u32;
        }
        self.tables.push(TableHeader {
            name: name.to_string(),
            columns: columns.to_vec(),
        });
        (self.tables.len() - 1) as u32
    }

    pub fn header(&self, table: u32) -> Option<&TableHeader> {
        self.tables.get(table as usize)
    }

    /// The (table name, row id) that `op` (one of this set's ops) changes; None for schema
    /// statements.
    pub fn row_of(&self, op: &Op) -> Option<(&str, i64)> {
        let (table, rowid, _) = op.row()?;
        self.header(table).map(|h| (h.name.as_str(), rowid))
    }

    /// The part of this change set that a device of `user` may see, or None if nothing.
    /// Rows of `private_` tables stay among the primaries, whoever owns them.
    pub fn visible_to_user(&self, user: i64) -> Option<ChangeSet> {
        let mut out = ChangeSet::default();
        for op in &self.ops {
            let private_rows = op
                .row()
                .and_then(|(table, ..)| self.header(table))
                .is_some_and(|h| crate::store::schema::is_private(&h.name));
            if private_rows {
                continue;
            }
            let keep = match op {
                Op::Ddl { private, .. } => !private,
                Op::Delete { owner, .. } => Owner::of(owner).visible_to(user),
                Op::Upsert { table, values, .. }
                | Op::Insert { table, values, .. }
                | Op::Update { table, values, .. } => self
                    .owner_of(*table, values)
                    .is_some_and(|o| o.visible_to(user)),
            };
            if keep {
                out.push_from(self, op);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// The row_owner of a row given in `table`'s column order.
    pub fn owner_of(&self, table: u32, values: &[Value]) -> Option<Owner> {
        let header = self.header(table)?;
        // Column names ignore case in SQLite and in the table layouts: an exact match would
        // miss a `Row_Owner` column, and a device's update could then give its row away.
        let idx = header
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(crate::ROW_OWNER))?;
        values.get(idx).map(Owner::of)
    }

    /// Append all of `other`'s changes after this set's (taking `other` whole when this one is
    /// empty, as it usually is).
    pub fn extend(&mut self, other: ChangeSet) {
        if self.is_empty() && self.tables.is_empty() {
            *self = other;
            return;
        }
        for op in &other.ops {
            self.push_from(&other, op);
        }
    }

    /// Append `op` (which refers to `from`'s headers) to this change set.
    pub fn push_from(&mut self, from: &ChangeSet, op: &Op) {
        let remap = |this: &mut ChangeSet, t: u32| -> u32 {
            match from.header(t) {
                Some(h) => this.table_index(&h.name, &h.columns),
                None => t,
            }
        };
        let op = match op {
            Op::Insert {
                table,
                rowid,
                values,
            } => Op::Insert {
                table: remap(self, *table),
                rowid: *rowid,
                values: values.clone(),
            },
            Op::Update {
                table,
                rowid,
                changed,
                values,
            } => Op::Update {
                table: remap(self, *table),
                rowid: *rowid,
                changed: *changed,
                values: values.clone(),
            },
            Op::Upsert {
                table,
                rowid,
                values,
            } => Op::Upsert {
                table: remap(self, *table),
                rowid: *rowid,
                values: values.clone(),
            },
            Op::Delete {
                table,
                rowid,
                owner,
            } => Op::Delete {
                table: remap(self, *table),
                rowid: *rowid,
                owner: owner.clone(),
            },
            Op::Ddl { sql, private } => Op::Ddl {
                sql: sql.clone(),
                private: *private,
            },
        };
        self.ops.push(op);
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain owned data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<ChangeSet, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Bit for column `i` in an `Op::Update::changed` mask.
pub fn column_bit(i: usize) -> u64 {
    1u64 << i.min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(cs: &mut ChangeSet, table: &str, rowid: i64, owner: Value) {
        let columns = vec!["v".to_string(), crate::ROW_OWNER.to_string()];
        let t = cs.table_index(table, &columns);
        cs.ops.push(Op::Upsert {
            table: t,
            rowid,
            values: vec![Value::Text("x".into()), owner],
        });
    }

    #[test]
    fn rows_of_private_tables_reach_no_device_whoever_owns_them() {
        let mut cs = ChangeSet::default();
        upsert(&mut cs, "private_secrets", 1, Value::Text("*".into()));
        upsert(&mut cs, "PRIVATE_keys", 2, Value::Integer(7));
        upsert(&mut cs, "notes", 3, Value::Integer(7));
        let seen = cs
            .visible_to_user(7)
            .expect("the user's own public-table row");
        let rows: Vec<i64> = seen
            .ops
            .iter()
            .filter_map(|op| op.row())
            .map(|r| r.1)
            .collect();
        assert_eq!(rows, [3]);
        assert!(seen.tables.iter().all(|t| t.name == "notes"));
        let mut only_private = ChangeSet::default();
        upsert(
            &mut only_private,
            "private_secrets",
            1,
            Value::Text("*".into()),
        );
        assert_eq!(only_private.visible_to_user(7), None);
    }
}
