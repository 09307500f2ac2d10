"""Shared helpers: temporary directories, waiting on conditions with deadlines (never fixed
sleeps), nodes on free loopback ports, example scripts run as real processes."""

import os
import pathlib
import queue
import subprocess
import sys
import threading
import time

import pytest

import octodb

# Generous: CI machines are slow and shared; tests wait on conditions, not on time.
DEADLINE = 60.0
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def wait_until(what, cond, deadline=DEADLINE, every=0.02):
    """Return cond()'s first truthy value, or fail naming `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def primary_uri(path, auth=None):
    uri = f"file:{path}?node=primary&bind=tcp://127.0.0.1:0"
    return uri + (f"&auth={auth}" if auth else "")


def device_uri(path, primary):
    return f"file:{path}?node=secondary&connect={primary.bound_addresses[0]}"


@pytest.fixture
def open_primary(tmp_path):
    made = []

    def make(name="backend.db", auth=None):
        db = octodb.connect(primary_uri(tmp_path / name, auth))
        made.append(db)
        return db

    yield make
    for db in made:
        db.close()


@pytest.fixture
def open_device(tmp_path):
    made = []

    def make(primary, name="phone.db"):
        db = octodb.connect(device_uri(tmp_path / name, primary))
        made.append(db)
        return db

    yield make
    for db in made:
        db.close()


class Process:
    """An example script run as its own Python process, its output read line by line."""

    def __init__(self, script, env, cwd):
        self.lines = []
        self._queue = queue.Queue()
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script)],
            env=full_env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))

    def wait_line(self, prefix, deadline=DEADLINE):
        """The first output line starting with `prefix` (the process may still run)."""
        end = time.monotonic() + deadline
        while True:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            left = end - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self._queue.empty()):
                raise AssertionError(f"no line starting with {prefix!r}; output:\n" + self.output())
            try:
                self._queue.get(timeout=min(left, 0.5))
            except queue.Empty:
                pass

    def finish(self, deadline=DEADLINE):
        """Wait for the process to end by itself; its exit status."""
        try:
            code = self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the process did not finish; output:\n" + self.output())
        self._reader.join(timeout=5)
        return code

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)

    def output(self):
        return "\n".join(self.lines)


@pytest.fixture
def run_example(tmp_path):
    started = []

    def start(script, **env):
        p = Process(script, env, tmp_path)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
