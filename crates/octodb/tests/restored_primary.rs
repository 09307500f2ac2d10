//! A primary restored from an older copy of its file (issue "Reliability", item 4): its
//! devices are ahead of it. They find out by their position and by the log's epoch, say so,
//! download again keeping their pending work, and end holding exactly what the primary
//! holds. Real files, real loopback sockets, the backup taken as `octodb backup` takes it.
mod common;
use common::*;
use octodb::{Connection, Event, OpenOptions};
use std::path::Path;

/// A consistent copy of a running node's file, as `octodb backup` makes it.
fn backup(from: &Path, to: &Path) {
    let cfg = octodb::NodeConfig::parse(&from.display().to_string()).unwrap();
    let read_only = OpenOptions {
        uri: false,
        busy_timeout: std::time::Duration::from_secs(30),
    };
    let source = Connection::open_file(&cfg, &read_only).unwrap();
    source
        .execute("VACUUM INTO ?1", [to.display().to_string()])
        .unwrap();
}

/// Put `copy.db` in place of the node file `p.db` once its node has closed it (its WAL and
/// shared memory go).
fn restore(c: &Cluster) {
    wait_closed(c, "p.db");
    let (copy, file) = (c.path("copy.db"), c.path("p.db"));
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    std::fs::copy(copy, &file).unwrap();
}

fn values(c: &Connection) -> Vec<String> {
    c.query("SELECT v FROM t ORDER BY v", [])
        .unwrap()
        .iter()
        .map(|r| r.get::<String>(0).unwrap())
        .collect()
}

/// A row every device sees (on the primary).
fn insert(c: &Connection, v: &str) {
    c.execute("INSERT INTO t(v, row_owner) VALUES (?1, '*')", [v])
        .unwrap();
}

/// A row of the device's user (on the device).
fn insert_own(c: &Connection, v: &str) {
    c.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
}

/// A primary with one row every device sees, its device holding it, and a backup of the
/// primary's file in `copy.db` taken then. Returns the primary's port too.
struct BackedUp {
    c: Cluster,
    p: Connection,
    port: u16,
    d: Connection,
}

fn backed_up(first_row: &str) -> BackedUp {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let port = p.bound_addrs()[0].port();
    insert(&p, first_row);
    let d = c.device("d.db", &p);
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM t", 1);
    backup(&c.path("p.db"), &c.path("copy.db"));
    BackedUp { c, p, port, d }
}

#[test]
fn devices_ahead_of_a_restored_primary_download_again_and_agree_with_it() {
    let BackedUp { c, p, port, d } = backed_up("p before the backup");
    let p_path = c.path("p.db");

    // After the backup: the primary and the device go on; the device has it all.
    for i in 0..3 {
        insert(&p, &format!("p lost {i}"));
        insert_own(&d, &format!("d lost {i}"));
    }
    wait_outbox_empty(&d);
    let end = p.sync_status().unwrap().last_seq;
    d.wait_for(DEADLINE, |s| s.last_seq >= end).unwrap();
    assert_eq!(values(&d).len(), 7);

    // The primary's machine is restored from the copy. Meanwhile the device works offline.
    let mut events = d.subscribe();
    drop(p);
    insert_own(&d, "d pending");
    restore(&c);
    let p = Connection::open(&primary_uri(&p_path, port)).unwrap();
    // The restored primary writes more than it lost before the device is back: the same
    // positions now hold other entries, which only the log's epoch tells apart.
    for i in 0..10 {
        insert(&p, &format!("p after the restore {i}"));
    }

    let mut behind = None;
    let mut resynced = None;
    wait_until(
        "the device says its primary is behind, then downloads again",
        || {
            while let Ok(e) = events.try_recv() {
                match e {
                    Event::PrimaryBehind { reason } => behind = Some(reason),
                    Event::Resynced {
                        resent,
                        rows_removed,
                    } => resynced = Some((resent, rows_removed)),
                    _ => {}
                }
            }
            resynced.is_some().then_some(())
        },
    );
    let reason = behind.expect("a PrimaryBehind event before the download");
    assert!(reason.contains("restored"), "{reason}");
    // The status's error says what stops sync now: the finished download is no longer one.
    let s = d.sync_status().unwrap();
    assert_eq!(s.sync_error, None, "after the resync: {s:?}");
    assert_eq!(
        resynced,
        Some((3, 3)),
        "the device's 3 transactions the primary lost are sent again; the primary's own 3 \
         lost rows went from the device"
    );

    // The pending work was kept, the lost transactions are accepted again, and both agree.
    wait_outbox_empty(&d);
    wait_until("the device and the primary hold the same rows", || {
        let (here, there) = (values(&d), values(&p));
        (here == there).then_some(here)
    });
    let rows = values(&p);
    assert!(rows.contains(&"d pending".to_string()), "{rows:?}");
    assert!(
        rows.contains(&"p after the restore 9".to_string()),
        "{rows:?}"
    );
    assert!(rows.contains(&"d lost 2".to_string()), "{rows:?}");
    assert!(!rows.iter().any(|v| v.starts_with("p lost")), "{rows:?}");
    assert_eq!(rows.len(), 15, "{rows:?}");
}

/// A device that reconnects to a restored primary before it wrote anything is ahead of its
/// log's end: found by position alone.
#[test]
fn a_device_past_the_end_of_a_restored_primarys_log_downloads_again() {
    let BackedUp { c, p, port, d } = backed_up("kept");
    let p_path = c.path("p.db");
    insert(&p, "lost");
    wait_count(&d, "SELECT count(*) FROM t", 2);
    let mut events = d.subscribe();
    drop(p);
    restore(&c);
    let p = Connection::open(&primary_uri(&p_path, port)).unwrap();
    wait_until("the device downloads again", || {
        std::iter::from_fn(|| events.try_recv().ok())
            .any(|e| {
                matches!(
                    e,
                    Event::Resynced {
                        rows_removed: 1,
                        resent: 0
                    }
                )
            })
            .then_some(())
    });
    assert_eq!(values(&d), vec!["kept".to_string()]);
    assert_eq!(values(&p), vec!["kept".to_string()]);
}

/// A row of the device's user, with its owner (on the device or the primary).
fn owned_values(c: &Connection) -> Vec<(String, String)> {
    c.query("SELECT v, CAST(row_owner AS TEXT) FROM t ORDER BY v", [])
        .unwrap()
        .iter()
        .map(|r| (r.get::<String>(0).unwrap(), r.get::<String>(1).unwrap()))
        .collect()
}

/// Waits until the device's sync stops on a refusal that says `what`.
fn refused_with(d: &Connection, what: &str) {
    wait_until(&format!("the device refused with `{what}`"), || {
        let error = d.sync_status().unwrap().sync_error?;
        error.contains(what).then_some(())
    });
}

fn ids(c: &Connection) -> (u32, Option<i64>) {
    let s = c.sync_status().unwrap();
    (s.node_id, s.user_id)
}

/// A lone primary backed up by `octodb::backup`, a device approved after the backup, and the
/// primary put back to the backup: the restored primary never hands out the late device's ids
/// again, and the late device comes back under its own, with its rows.
#[test]
fn a_device_approved_after_the_backup_keeps_its_ids_and_a_new_one_gets_others() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let port = port_of(&p);
    let early = c.device("early.db", &p);
    ready(&early);
    let mark = octodb::backup(
        &octodb::NodeConfig::parse(&c.path("p.db").display().to_string()).unwrap(),
        &c.path("copy.db"),
    )
    .unwrap();
    assert!(
        matches!(mark, octodb::RestoreMark::IdsReserved(Some(_))),
        "{mark:?}"
    );

    let late = c.device("late.db", &p);
    ready(&late);
    let late_ids = ids(&late);
    insert_own(&late, "late's before the restore");
    wait_outbox_empty(&late);

    drop(p);
    insert_own(&late, "late's offline");
    restore(&c);
    let p = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();

    // A new device, before the late one is back: it must not get the late one's ids.
    let fresh = c.device("fresh.db", &p);
    ready(&fresh);
    let fresh_ids = ids(&fresh);
    assert!(
        fresh_ids.0 > 1_000_000 && fresh_ids.1 > Some(1_000_000),
        "new devices get ids above the reserved ones: {fresh_ids:?}, late: {late_ids:?}"
    );

    // The late device comes back under its own ids, its rows with it.
    wait_until("the late device is back and synced", || {
        let s = late.sync_status().unwrap();
        (s.connected && s.outbox_len == 0 && s.sync_error.is_none()).then_some(())
    });
    assert_eq!(ids(&late), late_ids);
    let late_owner = late_ids.1.unwrap().to_string();
    wait_until("the primary holds the late device's rows", || {
        let rows = owned_values(&p);
        let late_rows: Vec<_> = rows.iter().filter(|(_, o)| *o == late_owner).collect();
        (late_rows.len() == 2).then_some(())
    });
    let listed: Vec<u32> = p.nodes().unwrap().iter().map(|n| n.node_id).collect();
    assert!(listed.contains(&late_ids.0), "{listed:?}");
    assert!(
        listed.iter().all(|id| *id < 1_000_000 || *id > 1_000_001),
        "the reservation is not listed as a node: {listed:?}"
    );
    // Each user sees only its own rows.
    fresh
        .execute("INSERT INTO t(v) VALUES ('fresh')", [])
        .unwrap();
    wait_outbox_empty(&fresh);
    assert_eq!(
        count(&fresh, "SELECT count(*) FROM t WHERE v LIKE 'late%'"),
        0
    );
}

/// Without the mark a restored primary hands the late device's node id to a new device; the
/// late device cannot then take it back by naming it, and is told how such a restore is done.
#[test]
fn a_device_cannot_take_a_node_id_the_primary_handed_out_by_naming_it() {
    let BackedUp {
        c,
        p,
        port,
        d: _early,
    } = backed_up("before");
    let late = c.device("late.db", &p);
    ready(&late);
    let late_ids = ids(&late);
    drop(p);
    // A copy made by other means than `octodb backup`, restored without `mark-restored`.
    restore(&c);
    drop(late);
    let p = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    let usurper = c.device("fresh.db", &p);
    ready(&usurper);
    assert_eq!(ids(&usurper).0, late_ids.0, "the id handed out again");

    // Its connect list also names a primary that cannot be reached: the refusal, which
    // explains, stays in its status beside that failure.
    let dead = common::process::free_port();
    let late = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{dead},tcp://{}",
        c.path("late.db").display(),
        addr_of(&p)
    ))
    .unwrap();
    refused_with(&late, "another key's");
    wait_until(
        "a failure to reach the other primary beside the refusal",
        || {
            let error = late.sync_status().unwrap().sync_error?;
            (error.contains("another key's") && error.contains(&dead.to_string())).then_some(())
        },
    );
    assert_eq!(ids(&late), late_ids, "the device keeps its ids and data");
    let approved = p
        .nodes()
        .unwrap()
        .iter()
        .filter(|n| n.auth_state == "approved")
        .count();
    assert_eq!(approved, 2, "the late device got no node of its own");
}

/// A restored primary that reserved nothing (its copy not marked) refuses a device approved
/// under ids it never handed out, and says how to let it in: `octodb mark-restored`, after
/// which the device comes back under its ids.
#[test]
fn an_unmarked_restore_names_mark_restored_which_lets_the_device_back() {
    let BackedUp {
        c,
        p,
        port,
        d: _early,
    } = backed_up("before");
    let late = c.device("late.db", &p);
    ready(&late);
    let late_ids = ids(&late);
    drop(p);
    restore(&c);
    let p = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    refused_with(&late, "run `octodb mark-restored` on its file");

    drop(p);
    wait_closed(&c, "p.db");
    let mark = octodb::mark_restored(
        &octodb::NodeConfig::parse(&c.path("p.db").display().to_string()).unwrap(),
    )
    .unwrap();
    assert!(
        matches!(mark, octodb::RestoreMark::IdsReserved(Some(_))),
        "{mark:?}"
    );
    let _p = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    wait_until("the late device is back", || {
        let s = late.sync_status().unwrap();
        (s.connected && s.sync_error.is_none()).then_some(())
    });
    assert_eq!(ids(&late), late_ids);
}

/// Under `auth=user`, the restored primary does not let the late device in on its word: it
/// asks it to log in again, and the backend's approval keeps the device's node id.
#[test]
fn under_user_auth_a_device_approved_after_the_backup_logs_in_again_and_keeps_its_node() {
    let c = Cluster::new();
    let open = |port: u16| {
        let p =
            Connection::open(&format!("{}&auth=user", primary_uri(&c.path("p.db"), port))).unwrap();
        approve_by_data(&p);
        p
    };
    let p = open(0);
    let port = port_of(&p);
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    let cfg = octodb::NodeConfig::parse(&c.path("p.db").display().to_string()).unwrap();
    octodb::backup(&cfg, &c.path("copy.db")).unwrap();
    let late = c.device("late.db", &p);
    late.execute("PRAGMA user_signup='ann'", []).unwrap();
    ready(&late);
    let (node, user) = ids(&late);
    insert_own(&late, "ann's");
    wait_outbox_empty(&late);

    drop(p);
    restore(&c);
    let p = open(port);
    late.wait_for(DEADLINE, |s| s.auth_error.is_some()).unwrap();
    let asked = late.sync_status().unwrap().auth_error.unwrap();
    assert!(asked.contains("log in again"), "{asked}");
    // As another user it would keep its user's rows and miss the other's: refused.
    late.execute("PRAGMA user_login='user:77'", []).unwrap();
    late.wait_for(DEADLINE, |s| {
        s.auth_error
            .as_deref()
            .is_some_and(|e| e.contains("as that user only"))
    })
    .unwrap();
    late.execute(&format!("PRAGMA user_login='user:{}'", user.unwrap()), [])
        .unwrap();
    wait_until("the late device is back under its node id", || {
        let s = late.sync_status().unwrap();
        (s.connected && s.outbox_len == 0 && s.sync_error.is_none()).then_some(())
    });
    assert_eq!(ids(&late), (node, user));
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'ann''s'", 1);
}

/// The download a device takes from a restored primary never writes over a row only the
/// device has (row_owner NULL) under the same id: it stops, naming the row, until the app
/// deletes it (README: a resync never touches local rows).
#[test]
fn a_resync_keeps_a_local_row_under_a_downloaded_rows_id() {
    let BackedUp { c, p, port, d } = backed_up("kept");
    insert(&p, "lost");
    wait_count(&d, "SELECT count(*) FROM t", 2);
    drop(p);
    d.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (999, 'mine only', NULL)",
        [],
    )
    .unwrap();
    restore(&c);
    let p = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    p.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (999, 'everyone''s', '*')",
        [],
    )
    .unwrap();
    refused_with(&d, "row only this device has");
    assert_eq!(text(&d, "SELECT v FROM t WHERE id = 999"), "mine only");
    d.execute("DELETE FROM t WHERE id = 999", []).unwrap();
    wait_until("the resync ends with the primary's rows", || {
        (values(&d) == values(&p)).then_some(())
    });
}
