//! Python values to and from the broker's encoding (`octodb_broker::codec`).
//!
//! Lists, dicts and tuples met more than once (shared, or holding themselves) are sent once, as
//! `Shared`, and referred to after (`Backref`), so the receiver rebuilds the same graph. Objects
//! the codec does not know go to a hook of the Python side: exported objects become references
//! (or whole objects), registered types become `Custom` values.

use octodb_broker::codec::{DateTime, TimeOfDay, Value};
use octodb_broker::key::{Key, KeyPart, ObjRef};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use std::collections::HashMap;

/// Deepest nesting encoded (the decoder's limit is the same).
const MAX_DEPTH: u32 = 64;

struct DatetimeTypes<'py> {
    datetime: Bound<'py, PyAny>,
    date: Bound<'py, PyAny>,
    time: Bound<'py, PyAny>,
    timedelta: Bound<'py, PyAny>,
    timezone: Bound<'py, PyAny>,
}

/// The datetime module's types, looked up once per process (every encode and decode needs
/// them, and a lookup costs more than encoding a small call).
struct DatetimeTypesCache {
    datetime: Py<PyAny>,
    date: Py<PyAny>,
    time: Py<PyAny>,
    timedelta: Py<PyAny>,
    timezone: Py<PyAny>,
}

static DATETIME_TYPES: pyo3::sync::PyOnceLock<DatetimeTypesCache> = pyo3::sync::PyOnceLock::new();

fn datetime_types(py: Python<'_>) -> PyResult<DatetimeTypes<'_>> {
    let cached = DATETIME_TYPES.get_or_try_init(py, || -> PyResult<DatetimeTypesCache> {
        let m = py.import("datetime")?;
        Ok(DatetimeTypesCache {
            datetime: m.getattr("datetime")?.unbind(),
            date: m.getattr("date")?.unbind(),
            time: m.getattr("time")?.unbind(),
            timedelta: m.getattr("timedelta")?.unbind(),
            timezone: m.getattr("timezone")?.unbind(),
        })
    })?;
    Ok(DatetimeTypes {
        datetime: cached.datetime.bind(py).clone(),
        date: cached.date.bind(py).clone(),
        time: cached.time.bind(py).clone(),
        timedelta: cached.timedelta.bind(py).clone(),
        timezone: cached.timezone.bind(py).clone(),
    })
}

/// A key as Python sees it: `(loader, *parts)`.
pub fn key_to_py<'py>(py: Python<'py>, key: &Key) -> PyResult<Bound<'py, PyTuple>> {
    let mut items: Vec<Bound<'py, PyAny>> = vec![PyString::new(py, &key.loader).into_any()];
    for p in &key.parts {
        items.push(match p {
            KeyPart::Int(i) => i.into_pyobject(py)?.into_any(),
            KeyPart::Str(s) => PyString::new(py, s).into_any(),
        });
    }
    PyTuple::new(py, items)
}

pub fn key_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Key> {
    let t = obj
        .cast::<PyTuple>()
        .map_err(|_| PyTypeError::new_err("a key is a tuple (loader, *parts)"))?;
    let mut it = t.iter();
    let loader: String = it
        .next()
        .ok_or_else(|| PyValueError::new_err("a key names its loader first"))?
        .extract()?;
    let mut parts = Vec::new();
    for p in it {
        if p.is_instance_of::<PyBool>() {
            return Err(PyTypeError::new_err("key parts are int or str"));
        }
        if let Ok(i) = p.extract::<i64>() {
            parts.push(KeyPart::Int(i));
        } else if let Ok(s) = p.extract::<String>() {
            parts.push(KeyPart::Str(s));
        } else {
            return Err(PyTypeError::new_err("key parts are int or str"));
        }
    }
    Ok(Key { loader, parts })
}

/// `(key, code)` for Python.
pub fn ref_to_py<'py>(py: Python<'py>, r: &ObjRef) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            key_to_py(py, &r.key)?.into_any(),
            PyBytes::new(py, &r.code).into_any(),
        ],
    )
}

pub fn ref_from_py(obj: &Bound<'_, PyAny>) -> PyResult<ObjRef> {
    let (key, code): (Bound<'_, PyAny>, Vec<u8>) = obj.extract()?;
    Ok(ObjRef {
        key: key_from_py(&key)?,
        code,
    })
}

/// Encodes Python values; `hook(obj)` answers for objects the codec does not know.
pub struct Encoder<'py> {
    hook: Option<Bound<'py, PyAny>>,
    types: DatetimeTypes<'py>,
    /// Containers met more than once, by address.
    seen_twice: HashMap<usize, ()>,
    ids: HashMap<usize, u32>,
}

impl<'py> Encoder<'py> {
    pub fn new(py: Python<'py>, hook: Option<Bound<'py, PyAny>>) -> PyResult<Encoder<'py>> {
        Ok(Encoder {
            hook,
            types: datetime_types(py)?,
            seen_twice: HashMap::new(),
            ids: HashMap::new(),
        })
    }

    pub fn encode(mut self, obj: &Bound<'py, PyAny>) -> PyResult<Value> {
        let mut counts = HashMap::new();
        count_containers(obj, &mut counts, 0)?;
        self.seen_twice = counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(p, _)| (p, ()))
            .collect();
        self.value(obj, 0)
    }

    fn value(&mut self, obj: &Bound<'py, PyAny>, depth: u32) -> PyResult<Value> {
        if depth > MAX_DEPTH {
            return Err(PyValueError::new_err(format!(
                "the value nests deeper than {MAX_DEPTH} levels"
            )));
        }
        let addr = obj.as_ptr() as usize;
        let container = obj.is_instance_of::<PyList>()
            || obj.is_instance_of::<PyDict>()
            || obj.is_instance_of::<PyTuple>();
        if container && self.seen_twice.contains_key(&addr) {
            if let Some(id) = self.ids.get(&addr) {
                return Ok(Value::Backref(*id));
            }
            let id = self.ids.len() as u32;
            self.ids.insert(addr, id);
            let inner = self.plain(obj, depth)?;
            return Ok(Value::Shared {
                id,
                value: Box::new(inner),
            });
        }
        self.plain(obj, depth)
    }

    fn plain(&mut self, obj: &Bound<'py, PyAny>, depth: u32) -> PyResult<Value> {
        if obj.is_none() {
            return Ok(Value::None);
        }
        if let Ok(b) = obj.cast::<PyBool>() {
            return Ok(Value::Bool(b.is_true()));
        }
        if obj.is_exact_instance_of::<PyInt>() {
            return Ok(match obj.extract::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::BigInt(obj.str()?.to_string()),
            });
        }
        if obj.is_exact_instance_of::<PyFloat>() {
            return Ok(Value::Float(obj.extract()?));
        }
        if obj.is_exact_instance_of::<PyString>() {
            return Ok(Value::Str(obj.extract()?));
        }
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(Value::Bytes(b.as_bytes().to_vec()));
        }
        if let Ok(b) = obj.cast::<PyByteArray>() {
            return Ok(Value::Bytes(b.to_vec()));
        }
        if let Ok(l) = obj.cast::<PyList>() {
            let mut items = Vec::with_capacity(l.len());
            for i in l.iter() {
                items.push(self.value(&i, depth + 1)?);
            }
            return Ok(Value::List(items));
        }
        if obj.is_exact_instance_of::<PyTuple>() {
            let t = obj.cast::<PyTuple>()?;
            let mut items = Vec::with_capacity(t.len());
            for i in t.iter() {
                items.push(self.value(&i, depth + 1)?);
            }
            return Ok(Value::Tuple(items));
        }
        if obj.is_exact_instance_of::<PyDict>() {
            let d = obj.cast::<PyDict>()?;
            let mut pairs = Vec::with_capacity(d.len());
            for (k, v) in d.iter() {
                pairs.push((self.value(&k, depth + 1)?, self.value(&v, depth + 1)?));
            }
            return Ok(Value::Dict(pairs));
        }
        if obj.is_instance(&self.types.datetime)? {
            return Ok(Value::DateTime(DateTime {
                year: obj.getattr("year")?.extract()?,
                month: obj.getattr("month")?.extract()?,
                day: obj.getattr("day")?.extract()?,
                time: self.time_of(obj)?,
            }));
        }
        if obj.is_instance(&self.types.date)? {
            return Ok(Value::Date {
                year: obj.getattr("year")?.extract()?,
                month: obj.getattr("month")?.extract()?,
                day: obj.getattr("day")?.extract()?,
            });
        }
        if obj.is_instance(&self.types.time)? {
            return Ok(Value::Time(self.time_of(obj)?));
        }
        if obj.is_instance(&self.types.timedelta)? {
            return Ok(Value::TimeDelta {
                days: obj.getattr("days")?.extract()?,
                seconds: obj.getattr("seconds")?.extract()?,
                micros: obj.getattr("microseconds")?.extract()?,
            });
        }
        let Some(hook) = self.hook.clone() else {
            return Err(PyTypeError::new_err(format!(
                "cannot send a {} through the broker: register a codec for it",
                obj.get_type().name()?
            )));
        };
        // ("ref", key) | ("whole", key, class, fields, refs, backrefs, methods)
        // | ("custom", type_name, value)
        let answer = hook.call1((obj,))?;
        let t = answer.cast::<PyTuple>()?;
        let kind: String = t.get_item(0)?.extract()?;
        match kind.as_str() {
            // ("ref", key) from the server, ("ref", key, code) from a client's proxy.
            "ref" => Ok(Value::Ref(ObjRef {
                key: key_from_py(&t.get_item(1)?)?,
                code: if t.len() > 2 {
                    t.get_item(2)?.extract()?
                } else {
                    Vec::new()
                },
            })),
            "custom" => {
                let value = self.value(&t.get_item(2)?, depth + 1)?;
                Ok(Value::Custom {
                    type_name: t.get_item(1)?.extract()?,
                    value: Box::new(value),
                })
            }
            "whole" => Ok(Value::Object(Box::new(self.state(t, depth)?))),
            other => Err(PyValueError::new_err(format!(
                "the encoding hook answered `{other}`"
            ))),
        }
    }

    /// `("whole", key, class, fields, refs, backrefs, methods)` as an object's state.
    pub fn state(
        &mut self,
        t: &Bound<'py, PyTuple>,
        depth: u32,
    ) -> PyResult<octodb_broker::ObjectState> {
        let key = key_from_py(&t.get_item(1)?)?;
        let class: String = t.get_item(2)?.extract()?;
        let fields_obj = t.get_item(3)?;
        let fields_dict = fields_obj.cast::<PyDict>()?;
        let mut fields = Vec::new();
        for (k, v) in fields_dict.iter() {
            fields.push((k.extract::<String>()?, self.value(&v, depth + 1)?));
        }
        let refs_obj = t.get_item(4)?;
        let mut refs = Vec::new();
        for (k, v) in refs_obj.cast::<PyDict>()?.iter() {
            let r = if v.is_none() {
                None
            } else {
                Some(ObjRef::unsigned(key_from_py(&v)?))
            };
            refs.push((k.extract::<String>()?, r));
        }
        Ok(octodb_broker::ObjectState {
            key: ObjRef::unsigned(key),
            class,
            fields,
            refs,
            backrefs: t.get_item(5)?.extract()?,
            methods: t.get_item(6)?.extract()?,
        })
    }

    fn time_of(&self, obj: &Bound<'py, PyAny>) -> PyResult<TimeOfDay> {
        let offset = obj.call_method0("utcoffset")?;
        let utc_offset = if offset.is_none() {
            None
        } else {
            let secs: f64 = offset.call_method0("total_seconds")?.extract()?;
            Some(secs as i32)
        };
        Ok(TimeOfDay {
            hour: obj.getattr("hour")?.extract()?,
            minute: obj.getattr("minute")?.extract()?,
            second: obj.getattr("second")?.extract()?,
            micro: obj.getattr("microsecond")?.extract()?,
            utc_offset,
        })
    }
}

/// How many times each container is reached (a container reached again is not walked again).
fn count_containers(
    obj: &Bound<'_, PyAny>,
    counts: &mut HashMap<usize, u32>,
    depth: u32,
) -> PyResult<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let is_list = obj.is_instance_of::<PyList>();
    let is_dict = obj.is_instance_of::<PyDict>();
    let is_tuple = obj.is_instance_of::<PyTuple>();
    if !(is_list || is_dict || is_tuple) {
        return Ok(());
    }
    let n = counts.entry(obj.as_ptr() as usize).or_insert(0);
    *n += 1;
    if *n > 1 {
        return Ok(());
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        for (k, v) in d.iter() {
            count_containers(&k, counts, depth + 1)?;
            count_containers(&v, counts, depth + 1)?;
        }
    } else {
        for item in obj.try_iter()? {
            count_containers(&item?, counts, depth + 1)?;
        }
    }
    Ok(())
}

/// Decodes broker values into Python; `hook(kind, payload)` makes objects for references
/// (`"ref"`, (key, code)), whole objects (`"object"`, (key, code, class, fields, refs,
/// backrefs, methods)) and custom values (`"custom"`, (type_name, value)).
pub struct Decoder<'py> {
    py: Python<'py>,
    hook: Option<Bound<'py, PyAny>>,
    types: DatetimeTypes<'py>,
    shared: HashMap<u32, Bound<'py, PyAny>>,
}

impl<'py> Decoder<'py> {
    pub fn new(py: Python<'py>, hook: Option<Bound<'py, PyAny>>) -> PyResult<Decoder<'py>> {
        Ok(Decoder {
            py,
            hook,
            types: datetime_types(py)?,
            shared: HashMap::new(),
        })
    }

    fn call_hook(&self, kind: &str, payload: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match &self.hook {
            Some(h) => h.call1((kind, payload)),
            None => Ok(payload),
        }
    }

    fn tz(&self, offset: Option<i32>) -> PyResult<Bound<'py, PyAny>> {
        match offset {
            None => Ok(self.py.None().into_bound(self.py)),
            Some(o) => {
                let delta = self.types.timedelta.call1((0, o))?;
                self.types.timezone.call1((delta,))
            }
        }
    }

    pub fn decode(&mut self, v: &Value) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        Ok(match v {
            Value::None => py.None().into_bound(py),
            Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
            Value::Int(i) => i.into_pyobject(py)?.into_any(),
            Value::BigInt(s) => py.get_type::<PyInt>().call1((s.as_str(),))?,
            Value::Float(x) => PyFloat::new(py, *x).into_any(),
            Value::Str(s) => PyString::new(py, s).into_any(),
            Value::Bytes(b) => PyBytes::new(py, b).into_any(),
            Value::List(items) => {
                let l = PyList::empty(py);
                for i in items {
                    l.append(self.decode(i)?)?;
                }
                l.into_any()
            }
            Value::Tuple(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(self.decode(i)?);
                }
                PyTuple::new(py, out)?.into_any()
            }
            Value::Dict(pairs) => {
                let d = PyDict::new(py);
                for (k, v) in pairs {
                    d.set_item(self.decode(k)?, self.decode(v)?)?;
                }
                d.into_any()
            }
            Value::Shared { id, value } => match value.as_ref() {
                // Made empty and remembered first, so that it may hold itself.
                Value::List(items) => {
                    let l = PyList::empty(py);
                    self.shared.insert(*id, l.clone().into_any());
                    for i in items {
                        l.append(self.decode(i)?)?;
                    }
                    l.into_any()
                }
                Value::Dict(pairs) => {
                    let d = PyDict::new(py);
                    self.shared.insert(*id, d.clone().into_any());
                    for (k, v) in pairs {
                        d.set_item(self.decode(k)?, self.decode(v)?)?;
                    }
                    d.into_any()
                }
                other => {
                    let o = self.decode(other)?;
                    self.shared.insert(*id, o.clone());
                    o
                }
            },
            Value::Backref(id) => self.shared.get(id).cloned().ok_or_else(|| {
                PyValueError::new_err(format!(
                    "reference {id} to a structure not complete yet (a tuple holding itself)"
                ))
            })?,
            Value::DateTime(dt) => self.types.datetime.call1((
                dt.year,
                dt.month,
                dt.day,
                dt.time.hour,
                dt.time.minute,
                dt.time.second,
                dt.time.micro,
                self.tz(dt.time.utc_offset)?,
            ))?,
            Value::Date { year, month, day } => self.types.date.call1((*year, *month, *day))?,
            Value::Time(t) => self.types.time.call1((
                t.hour,
                t.minute,
                t.second,
                t.micro,
                self.tz(t.utc_offset)?,
            ))?,
            Value::TimeDelta {
                days,
                seconds,
                micros,
            } => self.types.timedelta.call1((*days, *seconds, *micros))?,
            Value::Custom { type_name, value } => {
                let inner = self.decode(value)?;
                let payload = PyTuple::new(py, [PyString::new(py, type_name).into_any(), inner])?;
                self.call_hook("custom", payload.into_any())?
            }
            Value::Ref(r) => self.call_hook("ref", ref_to_py(py, r)?.into_any())?,
            Value::Object(o) => {
                let fields = PyDict::new(py);
                for (k, v) in &o.fields {
                    fields.set_item(k, self.decode(v)?)?;
                }
                let refs = PyDict::new(py);
                for (k, r) in &o.refs {
                    match r {
                        Some(r) => refs.set_item(k, ref_to_py(py, r)?)?,
                        None => refs.set_item(k, py.None())?,
                    }
                }
                let payload = PyTuple::new(
                    py,
                    [
                        key_to_py(py, &o.key.key)?.into_any(),
                        PyBytes::new(py, &o.key.code).into_any(),
                        PyString::new(py, &o.class).into_any(),
                        fields.into_any(),
                        refs.into_any(),
                        PyList::new(py, &o.backrefs)?.into_any(),
                        PyList::new(py, &o.methods)?.into_any(),
                    ],
                )?;
                self.call_hook("object", payload.into_any())?
            }
        })
    }
}

/// `encode(value)` → bytes, for tests and custom transports.
#[pyfunction]
#[pyo3(name = "_broker_encode", signature = (value, hook = None))]
pub fn broker_encode<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    hook: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let v = Encoder::new(py, hook)?.encode(value)?;
    Ok(PyBytes::new(py, &octodb_broker::codec::encode(&v)))
}

/// `decode(bytes)` → value, under the broker's limits (a malformed input raises ValueError).
#[pyfunction]
#[pyo3(name = "_broker_decode", signature = (data, hook = None))]
pub fn broker_decode<'py>(
    py: Python<'py>,
    data: &[u8],
    hook: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let v = octodb_broker::codec::decode(data, &Default::default())
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Decoder::new(py, hook)?.decode(&v)
}
