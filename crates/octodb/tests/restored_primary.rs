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

/// Put `copy` in place of the closed node file `file` (its WAL and shared memory go).
fn restore(copy: &Path, file: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    std::fs::copy(copy, file).unwrap();
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
    restore(&c.path("copy.db"), &p_path);
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
    restore(&c.path("copy.db"), &p_path);
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
