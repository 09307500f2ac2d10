//! A primary whose disk fills up: devices' transactions cannot be written. The primary logs
//! it and says it in its `sync_status`, each device hears why in its `sync_error` and keeps its
//! transactions, and once space returns everything is accepted without a restart.
//!
//! Needs a small filesystem: a tmpfs the test mounts, which needs root. Elsewhere it says so
//! and passes without checking anything.

mod common;

use common::*;
use octodb::Connection;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A 4 MiB tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?
            .success();
        mounted.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the disk with one file until it has no room left; returns the file.
fn fill(disk: &Path) -> PathBuf {
    let path = disk.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 4096];
    while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
    path
}

#[test]
fn a_full_disk_on_the_primary_is_reported_and_sync_resumes_once_space_returns() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let c = Cluster::new();
    let p = Connection::open(&primary_uri(&disk.path().join("p.db"), 0)).unwrap();
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('before')", []).unwrap();
    wait_outbox_empty(&d);

    let filler = fill(disk.path());
    let big = "x".repeat(64 * 1024);
    for i in 0..8 {
        d.execute("INSERT INTO t(v) VALUES (?1)", [format!("{i} {big}")])
            .unwrap();
    }
    let status = d
        .wait_for(DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("could not write"))
        })
        .expect("the device hears that the primary cannot write");
    assert!(status.outbox_len > 0, "the device keeps its transactions");
    let primary = p.sync_status().unwrap();
    assert!(
        primary
            .sync_error
            .as_deref()
            .is_some_and(|e| e.contains("disk is full")),
        "{primary:?}"
    );

    // The primary's own write says it is the disk (not a cluster's leader, which a primary
    // alone does not have).
    let own = p
        .execute("INSERT INTO t(v, row_owner) VALUES (?1, '*')", [&big])
        .unwrap_err()
        .to_string();
    assert!(
        own.contains("disk is full") || own.contains("disk refuses"),
        "{own}"
    );

    // Space returns: everything is accepted, without a restart.
    std::fs::remove_file(filler).unwrap();
    wait_outbox_empty(&d);
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 9);
    d.wait_for(DEADLINE, |s| s.sync_error.is_none() && s.connected)
        .expect("the device syncs again");
    wait_until("the primary's error clears", || {
        p.sync_status().unwrap().sync_error.is_none().then_some(())
    });
}

#[test]
fn a_full_disk_on_a_device_is_said_to_be_the_devices_and_sync_resumes() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = Connection::open(&device_uri(&disk.path().join("d.db"), &addr_of(&p))).unwrap();
    ready(&d);
    let filler = fill(disk.path());
    let big = "x".repeat(64 * 1024);
    for i in 0..8 {
        p.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
            [format!("{i} {big}")],
        )
        .unwrap();
    }
    d.wait_for(DEADLINE, |s| {
        s.sync_error
            .as_deref()
            .is_some_and(|e| e.starts_with("this device cannot write"))
    })
    .expect("the device says its own disk refuses");
    std::fs::remove_file(filler).unwrap();
    wait_count(&d, "SELECT count(*) FROM t", 8);
}

/// A backup onto a disk too small for it fails with the reason and leaves no partial file
/// behind (which would pass for a backup, and make the next attempt refuse the name).
#[test]
fn a_backup_that_does_not_fit_leaves_no_partial_copy() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let c = Cluster::new();
    let p = c.primary_with_t();
    let big = "x".repeat(64 * 1024);
    for _ in 0..100 {
        p.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
            [big.as_str()],
        )
        .unwrap();
    }
    let cfg = octodb::NodeConfig::parse(&c.path("p.db").display().to_string()).unwrap();
    let dest = disk.path().join("copy.db");
    let err = octodb::backup(&cfg, &dest).unwrap_err().to_string();
    assert!(err.contains("full"), "{err}");
    assert!(!dest.exists(), "no partial copy left");
    let entries: Vec<_> = std::fs::read_dir(disk.path()).unwrap().collect();
    assert!(entries.is_empty(), "{entries:?}");
}
