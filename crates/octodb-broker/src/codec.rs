//! The broker's value encoding: self-describing (each value starts with its tag), compact
//! (variable-length integers), and decoded under limits, because its bytes come from the
//! network: a hostile frame gets an error, never a crash, a stack overflow or a huge
//! allocation.
//!
//! Shared and self-referential structures travel as `Shared { id, value }` at their first
//! occurrence and `Backref(id)` after; ids count up from 0 in the order the `Shared` values
//! begin, so a decoder can check each reference points back at one already begun.

use crate::key::{Key, KeyPart, ObjRef};
use std::fmt;

/// One value as the broker sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond 64 bits, in decimal (Python's ints have no bound).
    BigInt(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Pairs in their order (keys may be any value, as Python's dict keys).
    Dict(Vec<(Value, Value)>),
    DateTime(DateTime),
    Date {
        year: i32,
        month: u8,
        day: u8,
    },
    Time(TimeOfDay),
    /// Python's normalized form: `seconds` in 0..86400, `micros` in 0..1_000_000.
    TimeDelta {
        days: i64,
        seconds: u32,
        micros: u32,
    },
    /// A value of a type registered on both sides under `type_name`.
    Custom {
        type_name: String,
        value: Box<Value>,
    },
    /// The first occurrence of a structure referred to again (see the module's doc).
    Shared {
        id: u32,
        value: Box<Value>,
    },
    /// A later occurrence of the `Shared` value with this id.
    Backref(u32),
    /// An exported object, by reference (its key and access code).
    Ref(ObjRef),
    /// An exported object sent whole.
    Object(Box<ObjectState>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub time: TimeOfDay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub micro: u32,
    /// Seconds east of UTC when the value is aware of its zone.
    pub utc_offset: Option<i32>,
}

/// An exported object's state as a client receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectState {
    pub key: ObjRef,
    /// The exported class's name (what `find`/`get`/`count` and `on_change` name).
    pub class: String,
    pub fields: Vec<(String, Value)>,
    /// References to one object (None: no object).
    pub refs: Vec<(String, Option<ObjRef>)>,
    /// References to many, fetched as lists on first use.
    pub backrefs: Vec<String>,
    pub methods: Vec<String>,
}

impl ObjectState {
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Bounds on what a decoder accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded value.
    pub max_bytes: usize,
    /// Deepest nesting of containers.
    pub max_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// Why bytes did not decode (or a value did not encode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("the value is {size} bytes, more than the limit of {max}: send smaller values")]
    TooLarge { size: usize, max: usize },
    #[error("the value nests deeper than {0} levels")]
    TooDeep(u32),
    #[error("the value ends early (truncated or not a broker value)")]
    Truncated,
    #[error("malformed value: {0}")]
    Malformed(String),
}

mod tag {
    pub const NONE: u8 = 0;
    pub const FALSE: u8 = 1;
    pub const TRUE: u8 = 2;
    pub const INT: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const STR: u8 = 5;
    pub const BYTES: u8 = 6;
    pub const LIST: u8 = 7;
    pub const TUPLE: u8 = 8;
    pub const DICT: u8 = 9;
    pub const DATETIME: u8 = 10;
    pub const DATE: u8 = 11;
    pub const TIME: u8 = 12;
    pub const TIMEDELTA: u8 = 13;
    pub const CUSTOM: u8 = 14;
    pub const SHARED: u8 = 15;
    pub const BACKREF: u8 = 16;
    pub const REF: u8 = 17;
    pub const OBJECT: u8 = 18;
    pub const BIGINT: u8 = 19;
}

/// Encodes `v`.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(&mut out, v);
    out
}

/// Decodes one value that must fill `bytes` exactly.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Value, CodecError> {
    if bytes.len() > limits.max_bytes {
        return Err(CodecError::TooLarge {
            size: bytes.len(),
            max: limits.max_bytes,
        });
    }
    let mut r = Reader {
        bytes,
        pos: 0,
        limits: *limits,
        shared_begun: 0,
    };
    let v = r.value(0)?;
    if r.pos != bytes.len() {
        return Err(CodecError::Malformed(format!(
            "{} bytes left after the value",
            bytes.len() - r.pos
        )));
    }
    Ok(v)
}

fn write_uvarint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_ivarint(out: &mut Vec<u8>, n: i64) {
    write_uvarint(out, ((n << 1) ^ (n >> 63)) as u64);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn write_time(out: &mut Vec<u8>, t: &TimeOfDay) {
    out.extend_from_slice(&[t.hour, t.minute, t.second]);
    write_uvarint(out, u64::from(t.micro));
    match t.utc_offset {
        None => out.push(0),
        Some(o) => {
            out.push(1);
            write_ivarint(out, i64::from(o));
        }
    }
}

pub(crate) fn write_ref(out: &mut Vec<u8>, r: &ObjRef) {
    write_str(out, &r.key.loader);
    write_uvarint(out, r.key.parts.len() as u64);
    for p in &r.key.parts {
        match p {
            KeyPart::Int(i) => {
                out.push(tag::INT);
                write_ivarint(out, *i);
            }
            KeyPart::Str(s) => {
                out.push(tag::STR);
                write_str(out, s);
            }
        }
    }
    write_uvarint(out, r.code.len() as u64);
    out.extend_from_slice(&r.code);
}

fn write_seq(out: &mut Vec<u8>, items: &[Value]) {
    write_uvarint(out, items.len() as u64);
    for i in items {
        write_value(out, i);
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::None => out.push(tag::NONE),
        Value::Bool(false) => out.push(tag::FALSE),
        Value::Bool(true) => out.push(tag::TRUE),
        Value::Int(i) => {
            out.push(tag::INT);
            write_ivarint(out, *i);
        }
        Value::BigInt(s) => {
            out.push(tag::BIGINT);
            write_str(out, s);
        }
        Value::Float(f) => {
            out.push(tag::FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Str(s) => {
            out.push(tag::STR);
            write_str(out, s);
        }
        Value::Bytes(b) => {
            out.push(tag::BYTES);
            write_uvarint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::List(items) => {
            out.push(tag::LIST);
            write_seq(out, items);
        }
        Value::Tuple(items) => {
            out.push(tag::TUPLE);
            write_seq(out, items);
        }
        Value::Dict(pairs) => {
            out.push(tag::DICT);
            write_uvarint(out, pairs.len() as u64);
            for (k, v) in pairs {
                write_value(out, k);
                write_value(out, v);
            }
        }
        Value::DateTime(dt) => {
            out.push(tag::DATETIME);
            write_ivarint(out, i64::from(dt.year));
            out.extend_from_slice(&[dt.month, dt.day]);
            write_time(out, &dt.time);
        }
        Value::Date { year, month, day } => {
            out.push(tag::DATE);
            write_ivarint(out, i64::from(*year));
            out.extend_from_slice(&[*month, *day]);
        }
        Value::Time(t) => {
            out.push(tag::TIME);
            write_time(out, t);
        }
        Value::TimeDelta {
            days,
            seconds,
            micros,
        } => {
            out.push(tag::TIMEDELTA);
            write_ivarint(out, *days);
            write_uvarint(out, u64::from(*seconds));
            write_uvarint(out, u64::from(*micros));
        }
        Value::Custom { type_name, value } => {
            out.push(tag::CUSTOM);
            write_str(out, type_name);
            write_value(out, value);
        }
        Value::Shared { id, value } => {
            out.push(tag::SHARED);
            write_uvarint(out, u64::from(*id));
            write_value(out, value);
        }
        Value::Backref(id) => {
            out.push(tag::BACKREF);
            write_uvarint(out, u64::from(*id));
        }
        Value::Ref(r) => {
            out.push(tag::REF);
            write_ref(out, r);
        }
        Value::Object(o) => {
            out.push(tag::OBJECT);
            write_ref(out, &o.key);
            write_str(out, &o.class);
            write_uvarint(out, o.fields.len() as u64);
            for (n, v) in &o.fields {
                write_str(out, n);
                write_value(out, v);
            }
            write_uvarint(out, o.refs.len() as u64);
            for (n, r) in &o.refs {
                write_str(out, n);
                match r {
                    None => out.push(0),
                    Some(r) => {
                        out.push(1);
                        write_ref(out, r);
                    }
                }
            }
            for names in [&o.backrefs, &o.methods] {
                write_uvarint(out, names.len() as u64);
                for n in names {
                    write_str(out, n);
                }
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    limits: Limits,
    shared_begun: u32,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.bytes.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Truncated)?;
        let s = self.bytes.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn uvarint(&mut self) -> Result<u64, CodecError> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(CodecError::Malformed("integer beyond 64 bits".into()));
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(CodecError::Malformed("integer beyond 64 bits".into()))
    }

    fn ivarint(&mut self) -> Result<i64, CodecError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn small<T: TryFrom<u64>>(&mut self, what: &str) -> Result<T, CodecError> {
        let n = self.uvarint()?;
        T::try_from(n).map_err(|_| CodecError::Malformed(format!("{what} {n} out of range")))
    }

    fn i32(&mut self, what: &str) -> Result<i32, CodecError> {
        let n = self.ivarint()?;
        i32::try_from(n).map_err(|_| CodecError::Malformed(format!("{what} {n} out of range")))
    }

    /// A count of items that each take at least one byte: never more than the bytes left, so a
    /// forged count cannot make the decoder reserve room it will never fill.
    fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.uvarint()?;
        let left = self.bytes.len() - self.pos;
        if n > left as u64 {
            return Err(CodecError::Truncated);
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.count()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Malformed("text is not UTF-8".into()))
    }

    fn time(&mut self) -> Result<TimeOfDay, CodecError> {
        let [hour, minute, second] = [self.byte()?, self.byte()?, self.byte()?];
        let micro = self.small("microsecond")?;
        if hour > 23 || minute > 59 || second > 59 || micro > 999_999 {
            return Err(CodecError::Malformed("time of day out of range".into()));
        }
        let utc_offset = match self.byte()? {
            0 => None,
            1 => {
                let o = self.i32("UTC offset")?;
                if o.abs() >= 86_400 {
                    return Err(CodecError::Malformed("UTC offset out of range".into()));
                }
                Some(o)
            }
            b => return Err(CodecError::Malformed(format!("zone flag {b}"))),
        };
        Ok(TimeOfDay {
            hour,
            minute,
            second,
            micro,
            utc_offset,
        })
    }

    fn date(&mut self) -> Result<(i32, u8, u8), CodecError> {
        let year = self.i32("year")?;
        let (month, day) = (self.byte()?, self.byte()?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return Err(CodecError::Malformed("date out of range".into()));
        }
        Ok((year, month, day))
    }

    fn obj_ref(&mut self) -> Result<ObjRef, CodecError> {
        let loader = self.string()?;
        let n = self.count()?;
        let mut parts = Vec::with_capacity(n);
        for _ in 0..n {
            parts.push(match self.byte()? {
                tag::INT => KeyPart::Int(self.ivarint()?),
                tag::STR => KeyPart::Str(self.string()?),
                t => return Err(CodecError::Malformed(format!("key part of tag {t}"))),
            });
        }
        let n = self.count()?;
        if n > 64 {
            return Err(CodecError::Malformed("access code too long".into()));
        }
        let code = self.take(n)?.to_vec();
        Ok(ObjRef {
            key: Key { loader, parts },
            code,
        })
    }

    fn names(&mut self) -> Result<Vec<String>, CodecError> {
        let n = self.count()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.string()?);
        }
        Ok(v)
    }

    fn seq(&mut self, depth: u32) -> Result<Vec<Value>, CodecError> {
        let n = self.count()?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.value(depth + 1)?);
        }
        Ok(v)
    }

    fn value(&mut self, depth: u32) -> Result<Value, CodecError> {
        if depth > self.limits.max_depth {
            return Err(CodecError::TooDeep(self.limits.max_depth));
        }
        Ok(match self.byte()? {
            tag::NONE => Value::None,
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::INT => Value::Int(self.ivarint()?),
            tag::BIGINT => {
                let s = self.string()?;
                let digits = s.strip_prefix('-').unwrap_or(&s);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CodecError::Malformed("big integer is not decimal".into()));
                }
                Value::BigInt(s)
            }
            tag::FLOAT => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Value::Float(f64::from_le_bytes(a))
            }
            tag::STR => Value::Str(self.string()?),
            tag::BYTES => {
                let n = self.count()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            tag::LIST => Value::List(self.seq(depth)?),
            tag::TUPLE => Value::Tuple(self.seq(depth)?),
            tag::DICT => {
                let n = self.count()?;
                let mut pairs = Vec::with_capacity(n / 2);
                for _ in 0..n {
                    let k = self.value(depth + 1)?;
                    let v = self.value(depth + 1)?;
                    pairs.push((k, v));
                }
                Value::Dict(pairs)
            }
            tag::DATETIME => {
                let (year, month, day) = self.date()?;
                Value::DateTime(DateTime {
                    year,
                    month,
                    day,
                    time: self.time()?,
                })
            }
            tag::DATE => {
                let (year, month, day) = self.date()?;
                Value::Date { year, month, day }
            }
            tag::TIME => Value::Time(self.time()?),
            tag::TIMEDELTA => {
                let days = self.ivarint()?;
                let seconds = self.small("seconds")?;
                let micros = self.small("microseconds")?;
                if seconds >= 86_400 || micros >= 1_000_000 {
                    return Err(CodecError::Malformed("time delta out of range".into()));
                }
                Value::TimeDelta {
                    days,
                    seconds,
                    micros,
                }
            }
            tag::CUSTOM => {
                let type_name = self.string()?;
                Value::Custom {
                    type_name,
                    value: Box::new(self.value(depth + 1)?),
                }
            }
            tag::SHARED => {
                let id: u32 = self.small("shared id")?;
                if id != self.shared_begun {
                    return Err(CodecError::Malformed(format!(
                        "shared id {id} out of order (expected {})",
                        self.shared_begun
                    )));
                }
                self.shared_begun += 1;
                Value::Shared {
                    id,
                    value: Box::new(self.value(depth + 1)?),
                }
            }
            tag::BACKREF => {
                let id: u32 = self.small("reference")?;
                if id >= self.shared_begun {
                    return Err(CodecError::Malformed(format!(
                        "reference {id} to a structure not begun"
                    )));
                }
                Value::Backref(id)
            }
            tag::REF => Value::Ref(self.obj_ref()?),
            tag::OBJECT => {
                let key = self.obj_ref()?;
                let class = self.string()?;
                let n = self.count()?;
                let mut fields = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = self.string()?;
                    fields.push((name, self.value(depth + 1)?));
                }
                let n = self.count()?;
                let mut refs = Vec::with_capacity(n);
                for _ in 0..n {
                    let name = self.string()?;
                    let r = match self.byte()? {
                        0 => None,
                        1 => Some(self.obj_ref()?),
                        b => return Err(CodecError::Malformed(format!("reference flag {b}"))),
                    };
                    refs.push((name, r));
                }
                let backrefs = self.names()?;
                let methods = self.names()?;
                Value::Object(Box::new(ObjectState {
                    key,
                    class,
                    fields,
                    refs,
                    backrefs,
                    methods,
                }))
            }
            t => return Err(CodecError::Malformed(format!("unknown tag {t}"))),
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => write!(f, "None"),
            Value::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(s) => write!(f, "{s}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Ref(r) => write!(f, "{}", r.key),
            Value::Object(o) => write!(f, "<{} {}>", o.class, o.key.key),
            other => write!(f, "{other:?}"),
        }
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Every `Ref` in this value (objects' own keys included), for signing and checking.
    pub fn refs_mut(&mut self, f: &mut dyn FnMut(&mut ObjRef)) {
        match self {
            Value::List(items) | Value::Tuple(items) => {
                items.iter_mut().for_each(|i| i.refs_mut(f));
            }
            Value::Dict(pairs) => pairs.iter_mut().for_each(|(k, v)| {
                k.refs_mut(f);
                v.refs_mut(f);
            }),
            Value::Custom { value, .. } | Value::Shared { value, .. } => value.refs_mut(f),
            Value::Ref(r) => f(r),
            Value::Object(o) => {
                f(&mut o.key);
                o.fields.iter_mut().for_each(|(_, v)| v.refs_mut(f));
                for r in o.refs.iter_mut().filter_map(|(_, r)| r.as_mut()) {
                    f(r);
                }
            }
            _ => {}
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Float(x)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// A SQLite value as the broker sends it.
impl From<&octodb::Value> for Value {
    fn from(v: &octodb::Value) -> Value {
        match v {
            octodb::Value::Null => Value::None,
            octodb::Value::Integer(i) => Value::Int(*i),
            octodb::Value::Real(x) => Value::Float(*x),
            octodb::Value::Text(s) => Value::Str(s.clone()),
            octodb::Value::Blob(b) => Value::Bytes(b.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Value> {
        let t = TimeOfDay {
            hour: 23,
            minute: 59,
            second: 58,
            micro: 999_999,
            utc_offset: Some(-3600),
        };
        vec![
            Value::None,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(i64::MIN),
            Value::Int(i64::MAX),
            Value::BigInt("-123456789012345678901234567890".into()),
            Value::Float(-0.5),
            Value::Float(f64::INFINITY),
            Value::Str("héllo".into()),
            Value::Bytes(vec![0, 255, 7]),
            Value::List(vec![Value::Int(1), Value::Str("x".into())]),
            Value::Tuple(vec![]),
            Value::Dict(vec![
                (Value::Int(1), Value::None),
                ("k".into(), Value::Bool(true)),
            ]),
            Value::DateTime(DateTime {
                year: 2026,
                month: 12,
                day: 4,
                time: t,
            }),
            Value::Date {
                year: -44,
                month: 3,
                day: 15,
            },
            Value::Time(TimeOfDay {
                utc_offset: None,
                ..t
            }),
            Value::TimeDelta {
                days: -3,
                seconds: 86_399,
                micros: 1,
            },
            Value::Custom {
                type_name: "Point".into(),
                value: Box::new(Value::Tuple(vec![Value::Int(1), Value::Int(2)])),
            },
            // A list that holds itself, and a dict shared twice.
            Value::Shared {
                id: 0,
                value: Box::new(Value::List(vec![
                    Value::Backref(0),
                    Value::Shared {
                        id: 1,
                        value: Box::new(Value::Dict(vec![])),
                    },
                    Value::Backref(1),
                ])),
            },
            Value::Ref(ObjRef {
                key: Key::new("static", [KeyPart::from("root"), KeyPart::Int(-1)]),
                code: vec![1; 16],
            }),
            Value::Object(Box::new(ObjectState {
                key: ObjRef::unsigned(Key::new("todos", [KeyPart::Int(5)])),
                class: "todos".into(),
                fields: vec![("title".into(), "milk".into())],
                refs: vec![
                    ("owner".into(), None),
                    (
                        "list".into(),
                        Some(ObjRef::unsigned(Key::new("lists", [KeyPart::Int(1)]))),
                    ),
                ],
                backrefs: vec!["items".into()],
                methods: vec!["done".into()],
            })),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for v in samples() {
            let bytes = encode(&v);
            assert_eq!(decode(&bytes, &Limits::default()), Ok(v.clone()), "{v:?}");
            // Every strict prefix is an error, never a panic.
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut], &Limits::default()).is_err(),
                    "{v:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn limits_hold() {
        let mut deep = Value::None;
        for _ in 0..100 {
            deep = Value::List(vec![deep]);
        }
        let bytes = encode(&deep);
        assert_eq!(
            decode(&bytes, &Limits::default()),
            Err(CodecError::TooDeep(64))
        );
        let big = encode(&Value::Bytes(vec![0; 100]));
        let small = Limits {
            max_bytes: 50,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&big, &small),
            Err(CodecError::TooLarge { .. })
        ));
        // A forged count far beyond the bytes given.
        assert_eq!(
            decode(
                &[tag::LIST, 0xff, 0xff, 0xff, 0xff, 0x0f],
                &Limits::default()
            ),
            Err(CodecError::Truncated)
        );
        // References must point back at a structure already begun.
        assert!(decode(&[tag::BACKREF, 0], &Limits::default()).is_err());
        assert!(decode(&[tag::SHARED, 1, tag::NONE], &Limits::default()).is_err());
        // Trailing bytes.
        assert!(decode(&[tag::NONE, 0], &Limits::default()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("OCTODB_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000),
            failure_persistence: None,
            ..Default::default()
        })]
        #[test]
        fn random_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, &Limits::default());
        }

        #[test]
        fn mutated_values_decode_or_fail_cleanly(which in 0usize..21, pos in any::<usize>(), byte in any::<u8>()) {
            let samples = samples();
            let mut bytes = encode(&samples[which % samples.len()]);
            if !bytes.is_empty() {
                let i = pos % bytes.len();
                bytes[i] = byte;
            }
            let _ = decode(&bytes, &Limits::default());
        }

        #[test]
        fn random_frames_never_crash_the_protocol_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = crate::protocol::decode::<crate::protocol::Request>(&bytes);
            let _ = crate::protocol::decode::<crate::protocol::ServerFrame>(&bytes);
        }
    }
}
