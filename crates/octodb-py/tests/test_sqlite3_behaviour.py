"""The usual sqlite3 behaviours on local databases (no node=), checked the way a user would:
often by doing the same thing with Python's own sqlite3 and comparing."""

import datetime
import os
import sqlite3
import threading
import time

import pytest

import octodb
from conftest import wait_until


def both(tmp_path, name):
    """The same work on sqlite3 and on octodb, each on its own file."""
    return [(m, m.connect(tmp_path / f"{m.__name__}-{name}.db")) for m in (sqlite3, octodb)]


def test_a_local_file_is_a_plain_sqlite_file(tmp_path):
    db = octodb.connect(tmp_path / "app.db")
    db.execute("CREATE TABLE t(x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert db.execute("PRAGMA foreign_keys").fetchone() == (0,)
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    db.close()
    assert sorted(os.listdir(tmp_path)) == ["app.db"]
    plain = sqlite3.connect(tmp_path / "app.db")
    assert plain.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_uri_and_literal_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    octodb.connect("ro.db").close()
    ro = octodb.connect("file:ro.db?mode=ro", uri=True)
    with pytest.raises(octodb.OperationalError, match="readonly"):
        ro.execute("CREATE TABLE t(x)")
    with pytest.raises(octodb.OperationalError):
        octodb.connect("file:missing.db?mode=ro", uri=True)
    # Without uri=True a file: name is a file name, as in sqlite3.
    octodb.connect("file:odd.db?mode=ro").close()
    assert os.path.exists("file:odd.db?mode=ro")
    mem = octodb.connect("file:shared?mode=memory&cache=shared", uri=True)
    mem.execute("CREATE TABLE t(x)")
    other = octodb.connect("file:shared?mode=memory&cache=shared", uri=True)
    assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_timeout_is_the_busy_timeout(tmp_path):
    holder = octodb.connect(tmp_path / "busy.db")
    holder.execute("CREATE TABLE t(x)")
    holder.commit()
    holder.execute("INSERT INTO t VALUES (1)")  # holds the write lock in its transaction
    for timeout in (0, 0.3):
        waiter = octodb.connect(tmp_path / "busy.db", timeout=timeout)
        started = time.monotonic()
        with pytest.raises(octodb.OperationalError, match="locked"):
            waiter.execute("INSERT INTO t VALUES (2)")
        waited = time.monotonic() - started
        assert waited >= timeout * 0.9 and waited < timeout + 3
        waiter.close()
    holder.commit()


def test_transactions_as_in_sqlite3(tmp_path):
    traces = {}
    for module, db in both(tmp_path, "tx"):
        seen = []
        db.set_trace_callback(seen.append)
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES (1)")
        open_after_insert = db.in_transaction
        db.rollback()
        with db:
            db.executemany("INSERT INTO t VALUES (?)", ((i,) for i in range(3)))
        db.isolation_level = None
        db.execute("INSERT INTO t VALUES (9)")
        traces[module.__name__] = (seen, open_after_insert, db.execute("SELECT x FROM t").fetchall())
    assert traces["octodb"] == traces["sqlite3"]


def test_rows_factories_and_types(tmp_path):
    results = {}
    for module, db in both(tmp_path, "types"):
        db.row_factory = module.Row
        db.execute("CREATE TABLE t(i INTEGER, f REAL, s TEXT, b BLOB, n)")
        db.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?)", (2**62, 1.5, "é\x00z", b"\x00\xff", None))
        row = db.execute("SELECT * FROM t").fetchone()
        db.text_factory = bytes
        as_bytes = db.execute("SELECT s FROM t").fetchone()[0]
        results[module.__name__] = (tuple(row), row.keys(), row["S"], as_bytes, len(row))
    assert results["octodb"] == results["sqlite3"]


def test_converters_and_adapters(tmp_path):
    db = octodb.connect(":memory:", detect_types=octodb.PARSE_DECLTYPES | octodb.PARSE_COLNAMES)
    db.execute("CREATE TABLE t(d date, ts timestamp)")
    now = datetime.datetime(2024, 5, 9, 12, 30, 1, 250000)
    db.execute("INSERT INTO t VALUES (?, ?)", (now.date(), now))
    assert db.execute("SELECT d, ts FROM t").fetchone() == (now.date(), now)

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    octodb.register_adapter(Point, lambda p: f"{p.x};{p.y}")
    octodb.register_converter("point", lambda b: Point(*map(float, b.split(b";"))))
    try:
        p = db.execute('SELECT ? AS "p [point]"', (Point(1, 2),)).fetchone()[0]
        assert (p.x, p.y) == (1.0, 2.0)
    finally:
        del octodb.converters["POINT"]


def test_functions_aggregates_collations(tmp_path):
    results = {}
    for module, db in both(tmp_path, "fn"):
        db.create_function("rev", 1, lambda s: s[::-1], deterministic=True)

        class Concat:
            def __init__(self):
                self.parts = []

            def step(self, v):
                self.parts.append(v)

            def finalize(self):
                return "-".join(self.parts)

        db.create_aggregate("concat", 1, Concat)
        db.create_collation("backwards", lambda a, b: (a < b) - (a > b))
        db.execute("CREATE TABLE t(s)")
        db.executemany("INSERT INTO t VALUES (?)", [("abc",), ("xyz",), ("mno",)])
        results[module.__name__] = (
            db.execute("SELECT rev(s) FROM t ORDER BY s").fetchall(),
            db.execute("SELECT concat(s) FROM (SELECT s FROM t ORDER BY s)").fetchone(),
            db.execute("SELECT s FROM t ORDER BY s COLLATE backwards").fetchall(),
        )
    assert results["octodb"] == results["sqlite3"]


def test_executescript_and_iterdump_round_trip(tmp_path):
    script = """
        CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT, b BLOB);
        INSERT INTO a(v, b) VALUES ('it''s', x'00ff'), (NULL, NULL);
        CREATE INDEX a_v ON a(v);
        CREATE VIEW va AS SELECT v FROM a;
        """
    db = octodb.connect(":memory:")
    db.executescript(script)
    reference = sqlite3.connect(":memory:")
    reference.executescript(script)
    dump = list(db.iterdump())
    assert dump == list(reference.iterdump())
    copy = octodb.connect(":memory:")
    copy.executescript("\n".join(dump))
    assert copy.execute("SELECT * FROM a").fetchall() == db.execute("SELECT * FROM a").fetchall()


def test_threads(tmp_path):
    db = octodb.connect(tmp_path / "t.db")
    errors = []
    threading.Thread(target=lambda: errors.append(_try(db.execute, "SELECT 1"))).start()
    wait_until("the thread", lambda: errors)
    assert isinstance(errors[0], octodb.ProgrammingError)

    shared = octodb.connect(tmp_path / "shared.db", check_same_thread=False, isolation_level=None)
    shared.execute("CREATE TABLE t(n)")

    def work(k):
        for i in range(200):
            shared.execute("INSERT INTO t VALUES (?)", (k * 1000 + i,))
            shared.execute("SELECT count(*) FROM t").fetchone()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.execute("SELECT count(*), count(DISTINCT n) FROM t").fetchone() == (800, 800)


def test_a_thread_that_reuses_a_finished_ones_id_may_use_its_connection(tmp_path):
    """sqlite3 checks the thread by `threading.get_ident()`: a web server's new thread that got
    the id of the finished thread that opened the connection may use it (the app walkthrough:
    octodb refused it, naming the same id twice)."""

    def opened_in_a_thread(module):
        made = []

        def open_one():
            made.append((module.connect(":memory:"), threading.get_ident()))

        t = threading.Thread(target=open_one)
        t.start()
        t.join()
        return made[0]

    for module in (sqlite3, octodb):
        db, ident = opened_in_a_thread(module)
        for _ in range(50):  # thread ids are reused, though not promised to be
            outcome = []

            def use():
                reused = threading.get_ident() == ident
                outcome.append((reused, _try(db.execute, "SELECT 1")))

            t = threading.Thread(target=use)
            t.start()
            t.join()
            reused, result = outcome[0]
            if reused:
                assert not isinstance(result, Exception), (module.__name__, result)
                break
            assert isinstance(result, module.ProgrammingError), module.__name__
        else:
            pytest.skip("no thread got a finished one's id in 50 tries")


def test_interrupt_from_another_thread(tmp_path):
    db = octodb.connect(":memory:")
    done = threading.Event()

    def interrupter():
        # Until the endless query has been stopped (an interrupt before it starts is a no-op).
        while not done.wait(0.05):
            db.interrupt()

    threading.Thread(target=interrupter, daemon=True).start()
    try:
        with pytest.raises(octodb.OperationalError, match="interrupted"):
            db.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
            ).fetchone()
    finally:
        done.set()


def test_blob_and_backup(tmp_path):
    db = octodb.connect(":memory:")
    db.execute("CREATE TABLE t(b BLOB)")
    db.execute("INSERT INTO t VALUES (zeroblob(8))")
    db.commit()
    with db.blobopen("t", "b", 1) as blob:
        blob.write(b"octo")
        blob.seek(0)
        assert blob.read(4) == b"octo" and blob[4] == 0
    target = octodb.connect(tmp_path / "copy.db")
    db.backup(target)
    assert target.execute("SELECT b FROM t").fetchone() == (b"octo\x00\x00\x00\x00",)


def test_a_backup_target_made_in_another_thread(tmp_path):
    """sqlite3 checks only that a backup's target is open, not its thread: aiosqlite's
    backup, whose connections each live in a thread of their own, relies on it (the data
    tooling walkthrough)."""
    import threading

    for module, db in both(tmp_path, "bk"):
        db.execute("CREATE TABLE t(x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
        made = {}
        copy_path = tmp_path / f"{module.__name__}-copy.db"
        maker = threading.Thread(target=lambda: made.setdefault("target", module.connect(copy_path)))
        maker.start()
        maker.join()
        target = made["target"]
        db.backup(target)
        del made["target"], target  # (closing it here would be another thread's use)
        copy = module.connect(copy_path)
        assert copy.execute("SELECT x FROM t").fetchall() == [(1,)]
        copy.close()
        db.close()


def test_errors_are_the_same_classes(tmp_path):
    for module, db in both(tmp_path, "err"):
        db.execute("CREATE TABLE t(x UNIQUE CHECK (x > 0))")
        db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(module.IntegrityError) as e:
            db.execute("INSERT INTO t VALUES (1)")
        assert e.value.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
        with pytest.raises(module.OperationalError, match="no such table"):
            db.execute("SELECT * FROM nope")
        with pytest.raises(module.ProgrammingError, match="one statement at a time"):
            db.execute("SELECT 1; SELECT 2")
        db.close()
        with pytest.raises(module.ProgrammingError, match="closed database"):
            db.execute("SELECT 1")


def _try(f, *args):
    try:
        f(*args)
    except Exception as e:  # the test inspects which one
        return e
    return "no error"


def test_closing_from_a_callback_of_a_running_statement_is_refused():
    db = octodb.connect(":memory:")
    refused = []

    def closer(x):
        try:
            db.close()
        except octodb.OperationalError as e:
            refused.append(str(e))
        return x

    db.create_function("closer", 1, closer)
    rows = db.execute("SELECT closer(value) FROM (SELECT 1 AS value UNION ALL SELECT 2)").fetchall()
    assert rows == [(1,), (2,)] and len(refused) == 2
    db.close()
    with pytest.raises(octodb.ProgrammingError):
        db.execute("SELECT 1")
