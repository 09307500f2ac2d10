"""A backend primary deciding sign-ups and logins synchronously: the callbacks answer at once
with a user id (SPEC §4.3, way 1). They run on a worker thread and use the database through a
connection of their own.

    OCTODB_URI='file:app.db?node=primary&bind=tcp://0.0.0.0:1234&auth=user' python primary_sync_auth.py

Runs until interrupted (Ctrl-C / SIGTERM).
"""
import octodb as sqlite3
import json
import os

URI = os.environ.get("OCTODB_URI", "file:app.db?node=primary&bind=tcp://0.0.0.0:1234&auth=user")

# called by a worker thread: each call opens its own connection (connections are per thread)

def on_user_signup(signup_info, node_info):
    info = json.loads(signup_info)
    with sqlite3.connect(URI) as accounts:
        try:
            cur = accounts.execute("INSERT INTO private_accounts(name, password) VALUES (?, ?)",
                                   (info["name"], info["password"]))
        except sqlite3.IntegrityError:
            print("sign-up refused, name taken:", info["name"])
            return -1  # not authorized
        print("new account", info["name"], "is user", cur.lastrowid)
        return cur.lastrowid  # this user id

def on_user_login(login_info, node_info):
    info = json.loads(login_info)
    with sqlite3.connect(URI) as accounts:
        row = accounts.execute("SELECT user_id FROM private_accounts WHERE name = ? AND password = ?",
                               (info["name"], info["password"])).fetchone()
    print("login of", info["name"], "->", row[0] if row else "refused")
    return row[0] if row else -1

def on_new_node(node_info):
    return "secondary"

db = sqlite3.connect(URI)
db.execute("CREATE TABLE IF NOT EXISTS private_accounts(user_id INTEGER PRIMARY KEY, name TEXT UNIQUE, password TEXT)")
db.execute("CREATE TABLE IF NOT EXISTS todos(id INTEGER PRIMARY KEY, title TEXT, row_owner)")
status = db.wait_until_ready()

db.register_function("user_signup", 2, on_user_signup)
db.register_function("user_login", 2, on_user_login)
db.register_function("new_node", 1, on_new_node)
print("primary listening on", ",".join(status["bind"]))

# keep the app open (until Ctrl-C or SIGTERM); tell every row change, whoever made it (the
# devices' too): the change feed, docs/change-feed.md
after = db.feed_position()
while True:
    db.wait_feed(after, timeout=1.0)
    changes, after = db.changes_after(after)
    for change in changes:
        print("change", change["kind"], change["table"], change["rowid"],
              "from node", change["origin_node"], change["row"], flush=True)
