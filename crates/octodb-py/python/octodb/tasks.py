"""The signed task queue: tasks that travel through the replicated database.

A device (or the backend itself) starts a task; the record (type, arguments, priority,
times, the node's public key and a fresh nonce) is signed with the node's own key and
stored as a row that reaches the workers on the primaries. A worker runs it only if the
signature, the signer, the nonce and the expiry check out; progress and the outcome come
back to the submitter's devices by replication. Code never travels: a task names a class
that the workers registered.

On a device::

    import octodb.tasks as tasks

    class Add(tasks.Task):
        def run(self, a, b):
            self.total = 10
            for i in range(10):
                self.progress = i + 1
                self.publish()          # coalesced; raises Cancelled once cancelled
            return a + b

    queue = tasks.Queue("file:phone.db?node=secondary&connect=tcp://backend:7000")
    queue.wait_until_ready(timeout=60)  # a new device: its first download brings the queue
    add = Add(queue)
    add.start(1, 2)                     # returns at once
    print(add.join(timeout=30, progress_callback=lambda t: print(t.progress, t.total)))

On the backend::

    worker = tasks.Worker("file:backend.db?node=primary&bind=tcp://0.0.0.0:7000", threads=4)
    worker.register(Add)                # by class name; max_retries=, allowed_keys= ...
    worker.start()
"""

import base64 as _base64
import builtins as _builtins
import datetime as _datetime
import json as _json
import logging as _logging
import time as _time
import traceback as _traceback

from octodb._octodb import OperationalError as _OperationalError
from octodb._octodb import _TaskQueue, _TaskWorkers

_log = _logging.getLogger("octodb.tasks.worker")

__all__ = [
    "Task",
    "Queue",
    "Worker",
    "Cancelled",
    "TaskFailed",
    "Refused",
    "TimeoutError",
]

TimeoutError = _builtins.TimeoutError

_ENDED = ("done", "failed", "cancelled", "refused")


class Cancelled(Exception):
    """The task was cancelled: raised by ``join``, and inside ``run`` at the next publish."""


class TaskFailed(Exception):
    """A task's error whose type is not a built-in exception: a subclass named after the
    original type is raised, with the original message."""


class Refused(Exception):
    """A worker refused the task: bad signature, signer not allowed, replayed, expired."""

    def __init__(self, reason, detail=None):
        super().__init__(reason if not detail else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- arguments as JSON


def _default(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": _base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, _datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, _datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"a task argument or result of type {type(value).__name__} cannot be sent")


# One-key objects that stand for a value JSON lacks. An app's own dict of that shape is sent
# as {"$dict": [[key, value]]}, so that it comes back a dict, not bytes or a date.
_MARKERS = ("$bytes", "$datetime", "$date", "$dict")


def _object_hook(obj):
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key == "$bytes":
            return _base64.b64decode(value)
        if key == "$datetime":
            return _datetime.datetime.fromisoformat(value)
        if key == "$date":
            return _datetime.date.fromisoformat(value)
        if key == "$dict":
            return {k: v for k, v in value}
    return obj


def _escaped(value):
    """`value` with every dict that looks like a marker wrapped as "$dict"."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                # JSON would turn 1 into "1" (and merge it with a "1" key): refused, not changed.
                raise TypeError(
                    f"a task argument or result's dict keys must be str, not {type(key).__name__} ({key!r})"
                )
        if len(value) == 1 and next(iter(value)) in _MARKERS:
            ((key, inner),) = value.items()
            return {"$dict": [[key, _escaped(inner)]]}
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    return value


def encode(value):
    """JSON text of `value`, with bytes, dates and datetimes kept."""
    try:
        return _json.dumps(_escaped(value), default=_default, separators=(",", ":"), allow_nan=False)
    except ValueError as e:
        if "JSON compliant" not in str(e):
            raise
        raise ValueError("a task argument or result cannot be NaN or infinite: JSON has no such numbers") from None


def decode(text):
    return _json.loads(text, object_hook=_object_hook)


_error_classes = {}


def _error(type_name, message):
    """An exception of the task's error type (a built-in one if it is one), with its message."""
    builtin = getattr(_builtins, type_name or "", None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        try:
            return builtin(message)
        except Exception:  # a built-in that wants other arguments
            pass
    if type_name == "Cancelled":  # a task that gave up by raising it: the module's own class
        return Cancelled(message)
    name = type_name if (type_name or "").isidentifier() else "TaskFailed"
    cls = _error_classes.get(name)
    if cls is None:
        cls = type(name, (TaskFailed,), {})
        _error_classes[name] = cls
    return cls(message)


# ---------------------------------------------------------------- the queue


class Queue:
    """A node's view of the task queue: a device's, or a primary's (which creates the
    queue's tables there). Tasks are started, followed and joined through it."""

    def __init__(self, uri):
        self._q = _TaskQueue(uri)
        self.uri = uri

    @property
    def public_key(self):
        return self._q.public_key

    def wait_until_ready(self, timeout=None):
        """A device: wait until its first download from the primaries is done (the queue's
        table comes with it), as ``Connection.wait_until_ready``; returns the status."""
        import octodb

        conn = octodb.connect(self.uri)
        try:
            return conn.wait_until_ready(timeout=timeout)
        finally:
            conn.close()

    def task(self, task_id):
        """A handle on task `task_id` (submitted earlier, perhaps before a restart)."""
        info = self._q.info(task_id)
        if info is None:
            raise LookupError(f"task {task_id} does not exist here (deleted, or not submitted here)")
        t = Task(self, task_id=task_id)
        t.name = info["type"]
        return t

    def tasks(self):
        """Every task this node sees, as dicts, newest first."""
        return self._q.list()

    def close(self):
        """Close the queue's connection to its node (also at the end of a ``with`` block).
        Tasks started through it keep running; a closed queue refuses further calls."""
        self._q.close()
        if _queues.get(self.uri) is self:
            del _queues[self.uri]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


_queues = {}


def _queue_of(where):
    if isinstance(where, Queue):
        return where
    if isinstance(where, str):
        q = _queues.get(where)
        if q is None:
            q = _queues[where] = Queue(where)
        return q
    raise TypeError("a task needs a Queue or the URI of a node (node=secondary or node=primary)")


# ---------------------------------------------------------------- tasks


_ALIASES = {"m_progress": "progress", "m_total": "total", "m_expected_duration": "expected_duration"}


def _alias(attr):
    return property(
        lambda self: getattr(self, attr), lambda self, value: setattr(self, attr, value)
    )


class Task:
    """Subclass it and define ``run(self, *args)``. On the submitter, ``start`` / ``join``;
    inside ``run`` on a worker, set ``progress``, ``total``, ``expected_duration`` (or the
    ``m_`` names) and call ``publish()``."""

    #: The name workers know the class by (default: the class name).
    name = None

    def __init__(self, queue=None, task_id=None):
        self._queue = _queue_of(queue) if queue is not None else None
        self.id = task_id
        self.progress = getattr(self, "_default_progress", None)
        self.total = getattr(self, "_default_total", None)
        self.expected_duration = getattr(self, "_default_expected_duration", None)
        self._run = None
        self._result = None
        self._error = None
        self._state = None if task_id is None else "queued"
        self.attempts = 0
        self.reason = None
        if task_id is not None:
            self.refresh()

    @classmethod
    def task_name(cls):
        return cls.name or cls.__name__

    # crypto_task's names
    m_progress = _alias("progress")
    m_total = _alias("total")
    m_expected_duration = _alias("expected_duration")
    m_result = property(lambda self: self.result)

    def __init_subclass__(cls, **kwargs):
        # A subclass giving an `m_` name a value (crypto_task's `m_expected_duration = 0`)
        # sets a default: the name stays an alias.
        super().__init_subclass__(**kwargs)
        for alias, attr in _ALIASES.items():
            value = cls.__dict__.get(alias)
            if not isinstance(value, property):
                setattr(cls, "_default_" + attr, value)
                setattr(cls, alias, _alias(attr))

    def run(self, *args):
        raise NotImplementedError("define run(self, *args) in the task's class")

    # -- what the submitter reads: the row as it is now, until the task has ended

    @property
    def state(self):
        """queued, running, done, failed, cancelled or refused: read from the task's row each
        time on the submitter's side (inside ``run``, "running")."""
        self._follow()
        return self._state

    @state.setter
    def state(self, value):
        self._state = value

    @property
    def result(self):
        """The handler's result once the task is done (else None)."""
        self._follow()
        return self._result

    @result.setter
    def result(self, value):
        self._result = value

    @property
    def error(self):
        """The exception ``join`` raises once the task failed, was cancelled or refused."""
        self._follow()
        return self._error

    @error.setter
    def error(self, value):
        self._error = value

    def _follow(self):
        # Only a submitted task not yet ended, outside its run, has anything new to read.
        if self._run is not None or self.id is None or self._queue is None:
            return
        if self._state in _ENDED:
            return
        info = self._queue._q.info(self.id)
        if info is None:
            return  # deleted: the last values read stay
        self._update(info)
        if self._state in _ENDED:
            self._queue._q.acknowledge(self.id)

    # -- submitter side

    def start(self, *args, priority=0, not_before=None, expires_in=3600.0):
        """Sign and submit the task; returns at once. `not_before`: a Unix time or an aware
        `datetime` (a naive one is local time) before which no worker starts it; `expires_in`
        seconds (at most 7 days) after which a worker refuses it. Higher `priority` runs
        first."""
        if isinstance(not_before, _datetime.datetime):
            not_before = not_before.timestamp()
        if self._queue is None:
            raise TypeError("this task has no queue: make it with Task(queue)")
        if self.id is not None:
            raise RuntimeError("this task was started already")
        if not_before is not None and not_before >= _time.time() + expires_in:
            raise ValueError(
                f"not_before lies after the task's expiry ({expires_in:g} s from now): it could "
                "never run; give a larger expires_in (at most 7 days)"
            )
        self.id = self._queue._q.submit(
            self.task_name(), encode(list(args)), priority, not_before, expires_in
        )
        self._state = "queued"
        return self

    def refresh(self):
        """Read the task's row again; returns its state. Seeing it ended acknowledges the
        final state (its retention starts)."""
        info = self._queue._q.info(self.id)
        if info is None:
            raise LookupError(f"task {self.id} does not exist (deleted after its retention?)")
        self._update(info)
        if self._state in _ENDED:
            self._queue._q.acknowledge(self.id)
        return self._state

    def _update(self, info):
        self._state = info["state"]
        self.progress = info["progress"]
        self.total = info["total"]
        if info["expected_duration"] is not None:
            self.expected_duration = info["expected_duration"]
        self.attempts = info["attempts"]
        self.reason = info["reason"]
        if info["state"] == "done":
            self._result = decode(info["result"]) if info["result"] is not None else None
            self._error = None
        elif info["state"] == "failed":
            self._error = _error(info["error_type"], info["error_message"] or "")
        elif info["state"] == "cancelled":
            self._error = Cancelled("the task was cancelled")
        elif info["state"] == "refused":
            self._error = Refused(info["reason"] or "refused", info["error_message"])

    def join(self, timeout=None, progress_callback=None):
        """Wait until the task ends; returns its result or raises its error (with the
        handler's type name and message), ``Cancelled``, ``Refused`` or ``TimeoutError``.
        ``progress_callback(task)`` is called whenever progress changes."""
        if callable(timeout) and progress_callback is None:
            # crypto_task's join(progress_callback)
            timeout, progress_callback = None, timeout
        if self.id is None:
            raise RuntimeError("start the task before joining it")
        q = self._queue._q
        deadline = None if timeout is None else _time.monotonic() + timeout
        last = None
        while True:
            position = q.feed_position()
            info = q.info(self.id)
            if info is None:
                raise LookupError(f"task {self.id} does not exist (deleted after its retention?)")
            self._update(info)
            now = (self.progress, self.total, self.expected_duration)
            if progress_callback is not None and self.progress is not None and now != last:
                last = now
                progress_callback(self)
            if self._state in _ENDED:
                q.acknowledge(self.id)
                if self._state == "done":
                    return self._result
                raise self._error
            wait = 1.0
            if deadline is not None:
                left = deadline - _time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"task {self.id} did not end within {timeout} s (it is {self._state}); "
                        "join again to keep waiting, or cancel it"
                    )
                wait = min(wait, left)
            q.wait_feed(position, wait)

    def cancel(self):
        """Ask for the task to be cancelled (a request signed by this node): a queued task
        never runs, a running one sees ``Cancelled`` at its next publish."""
        self._queue._q.cancel(self.id)

    def delete(self):
        """Delete the ended task now, on every node."""
        self._queue._q.delete(self.id)

    def display(self):
        # A task found by id (`queue.task(id)`) carries its row's type as its name.
        return f"{self.name or self.task_name()}#{self.id} {self.state}"

    # -- worker side (inside run)

    @property
    def idempotency_key(self):
        """``"<task id>:<attempt>"``: names this attempt. A side effect that must happen once
        per task, whatever the attempts (a worker killed after it and before the outcome was
        written runs the task again under the next attempt), is keyed by the task id."""
        return self._run.idempotency_key if self._run is not None else None

    @property
    def attempt(self):
        return self._run.attempt if self._run is not None else self.attempts

    @property
    def submitted_by(self):
        """Inside ``run``: who submitted the task, the node that signed it, as the worker
        checked it: ``{"public_key", "node_id", "node_type", "user_id"}`` (``user_id`` None
        for a primary). A handler checks with it what its arguments name (that order
        ``order_id`` is this user's), which a type's ``allow_if`` cannot see. None outside
        ``run``."""
        return self._run.submitted_by if self._run is not None else None

    def publish(self):
        """Publish progress, total and expected duration (at most about 10 writes a second;
        the last values are always written at the end). Raises ``Cancelled`` once the task is
        cancelled."""
        if self._run is None:
            return
        if self._run.publish(self.progress, self.total, self.expected_duration):
            raise Cancelled("the task was cancelled")

    # crypto_task's load()/save() around progress updates
    save = publish

    def load(self):
        pass


def _message_of(e):
    """An exception's message as it was raised: ``KeyError("nope")`` gives ``nope`` (its str is
    ``'nope'``, quoted, which made the submitter's copy quoted twice)."""
    if len(e.args) == 1 and isinstance(e.args[0], str):
        return e.args[0]
    return str(e)


def _runner_for(cls):
    def runner(run, args_json):
        task = cls.__new__(cls)
        Task.__init__(task)
        task.id = run.id
        task._run = run
        task.state = "running"
        try:
            args = decode(args_json)
            if not isinstance(args, list):
                args = [args]
            result = task.run(*args)
            # The last values are written with the outcome (no write of their own).
            run.publish(task.progress, task.total, task.expected_duration, False)
            return (True, encode(result))
        except Cancelled as e:
            return (False, "Cancelled", _message_of(e) or "the task was cancelled", False)
        except Exception as e:  # the task's error goes back to the submitter as it is
            # Its traceback stays here, in the worker's log: the submitter (a user's device)
            # hears the error's type and message only. As text: a record keeping the
            # traceback itself would keep this run's frames, which a handler on another
            # thread must not drop.
            _log.warning(
                "task %s (%s, attempt %s) failed:\n%s",
                run.id,
                cls.task_name(),
                run.attempt,
                _traceback.format_exc().rstrip(),
            )
            return (False, type(e).__name__, _message_of(e), _unavailable(e))

    return runner


def _unavailable(e):
    """Whether the handler failed only because the database could not take its write for a
    while (no leader in the cluster, the file's lock held too long: SQLITE_BUSY, nothing of
    the statement applied; or the broker's `Unavailable`): the worker runs the task again
    even when its retries are spent (docs/tasks.md, "Retries")."""
    if isinstance(e, _OperationalError) and getattr(e, "sqlite_errorname", None) == "SQLITE_BUSY":
        return True
    from octodb.broker import Unavailable

    return isinstance(e, Unavailable)


# ---------------------------------------------------------------- workers


def _public_keys(keys):
    """`allowed_keys` checked: a key that is no node's public key would refuse every task of the
    type, silently."""
    if isinstance(keys, (str, bytes)):
        raise TypeError("allowed_keys is a list of public keys: allowed_keys=[key]")
    out = []
    for k in keys:
        key = str(k).strip().lower()
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(
                f"allowed_keys: {k!r} is not a node's public key (64 hex digits, as PRAGMA nodes "
                "and sync_status show them)"
            )
        out.append(key)
    return out


class Worker:
    """Worker threads on a primary running the registered task classes."""

    def __init__(self, uri, threads=4, lease=30.0, retention=300.0, retention_cap=7 * 86400.0):
        self.uri = uri
        self.threads = threads
        self.lease = lease
        self.retention = retention
        self.retention_cap = retention_cap
        self._handlers = {}
        self._allowed = {}
        self._workers = None

    def register(self, cls, name=None, max_retries=0, backoff=1.0, allowed_keys=None, allow_if=None):
        """Run tasks of `cls` (named `name`, default the class's name), retrying a failed run
        up to `max_retries` times after `backoff` seconds (doubling). Who may submit it:
        every approved node by default; only the nodes whose public keys are in
        `allowed_keys`; or those for which `allow_if(signer, task_type)` is true (`signer`: a
        dict with public_key, node_id, node_type, user_id; it may read the database, not
        write it)."""
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register takes a subclass of octodb.tasks.Task, not {cls!r}")
        if self._workers is not None:
            raise RuntimeError(
                "register task classes before start(): the running workers took the list when "
                "they started (stop() and start() again to add one)"
            )
        if allowed_keys is not None and allow_if is not None:
            raise ValueError("give allowed_keys or allow_if, not both")
        name = name or cls.task_name()
        self._handlers[name] = (_runner_for(cls), int(max_retries), float(backoff))
        if allowed_keys is not None:
            self._allowed[name] = _public_keys(allowed_keys)
        if allow_if is not None:
            if not callable(allow_if):
                raise TypeError("allow_if must be callable: allow_if(signer, task_type) -> bool")
            self._allowed[name] = allow_if
        return cls

    def start(self):
        if self._workers is not None:
            raise RuntimeError("the workers are running already")
        self._workers = _TaskWorkers(
            self.uri,
            self._handlers,
            self._allowed,
            self.threads,
            self.lease,
            self.retention,
            self.retention_cap,
        )
        return self

    def stop(self):
        if self._workers is not None:
            self._workers.stop()
            self._workers = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
