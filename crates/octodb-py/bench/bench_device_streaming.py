"""A device streaming through the Python module against Python's own sqlite3 (issue 23, item 4).

    python bench_device_streaming.py [--rows N] [--rounds R]

Device A (a Python `octodb` connection to a primary on loopback, all in this process) inserts
N rows with `executemany` and `commit`, 100 rows a transaction, as fast as it can; the figure is
the rate at which those rows become visible on device B of the same user. Python's `sqlite3`
inserts the same rows the same way into a local file in WAL mode with synchronous=FULL, right
after each round, on the same disk. The median round by ratio is judged against the line: at
least 30% of sqlite3's rate.
"""

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time

import octodb

PER_TXN = 100
TARGET = 0.30
DEADLINE = 120.0
COLUMNS = "id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, note TEXT"
INSERT = "INSERT INTO items(name, qty, note) VALUES (?, ?, ?)"


def batches(rows):
    data = [(f"item {i}", i % 97, "x" * 64) for i in range(rows)]
    return [data[i : i + PER_TXN] for i in range(0, rows, PER_TXN)]


def wait_until(what, cond, every=0.002):
    end = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def sqlite3_rate(directory, work):
    path = os.path.join(directory, "plain.db")
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"CREATE TABLE items({COLUMNS}, row_owner)")
    db.commit()
    started = time.perf_counter()
    for batch in work:
        db.executemany(INSERT, batch)
        db.commit()
    elapsed = time.perf_counter() - started
    db.close()
    return sum(map(len, work)) / elapsed


def octodb_rate(directory, work):
    primary = octodb.connect(
        f"file:{os.path.join(directory, 'p.db')}?node=primary&bind=tcp://127.0.0.1:0&auth=user"
    )
    # Sign-up makes a new user (0); a login with {"user": N} joins user N's devices.
    primary.register_function("user_signup", 2, lambda data, info: 0)
    primary.register_function("user_login", 2, lambda data, info: int(json.loads(data)["user"]))
    primary.execute(f"CREATE TABLE items({COLUMNS}, row_owner)")
    primary.commit()
    address = primary.bound_addresses[0]

    def device(name):
        return octodb.connect(f"file:{os.path.join(directory, name)}?node=secondary&connect={address}")

    a = device("a.db")
    a.execute("PRAGMA user_signup='{}'")
    a.wait_until_ready(timeout=DEADLINE)
    user = a.sync_status()["user_id"]
    b = device("b.db")
    b.execute("PRAGMA user_login='" + json.dumps({"user": user}) + "'")
    b.wait_until_ready(timeout=DEADLINE)

    def has_table(db):
        try:
            db.execute("SELECT 1 FROM items LIMIT 1").fetchall()
            return True
        except octodb.OperationalError:
            return False

    wait_until("the table on both devices", lambda: has_table(a) and has_table(b))
    rows = sum(map(len, work))
    started = time.perf_counter()
    for batch in work:
        a.executemany(INSERT, batch)
        a.commit()
    wait_until(
        "every row on device B",
        lambda: b.execute("SELECT count(*) FROM items").fetchone()[0] == rows,
    )
    elapsed = time.perf_counter() - started
    for db in (b, a, primary):
        db.close()
    return rows / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = batches(args.rows)
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"sqlite3 on SQLite {sqlite3.sqlite_version}; load {os.getloadavg()[0]:.2f} (1 min)"
    )
    rounds = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="octodb-pystream-") as directory:
            ours = octodb_rate(directory, work)
            theirs = sqlite3_rate(directory, work)
        rounds.append((ours / theirs, ours, theirs))
        print(
            f"round {i + 1}: octodb {ours:,.0f} rows/s visible on device B, "
            f"sqlite3 (WAL, synchronous=FULL) {theirs:,.0f} rows/s: {ours / theirs:.1%}"
        )
    ratio, ours, theirs = sorted(rounds)[len(rounds) // 2]
    met = ratio >= TARGET
    print(
        f"median round: octodb {ours:,.0f} rows/s, sqlite3 {theirs:,.0f} rows/s = {ratio:.1%} "
        f"(spread {min(r[0] for r in rounds):.1%} - {max(r[0] for r in rounds):.1%}); "
        f"target >= {TARGET:.0%}: {'MET' if met else 'MISSED'}"
    )
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
