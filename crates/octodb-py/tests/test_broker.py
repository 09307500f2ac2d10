"""octodb.broker: a primary's BrokerServer and a device's BrokerClient on loopback, real files;
the seed's MyRoot/Status example as two processes. Waits on conditions, never fixed sleeps."""

import datetime
import os
import random
import socket
import threading
import time

import pytest

import octodb
from octodb import broker as ob

from conftest import device_uri, primary_uri, wait_until


class Status:
    servers = ("joe", "curly", "moe")
    health = "OK"


class Item:
    def __init__(self, name, owner=0):
        self.name = name
        self.owner = owner


class Root:
    version_string = "0.12.3"

    def __init__(self, server):
        self.status = Status()
        self._server = server
        self.items = []

    def set_health(self, health):
        self._server.obj_update(self.status, health=health)
        return health

    def fail(self):
        raise ValueError("bad input, try again")

    def fail_as_unavailable(self):
        # The app's own class, named as the broker's "send it again" error.
        raise type("Unavailable", (Exception,), {})("the stock service said no")

    def missing(self):
        raise KeyError("nope")

    @ob.exported(include=True)
    def first_item(self):
        return self.items[0]

    @ob.exported(include=True)
    def every_item(self):
        return list(self.items)

    @classmethod
    def kind(cls):
        return cls.__name__

    @ob.exported
    def owner_of(self, item):
        return item.owner

    @ob.exported
    def bytes_of(self, size):
        return b"x" * size

    @ob.exported
    def echo(self, value):
        return value

    @ob.exported
    def wait_for_release(self):
        return RELEASE.wait(60)


RELEASE = threading.Event()


class Secretive:
    """Added with add_static but never exported: its data shows, its methods do not."""

    def __init__(self):
        self.label = "plain"
        self.password = "hunter2"
        self._token = "TOPSECRET"

    def reset(self):
        return "reset"


class Net:
    def __init__(self, tmp_path, auth=None):
        self.tmp_path = tmp_path
        self.primary_uri = primary_uri(tmp_path / "backend.db", auth)
        self.primary = octodb.connect(self.primary_uri)
        self.opened = [self.primary]
        self.clients = []

    def device(self, name="phone.db", signup=None):
        uri = device_uri(self.tmp_path / name, self.primary)
        db = octodb.connect(uri)
        self.opened.append(db)
        if signup:
            db.execute(f"PRAGMA user_signup='{signup}'")
        db.wait_until_ready(timeout=60)
        return uri, db

    def client(self, uri):
        c = ob.BrokerClient(uri, timeout=60)
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            c.close()
        for db in reversed(self.opened):
            db.close()


@pytest.fixture
def net(tmp_path):
    n = Net(tmp_path)
    yield n
    n.close()


def static_server(n):
    server = ob.BrokerServer(n.primary_uri)
    server.export_class(Status, "servers health")
    server.export_class(Item, "name owner", allow=lambda user, item: item.owner in (0, user))
    root = Root(server)
    server.export_object(
        root,
        ["version_string", "set_health", "fail", "fail_as_unavailable", "missing", ob.Callable("kind"), "+"],
        refs="status",
        backrefs="items",
    )
    server.add_static(root.status, "status")
    for i, name in enumerate(["One", "Two", "Two"]):
        item = Item(name)
        server.add_static(item, "item", i)
        root.items.append(item)
    server.root = root
    server.add_call("hello", lambda who: "hello " + who)
    return server, root


def test_root_reference_method_call_and_identity(net, caplog):
    server, root = static_server(net)
    uri, _ = net.device()
    client = net.client(uri)
    r = client.root
    assert r.version_string == "0.12.3"
    status = r.status
    assert status.health == "OK"
    assert status.servers == ("joe", "curly", "moe")
    assert r.status is status, "a reference is fetched once; one object per key"
    assert client.call("hello", "you") == "hello you"
    assert r.first_item().name == "One"
    assert r.kind() == "Root", "a classmethod, exported"
    assert [i.name for i in r.items] == ["One", "Two", "Two"]
    with caplog.at_level("WARNING", logger="octodb.broker.server"):
        with pytest.raises(ValueError) as raised:
            r.fail()
    assert str(raised.value) == "bad input, try again", "the message as raised, once"
    # The traceback stays in the server's log.
    assert any("Traceback" in r.getMessage() and "bad input" in r.getMessage()
               for r in caplog.records), caplog.text
    # An app's own class is never taken for the broker's (or a builtin) error of its name:
    # the Pyro5 walkthrough's retry loop on ConnectionError ran the method again.
    with pytest.raises(ob.RemoteError) as raised:
        r.fail_as_unavailable()
    assert not isinstance(raised.value, ConnectionError)
    assert raised.value.kind == "Unavailable"
    assert raised.value.message == "the stock service said no"
    with pytest.raises(KeyError) as raised:
        r.missing()
    assert raised.value.args == ("nope",), "quoted once"
    with pytest.raises(AttributeError, match="no call named 'nothing'"):
        client.call("nothing")


def test_a_plain_call_knows_its_caller(net):
    """Plain calls run for every approved device: the server tells who calls (the hostile
    walkthrough ran a backend's admin call from any user's device, and the call could not
    tell whose), so that a call only some users may make can refuse the others."""
    server, root = static_server(net)
    admins = set()

    def admin_reset():
        who = ob.caller()
        if who["user_id"] not in admins:
            raise PermissionError(f"user {who['user_id']} may not reset")
        return "reset"

    server.add_call("admin_reset", admin_reset)
    server.add_call("whoami", lambda: ob.caller()["user_id"])
    uri, db = net.device(signup="mallory")
    client = net.client(uri)
    user = db.sync_status()["user_id"]
    assert client.call("whoami") == user
    with pytest.raises(PermissionError, match=f"user {user} may not reset"):
        client.call("admin_reset")
    admins.add(user)
    assert client.call("admin_reset") == "reset"
    assert ob.caller() is None, "outside a request"


def test_invalidation_obsolete_copies_and_reply_ordering(net):
    server, root = static_server(net)
    uri, _ = net.device()
    client = net.client(uri)
    r = client.root
    old = r.status
    changes = []
    client.on_change(old, changes.append)
    server.obj_update(root.status, health="poor")
    wait_until("the invalidation arrives", lambda: old._obsolete)
    assert old.health == "OK", "an obsolete copy keeps its old values"
    assert r.status.health == "poor"
    wait_until("on_change hears it", lambda: changes and changes[-1].health == "poor")
    # A call that changes the status: when it returns, the cache is already fresh.
    for i in range(10):
        assert r.status.health != f"h{i}"
        r.set_health(f"h{i}")
        assert r.status.health == f"h{i}"


def test_a_watch_on_an_obsolete_copy_hears_every_change_and_a_raising_listener_is_alone(net):
    server, root = static_server(net)
    uri, _ = net.device()
    client = net.client(uri)
    status = client.root.status
    server.obj_update(root.status, health="first")
    wait_until("the copy to be obsolete", lambda: status._obsolete)
    heard, failing = [], []

    def fails(copy):
        failing.append(copy)
        raise RuntimeError("a listener's bug")

    client.on_change(status, fails)
    client.on_change(status, lambda copy: heard.append(copy.health))
    # The change it missed is told at once; the following ones as they come.
    assert heard == ["first"] and len(failing) == 1
    for health in ("second", "third"):
        server.obj_update(root.status, health=health)
        wait_until(f"the listener to hear {health}", lambda: heard[-1] == health)
    assert len(failing) == 3, "the raising listener was called each time too"


def test_delete_and_search(net):
    server, root = static_server(net)
    uri, _ = net.device()
    client = net.client(uri)
    items = client.cls("Item")
    assert items.count() == 3
    assert items.get(name="One").name == "One"
    with pytest.raises(ob.NoData):
        items.get(name="Zero")
    with pytest.raises(ob.ManyData):
        items.get(name="Two")
    assert len(items.find(name="Two")) == 2
    assert len(items.find(name="Two", _limit=1)) == 1
    # The client's own calls take the class as cls() gives it, as on_change does.
    assert client.count(items) == 3 and client.get(items, name="One").name == "One"
    one = items.get(name="One")
    server.obj_delete(root.items[0])
    wait_until("the deletion is told", lambda: one._obsolete)
    with pytest.raises(ob.ObjectNotFound) as raised:
        one._key()
    assert str(raised.value).count("not found") == 1, raised.value
    assert items.count() == 2, "the cached count was dropped"
    # Renamed: a cached search of the old name is dropped.
    assert len(items.find(name="Two")) == 2
    server.obj_update(root.items[1], name="Two2")
    wait_until("the search is dropped", lambda: len(items.find(name="Two")) == 1)
    assert len(items.find(name="Two2")) == 1


def test_sql_exports(net):
    p = net.primary
    p.executescript(
        """
        CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, secret TEXT, row_owner);
        CREATE TABLE catalog(id INTEGER PRIMARY KEY, name TEXT, row_owner);
        INSERT INTO todos(title, secret, row_owner) VALUES ('One', 's', '*'), ('Two', 's', '*');
        INSERT INTO catalog(name, row_owner) VALUES ('a', '*');
        """
    )
    p.commit()
    server = ob.BrokerServer(net.primary_uri)
    todos = server.export_table("todos", rw=True, hide=["secret"])
    server.export_table("catalog")
    server.export_table("todos", name="todo_attrs", rw=None)
    server.root = Status()
    uri, device = net.device()
    client = net.client(uri)
    # Read-only: refused, the database untouched.
    catalog = client.cls("catalog")
    a = catalog.get(name="a")
    with pytest.raises(PermissionError, match="read-only") as raised:
        catalog.new(name="b")
    assert str(raised.value).count("permission denied") == 1, raised.value
    with pytest.raises(PermissionError):
        client.update(a, name="z")
    with pytest.raises(PermissionError):
        client.delete(a)
    assert p.execute("SELECT name FROM catalog").fetchall() == [("a",)]
    # Attributes only: no search.
    with pytest.raises(PermissionError, match="attributes only"):
        client.cls("todo_attrs").find()
    # Hidden columns never come.
    two = client.get("todos", title="Two")
    with pytest.raises(AttributeError):
        two.secret
    # Read-write (the primary's own rows are the backend's: a device may not change '*' rows).
    with pytest.raises(PermissionError, match="backend only"):
        client.update(two, title="Two2")
    row = server.obj_new(todos, title="Two", row_owner=device.sync_status()["user_id"])
    mine = [t for t in client.find("todos", title="Two") if t.id == row.rowid][0]
    client.update(mine, title="Two2")
    assert [t.title for t in client.find("todos", title="Two")] == ["Two"]
    assert len(client.find("todos", title="Two2")) == 1
    # An update from a stale copy is refused.
    with pytest.raises(ob.Conflict) as raised:
        client.update(mine, title="again")
    assert str(raised.value).count("fetch the object again") == 1, raised.value
    # The backend's SQL invalidates without any broker call.
    fresh = client.get("todos", title="Two2")
    p.execute("UPDATE todos SET title = 'by sql' WHERE id = ?", (row.rowid,))
    p.commit()
    wait_until("the feed invalidates it", lambda: fresh._obsolete)
    assert fresh._key().title == "by sql"
    # Writes through the broker replicate to the device like any primary write.
    wait_until(
        "the row reaches the device",
        lambda: device.execute("SELECT title FROM todos WHERE id = ?", (row.rowid,)).fetchall() == [("by sql",)],
    )
    server.obj_delete(row)
    wait_until("the deletion is told", lambda: client.count("todos", title="by sql") == 0)
    # Nested writes: the inner transaction that fails rolls back alone.
    classes_told = []
    client.on_change("todos", classes_told.append)

    def inner():
        server.obj_new(todos, title="inner", row_owner="*")
        raise ValueError("inner fails")

    def outer():
        server.obj_new(todos, title="outer", row_owner="*")
        with pytest.raises(ValueError, match="inner fails"):
            server.transaction(inner)
        return "done"

    assert server.transaction(outer) == "done"
    titles = [t for (t,) in p.execute("SELECT title FROM todos WHERE title IN ('outer', 'inner')")]
    assert titles == ["outer"]
    wait_until("on_change hears of the class", lambda: "todos" in classes_told)


def test_an_export_limited_to_a_user(tmp_path):
    n = Net(tmp_path, auth="user")
    try:
        n.primary.register_function("user_signup", 2, lambda data, info: 10 if data == "ann" else 20)
        server, root = static_server(n)
        mine = Item("ann's", owner=10)
        server.add_static(mine, "item", "ann")
        ann_uri, _ = n.device("ann.db", signup="ann")
        bob_uri, _ = n.device("bob.db", signup="bob")
        ann, bob = n.client(ann_uri), n.client(bob_uri)
        assert ann.cls("Item").get(name="ann's").owner == 10
        with pytest.raises(ob.NoData):
            bob.cls("Item").get(name="ann's")
        assert bob.cls("Item").count() == 3
        # Ann's reference handed to Bob (key and access code): refused as an argument too.
        anns = ann.cls("Item").get(name="ann's")
        assert ann.root.owner_of(anns) == 10
        with pytest.raises(PermissionError, match="not shared with user 20"):
            bob.root.owner_of(anns)
        # A method that sends its result whole (include=True) sends Ann's item to Bob only as
        # a reference, which he may not fetch: the call is refused as one returning references
        # is (it sent him the item with its fields: the broker walkthrough).
        assert [i.name for i in bob.root.every_item()] == ["One", "Two", "Two"]
        root.items.append(mine)
        with pytest.raises(PermissionError, match="not shared with user 20"):
            bob.root.every_item()
        assert ann.root.every_item()[3].name == "ann's"

        # A class none of whose objects Bob may see still has its exported fields: a search
        # on them finds nothing (it said the field did not exist).
        class Secret:
            code = "s3cr3t"

        server.export_class(Secret, "code", allow=lambda user, obj: user == 999)
        server.add_static(Secret(), "secret")
        assert bob.find("Secret", code="s3cr3t") == []
        with pytest.raises(ob.NoData):
            bob.get("Secret", code="s3cr3t")
        with pytest.raises(AttributeError, match="no field 'other'"):
            bob.get("Secret", other=1)
    finally:
        n.close()


def test_a_search_compares_only_what_the_export_shows(net):
    server, root = static_server(net)
    hidden = Item("hidden")
    hidden.password = "hunter2"
    hidden._token = "TOPSECRET"
    server.add_static(hidden, "item", "hidden")
    uri, _ = net.device()
    client = net.client(uri)
    items = client.cls("Item")
    assert items.count(name="hidden") == 1
    for probe in [{"password": "hunter2"}, {"_token": "TOPSECRET"}, {"password": "wrong"}]:
        with pytest.raises(AttributeError, match="has no field"):
            items.count(**probe)


def test_an_object_added_without_an_export_shows_its_data_not_its_methods(net):
    server = ob.BrokerServer(net.primary_uri)
    server.root = Secretive()
    uri, _ = net.device()
    root = net.client(uri).root
    assert (root.label, root.password) == ("plain", "hunter2")
    with pytest.raises(AttributeError):
        root.reset()
    with pytest.raises(AttributeError):
        root._token


def test_codecs_round_trip_and_hostile_bytes():
    tz = datetime.timezone(datetime.timedelta(hours=-5))
    shared = [1, 2]
    loop = []
    loop.append(loop)
    values = [
        None,
        True,
        -(2**63),
        2**100,
        1.5,
        "héllo",
        b"\x00\xff",
        [1, [2]],
        (1, "a"),
        {"k": {1: None}},
        datetime.datetime(2026, 12, 4, 16, 30, 1, 5, tzinfo=tz),
        datetime.datetime(2026, 12, 4),
        datetime.date(1999, 1, 2),
        datetime.time(23, 59, 59, 999999),
        datetime.timedelta(days=-3, seconds=5, microseconds=7),
    ]
    for v in values:
        assert ob.decode(ob.encode(v)) == v, v
    both = ob.decode(ob.encode([shared, shared]))
    assert both[0] is both[1]
    again = ob.decode(ob.encode(loop))
    assert again[0] is again

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    ob.register_codec(Point, "Point", lambda p: (p.x, p.y), lambda t: Point(*t))
    p = ob.decode(ob.encode({"at": Point(1, 2)}))["at"]
    assert (p.x, p.y) == (1, 2)
    with pytest.raises(TypeError, match="register a codec"):
        ob.encode(object())
    deep = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError, match="deeper"):
        ob.encode(deep)
    rng = random.Random(7)
    good = ob.encode(values)
    for _ in range(3000):
        data = bytearray(good if rng.random() < 0.5 else os.urandom(rng.randrange(64)))
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            ob.decode(bytes(data[: rng.randrange(len(data) + 1)]))
        except (ValueError, TypeError):
            pass


def test_the_seed_example_as_processes(tmp_path, run_example):
    server = run_example(
        "broker_server.py",
        OCTODB_URI=f"file:{tmp_path / 'backend.db'}?node=primary&bind=tcp://127.0.0.1:0",
    )
    address = server.wait_line("broker listening on ").split()[-1]
    client = run_example(
        "broker_client.py",
        OCTODB_DB=str(tmp_path / "phone.db"),
        OCTODB_SERVERS=address,
    )
    assert client.finish() == 0, client.output() + "\n--- server:\n" + server.output()
    assert "version: 0.12.3" in client.lines
    assert "health: OK" in client.lines
    assert "login: jane / welcome, jane" in client.lines
    assert "call: hello you" in client.lines


def test_unapproved_devices_cannot_reach_the_broker(tmp_path):
    n = Net(tmp_path, auth="user")
    try:
        static_server(n)
        uri = device_uri(tmp_path / "stranger.db", n.primary)
        db = octodb.connect(uri)
        n.opened.append(db)
        with pytest.raises(ConnectionError) as e:
            ob.BrokerClient(uri, timeout=2)
        assert "not approved" in str(e.value)

        # A device the backend refused hears it at once, not after the whole timeout.
        n.primary.register_function("user_signup", 2, lambda data, info: -1)
        refused_uri = device_uri(tmp_path / "refused.db", n.primary)
        refused = octodb.connect(refused_uri)
        n.opened.append(refused)
        refused.execute("PRAGMA user_signup='eve'")
        with pytest.raises(octodb.OperationalError, match="refused"):
            refused.wait_until_ready(timeout=60)
        began = time.monotonic()
        with pytest.raises(ConnectionError, match="refused"):
            ob.BrokerClient(refused_uri, timeout=60)
        assert time.monotonic() - began < 30, "ended before its timeout"
    finally:
        n.close()


def test_concurrent_callers_share_one_client(net):
    server, root = static_server(net)
    uri, _ = net.device()
    client = net.client(uri)
    errors = []

    def work():
        try:
            for _ in range(50):
                assert client.call("hello", "x") == "hello x"
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_shared_and_self_referential_replies_keep_their_shape(net):
    server, root = static_server(net)
    uri, _ = net.device()
    r = net.client(uri).root
    x = [1, 2]
    both = r.echo([x, x, r.status])
    assert both[0] is both[1] and both[0] == x
    assert both[2] is r.status, "a reference inside a list is the cached object"
    loop = []
    loop.append(loop)
    back = r.echo(loop)
    assert back[0] is back


def test_the_clients_timeout_bounds_each_request(net):
    static_server(net)
    uri, _ = net.device()
    quick = ob.BrokerClient(uri, timeout=1)
    net.clients.append(quick)
    try:
        with pytest.raises(TimeoutError, match="no reply within 1s"):
            quick.root.wait_for_release()
    finally:
        RELEASE.set()


def test_a_value_over_the_frame_limit_is_refused_with_the_limit_and_the_connection_lives(net):
    static_server(net)
    uri, _ = net.device()
    r = net.client(uri).root
    with pytest.raises(ValueError, match="more than the limit"):
        r.echo(b"y" * (17 * 1024 * 1024))
    with pytest.raises(ValueError, match="more than the limit"):
        r.bytes_of(17 * 1024 * 1024)
    assert r.bytes_of(10) == b"x" * 10, "the connection goes on"


def test_a_write_with_the_clusters_leader_gone_is_unavailable(tmp_path):
    """A broker on a follower whose leader is gone (two voters, one left): a client's write is
    refused as not applied, `ob.Unavailable`, a ConnectionError a retry loop catches by type,
    not an unknown outcome; nothing of it is in the database."""
    leader_uri = primary_uri(tmp_path / "p1.db")
    leader = octodb.connect(leader_uri)
    leader.execute("CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, row_owner)")
    leader.commit()
    ob.BrokerServer(leader_uri).stop()  # makes the broker's secret, which the follower needs
    follower_uri = f"{primary_uri(tmp_path / 'p2.db')}&connect={leader.bound_addresses[0]}"
    follower = octodb.connect(follower_uri)
    opened = [follower]
    try:
        wait_until("the follower has the table", lambda: follower.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'todos'").fetchone() == (1,))
        def broker_on_follower():
            try:
                return ob.BrokerServer(follower_uri)
            except RuntimeError as e:
                if "not in this primary's database yet" in str(e):
                    return None
                raise

        server = wait_until("the broker's secret on the follower", broker_on_follower)
        server.export_table("todos", rw=True)
        server.root = Status()
        device = octodb.connect(device_uri(tmp_path / "phone.db", follower))
        opened.append(device)
        device.wait_until_ready(timeout=60)
        client = ob.BrokerClient(device_uri(tmp_path / "phone.db", follower), timeout=60)
        try:
            todos = client.cls("todos")
            todos.new(title="before")
            host, port = leader.bound_addresses[0].removeprefix("tcp://").rsplit(":", 1)
            leader.close()
            wait_until("the leader has stopped", lambda: _refused(host, int(port)))
            with pytest.raises(ob.Unavailable, match="nothing of the transaction was sent") as raised:
                todos.new(title="lost")
            assert isinstance(raised.value, ConnectionError)
            assert follower.execute("SELECT title FROM todos").fetchall() == [("before",)]
        finally:
            client.close()
    finally:
        for db in reversed(opened):
            db.close()


def _refused(host, port):
    """Whether nothing listens at host:port any more."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
