"""The seed examples, in Python 3, as complete scenarios on loopback: a backend primary
(auth=user) deciding asynchronously (its queue processed by the main thread) or synchronously,
a device signing up then waiting for db_is_ready, a second device of the same user logging in.
Each example runs as its own process, as a real app would."""

import json
import re

import pytest

import octodb

ANN = json.dumps({"name": "ann", "password": "secret"})


@pytest.mark.parametrize("backend", ["primary_async_auth.py", "primary_sync_auth.py"])
def test_sign_up_then_log_in_from_a_second_device(tmp_path, run_example, backend):
    primary = run_example(
        backend,
        OCTODB_URI=f"file:{tmp_path / 'backend.db'}?node=primary&bind=tcp://127.0.0.1:0&auth=user",
    )
    address = primary.wait_line("primary listening on ").split()[-1]

    phone = run_example(
        "device_signup.py",
        OCTODB_DB=str(tmp_path / "phone.db"),
        OCTODB_SERVERS=address,
        OCTODB_USER=ANN,
        OCTODB_TODO="buy milk",
    )
    assert phone.finish() == 0, phone.output()
    ready = phone.wait_line("ready: ")
    node, user = re.match(r"ready: node (\d+) user (\d+)", ready).groups()
    assert int(node) > 0 and int(user) > 0
    assert "todo: buy milk" in phone.lines

    laptop = run_example(
        "device_login.py",
        OCTODB_DB=str(tmp_path / "laptop.db"),
        OCTODB_SERVERS=address,
        OCTODB_USER=ANN,
    )
    assert laptop.finish() == 0, laptop.output()
    node2, user2 = re.match(r"ready: node (\d+) user (\d+)", laptop.wait_line("ready: ")).groups()
    assert node2 != node, "a second device is a node of its own"
    assert user2 == user, "logging in reaches the same user"
    assert "todo: buy milk" in laptop.lines, "the user's rows were downloaded"

    # The backend's file, read as a plain SQLite database while its node runs.
    backend_db = octodb.connect(f"file:{tmp_path / 'backend.db'}?mode=ro", uri=True)
    assert backend_db.execute("SELECT title, row_owner FROM todos").fetchall() == [
        ("buy milk", int(user))
    ]
    assert backend_db.execute("SELECT name, user_id FROM private_accounts").fetchall() == [
        ("ann", int(user))
    ]
    backend_db.close()
    if backend == "primary_async_auth.py":
        # The callbacks ran on a worker thread and only queued; the main thread answered.
        assert any(l.startswith("on_user_signup_async signup_info:") for l in primary.lines)
        assert any(l.startswith("on_user_login_async login_info:") for l in primary.lines)
        assert f"account ann is user {user}" in primary.lines
    else:
        # The backend hears of the device's row through the change feed.
        change = primary.wait_line("change upsert todos ")
        assert "'buy milk'" in change and f"'row_owner': {user}" in change, change


def test_a_device_with_a_wrong_password_is_refused_and_sees_nothing(tmp_path, run_example, open_primary):
    primary = run_example(
        "primary_async_auth.py",
        OCTODB_URI=f"file:{tmp_path / 'backend.db'}?node=primary&bind=tcp://127.0.0.1:0&auth=user",
    )
    address = primary.wait_line("primary listening on ").split()[-1]
    phone = run_example(
        "device_signup.py",
        OCTODB_DB=str(tmp_path / "phone.db"),
        OCTODB_SERVERS=address,
        OCTODB_USER=ANN,
    )
    assert phone.finish() == 0, phone.output()

    # An intruder's app, in this process: same API, wrong password.
    intruder = octodb.connect(f"file:{tmp_path / 'intruder.db'}?node=secondary&connect={address}")
    intruder.execute("PRAGMA user_login='" + json.dumps({"name": "ann", "password": "guess"}) + "'")
    status = intruder.wait_for(lambda s: s["auth_state"] == "rejected", timeout=60)
    assert status["node_id"] == 0 and not status["db_is_ready"]
    assert intruder.execute("SELECT count(*) FROM sqlite_master WHERE name = 'todos'").fetchone() == (0,)
    intruder.close()
