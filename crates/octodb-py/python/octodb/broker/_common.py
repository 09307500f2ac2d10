"""What the broker's server and client share: its errors, and the codec of values."""

from octodb import _octodb

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


class Unavailable(BrokerError, ConnectionError):
    """The server's primaries could not take the write now (no leader, a fail-over under way):
    nothing of it was applied; send it again (a ``ConnectionError``, as a dropped connection)."""


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
    "Unavailable": Unavailable,
}


#: How the kind of an exception of the server program's own class begins (a class of its
#: own named `Unavailable` or `ConnectionError` must not reach the client as the broker's or
#: the builtin one, which tell it to send the request again).
APP_KIND = "app:"


def _typed(error):
    """The typed exception for a BrokerCallError (kind, message)."""
    kind, message = error.args
    if kind.startswith(APP_KIND):
        return RemoteError(kind[len(APP_KIND):], message)
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
