"""Newer Pythons' sqlite3 additions, on every Python the module runs on: 3.12's `autocommit`
attribute (PEP 249's always-open transaction, or SQLite's autocommit with no implicit control)
and `getconfig`/`setconfig`, 3.13's `iterdump(filter=)`; on local databases as sqlite3 documents
them, and what they mean on a replicated node."""

import sqlite3

import pytest

import octodb
from conftest import DEADLINE, device_uri, wait_until


def count(db, table="t"):
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def local(tmp_path):
    """A local database with table t, and a second connection to watch what is committed."""
    path = tmp_path / "app.db"
    setup = octodb.connect(path)
    setup.execute("CREATE TABLE t(x)")
    setup.commit()
    setup.close()
    opened = []

    def make(**kwargs):
        db = octodb.connect(path, **kwargs)
        opened.append(db)
        return db

    yield make
    for db in opened:
        db.close()


def test_legacy_control_is_the_default_and_the_constant_is_minus_one(local):
    db = local()
    assert octodb.LEGACY_TRANSACTION_CONTROL == -1
    assert db.autocommit == octodb.LEGACY_TRANSACTION_CONTROL
    db.execute("INSERT INTO t VALUES (1)")
    assert db.in_transaction, "the implicit BEGIN of isolation_level, as before 3.12"


def test_autocommit_false_keeps_a_transaction_open(local):
    db, watcher = local(autocommit=False), local()
    assert db.autocommit is False
    assert db.in_transaction, "open from the start"
    db.execute("INSERT INTO t VALUES (1)")
    assert count(watcher) == 0
    db.commit()
    assert count(watcher) == 1
    assert db.in_transaction, "commit() opens the next transaction"
    db.execute("INSERT INTO t VALUES (2)")
    db.rollback()
    assert db.in_transaction, "so does rollback()"
    assert count(db) == 1
    db.execute("INSERT INTO t VALUES (3)")
    db.close()
    assert count(watcher) == 1, "close() rolls the open transaction back"


def test_autocommit_false_ignores_isolation_level_and_executescript_commits_nothing(local):
    db, watcher = local(autocommit=False, isolation_level=None), local()
    assert db.in_transaction, "isolation_level=None does not mean autocommit here"
    db.executescript("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
    assert db.in_transaction and count(watcher) == 0, "no implicit COMMIT around a script"
    with pytest.raises(octodb.OperationalError, match="within a transaction"):
        db.executescript("BEGIN; INSERT INTO t VALUES (3); COMMIT;")
    with db:
        db.execute("INSERT INTO t VALUES (4)")
    assert count(watcher) == 3 and db.in_transaction, "the with block commits and reopens"


def test_commit_with_autocommit_false_after_the_apps_own_commit_says_so(local):
    db = local(autocommit=False)
    db.execute("COMMIT")
    with pytest.raises(octodb.OperationalError, match="no transaction is active"):
        db.commit()


def test_autocommit_true_leaves_transactions_to_the_app(local):
    db, watcher = local(autocommit=True), local()
    assert db.autocommit is True
    db.execute("INSERT INTO t VALUES (1)")
    assert not db.in_transaction and count(watcher) == 1, "no implicit BEGIN"
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (2)")
    db.commit()
    db.rollback()
    assert db.in_transaction, "commit() and rollback() do nothing"
    db.execute("COMMIT")
    assert count(watcher) == 2


def test_setting_autocommit_commits_or_opens(local):
    db, watcher = local(autocommit=False), local()
    db.execute("INSERT INTO t VALUES (1)")
    db.autocommit = True
    assert not db.in_transaction and count(watcher) == 1, "True commits the open transaction"
    db.autocommit = False
    assert db.in_transaction, "False opens one"
    db.autocommit = octodb.LEGACY_TRANSACTION_CONTROL
    assert db.autocommit == -1 and db.in_transaction, "legacy leaves it as it is"
    db.commit()
    assert not db.in_transaction


@pytest.mark.parametrize("value", [1, 0, "yes", None, -2, 1.0])
def test_autocommit_takes_only_the_bools_and_the_constant(local, value):
    with pytest.raises(ValueError, match="autocommit must be True, False, or sqlite3.LEGACY"):
        local(autocommit=value)
    db = local()
    with pytest.raises(ValueError, match="autocommit must be True, False"):
        db.autocommit = value


def test_getconfig_and_setconfig(local):
    db = local()
    assert db.getconfig(octodb.SQLITE_DBCONFIG_ENABLE_FKEY) is False
    db.setconfig(octodb.SQLITE_DBCONFIG_ENABLE_FKEY)
    assert db.getconfig(octodb.SQLITE_DBCONFIG_ENABLE_FKEY) is True
    assert db.execute("PRAGMA foreign_keys").fetchone() == (1,)
    db.setconfig(octodb.SQLITE_DBCONFIG_ENABLE_FKEY, False)
    assert db.execute("PRAGMA foreign_keys").fetchone() == (0,)
    db.setconfig(octodb.SQLITE_DBCONFIG_ENABLE_TRIGGER, False)
    assert db.getconfig(octodb.SQLITE_DBCONFIG_ENABLE_TRIGGER) is False, "a local database may"
    with pytest.raises(ValueError, match="unknown config 'op': 12345"):
        db.getconfig(12345)
    with pytest.raises(ValueError, match="unknown config"):
        db.setconfig(octodb.SQLITE_LIMIT_LENGTH)


def test_a_device_with_autocommit_false_syncs_at_each_commit(open_primary, tmp_path):
    backend = open_primary()
    backend.execute("CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, row_owner)")
    phone = octodb.connect(device_uri(tmp_path / "phone.db", backend), autocommit=False)
    try:
        phone.wait_until_ready(timeout=DEADLINE)
        phone.execute("INSERT INTO todos(title) VALUES ('mine')")
        phone.commit()
        phone.wait_until_synced(timeout=DEADLINE)
        assert backend.execute("SELECT title FROM todos").fetchall() == [("mine",)]

        # The open transaction reads one snapshot: rows that arrive meanwhile are seen after
        # the next commit() or rollback(), and a write after a read fails with a reason.
        assert count(phone, "todos") == 1
        seq = phone.sync_status()["last_seq"]
        with backend:
            backend.execute("INSERT INTO todos(title, row_owner) VALUES ('news', '*')")
        phone.wait_for(lambda s: s["last_seq"] > seq, timeout=DEADLINE)
        assert count(phone, "todos") == 1, "the snapshot of the open transaction"
        with pytest.raises(octodb.OperationalError, match="read the database before its first write") as e:
            phone.execute("INSERT INTO todos(title) VALUES ('again')")
        assert e.value.sqlite_errorname == "SQLITE_BUSY_SNAPSHOT"
        phone.rollback()
        assert count(phone, "todos") == 2
        phone.execute("INSERT INTO todos(title) VALUES ('again')")
        phone.commit()
        wait_until("the retried row on the backend", lambda: count(backend, "todos") == 3)
    finally:
        phone.close()


def test_setconfig_keeps_a_nodes_rules(open_primary, open_device):
    backend = open_primary()
    phone = open_device(backend)
    for db in (backend, phone):
        for op, enable in [
            (octodb.SQLITE_DBCONFIG_ENABLE_TRIGGER, False),
            (octodb.SQLITE_DBCONFIG_RESET_DATABASE, True),
            (octodb.SQLITE_DBCONFIG_WRITABLE_SCHEMA, True),
        ]:
            with pytest.raises(octodb.NotSupportedError):
                db.setconfig(op, enable)
        assert db.getconfig(octodb.SQLITE_DBCONFIG_ENABLE_TRIGGER) is True
        db.setconfig(octodb.SQLITE_DBCONFIG_DEFENSIVE)
        assert db.getconfig(octodb.SQLITE_DBCONFIG_DEFENSIVE) is True


def test_iterdump_filter_dumps_the_objects_whose_names_match(tmp_path):
    db = octodb.connect(tmp_path / "app.db")
    db.executescript(
        "CREATE TABLE app_a(x); CREATE TABLE app_b(y); CREATE TABLE other(z);"
        "CREATE INDEX app_a_x ON app_a(x); CREATE INDEX other_z ON other(z);"
        "INSERT INTO app_a VALUES (1); INSERT INTO other VALUES (2);"
    )
    dump = list(db.iterdump(filter="app_%"))
    restored = sqlite3.connect(":memory:")
    restored.executescript("\n".join(dump))
    names = [r[0] for r in restored.execute("SELECT name FROM sqlite_master ORDER BY name")]
    assert names == ["app_a", "app_a_x", "app_b"]
    assert restored.execute("SELECT x FROM app_a").fetchall() == [(1,)]
    assert list(db.iterdump(filter=None)) == list(db.iterdump())
    with pytest.raises(TypeError):
        list(db.iterdump(filter=1))
    db.close()
