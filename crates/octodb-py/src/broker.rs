//! `octodb.broker`'s core: the Rust broker server and client (crate octodb-broker) for the
//! Python classes in python/octodb/broker/. The server asks a Python handler for the
//! program's objects; the client hands decoded values to Python, which makes the proxies.

use crate::broker_codec::{key_from_py, key_to_py, ref_from_py, Decoder, Encoder};
use octodb_broker::protocol::{Op, SearchMode};
use octodb_broker::server::{Args, Loader, Peer, STATIC_LOADER};
use octodb_broker::sql::{follow_feed, Access};
use octodb_broker::{BrokerError, Client, Key, Notice, ObjectState, Server, SqlTables, Value};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pyo3::create_exception!(
    octodb,
    BrokerCallError,
    PyException,
    "A broker request failed: args are (kind, message); octodb.broker raises the typed error."
);

fn py_err(e: BrokerError) -> PyErr {
    let kind = octodb_broker::RemoteError::from(&e).kind;
    BrokerCallError::new_err((kind, e.detail()))
}

/// A Python exception raised by the program's code, as the client will see it: a builtin
/// exception or one of the broker's own by its name (the client raises the same type), any
/// other class by its name after `app:` (the client raises `RemoteError`): an app's own
/// `Unavailable` or `ConnectionError` reached clients as the broker's, which tell them to send
/// the request again, after the method had run (the Pyro5 walkthrough).
fn remote(py: Python<'_>, e: PyErr) -> BrokerError {
    let ty = e.get_type(py);
    let name = ty
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let module = ty.module().map(|m| m.to_string()).unwrap_or_default();
    let known = module == "builtins" || module.starts_with("octodb.broker");
    let kind = match known {
        true => name,
        false => format!("app:{name}"),
    };
    // A KeyError's text argument as it is: `str(KeyError("x"))` quotes it, and the client's
    // KeyError quoted it again.
    let value = e.value(py);
    let key_text = (kind == "KeyError")
        .then(|| {
            value
                .getattr("args")
                .and_then(|a| a.extract::<(String,)>())
                .ok()
        })
        .flatten();
    let message = match key_text {
        Some((text,)) => text,
        None => value.str().map(|s| s.to_string()).unwrap_or_default(),
    };
    match kind.as_str() {
        "PermissionError" => BrokerError::Permission(message),
        "ObjectNotFound" => BrokerError::NotFound(message),
        _ => BrokerError::Remote { kind, message },
    }
}

fn peer_dict<'py>(py: Python<'py>, peer: &Peer) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("node_id", peer.node_id)?;
    d.set_item("user_id", peer.user_id)?;
    d.set_item("public_key", &peer.public_key)?;
    d.set_item(
        "role",
        match peer.role {
            octodb::Role::Primary => "primary",
            octodb::Role::Secondary => "secondary",
        },
    )?;
    Ok(d)
}

/// The Python program's objects as a loader: each request calls a method of the handler
/// (`_fetch`, `_call`, `_backref`, `_search`) with the GIL held.
struct PyLoader {
    handler: Py<PyAny>,
}

impl PyLoader {
    fn with<T>(
        &self,
        f: impl for<'py> FnOnce(Python<'py>, &Bound<'py, PyAny>) -> PyResult<T>,
    ) -> Result<T, BrokerError> {
        Python::attach(|py| {
            let h = self.handler.bind(py);
            f(py, h).map_err(|e| remote(py, e))
        })
    }

    fn encode<'py>(&self, py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Value> {
        let hook = self.handler.bind(py).getattr("_encode_object")?;
        Encoder::new(py, Some(hook))?.encode(obj)
    }

    /// The handler's `_decode_value` for the values of `peer`'s request (it checks the
    /// references they hold against the exports' `allow`).
    fn decode_hook<'py>(&self, py: Python<'py>, peer: &Peer) -> PyResult<Bound<'py, PyAny>> {
        let partial = py.import("functools")?.getattr("partial")?;
        let hook = self.handler.bind(py).getattr("_decode_value")?;
        partial.call1((hook, peer_dict(py, peer)?))
    }

    fn decode_args<'py>(
        &self,
        py: Python<'py>,
        peer: &Peer,
        args: &Args,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let mut dec = Decoder::new(py, Some(self.decode_hook(py, peer)?))?;
        let pos = PyList::empty(py);
        for a in &args.positional {
            pos.append(dec.decode(a)?)?;
        }
        let kw = PyDict::new(py);
        for (k, v) in &args.keywords {
            kw.set_item(k, dec.decode(v)?)?;
        }
        Ok((pos.into_any(), kw.into_any()))
    }
}

impl Loader for PyLoader {
    fn fetch(&self, peer: &Peer, key: &Key) -> Result<ObjectState, BrokerError> {
        self.with(|py, h| {
            let answer = h.call_method1("_fetch", (peer_dict(py, peer)?, key_to_py(py, key)?))?;
            let t = answer.cast::<PyTuple>()?;
            let hook = h.getattr("_encode_object")?;
            Encoder::new(py, Some(hook))?.state(t, 0)
        })
    }

    fn call(&self, peer: &Peer, key: &Key, method: &str, args: Args) -> Result<Value, BrokerError> {
        self.with(|py, h| {
            let (pos, kw) = self.decode_args(py, peer, &args)?;
            let out = h.call_method1(
                "_call",
                (peer_dict(py, peer)?, key_to_py(py, key)?, method, pos, kw),
            )?;
            self.encode(py, &out)
        })
    }

    fn backref(&self, peer: &Peer, key: &Key, name: &str) -> Result<Vec<Value>, BrokerError> {
        self.with(|py, h| {
            let out = h.call_method1(
                "_backref",
                (peer_dict(py, peer)?, key_to_py(py, key)?, name),
            )?;
            match self.encode(py, &out)? {
                Value::List(items) => Ok(items),
                _ => Err(PyValueError::new_err("a list reference must give a list")),
            }
        })
    }

    fn search(
        &self,
        peer: &Peer,
        class: &str,
        eq: &[(String, Value)],
        limit: Option<u32>,
        mode: SearchMode,
    ) -> Result<Value, BrokerError> {
        self.with(|py, h| {
            let mut dec = Decoder::new(py, Some(self.decode_hook(py, peer)?))?;
            let d = PyDict::new(py);
            for (k, v) in eq {
                d.set_item(k, dec.decode(v)?)?;
            }
            let mode = match mode {
                SearchMode::Get => "get",
                SearchMode::Find => "find",
                SearchMode::Count => "count",
            };
            let out = h.call_method1("_search", (peer_dict(py, peer)?, class, d, limit, mode))?;
            self.encode(py, &out)
        })
    }
}

/// The broker server of a primary: `_BrokerServer(uri, service, handler)`.
#[pyclass(module = "octodb._octodb", name = "_BrokerServer")]
pub struct PyServer {
    server: Server,
    /// The server's own connection to the primary (kept open while it serves).
    conn: Mutex<Option<octodb::Connection>>,
    uri: String,
    tables: Mutex<Option<Arc<SqlTables>>>,
}

fn open(py: Python<'_>, uri: &str) -> PyResult<octodb::Connection> {
    let uri = uri.to_string();
    crate::logging_bridge::start(py);
    py.detach(move || octodb::Connection::open(&uri))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

#[pymethods]
impl PyServer {
    #[new]
    fn new(py: Python<'_>, uri: &str, service: &str, handler: Py<PyAny>) -> PyResult<PyServer> {
        let conn = open(py, uri)?;
        // Detached: starting loads or makes the broker's secret, a write that may wait for
        // the file's write lock (and for the cluster), which another thread of the program
        // may hold while it needs the GIL; a failed start drops the connection there too
        // (perhaps the node's last, whose shutdown joins its threads).
        let service = service.to_string();
        let server = py
            .detach(move || {
                let started = Server::start(&conn, &service);
                started.map(|server| (server, conn))
            })
            .map_err(py_err)?;
        let (server, conn) = server;
        let loader = Arc::new(PyLoader {
            handler: handler.clone_ref(py),
        });
        server.add_loader(STATIC_LOADER, loader);
        let calls = handler.clone_ref(py);
        server.set_fallback_call(Arc::new(move |peer: &Peer, name: &str, args: Args| {
            Python::attach(|py| {
                let loader = PyLoader {
                    handler: calls.clone_ref(py),
                };
                let run = || -> PyResult<Value> {
                    let (pos, kw) = loader.decode_args(py, peer, &args)?;
                    let out = calls
                        .bind(py)
                        .call_method1("_plain_call", (peer_dict(py, peer)?, name, pos, kw))?;
                    loader.encode(py, &out)
                };
                run().map_err(|e| remote(py, e))
            })
        }));
        Ok(PyServer {
            server,
            conn: Mutex::new(Some(conn)),
            uri: uri.to_string(),
            tables: Mutex::new(None),
        })
    }

    /// The static object clients get as `root`.
    fn set_root(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        self.server.set_root(key_from_py(key)?);
        Ok(())
    }

    /// `class` is searched through the Python handler (`_search`).
    fn add_class(&self, class: &str) {
        self.server.add_class(class, STATIC_LOADER);
    }

    fn invalidate(&self, keys: Vec<Bound<'_, PyAny>>) -> PyResult<()> {
        let keys: Vec<Key> = keys.iter().map(key_from_py).collect::<PyResult<_>>()?;
        self.server.invalidate(&keys);
        Ok(())
    }

    fn class_changed(&self, class: &str) {
        self.server.class_changed(class);
    }

    fn clients(&self) -> usize {
        self.server.clients()
    }

    /// Exports an SQL table of the primary's database as the class `name`.
    fn export_table(
        &self,
        py: Python<'_>,
        table: &str,
        name: &str,
        access: &str,
        hide: Vec<String>,
    ) -> PyResult<()> {
        let access = match access {
            "ro" => Access::ReadOnly,
            "rw" => Access::ReadWrite,
            "attrs" => Access::AttributesOnly,
            other => return Err(PyValueError::new_err(format!("unknown access {other}"))),
        };
        // The connections are opened before the slot is locked: opening releases the GIL, and
        // another thread waiting for the slot with the GIL held would never let it back.
        let existing = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let tables = match existing {
            Some(t) => t,
            None => {
                let (tables_conn, feed_conn) = (open(py, &self.uri)?, open(py, &self.uri)?);
                let mut slot = self.tables.lock().unwrap_or_else(|p| p.into_inner());
                match slot.as_ref() {
                    // (Another thread exported first: its tables stand; these connections
                    // close with the GIL released below.)
                    Some(t) => {
                        let t = t.clone();
                        drop(slot);
                        py.detach(move || drop((tables_conn, feed_conn)));
                        t
                    }
                    None => {
                        let t = SqlTables::new(tables_conn, &self.server);
                        follow_feed(&self.server, feed_conn).map_err(py_err)?;
                        *slot = Some(t.clone());
                        t
                    }
                }
            }
        };
        let hide: Vec<&str> = hide.iter().map(String::as_str).collect();
        let (table, name) = (table.to_string(), name.to_string());
        py.detach(move || tables.export(&table, &name, access, &hide))
            .map_err(py_err)
    }

    /// The backend's own writes to an exported table (obj_new / obj_update / obj_delete on
    /// SQL rows): `op` is "new" (values), "update" (rowid, values) or "delete" (rowid).
    #[pyo3(signature = (op, name, rowid = None, values = None))]
    fn sql_write(
        &self,
        py: Python<'_>,
        op: &str,
        name: &str,
        rowid: Option<i64>,
        values: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Option<i64>> {
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PyValueError::new_err("no table is exported"))?;
        let mut pairs = Vec::new();
        if let Some(d) = values {
            for (k, v) in d.iter() {
                pairs.push((k.extract::<String>()?, Encoder::new(py, None)?.encode(&v)?));
            }
        }
        let backend = Peer {
            node_id: 0,
            user_id: 0,
            public_key: String::new(),
            role: octodb::Role::Primary,
        };
        let key = |rowid: Option<i64>| -> PyResult<Key> {
            Ok(Key::new(
                name,
                [octodb_broker::KeyPart::Int(rowid.ok_or_else(|| {
                    PyValueError::new_err("a row's rowid is needed")
                })?)],
            ))
        };
        let name = name.to_string();
        match op {
            "new" => py
                .detach(move || tables.insert(&backend, &name, pairs))
                .map(|k| match k.parts.first() {
                    Some(octodb_broker::KeyPart::Int(i)) => Some(*i),
                    _ => None,
                })
                .map_err(py_err),
            "update" => {
                let key = key(rowid)?;
                py.detach(move || {
                    // The backend's update needs no old values: it takes the row as it is.
                    let current = tables.fetch(&backend, &key)?;
                    let changes = pairs
                        .into_iter()
                        .map(|(k, new)| {
                            let old = current.field(&k).cloned().unwrap_or(Value::None);
                            (k, old, new)
                        })
                        .collect();
                    tables.update(&backend, &key, changes)
                })
                .map(|()| None)
                .map_err(py_err)
            }
            "delete" => {
                let key = key(rowid)?;
                py.detach(move || tables.delete(&backend, &key))
                    .map(|()| None)
                    .map_err(py_err)
            }
            other => Err(PyValueError::new_err(format!("unknown write {other}"))),
        }
    }

    /// Runs `fn()` in one transaction of the exported tables' connection: a transaction at
    /// the outermost level, a SAVEPOINT inside another, rolled back alone when `fn` raises
    /// (the exception then propagates).
    fn sql_transaction(&self, py: Python<'_>, f: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PyValueError::new_err("no table is exported"))?;
        let failure: Mutex<Option<PyErr>> = Mutex::new(None);
        let out = py.detach(|| {
            tables.transaction(|_| {
                Python::attach(|py| match f.call0(py) {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        let err = BrokerError::Remote {
                            kind: "transaction".into(),
                            message: e.to_string(),
                        };
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        Err(err)
                    }
                })
            })
        });
        match out {
            Ok(v) => Ok(v),
            Err(e) => Err(failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_else(|| py_err(e))),
        }
    }

    /// Stops with the GIL released: the server's threads may be calling the program's
    /// loaders, which need it to finish.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The exported tables' connections go too, with the GIL released (dropped later by the
        // garbage collector, one could be the node's last, whose shutdown joins threads that
        // may need the GIL).
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner()).take();
        py.detach(move || {
            let stopped = conn.map_or(Ok(()), |c| self.server.stop(&c));
            drop(tables);
            stopped
        })
        .map_err(py_err)
    }
}

/// A client of a broker: `_BrokerClient(uri, service, timeout, decode_hook)`.
#[pyclass(module = "octodb._octodb", name = "_BrokerClient")]
pub struct PyClient {
    client: Client,
    hook: Py<PyAny>,
    /// The client's own connection to its node (kept open until `close`).
    conn: Mutex<Option<octodb::Connection>>,
}

impl PyClient {
    fn run<'py>(&self, py: Python<'py>, op: Op) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        let v = py.detach(move || client.request(op)).map_err(py_err)?;
        Decoder::new(py, Some(self.hook.bind(py).clone()))?.decode(&v)
    }

    fn encode_dict(py: Python<'_>, d: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        let v = Encoder::new(py, Some(ref_hook(py)?))?.encode(d)?;
        Ok(octodb_broker::codec::encode(&v))
    }
}

/// On the client, objects in arguments are proxies: their `_ref` is (key, code).
fn ref_hook(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static HOOK: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    HOOK.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("octodb.broker.client")?
                .getattr("_client_encode_object")?
                .unbind(),
        )
    })
    .map(|h| h.bind(py).clone())
}

#[pymethods]
impl PyClient {
    #[new]
    fn new(
        py: Python<'_>,
        uri: &str,
        service: &str,
        timeout: f64,
        hook: Py<PyAny>,
    ) -> PyResult<PyClient> {
        let conn = open(py, uri)?;
        let service = service.to_string();
        let (client, conn) = py
            .detach(move || {
                // The first connection and every request wait at most `timeout`.
                let timeout = Duration::from_secs_f64(timeout.max(0.0));
                let c = Client::connect(&conn, &service, timeout);
                c.map(|c| {
                    c.set_request_timeout(timeout);
                    (c, conn)
                })
            })
            .map_err(py_err)?;
        Ok(PyClient {
            client,
            hook,
            conn: Mutex::new(Some(conn)),
        })
    }

    fn root<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, Op::Root)
    }

    fn fetch<'py>(&self, py: Python<'py>, r: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.run(
            py,
            Op::Fetch {
                target: ref_from_py(r)?,
            },
        )
    }

    /// `target` is (key, code) or None for a plain call.
    fn call<'py>(
        &self,
        py: Python<'py>,
        target: Option<Bound<'py, PyAny>>,
        method: &str,
        args: Bound<'py, PyAny>,
        kwargs: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let encode = |v: &Bound<'py, PyAny>| -> PyResult<Value> {
            Encoder::new(py, Some(ref_hook(py)?))?.encode(v)
        };
        let positional = match encode(&args)? {
            Value::List(items) | Value::Tuple(items) => items,
            _ => return Err(PyValueError::new_err("args must be a list or tuple")),
        };
        let keywords = match encode(&kwargs)? {
            Value::Dict(pairs) => pairs
                .into_iter()
                .map(|(k, v)| match k {
                    Value::Str(s) => Ok((s, v)),
                    _ => Err(PyValueError::new_err("keyword names are str")),
                })
                .collect::<PyResult<Vec<_>>>()?,
            _ => return Err(PyValueError::new_err("kwargs must be a dict")),
        };
        let target = target.map(|t| ref_from_py(&t)).transpose()?;
        let args = octodb_broker::client::encode_args(positional, keywords);
        self.run(
            py,
            Op::Call {
                target,
                method: method.to_string(),
                args,
            },
        )
    }

    fn backref<'py>(
        &self,
        py: Python<'py>,
        r: &Bound<'py, PyAny>,
        name: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(
            py,
            Op::BackRef {
                target: ref_from_py(r)?,
                name: name.to_string(),
            },
        )
    }

    #[pyo3(signature = (class_name, eq, limit, mode))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        class_name: &str,
        eq: Bound<'py, PyAny>,
        limit: Option<u32>,
        mode: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mode = match mode {
            "get" => SearchMode::Get,
            "find" => SearchMode::Find,
            "count" => SearchMode::Count,
            other => return Err(PyValueError::new_err(format!("unknown search {other}"))),
        };
        self.run(
            py,
            Op::Search {
                class: class_name.to_string(),
                eq: Self::encode_dict(py, &eq)?,
                limit,
                mode,
            },
        )
    }

    fn create<'py>(
        &self,
        py: Python<'py>,
        class_name: &str,
        values: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(
            py,
            Op::New {
                class: class_name.to_string(),
                values: Self::encode_dict(py, &values)?,
            },
        )
    }

    /// `changes`: {field: (old, new)}.
    fn update<'py>(
        &self,
        py: Python<'py>,
        r: &Bound<'py, PyAny>,
        changes: Bound<'py, PyAny>,
    ) -> PyResult<()> {
        self.run(
            py,
            Op::Update {
                target: ref_from_py(r)?,
                changes: Self::encode_dict(py, &changes)?,
            },
        )
        .map(|_| ())
    }

    fn delete(&self, py: Python<'_>, r: &Bound<'_, PyAny>) -> PyResult<()> {
        self.run(
            py,
            Op::Delete {
                target: ref_from_py(r)?,
            },
        )
        .map(|_| ())
    }

    fn epoch(&self) -> u64 {
        self.client.epoch()
    }

    /// (keys, classes, everything) changed since the last call.
    fn take_changes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let c = self.client.take_changes();
        let keys = PyList::empty(py);
        for k in &c.keys {
            keys.append(key_to_py(py, k)?)?;
        }
        let classes: Vec<String> = c.classes.into_iter().collect();
        PyTuple::new(
            py,
            [
                keys.into_any(),
                PyList::new(py, classes)?.into_any(),
                pyo3::types::PyBool::new(py, c.everything)
                    .to_owned()
                    .into_any(),
            ],
        )
    }

    /// `callback(kind, payload)` on the client's notices thread: ("invalidated", [keys]),
    /// ("class", name), ("reconnected", None).
    fn set_listener(&self, callback: Py<PyAny>) {
        self.client.set_listener(move |n| {
            Python::attach(|py| {
                let args = match &n {
                    Notice::Invalidated(keys) => {
                        let l = PyList::empty(py);
                        for k in keys {
                            if let Ok(t) = key_to_py(py, k) {
                                let _ = l.append(t);
                            }
                        }
                        ("invalidated", l.into_any())
                    }
                    Notice::ClassChanged(c) => (
                        "class",
                        c.into_pyobject(py)
                            .map(|s| s.into_any())
                            .unwrap_or_else(|_| py.None().into_bound(py)),
                    ),
                    Notice::Reconnected => ("reconnected", py.None().into_bound(py)),
                };
                if let Err(e) = callback.call1(py, args) {
                    e.print(py);
                }
            })
        });
    }

    fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// Closes with the GIL released: the client's notices thread may be calling a listener,
    /// which needs it to finish.
    fn close(&self, py: Python<'_>) {
        // (Its connection too: dropped later by the garbage collector, with the GIL held, it
        // could be the node's last, whose shutdown joins threads that may need the GIL.)
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        py.detach(move || {
            self.client.close();
            drop(conn);
        });
    }
}

pub fn add_to_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyServer>()?;
    m.add_class::<PyClient>()?;
    // Underscored: `from octodb._octodb import *` leaves them out of `octodb` (they belong to
    // `octodb.broker`).
    m.add("_BrokerCallError", m.py().get_type::<BrokerCallError>())?;
    m.add_function(wrap_pyfunction!(crate::broker_codec::broker_encode, m)?)?;
    m.add_function(wrap_pyfunction!(crate::broker_codec::broker_decode, m)?)?;
    Ok(())
}
