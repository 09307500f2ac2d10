"""octodb: a replicated SQLite for apps and their backend, with the API of Python's sqlite3.

Use it as a drop-in::

    import octodb as sqlite3

    db = sqlite3.connect("app.db")                     # a plain local database, as sqlite3
    db = sqlite3.connect("file:phone.db?node=secondary&connect=tcp://backend:1234")   # a device
    db.wait_until_ready(timeout=30)                     # authorized and downloaded
    db.wait_until_synced(timeout=30)                    # holds what the primaries hold

Everything sqlite3 offers works the same on a local database; on a primary or a device the
same API reads and writes the replicated database, and adds ``sync_status()``, ``nodes()``,
``wait_until_ready()``, ``wait_until_synced()``, ``wait_for()``, ``events()``, ``on_event()``
and the backend's
authorization callbacks (``register_function("user_signup", 2, f)``, ...).
"""

import collections.abc as _abc
import datetime as _datetime
import time as _time
import warnings as _warnings

from octodb._octodb import *  # noqa: F401,F403  (the sqlite3 API, implemented in Rust)
from octodb._octodb import (
    Connection,
    Row,
    enable_shared_cache as _enable_shared_cache,
    register_adapter,
    register_converter,
    sqlite_version,
    version,
)

paramstyle = "qmark"
apilevel = "2.0"

Date = _datetime.date
Time = _datetime.time
Timestamp = _datetime.datetime
Binary = memoryview


def DateFromTicks(ticks):
    return Date(*_time.localtime(ticks)[:3])


def TimeFromTicks(ticks):
    return Time(*_time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks):
    return Timestamp(*_time.localtime(ticks)[:6])


version_info = tuple(int(part) for part in version.split("."))
sqlite_version_info = tuple(int(part) for part in sqlite_version.split("."))

_abc.Sequence.register(Row)


def connect(database, *args, **kwargs):
    """Open a database and return a Connection (or what ``factory`` makes).

    ``database`` is a file name, ``":memory:"``, a SQLite URI with ``uri=True``, or an octodb
    node URI such as ``"file:app.db?node=primary&bind=tcp://0.0.0.0:1234"`` (recognized by its
    ``node=`` parameter, with or without ``uri=True``). The other arguments are sqlite3's:
    timeout, detect_types, isolation_level, check_same_thread, factory, cached_statements, uri,
    and (keyword only, as in Python 3.12) autocommit.
    """
    factory = args[4] if len(args) > 4 else kwargs.get("factory", Connection)
    return factory(database, *args, **kwargs)


def enable_shared_cache(enable):
    """SQLite's shared cache for connections opened afterwards (deprecated, as in sqlite3)."""
    _warnings.warn(
        "enable_shared_cache is deprecated; SQLite discourages the shared cache. "
        "Open the database with the URI parameter cache=shared if it is really needed.",
        DeprecationWarning,
        stacklevel=2,
    )
    return _enable_shared_cache(enable)


def _adapt_date(value):
    return value.isoformat()


def _adapt_datetime(value):
    return value.isoformat(" ")


def _convert_date(raw):
    year, month, day = (int(part) for part in raw.split(b"-"))
    return Date(year, month, day)


def _convert_timestamp(raw):
    day, _, clock = raw.partition(b" ")
    year, month, mday = (int(part) for part in day.split(b"-"))
    hms, _, fraction = clock.partition(b".")
    hour, minute, second = (int(part) for part in hms.split(b":"))
    # "456" means 456000 microseconds; digits past the sixth are dropped.
    micro = int((fraction.decode() + "000000")[:6]) if fraction else 0
    return Timestamp(year, month, mday, hour, minute, second, micro)


register_adapter(Date, _adapt_date)
register_adapter(Timestamp, _adapt_datetime)
register_converter("date", _convert_date)
register_converter("timestamp", _convert_timestamp)


def __getattr__(name):
    if name == "OptimizedUnicode":
        _warnings.warn(
            "OptimizedUnicode is deprecated; it has long been an alias of str.",
            DeprecationWarning,
            stacklevel=2,
        )
        return str
    raise AttributeError(f"module 'octodb' has no attribute '{name}'")
