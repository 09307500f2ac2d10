"""octodb.broker: live exported objects, references and methods over the node network.

A primary exports objects (and SQL tables) with a :class:`BrokerServer`; devices use them
through a :class:`BrokerClient`, which caches them by key and is told when they change::

    # on the primary
    broker = BrokerServer("file:backend.db?node=primary&bind=tcp://0.0.0.0:1234")
    broker.export_class(Status, "servers load health")
    broker.export_object(root, "version_string version_tuple login", refs="status")
    broker.add_static(root, "root")
    broker.add_static(root.status, "status")
    broker.root = root
    broker.obj_update(root.status, health="poor")      # clients holding it are told

    # on a device
    client = BrokerClient(device_uri)
    client.root.status.health                            # "poor"
    client.call("hello", "you")                          # runs the server's do_hello

The channel is the node's own (protocol 6 service channel): only approved nodes reach the
broker, and the server knows each request's node and user. See docs/broker.md.
"""

import inspect
import threading

from octodb import _octodb

__all__ = [
    "BrokerServer",
    "BrokerClient",
    "Field",
    "Ref",
    "BackRef",
    "Callable",
    "exported",
    "register_codec",
    "BrokerError",
    "NoData",
    "ManyData",
    "ObjectNotFound",
    "Conflict",
    "RemoteError",
    "encode",
    "decode",
]

# --- errors -------------------------------------------------------------------------------


class BrokerError(Exception):
    """A broker request failed."""


class NoData(BrokerError, LookupError):
    """``get`` found nothing."""


class ManyData(BrokerError, LookupError):
    """``get`` found more than one object."""


class ObjectNotFound(BrokerError, LookupError):
    """The object was deleted, or never existed."""


class Conflict(BrokerError):
    """An update carried an old value the object no longer has: fetch it again and retry."""


class RemoteError(BrokerError):
    """An error raised by the server's code, of a type this side does not know."""

    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


_KINDS = {
    "NoData": NoData,
    "ManyData": ManyData,
    "NotFound": ObjectNotFound,
    "ObjectNotFound": ObjectNotFound,
    "Conflict": Conflict,
}


def _typed(error):
    """The typed exception for a BrokerCallError (kind, message)."""
    kind, message = error.args
    if kind in _KINDS:
        return _KINDS[kind](message)
    builtin = __builtins__.get(kind) if isinstance(__builtins__, dict) else getattr(__builtins__, kind, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        try:
            return builtin(message)
        except Exception:
            pass
    return RemoteError(kind, message)


def _core(call, *args):
    try:
        return call(*args)
    except _octodb._BrokerCallError as e:
        raise _typed(e) from None


# --- codecs -------------------------------------------------------------------------------

_codecs_by_type = {}
_codecs_by_name = {}


def register_codec(cls, name, encode, decode):
    """Send values of ``cls`` as ``encode(value)`` (any broker value) under ``name``; the other
    side (which registers the same name) rebuilds them with ``decode(encoded)``."""
    _codecs_by_type[cls] = (name, encode)
    _codecs_by_name[name] = decode


def _custom(obj):
    for cls in type(obj).__mro__:
        if cls in _codecs_by_type:
            name, enc = _codecs_by_type[cls]
            return ("custom", name, enc(obj))
    return None


def _decode_custom(payload):
    name, value = payload
    dec = _codecs_by_name.get(name)
    if dec is None:
        raise TypeError(f"no codec registered for {name!r}: register_codec it on this side too")
    return dec(value)


def encode(value):
    """The broker's encoding of ``value`` (registered codecs apply)."""

    def hook(obj):
        c = _custom(obj)
        if c is None:
            raise TypeError(f"cannot send a {type(obj).__name__}: register a codec for it")
        return c

    return _octodb._broker_encode(value, hook)


def decode(data):
    """The value ``data`` encodes; malformed or hostile bytes raise ValueError."""

    def hook(kind, payload):
        if kind == "custom":
            return _decode_custom(payload)
        return payload

    return _octodb._broker_decode(data, hook)


# --- export descriptions ------------------------------------------------------------------


class _Attr:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class Field(_Attr):
    """A plain value."""


class Ref(_Attr):
    """A reference to one exported object."""


class BackRef(_Attr):
    """A list of exported objects, fetched when first used."""


class Callable(_Attr):
    """A method the client may call."""


def exported(fn=None, *, include=False):
    """Marks a method as exported (for the ``'+'`` form of ``export_class``); ``include=True``
    sends the objects it returns whole instead of as references."""

    def mark(f):
        f._broker_exported = True
        f._broker_include = include
        return f

    return mark(fn) if fn is not None else mark


class _Info:
    """What of a class (or object) is exported."""

    def __init__(self, name, allow=None):
        self.name = name
        self.fields = []
        self.refs = []
        self.backrefs = []
        self.methods = []
        self.allow = allow

    def add(self, attr):
        target = {Field: self.fields, Ref: self.refs, BackRef: self.backrefs, Callable: self.methods}[type(attr)]
        if attr.name not in target:
            target.append(attr.name)


def _names(spec):
    if spec is None:
        return []
    if isinstance(spec, str):
        return spec.split()
    return list(spec)


def _describe(info, subject, attrs, refs, backrefs):
    cls = subject if isinstance(subject, type) else type(subject)
    for a in _names(attrs):
        if isinstance(a, _Attr):
            info.add(a)
        elif a == "+":
            for name, member in inspect.getmembers(cls):
                if getattr(member, "_broker_exported", False):
                    info.add(Callable(name))
        elif a == "*":
            for name, member in inspect.getmembers(cls):
                if name.startswith("_"):
                    continue
                if callable(member) or isinstance(inspect.getattr_static(cls, name, None), (classmethod, staticmethod)):
                    info.add(Callable(name))
                else:
                    info.add(Field(name))
            if not isinstance(subject, type):
                for name in vars(subject):
                    if not name.startswith("_"):
                        info.add(Field(name))
        else:
            member = getattr(cls, a, None)
            info.add(Callable(a) if callable(member) and not isinstance(member, type) else Field(a))
    for r in _names(refs):
        info.add(r if isinstance(r, _Attr) else Ref(r))
    for r in _names(backrefs):
        info.add(r if isinstance(r, _Attr) else BackRef(r))
    # Names given as fields that hold exported objects are references.
    return info


# --- server -------------------------------------------------------------------------------


class _SqlRow:
    """A row of an exported SQL table, as the backend names it: ``broker.row("todos", 5)``."""

    def __init__(self, export, rowid):
        self.export = export
        self.rowid = rowid

    def __repr__(self):
        return f"<row {self.rowid} of {self.export}>"


class SqlClass:
    """An exported SQL table on the server (what ``export_table`` returns)."""

    def __init__(self, broker, name):
        self._broker = broker
        self.name = name

    def row(self, rowid):
        return _SqlRow(self.name, rowid)


class BrokerServer:
    """The broker of a primary. ``uri`` is the primary's (the node already open in this process
    is shared). Subclass it and define ``do_<name>`` methods, or use ``add_call``, for plain
    calls."""

    def __init__(self, uri, service="broker"):
        self._lock = threading.RLock()
        self._static = {}  # key parts -> object
        self._keys = {}  # id(object) -> key tuple
        self._class_infos = {}  # class -> _Info
        self._object_infos = {}  # id(object) -> _Info
        self._calls = {}
        self._root = None
        self._sql = {}
        self._core = _core(_octodb._BrokerServer, uri, service, self)

    # exports

    def export_class(self, cls, attrs=None, refs=None, backrefs=None, name=None, allow=None):
        """Exports instances of ``cls``: ``attrs`` names fields and methods (a string of names,
        an iterable of names or Field/Ref/BackRef/Callable, ``'+'`` for the methods marked
        ``@exported``, ``'*'`` for every public attribute); ``allow(user_id, obj)`` limits
        them to certain users. ``name`` (default: the class's name) is what clients search."""
        info = _describe(_Info(name or cls.__name__, allow), cls, attrs, refs, backrefs)
        with self._lock:
            self._class_infos[cls] = info
        self._core.add_class(info.name)
        return info

    def export_object(self, obj, attrs=None, refs=None, backrefs=None, allow=None):
        """Exports one object with its own description (as ``export_class`` for a class)."""
        base = self._info_of(obj, required=False)
        info = _Info(base.name if base else type(obj).__name__, allow)
        if base:
            for kind in ("fields", "refs", "backrefs", "methods"):
                getattr(info, kind).extend(getattr(base, kind))
        _describe(info, obj, attrs, refs, backrefs)
        with self._lock:
            self._object_infos[id(obj)] = info
        return info

    def add_static(self, obj, *key):
        """Gives ``obj`` the stable key ``('static', *key)`` (parts are str or int): clients
        reach it by that key, also after a restart of the server."""
        if not key:
            raise ValueError("add_static(obj, *key) needs at least one key part")
        full = ("static",) + tuple(key)
        with self._lock:
            self._static[full[1:]] = obj
            self._keys[id(obj)] = full
            if id(obj) not in self._object_infos and self._info_of(obj, required=False) is None:
                # An object of a class not exported: every public attribute.
                self.export_object(obj, "*")
        return full

    def del_static(self, obj, *key):
        with self._lock:
            self._static.pop(tuple(key), None)
            if self._keys.get(id(obj)) == ("static",) + tuple(key):
                del self._keys[id(obj)]

    @property
    def root(self):
        return self._root

    @root.setter
    def root(self, obj):
        key = self._keys.get(id(obj)) or self.add_static(obj, "root")
        self._root = obj
        self._core.set_root(key)

    def add_call(self, name, fn):
        """``call(name, ...)`` on a client runs ``fn(...)`` here."""
        self._calls[name] = fn

    def export_table(self, table, name=None, rw=False, hide=()):
        """Exports an SQL table of the primary's database as a class: ``rw=False`` read-only
        (get/find/count), ``True`` read-write (also new, update, delete), ``None`` attributes
        only. ``hide`` columns are never sent (sync still carries them to the row owner's
        devices unless the table is ``private_``)."""
        access = {False: "ro", True: "rw", None: "attrs"}[rw]
        name = name or table
        _core(self._core.export_table, table, name, access, list(hide))
        self._sql[name] = SqlClass(self, name)
        return self._sql[name]

    def row(self, export, rowid):
        return _SqlRow(export, rowid)

    def transaction(self, fn, *args, **kwargs):
        """Runs ``fn(*args, **kwargs)`` in one transaction of the exported tables (their
        ``obj_new``/``obj_update``/``obj_delete``); a transaction inside another is a
        SAVEPOINT: when ``fn`` raises, only its own part is rolled back, and the exception
        propagates. Returns what ``fn`` returns."""
        return self._core.sql_transaction(lambda: fn(*args, **kwargs))

    # changes

    def obj_update(self, obj, **changes):
        """Changes attributes of an exported object (static or an SQL row) and tells every
        client that holds it, before any reply sent after this call."""
        if isinstance(obj, _SqlRow):
            _core(self._core.sql_write, "update", obj.export, obj.rowid, changes)
            return obj
        for k, v in changes.items():
            setattr(obj, k, v)
        self._announce(obj)
        return obj

    def obj_new(self, obj_or_cls, *key, **values):
        """A new object: an instance of a class (made with ``values``), an object, or a row
        of an exported SQL class (``obj_new(sql_class, **values)``). With ``key``, it is added
        as a static object. Clients that searched its class are told."""
        if isinstance(obj_or_cls, SqlClass):
            rowid = _core(self._core.sql_write, "new", obj_or_cls.name, None, values)
            return _SqlRow(obj_or_cls.name, rowid)
        obj = obj_or_cls() if isinstance(obj_or_cls, type) else obj_or_cls
        for k, v in values.items():
            setattr(obj, k, v)
        if key:
            self.add_static(obj, *key)
        info = self._info_of(obj, required=False)
        if info is not None:
            self._core.class_changed(info.name)
        return obj

    def obj_delete(self, obj):
        """The object is gone: clients holding it are told, and fetching it answers
        ObjectNotFound."""
        if isinstance(obj, _SqlRow):
            _core(self._core.sql_write, "delete", obj.export, obj.rowid, None)
            return
        key = self._keys.get(id(obj))
        with self._lock:
            if key is not None:
                self._static.pop(key[1:], None)
                del self._keys[id(obj)]
        self._announce(obj, key)

    def _announce(self, obj, key=None):
        key = key or self._keys.get(id(obj))
        if key is not None:
            self._core.invalidate([key])
        info = self._info_of(obj, required=False)
        if info is not None:
            self._core.class_changed(info.name)

    def stop(self):
        self._core.stop()

    def clients(self):
        return self._core.clients()

    # what the Rust core asks

    def _info_of(self, obj, required=True):
        info = self._object_infos.get(id(obj))
        if info is None:
            for cls in type(obj).__mro__:
                info = self._class_infos.get(cls)
                if info is not None:
                    break
        if info is None and required:
            raise TypeError(f"{type(obj).__name__} is not exported: export_class or export_object it")
        return info

    def _object(self, peer, key):
        with self._lock:
            obj = self._static.get(tuple(key[1:]))
        if obj is None:
            raise ObjectNotFound(f"{key} was deleted, or never existed")
        info = self._info_of(obj)
        if info.allow is not None and not info.allow(peer["user_id"], obj):
            raise PermissionError(f"{key} is not shared with user {peer['user_id']}")
        return obj, info

    def _state(self, obj, info, key):
        fields, refs = {}, {}
        for name in info.fields:
            value = getattr(obj, name, None)
            if id(value) in self._keys:
                refs[name] = self._keys[id(value)]
            else:
                fields[name] = value
        for name in info.refs:
            value = getattr(obj, name, None)
            refs[name] = None if value is None else self._key_of(value)
        methods = list(info.methods)
        return ("whole", key, info.name, fields, refs, list(info.backrefs), methods)

    def _key_of(self, obj):
        key = self._keys.get(id(obj))
        if key is None:
            raise TypeError(
                f"a {type(obj).__name__} without a key cannot be sent: add_static(obj, ...) it first"
            )
        return key

    def _fetch(self, peer, key):
        obj, info = self._object(peer, key)
        return self._state(obj, info, key)

    def _call(self, peer, key, method, args, kwargs):
        obj, info = self._object(peer, key)
        if method not in info.methods:
            raise AttributeError(f"{info.name} exports no method {method!r}")
        result = getattr(obj, method)(*args, **kwargs)
        fn = getattr(type(obj), method, None)
        if getattr(fn, "_broker_include", False):
            return _Whole(result)
        return result

    def _backref(self, peer, key, name):
        obj, info = self._object(peer, key)
        if name not in info.backrefs:
            raise AttributeError(f"{info.name} has no list {name!r}")
        return list(getattr(obj, name, None) or [])

    def _plain_call(self, peer, name, args, kwargs):
        fn = self._calls.get(name) or getattr(self, "do_" + name, None)
        if fn is None:
            raise AttributeError(f"the server has no call named {name!r}")
        return fn(*args, **kwargs)

    def _search(self, peer, class_name, eq, limit, mode):
        with self._lock:
            candidates = [o for o in self._static.values() if (self._info_of(o, False) or _Info(None)).name == class_name]
        found = []
        for o in candidates:
            info = self._info_of(o)
            if info.allow is not None and not info.allow(peer["user_id"], o):
                continue
            if all(getattr(o, k, _MISSING) == v for k, v in eq.items()):
                found.append(o)
        if mode == "count":
            return len(found)
        if mode == "get":
            if not found:
                raise NoData(f"no {class_name} matches {eq}")
            if len(found) > 1:
                raise ManyData(f"{len(found)} objects of {class_name} match {eq}, expected one")
            return [_Whole(found[0])]
        found = found[:limit] if limit is not None else found
        small = len(found) <= 10
        return [_Whole(o) if small else o for o in found]

    def _encode_object(self, obj):
        if isinstance(obj, _Whole):
            inner = obj.obj
            key = self._key_of(inner)
            return self._state(inner, self._info_of(inner), key)
        if isinstance(obj, _SqlRow):
            return ("ref", (obj.export, obj.rowid))
        key = self._keys.get(id(obj))
        if key is not None:
            return ("ref", key)
        custom = _custom(obj)
        if custom is not None:
            return custom
        return ("ref", self._key_of(obj))

    def _decode_value(self, kind, payload):
        if kind == "custom":
            return _decode_custom(payload)
        if kind in ("ref", "object"):
            key = payload[0]
            with self._lock:
                obj = self._static.get(tuple(key[1:])) if key[0] == "static" else None
            return obj if obj is not None else _SqlRow(key[0], key[1]) if len(key) == 2 else key
        return payload


_MISSING = object()


class _Whole:
    """A method's result sent whole (``@exported(include=True)``)."""

    def __new__(cls, obj):
        if isinstance(obj, (list, tuple)):
            return type(obj)(_Whole(o) for o in obj)
        self = super().__new__(cls)
        self.obj = obj
        return self


# --- client -------------------------------------------------------------------------------


def _client_encode_object(obj):
    """Proxies in a call's arguments travel as their references."""
    if isinstance(obj, Proxy):
        key, code = object.__getattribute__(obj, "_ref")
        return ("ref", key, code)
    custom = _custom(obj)
    if custom is not None:
        return custom
    raise TypeError(f"cannot send a {type(obj).__name__}: register a codec for it")


class Proxy:
    """A client's copy of an exported object. Fields read from the copy; references fetch
    their object once (then from the cache); methods run on the server. When the server
    changes the object, this copy becomes obsolete (``_obsolete``) and keeps its old values;
    references reaching the object again get a fresh copy."""

    __slots__ = ("_client", "_ref", "_class", "_fields", "_refs", "_backrefs", "_methods", "_lists", "_obsolete", "__weakref__")

    def __init__(self, client, ref, class_name, fields, refs, backrefs, methods):
        s = object.__setattr__
        s(self, "_client", client)
        s(self, "_ref", ref)
        s(self, "_class", class_name)
        s(self, "_fields", fields)
        s(self, "_refs", refs)
        s(self, "_backrefs", backrefs)
        s(self, "_methods", methods)
        s(self, "_lists", {})
        s(self, "_obsolete", False)

    def __getattr__(self, name):
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return fields[name]
        client = object.__getattribute__(self, "_client")
        refs = object.__getattribute__(self, "_refs")
        if name in refs:
            r = refs[name]
            return None if r is None else client._object(r)
        if name in object.__getattribute__(self, "_backrefs"):
            client._sync()
            lists = object.__getattribute__(self, "_lists")
            if object.__getattribute__(self, "_obsolete") or name not in lists:
                lists[name] = client._run(client._core.backref, object.__getattribute__(self, "_ref"), name)
            return lists[name]
        if name in object.__getattribute__(self, "_methods"):
            ref = object.__getattribute__(self, "_ref")

            def method(*args, **kwargs):
                return client._run(client._core.call, ref, name, list(args), kwargs)

            method.__name__ = name
            return method
        raise AttributeError(f"{object.__getattribute__(self, '_class')} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError("broker objects are changed on the server: use client.update(obj, ...)")

    @property
    def _key(self):
        """The object's key; calling it gives the current copy (``root = root._key()``)."""
        client = object.__getattribute__(self, "_client")
        ref = object.__getattribute__(self, "_ref")
        return _KeyHandle(client, ref)

    def __getattribute__(self, name):
        if name == "_obsolete":
            client = object.__getattribute__(self, "_client")
            client._sync()
        return object.__getattribute__(self, name)

    def __repr__(self):
        key = object.__getattribute__(self, "_ref")[0]
        return f"<{object.__getattribute__(self, '_class')} {key}>"

    def __dir__(self):
        g = object.__getattribute__
        return sorted(set(g(self, "_fields")) | set(g(self, "_refs")) | set(g(self, "_backrefs")) | set(g(self, "_methods")))


class _KeyHandle(tuple):
    def __new__(cls, client, ref):
        self = super().__new__(cls, ref[0])
        self._client = client
        self._r = ref
        return self

    def __call__(self):
        return self._client._object(self._r)


class ClassProxy:
    """An exported class on the client: ``get``, ``find``, ``count`` and ``new``."""

    def __init__(self, client, name):
        self._client = client
        self.name = name

    def get(self, **eq):
        return self._client.get(self.name, **eq)

    def find(self, _limit=None, **eq):
        return self._client.find(self.name, _limit=_limit, **eq)

    def count(self, **eq):
        return self._client.count(self.name, **eq)

    def new(self, **values):
        return self._client.new(self.name, **values)

    def __repr__(self):
        return f"<class {self.name}>"


class BrokerClient:
    """A client of the broker on this node's primary. ``db`` is the node's URI (a device's,
    usually; the node already open in this process is shared) or an ``octodb.Connection``
    opened with one."""

    def __init__(self, db, service="broker", timeout=30.0):
        if not isinstance(db, str):
            raise TypeError("BrokerClient(uri): give the node's URI (file:...?node=secondary&connect=...)")
        uri = db
        self._lock = threading.RLock()
        self._objects = {}  # key -> Proxy (the current copy)
        self._searches = {}  # (class, eq, limit, mode) -> result
        self._watchers = {}  # key or class name -> [callbacks]
        self._root = None
        self._root_key = None
        self._core = _core(_octodb._BrokerClient, uri, service, timeout, self._decode)
        self._epoch = self._core.epoch()
        self._core.set_listener(self._notice)

    # what the server sent

    def _decode(self, kind, payload):
        if kind == "custom":
            return _decode_custom(payload)
        if kind == "object":
            key, code, class_name, fields, refs, backrefs, methods = payload
            with self._lock:
                proxy = Proxy(self, (key, code), class_name, fields, refs, backrefs, methods)
                self._objects[key] = proxy
            return proxy
        if kind == "ref":
            return _LazyRef(payload)
        return payload

    def _resolve(self, value):
        """References in a reply become their objects (fetched once, then cached)."""
        if isinstance(value, _LazyRef):
            return self._object(value.ref)
        if type(value) is list:
            return [self._resolve(v) for v in value]
        if type(value) is tuple:
            return tuple(self._resolve(v) for v in value)
        if type(value) is dict:
            return {k: self._resolve(v) for k, v in value.items()}
        return value

    def _run(self, call, *args):
        out = _core(call, *args)
        self._sync()
        return self._resolve(out)

    def _sync(self):
        """Applies the invalidations that arrived (before any reply that followed them)."""
        epoch = self._core.epoch()
        if epoch == self._epoch:
            return
        self._epoch = epoch
        keys, classes, everything = self._core.take_changes()
        with self._lock:
            if everything:
                gone = list(self._objects.values())
                self._objects.clear()
                self._searches.clear()
            else:
                gone = [self._objects.pop(k) for k in keys if k in self._objects]
                for s in [s for s in self._searches if s[0] in classes]:
                    del self._searches[s]
        for p in gone:
            object.__setattr__(p, "_obsolete", True)

    def _object(self, ref):
        """The current copy of the object behind ``ref``: from the cache, else fetched."""
        self._sync()
        key = ref[0]
        with self._lock:
            proxy = self._objects.get(key)
        if proxy is not None:
            return proxy
        return _core(self._core.fetch, ref)

    # the API

    @property
    def root(self):
        """The server's root object (fetched once; its copy is renewed when it changes)."""
        if self._root_key is None:
            self._sync()
            root = _core(self._core.root)
            self._root_key = object.__getattribute__(root, "_ref")
            return root
        return self._object(self._root_key)

    def call(self, name, *args, **kwargs):
        """A plain server call: ``call("hello", "you")`` runs the server's ``do_hello``."""
        return self._run(self._core.call, None, name, list(args), kwargs)

    def cls(self, name):
        return ClassProxy(self, name)

    def _search(self, class_name, eq, limit, mode):
        self._sync()
        key = (class_name, tuple(sorted(eq.items(), key=lambda kv: kv[0])), limit, mode)
        try:
            hash(key)
        except TypeError:
            key = None
        if key is not None:
            with self._lock:
                if key in self._searches:
                    return self._searches[key]
        result = self._run(self._core.search, class_name, eq, limit, mode)
        if key is not None:
            with self._lock:
                self._searches[key] = result
        return result

    def get(self, class_name, **eq):
        """The one object of the class whose fields equal ``eq``: NoData / ManyData else."""
        return self._search(class_name, eq, None, "get")[0]

    def find(self, class_name, _limit=None, **eq):
        """The objects whose fields equal ``eq`` (at most ``_limit``)."""
        return list(self._search(class_name, eq, _limit, "find"))

    def count(self, class_name, **eq):
        return self._search(class_name, eq, None, "count")

    def new(self, class_name, **values):
        """A new object of a writable class."""
        return self._run(self._core.create, class_name, values)

    def update(self, obj, **changes):
        """Changes fields of ``obj``; each carries the value this copy holds, and the server
        refuses it (Conflict) if the object changed meanwhile."""
        fields = object.__getattribute__(obj, "_fields")
        sent = {k: (fields.get(k), v) for k, v in changes.items()}
        _core(self._core.update, object.__getattribute__(obj, "_ref"), sent)
        self._sync()

    def delete(self, obj):
        _core(self._core.delete, object.__getattribute__(obj, "_ref"))
        self._sync()

    def on_change(self, obj_or_class, callback):
        """``callback(new_copy_or_None)`` when the object changes (None: deleted), or
        ``callback(class_name)`` when objects of a class change (a class name or ClassProxy).
        Called on the client's notices thread."""
        if isinstance(obj_or_class, Proxy):
            ref = object.__getattribute__(obj_or_class, "_ref")
            self._watchers.setdefault(ref[0], []).append((ref, callback))
        else:
            name = obj_or_class.name if isinstance(obj_or_class, ClassProxy) else obj_or_class
            self._watchers.setdefault(name, []).append((None, callback))
            # The server tells a client of a class it searched.
            self.count(name)

    def _notice(self, kind, payload):
        if kind == "invalidated":
            for key in payload:
                for ref, cb in list(self._watchers.get(key, [])):
                    try:
                        new = self._object(ref)
                    except ObjectNotFound:
                        new = None
                    cb(new)
        elif kind == "class":
            for _, cb in list(self._watchers.get(payload, [])):
                cb(payload)
        elif kind == "reconnected":
            for key, watchers in list(self._watchers.items()):
                for ref, cb in watchers:
                    if ref is None:
                        self.count(key)
                        cb(key)
                    else:
                        try:
                            cb(self._object(ref))
                        except ObjectNotFound:
                            cb(None)

    @property
    def connected(self):
        return self._core.is_connected()

    def close(self):
        self._core.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LazyRef:
    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref
