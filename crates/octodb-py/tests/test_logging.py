"""The engine's logs reach Python's logging: a refused device's warning under the `octodb`
logger, and the `octodb` logger's level deciding what is forwarded."""

import json
import logging

from conftest import wait_until

SIGNUP = "PRAGMA user_signup='" + json.dumps({"name": "ann"}) + "'"


def records_of(caplog, level, text):
    return [
        r
        for r in caplog.records
        if r.name.startswith("octodb.") and r.levelno == level and text in r.getMessage()
    ]


def test_a_refused_device_s_warning_reaches_python_logging(open_primary, open_device, caplog):
    caplog.set_level(logging.WARNING, logger="octodb")
    backend = open_primary(auth="user")
    backend.register_function("user_signup", 2, lambda data, info: -1)
    phone = open_device(backend)
    phone.execute(SIGNUP)
    found = wait_until(
        "the device's warning in Python's logging",
        lambda: records_of(caplog, logging.WARNING, "refused"),
    )
    # Named after the engine's module, under the `octodb` logger; the engine's thread and
    # source line, not the forwarding thread's.
    assert found[0].name.startswith("octodb.node."), found[0].name
    assert not found[0].threadName.startswith("Dummy"), found[0].threadName
    assert found[0].pathname.endswith(".rs") and found[0].lineno > 0
    # Below the logger's level, nothing is forwarded (the device's "connected" is INFO).
    assert not [r for r in caplog.records if r.name.startswith("octodb.") and r.levelno < logging.WARNING]


def test_the_octodb_logger_s_level_decides_what_is_forwarded(open_primary, open_device, caplog):
    caplog.set_level(logging.INFO, logger="octodb")
    backend = open_primary()
    phone = open_device(backend)
    phone.wait_until_ready(timeout=60)
    # The device's connection to its primary is logged at INFO by the engine.
    wait_until(
        "an INFO record of the engine",
        lambda: [r for r in caplog.records if r.name.startswith("octodb.") and r.levelno == logging.INFO],
    )
