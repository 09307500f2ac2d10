//! The `octodb` commands that copy a node's file: `backup`, `restore-cluster`,
//! `mark-restored`, `encrypt` and `decrypt`, run as users run them (real processes, running
//! nodes beside them, kill -9).

mod common;
use common::*;
use octodb::Connection;
use std::time::Duration;

#[test]
fn backup_copies_a_running_primary_consistently_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _addr) = primary(dir.path());
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         INSERT INTO t(v, row_owner) VALUES ('one', '*'), ('two', '*');",
    )
    .unwrap();
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.path().join("p.db").display()
    );
    let dest = dir.path().join("backup.db");
    let out = octodb().args(["backup", &uri]).arg(&dest).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The primary went on running; the copy holds its rows and its log.
    p.execute("INSERT INTO t(v, row_owner) VALUES ('three', '*')", [])
        .unwrap();
    let copy = Connection::open(&format!("file:{}", dest.display())).unwrap();
    assert_eq!(count(&copy, "SELECT count(*) FROM t"), 2);
    assert!(count(&copy, "SELECT count(*) FROM _octo_log") >= 2);
    // It holds the node's secret key: readable by its owner only, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    // A second backup to the same file is refused, leaving the first intact.
    let again = octodb().args(["backup", &uri]).arg(&dest).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(count(&copy, "SELECT count(*) FROM t"), 2);
}

/// A backup killed half way (kill -9, or a SIGTERM from `timeout` or systemd) leaves nothing at
/// the destination: the ops walkthrough found a 14 MB partial file there, whose journal rolled
/// it back to an empty database, and a next backup refused as the name existed.
#[test]
fn a_backup_killed_half_way_leaves_no_file_at_its_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _addr) = primary(dir.path());
    p.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB, row_owner)")
        .unwrap();
    for _ in 0..12 {
        // About 48 MB in all: long enough a copy to be caught under way.
        p.execute(
            "INSERT INTO t(v, row_owner) SELECT randomblob(65536), '*' FROM \
             (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 64) \
             SELECT i FROM n)",
            [],
        )
        .unwrap();
    }
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.path().join("p.db").display()
    );
    let dest = dir.path().join("backup.db");
    let mut child = octodb()
        .args(["backup", &uri])
        .arg(&dest)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = dir.path().join(format!("backup.db.partial-{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let caught = loop {
        if std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0) {
            break true;
        }
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    if !caught {
        eprintln!("skipped: the backup ended before it was seen under way");
        return;
    }
    assert!(!dest.exists(), "a partial copy at the backup's name");
    // The next backup to the same name goes through.
    let out = octodb().args(["backup", &uri]).arg(&dest).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = Connection::open(&format!("file:{}", dest.display())).unwrap();
    assert_eq!(count(&copy, "SELECT count(*) FROM t"), 12 * 64);
}

/// `octodb restore-cluster`: a primary's copy (encrypted: the URI gives its key), its node
/// stopped, starts a new cluster and leads it with the copy's rows; a running node's file
/// and a device's are refused, with what to do. `octodb mark-restored` on a primary alone
/// marks nothing and says so.
#[test]
fn restore_cluster_turns_a_primarys_copy_into_a_new_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&cipher=sqlcipher&key=k3y",
        path.display()
    );
    let p = Connection::open(&uri).unwrap();
    p.execute_batch("CREATE TABLE t(v, row_owner); INSERT INTO t VALUES ('kept', '*')")
        .unwrap();
    let out = octodb().args(["restore-cluster", &uri]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already open"),
        "{err}"
    );
    let device = dir.path().join("d.db");
    {
        let d = Connection::open(&format!(
            "file:{}?node=secondary&connect=tcp://{}&cipher=sqlcipher&key=k3y",
            device.display(),
            p.bound_addrs()[0]
        ))
        .unwrap();
        d.wait_until_ready(std::time::Duration::from_secs(30))
            .unwrap();
    }
    drop(p);
    let device_uri = format!("file:{}?cipher=sqlcipher&key=k3y", device.display());
    let out = octodb()
        .args(["restore-cluster", &device_uri])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not the file of a primary"),
        "{err}"
    );
    // (The node's last connection may still be closing: try until the file is free.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let out = loop {
        let out = octodb().args(["restore-cluster", &uri]).output().unwrap();
        let busy = String::from_utf8_lossy(&out.stderr).contains("already open");
        if !busy || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("starts a new cluster"), "{err}");
    assert!(err.contains("keeps node ids"), "{err}");
    assert!(!err.contains("k3y"), "the key is never printed: {err}");
    let without_key = format!("file:{}", path.display());
    let out = octodb()
        .args(["restore-cluster", &without_key])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wrong key"), "{err}");
    // A primary alone whose ids were reserved (by restore-cluster here) is marked once; a
    // device's file is refused.
    let out = octodb().args(["mark-restored", &uri]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("marked as restored already"),
        "{err}"
    );
    let out = octodb()
        .args(["mark-restored", &device_uri])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not the file of a primary"),
        "{err}"
    );
    let plain = dir.path().join("plain.db");
    Connection::open(&format!("file:{}", plain.display()))
        .unwrap()
        .execute_batch("CREATE TABLE x(v)")
        .unwrap();
    let out = octodb()
        .args(["mark-restored", plain.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("it is a plain database"),
        "{err}"
    );
    let p = Connection::open(&uri).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'kept'"), 1);
    p.execute("INSERT INTO t VALUES ('new', '*')", []).unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 2);
}

/// `octodb encrypt` / `decrypt`: an encrypted copy of a plain file and a plain copy of an
/// encrypted one, sources unchanged, targets never overwritten; `octodb backup` of an encrypted
/// node is encrypted alike. No key is ever printed.
#[test]
fn encrypt_decrypt_and_backup_of_an_encrypted_node() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.db");
    {
        let c = Connection::open(&format!("file:{}", plain.display())).unwrap();
        c.execute_batch(
            "CREATE TABLE t(v); INSERT INTO t VALUES ('readable row');
             PRAGMA user_version = 7; PRAGMA application_id = 42; PRAGMA journal_mode = wal;",
        )
        .unwrap();
    }
    let before = std::fs::read(&plain).unwrap();
    // What the file's header keeps, kept by the copy (an app counts its migrations by
    // user_version: the ops walkthrough found it 0 after encrypt and after decrypt).
    let header = |c: &Connection| {
        let number = |p: &str| c.query_row(p, [], |r| r.get::<i64>(0)).unwrap();
        let mode = c
            .query_row("PRAGMA journal_mode", [], |r| r.get::<String>(0))
            .unwrap();
        (
            number("PRAGMA user_version"),
            number("PRAGMA application_id"),
            mode,
        )
    };
    let kept = (7, 42, "wal".to_string());
    let enc = dir.path().join("enc.db");
    let enc_uri = format!("file:{}?cipher=sqlcipher&key=s3cret-k3y", enc.display());
    let run = |args: &[&str]| {
        let out = octodb().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !stderr.contains("s3cret-k3y"),
            "a key was printed: {stderr}"
        );
        (out.status.success(), stderr)
    };
    let plain_arg = plain.to_str().unwrap();
    let (ok, err) = run(&["encrypt", plain_arg, &enc_uri]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&plain).unwrap(), before, "the source changed");
    let enc_bytes = std::fs::read(&enc).unwrap();
    assert!(!enc_bytes.starts_with(b"SQLite format 3"));
    assert!(!enc_bytes.windows(12).any(|w| w == b"readable row"));
    let c = Connection::open(&enc_uri).unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM t WHERE v = 'readable row'"),
        1
    );
    assert_eq!(header(&c), kept);
    drop(c);
    // Read without its key, the shell says what SQLite's "not a database" may mean.
    let (ok, err) = run(&[enc.to_str().unwrap(), "SELECT count(*) FROM t;"]);
    assert!(!ok && err.contains("cipher=sqlcipher&key="), "{err}");
    // Never over an existing file.
    let (ok, err) = run(&["encrypt", plain_arg, &enc_uri]);
    assert!(!ok && err.contains("exists already"), "{err}");

    let back = dir.path().join("back.db");
    let (ok, err) = run(&["decrypt", &enc_uri, back.to_str().unwrap()]);
    assert!(ok, "{err}");
    let c = Connection::open(&format!("file:{}", back.display())).unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM t WHERE v = 'readable row'"),
        1
    );
    assert_eq!(header(&c), kept);
    let wrong = format!("file:{}?cipher=sqlcipher&key=wrong", enc.display());
    let (ok, err) = run(&["decrypt", &wrong, dir.path().join("x.db").to_str().unwrap()]);
    assert!(!ok && err.contains("wrong key"), "{err}");

    // A backup of a running encrypted primary: encrypted, with the same key.
    let node_uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&cipher=sqlcipher&key=s3cret-k3y",
        dir.path().join("p.db").display()
    );
    let p = Connection::open(&node_uri).unwrap();
    p.execute_batch("CREATE TABLE n(v, row_owner); INSERT INTO n VALUES ('node row', '*')")
        .unwrap();
    let copy = dir.path().join("copy.db");
    let (ok, err) = run(&["backup", &node_uri, copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    // The backup's process closing its connection left the running node's WAL alone (it
    // deleted it, with the rows committed there, when the node held no lock on the file).
    assert!(
        dir.path().join("p.db-wal").exists(),
        "the running node's WAL was deleted"
    );
    p.execute_batch("INSERT INTO n VALUES ('after the backup', '*')")
        .unwrap();
    let later = dir.path().join("later-copy.db");
    let (ok, err) = run(&["backup", &node_uri, later.to_str().unwrap()]);
    assert!(ok, "{err}");
    let c = Connection::open(&format!(
        "file:{}?cipher=sqlcipher&key=s3cret-k3y",
        later.display()
    ))
    .unwrap();
    assert_eq!(
        count(&c, "SELECT count(*) FROM n"),
        2,
        "a row committed after a backup"
    );
    drop(c);
    // A plain copy of the running primary: readable by its owner only (it holds every row
    // and the node's secret key; it was created with the umask's 0644), and marked as a
    // backup's copy is (restored, it would hand out again the ids of devices approved since).
    let plain_copy = dir.path().join("plain-copy.db");
    let (ok, err) = run(&["decrypt", &node_uri, plain_copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        err.contains("keeps node ids"),
        "not marked as restored: {err}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&plain_copy).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    let c = Connection::open(&format!("file:{}", plain_copy.display())).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM n"), 2);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM _octo_nodes WHERE auth_state = 'reserved'"
        ),
        1
    );
    drop(c);
    let no_key = format!("file:{}", dir.path().join("p.db").display());
    let other = dir.path().join("other-copy.db");
    let (ok, err) = run(&["backup", &no_key, other.to_str().unwrap()]);
    assert!(!ok && err.contains("wrong key"), "{err}");
    assert!(!other.exists(), "a failed backup leaves no file behind");
    let copy_bytes = std::fs::read(&copy).unwrap();
    assert!(!copy_bytes.starts_with(b"SQLite format 3"));
    assert!(!copy_bytes.windows(8).any(|w| w == b"node row"));
    let c = Connection::open(&format!(
        "file:{}?cipher=sqlcipher&key=s3cret-k3y",
        copy.display()
    ))
    .unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM n"), 1);
    drop(c);

    // The node stopped, its copy is its file exactly, and is not marked: a converted member
    // would otherwise leave its cluster to rejoin it (the review of this session's diff).
    drop(p);
    let stopped_copy = dir.path().join("stopped-copy.db");
    let (ok, err) = run(&["decrypt", &node_uri, stopped_copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(!err.contains("keeps node ids"), "{err}");
    let c = Connection::open(&format!("file:{}", stopped_copy.display())).unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM _octo_nodes WHERE auth_state = 'reserved'"
        ),
        0
    );
}

/// A node converted with `octodb encrypt` or `decrypt` stays on the network its devices know:
/// the network key it had (none, or one derived from its old file key) is kept in the new
/// file, so its devices reconnect, and a device without the key stays out.
#[test]
fn a_converted_node_keeps_its_network_key() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).display().to_string();
    let run = |args: &[&str]| {
        let out = octodb().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{args:?}: {stderr}");
        stderr
    };
    let row_reaches = |device: &Connection, primary: &Connection, v: &str| {
        primary
            .execute("INSERT INTO t(v, row_owner) VALUES (?1, '*')", [v])
            .unwrap();
        let sql = format!("SELECT count(*) FROM t WHERE v = '{v}'");
        device
            .wait_for(DEADLINE, |_| {
                device.query_row(&sql, [], |r| r.get::<i64>(0)).ok() == Some(1)
            })
            .unwrap_or_else(|e| panic!("`{v}` never reached the device: {e}"));
    };

    // A plain primary without a network key, encrypted: its plain device reconnects.
    let (p, addr) = primary(dir.path());
    let port = addr.rsplit(':').next().unwrap().to_string();
    p.execute("CREATE TABLE t(v, row_owner)", []).unwrap();
    let d = Connection::open(&device_uri(dir.path(), &addr)).unwrap();
    row_reaches(&d, &p, "plain");
    drop(p);
    let encrypted = format!("file:{}?cipher=sqlcipher&key=k3y", at("pe.db"));
    run(&["encrypt", &at("p.db"), &encrypted]);
    let p = Connection::open(&format!(
        "{encrypted}&node=primary&bind=tcp://127.0.0.1:{port}"
    ))
    .unwrap();
    row_reaches(&d, &p, "after encrypt");
    drop(d);
    drop(p);

    // An encrypted primary's network (its key derived from the file key), decrypted: its
    // encrypted device reconnects, and a device without the key is still refused.
    let e_uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&cipher=sqlcipher&key=n3t",
        at("e.db")
    );
    let e = Connection::open(&e_uri).unwrap();
    let e_addr = e.bound_addrs()[0].to_string();
    let e_port = e_addr.rsplit(':').next().unwrap().to_string();
    e.execute("CREATE TABLE t(v, row_owner)", []).unwrap();
    let de = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://{e_addr}&cipher=sqlcipher&key=n3t",
        at("de.db")
    ))
    .unwrap();
    row_reaches(&de, &e, "encrypted");
    drop(e);
    run(&[
        "decrypt",
        &format!("file:{}?cipher=sqlcipher&key=n3t", at("e.db")),
        &at("ed.db"),
    ]);
    let e = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{e_port}",
        at("ed.db")
    ))
    .unwrap();
    row_reaches(&de, &e, "after decrypt");
    let stranger = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{e_port}",
        at("stranger.db")
    ))
    .unwrap();
    let refused = stranger.wait_until_ready(Duration::from_millis(500));
    assert!(refused.is_err(), "a device without the network key got in");
    drop(stranger);
    drop(de);
    drop(e);
    // Encrypted again, the decrypted file keeps the network key it holds, and `encrypt` does
    // not say it has none (the cluster walkthrough was told to remove the new file).
    let said = run(&[
        "encrypt",
        &at("ed.db"),
        &format!("file:{}?cipher=sqlcipher&key=an0ther", at("ede.db")),
    ]);
    assert!(!said.contains("no network key"), "{said}");

    // A plain primary with a network key (`key=` without cipher=), encrypted with that key
    // named on the source: its keyed device reconnects, a device without the key stays out.
    let k_uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&key=n3tw0rk",
        at("k.db")
    );
    let k = Connection::open(&k_uri).unwrap();
    let k_addr = k.bound_addrs()[0].to_string();
    let k_port = k_addr.rsplit(':').next().unwrap().to_string();
    k.execute("CREATE TABLE t(v, row_owner)", []).unwrap();
    let dk = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://{k_addr}&key=n3tw0rk",
        at("dk.db")
    ))
    .unwrap();
    row_reaches(&dk, &k, "keyed");
    drop(k);
    run(&[
        "encrypt",
        &format!("file:{}?key=n3tw0rk", at("k.db")),
        &format!("file:{}?cipher=sqlcipher&key=d1sk", at("ke.db")),
    ]);
    let k = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{k_port}&cipher=sqlcipher&key=d1sk",
        at("ke.db")
    ))
    .unwrap();
    row_reaches(&dk, &k, "after encrypting a keyed network");
    let stranger = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{k_port}",
        at("stranger2.db")
    ))
    .unwrap();
    let refused = stranger.wait_until_ready(Duration::from_millis(500));
    assert!(refused.is_err(), "a device without the network key got in");
}
