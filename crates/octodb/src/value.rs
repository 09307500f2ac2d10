//! SQLite values as they travel between nodes.

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// One SQLite value, with its storage class preserved across the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    pub fn from_ref(v: ValueRef<'_>) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            // SQLite text is not guaranteed to be UTF-8; keep what we can rather than fail a sync.
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    /// The value as SQLite's borrowed form.
    pub fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => (*i).into(),
            Value::Real(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => s.clone().into(),
            Value::Blob(b) => hex::encode(b).into(),
        }
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.as_value_ref()))
    }
}

impl FromSql for Value {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(Value::from_ref(v))
    }
}

/// Who may see a row, decoded from its `row_owner` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// NULL: the row never leaves the node that made it.
    Local,
    /// `'*'`: every node.
    Global,
    /// A user id: that user's devices and the primaries.
    User(i64),
    /// Anything else: kept on the primaries only, never sent to a device.
    Invalid,
}

impl Owner {
    pub fn of(v: &Value) -> Owner {
        Owner::of_ref(v.as_value_ref())
    }

    /// The owner a value read straight from SQLite stands for.
    pub fn of_ref(v: ValueRef<'_>) -> Owner {
        match v {
            ValueRef::Null => Owner::Local,
            ValueRef::Integer(u) => Owner::User(u),
            ValueRef::Text(b"*") => Owner::Global,
            // Exactly the id's digits: "03" or "+3" would be user 3 to the stream but not to a
            // download's or the broker's `row_owner = '3'` (the hostile walkthrough).
            ValueRef::Text(t) => std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse::<i64>().ok().filter(|u| u.to_string() == s))
                .map_or(Owner::Invalid, Owner::User),
            ValueRef::Real(_) | ValueRef::Blob(_) => Owner::Invalid,
        }
    }

    /// Whether a device of `user` may see a row with this owner.
    pub fn visible_to(&self, user: i64) -> bool {
        match self {
            Owner::Global => true,
            Owner::User(u) => *u == user,
            Owner::Local | Owner::Invalid => false,
        }
    }
}

/// A value borrowed from SQLite, serialized exactly as the equal [`Value`] is, so rows can be
/// encoded straight from a query without copying every value into a [`Value`] first.
pub struct WireValueRef<'a>(pub ValueRef<'a>);

impl Serialize for WireValueRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Variant names and indexes are those `#[derive(Serialize)]` gives `Value`.
        match self.0 {
            ValueRef::Null => s.serialize_unit_variant("Value", 0, "Null"),
            ValueRef::Integer(i) => s.serialize_newtype_variant("Value", 1, "Integer", &i),
            ValueRef::Real(f) => s.serialize_newtype_variant("Value", 2, "Real", &f),
            ValueRef::Text(t) => {
                let text = String::from_utf8_lossy(t);
                s.serialize_newtype_variant("Value", 3, "Text", text.as_ref())
            }
            ValueRef::Blob(b) => s.serialize_newtype_variant("Value", 4, "Blob", b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_read_from_sqlite_is_the_owner_of_the_equal_value() {
        let cases = [
            (ValueRef::Null, Owner::Local),
            (ValueRef::Integer(7), Owner::User(7)),
            (ValueRef::Text(b"*"), Owner::Global),
            (ValueRef::Text(b"42"), Owner::User(42)),
            (ValueRef::Text(b"4x"), Owner::Invalid),
            (ValueRef::Text(b"042"), Owner::Invalid),
            (ValueRef::Text(b"+42"), Owner::Invalid),
            (ValueRef::Text(b"-3"), Owner::User(-3)),
            (ValueRef::Text(b"\xff7"), Owner::Invalid),
            (ValueRef::Real(1.0), Owner::Invalid),
            (ValueRef::Blob(b"1"), Owner::Invalid),
        ];
        for (raw, owner) in cases {
            assert_eq!(Owner::of_ref(raw), owner, "{raw:?}");
            assert_eq!(Owner::of(&Value::from_ref(raw)), owner, "{raw:?}");
        }
    }

    #[test]
    fn borrowed_values_encode_like_owned_ones() {
        let owned = [
            Value::Null,
            Value::Integer(-7),
            Value::Real(2.5),
            Value::Text("héllo".into()),
            Value::Blob(vec![0, 1, 255]),
        ];
        for v in &owned {
            assert_eq!(
                postcard::to_allocvec(&WireValueRef(v.as_value_ref())).ok(),
                postcard::to_allocvec(v).ok(),
                "{v:?}"
            );
        }
        // Text that is not UTF-8 arrives as the lossy text `Value::from_ref` would make.
        let bad = ValueRef::Text(&[b'a', 0xff]);
        assert_eq!(
            postcard::to_allocvec(&WireValueRef(bad)).ok(),
            postcard::to_allocvec(&Value::from_ref(bad)).ok()
        );
    }
}
