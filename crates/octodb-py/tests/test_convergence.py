"""Randomized convergence through the Python module: two devices and the backend write with
sqlite3's API at random (implicit and explicit transactions, executemany, REPLACE, upserts,
savepoints, rollbacks); in the end each device holds exactly the backend's rows its user may
see. The steps come from a fixed seed: a failure names it."""

import random

import pytest

from conftest import DEADLINE

SHARED_IDS = 8


def visible(db, user):
    return db.execute(
        "SELECT rowid, id, tag, v, n, row_owner FROM t WHERE row_owner = ? OR row_owner = '*' ORDER BY rowid",
        (user,),
    ).fetchall()


def device_step(rng, db, step):
    tag = f"s{step}"
    shared = rng.randint(1, SHARED_IDS)
    roll = rng.randrange(100)
    try:
        if roll < 25:
            db.execute("INSERT INTO t(tag, v, n) VALUES (?, ?, 0)", (tag, f"v{step}"))
            db.commit()
        elif roll < 40:
            db.execute("INSERT INTO t(id, tag, v, n) VALUES (?, ?, ?, 0)", (shared, tag, f"v{step}"))
            db.commit()
        elif roll < 55:
            db.execute("UPDATE t SET v = ?, n = n + 1 WHERE id = ?", (f"v{step}", shared))
            db.commit()
        elif roll < 62:
            db.execute("DELETE FROM t WHERE id = ?", (shared,))
            db.commit()
        elif roll < 70:
            db.executemany(
                "INSERT OR REPLACE INTO t(id, tag, v, n) VALUES (?, ?, ?, 0)",
                [(shared, f"{tag}-r", f"v{step}"), (rng.randint(1, SHARED_IDS), f"{tag}-r2", f"v{step}")],
            )
            db.commit()
        elif roll < 78:
            db.execute(
                "INSERT INTO t(id, tag, v, n) VALUES (?, ?, ?, 0) ON CONFLICT(id) DO UPDATE SET n = n + 1",
                (shared, tag, f"v{step}"),
            )
            db.commit()
        elif roll < 86:
            # The app's own transaction control, a savepoint rolled back inside it.
            db.isolation_level = None
            try:
                db.execute("BEGIN")
                db.execute("INSERT INTO t(tag, v, n) VALUES (?, ?, 0)", (f"{tag}-a", f"v{step}"))
                db.execute("SAVEPOINT s")
                db.execute("INSERT INTO t(tag, v, n) VALUES (?, ?, 0)", (f"{tag}-undone", f"v{step}"))
                db.execute("ROLLBACK TO s")
                db.execute("RELEASE s")
                db.execute("UPDATE t SET n = n + 10 WHERE id = ?", (shared,))
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                db.isolation_level = ""
        elif roll < 93:
            db.execute("INSERT INTO t(tag, v, n) VALUES (?, ?, 0)", (f"{tag}-gone", f"v{step}"))
            db.rollback()
        else:
            db.executemany(
                "INSERT INTO t(tag, v, n) VALUES (?, ?, ?)", [(f"{tag}-{i}", f"v{step}", i) for i in range(20)]
            )
            db.commit()
    except Exception as e:
        # A key another node took first: the app's own mistake, which fails the statement.
        assert "UNIQUE" in str(e), f"step {step} (roll {roll}): {e!r}"
        db.rollback()


def backend_step(rng, db, step, users):
    shared = rng.randint(1, SHARED_IDS)
    owner = rng.choice(users + ["*", None])
    roll = rng.randrange(4)
    if roll == 0:
        db.execute("INSERT INTO t(tag, v, n, row_owner) VALUES (?, ?, 0, ?)", (f"b{step}", f"v{step}", owner))
    elif roll == 1:
        db.execute(
            "INSERT OR REPLACE INTO t(id, tag, v, n, row_owner) VALUES (?, ?, ?, 0, ?)",
            (shared, f"b{step}", f"v{step}", owner),
        )
    elif roll == 2:
        db.execute("UPDATE t SET v = ?, n = n + 1 WHERE id = ?", (f"v{step}", shared))
    else:
        db.execute("DELETE FROM t WHERE id = ?", (shared,))
    db.commit()


@pytest.mark.parametrize("seed", [1, 2])
def test_devices_converge_under_random_work_through_the_python_api(open_primary, open_device, seed):
    rng = random.Random(seed)
    backend = open_primary()
    backend.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, v TEXT, n INTEGER, row_owner)")
    backend.commit()
    devices = [open_device(backend, name=f"d{i}.db") for i in range(2)]
    users = []
    for d in devices:
        d.wait_until_ready(timeout=DEADLINE)
        users.append(d.sync_status()["user_id"])
    for step in range(300):
        who = rng.randrange(len(devices) + 1)
        if who == len(devices):
            backend_step(rng, backend, step, users)
        else:
            device_step(rng, devices[who], step)
    for d in devices:
        d.wait_for(lambda s: s["outbox_len"] == 0, timeout=DEADLINE)
    last = backend.sync_status()["last_seq"]
    for d, user in zip(devices, users):
        d.wait_for(lambda s: s["last_seq"] >= last, timeout=DEADLINE)
        assert visible(d, user) == visible(backend, user), f"seed {seed}: a device differs from the backend"
        others = d.execute(
            "SELECT count(*) FROM t WHERE row_owner IS NOT NULL AND row_owner <> '*' AND row_owner <> ?", (user,)
        ).fetchone()[0]
        assert others == 0, f"seed {seed}: a device holds another user's rows"
