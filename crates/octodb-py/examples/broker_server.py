"""The seed's broker example (DaBroker's MyRoot/Status), served by a primary.

    OCTODB_URI=file:backend.db?node=primary&bind=tcp://127.0.0.1:0 python broker_server.py

Prints "broker listening on HOST:PORT", then serves until terminated. With
OCTODB_CONTROL=stdin it reads commands instead, until stdin closes or says "stop": a line
"health X" runs obj_update(status, health=X) and prints "updated X".
"""

import os
import signal
import sys
import threading

import octodb
from octodb.broker import BrokerServer, exported


class Status:
    servers = ("joe", "curly", "moe")
    load = {"joe": 0.1, "curly": None, "moe": 2.5}
    health = "OK"


class RealRoot:
    def __init__(self, name):
        self.name = name

    @exported
    def greeting(self):
        return f"welcome, {self.name}"


class MyRoot:
    version_string = "0.12.3"
    version_tuple = (0, 12, 3)

    def __init__(self, broker):
        self.status = Status()
        self._broker = broker

    def login(self, name, hash):
        # Verify the password here (a real app compares a challenge's hash).
        real = RealRoot(name)
        self._broker.add_static(real, "user", name)
        return real


class Server(BrokerServer):
    def do_hello(self, msg):
        return "hello " + msg


def main():
    uri = os.environ["OCTODB_URI"]
    db = octodb.connect(uri)  # the app's own connection to the primary
    broker = Server(uri)
    broker.export_class(Status, "servers load health")
    broker.export_class(RealRoot, "name +")
    root = MyRoot(broker)
    broker.export_object(root, "version_string version_tuple login", refs="status")
    broker.add_static(root.status, "status")
    broker.add_static(root, "root")
    broker.root = root
    print("broker listening on", db.bound_addresses[0].removeprefix("tcp://"), flush=True)
    if os.environ.get("OCTODB_CONTROL") == "stdin":
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "stop":
                break
            if words[0] == "health":
                broker.obj_update(root.status, health=words[1])
                print("updated", words[1], flush=True)
    else:
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        signal.signal(signal.SIGINT, lambda *_: done.set())
        while not done.wait(0.5):
            pass
    broker.stop()
    db.close()


if __name__ == "__main__":
    main()
