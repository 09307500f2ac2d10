"""octodb.broker against Pyro5 on the same calls, side by side in one run, on this machine.

    python bench_broker_vs_pyro5.py [--seconds S]

Pyro5 is installed from PyPI into the running interpreter if it is missing.

Each server runs in a process of its own (this script, re-run with --serve octodb|pyro5); the
clients run here. Measured for both: method calls per second with one caller and with 8
concurrent callers (threads; octodb's share one client, Pyro5's have a proxy each, as Pyro5
requires), and object fetches per second (octodb: an exported object's state fetched by key,
uncached; Pyro5: a method returning the same fields as a dict). Then octodb's invalidation
latency: the server updates an object every 10 ms and the client notes when each invalidation
arrives (p50, p99; Pyro5 has no invalidations). Times come from CLOCK_MONOTONIC, which both
processes share on Linux.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.abspath(__file__)


class Status:
    def __init__(self):
        self.health = "OK"
        self.load = {"joe": 0.1, "curly": None, "moe": 2.5}
        self.servers = ("joe", "curly", "moe")
        self.n = 0


class Root:
    version_string = "0.12.3"

    def __init__(self):
        self.status = Status()
        self.updates = []
        self.running = threading.Event()

    def echo(self, x):
        return x

    def start_updates(self):
        self.running.set()

    def update_times(self):
        return list(self.updates)

    def status_fields(self):
        s = self.status
        return {"health": s.health, "load": s.load, "servers": s.servers, "n": s.n}


def serve_octodb(uri):
    from octodb.broker import BrokerServer

    import octodb

    db = octodb.connect(uri)
    broker = BrokerServer(uri)
    broker.export_class(Status, "health load servers n")
    root = Root()
    broker.export_object(root, "version_string echo status_fields update_times start_updates", refs="status")
    broker.add_static(root.status, "status")
    broker.root = root
    def updates():
        root.running.wait()
        for i in range(300):
            t = time.monotonic()
            broker.obj_update(root.status, n=i)
            root.updates.append(t)
            time.sleep(0.01)

    threading.Thread(target=updates, daemon=True).start()
    print("listening", db.bound_addresses[0].removeprefix("tcp://"), flush=True)
    sys.stdin.read()


def serve_pyro5():
    import Pyro5.api

    daemon = Pyro5.api.Daemon(host="127.0.0.1")
    uri = daemon.register(Pyro5.api.expose(Root)(), "root")
    print("listening", uri, flush=True)
    threading.Thread(target=daemon.requestLoop, daemon=True).start()
    sys.stdin.read()


def start(kind, *args):
    p = subprocess.Popen(
        [sys.executable, HERE, "--serve", kind, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = p.stdout.readline().split()
    return p, line[1]


def rate(seconds, threads, make_call):
    """Calls per second of `threads` callers, each calling its own `make_call()` (made in its
    own thread, as Pyro5's proxies require) in a loop."""
    counts = [0] * threads
    ready = threading.Barrier(threads + 1)
    window = {}

    def run(i):
        call = make_call()
        call()  # connected and warm
        ready.wait()
        n = 0
        while time.monotonic() < window["stop"]:
            call()
            n += 1
        counts[i] = n

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    window["stop"] = time.monotonic() + 3600
    ready.wait()
    begun = time.monotonic()
    window["stop"] = begun + seconds
    for t in ts:
        t.join()
    return sum(counts) / (time.monotonic() - begun)


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


def ensure_pyro5():
    """The peer this compares against, from PyPI into this interpreter, on the first run."""
    try:
        import Pyro5  # noqa: F401
    except ImportError:
        print("installing Pyro5 from PyPI (once)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", PYRO5], check=True)


# The version the figures in BENCHMARKS.md were measured with.
PYRO5 = "Pyro5==5.17"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("rest", nargs="*")
    a = ap.parse_args()
    if a.serve == "octodb":
        return serve_octodb(a.rest[0])
    if a.serve == "pyro5":
        return serve_pyro5()

    ensure_pyro5()
    import octodb
    import Pyro5.api
    from octodb.broker import BrokerClient

    tmp = tempfile.mkdtemp()
    server, addr = start("octodb", f"file:{tmp}/backend.db?node=primary&bind=tcp://127.0.0.1:0")
    uri = f"file:{tmp}/phone.db?node=secondary&connect=tcp://{addr}"
    db = octodb.connect(uri)
    db.wait_until_ready(timeout=60)
    client = BrokerClient(uri)
    root = client.root
    status_ref = object.__getattribute__(root, "_refs")["status"]
    pyro, pyro_uri = start("pyro5")

    def pyro_proxy():
        p = Pyro5.api.Proxy(pyro_uri)
        p._pyroBind()
        return p

    results = []
    for threads in (1, 8):
        o = rate(a.seconds, threads, lambda: (lambda: root.echo(1)))
        p = rate(a.seconds, threads, lambda: (lambda px=pyro_proxy(): px.echo(1)))
        results.append((f"method calls/s, {threads} caller(s)", o, p))
    o = rate(a.seconds, 1, lambda: (lambda: client._core.fetch(status_ref)))
    p = rate(a.seconds, 1, lambda: (lambda px=pyro_proxy(): px.status_fields()))
    results.append(("object fetches/s", o, p))

    arrivals = []
    measuring = threading.Event()
    measuring.set()

    def heard(kind, payload):
        if kind == "invalidated" and measuring.is_set():
            arrivals.append(time.monotonic())
            client._core.fetch(status_ref)  # held again, so the next update is told too

    client._core.set_listener(heard)
    root.status.health  # held: the server tells this client of its changes
    root.start_updates()
    end = time.monotonic() + 30
    while len(arrivals) < 290 and time.monotonic() < end:
        time.sleep(0.05)
    measuring.clear()  # (updates still arriving must not fetch through a closing client)
    sent = root.update_times()
    # Each arrival answers the newest update sent before it.
    lat = []
    for t in arrivals:
        before = [s for s in sent if s <= t]
        if before:
            lat.append((t - before[-1]) * 1000)

    print(f"{'':34} {'octodb.broker':>14} {'Pyro5':>10} {'ratio':>7}")
    for name, o, p in results:
        print(f"{name:34} {o:14.0f} {p:10.0f} {o / p:7.2f}")
    if lat:
        print(f"invalidation latency ms (n={len(lat)}): p50 {pct(lat, 0.5):.3f}, p99 {pct(lat, 0.99):.3f}")
    client.close()
    db.close()
    for proc in (server, pyro):
        proc.stdin.close()
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
