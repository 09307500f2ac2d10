"""The broker's server: exports, statics, SQL tables as classes, invalidations."""

import inspect
import logging
import threading
import traceback

from octodb import _octodb
from octodb.broker._common import ManyData, NoData, ObjectNotFound, _core, _custom, _decode_custom

_request = threading.local()
_log = logging.getLogger("octodb.broker.server")


def caller():
    """The node a request comes from, while the server runs an exported method or a plain call
    for it (``{"node_id": ..., "user_id": ..., "public_key": ..., "role": ...}``); None outside
    a request. Plain calls (``do_<name>``, ``add_call``) and exported methods run for every
    approved node that asks: a call that only some users may make checks
    ``caller()["user_id"]`` itself."""
    peer = getattr(_request, "peer", None)
    return dict(peer) if peer is not None else None


class _calling:
    """Makes ``peer`` the :func:`caller` for the duration of a method or call (restoring the
    one before: a call made from inside another's method). An exception the program's code
    raises is logged here with its traceback, which stays on the server: the client gets its
    type and message."""

    def __init__(self, peer, what):
        self.peer = peer
        self.what = what

    def __enter__(self):
        self.before = getattr(_request, "peer", None)
        _request.peer = self.peer

    def __exit__(self, kind, error, tb):
        _request.peer = self.before
        if isinstance(error, Exception):
            # As text: a kept record must not hold the request's frames.
            _log.warning(
                "%s for node %s failed:\n%s",
                self.what,
                self.peer.get("node_id") if isinstance(self.peer, dict) else self.peer,
                "".join(traceback.format_exception(kind, error, tb)).rstrip(),
            )
        return False


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
        elif a in ("*", "*fields"):
            # "*fields": the data attributes only (what an object added without an export shows).
            methods = a == "*"
            for name, member in inspect.getmembers(cls):
                if name.startswith("_"):
                    continue
                if callable(member) or isinstance(inspect.getattr_static(cls, name, None), (classmethod, staticmethod)):
                    if methods:
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
                # An object of a class not exported: its public data attributes; methods are
                # called only when exported explicitly.
                self.export_object(obj, "*fields")
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
            raise ObjectNotFound(str(key))
        info = self._info_of(obj)
        self._check_allowed(peer, obj, info, key)
        return obj, info

    @staticmethod
    def _check_allowed(peer, obj, info, key):
        if info.allow is not None and not info.allow(peer["user_id"], obj):
            raise PermissionError(f"{tuple(key)} is not shared with user {peer['user_id']}")

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
                f"cannot send a {type(obj).__name__}: it is no value the broker sends as such "
                "(register a codec for its type) and no object it knows (export its class and "
                "add_static(obj, ...) it)"
            )
        return key

    def _fetch(self, peer, key):
        obj, info = self._object(peer, key)
        return self._state(obj, info, key)

    def _call(self, peer, key, method, args, kwargs):
        obj, info = self._object(peer, key)
        if method not in info.methods:
            raise AttributeError(f"{info.name} exports no method {method!r}")
        with _calling(peer, f"{info.name}.{method}"):
            result = getattr(obj, method)(*args, **kwargs)
        fn = getattr(type(obj), method, None)
        if getattr(fn, "_broker_include", False):
            return _Whole(result, peer)
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
        with _calling(peer, f"call {name!r}"):
            return fn(*args, **kwargs)

    def _search(self, peer, class_name, eq, limit, mode):
        with self._lock:
            candidates = [o for o in self._static.values() if (self._info_of(o, False) or _Info(None)).name == class_name]
        found = []
        searchable = set()
        for o in candidates:
            info = self._info_of(o)
            # Only what the export shows: a search on another attribute would tell its value.
            # (The names it shows are the class's, whoever may see its objects.)
            shown = set(info.fields) | set(info.refs)
            searchable |= shown
            if info.allow is not None and not info.allow(peer["user_id"], o):
                continue
            if all(k in shown and getattr(o, k, _MISSING) == v for k, v in eq.items()):
                found.append(o)
        hidden = [k for k in eq if candidates and k not in searchable]
        if hidden:
            raise AttributeError(f"class {class_name} has no field {hidden[0]!r}")
        if mode == "count":
            return len(found)
        if mode == "get":
            if not found:
                raise NoData(f"no {class_name} matches {eq}")
            if len(found) > 1:
                raise ManyData(f"{len(found)} objects of {class_name} match {eq}, expected one")
            return [_Whole(found[0], peer)]
        found = found[:limit] if limit is not None else found
        small = len(found) <= 10
        return [_Whole(o, peer) if small else o for o in found]

    def _encode_object(self, obj):
        if isinstance(obj, _Whole):
            inner = obj.obj
            key = self._key_of(inner)
            info = self._info_of(inner)
            # Whole only to a user who may see it (``allow=``); otherwise a reference, whose
            # fetch is refused as any other (a method's ``include=True`` sent every user's
            # objects, fields and all, to whoever called it: the broker walkthrough).
            if info.allow is not None and not info.allow(obj.peer["user_id"], inner):
                return ("ref", key)
            return self._state(inner, info, key)
        if isinstance(obj, _SqlRow):
            return ("ref", (obj.export, obj.rowid))
        key = self._keys.get(id(obj))
        if key is not None:
            return ("ref", key)
        custom = _custom(obj)
        if custom is not None:
            return custom
        return ("ref", self._key_of(obj))

    def _decode_value(self, peer, kind, payload):
        """A value in a request of `peer`: a reference to an object limited to other users
        (``allow=``) is refused as a fetch of it would be."""
        if kind == "custom":
            return _decode_custom(payload)
        if kind in ("ref", "object"):
            key = payload[0]
            with self._lock:
                obj = self._static.get(tuple(key[1:])) if key[0] == "static" else None
            if obj is not None:
                info = self._info_of(obj, required=False)
                if info is not None:
                    self._check_allowed(peer, obj, info, key)
                return obj
            return _SqlRow(key[0], key[1]) if len(key) == 2 else key
        return payload


_MISSING = object()


class _Whole:
    """A method's result sent whole (``@exported(include=True)``) to the peer that asked."""

    def __new__(cls, obj, peer):
        if isinstance(obj, (list, tuple)):
            return type(obj)(_Whole(o, peer) for o in obj)
        self = super().__new__(cls)
        self.obj = obj
        self.peer = peer
        return self
