"""sqlite3's API on replicated nodes: transactions that replicate at commit, cursor
attributes, octodb's status and events for apps."""

import json
import sqlite3
import threading
import time

import pytest

import octodb
from conftest import DEADLINE, primary_uri, wait_until


def make_table(backend):
    backend.execute("CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, row_owner)")


def test_writes_replicate_when_the_implicit_transaction_commits(open_primary, open_device):
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    cur = phone.execute("INSERT INTO todos(title) VALUES (?)", ("buy milk",))
    assert phone.in_transaction, "DML opens a transaction, as in sqlite3"
    assert cur.rowcount == 1
    assert cur.lastrowid >> 32 == phone.sync_status()["node_id"], "collision-free id"
    assert phone.sync_status()["outbox_len"] == 0, "nothing leaves before the commit"
    phone.commit()
    phone.wait_for(lambda s: s["outbox_len"] == 0 and s["last_seq"] > 0, timeout=DEADLINE)
    user = phone.sync_status()["user_id"]
    rows = wait_until("the row on the backend", lambda: backend.execute("SELECT id, title, row_owner FROM todos").fetchall())
    assert rows == [(cur.lastrowid, "buy milk", user)]


def test_a_trace_callback_sees_the_apps_statements_not_the_engines(open_primary, open_device):
    """On a node, the engine runs statements of its own on the app's connection (its outbox,
    its rules' triggers): a trace left them in, 19 lines for an app's 3, the outbox's change
    sets among them (the data tooling walkthrough)."""
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    traced = []
    phone.set_trace_callback(traced.append)
    with phone:
        phone.execute("INSERT INTO todos(title) VALUES ('traced')")
    phone.set_trace_callback(None)
    assert any("INSERT INTO todos" in t for t in traced), traced
    assert not [t for t in traced if "_octo_" in t], traced


def test_implicit_transactions_take_the_write_lock_at_once_on_a_node(open_primary, open_device):
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    traced = []
    phone.set_trace_callback(traced.append)
    phone.execute("INSERT INTO todos(title) VALUES ('x')")
    phone.commit()
    assert "BEGIN IMMEDIATE" in traced, "the node's writer commits concurrently"
    assert traced.index("BEGIN IMMEDIATE") < traced.index("INSERT INTO todos(title) VALUES ('x')")


def test_an_explicit_deferred_begin_that_writes_waits_for_the_engine(open_primary, open_device, tmp_path):
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    stop = threading.Event()

    def send_rows_without_pause():
        # Another backend connection, so that the phone's engine keeps writing what arrives.
        db = octodb.connect(f"file:{tmp_path / 'backend.db'}?node=primary&bind=tcp://127.0.0.1:0")
        while not stop.is_set():
            with db:
                db.executemany("INSERT INTO todos(title, row_owner) VALUES (?, '*')", [("news",)] * 10)
        db.close()

    sender = threading.Thread(target=send_rows_without_pause)
    sender.start()
    try:
        wait_until("rows from the backend", lambda: phone.execute("SELECT count(*) FROM todos").fetchone()[0] > 0)
        phone.isolation_level = None  # the app runs its own BEGIN (deferred) and COMMIT
        for i in range(200):
            phone.execute("BEGIN")
            phone.execute("INSERT INTO todos(title) VALUES (?)", (f"mine {i}",))
            phone.execute("COMMIT")
    finally:
        stop.set()
        sender.join()
    phone.wait_for(lambda s: s["outbox_len"] == 0, timeout=DEADLINE)
    assert backend.execute("SELECT count(*) FROM todos WHERE title LIKE 'mine %'").fetchone()[0] == 200


def test_a_rolled_back_transaction_sends_nothing(open_primary, open_device):
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    with phone:
        phone.execute("INSERT INTO todos(title) VALUES ('kept')")
    try:
        with phone:
            phone.execute("INSERT INTO todos(title) VALUES ('dropped')")
            raise KeyError("the app changed its mind")
    except KeyError:
        pass
    phone.wait_for(lambda s: s["outbox_len"] == 0, timeout=DEADLINE)
    wait_until("the kept row", lambda: backend.execute("SELECT count(*) FROM todos").fetchone()[0] == 1)
    assert backend.execute("SELECT title FROM todos").fetchall() == [("kept",)]


def test_autocommit_mode_and_returning_on_a_device(open_primary, open_device):
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    phone.isolation_level = None
    rows = phone.execute("INSERT INTO todos(title) VALUES ('a'), ('b') RETURNING title").fetchall()
    assert sorted(rows) == [("a",), ("b",)]
    assert not phone.in_transaction
    wait_until("both rows on the backend", lambda: backend.execute("SELECT count(*) FROM todos").fetchone()[0] == 2)


def test_insert_returning_gives_the_ids_the_rows_end_with(open_primary, open_device):
    # SQLite computes RETURNING before the engine moves a row it numbered into the node's id
    # range; the id it first chose is another node's next one.
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    with phone:
        returned = phone.execute("INSERT INTO todos(title) VALUES ('a') RETURNING id").fetchone()[0]
    assert returned == phone.execute("SELECT id FROM todos WHERE title = 'a'").fetchone()[0]
    wait_until("the row on the backend", lambda: backend.execute("SELECT count(*) FROM todos").fetchone()[0] == 1)
    with backend:
        cur = backend.execute("INSERT INTO todos(title) VALUES ('b'), ('c') RETURNING id, title")
        rows = cur.fetchall()
    stored = dict(backend.execute("SELECT title, id FROM todos").fetchall())
    assert rows == [(stored["b"], "b"), (stored["c"], "c")]
    assert cur.lastrowid == stored["c"]
    assert stored["b"] >> 32 != stored["a"] >> 32, "the backend's rows are in its own range"


def test_a_timeout_given_to_connect_bounds_a_nodes_wait_for_the_lock(open_primary, tmp_path):
    backend = open_primary()
    make_table(backend)
    impatient = octodb.connect(primary_uri(tmp_path / "backend.db", None), timeout=0.1)
    backend.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(octodb.OperationalError, match="locked"):
        impatient.execute("INSERT INTO todos(title) VALUES ('x')")
    # Not the node's own 60 s wait.
    assert time.monotonic() - started < 30
    backend.rollback()
    impatient.execute("INSERT INTO todos(title) VALUES ('x')")
    impatient.commit()
    impatient.close()


def test_schema_comes_from_the_backend_and_devices_cannot_change_it(open_primary, open_device):
    backend = open_primary()
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    make_table(backend)
    wait_until(
        "the table on the device",
        lambda: phone.execute("SELECT count(*) FROM sqlite_master WHERE name = 'todos'").fetchone()[0],
    )
    with pytest.raises(octodb.OperationalError, match="primaries") as e:
        phone.execute("CREATE TABLE mine(x)")
    assert e.value.sqlite_errorname == "SQLITE_AUTH", "refused as sqlite3 refuses what is not permitted"
    # So are the statements no node permits: lowering synchronous, leaving WAL, renaming
    # row_owner.
    for refused in ["PRAGMA synchronous=OFF", "PRAGMA journal_mode=DELETE",
                    "ALTER TABLE todos RENAME COLUMN row_owner TO o"]:
        with pytest.raises(octodb.OperationalError) as e:
            backend.execute(refused)
        assert e.value.sqlite_errorname == "SQLITE_AUTH", refused


def test_events_ready_data_received_and_a_rejected_transaction(open_primary, open_device):
    backend = open_primary()
    backend.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)")
    first = open_device(backend, "first.db")
    first.wait_until_ready(timeout=DEADLINE)
    second = open_device(backend, "second.db")
    second.wait_until_ready(timeout=DEADLINE)

    kinds = []
    got = threading.Event()

    def seen(event):
        kinds.append(event)
        if event.kind == "data_received":
            got.set()

    with pytest.raises(TypeError, match="needs a callable"):
        second.on_event("seen")
    listener = second.on_event(seen)
    backend.execute("INSERT INTO t(v, row_owner) VALUES ('for everyone', '*')")
    backend.commit()
    assert got.wait(DEADLINE), f"no data_received event, got {kinds}"
    listener.cancel()
    assert not listener.active

    first.execute("INSERT INTO t(id, v) VALUES (7, 'first')")
    first.commit()
    first.wait_for(lambda s: s["outbox_len"] == 0, timeout=DEADLINE)
    rejected = second.events()
    assert second.last_txn_id is None, "nothing committed on this connection yet"
    assert second.sync_status()["rejected_total"] == 0
    second.execute("INSERT INTO t(id, v) VALUES (7, 'second')")
    second.commit()
    mine = second.last_txn_id
    assert mine is not None
    event = None
    while event is None or event.kind != "transaction_rejected":
        event = rejected.get(timeout=DEADLINE)
        assert event is not None, "no transaction_rejected event"
    assert "first insert wins" in event.reason
    assert event.txn_id == mine, "the app can tell which of its commits was taken back"
    status = second.sync_status()
    assert status["last_rejected"]["reason"] == event.reason
    assert status["last_rejected"]["txn_id"] == mine
    assert status["rejected_total"] == 1
    assert second.execute("SELECT v FROM t WHERE id = 7").fetchall() == [], "removed from the device"
    # Asked after by its id, as after a restart, when the event is long gone.
    decided = second.txn_status(mine)
    assert decided["status"] == "rejected" and decided["reason"] == event.reason
    assert second.wait_for_txn(mine, timeout=DEADLINE) == decided
    assert second.pending_txns() == []
    second.execute("INSERT INTO t(v) VALUES ('kept')")
    second.commit()
    assert second.wait_for_txn(second.last_txn_id, timeout=DEADLINE) == {"status": "accepted"}
    with pytest.raises(octodb.Error, match="only a device"):
        backend.txn_status(mine)

    # The primary goes: the app hears that, and why.
    gone = second.events()
    backend.close()
    event = None
    while event is None or event.kind != "disconnected":
        event = gone.get(timeout=DEADLINE)
        assert event is not None, "no disconnected event"
    assert event.reason, "the disconnected event says why"


def test_the_same_file_cannot_be_two_nodes(open_primary, tmp_path):
    backend = open_primary()
    try:
        octodb.connect(f"file:{tmp_path / 'backend.db'}?node=secondary&connect=tcp://127.0.0.1:9")
        raise AssertionError("opened a primary's file as a device")
    except octodb.OperationalError as e:
        assert "backend.db" in str(e)


def test_pragma_sync_status_is_the_same_json_as_sync_status(open_primary, tmp_path):
    backend = open_primary()
    via_pragma = json.loads(backend.execute("PRAGMA sync_status").fetchone()[0])
    assert via_pragma["node_type"] == "primary" and via_pragma["db_is_ready"]
    assert backend.sync_status()["public_key"] == via_pragma["public_key"] == backend.public_key
    cur = backend.execute("PRAGMA nodes")
    assert [d[0] for d in cur.description][:3] == ["public_key", "node_id", "node_type"]
    local = octodb.connect(tmp_path / "plain.db")
    assert local.sync_status()["node_type"] == "local" and local.node_type == "local"
    assert local.wait_until_ready(timeout=1)["db_is_ready"]


def test_a_wait_that_cannot_succeed_times_out(open_primary, open_device):
    backend = open_primary(auth="user")
    phone = open_device(backend)
    try:
        phone.wait_until_ready(timeout=0.3)
        raise AssertionError("an unauthorized device was ready")
    except TimeoutError as e:
        assert "not ready within" in str(e) and "sign up or log in" in str(e)


def test_wait_until_synced_returns_once_the_device_holds_the_backends_rows_and_its_writes_are_in(open_primary, open_device):
    backend = open_primary()
    make_table(backend)
    with backend:
        backend.executemany("INSERT INTO todos(title, row_owner) VALUES (?, '*')", [(f"shared {i}",) for i in range(500)])
    phone = open_device(backend)
    events = phone.events()
    phone.wait_until_ready(timeout=DEADLINE)
    with phone:
        phone.execute("INSERT INTO todos(title) VALUES ('mine')")
    status = phone.wait_until_synced(timeout=DEADLINE)
    assert status["synced"] and status["caught_up"] and status["outbox_len"] == 0
    assert phone.execute("SELECT count(*) FROM todos").fetchone() == (501,)
    assert backend.execute("SELECT count(*) FROM todos WHERE title = 'mine'").fetchone() == (1,)
    assert backend.wait_until_synced(timeout=0)["synced"], "a primary is always in sync"
    kinds = set()
    wait_until("the caught_up event", lambda: kinds.add(getattr(events.get(timeout=DEADLINE), "kind", None)) or "caught_up" in kinds)


def test_wait_until_synced_says_why_a_device_is_not_in_sync(open_primary, open_device):
    backend = open_primary(auth="user")
    phone = open_device(backend)
    phone.wait_for(lambda s: s["auth_state"] == "required", timeout=DEADLINE)
    with pytest.raises(TimeoutError, match="sign up or log in"):
        phone.wait_until_synced(timeout=0.1)


def test_a_device_whose_app_writes_without_pause_still_receives_rows(open_primary, open_device, tmp_path):
    """Python's implicit transactions on a device committing back to back do not keep the
    node's engine out of the file: a backend row arrives, and the app's rows are accepted."""
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    stop = threading.Event()
    committed = []
    failed = []
    uri = f"file:{tmp_path / 'phone.db'}?node=secondary&connect={backend.bound_addresses[0]}"

    def app():
        try:
            db = octodb.connect(uri)
            while not stop.is_set():
                with db:
                    db.executemany("INSERT INTO todos(title) VALUES (?)", [("app",)] * 100)
                committed.append(1)
            db.close()
        except Exception as e:  # reported by the test, not lost in the thread
            failed.append(e)

    writer = threading.Thread(target=app)
    writer.start()
    try:
        wait_until("the app's first commit", lambda: committed or failed)
        assert not failed, failed
        backend.execute("INSERT INTO todos(title, row_owner) VALUES ('from the backend', '*')")
        backend.commit()
        wait_until(
            "the backend's row on the phone while its app writes",
            lambda: phone.execute("SELECT count(*) FROM todos WHERE title = 'from the backend'").fetchone()[0] == 1,
        )
        wait_until(
            "some of the app's rows on the backend while it writes",
            lambda: backend.execute("SELECT count(*) FROM todos WHERE title = 'app'").fetchone()[0] > 0,
        )
        assert writer.is_alive() and not failed, failed
    finally:
        stop.set()
        writer.join(timeout=DEADLINE)
    assert not failed, failed
    phone.wait_for(lambda s: s["outbox_len"] == 0, timeout=DEADLINE)
    wait_until(
        "every row of the app on the backend",
        lambda: backend.execute("SELECT count(*) FROM todos WHERE title = 'app'").fetchone()[0] == 100 * len(committed),
    )


def test_a_dump_holds_the_apps_data_and_none_of_the_nodes_own_tables(open_primary, open_device):
    backend = open_primary()
    make_table(backend)
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    with phone:
        phone.execute("INSERT INTO todos(title) VALUES ('buy milk')")
    dump = list(phone.iterdump())
    # The node's keys, log and outbox are octodb's: a dump shared for debugging must not
    # carry the device's secret key, and a copy restored from it is not that node.
    assert not [line for line in dump if "_octo_" in line]
    assert any("buy milk" in line for line in dump)
    copy = sqlite3.connect(":memory:")
    copy.executescript("\n".join(dump))
    assert copy.execute("SELECT title FROM todos").fetchall() == [("buy milk",)]
    # The device's own row_owner default (this_user()) is not in it: plain SQLite has no such
    # function, and a row inserted into the copy without an owner must not fail.
    copy.execute("INSERT INTO todos(title) VALUES ('in the copy')")


def test_a_lost_clusters_backup_restored_from_python(tmp_path):
    """octodb.backup_node copies a running member's file (marked: it is a cluster's);
    octodb.restore_cluster, every primary lost, makes the copy a cluster of its own, which
    opens with the rows and takes writes; octodb.mark_restored marks a stopped member's file.
    A running node is refused, with nothing changed."""
    first = octodb.connect(primary_uri(tmp_path / "p1.db"))
    second = octodb.connect(
        f"{primary_uri(tmp_path / 'p2.db')}&connect={first.bound_addresses[0]}"
    )
    try:
        # The second is a voter before the first writes: a commit made while the membership
        # changes may be refused (to be tried again), as a loaded machine showed.
        wait_until("the second primary follows", lambda: any(
            n["cluster_role"] == "follower" for n in first.nodes()))
        first.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)")
        first.execute("INSERT INTO notes(body, row_owner) VALUES ('kept', '*')")
        first.commit()
        wait_until("the row on the second primary", lambda: _unless("no such table",
            lambda: second.execute("SELECT count(*) FROM notes").fetchone() == (1,)))
        copy = tmp_path / "p2-copy.db"
        assert octodb.backup_node(primary_uri(tmp_path / "p2.db"), copy) is True
        with pytest.raises(octodb.OperationalError, match="open"):
            octodb.mark_restored(primary_uri(tmp_path / "p2.db"))
    finally:
        second.close()
        first.close()

    # Every primary lost: the copy starts a new cluster.
    copy_uri = primary_uri(copy)
    restored = wait_until("the copy free to restore", lambda: _unless("open",
        lambda: octodb.restore_cluster(copy_uri)))
    assert restored["node_id"] >= 1
    assert restored["former_members"], "the old cluster's members are named"
    first_node, end_node = restored["reserved_node_ids"]
    assert end_node - first_node == 999_999, restored
    again = octodb.mark_restored(copy_uri)
    assert again == {"rejoins": False, "reserved_node_ids": None,
                     "reserved_user_ids": None}, "a cluster of one: its ids reserved already"
    alone = octodb.connect(copy_uri)
    try:
        assert alone.execute("SELECT body FROM notes").fetchall() == [("kept",)]
        alone.execute("INSERT INTO notes(body, row_owner) VALUES ('new', '*')")
        alone.commit()
        assert alone.execute("SELECT count(*) FROM notes").fetchone() == (2,)
    finally:
        alone.close()

    # A member's file taken while stopped (here p1's) is marked to rejoin as a new member.
    assert wait_until("p1 free to mark", lambda: _unless("open",
        lambda: octodb.mark_restored(primary_uri(tmp_path / "p1.db"))))["rejoins"] is True


def _unless(error, call):
    """call()'s result, or None while it fails with an OperationalError saying `error` (a
    table that has not reached this node yet, a node's file still held open)."""
    try:
        return call()
    except octodb.OperationalError as e:
        if error in str(e):
            return None
        raise


def test_backup_of_a_cluster_members_file_is_marked_to_rejoin(open_primary, tmp_path):
    """sqlite3's Connection.backup of a primary in a cluster of two marks the copy as
    `octodb backup` marks its copies: restored, the member rejoins as a new member (Raft
    cannot take it back under its old identity). A primary alone's copy needs no mark."""
    first = open_primary("p1.db")
    alone = octodb.connect(str(tmp_path / "alone-copy.db"))
    first.backup(alone)
    marks = "SELECT count(*) FROM _octo_meta WHERE key = 'raft_restored_copy'"
    assert alone.execute(marks).fetchone() == (0,)
    alone.close()

    second = octodb.connect(
        f"file:{tmp_path / 'p2.db'}?node=primary&bind=tcp://127.0.0.1:0"
        f"&connect={first.bound_addresses[0]}"
    )
    try:
        def voters():
            cluster = first.sync_status().get("cluster") or {}
            return len([m for m in cluster.get("members", []) if m.get("voter")]) == 2

        wait_until("two voters", voters)
        copy = octodb.connect(str(tmp_path / "member-copy.db"))
        second.backup(copy)
        assert copy.execute(marks).fetchone() == (1,)
        copy.close()
    finally:
        second.close()


def test_a_blob_written_in_a_transaction_replicates_and_outside_one_is_refused(open_primary, open_device):
    backend = open_primary()
    backend.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body BLOB, row_owner)")
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    with phone:
        phone.execute("INSERT INTO notes(title, body) VALUES ('n1', zeroblob(4))")
    (rid,) = phone.execute("SELECT id FROM notes").fetchone()
    # SQLite would commit a blob written outside a transaction by itself, unsent.
    with pytest.raises(octodb.OperationalError, match="inside a transaction"):
        phone.blobopen("notes", "body", rid)
    phone.execute("BEGIN")
    with phone.blobopen("notes", "body", rid) as blob:
        blob.write(b"AB")
    phone.commit()
    phone.wait_until_synced(timeout=DEADLINE)
    # SQLite shows a blob write to the capture as a delete of the row: it must stay a write.
    wait_until(
        "the blob's bytes on the backend",
        lambda: backend.execute("SELECT title, body FROM notes").fetchall() == [("n1", b"AB\0\0")],
    )
    with phone:
        phone.execute("INSERT INTO notes(title) VALUES ('n2')")
    phone.wait_until_synced(timeout=DEADLINE)
    titles = wait_until(
        "the second row on the backend",
        lambda: [t for (t,) in backend.execute("SELECT title FROM notes ORDER BY title")] == ["n1", "n2"],
    )
    assert titles
    # Readable blobs and local tables are as in sqlite3.
    with phone.blobopen("notes", "body", rid, readonly=True) as blob:
        assert blob.read() == b"AB\0\0"


def test_a_blob_dropped_without_close_is_closed(tmp_path):
    import gc

    db = octodb.connect(str(tmp_path / "x.db"))
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES (zeroblob(10))")
    db.commit()
    db.blobopen("t", "x", 1, readonly=True).read()
    gc.collect()
    db.execute("DROP TABLE t")


def test_a_write_before_the_device_is_ready_says_why_the_table_is_missing(open_primary, open_device):
    backend = open_primary(auth="user")
    backend.execute("CREATE TABLE todos(id INTEGER PRIMARY KEY, title, row_owner)")
    backend.commit()
    phone = open_device(backend)
    assert not phone.sync_status()["db_is_ready"]
    with pytest.raises(octodb.OperationalError, match="no such table: todos: this device does not have"):
        phone.execute("INSERT INTO todos(title) VALUES ('too early')")


def test_a_mistyped_node_parameter_says_how_the_name_was_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(octodb.OperationalError, match="read as a file name.*node=") as raised:
        octodb.connect("file:x.db?nodes=secondary&connect=tcp://127.0.0.1:1")
    assert raised.value.sqlite_errorname == "SQLITE_CANTOPEN"


def test_a_followers_write_with_no_leader_is_busy(tmp_path):
    """A follower whose leader is gone (two voters, one left) refuses a write as SQLite refuses
    one it cannot take now: OperationalError with SQLITE_BUSY, which apps already retry on,
    nothing of it applied; not an unknown outcome."""
    first = octodb.connect(primary_uri(tmp_path / "p1.db"))
    first.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)")
    first.commit()
    second = octodb.connect(f"{primary_uri(tmp_path / 'p2.db')}&connect={first.bound_addresses[0]}")
    try:
        wait_until("the table on the second primary", lambda: _unless("no such table",
            lambda: second.execute("SELECT count(*) FROM notes").fetchone() == (0,)))
        first.close()
        with pytest.raises(octodb.OperationalError, match="try it again") as raised:
            second.execute("INSERT INTO notes(body, row_owner) VALUES ('lost', '*')")
            second.commit()
        assert raised.value.sqlite_errorname == "SQLITE_BUSY", raised.value
        assert raised.value.sqlite_errorcode == 5
        second.rollback()
        assert second.execute("SELECT count(*) FROM notes").fetchone() == (0,)
    finally:
        second.close()
        first.close()
