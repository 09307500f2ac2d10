#!/usr/bin/env python3
"""An example octodb authorization service (protocol: docs/authorizer-service.md).

Sign-up data is JSON {"name": ..., "password": ...}: a new account row is inserted in the
primary's `accounts` table, numbered by the user the engine makes for the device (`@user_id`),
so that accounts and the users the admin console makes never share an id. Login data is the same JSON: the
account is found by name and password. New nodes (auth=node) are approved as secondaries.
Standard library only. Run: python3 examples/authorizer_service.py --port 7000
"""
import argparse
import json
import socket
import struct


def sql_text(s):
    """A SQL string literal (quotes doubled): the data comes from devices, never trust it."""
    return "'" + str(s).replace("'", "''") + "'"


def decide(request):
    key = request.get("pubkey")
    action = request.get("action")
    data = request.get("data")
    if action == "new_node":
        return {"pubkey": key, "node_type": "secondary"}
    if not isinstance(data, dict) or not data.get("name") or not data.get("password"):
        return {"pubkey": key, "user_id": -1}
    name, password = sql_text(data["name"]), sql_text(data["password"])
    if action == "user_signup":
        return {"pubkey": key, "execute": [
            "INSERT INTO accounts(id, name, password, first_node) "
            f"VALUES (@user_id, {name}, {password}, @node_id)"]}
    if action == "user_login":
        return {"pubkey": key, "find":
                f"SELECT id AS user_id FROM accounts WHERE name = {name} AND password = {password}"}
    return {"pubkey": key, "user_id": -1}


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(conn):
    head = read_exact(conn, 4)
    if head is None:
        return None
    body = read_exact(conn, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body.decode("utf-8"))


def write_frame(conn, message):
    body = json.dumps(message).encode("utf-8")
    conn.sendall(struct.pack(">I", len(body)) + body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    args = parser.parse_args()
    with socket.create_server((args.host, args.port)) as server:
        print(f"authorization service on tcp://{args.host}:{args.port}", flush=True)
        while True:
            conn, addr = server.accept()
            with conn:
                while (message := read_frame(conn)) is not None:
                    if message.get("leader"):
                        print(f"leader primary connected from {addr[0]}:{addr[1]}", flush=True)
                        continue
                    answer = decide(message)
                    print(f"{message.get('action')} from {message.get('pubkey', '')[:12]}… -> {answer}", flush=True)
                    write_frame(conn, answer)


if __name__ == "__main__":
    main()
