//! Encryption at rest (`cipher=sqlcipher`): what lands on disk, keys, wrong keys, tampering.
mod common;
use common::*;
use octodb::{Connection, Error};
use std::path::Path;
use std::time::Duration;

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
    assert!(
        files.len() >= 4,
        "expected the files and their WALs: {files:?}",
    );
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
    let d = Connection::open(&encrypted_device_uri(&c.path("d.db"), &addr_of(&p), KEY)).unwrap();
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM t", 50);
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
        [format!("{MARKER} streamed")],
    )
    .unwrap();
    // The device's own write goes through its outbox and the primary's log.
    d.execute(
        "INSERT INTO t(v) VALUES (?1)",
        [format!("{MARKER} from the device")],
    )
    .unwrap();
    wait_outbox_empty(&d);
    wait_count(&d, "SELECT count(*) FROM t", 52);
    wait_count(&p, "SELECT count(*) FROM t", 52);
    let secret = text(
        &p,
        "SELECT hex(value) FROM _octo_meta WHERE key = 'node_keys'",
    );
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

/// The bytes of every file of `dir`, to show that a failed open changed nothing.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = files_in(dir);
    files.sort();
    files
}

#[test]
fn a_wrong_or_missing_key_or_a_key_for_a_plain_file_fails_at_open_and_changes_nothing() {
    let c = Cluster::new();
    let enc = c.path("enc.db");
    {
        let p = Connection::open(&encrypted_primary_uri(&enc, KEY)).unwrap();
        p.execute_batch("CREATE TABLE t(v)").unwrap();
    }
    let plain = c.path("plain.db");
    drop(Connection::open(&primary_uri(&plain, 0)).unwrap());
    let before = snapshot(c.dir.path());
    let wrong_key = [
        encrypted_primary_uri(&enc, "not the key"),
        primary_uri(&enc, 0),
        encrypted_primary_uri(&plain, KEY),
        local_uri(&enc, "not the key"),
        local_uri(&plain, KEY),
        format!(
            "{}&cipher=sqlcipher&hexkey={}",
            primary_uri(&enc, 0),
            "ab".repeat(32)
        ),
    ];
    for uri in wrong_key {
        let err = match Connection::open(&uri) {
            Ok(_) => panic!("{uri}: opened"),
            Err(e) => e,
        };
        assert!(matches!(err, Error::WrongKey { .. }), "{uri}: {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("wrong key or not an encrypted database"),
            "{msg}"
        );
        assert!(!msg.contains(KEY) && !msg.contains("not the key"), "{msg}");
    }
    assert_eq!(
        snapshot(c.dir.path()),
        before,
        "a failed open changed a file"
    );
    // The right key still opens it.
    let p = Connection::open(&encrypted_primary_uri(&enc, KEY)).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 0);
}

/// A plain local database (no `node`) is encrypted the same way, and every connection after
/// the first gets the raw key: no PBKDF2 of a quarter second each.
#[test]
fn a_plain_local_database_is_encrypted_and_its_passphrase_derived_once() {
    let c = Cluster::new();
    let path = c.path("local.db");
    // A passphrase of this test's own: the other tests of the process derive theirs.
    let passphrase = "derived once, local";
    let uri = local_uri(&path, "derived%20once,%20local");
    let first = Connection::open(&uri).unwrap();
    first
        .execute_batch(&format!(
            "CREATE TABLE t(v); INSERT INTO t VALUES ('{MARKER}')"
        ))
        .unwrap();
    let later: Vec<Connection> = (0..8).map(|_| Connection::open(&uri).unwrap()).collect();
    for c in &later {
        assert_eq!(text(c, "SELECT v FROM t"), MARKER);
    }
    // Nine connections, one PBKDF2 (256,000 rounds, ~0.2 s): the later ones got the raw key.
    assert_eq!(octodb::store::at_rest::derivations_of(passphrase), 1);
    drop((first, later));
    let bytes = std::fs::read(&path).unwrap();
    assert!(!contains(&bytes, MARKER.as_bytes()));
    assert!(!contains(&bytes, b"SQLite format 3"));
}

#[test]
fn a_node_without_the_key_cannot_complete_a_handshake() {
    let c = Cluster::new();
    let p = Connection::open(&encrypted_primary_uri(&c.path("p.db"), KEY)).unwrap();
    p.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)")
        .unwrap();
    let addr = addr_of(&p);
    // Another key for its own file; and the network key alone given as the raw passphrase
    // (the network key is derived from the file's key, never the same bytes).
    let strangers = [
        Connection::open(&encrypted_device_uri(&c.path("w1.db"), &addr, "guess")).unwrap(),
        Connection::open(&format!(
            "{}&key={KEY}",
            device_uri(&c.path("w2.db"), &addr)
        ))
        .unwrap(),
    ];
    let right = Connection::open(&encrypted_device_uri(&c.path("r.db"), &addr, KEY)).unwrap();
    ready(&right);
    for wrong in &strangers {
        let err = wrong
            .wait_until_ready(Duration::from_millis(500))
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
    }
    assert_eq!(count(&p, "SELECT count(*) FROM _octo_nodes"), 1);
}

/// One byte flipped in a page of the main file: reading that page fails with a corruption
/// error; no wrong answer, no crash; the pages around it still read.
#[test]
fn a_flipped_byte_in_a_page_fails_the_reads_of_that_page() {
    let c = Cluster::new();
    let path = c.path("local.db");
    let uri = local_uri(&path, KEY);
    {
        let db = Connection::open(&uri).unwrap();
        // Two tables on pages of their own: `small` fits in one page, `big` spans many.
        db.execute_batch(
            "CREATE TABLE small(v); INSERT INTO small VALUES ('still readable');
             CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        for i in 0..400 {
            db.execute(
                "INSERT INTO big(v) VALUES (?1)",
                [format!("{MARKER} {i:0>200}")],
            )
            .unwrap();
        }
    }
    let db = Connection::open(&uri).unwrap();
    let last_page: i64 = db
        .query_row(
            "SELECT max(pageno) FROM dbstat WHERE name = 'big'",
            [],
            |r| r.get::<i64>(0),
        )
        .unwrap();
    drop(db);
    let page_size = 4096;
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (last_page as usize - 1) * page_size + 1000;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let db = Connection::open(&uri).unwrap();
    assert_eq!(text(&db, "SELECT v FROM small"), "still readable");
    let err = db
        .query("SELECT count(*), sum(length(v)) FROM big", [])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("malformed") || msg.contains("corrupt"),
        "{msg}"
    );
    // The same again: the error stays, it is no one-off.
    assert!(db.query("SELECT v FROM big", []).is_err());
}

/// An encrypted primary on `c`'s `p.db` with a table `t` holding one public row, and an
/// encrypted device of it (the same key) that has the row: (primary, device, primary's port).
fn encrypted_primary_and_device(c: &Cluster) -> (Connection, Connection, u16) {
    let p = Connection::open(&encrypted_primary_uri(&c.path("p.db"), KEY)).unwrap();
    p.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)")
        .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();
    let port = p.bound_addrs()[0].port();
    let d = Connection::open(&encrypted_device_uri(&c.path("d.db"), &addr_of(&p), KEY)).unwrap();
    ready(&d);
    wait_count(&d, "SELECT count(*) FROM t", 1);
    (p, d, port)
}

/// `PRAGMA rekey` on a running primary: the file is re-encrypted, nothing is lost, the engine
/// goes on writing (rows from its device), and the network key stays: the device, which still
/// has the old key for its own file, keeps syncing, before and after the primary reopens.
#[test]
fn rekey_re_encrypts_a_running_primary_and_keeps_its_network_key() {
    let c = Cluster::new();
    let p_path = c.path("p.db");
    let (p, d, port) = encrypted_primary_and_device(&c);

    // Refused while another app connection holds the old key.
    let second = Connection::open(&encrypted_primary_uri(&p_path, KEY)).unwrap();
    let err = p.execute_batch("PRAGMA rekey = 'new key'").unwrap_err();
    assert!(err.to_string().contains("other connections"), "{err}");
    drop(second);

    p.execute_batch("PRAGMA rekey = 'new key'").unwrap();
    // The engine's writer (reopened with the new key) applies the device's rows; readers too.
    d.execute(
        "INSERT INTO t(v) VALUES ('from the device after the rekey')",
        [],
    )
    .unwrap();
    wait_outbox_empty(&d);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t", 3);
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 3);
    // Another app connection needs the new key now.
    let old = Connection::open(&encrypted_primary_uri(&p_path, KEY)).map(drop);
    assert!(matches!(old, Err(Error::WrongKey { .. })), "{old:?}");
    let new_conn = Connection::open(&encrypted_primary_uri(&p_path, "new key")).unwrap();
    assert_eq!(count(&new_conn, "SELECT count(*) FROM t"), 3);
    drop((p, new_conn));

    // Reopened with the new key on the same port: the device reconnects with the network key
    // it always had.
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{port}&cipher=sqlcipher&key=new key",
        p_path.display()
    );
    let p = Connection::open(&uri).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 3);
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('after reopening', '*')",
        [],
    )
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM t", 4);
    drop(p);
    let old = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&cipher=sqlcipher&key={KEY}",
        p_path.display()
    ))
    .map(drop);
    assert!(matches!(old, Err(Error::WrongKey { .. })), "{old:?}");
}

/// A local connection (no `node=`) to a running node's file may not re-encrypt it under the
/// node (the review: the node's connections, holding the old key, then failed every read and
/// write); once the node is stopped it may, as the refusal of a rekey on a cluster member
/// advises, and the node starts again with the new key and the network key it had.
#[test]
fn a_local_rekey_waits_for_the_node_to_stop_and_keeps_its_network_key() {
    let c = Cluster::new();
    let p_path = c.path("p.db");
    let (p, d, port) = encrypted_primary_and_device(&c);

    let local = Connection::open(&local_uri(&p_path, KEY)).unwrap();
    // In every spelling SQLCipher takes (the review: a schema name went around the check).
    for sql in [
        "PRAGMA rekey = 'new key'",
        "PRAGMA main.rekey = 'new key'",
        "PRAGMA \"rekey\" = 'new key'",
    ] {
        let err = local.execute_batch(sql).unwrap_err();
        assert!(err.to_string().contains("a node runs on"), "{sql}: {err}");
    }
    drop(local);
    // The node's own connection takes the plain form only (which pauses its writer).
    let err = p
        .execute_batch("PRAGMA main.rekey = 'new key'")
        .unwrap_err();
    assert!(err.to_string().contains("write it as"), "{err}");
    // The node goes on with its key.
    p.execute("INSERT INTO t(v, row_owner) VALUES ('still', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t", 2);
    drop(p);

    let local = Connection::open(&local_uri(&p_path, KEY)).unwrap();
    local.execute_batch("PRAGMA rekey = 'new key'").unwrap();
    drop(local);
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{port}&cipher=sqlcipher&key=new key",
        p_path.display()
    );
    let p = Connection::open(&uri).unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    // The device reconnects with the network key it always had.
    wait_count(&d, "SELECT count(*) FROM t", 3);
}

/// SQLCipher does not encrypt temporary files: on an encrypted file (a node's connection, a
/// local one with its key, or one given it by `PRAGMA key`) the app may not send temporary
/// tables and sorts to files (the review); a plain database may.
#[test]
fn an_encrypted_file_keeps_its_temporary_data_in_memory() {
    let c = Cluster::new();
    let refused = |conn: &Connection| {
        let err = conn.execute_batch("PRAGMA temp_store = FILE").unwrap_err();
        assert!(err.to_string().contains("temp_store=MEMORY"), "{err}");
        conn.execute_batch("PRAGMA temp_store = MEMORY").unwrap();
    };
    let p = Connection::open(&encrypted_primary_uri(&c.path("p.db"), KEY)).unwrap();
    refused(&p);
    let local = Connection::open(&local_uri(&c.path("l.db"), KEY)).unwrap();
    refused(&local);
    let plain = Connection::open(&format!("file:{}", c.path("plain.db").display())).unwrap();
    plain.execute_batch("PRAGMA temp_store = FILE").unwrap();
    let keyed = Connection::open(&format!("file:{}", c.path("k.db").display())).unwrap();
    keyed.execute_batch("PRAGMA key = 'given later'").unwrap();
    refused(&keyed);

    // Set to files before the key is given, or before an encrypted file is attached: back in
    // memory once a key is in play (the review).
    let temp_store = |conn: &Connection| -> i64 {
        conn.query_row("PRAGMA temp_store", [], |r| r.get(0))
            .unwrap()
    };
    let late = Connection::open(&format!("file:{}", c.path("late.db").display())).unwrap();
    late.execute_batch("PRAGMA temp_store = FILE").unwrap();
    late.execute_batch("PRAGMA key = 'given after'").unwrap();
    assert_eq!(temp_store(&late), 2, "MEMORY");
    refused(&late);
    let attaching = Connection::open(&format!("file:{}", c.path("a.db").display())).unwrap();
    attaching.execute_batch("PRAGMA temp_store = FILE").unwrap();
    let secret = c.path("secret.db");
    attaching
        .execute_batch(&format!(
            "ATTACH DATABASE '{}' AS s KEY 'attached'",
            secret.display()
        ))
        .unwrap();
    assert_eq!(temp_store(&attaching), 2, "MEMORY");
    refused(&attaching);
}

/// What SQLite does with a damaged WAL frame of an encrypted file (README, "Tampering"): its
/// own checksum over the encrypted frame fails first, and the frame is taken as the end of the
/// log, as after a torn write: the last transaction is gone, the ones before it read, and no
/// error is raised.
#[test]
fn a_flipped_byte_in_the_last_wal_frame_ends_the_log_before_it() {
    let c = Cluster::new();
    let path = c.path("w.db");
    let copy = c.path("copy.db");
    let wal_of = |p: &Path| std::path::PathBuf::from(format!("{}-wal", p.display()));
    {
        let db = Connection::open(&local_uri(&path, KEY)).unwrap();
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(v)")
            .unwrap();
        for i in 0..5 {
            db.execute("INSERT INTO t VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
        // The file and its WAL as they stand while the connection is open (closing would
        // checkpoint the WAL into the file).
        std::fs::copy(&path, &copy).unwrap();
        std::fs::copy(wal_of(&path), wal_of(&copy)).unwrap();
    }
    let mut wal = std::fs::read(wal_of(&copy)).unwrap();
    // WAL header 32 bytes, then frames of a 24-byte header and a 4096-byte page.
    let frames = (wal.len() - 32) / (24 + 4096);
    assert!(frames >= 5, "one frame per commit at least: {frames}");
    wal[32 + (frames - 1) * (24 + 4096) + 24 + 200] ^= 0x01;
    std::fs::write(wal_of(&copy), &wal).unwrap();

    let db = Connection::open(&local_uri(&copy, KEY)).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 4);
    assert_eq!(text(&db, "SELECT max(v) FROM t"), "row 3");
}
