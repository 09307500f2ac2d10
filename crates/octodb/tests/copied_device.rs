//! Two copies of one device file in use at once (a phone's backup restored onto a second
//! phone while the first goes on): same key, same transaction ids, different work. Before,
//! some transactions stayed in an outbox for ever and others vanished without a word
//! (issue 22, item 2). Now a copy is found out, stops with a clear `sync_error` and event, and
//! goes on only under a new key that the backend approves afresh; no committed transaction
//! is lost. Real files, real loopback sockets.
mod common;
use common::*;
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::{Connection, Event, SyncStatus};

fn status(c: &Connection) -> SyncStatus {
    c.sync_status().expect("sync_status")
}

/// What a copy that was found out says.
fn stopped_as_copy(s: &SyncStatus) -> bool {
    s.sync_error
        .as_deref()
        .is_some_and(|e| e.contains("copy of another device's") && e.contains("new_identity"))
}

/// A primary deciding by user (sign-ups: a new user; logins: `user:<id>`) with table
/// `notes`, and a device file `d.db` of user 1 that synced it, closed, and a copy of it,
/// `copy.db`. Returns the primary and the devices' URIs.
fn device_and_its_copy(c: &Cluster) -> (Connection, String, String) {
    let p = c.auth_primary("p.db", "user");
    approve_by_data(&p);
    p.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)",
        [],
    )
    .unwrap();
    let uri = |name: &str| device_uri(&c.path(name), &addr_of(&p));
    let d = Connection::open(&uri("d.db")).unwrap();
    d.execute("PRAGMA user_signup='hello'", []).unwrap();
    ready(&d);
    assert_eq!(status(&d).user_id, Some(1));
    wait_count(
        &d,
        "SELECT count(*) FROM sqlite_master WHERE name = 'notes'",
        1,
    );
    d.execute(
        "INSERT INTO notes(id, body) VALUES (1, 'before the copy')",
        [],
    )
    .unwrap();
    wait_outbox_empty(&d);
    let refused = d
        .execute("PRAGMA new_identity", [])
        .expect_err("a device that is no copy keeps its key");
    assert!(
        refused.to_string().contains("not found to be a copy"),
        "{refused}"
    );
    drop(d);
    wait_closed(c, "d.db");
    copy_closed_db(c, "d.db", "copy.db");
    let (d, copy) = (uri("d.db"), uri("copy.db"));
    (p, d, copy)
}

/// Takes a new key on a copy that was found out (`name` at `uri`), reopens it, and logs it
/// in again as user 1: under its new key it is not approved until it does.
fn go_on_under_a_new_key(c: &Cluster, d: Connection, name: &str, uri: &str) -> Connection {
    let old_key = status(&d).public_key;
    let new_key = d
        .query_row("PRAGMA new_identity", [], |r| r.get::<String>(0))
        .expect("a new identity");
    assert_ne!(new_key, old_key);
    drop(d);
    wait_closed(c, name);
    let d = Connection::open(uri).unwrap();
    assert_eq!(status(&d).public_key, new_key);
    let s = d
        .wait_for(DEADLINE, |s| s.auth_state.as_deref() == Some("required"))
        .expect("the new key waits for a sign-up or login");
    assert_eq!(s.user_id, None, "a copy does not inherit its user");
    d.execute("PRAGMA user_login='user:1'", []).unwrap();
    ready(&d);
    d
}

/// Both copies work at once, each on rows of its own; one of them (or both) is found out.
/// Each that is goes on under a new key once reopened, and then every row of both reaches
/// the primary.
#[test]
fn two_copies_of_a_device_file_in_use_lose_nothing_and_a_copy_stops_saying_what_to_do() {
    let c = Cluster::new();
    let (p, d_uri, copy_uri) = device_and_its_copy(&c);
    let copies = [
        Connection::open(&d_uri).unwrap(),
        Connection::open(&copy_uri).unwrap(),
    ];
    let mut events: Vec<_> = copies.iter().map(|d| d.subscribe()).collect();
    // Both connected before either writes: neither can tell from its welcome that the other
    // went on; the primary, or the digests beside its decisions, must.
    for d in &copies {
        d.wait_for(DEADLINE, |s| s.connected)
            .expect("both copies connect");
    }
    const ROWS: i64 = 20;
    for i in 0..ROWS {
        for (k, d) in copies.iter().enumerate() {
            // Stopped copies keep working offline: their work is kept.
            d.execute(
                "INSERT INTO notes(id, body) VALUES (?1, ?2)",
                (100 * (k as i64 + 1) + i, format!("copy {k}, row {i}")),
            )
            .unwrap();
        }
    }
    // Both copies hand out the same transaction ids: the second of two to reach the primary
    // with an id is found out, by the primary or by itself.
    let found: Vec<usize> = wait_until("a copy found out, the other drained", || {
        let s: Vec<SyncStatus> = copies.iter().map(status).collect();
        let found: Vec<usize> = (0..2).filter(|&k| stopped_as_copy(&s[k])).collect();
        let others_drained = (0..2)
            .filter(|k| !found.contains(k))
            .all(|k| s[k].outbox_len == 0);
        (!found.is_empty() && others_drained).then_some(found)
    });
    for &k in &found {
        let seen = wait_until("the copy's event", || loop {
            match events[k].try_recv() {
                Ok(Event::CopiedFile { reason, .. }) => break Some(reason),
                Ok(_) => continue,
                Err(_) => break None,
            }
        });
        assert!(seen.contains("PRAGMA new_identity"), "{seen}");
        // Its work is still there, pending, not taken for the other copy's.
        assert!(status(&copies[k]).outbox_len > 0);
    }
    // The primary shows the copy still syncing as connected once the other's session ended:
    // they share a node id, and the end of the one that was found out took the other's
    // entry with it (the long-offline walkthrough, 3 of 3).
    if let [k] = found[..] {
        wait_until("the copy found out disconnected", || {
            (!status(&copies[k]).connected).then_some(())
        });
        let other = status(&copies[1 - k]);
        if other.connected {
            let record = p
                .nodes()
                .unwrap()
                .into_iter()
                .find(|n| n.node_id == other.node_id)
                .expect("the device's record");
            assert!(record.connected, "{record:?}");
        }
    }
    // Each copy that was found out takes a new key, and goes on once reopened.
    let [a, b] = copies;
    let mut reopened = Vec::new();
    for (k, d) in [a, b].into_iter().enumerate() {
        reopened.push(match found.contains(&k) {
            true => go_on_under_a_new_key(&c, d, ["d.db", "copy.db"][k], [&d_uri, &copy_uri][k]),
            false => d,
        });
    }
    for d in &reopened {
        wait_outbox_empty(d);
        assert!(!stopped_as_copy(&status(d)));
    }
    // Every row of both copies is on the primary, as written.
    wait_count(&p, "SELECT count(*) FROM notes", 1 + 2 * ROWS);
    for k in 0..2i64 {
        for i in 0..ROWS {
            assert_eq!(
                text(
                    &p,
                    &format!("SELECT body FROM notes WHERE id = {}", 100 * (k + 1) + i)
                ),
                format!("copy {k}, row {i}")
            );
        }
    }
    // And on both devices.
    for d in &reopened {
        wait_count(d, "SELECT count(*) FROM notes", 1 + 2 * ROWS);
    }
}

/// A copy that was found out stays stopped when reopened, until it takes a new key, under
/// which it must sign up or log in again.
#[test]
fn a_found_out_copy_stays_stopped_until_it_takes_a_new_key() {
    let c = Cluster::new();
    let (p, d_uri, copy_uri) = device_and_its_copy(&c);
    // The original goes on; then the copy connects, with other work under the same id.
    let d = Connection::open(&d_uri).unwrap();
    d.execute("INSERT INTO notes(id, body) VALUES (2, 'original')", [])
        .unwrap();
    wait_outbox_empty(&d);
    let copy = Connection::open(&copy_uri).unwrap();
    copy.execute("INSERT INTO notes(id, body) VALUES (3, 'copy')", [])
        .unwrap();
    copy.wait_for(DEADLINE, stopped_as_copy)
        .expect("the copy is found out");
    drop(copy);
    wait_closed(&c, "copy.db");

    // Reopened, it stays stopped, its work kept.
    let copy = Connection::open(&copy_uri).unwrap();
    let s = copy
        .wait_for(DEADLINE, stopped_as_copy)
        .expect("still stopped after a reopen");
    assert_eq!(s.outbox_len, 1);
    assert!(!s.connected);
    // A wait for sync fails at once, with what to do, instead of running to its deadline.
    let started = std::time::Instant::now();
    let err = copy
        .wait_until_synced(DEADLINE)
        .expect_err("a stopped copy is not synced")
        .to_string();
    assert!(err.contains("PRAGMA new_identity"), "{err}");
    assert!(
        started.elapsed() < DEADLINE / 2,
        "it waited {:?}",
        started.elapsed()
    );

    // The backend sees, with the new key's login, which key it is a copy of.
    let old_key = status(&copy).public_key;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = seen.clone();
    p.set_auth_callback(Action::UserLogin, move |r: &AuthRequest| {
        noted.lock().unwrap().push(r.node_info.clone());
        match user_named_in(r) {
            Some(u) => Decision::User(u),
            None => Decision::Reject("unknown user".into()),
        }
    })
    .unwrap();
    let copy = go_on_under_a_new_key(&c, copy, "copy.db", &copy_uri);
    let info: serde_json::Value =
        serde_json::from_str(&seen.lock().unwrap()[0]).expect("node_info is JSON");
    assert_eq!(info["clone_of"], serde_json::Value::String(old_key));
    wait_outbox_empty(&copy);
    wait_count(&p, "SELECT count(*) FROM notes", 3);
    assert_eq!(text(&p, "SELECT body FROM notes WHERE id = 3"), "copy");
    wait_count(&copy, "SELECT count(*) FROM notes", 3);
    assert!(status(&d).sync_error.is_none());
}

/// A device's file restored from a backup (on a new phone, or the same one) hands out again
/// the transaction ids it used after the backup. At connection the primary tells it the last
/// one it decided; beyond every id the file sent, the file is a copy of another (a stolen
/// backup looks the same): it stops, keeping the work done since the restore (across a
/// restart offline too), and that work arrives under its new key. Before, it moved its ids
/// on and went on as the same device, user and all.
#[test]
fn a_device_restored_from_a_backup_keeps_its_new_work_under_a_new_key() {
    let c = Cluster::new();
    let (p, d_uri, _) = device_and_its_copy(&c);
    copy_closed_db(&c, "d.db", "backup.db");
    // After the backup the device works on.
    let d = Connection::open(&d_uri).unwrap();
    d.wait_for(DEADLINE, |s| s.connected).expect("connects");
    d.execute(
        "UPDATE notes SET body = 'after the backup' WHERE id = 1",
        [],
    )
    .unwrap();
    wait_outbox_empty(&d);
    wait_count(
        &p,
        "SELECT count(*) FROM notes WHERE body = 'after the backup'",
        1,
    );
    drop(d);
    wait_closed(&c, "d.db");

    // The file is restored; the device starts while its primary is away, works offline,
    // restarts and works on.
    let port = p.bound_addrs()[0].port();
    drop(p);
    copy_closed_db(&c, "backup.db", "d.db");
    let d = Connection::open(&d_uri).unwrap();
    d.execute(
        "INSERT INTO notes(id, body) VALUES (2, 'offline, first run')",
        [],
    )
    .unwrap();
    drop(d);
    wait_closed(&c, "d.db");
    let d = Connection::open(&d_uri).unwrap();
    d.execute(
        "UPDATE notes SET body = 'after the restore' WHERE id = 1",
        [],
    )
    .unwrap();
    assert_eq!(status(&d).outbox_len, 2);

    // The primary is back: the restored file is found out, its work kept.
    let p = Connection::open(&format!("{}&auth=user", primary_uri(&c.path("p.db"), port)))
        .expect("reopen the primary");
    approve_by_data(&p);
    let s = d
        .wait_for(DEADLINE, stopped_as_copy)
        .expect("the restored file is found out");
    assert_eq!(s.outbox_len, 2);
    assert_eq!(
        text(&p, "SELECT body FROM notes WHERE id = 1"),
        "after the backup"
    );

    // Under a new key, logged in again, its work arrives.
    let d = go_on_under_a_new_key(&c, d, "d.db", &d_uri);
    wait_outbox_empty(&d);
    assert_eq!(status(&d).last_rejected, None);
    wait_count(
        &p,
        "SELECT count(*) FROM notes WHERE id = 1 AND body = 'after the restore'",
        1,
    );
    assert_eq!(
        text(&p, "SELECT body FROM notes WHERE id = 2"),
        "offline, first run"
    );
}

/// The digests that let a primary tell a device from a copy of its file reach the other
/// primaries of the cluster with the log, so that a new leader after a fail-over still has
/// them.
#[test]
fn the_other_primaries_keep_the_digests_of_devices_work() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let leader = addr_of(&p1);
    let p2 = joining_primary(&c.path("p2.db"), &leader);
    wait_voters(&p1, 2);
    let d = c.device("d.db", &p1);
    ready(&d);
    for i in 0..5 {
        d.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    wait_outbox_empty(&d);
    wait_count(&p2, "SELECT count(*) FROM t", 5);
    let node = status(&d).node_id;
    let digests = |name: &str| -> Vec<(i64, Vec<u8>)> {
        let f = rusqlite::Connection::open(c.path(name)).unwrap();
        let mut stmt = f
            .prepare(
                "SELECT origin_txn, origin_digest FROM _octo_log
                 WHERE origin_node = ?1 AND origin_digest IS NOT NULL ORDER BY seq",
            )
            .unwrap();
        stmt.query_map([node], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let on_leader = digests("p.db");
    assert_eq!(on_leader.len(), 5, "one digest per device transaction");
    assert_eq!(digests("p2.db"), on_leader);
}
