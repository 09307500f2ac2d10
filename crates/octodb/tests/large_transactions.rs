//! Transactions too large for one message, and backlogs of many large ones (`wire_size`): a
//! node refuses an incoming message over its limit (64 MiB) and drops the connection, so a
//! transaction that could not travel whole is refused at its COMMIT, with the reason, and
//! senders cut backlogs into several messages. Real nodes on loopback, real files.
mod common;
use common::*;
use octodb::Connection;

const MIB: i64 = 1 << 20;

fn blob_table(p: &Connection) {
    p.execute(
        "CREATE TABLE b(id INTEGER PRIMARY KEY, data BLOB, row_owner)",
        [],
    )
    .unwrap();
}

#[test]
fn a_transaction_too_large_to_send_is_refused_at_commit_and_later_ones_sync() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    blob_table(&p);
    let d = c.device("d.db", &p);
    ready(&d);
    for (node, sql) in [
        (&d, "INSERT INTO b(data) VALUES (zeroblob(?1))"),
        (
            &p,
            "INSERT INTO b(data, row_owner) VALUES (zeroblob(?1), '*')",
        ),
    ] {
        let err = node.execute(sql, [50 * MIB]).unwrap_err().to_string();
        assert!(
            err.contains("at most 48 MiB") && err.contains("rolled back"),
            "{err}"
        );
        assert_eq!(count(node, "SELECT count(*) FROM b"), 0, "rolled back");
    }
    // In an explicit transaction too, refused at its COMMIT.
    d.execute_batch("BEGIN; INSERT INTO b(data) VALUES (zeroblob(30 << 20)); INSERT INTO b(data) VALUES (zeroblob(30 << 20));")
        .unwrap();
    let err = d.execute_batch("COMMIT").unwrap_err().to_string();
    assert!(err.contains("split it into smaller transactions"), "{err}");
    assert!(d.is_autocommit(), "the transaction was rolled back");
    assert_eq!(count(&d, "SELECT count(*) FROM b"), 0);

    d.execute("INSERT INTO b(data) VALUES (zeroblob(?1))", [MIB])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM b", 1);
    // Nothing of the refused ones waits to be sent: the outbox empties once the primary's
    // acceptance of the last one is back (it may still be on its way when the row is there).
    wait_outbox_empty(&d);
}

#[test]
fn a_backlog_larger_than_one_message_reaches_the_device_and_the_primary() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    blob_table(&p);
    let (port, addr) = (port_of(&p), addr_of(&p));
    let d = c.device("d.db", &p);
    ready(&d);
    drop(d);
    wait_closed(&c, "d.db");
    // 80 MiB from the primary while the device is away...
    for _ in 0..40 {
        p.execute(
            "INSERT INTO b(data, row_owner) VALUES (randomblob(?1), '*')",
            [2 * MIB],
        )
        .unwrap();
    }
    drop(p);
    wait_closed(&c, "p.db");
    // ...and 80 MiB from the device while the primary is down.
    let d = Connection::open(&device_uri(&c.path("d.db"), &addr)).unwrap();
    for _ in 0..40 {
        d.execute("INSERT INTO b(data) VALUES (randomblob(?1))", [2 * MIB])
            .unwrap();
    }
    let p = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    d.wait_until_synced(DEADLINE)
        .expect("the device catches up and delivers its backlog");
    assert_eq!(count(&d, "SELECT count(*) FROM b"), 80);
    assert_eq!(count(&p, "SELECT count(*) FROM b"), 80);
}
