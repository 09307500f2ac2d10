"""The Celery side of tasks_vs_celery.py: one no-op task that returns when it started.

BENCH_BROKER names the Redis URL (broker and result backend); BENCH_DURABLE=1 acknowledges a
task only after it ran (acks_late, one task prefetched per worker), Celery's closest to
octodb's guarantee that a task whose worker dies runs again.
"""

import os
import time

from celery import Celery

app = Celery("celery_noop", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BROKER"])
if os.environ.get("BENCH_DURABLE") == "1":
    app.conf.task_acks_late = True
    app.conf.task_reject_on_worker_lost = True
    app.conf.worker_prefetch_multiplier = 1


@app.task(name="noop")
def noop(i):
    return time.time()
