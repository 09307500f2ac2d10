"""A backend primary deciding sign-ups and logins asynchronously (seed "Asynchronous Mode",
in Python 3): the callbacks, called on a worker thread, only queue the requests; the main
thread decides and answers with PRAGMA authorize_user / authorize_node.

    OCTODB_URI='file:app.db?node=primary&bind=tcp://0.0.0.0:1234&auth=user' python primary_async_auth.py

Runs until interrupted (Ctrl-C / SIGTERM).
"""
import octodb as sqlite3
import time
import json
import os
from queue import SimpleQueue  # the seed's multiprocessing SimpleQueue, for threads in Python 3

db = None
auth_queue = SimpleQueue()
pending_accounts = {}  # public key -> (name, password) of a sign-up being approved

# --- the app's own decisions (the seed leaves them to the app) ---

def check_user_signup(signup_info, node):
    info = json.loads(signup_info)
    taken = db.execute("SELECT 1 FROM private_accounts WHERE name = ?", (info["name"],)).fetchone()
    if taken:
        return -1
    pending_accounts[node["public_key"]] = (info["name"], info["password"])
    return 0  # a new user; the engine chooses its id

def check_user_login(login_info, node):
    info = json.loads(login_info)
    row = db.execute("SELECT user_id FROM private_accounts WHERE name = ? AND password = ?",
                     (info["name"], info["password"])).fetchone()
    return row[0] if row else -1

def check_new_node(node):
    return "secondary"

def remember_account(public_key):
    """Once a sign-up is approved, record the user id the engine gave it."""
    name, password = pending_accounts.pop(public_key)
    for row in db.execute("PRAGMA nodes").fetchall():
        if row[0] == public_key:
            db.execute("INSERT INTO private_accounts(name, password, user_id) VALUES (?, ?, ?)",
                       (name, password, row[3]))
            db.commit()
            print("account", name, "is user", row[3])

# called by the worker thread:

def on_user_signup_async(signup_info, node_info):
    global auth_queue
    print("on_user_signup_async signup_info:", signup_info, "node_info:", node_info)
    req = ("signup", signup_info, node_info,)
    auth_queue.put(req)
    return -2  # process in async mode

def on_user_login_async(login_info, node_info):
    global auth_queue
    print("on_user_login_async login_info:", login_info, "node_info:", node_info)
    req = ("login", login_info, node_info,)
    auth_queue.put(req)
    return -2  # process in async mode

def on_new_node_async(node_info):
    global auth_queue, qcount
    print("on_new_node_async", node_info)
    req = ("new_node", node_info, )
    auth_queue.put(req)
    return -2  # process in async mode

# called periodically by the main thread:

def process_auth_requests(db):
    global auth_queue
    while not auth_queue.empty():
        req = auth_queue.get()
        action = req[0]
        if action == "signup":
            signup_info = req[1]
            node = json.loads(req[2])
            user_id = check_user_signup(signup_info, node)
            db.execute("pragma authorize_user='" + node["public_key"] + ":" + str(user_id) + "'")
            if user_id >= 0:
                remember_account(node["public_key"])

        elif action == "login":
            login_info = req[1]
            node = json.loads(req[2])
            user_id = check_user_login(login_info, node)
            db.execute("pragma authorize_user='" + node["public_key"] + ":" + str(user_id) + "'")

        elif action == "new_node":
            node = json.loads(req[1])
            node_type = check_new_node(node)
            if node_type:
                db.execute("pragma authorize_node='" + node["public_key"] + ":" + node_type + "'")


# open the database
db = sqlite3.connect(os.environ.get("OCTODB_URI", "file:app.db?node=primary&bind=tcp://0.0.0.0:1234&auth=user"))

# the app's schema: accounts stay on the primaries (private_), todos go to their owner
db.execute("CREATE TABLE IF NOT EXISTS private_accounts(name TEXT PRIMARY KEY, password TEXT, user_id INTEGER)")
db.execute("CREATE TABLE IF NOT EXISTS todos(id INTEGER PRIMARY KEY, title TEXT, row_owner)")

# check if the db is ready
while True:
    result = db.cursor().execute("PRAGMA sync_status").fetchone()
    status = json.loads(result[0])
    if status["db_is_ready"]: break
    time.sleep(0.250)

# register the callback functions
db.register_function("user_signup", 2, on_user_signup_async)
db.register_function("user_login", 2, on_user_login_async)
db.register_function("new_node", 1, on_new_node_async)
print("primary listening on", ",".join(status["bind"]))

# keep the app open
while True:
    process_auth_requests(db)
    time.sleep(0.5)
