"""octodb.tasks against Celery on Redis, side by side in one run: the same no-op tasks,
4 workers each, on this machine.

    bash setup_celery.sh            # Debian's redis-server, PyPI's celery (once)
    python tasks_vs_celery.py [--tasks N]

For each system: tasks/s from the first submission to the last task `done` as the submitter
sees it (octodb: on the device that submitted, by replication; Celery: its result fetched
from Redis), and the submit-to-running latency (p50, p99). Celery runs twice: configured as
durable as octodb (Redis `appendfsync always`, `acks_late`), and with its defaults (Redis
without append-only file, early acknowledgement). octodb commits every claim and outcome
with `synchronous=FULL` on the primary and the device.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import octodb
import octodb.tasks as tasks

HERE = os.path.dirname(os.path.abspath(__file__))
DEADLINE = 300.0


class Noop(tasks.Task):
    def run(self, i):
        return i


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_octodb(n, paced_n, directory):
    uri = f"file:{os.path.join(directory, 'backend.db')}?node=primary&bind=tcp://127.0.0.1:0"
    backend = octodb.connect(uri)
    worker = tasks.Worker(uri, threads=4)
    worker.register(Noop)
    worker.start()
    device_uri = f"file:{os.path.join(directory, 'phone.db')}?node=secondary&connect={backend.bound_addresses[0]}"
    device = octodb.connect(device_uri)
    device.wait_until_ready(timeout=60)
    queue = tasks.Queue(device_uri)
    end = time.monotonic() + 60
    while True:
        try:
            device.execute("SELECT 1 FROM octo_tasks LIMIT 1")
            break
        except octodb.OperationalError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)

    started = time.time()
    burst_ids = [Noop(queue).start(i).id for i in range(n)]
    # Wait, woken by the device's feed, until every task is done on the device.
    end = time.monotonic() + DEADLINE
    while True:
        position = queue._q.feed_position()
        done = device.execute("SELECT count(*) FROM octo_tasks WHERE state = 'done'").fetchone()[0]
        if done >= n:
            break
        if time.monotonic() > end:
            raise RuntimeError(f"octodb: only {done} of {n} tasks done")
        queue._q.wait_feed(position, 1.0)
    elapsed = time.time() - started
    # Latency alone: one task at a time, so no queue builds up.
    paced = []
    for i in range(paced_n):
        task = Noop(queue).start(i)
        task.join(timeout=DEADLINE)
        started_ms, created_ms = device.execute(
            "SELECT started_at_ms, created_at_ms FROM octo_tasks WHERE id = ?", (task.id,)
        ).fetchone()
        paced.append((started_ms - created_ms) / 1000.0)
    burst = [
        (s - c) / 1000.0
        for s, c in device.execute(
            "SELECT started_at_ms, created_at_ms FROM octo_tasks WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(burst_ids),),
        )
    ]
    worker.stop()
    device.close()
    backend.close()
    return n / elapsed, burst, paced


def bench_celery(n, paced_n, directory, durable):
    port = free_port()
    data = os.path.join(directory, f"redis-{'durable' if durable else 'default'}")
    os.makedirs(data)
    redis_args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", data]
    if durable:
        redis_args += ["--appendonly", "yes", "--appendfsync", "always"]
    redis = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
    broker = f"redis://127.0.0.1:{port}/0"
    env = dict(os.environ, BENCH_BROKER=broker, BENCH_DURABLE="1" if durable else "0")
    celery_worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_noop", "worker", "--concurrency", "4",
         "--pool", "prefork", "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ["BENCH_BROKER"] = broker
        os.environ["BENCH_DURABLE"] = env["BENCH_DURABLE"]
        sys.path.insert(0, HERE)
        import importlib

        import celery_noop

        celery_noop = importlib.reload(celery_noop)
        end = time.monotonic() + 60
        while not celery_noop.app.control.ping(timeout=0.5):
            if time.monotonic() > end:
                raise RuntimeError("the Celery worker did not start")
        started = time.time()
        submitted = []
        for i in range(n):
            submitted.append((time.time(), celery_noop.noop.delay(i)))
        burst = [r.get(timeout=DEADLINE) - t for t, r in submitted]
        elapsed = time.time() - started
        paced = []
        for i in range(paced_n):
            t = time.time()
            paced.append(celery_noop.noop.delay(i).get(timeout=DEADLINE) - t)
        return n / elapsed, burst, paced
    finally:
        celery_worker.terminate()
        celery_worker.wait(timeout=60)
        redis.terminate()
        redis.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks of the burst")
    parser.add_argument("--paced", type=int, default=200, help="tasks run one at a time, for latency")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is missing: run `bash setup_celery.sh` first")
    print(f"{args.tasks} no-op tasks submitted at once, then {args.paced} one at a time; 4 workers; {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        rows.append(("octodb (device -> primary -> device)", *bench_octodb(args.tasks, args.paced, directory)))
        rows.append(("celery+redis, durable (AOF always, acks_late)", *bench_celery(args.tasks, args.paced, directory, True)))
        rows.append(("celery+redis, defaults", *bench_celery(args.tasks, args.paced, directory, False)))
    print("burst: tasks/s from the first submission to the last done seen by the submitter;")
    print("latency: submit to running (ms), in the burst (queueing included) and one at a time")
    print(f"{'system':<48} {'tasks/s':>8} {'burst p50':>10} {'burst p99':>10} {'alone p50':>10} {'alone p99':>10}")
    for name, rate, burst, paced in rows:
        print(
            f"{name:<48} {rate:>8.0f} {percentile(burst, 50) * 1000:>10.1f} {percentile(burst, 99) * 1000:>10.1f} "
            f"{percentile(paced, 50) * 1000:>10.1f} {percentile(paced, 99) * 1000:>10.1f}"
        )


if __name__ == "__main__":
    main()
