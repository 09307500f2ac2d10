//! Encryption at rest (`cipher=sqlcipher`): what lands on disk, keys, wrong keys, tampering.
mod common;
use common::*;
use octodb::{Connection, Error};
use std::path::Path;
use std::time::{Duration, Instant};

const KEY: &str = "correct horse battery staple";
/// Text written into every table of the tests; it must never be found on disk.
const MARKER: &str = "PLAINTEXT-MARKER-7d1e";

fn encrypted_primary_uri(path: &Path, key: &str) -> String {
    format!("{}&cipher=sqlcipher&key={key}", primary_uri(path, 0))
}

fn encrypted_device_uri(path: &Path, addr: &str, key: &str) -> String {
    format!("{}&cipher=sqlcipher&key={key}", device_uri(path, addr))
}

fn local_uri(path: &Path, key: &str) -> String {
    format!("file:{}?cipher=sqlcipher&key={key}", path.display())
}

/// Every file of `dir` (and below), read whole.
fn files_in(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// No file of `dir` holds any of `needles`, byte for byte.
fn assert_nothing_readable(dir: &Path, needles: &[&[u8]]) {
    let files = files_in(dir);
    assert!(files.len() >= 4, "expected the files and their WALs: {files:?}",);
    for (path, bytes) in &files {
        for needle in needles {
            assert!(
                !contains(bytes, needle),
                "{} holds `{}` in plain text",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[test]
fn a_primary_and_its_device_leave_nothing_readable_on_disk() {
    let c = Cluster::new();
    let p = Connection::open(&encrypted_primary_uri(&c.path("p.db"), KEY)).unwrap();
    p.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)")
        .unwrap();
    // Rows that reach the device in its download, and then one by one in the stream.
    for i in 0..50 {
        p.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
            [format!("{MARKER} downloaded {i}")],
        )
        .unwrap();
    }
    let d = Connection::open(&encrypted_device_uri(
        &c.path("d.db"),
        &addr_of(&p),
        KEY,
    ))
    .unwrap();
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM t", 50);
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
        [format!("{MARKER} streamed")],
    )
    .unwrap();
    // The device's own write goes through its outbox and the primary's log.
    d.execute("INSERT INTO t(v) VALUES (?1)", [format!("{MARKER} from the device")])
        .unwrap();
    wait_outbox_empty(&d);
    wait_count(&d, "SELECT count(*) FROM t", 52);
    wait_count(&p, "SELECT count(*) FROM t", 52);
    let secret = text(&p, "SELECT hex(value) FROM _octo_meta WHERE key = 'node_keys'");
    let secret = hex::decode(secret).unwrap();
    let public = p.sync_status().unwrap().public_key;
    let needles: [&[u8]; 5] = [
        MARKER.as_bytes(),
        b"SQLite format 3",
        b"_octo_meta",
        &secret[..16],
        public.as_bytes(),
    ];
    // While the nodes run (rows in the WALs) and once they are closed (checkpointed).
    assert_nothing_readable(c.dir.path(), &needles);
    drop((p, d));
    assert_nothing_readable(c.dir.path(), &needles);
}
