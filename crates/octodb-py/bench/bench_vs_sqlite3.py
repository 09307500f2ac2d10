"""octodb against Python's sqlite3 on the same work, in one run, on a local database file.

    python bench_vs_sqlite3.py [--rows N] [--repeat R] [--max-ratio X]

Each scenario runs R times per module (alternating) and keeps the best time; the ratio is
octodb's time over sqlite3's (lower is better). --max-ratio makes the run fail when a ratio
is above it.
"""

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time

import octodb

SCHEMA = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, note TEXT)"


def rows(n):
    return [(i, f"item {i}", i % 97, i * 0.25, "x" * (i % 40)) for i in range(n)]


def fresh(module, path):
    if os.path.exists(path):
        os.remove(path)
    db = module.connect(path)
    db.execute(SCHEMA)
    return db


def insert_executemany(module, path, data):
    db = fresh(module, path)
    started = time.perf_counter()
    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", data)
    db.commit()
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def filled(module, path, data):
    db = fresh(module, path)
    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", data)
    db.commit()
    return db


def single_row_selects(module, path, data, lookups):
    db = filled(module, path, data)
    n = len(data)
    keys = [(i * 7919) % n for i in range(lookups)]
    started = time.perf_counter()
    for k in keys:
        db.execute("SELECT name, qty, price FROM items WHERE id = ?", (k,)).fetchone()
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def single_row_selects_cursor(module, path, data, lookups):
    db = filled(module, path, data)
    cur = db.cursor()
    n = len(data)
    keys = [(i * 7919) % n for i in range(lookups)]
    started = time.perf_counter()
    for k in keys:
        cur.execute("SELECT name, qty, price FROM items WHERE id = ?", (k,))
        cur.fetchone()
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def full_scan_fetchall(module, path, data, scans):
    db = filled(module, path, data)
    started = time.perf_counter()
    for _ in range(scans):
        db.execute("SELECT * FROM items").fetchall()
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def full_scan_iterate(module, path, data, scans):
    db = filled(module, path, data)
    started = time.perf_counter()
    for _ in range(scans):
        for _row in db.execute("SELECT id, name, price FROM items"):
            pass
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def full_scan_row_factory(module, path, data, scans):
    db = filled(module, path, data)
    db.row_factory = module.Row
    started = time.perf_counter()
    for _ in range(scans):
        for row in db.execute("SELECT id, name, price FROM items"):
            row["name"]
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--max-ratio", type=float, default=None)
    args = ap.parse_args()
    n = args.rows
    data = rows(n)
    lookups = n // 2
    scenarios = [
        (f"insert {n} rows (executemany, one commit)", lambda m, p: insert_executemany(m, p, data)),
        (f"{lookups} single-row selects (connection.execute)", lambda m, p: single_row_selects(m, p, data, lookups)),
        (f"{lookups} single-row selects (one cursor)", lambda m, p: single_row_selects_cursor(m, p, data, lookups)),
        (f"full scan of {n} rows x5 (fetchall)", lambda m, p: full_scan_fetchall(m, p, data, 5)),
        (f"full scan of {n} rows x5 (iterate)", lambda m, p: full_scan_iterate(m, p, data, 5)),
        (f"full scan of {n} rows x5 (Row, by name)", lambda m, p: full_scan_row_factory(m, p, data, 5)),
    ]
    print(f"octodb {octodb.octodb_version} (SQLite {octodb.sqlite_version}) vs sqlite3 "
          f"(SQLite {sqlite3.sqlite_version}); Python {platform.python_version()}; "
          f"{os.cpu_count()} cores; best of {args.repeat}")
    print(f"{'scenario':58} {'sqlite3':>9} {'octodb':>9} {'ratio':>6}")
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="octodb-bench-") as d:
        for title, run in scenarios:
            best = {sqlite3: float("inf"), octodb: float("inf")}
            for _ in range(args.repeat):
                for module in (sqlite3, octodb):
                    path = os.path.join(d, f"{module.__name__}.db")
                    best[module] = min(best[module], run(module, path))
            ratio = best[octodb] / best[sqlite3]
            worst = max(worst, ratio)
            print(f"{title:58} {best[sqlite3]:8.3f}s {best[octodb]:8.3f}s {ratio:6.2f}")
            sys.stdout.flush()
    print(f"worst ratio: {worst:.2f}")
    if args.max_ratio is not None and worst > args.max_ratio:
        print(f"FAIL: a ratio is above {args.max_ratio}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
