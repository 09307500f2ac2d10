"""The change feed in Python: a backend hears of every committed row change, a device's
included, in log order (docs/change-feed.md)."""

import pytest

import octodb
from conftest import DEADLINE


def test_the_backend_reads_a_devices_rows_from_the_feed(open_primary, open_device):
    backend = open_primary()
    backend.execute("CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, row_owner)")
    phone = open_device(backend)
    status = phone.wait_until_ready(timeout=DEADLINE)
    after = backend.feed_position()

    with phone:
        phone.execute("INSERT INTO todos(title) VALUES ('buy milk')")
    with phone:
        phone.execute("DELETE FROM todos")

    seen = []
    while len(seen) < 2:
        assert backend.wait_feed(after, timeout=DEADLINE) > after, "the feed moved on"
        changes, after = backend.changes_after(after)
        seen += changes
    insert, delete = seen
    assert insert["table"] == "todos" and insert["kind"] == "upsert"
    assert insert["origin_node"] == status["node_id"], "the device's own transaction"
    assert insert["row"]["title"] == "buy milk"
    assert insert["row"]["row_owner"] == status["user_id"]
    assert insert["seq"] < delete["seq"] and insert["seq"] <= after
    assert (delete["kind"], delete["rowid"], delete["row"]) == ("delete", insert["rowid"], {})

    # Nothing new: the wait ends at its timeout with the position where it was.
    assert backend.wait_feed(after, timeout=0.05) == after
    assert backend.changes_after(after) == ([], after)
    # A position past the end (kept from before a restore, say) is refused, naming the end:
    # carried on from, it would miss every change until the feed passed it.
    with pytest.raises(octodb.OperationalError, match=f"past its end \\({after}\\)"):
        backend.changes_after(after + 1000)


def test_a_device_keeps_no_log_to_read(open_primary, open_device):
    backend = open_primary()
    phone = open_device(backend)
    phone.wait_until_ready(timeout=DEADLINE)
    with pytest.raises(octodb.OperationalError, match="kept on primaries only"):
        phone.changes_after(0)
    with pytest.raises(ValueError, match="0 or more"):
        backend.changes_after(-1)
    with pytest.raises(ValueError, match="timeout"):
        backend.wait_feed(0, timeout=-1)
