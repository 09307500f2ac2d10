"""SQLAlchemy on octodb, as the README's recipe says: a device's ORM rows sync, and a
read-then-write session keeps working while rows stream in from the backend."""

import threading

import pytest

import octodb
from conftest import DEADLINE, device_uri, primary_uri, wait_until

sqlalchemy = pytest.importorskip("sqlalchemy")
from sqlalchemy import FetchedValue, event, select  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column  # noqa: E402


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    done: Mapped[int] = mapped_column(server_default="0")
    # Without FetchedValue the ORM names the column in every INSERT, with NULL: a local row
    # that never leaves the device. With it, the device's default (this_user()) applies.
    row_owner: Mapped[int | None] = mapped_column(server_default=FetchedValue())


def engine_for(uri):
    """The README's recipe: octodb's connections, transactions begun by SQLAlchemy with
    BEGIN IMMEDIATE (a read-then-write transaction takes the write lock first)."""
    engine = sqlalchemy.create_engine(
        "sqlite://",
        module=octodb,  # SQLAlchemy's exception classes wrap octodb's
        poolclass=sqlalchemy.pool.QueuePool,  # "sqlite://" alone picks a pool for :memory:
        creator=lambda: octodb.connect(uri, check_same_thread=False),
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@pytest.fixture
def backend_and_phone(tmp_path):
    # Written to from a thread of the test's own.
    backend = octodb.connect(primary_uri(tmp_path / "backend.db"), check_same_thread=False)
    backend.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL, "
        "done INTEGER NOT NULL DEFAULT 0, row_owner)"
    )
    uri = device_uri(tmp_path / "phone.db", backend)
    phone = octodb.connect(uri)
    phone.wait_until_ready(timeout=DEADLINE)
    engine = engine_for(uri)
    yield backend, phone, engine
    engine.dispose()
    phone.close()
    backend.close()


def test_rows_an_orm_adds_on_a_device_reach_the_backend_as_its_users(backend_and_phone):
    backend, phone, engine = backend_and_phone
    with Session(engine) as session:
        session.add_all([Note(body="buy milk"), Note(body="call mum")])
        session.commit()
        ids = sorted(n.id for n in session.scalars(select(Note)))
    user = phone.sync_status()["user_id"]
    rows = wait_until(
        "the ORM's rows on the backend",
        lambda: backend.execute("SELECT id, body, row_owner FROM notes ORDER BY id").fetchall()
        if backend.execute("SELECT count(*) FROM notes").fetchone()[0] == 2
        else None,
    )
    assert [r[0] for r in rows] == ids
    assert {r[1] for r in rows} == {"buy milk", "call mum"}
    assert all(r[2] == user for r in rows), rows


def test_a_read_then_write_session_goes_on_while_rows_stream_in(backend_and_phone):
    backend, phone, engine = backend_and_phone
    with Session(engine) as session:
        session.add(Note(body="toggle me"))
        session.commit()
    user = phone.sync_status()["user_id"]
    stop = threading.Event()

    def backend_writes():
        while not stop.is_set():
            with backend:
                backend.execute("INSERT INTO notes(body, row_owner) VALUES ('from the backend', ?)", (user,))
            stop.wait(0.005)

    writer = threading.Thread(target=backend_writes)
    writer.start()
    try:
        wait_until(
            "rows from the backend arriving",
            lambda: phone.execute("SELECT count(*) FROM notes").fetchone()[0] > 1,
        )
        for _ in range(30):
            with Session(engine) as session:
                note = session.scalars(select(Note).where(Note.body == "toggle me")).one()
                note.done = 1 - note.done
                session.commit()
    finally:
        stop.set()
        writer.join()
    with Session(engine) as session:
        assert session.scalars(select(Note).where(Note.body == "toggle me")).one().done == 0


def test_the_orm_sees_its_own_exception_classes_and_threads_keep_their_connections(
    backend_and_phone,
):
    """The README's recipe as a Python developer would run it (the ORM walkthrough): an
    IntegrityError is SQLAlchemy's (without `module=octodb` it came through as octodb's own,
    past `except sqlalchemy.exc.IntegrityError`), and sessions in several threads each keep
    their connection (the pool "sqlite://" picks alone closed connections other threads were
    using: 25 of 80 writes failed)."""
    backend, phone, engine = backend_and_phone
    with Session(engine) as session:
        session.add(Note(id=1, body="first"))
        session.commit()
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        with Session(engine) as session:
            session.add(Note(id=1, body="same id"))
            session.commit()
    errors = []

    def writes(n):
        try:
            for i in range(10):
                with Session(engine) as session:
                    session.add(Note(body=f"thread {n} note {i}"))
                    session.commit()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writes, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert phone.execute("SELECT count(*) FROM notes WHERE body LIKE 'thread %'").fetchone()[0] == 80
