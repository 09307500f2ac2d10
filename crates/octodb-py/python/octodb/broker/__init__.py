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

from octodb.broker._common import (
    BrokerError,
    Conflict,
    ManyData,
    NoData,
    ObjectNotFound,
    RemoteError,
    Unavailable,
    decode,
    encode,
    register_codec,
)
from octodb.broker.client import BrokerClient, ClassProxy, Proxy
from octodb.broker.server import (
    BackRef,
    BrokerServer,
    Callable,
    Field,
    Ref,
    SqlClass,
    caller,
    exported,
)

__all__ = [
    "BrokerServer",
    "BrokerClient",
    "Proxy",
    "ClassProxy",
    "SqlClass",
    "Field",
    "Ref",
    "BackRef",
    "Callable",
    "exported",
    "caller",
    "register_codec",
    "BrokerError",
    "NoData",
    "ManyData",
    "ObjectNotFound",
    "Conflict",
    "RemoteError",
    "Unavailable",
    "encode",
    "decode",
]
