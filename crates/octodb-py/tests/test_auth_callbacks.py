"""The backend's authorization callbacks (register_function on a primary): called on a
worker thread, safe while the main thread is busy on the same connection, exceptions
reported and counted as -3, the asynchronous mode answered by PRAGMA."""

import json
import sys
import threading

import pytest

import octodb
from conftest import DEADLINE, wait_until

SIGNUP = "PRAGMA user_signup='" + json.dumps({"name": "ann"}) + "'"


def test_a_callback_runs_while_the_main_thread_is_inside_a_call_on_the_same_connection(
    open_primary, open_device
):
    backend = open_primary(auth="user")
    calls = []

    def on_signup(data, node_info):
        calls.append((threading.current_thread() is threading.main_thread(), data, json.loads(node_info)))
        return 0

    backend.register_function("user_signup", 2, on_signup)
    phone = open_device(backend)
    phone.execute(SIGNUP)
    # The main thread stays inside execute() on the backend's connection (a long query)
    # until the device is approved: the callback must get the GIL meanwhile.
    long_query = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
        "SELECT count(*) FROM c"
    )
    wait_until(
        "the device's approval while the backend is busy",
        lambda: backend.execute(long_query).fetchone() and phone.sync_status()["db_is_ready"],
    )
    assert len(calls) == 1
    on_main, data, info = calls[0]
    assert not on_main, "callbacks run on a worker thread"
    assert json.loads(data) == {"name": "ann"}
    assert info["public_key"] == phone.public_key


def test_a_callback_that_raises_counts_as_an_error_and_is_reported(open_primary, open_device, monkeypatch):
    backend = open_primary(auth="user")
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u))

    def broken(data, node_info):
        raise ValueError("the accounts service is down")

    backend.register_function("user_signup", 2, broken)
    phone = open_device(backend)
    phone.execute(SIGNUP)
    status = phone.wait_for(lambda s: s["auth_state"] == "rejected", timeout=DEADLINE)
    assert "error" in status["auth_error"]
    assert status["node_id"] == 0 and not status["db_is_ready"]
    wait_until("the report", lambda: reported)
    assert reported[0].exc_type is ValueError
    assert reported[0].object is broken


def test_a_callback_returning_nonsense_counts_as_an_error(open_primary, open_device, monkeypatch):
    backend = open_primary(auth="user")
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u))
    backend.register_function("user_signup", 2, lambda data, info: "yes please")
    phone = open_device(backend)
    phone.execute(SIGNUP)
    phone.wait_for(lambda s: s["auth_state"] == "rejected", timeout=DEADLINE)
    wait_until("the report", lambda: reported)
    assert reported[0].exc_type is TypeError


def test_asynchronous_mode_the_main_thread_answers_later(open_primary, open_device):
    backend = open_primary(auth="user")
    queue = []
    backend.register_function("user_signup", 2, lambda data, info: queue.append(json.loads(info)) or -2)
    phone = open_device(backend)
    phone.execute(SIGNUP)
    node = wait_until("the queued request", lambda: queue and queue[0])
    assert phone.sync_status()["auth_state"] in ("requested", "pending")
    events = phone.events()
    backend.execute("PRAGMA authorize_user='" + node["public_key"] + ":0'")
    kinds = []
    while "ready" not in kinds:
        event = events.get(timeout=DEADLINE)
        assert event is not None, f"no ready event; got {kinds}"
        kinds.append(event.kind)
    status = phone.sync_status()
    assert status["node_id"] > 0 and status["user_id"] > 0
    pending = [n for n in backend.nodes() if n["public_key"] == node["public_key"]]
    assert pending[0]["auth_state"] == "approved"


def test_new_node_decides_devices_of_a_node_level_backend(open_primary, open_device):
    backend = open_primary(auth="node")
    backend.register_function("new_node", 1, lambda info: "secondary")
    robot = open_device(backend, "robot.db")
    status = robot.wait_until_ready(timeout=DEADLINE)
    assert status["node_type"] == "secondary" and status["node_id"] > 0


def test_the_names_are_authorization_callbacks_only_on_a_primary(tmp_path):
    local = octodb.connect(tmp_path / "local.db")
    with pytest.raises(octodb.ProgrammingError, match="primary"):
        local.register_function("user_signup", 2, lambda d, i: 0)
    # Any other name is a SQL function, as create_function.
    local.register_function("twice", 1, lambda x: 2 * x)
    assert local.execute("SELECT twice(21)").fetchone() == (42,)


@pytest.mark.parametrize("answer", [True, False])
def test_a_callback_returning_a_bool_is_refused_not_read_as_a_user_id(open_primary, open_device, monkeypatch, answer):
    # True is 1 and False is 0 to Python: read as answers they would log the device in as
    # user 1, or make it a new user, whatever the callback meant.
    backend = open_primary(auth="user")
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u))
    backend.register_function("user_login", 2, lambda data, info: answer)
    phone = open_device(backend)
    phone.execute("PRAGMA user_login='" + json.dumps({"name": "ann"}) + "'")
    status = phone.wait_for(lambda s: s["auth_state"] == "rejected", timeout=DEADLINE)
    assert status["node_id"] == 0 and not status["db_is_ready"]
    assert any("bool" in str(u.exc_value) for u in reported), reported
    # A refused device's waits end at once, saying so (not after the whole timeout).
    with pytest.raises(octodb.OperationalError, match="the backend refused this device"):
        phone.wait_until_ready(timeout=DEADLINE)


def test_a_callback_registered_with_the_wrong_number_of_arguments_is_refused(open_primary):
    backend = open_primary(auth="user")
    with pytest.raises(octodb.ProgrammingError, match="narg=2"):
        backend.register_function("user_signup", 1, lambda data: 0)
    with pytest.raises(octodb.ProgrammingError, match="narg=1"):
        backend.register_function("new_node", 2, lambda data, info: "secondary")
