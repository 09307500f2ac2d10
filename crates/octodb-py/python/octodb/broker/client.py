"""The broker's client: proxies cached by key, lazy references, live updates."""

import logging
import threading

from octodb import _octodb
from octodb.broker._common import ObjectNotFound, _core, _custom, _decode_custom


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

    def _resolve(self, value, seen=None):
        """References in a reply become their objects (fetched once, then cached). Lists and
        dicts are the reply's own, freshly decoded: changed in place, so that a structure met
        twice, or holding itself, stays one (`seen`: what is done or under way, by id)."""
        if isinstance(value, _LazyRef):
            return self._object(value.ref)
        kind = type(value)
        if kind not in (list, tuple, dict):
            return value
        seen = {} if seen is None else seen
        if id(value) in seen:
            return seen[id(value)]
        if kind is tuple:
            seen[id(value)] = value
            seen[id(value)] = out = tuple(self._resolve(v, seen) for v in value)
            return out
        seen[id(value)] = value
        for k, v in list(value.items()) if kind is dict else enumerate(value):
            value[k] = self._resolve(v, seen)
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
        class_name = _class_name(class_name)
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
        """The one object of the class (a name, or what ``cls`` returns) whose fields equal
        ``eq``: NoData / ManyData else."""
        return self._search(class_name, eq, None, "get")[0]

    def find(self, class_name, _limit=None, **eq):
        """The objects whose fields equal ``eq`` (at most ``_limit``)."""
        return list(self._search(class_name, eq, _limit, "find"))

    def count(self, class_name, **eq):
        return self._search(class_name, eq, None, "count")

    def new(self, class_name, **values):
        """A new object of a writable class (a name, or what ``cls`` returns)."""
        return self._run(self._core.create, _class_name(class_name), values)

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
        Called on the client's notices thread. A listener that raises is logged; the others
        are still called."""
        if isinstance(obj_or_class, Proxy):
            ref = object.__getattribute__(obj_or_class, "_ref")
            watch = _Watch(ref, callback, object.__getattribute__(obj_or_class, "_fields"))
            self._watchers.setdefault(ref[0], []).append(watch)
            # The server tells a client of the objects it holds: a copy already obsolete (the
            # object changed since it was fetched) is fetched again, and a change it missed is
            # told at once.
            if object.__getattribute__(obj_or_class, "_obsolete"):
                watch.tell(self._current(ref))
        else:
            name = _class_name(obj_or_class)
            self._watchers.setdefault(name, []).append(_Watch(None, callback, None))
            # The server tells a client of a class it searched.
            self.count(name)

    def _notice(self, kind, payload):
        if kind == "invalidated":
            for key in payload:
                for watch in list(self._watchers.get(key, [])):
                    watch.tell(self._current(watch.ref))
        elif kind == "class":
            for watch in list(self._watchers.get(payload, [])):
                _call_listener(watch.callback, payload)
        elif kind == "reconnected":
            for key, watchers in list(self._watchers.items()):
                for watch in watchers:
                    if watch.ref is None:
                        self.count(key)
                        _call_listener(watch.callback, key)
                    else:
                        watch.tell(self._current(watch.ref), even_unchanged=True)

    def _current(self, ref):
        """The object's current copy for a listener: None once deleted."""
        try:
            return self._object(ref)
        except ObjectNotFound:
            return None

    @property
    def connected(self):
        return self._core.is_connected()

    def close(self):
        self._core.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_log = logging.getLogger("octodb.broker")


def _class_name(class_or_name):
    """A class's name, given the name or the ``ClassProxy`` of ``client.cls(name)``."""
    return class_or_name.name if isinstance(class_or_name, ClassProxy) else class_or_name


class _Watch:
    """One ``on_change`` listener: of an object (``ref``), with the fields of the copy it was
    last told of, or of a class (``ref`` None)."""

    __slots__ = ("ref", "callback", "told")

    def __init__(self, ref, callback, told):
        self.ref = ref
        self.callback = callback
        self.told = told

    def tell(self, current, even_unchanged=False):
        """Call the listener with ``current`` (None: deleted), unless it was already told
        of these fields: a change told at ``on_change`` (the copy was obsolete) may also
        arrive afterwards as the server's notice, and is told once."""
        fields = None if current is None else object.__getattribute__(current, "_fields")
        if fields == self.told and not even_unchanged:
            return
        self.told = fields
        _call_listener(self.callback, current)


def _call_listener(callback, arg):
    """One listener's failure is its own: logged with its traceback, the others still called."""
    try:
        callback(arg)
    except Exception:
        _log.exception("an on_change listener (%r) raised; the other listeners go on", callback)


class _LazyRef:
    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref
