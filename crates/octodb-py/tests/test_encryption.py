"""Encryption at rest from Python: octodb.connect(..., cipher=sqlcipher), and the files it makes
opened by stock SQLCipher 4 (PyPI's sqlcipher3-binary) with the same key, and back."""

import pytest

import octodb

KEY = "correct horse battery staple"
HEXKEY = "2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c"

try:
    import sqlcipher3
except ImportError:  # scripts/python-env installs it; only a platform without a wheel lacks it
    sqlcipher3 = None

needs_stock_sqlcipher = pytest.mark.skipif(
    sqlcipher3 is None,
    reason="sqlcipher3-binary (stock SQLCipher 4) could not be installed on this platform; "
    "scripts/python-env tries pip install sqlcipher3-binary",
)


def stock(path, key_pragma):
    db = sqlcipher3.connect(str(path))
    db.execute(f"PRAGMA key = {key_pragma}")
    return db


def test_a_local_encrypted_database_from_python(tmp_path):
    path = tmp_path / "x.db"
    db = octodb.connect(f"file:{path}?cipher=sqlcipher&key={KEY}", uri=True)
    db.execute("CREATE TABLE t(v)")
    db.execute("INSERT INTO t VALUES ('secret row')")
    db.commit()
    db.close()
    assert b"secret row" not in path.read_bytes()
    assert not path.read_bytes().startswith(b"SQLite format 3")
    with pytest.raises(octodb.DatabaseError, match="wrong key or not an encrypted database"):
        octodb.connect(f"file:{path}?cipher=sqlcipher&key=guess", uri=True)
    again = octodb.connect(f"file:{path}?cipher=sqlcipher&key={KEY}", uri=True)
    assert again.execute("SELECT v FROM t").fetchall() == [("secret row",)]


@needs_stock_sqlcipher
@pytest.mark.parametrize(
    "param,pragma",
    [(f"key={KEY}", f"'{KEY}'"), (f"hexkey={HEXKEY}", f"\"x'{HEXKEY}'\"")],
    ids=["passphrase", "raw key"],
)
def test_stock_sqlcipher_4_opens_octodbs_files_and_octodb_opens_its(tmp_path, param, pragma):
    # A local database and a primary's file, made by octodb.
    local = tmp_path / "local.db"
    db = octodb.connect(f"file:{local}?cipher=sqlcipher&{param}", uri=True)
    db.execute("CREATE TABLE t(v)")
    db.execute("INSERT INTO t VALUES ('from octodb')")
    db.commit()
    db.close()
    node = tmp_path / "node.db"
    p = octodb.connect(f"file:{node}?node=primary&bind=tcp://127.0.0.1:0&cipher=sqlcipher&{param}")
    p.execute("CREATE TABLE t(v, row_owner)")
    p.execute("INSERT INTO t VALUES ('from a primary', '*')")
    p.commit()
    p.close()
    for path, want in [(local, "from octodb"), (node, "from a primary")]:
        s = stock(path, pragma)
        assert s.execute("SELECT v FROM t").fetchall() == [(want,)]
        s.close()
    # A file made by stock SQLCipher 4, opened by octodb.
    theirs = tmp_path / "theirs.db"
    s = stock(theirs, pragma)
    s.execute("CREATE TABLE t(v)")
    s.execute("INSERT INTO t VALUES ('from SQLCipher')")
    s.commit()
    s.close()
    db = octodb.connect(f"file:{theirs}?cipher=sqlcipher&{param}", uri=True)
    assert db.execute("SELECT v FROM t").fetchall() == [("from SQLCipher",)]


@needs_stock_sqlcipher
def test_stock_sqlcipher_refuses_octodbs_file_without_the_key(tmp_path):
    path = tmp_path / "x.db"
    db = octodb.connect(f"file:{path}?cipher=sqlcipher&key={KEY}", uri=True)
    db.execute("CREATE TABLE t(v)")
    db.commit()
    db.close()
    s = stock(path, "'guess'")
    with pytest.raises(sqlcipher3.DatabaseError):
        s.execute("SELECT * FROM t").fetchall()
