"""octodb.tasks with real nodes on loopback: a primary running workers, a device submitting."""

import datetime
import logging
import threading
import time

import pytest

import octodb
import octodb.tasks as tasks
from conftest import DEADLINE, primary_uri, wait_until

COMPLETED = []
LOCK = threading.Lock()


class Echo(tasks.Task):
    """Returns its arguments, reporting progress over `steps` steps."""

    def run(self, steps, payload):
        self.total = steps
        self.expected_duration = 0.01 * steps
        for i in range(steps):
            self.progress = i + 1
            self.publish()
        with LOCK:
            COMPLETED.append(self.idempotency_key)
        return payload


class Divide(tasks.Task):
    def run(self, a, b):
        return a / b


class QuotaExceeded(Exception):
    pass


class Quota(tasks.Task):
    def run(self):
        raise QuotaExceeded("no more than 3 a day")


class Lookup(tasks.Task):
    def run(self):
        return {}["nope"]


class GiveUp(tasks.Task):
    def run(self):
        raise tasks.Cancelled("I give up")


class Spin(tasks.Task):
    """Publishes until cancelled."""

    def run(self):
        self.total = 1_000_000
        self.progress = 0
        while True:
            self.progress += 1
            self.publish()
            threading.Event().wait(0.005)


class Forbidden(tasks.Task):
    def run(self):
        return "ran"


class Guarded(tasks.Task):
    def run(self):
        return "ran"


class Whoami(tasks.Task):
    def run(self):
        return self.submitted_by


SIGNERS = []


def only_secondaries(signer, task_type):
    SIGNERS.append((signer, task_type))
    return signer["node_type"] == "secondary"


@pytest.fixture
def nodes(tmp_path):
    uri = primary_uri(tmp_path / "backend.db")
    backend = octodb.connect(uri)
    worker = tasks.Worker(uri, threads=2, lease=10)
    for cls in (Echo, Divide, Quota, Spin, Lookup, GiveUp, Whoami):
        worker.register(cls)
    worker.register(Forbidden, allow_if=lambda signer, task_type: False)
    worker.register(Guarded, allow_if=only_secondaries)
    worker.start()
    device_uri = f"file:{tmp_path / 'phone.db'}?node=secondary&connect={backend.bound_addresses[0]}"
    device = octodb.connect(device_uri)
    device.wait_until_ready(timeout=DEADLINE)
    queue = tasks.Queue(device_uri)
    wait_until("the task table reaches the device", lambda: _has_table(device))
    yield queue, worker
    worker.stop()
    device.close()
    backend.close()


def _has_table(db):
    try:
        db.execute("SELECT 1 FROM octo_tasks LIMIT 1")
        return True
    except octodb.OperationalError:
        return False


def test_progress_reaches_the_submitter_and_arguments_keep_their_types(nodes):
    queue, _ = nodes
    payload = {
        "bytes": b"\x00\xff",
        "when": datetime.datetime(2026, 12, 4, 16, 0),
        "day": datetime.date(2026, 1, 2),
        # The app's own dicts shaped like the encoding's markers stay dicts.
        "looks_like_bytes": {"$bytes": "AP8="},
        "nested": [{"$date": {"$dict": [1, 2]}}],
    }
    task = Echo(queue).start(20, payload)
    seen = []
    result = task.join(timeout=DEADLINE, progress_callback=lambda t: seen.append((t.m_progress, t.m_total)))
    assert result == payload
    assert task.m_result == payload and task.state == "done" and task.error is None
    assert seen, "progress was reported"
    assert [p for p, _ in seen] == sorted(p for p, _ in seen), "progress never goes back"
    assert seen[-1] == (20.0, 20.0)
    assert task.attempts == 1
    assert COMPLETED.count(f"{task.id}:1") == 1


def test_a_handler_knows_who_submitted_its_task(nodes):
    queue, _ = nodes
    who = Whoami(queue).start().join(timeout=DEADLINE)
    assert who["public_key"] == queue.public_key
    assert who["node_type"] == "secondary"
    assert who["user_id"] is not None and who["node_id"] > 0


def test_state_result_and_error_follow_the_row_without_join(nodes):
    queue, _ = nodes
    task = Echo(queue).start(3, "hello")
    assert task.state in ("queued", "running", "done")
    wait_until("the task's state reads done", lambda: task.state == "done")
    assert task.result == "hello" and task.error is None
    failing = Divide(queue).start(1, 0)
    wait_until("the failing task's state reads failed", lambda: failing.state == "failed")
    assert isinstance(failing.error, ZeroDivisionError)


def test_errors_keep_their_type_name_and_message(nodes, caplog):
    queue, _ = nodes
    with caplog.at_level(logging.WARNING, logger="octodb.tasks.worker"):
        with pytest.raises(ZeroDivisionError, match="division by zero"):
            Divide(queue).start(1, 0).join(timeout=DEADLINE)
    # The worker's log keeps the traceback, which the submitter does not get.
    failed = [r for r in caplog.records if "ZeroDivisionError" in r.getMessage()]
    assert failed and "Traceback" in failed[0].getMessage(), caplog.text
    assert "return a / b" in failed[0].getMessage()
    task = Quota(queue).start()
    with pytest.raises(tasks.TaskFailed) as raised:
        task.join(timeout=DEADLINE)
    assert type(raised.value).__name__ == "QuotaExceeded"
    assert str(raised.value) == "no more than 3 a day"
    assert task.state == "failed"
    # The message as raised: a KeyError's was quoted twice, a task's own Cancelled lost its.
    with pytest.raises(KeyError) as raised:
        Lookup(queue).start().join(timeout=DEADLINE)
    assert raised.value.args == ("nope",)
    with pytest.raises(tasks.Cancelled, match="I give up"):
        GiveUp(queue).start().join(timeout=DEADLINE)


def test_cancel_raises_cancelled_inside_run_and_in_join(nodes):
    queue, _ = nodes
    task = Spin(queue).start()
    wait_until("the task runs", lambda: task.refresh() == "running" and (task.progress or 0) > 0)
    task.cancel()
    with pytest.raises(tasks.Cancelled):
        task.join(timeout=DEADLINE)
    assert task.state == "cancelled"


class NoWorkerRuns(tasks.Task):
    def run(self):
        return "never"


def test_a_waiting_task_of_a_type_no_worker_runs_is_cancelled_too(nodes):
    queue, _ = nodes
    task = NoWorkerRuns(queue).start()
    task.cancel()
    with pytest.raises(tasks.Cancelled):
        task.join(timeout=DEADLINE)
    assert task.state == "cancelled"


def test_a_task_of_a_type_no_worker_runs_is_said_in_the_log_once(nodes, caplog):
    caplog.set_level(logging.WARNING, logger="octodb")
    queue, _ = nodes
    said = lambda: [
        r for r in caplog.records if r.name.startswith("octodb.") and "no worker" in r.getMessage()
    ]
    first = NoWorkerRuns(queue).start()
    found = wait_until("the worker's warning", said)
    assert "Echo" in found[0].getMessage(), "it names the types it runs"
    second = NoWorkerRuns(queue).start()
    # (Once the second task is noted by the intake, nothing more is said of its type.)
    Echo(queue).start(1, "after").join(timeout=DEADLINE)
    assert len(said()) == 1
    for task in (first, second):
        task.cancel()


def test_join_times_out_and_a_task_is_found_again_by_id(nodes, tmp_path):
    queue, worker = nodes
    # Not before an hour from now: it stays queued.
    # (A datetime, as Celery's eta= takes.)
    later = datetime.datetime.now() + datetime.timedelta(hours=1)
    task = Echo(queue).start(1, "later", not_before=later)
    with pytest.raises(TimeoutError):
        task.join(timeout=0.3)
    again = queue.task(task.id)
    assert again.state == "queued" and again.name == "Echo"
    again.cancel()
    with pytest.raises(tasks.Cancelled):
        again.join(timeout=DEADLINE)
    again.delete()
    with pytest.raises(LookupError):
        queue.task(task.id)


def test_the_seeds_example_runs_as_a_program(run_example):
    p = run_example("tasks_add.py")
    assert p.finish() == 0, p.output()
    assert "result: Add#" in p.output() and "--> 1" in p.output() and "--> 3" in p.output()
    assert "progress: 10.0/10.0" in p.output()


def test_the_backends_policy_decides_who_may_submit_a_type(nodes):
    queue, _ = nodes
    with pytest.raises(tasks.Refused) as refused:
        Forbidden(queue).start().join(timeout=DEADLINE)
    assert refused.value.reason == "signer not allowed"
    assert Guarded(queue).start().join(timeout=DEADLINE) == "ran"
    signer, task_type = SIGNERS[-1]
    assert task_type == "Guarded" and signer["public_key"] == queue.public_key


def test_a_new_device_that_has_not_downloaded_yet_is_told_to_wait(tmp_path):
    uri = f"file:{tmp_path / 'new.db'}?node=secondary&connect=tcp://127.0.0.1:9"
    queue = tasks.Queue(uri)
    with pytest.raises(Exception, match="has not reached this device yet"):
        Echo(queue).start("hello")
    with pytest.raises(TimeoutError, match="not ready within"):
        queue.wait_until_ready(timeout=0.2)


def test_register_takes_task_classes_only(tmp_path):
    worker = tasks.Worker(primary_uri(tmp_path / "backend.db"), threads=1)
    with pytest.raises(TypeError, match="subclass of octodb.tasks.Task"):
        worker.register(int)
    with pytest.raises(ValueError, match="not both"):
        worker.register(Echo, allowed_keys=[], allow_if=lambda s, t: True)
    # A key that is no public key would refuse every task of the type without a word.
    with pytest.raises(ValueError, match="not a node's public key"):
        worker.register(Echo, allowed_keys=["not-a-hex-key"])
    with pytest.raises(TypeError, match=r"allowed_keys=\[key\]"):
        worker.register(Echo, allowed_keys="ab" * 32)
    worker.register(Echo, allowed_keys=["AB" * 32])


class NotANumber(tasks.Task):
    def run(self):
        return float("nan")


def test_values_json_would_change_are_refused_not_changed(nodes):
    queue, worker = nodes
    with pytest.raises(TypeError, match="dict keys must be str, not int"):
        Echo(queue).start(1, {1: "a", "1": "b"})
    with pytest.raises(ValueError, match="cannot be NaN or infinite"):
        Echo(queue).start(1, float("inf"))
    # A class registered once the workers run would be silently unknown to them.
    with pytest.raises(RuntimeError, match="register task classes before start"):
        worker.register(NotANumber)


def test_a_not_before_past_the_expiry_is_refused_and_a_found_task_shows_its_type(nodes):
    queue, _ = nodes
    later = datetime.datetime.now().timestamp() + 7200
    with pytest.raises(ValueError, match="could never run"):
        Echo(queue).start(1, "x", not_before=later)
    task = Echo(queue).start(1, "x", not_before=later, expires_in=3 * 3600)
    assert queue.task(task.id).display().startswith(f"Echo#{task.id} ")
    task.cancel()


def test_a_result_that_is_not_json_fails_the_task_with_the_reason(tmp_path):
    uri = primary_uri(tmp_path / "backend.db")
    backend = octodb.connect(uri)
    worker = tasks.Worker(uri, threads=1)
    worker.register(NotANumber)
    worker.start()
    try:
        queue = tasks.Queue(uri)
        with pytest.raises(ValueError, match="NaN or infinite"):
            NotANumber(queue).start().join(timeout=DEADLINE)
    finally:
        worker.stop()
        backend.close()


LOCK_HELD = threading.Event()


class PublishesWhileLocked(tasks.Task):
    def run(self):
        LOCK_HELD.wait(DEADLINE)  # another thread of the program holds the write lock now
        self.progress = 1
        self.publish()  # waits for that lock: with the GIL released meanwhile
        return "published"


def test_publish_waiting_for_the_write_lock_lets_other_threads_run(tmp_path):
    """A handler's publish that waits for the file's write lock must not hold the GIL: the
    thread holding the lock needs the GIL to get on and commit, and every other thread of the
    program (and the engine, waiting for that lock too) stood still until the publish's busy
    timeout, 60 s (the broker and tasks walkthrough: a leader frozen, the cluster lost)."""
    uri = primary_uri(tmp_path / "backend.db")
    backend = octodb.connect(uri)
    worker = tasks.Worker(uri, threads=1)
    worker.register(PublishesWhileLocked)
    worker.start()
    try:
        queue = tasks.Queue(uri)
        task = PublishesWhileLocked(queue).start()
        wait_until("the task running", lambda: queue.task(task.id).state == "running")
        holder = octodb.connect(uri, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        LOCK_HELD.set()
        ticks = threading.Event()

        def python_work():
            for _ in range(20):
                time.sleep(0.01)  # each wake-up needs the GIL back
            ticks.set()

        threading.Thread(target=python_work, daemon=True).start()
        assert ticks.wait(20), "the program's threads stood still while the publish waited"
        holder.execute("COMMIT")
        assert task.join(timeout=DEADLINE) == "published"
        holder.close()
    finally:
        worker.stop()
        backend.close()


HOLDER_READY = threading.Event()
BUSY_SEEN = threading.Event()
BUSY_RUNS = []


class WritesAfterBusy(tasks.Task):
    """Writes a row on its own connection; the first time, the file's write lock is held
    elsewhere beyond the connection's busy timeout."""

    def run(self, uri):
        BUSY_RUNS.append(self.idempotency_key)
        HOLDER_READY.wait(DEADLINE)
        db = octodb.connect(uri, timeout=0.05)
        try:
            with db:
                db.execute("INSERT INTO done_by_task(task) VALUES (?)", (self.id,))
        except octodb.OperationalError:
            BUSY_SEEN.set()
            raise
        finally:
            db.close()
        return "written"


def test_a_handler_the_database_was_unavailable_to_runs_again_though_retries_are_spent(tmp_path):
    """SQLITE_BUSY (and a cluster's `Unavailable`, which Python sees as it) means the failing
    statement applied nothing: the worker runs the task again rather than failing it, even
    with no retries allowed (a cluster walkthrough: tasks failed by an election)."""
    uri = primary_uri(tmp_path / "backend.db")
    backend = octodb.connect(uri)
    backend.execute("CREATE TABLE done_by_task(task INTEGER, row_owner)")
    worker = tasks.Worker(uri, threads=1)
    worker.register(WritesAfterBusy, max_retries=0, backoff=0.05)
    worker.start()
    try:
        queue = tasks.Queue(uri)
        task = WritesAfterBusy(queue).start(uri)
        wait_until("the task running", lambda: queue.task(task.id).state == "running")
        holder = octodb.connect(uri, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        HOLDER_READY.set()
        assert BUSY_SEEN.wait(DEADLINE), "the handler's write was not refused while locked"
        holder.execute("COMMIT")
        holder.close()
        assert task.join(timeout=DEADLINE) == "written"
        assert len(BUSY_RUNS) == 2, BUSY_RUNS
        assert backend.execute("SELECT count(*) FROM done_by_task").fetchone()[0] == 1
    finally:
        worker.stop()
        backend.close()


def test_a_queue_closes_its_connection_and_refuses_calls_after(nodes):
    queue, _ = nodes
    with tasks.Queue(queue.uri) as q:
        assert Echo(q).start(1, "x").join(timeout=DEADLINE) == "x"
    with pytest.raises(ValueError, match="closed"):
        q.tasks()
    q.close()  # a second close does nothing
    assert queue.tasks(), "other queues of the node go on"
