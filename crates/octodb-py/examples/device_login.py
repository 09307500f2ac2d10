"""An app on a further device of an existing user: logs in, waits until the database is ready
(the user's rows are downloaded), then uses it (seed "simplified example without any GUI",
in Python 3).

    OCTODB_SERVERS=tcp://backend:1234 OCTODB_USER='{"name": "ann", "password": "..."}' python device_login.py
"""
import octodb as sqlite3
import time
import json
import os

sent_user_registration = False
user_data = os.environ.get("OCTODB_USER", '{"name": "ann", "password": "secret"}')
servers = os.environ.get("OCTODB_SERVERS", "tcp://server1:port1,tcp://server2:port2,tcp://server3:port3")

# open the database
db = sqlite3.connect('file:' + os.environ.get("OCTODB_DB", "app.db") + '?node=secondary&connect=' + servers)
cur = db.cursor()

# check if the db is ready
while True:
    result = cur.execute("PRAGMA sync_status").fetchone()
    status = json.loads(result[0])
    if status["db_is_ready"]: break
    # refused by the backend: waiting longer will not help
    if status["auth_state"] == "rejected":
        raise SystemExit("the backend refused this device: " + str(status["auth_error"]))
    # check if the device is already authorized
    if not sent_user_registration and status["node_id"] == 0:
        cur.execute("PRAGMA user_login='" + user_data + "'")
        sent_user_registration = True
    time.sleep(0.250)

# now the app can use the db connection
print("ready: node", status["node_id"], "user", status["user_id"])
for row in cur.execute("SELECT title FROM todos ORDER BY id"):
    print("todo:", row[0])
db.close()
