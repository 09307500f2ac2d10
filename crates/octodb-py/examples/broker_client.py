"""The seed's broker example, on a device: fetch the root, follow a reference, log in, call.

    OCTODB_DB=phone.db OCTODB_SERVERS=127.0.0.1:PORT python broker_client.py
"""

import os

import octodb
from octodb.broker import BrokerClient


def main():
    uri = f"file:{os.environ['OCTODB_DB']}?node=secondary&connect=tcp://{os.environ['OCTODB_SERVERS']}"
    db = octodb.connect(uri)
    db.wait_until_ready(timeout=60)
    broker = BrokerClient(uri)
    root = broker.root
    print("version:", root.version_string)
    print("version tuple:", root.version_tuple)
    print("health:", root.status.health)
    print("servers:", ",".join(root.status.servers))
    real_root = root.login("jane", "sing a song and whist1e")
    print("login:", real_root.name, "/", real_root.greeting())
    print("call:", broker.call("hello", "you"))
    broker.close()
    db.close()


if __name__ == "__main__":
    main()
