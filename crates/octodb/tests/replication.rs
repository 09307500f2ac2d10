//! Rows and schema flowing between a primary and its devices, SPEC §3.
mod common;
use common::*;

#[test]
fn schema_from_primary_reaches_two_devices() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)",
        [],
    )
    .unwrap();
    let d1 = c.device("d1.db", &p);
    let d2 = c.device("d2.db", &p);
    for d in [&d1, &d2] {
        ready(d);
        wait_count(
            d,
            "SELECT count(*) FROM sqlite_master WHERE name = 'notes'",
            1,
        );
    }
    // Schema created while devices are connected flows too.
    p.execute("CREATE INDEX notes_body ON notes(body)", [])
        .unwrap();
    for d in [&d1, &d2] {
        wait_count(
            d,
            "SELECT count(*) FROM sqlite_master WHERE name = 'notes_body'",
            1,
        );
    }
    // Devices cannot change the schema.
    let err = d1.execute("CREATE TABLE mine(x)", []).unwrap_err();
    assert!(err.to_string().contains("primary"), "{err}");
    // Rules the engine's triggers keep are typed as the others are.
    let err = d1
        .execute("INSERT INTO notes(body, row_owner) VALUES ('x', '*')", [])
        .unwrap_err();
    assert!(
        matches!(&err, octodb::Error::Rule(m) if m.contains("insert only rows of its own user")),
        "{err:?}"
    );
}

/// `ALTER TABLE ... DROP COLUMN` on a primary works (the capture's triggers name every column)
/// and reaches the devices; a device cannot drop a column, and no one can drop one of octodb's
/// internal tables. (SQLite hands the authorizer the dropped column where other statements put
/// a database name: DROP COLUMN used to pass every rule, and was not replicated.)
/// An app's schema set-up run at every start (`CREATE ... IF NOT EXISTS`, `DROP ... IF
/// EXISTS`) changes nothing once done, and replicates nothing: it made a log entry at each
/// start, which every device applied as a schema change.
#[test]
fn a_schema_statement_that_changes_nothing_is_not_replicated() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let before = p.sync_status().unwrap().last_seq;
    p.execute_batch(
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         DROP TABLE IF EXISTS no_such_table;
         BEGIN;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         COMMIT;",
    )
    .unwrap();
    assert_eq!(p.sync_status().unwrap().last_seq, before);
    // What changes the schema still does, in the same transaction as a no-op.
    p.execute_batch(
        "BEGIN;
         CREATE INDEX IF NOT EXISTS t_v ON t(v);
         CREATE INDEX IF NOT EXISTS t_v ON t(v);
         COMMIT;",
    )
    .unwrap();
    assert_eq!(p.sync_status().unwrap().last_seq, before + 1);
    wait_count(
        &d,
        "SELECT count(*) FROM sqlite_master WHERE name = 't_v'",
        1,
    );
}

#[test]
fn dropping_a_column_on_a_primary_reaches_the_devices_and_only_a_primary_may() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b TEXT, row_owner)")
        .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    p.execute_batch("ALTER TABLE t DROP COLUMN b").unwrap();
    wait_count(
        &d,
        "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'b'",
        0,
    );
    // Rows still flow both ways, through the capture installed again for the new schema.
    p.execute(
        "INSERT INTO t(a, row_owner) VALUES ('from the primary', '*')",
        [],
    )
    .unwrap();
    d.execute("INSERT INTO t(a) VALUES ('from the device')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t", 2);
    wait_count(&p, "SELECT count(*) FROM t", 2);

    let err = d.execute_batch("ALTER TABLE t DROP COLUMN a").unwrap_err();
    assert!(err.to_string().contains("on a primary"), "{err}");
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'a'"
        ),
        1
    );
    for node in [&p, &d] {
        let err = node
            .execute_batch("ALTER TABLE _octo_meta DROP COLUMN value")
            .unwrap_err();
        assert!(err.to_string().contains("internal tables"), "{err}");
        // The engine's rules are TEMP triggers, and the schema changes through statements it
        // sees: neither may be taken away on a node's connection (the hostile walkthrough
        // dropped a device's checks and rewrote its schema so).
        let err = node
            .execute_batch("DROP TRIGGER temp._octo_bi_t")
            .unwrap_err();
        assert!(err.to_string().contains("octodb's own triggers"), "{err}");
        let err = node
            .execute_batch("PRAGMA writable_schema = ON")
            .unwrap_err();
        assert!(err.to_string().contains("sqlite_schema"), "{err}");
    }
    let err = d
        .execute_batch("INSERT INTO t(a, row_owner) VALUES ('public', '*')")
        .unwrap_err();
    assert!(
        err.to_string().contains("own user"),
        "the device's rule holds: {err}"
    );
}

#[test]
fn global_rows_everywhere_user_rows_only_at_owner_and_primary() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d1 = c.device("d1.db", &p);
    let d2 = c.device("d2.db", &p);
    ready(&d1);
    ready(&d2);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('for all', '*')", [])
        .unwrap();
    d1.execute("INSERT INTO t(v) VALUES ('d1 row')", [])
        .unwrap();
    let id = d1.last_insert_rowid();
    wait_count(
        &p,
        &format!("SELECT count(*) FROM t WHERE id = {id} AND v = 'd1 row'"),
        1,
    );
    wait_count(&d1, "SELECT count(*) FROM t WHERE v = 'for all'", 1);
    wait_count(&d2, "SELECT count(*) FROM t WHERE v = 'for all'", 1);
    // d2 has seen the global row which was written after... make sure d1's row never arrives:
    // send a marker after it and wait for the marker.
    p.execute("INSERT INTO t(v, row_owner) VALUES ('marker', '*')", [])
        .unwrap();
    wait_count(&d2, "SELECT count(*) FROM t WHERE v = 'marker'", 1);
    assert_eq!(count(&d2, "SELECT count(*) FROM t WHERE v = 'd1 row'"), 0);
    let owner: i64 = d1
        .query_row("SELECT row_owner FROM t WHERE v = 'd1 row'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(Some(owner), d1.sync_status().unwrap().user_id);
}

#[test]
fn tables_without_integer_primary_key_replicate_every_row() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute("CREATE TABLE t(n INTEGER NOT NULL, row_owner)", [])
        .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    for n in 1..=3 {
        d.execute("INSERT INTO t(n) VALUES (?1)", [n]).unwrap();
    }
    let rows = d
        .query("INSERT INTO t(n) VALUES (4) RETURNING n", [])
        .unwrap();
    assert_eq!(rows.len(), 1);
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 4);
    assert_eq!(count(&p, "SELECT count(DISTINCT rowid) FROM t"), 4);
}

#[test]
fn commits_from_several_connections_of_one_device_all_arrive_once() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let uri = device_uri(&c.path("d.db"), &addr_of(&p));
    // Commits of different connections finish in an order of their own, so the transactions
    // reach the sending side out of order now and then.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let conn = octodb::Connection::open(&uri).unwrap();
                for i in 0..100 {
                    conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("{w}-{i}")])
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(DISTINCT v) FROM t", 400);
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 400);
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
}

/// Rows written and then undone by `ROLLBACK TO` after an inner `RELEASE` (which records the
/// changes made so far) never leave the node, on a device or on a primary.
#[test]
fn changes_undone_by_rollback_to_a_savepoint_never_replicate() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let script = |owner: &str| {
        format!(
            "BEGIN;
             SAVEPOINT a;
             INSERT INTO t(v, row_owner) VALUES ('undone 1', {owner});
             SAVEPOINT b;
             INSERT INTO t(v, row_owner) VALUES ('undone 2', {owner});
             RELEASE b;
             ROLLBACK TO a;
             INSERT INTO t(v, row_owner) VALUES ('kept', {owner});
             COMMIT;"
        )
    };
    d.execute_batch(&script("this_user()")).unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'kept'", 1);
    p.execute_batch(&script("'*'")).unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'kept'", 2);
    // A marker behind them: once it is everywhere, nothing else is on its way.
    p.execute("INSERT INTO t(v, row_owner) VALUES ('marker', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'marker'", 1);
    for node in [&p, &d] {
        assert_eq!(
            count(node, "SELECT count(*) FROM t WHERE v LIKE 'undone%'"),
            0
        );
        assert_eq!(count(node, "SELECT count(*) FROM t"), 3);
    }
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
}

/// Updates and deletes undone by `ROLLBACK TO` or by a statement that fails halfway leave the
/// other nodes' rows as they were; what stands in the same transaction arrives. An update that
/// leaves a row as it was sends nothing that changes it.
#[test]
fn updates_and_deletes_undone_in_a_transaction_never_replicate() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute("CREATE UNIQUE INDEX t_v ON t(v)", []).unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute_batch(
        "INSERT INTO t(id, v) VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four');",
    )
    .unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 4);
    d.execute_batch(
        "BEGIN;
         UPDATE t SET v = v WHERE id = 4;
         SAVEPOINT s;
         UPDATE t SET v = 'undone' WHERE id = 1;
         DELETE FROM t WHERE id = 2;
         ROLLBACK TO s;
         RELEASE s;
         UPDATE t SET v = 'kept' WHERE id = 3;",
    )
    .unwrap();
    // Row 4 first becomes 'two', a value row 2 still holds: the statement fails at row 4 and
    // SQLite undoes its change of row 3 with it.
    let err = d
        .execute(
            "UPDATE t SET v = CASE id WHEN 3 THEN 'partly' ELSE 'two' END WHERE id IN (3, 4)",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    d.execute_batch("COMMIT").unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'kept'", 1);
    let rows = |c: &octodb::Connection| {
        text(
            c,
            "SELECT group_concat(r, ' ') FROM (SELECT id || ':' || v AS r FROM t ORDER BY id)",
        )
    };
    assert_eq!(rows(&d), "1:one 2:two 3:kept 4:four");
    assert_eq!(rows(&p), rows(&d));
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
}

/// Inside one transaction the capture follows the transaction's own schema statements,
/// including one undone by `ROLLBACK TO`: every row replicates with the columns its table has.
#[test]
fn rows_written_between_schema_statements_of_one_transaction_replicate() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    p.execute_batch(
        "BEGIN;
         INSERT INTO t(v, row_owner) VALUES ('before', '*');
         CREATE TABLE u(id INTEGER PRIMARY KEY, w TEXT, row_owner);
         INSERT INTO u(w, row_owner) VALUES ('new table', '*');
         SAVEPOINT s;
         ALTER TABLE t ADD COLUMN undone TEXT;
         INSERT INTO t(v, undone, row_owner) VALUES ('undone', 'x', '*');
         ROLLBACK TO s;
         INSERT INTO t(v, row_owner) VALUES ('after the rollback', '*');
         RELEASE s;
         ALTER TABLE t ADD COLUMN extra TEXT;
         INSERT INTO t(v, extra, row_owner) VALUES ('after', 'e', '*');
         COMMIT;",
    )
    .unwrap();
    // The transaction arrives whole: once the column is there, so are the rows.
    wait_count(
        &d,
        "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'extra'",
        1,
    );
    assert_eq!(count(&d, "SELECT count(*) FROM t WHERE extra = 'e'"), 1);
    for node in [&p, &d] {
        assert_eq!(
            count(node, "SELECT count(*) FROM u WHERE w = 'new table'"),
            1
        );
        assert_eq!(count(node, "SELECT count(*) FROM t"), 3);
        assert_eq!(
            count(
                node,
                "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'undone'"
            ),
            0
        );
    }
}

/// A trigger from the primaries that calls `this_node()` / `this_user()` runs wherever rows
/// are written: on a device's own commit, on the primary applying the device's transaction,
/// and on the device applying the primary's rows.
#[test]
fn triggers_calling_this_node_and_this_user_run_on_every_node() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         CREATE TABLE audit(v TEXT, node INTEGER, user INTEGER);
         CREATE TRIGGER audit_insert AFTER INSERT ON t BEGIN
           INSERT INTO audit VALUES (NEW.v, this_node(), this_user());
         END;",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('from the device')", [])
        .unwrap();
    wait_outbox_empty(&d);
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('from the primary', '*')",
        [],
    )
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM t", 2);
    assert_eq!(d.sync_status().unwrap().last_rejected, None);

    let audit = |node: &octodb::Connection| -> String {
        text(
            node,
            "SELECT group_concat(v || ':' || (node = this_node()) || ':' || (user IS this_user()), ' ')
             FROM (SELECT * FROM audit ORDER BY rowid)",
        )
    };
    // Each node's audit names itself (1: this node, 1: this node's user, NULL on a primary).
    assert_eq!(audit(&p), "from the device:1:1 from the primary:1:1");
    assert_eq!(audit(&d), "from the device:1:1 from the primary:1:1");
    let device_user: Option<i64> = d.query_row("SELECT this_user()", [], |r| r.get(0)).unwrap();
    assert!(device_user.is_some());
}

/// An app's `AFTER UPDATE OF title` trigger fires where the title changes, also where the
/// change arrives from another node as a whole row (triggers walkthrough: devices and
/// followers set every column of such a row, so the trigger fired for every update, and a
/// local table it kept diverged from the primary's).
#[test]
fn an_update_of_trigger_fires_on_a_device_only_when_its_column_changes() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    let d = c.device("d.db", &p);
    p.execute_batch(
        "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, done INTEGER, row_owner);
         CREATE TABLE renames(msg TEXT);
         CREATE TRIGGER tasks_renamed AFTER UPDATE OF title ON tasks
           BEGIN INSERT INTO renames VALUES (OLD.title || ' -> ' || NEW.title); END;
         INSERT INTO tasks(id, title, done, row_owner) VALUES (1, 'a', 0, '*');",
    )
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM tasks", 1);
    p.execute("UPDATE tasks SET done = 1 WHERE id = 1", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM tasks WHERE done = 1", 1);
    assert_eq!(
        count(&d, "SELECT count(*) FROM renames"),
        0,
        "no title changed"
    );
    p.execute("UPDATE tasks SET title = 'b', done = 0 WHERE id = 1", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM tasks WHERE title = 'b'", 1);
    let on_device: String = d
        .query_row("SELECT group_concat(msg) FROM renames", [], |r| r.get(0))
        .unwrap();
    assert_eq!(on_device, "a -> b");
    assert_eq!(count(&p, "SELECT count(*) FROM renames"), 1);
}

/// A backend trigger (limited to primaries with `this_user() IS NULL`) that writes another
/// replicated table when a device's row arrives: its rows are logged with the device's
/// transaction, get ids in the primary's range, and reach the devices that may see them; a
/// rejected transaction leaves none.
/// A primary's trigger writing a table whose rows cannot be captured (a VIRTUAL generated
/// column) rejects the device's transaction with the reason, heard on the device; the device's
/// next transaction goes through, nothing stalls.
#[test]
fn a_device_transaction_whose_trigger_effects_cannot_be_captured_is_rejected_saying_why() {
    let c = Cluster::new();
    // (A primary refuses to make such a table; a file made before it became a node has one.)
    octodb::Connection::open(&c.path("p.db").display().to_string())
        .unwrap()
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
             CREATE TABLE w(id INTEGER PRIMARY KEY, g AS (v || '!') VIRTUAL, v TEXT, row_owner);",
        )
        .unwrap();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TRIGGER copy AFTER INSERT ON t WHEN this_user() IS NULL AND NEW.v = 'copied'
         BEGIN
           INSERT INTO w(v, row_owner) VALUES (NEW.v, '*');
         END;",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('copied')", []).unwrap();
    let status = d
        .wait_for(DEADLINE, |s| s.outbox_len == 0 && s.last_rejected.is_some())
        .unwrap();
    let reason = status.last_rejected.map(|r| r.reason).unwrap_or_default();
    assert!(reason.contains("STORED"), "{reason}");
    d.execute("INSERT INTO t(v) VALUES ('plain')", []).unwrap();
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'plain'", 1);
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'copied'"), 0);
    assert_eq!(count(&p, "SELECT count(*) FROM w"), 0);
}

/// A VIRTUAL generated column on a replicated table is refused on the primary, with its
/// transaction: it was accepted and replicated, after which every write to the table failed on
/// every node. STORED ones, and VIRTUAL ones on tables that do not replicate, are made.
#[test]
fn a_virtual_generated_column_on_a_replicated_table_is_refused_by_the_primary() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    for refused in [
        "ALTER TABLE t ADD COLUMN g AS (v || '!')",
        "CREATE TABLE w(id INTEGER PRIMARY KEY, v TEXT, g AS (v || '!') VIRTUAL, row_owner)",
    ] {
        let e = p.execute_batch(refused).expect_err(refused);
        assert!(e.to_string().contains("STORED"), "{refused}: {e}");
    }
    // Inside a transaction, the transaction goes with it.
    p.execute_batch("BEGIN; INSERT INTO t(v, row_owner) VALUES ('in it', '*')")
        .unwrap();
    p.execute_batch("ALTER TABLE t ADD COLUMN g AS (v || '!') VIRTUAL")
        .unwrap_err();
    assert!(p.is_autocommit(), "the transaction was rolled back");
    assert_eq!(count(&p, "SELECT count(*) FROM t"), 0);
    p.execute_batch(
        "CREATE TABLE s(id INTEGER PRIMARY KEY, v TEXT, g AS (v || '!') STORED, row_owner);
         CREATE TABLE local_only(id INTEGER PRIMARY KEY, v TEXT, g AS (v || '?'));
         INSERT INTO s(v, row_owner) VALUES ('stored', '*');
         INSERT INTO t(v, row_owner) VALUES ('after', '*');",
    )
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM s WHERE g = 'stored!'", 1);
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'after'", 1);
    assert_eq!(
        count(
            &d,
            "SELECT count(*) FROM pragma_table_xinfo('t') WHERE name = 'g'"
        ),
        0
    );
}

#[test]
fn rows_a_primarys_trigger_writes_for_a_devices_transaction_reach_the_devices() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         CREATE TABLE receipts(id INTEGER PRIMARY KEY, what TEXT, row_owner);
         CREATE TRIGGER receipt AFTER INSERT ON t WHEN this_user() IS NULL BEGIN
           INSERT INTO receipts(what, row_owner) VALUES ('got ' || NEW.v, NEW.row_owner);
           INSERT INTO receipts(what, row_owner) VALUES ('someone sent a row', '*');
         END;",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    let other = c.device("other.db", &p);
    ready(&d);
    ready(&other);
    d.execute("INSERT INTO t(id, v) VALUES (1, 'first')", [])
        .unwrap();
    wait_outbox_empty(&d);
    // A rejected transaction (id 1 is taken) must leave no receipt.
    other
        .execute("INSERT INTO t(id, v) VALUES (1, 'clash')", [])
        .unwrap();
    other
        .wait_for(DEADLINE, |s| s.outbox_len == 0 && s.last_rejected.is_some())
        .unwrap();
    let last = p.sync_status().unwrap().last_seq;
    for node in [&d, &other] {
        node.wait_for(DEADLINE, |s| s.last_seq >= last).unwrap();
    }
    let receipts = |node: &octodb::Connection| {
        text(
            node,
            "SELECT group_concat(what, ', ') FROM (SELECT what FROM receipts ORDER BY id)",
        )
    };
    assert_eq!(receipts(&p), "got first, someone sent a row");
    assert_eq!(receipts(&d), "got first, someone sent a row");
    assert_eq!(receipts(&other), "someone sent a row");
    let primary_node = p.sync_status().unwrap().node_id as i64;
    assert_eq!(
        count(
            &p,
            &format!("SELECT count(*) FROM receipts WHERE id >> 32 <> {primary_node}")
        ),
        0,
        "rows a trigger inserts on the primary get ids in its range"
    );
}

/// A statement that fails part-way inside a transaction: with ABORT (the default) its rows
/// are undone and never leave the node; with OR FAIL the rows it wrote before failing stay,
/// and replicate with the transaction.
#[test]
fn a_failed_statement_replicates_exactly_what_it_left_behind() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let run = |node: &octodb::Connection, base: i64, owner: &str| {
        node.execute_batch("BEGIN").unwrap();
        node.execute(
            &format!("INSERT INTO t(id, v, row_owner) VALUES ({base}, 'first', {owner})"),
            [],
        )
        .unwrap();
        let aborted = format!(
            "INSERT INTO t(id, v, row_owner) VALUES ({}, 'undone', {owner}), ({}, 'undone', {owner}), ({base}, 'duplicate', {owner})",
            base + 1,
            base + 2
        );
        assert!(node.execute(&aborted, []).is_err());
        let failed = format!(
            "INSERT OR FAIL INTO t(id, v, row_owner) VALUES ({}, 'kept', {owner}), ({}, 'kept', {owner}), ({base}, 'duplicate', {owner})",
            base + 3,
            base + 4
        );
        assert!(node.execute(&failed, []).is_err());
        node.execute_batch("COMMIT").unwrap();
    };
    run(&d, 100, "this_user()");
    wait_outbox_empty(&d);
    run(&p, 200, "'*'");
    wait_count(&d, "SELECT count(*) FROM t WHERE id >= 200", 3);
    // A marker behind them: once it is everywhere, nothing else is on its way.
    p.execute(
        "INSERT INTO t(id, v, row_owner) VALUES (999, 'marker', '*')",
        [],
    )
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE id = 999", 1);
    for node in [&p, &d] {
        assert_eq!(
            text(
                node,
                "SELECT group_concat(id || '=' || v, ' ') FROM (SELECT * FROM t ORDER BY id)"
            ),
            "100=first 103=kept 104=kept 200=first 203=kept 204=kept 999=marker"
        );
    }
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
}

/// An app committing without pause must not shut its node's engine out of the file: rows from
/// the primaries still arrive, and its own transactions are still accepted, while it writes.
/// (SQLite alone lets the app win nearly every race for the write lock; this stalled for good.)
#[test]
fn a_device_whose_app_writes_without_pause_still_receives_and_settles() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let mut events = d.subscribe();
    let app = FlatOutWriter::start(device_uri(&c.path("d.db"), &addr_of(&p)), "app");
    wait_until("the app has committed a first transaction", || {
        (count(&d, "SELECT count(*) FROM t WHERE v = 'app'") > 0).then_some(())
    });
    p.execute(
        "INSERT INTO t(v, row_owner) VALUES ('from the primary', '*')",
        [],
    )
    .expect("primary insert");
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'from the primary'", 1);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match events.try_recv() {
            Ok(octodb::Event::TransactionAccepted { .. }) => break,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no transaction of the app was accepted while it wrote"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    assert!(
        app.is_writing(),
        "the app stopped writing before the checks"
    );
    let txns = app.stop();
    wait_outbox_empty(&d);
    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v = 'app'"),
        txns as i64 * 100
    );
}

/// A node's commits stay durable: lowering `synchronous` is refused on primaries and devices
/// (a commit lost at a power loss after it was sent would make the node reuse its ids).
#[test]
fn replicated_nodes_refuse_to_lower_synchronous() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    for node in [&p, &d] {
        for sql in ["PRAGMA synchronous=NORMAL", "PRAGMA main.synchronous = OFF"] {
            let err = node.execute_batch(sql).expect_err(sql).to_string();
            assert!(err.contains("keeps synchronous=FULL"), "{sql}: {err}");
        }
        node.execute_batch("PRAGMA synchronous=EXTRA")
            .expect("raising it is fine");
        assert_eq!(count(node, "PRAGMA synchronous"), 3);
    }
}

/// The same on a primary: a backend app committing without pause does not keep the devices'
/// transactions from being accepted.
#[test]
fn a_primary_whose_app_writes_without_pause_still_accepts_devices() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let backend = FlatOutWriter::start(primary_uri(&c.path("p.db"), 0), "backend");
    wait_until("the backend has committed a first transaction", || {
        (count(&p, "SELECT count(*) FROM t WHERE v = 'backend'") > 0).then_some(())
    });
    for i in 0..20 {
        d.execute("INSERT INTO t(v) VALUES (?1)", [format!("device {i}")])
            .expect("device insert");
    }
    wait_outbox_empty(&d);
    assert!(
        backend.is_writing(),
        "the backend stopped writing before the check"
    );
    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v LIKE 'device %'"),
        20
    );
    backend.stop();
}

/// An app's deferred `BEGIN` whose first statement writes waits for the engine's turn like
/// any write. (octodb's own schema check used to start a read snapshot in it, and SQLite
/// then fails the write at once with "database is locked" while the engine writes.)
#[test]
fn a_deferred_transaction_that_writes_waits_for_the_engine_instead_of_failing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    // The device's engine keeps writing: the backend sends it rows without pause.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let backend_uri = primary_uri(&c.path("p.db"), 0);
    let backend = std::thread::spawn(move || {
        let mut conn = octodb::Connection::open(&backend_uri).expect("backend connection");
        while !stopped.load(Ordering::Relaxed) {
            let tx = conn.transaction().expect("begin");
            for _ in 0..10 {
                tx.execute("INSERT INTO t(v, row_owner) VALUES ('backend', '*')", [])
                    .expect("backend insert");
            }
            tx.commit().expect("backend commit");
        }
    });
    wait_until("rows from the backend reach the device", || {
        (count(&d, "SELECT count(*) FROM t WHERE v = 'backend'") > 0).then_some(())
    });
    for i in 0..300 {
        d.execute_batch(&format!(
            "BEGIN; INSERT INTO t(v) VALUES ('deferred {i}'); COMMIT;"
        ))
        .unwrap_or_else(|e| panic!("transaction {i}: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    backend.join().expect("backend thread");
    wait_outbox_empty(&d);
    assert_eq!(
        count(&p, "SELECT count(*) FROM t WHERE v LIKE 'deferred %'"),
        300
    );
}

/// An app thread committing transactions of 100 rows (`v` = its label) back to back on the
/// node of `uri`, until stopped.
struct FlatOutWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl FlatOutWriter {
    fn start(uri: String, label: &'static str) -> FlatOutWriter {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conn = octodb::Connection::open(&uri).expect("app connection");
            let mut txns = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                let tx = conn.transaction().expect("begin");
                for _ in 0..100 {
                    tx.execute("INSERT INTO t(v) VALUES (?1)", [label])
                        .expect("insert");
                }
                tx.commit().expect("commit");
                txns += 1;
            }
            txns
        });
        FlatOutWriter { stop, thread }
    }

    fn is_writing(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Stops it; the transactions it committed.
    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("app thread")
    }
}

/// An id the app gives inside the node's own range is never handed out again: a later row
/// whose id must move (SQLite picked it above another range) gets a free one.
#[test]
fn an_id_the_app_gives_in_the_nodes_range_is_not_handed_out_again() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('auto')", []).unwrap();
    let auto_id = d.last_insert_rowid();
    // The next id of this device's range, taken by the app; and a local row far above every
    // range, so that SQLite's next pick lies outside this device's range and must move.
    d.execute_batch(&format!(
        "INSERT INTO t(id, v) VALUES ({}, 'given');
         INSERT INTO t(id, v, row_owner) VALUES ({}, 'far', NULL);",
        auto_id + 1,
        1i64 << 62
    ))
    .unwrap();
    d.execute("INSERT INTO t(v) VALUES ('moved')", []).unwrap();
    let moved = d.last_insert_rowid();
    assert_eq!(moved >> 32, auto_id >> 32, "moved into the device's range");
    assert!(moved > auto_id + 1, "{moved:#x} above the given id");
    wait_outbox_empty(&d);
    wait_count(&p, "SELECT count(*) FROM t", 3);
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
}

#[test]
fn ids_sqlite_picks_move_into_the_nodes_range_and_ids_the_app_gives_are_kept() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    let node = i64::from(ready(&d).node_id);
    // On an empty table SQLite picks id 1 for 'auto', which is no node's range: it moves into
    // this device's range; 'given' then takes id 1 itself, in the same statement.
    d.execute(
        "INSERT INTO t(id, v) VALUES (NULL, 'auto'), (1, 'given')",
        [],
    )
    .unwrap();
    assert_eq!(d.last_insert_rowid(), 1, "the last row inserted is 'given'");
    let auto_id = count(&d, "SELECT id FROM t WHERE v = 'auto'");
    assert_eq!(
        auto_id >> 32,
        node,
        "auto id {auto_id:#x} in node {node}'s range"
    );
    assert_eq!(count(&d, "SELECT id FROM t WHERE v = 'given'"), 1);
    d.execute("INSERT INTO t(v) VALUES ('next')", []).unwrap();
    let next_id = d.last_insert_rowid();
    assert_eq!(
        count(
            &d,
            &format!("SELECT count(*) FROM t WHERE id = {next_id} AND v = 'next'")
        ),
        1
    );
    assert_eq!(next_id >> 32, node);
    wait_count(&p, "SELECT count(*) FROM t", 3);
    for (v, id) in [("auto", auto_id), ("given", 1), ("next", next_id)] {
        assert_eq!(
            count(&p, &format!("SELECT id FROM t WHERE v = '{v}'")),
            id,
            "{v} at the primary"
        );
    }
}

/// A node's file holds its secret key: the file, its WAL and its shared memory are readable by
/// their owner only, whatever the umask (SQLite alone creates them 0644).
#[test]
fn a_new_nodes_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('x')", []).unwrap();
    for name in [
        "p.db", "p.db-wal", "p.db-shm", "d.db", "d.db-wal", "d.db-shm",
    ] {
        let mode = std::fs::metadata(c.path(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name}: mode {mode:o}");
    }
}

/// `last_insert_rowid()` and `changes()` follow SQLite's rules on nodes too. After a rollback
/// SQLite picks the rolled-back row's id again: the id of the row inserted next was taken for
/// "nothing inserted" and the stale id reported (an update by it changed nothing). A query
/// leaves `changes()` as it was.
#[test]
fn last_insert_rowid_and_changes_follow_sqlite_after_a_rollback_and_a_query() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute("CREATE TABLE plain(id INTEGER PRIMARY KEY, v TEXT)", [])
        .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    for (conn, table) in [(&p, "t"), (&d, "t"), (&p, "plain")] {
        conn.execute_batch(&format!(
            "BEGIN; INSERT INTO {table}(v) VALUES ('gone'); ROLLBACK;"
        ))
        .unwrap();
        conn.execute(&format!("INSERT INTO {table}(v) VALUES ('kept')"), [])
            .unwrap();
        let stored = count(conn, &format!("SELECT id FROM {table} WHERE v = 'kept'"));
        assert_eq!(conn.last_insert_rowid(), stored, "{table}");
        assert_eq!(count(conn, "SELECT last_insert_rowid()"), stored, "{table}");
    }
    p.execute("UPDATE t SET v = v", []).unwrap();
    let updated = p.changes();
    assert!(updated >= 1);
    count(&p, "SELECT count(*) FROM t");
    assert_eq!(p.changes(), updated, "a query leaves changes()");
    assert_eq!(count(&p, "SELECT changes()"), updated as i64);
}

/// A `row_owner` that is no user id, `'*'` or NULL (a float, a name, a blob) stays on the
/// primaries whatever the path: the first download sent a float 1.0 to user 1's devices
/// (SQLite's `=` matched it) while streaming did not, and a later change of the row never
/// reached them. A column declared REAL, which would make every owner a float, is refused.
#[test]
fn an_owner_that_is_no_user_id_stays_on_the_primaries_on_every_path() {
    let c = Cluster::new();
    let p = c.auth_primary("p.db", "user");
    approve_by_data(&p);
    p.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    let phone = c.device("phone.db", &p);
    phone.execute("PRAGMA user_signup='ann'", []).unwrap();
    let user = ready(&phone).user_id.unwrap();
    p.execute(
        &format!("INSERT INTO t(v, row_owner) VALUES ('float', {user}.0), ('mine', {user})"),
        [],
    )
    .unwrap();
    wait_count(&phone, "SELECT count(*) FROM t WHERE v = 'mine'", 1);
    let laptop = c.device("laptop.db", &p);
    laptop
        .execute(&format!("PRAGMA user_login='user:{user}'"), [])
        .unwrap();
    assert_eq!(ready(&laptop).user_id, Some(user));
    assert_eq!(count(&laptop, "SELECT count(*) FROM t WHERE v = 'mine'"), 1);
    for device in [&phone, &laptop] {
        assert_eq!(count(device, "SELECT count(*) FROM t WHERE v = 'float'"), 0);
    }
    let err = p
        .execute("CREATE TABLE f(id INTEGER PRIMARY KEY, row_owner REAL)", [])
        .unwrap_err();
    assert!(err.to_string().contains("floating-point"), "{err}");
    assert_eq!(
        count(&p, "SELECT count(*) FROM sqlite_master WHERE name = 'f'"),
        0
    );
}

/// `INSERT ... RETURNING` gives the ids the rows end with. SQLite computes RETURNING before
/// the engine moves a row it numbered into the node's range: the id it first chose is another
/// node's next id, and an app updating by it changed another user's row.
#[test]
fn insert_returning_gives_the_ids_the_rows_end_with() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    let returned = |conn: &octodb::Connection, sql: &str| -> Vec<(i64, String)> {
        let rows = conn.query(sql, []).unwrap();
        rows.iter()
            .map(|r| (r.get(0).unwrap(), r.get(1).unwrap()))
            .collect()
    };
    let check = |conn: &octodb::Connection, rows: &[(i64, String)]| {
        let node = i64::from(conn.sync_status().unwrap().node_id);
        for (id, v) in rows {
            assert_eq!(
                *id,
                count(conn, &format!("SELECT id FROM t WHERE v = '{v}'")),
                "the id returned for {v} is the row's"
            );
            assert_eq!(id >> 32, node, "{v}'s id {id:#x} in node {node}'s range");
        }
    };
    // On an empty table SQLite picks ids 1 and 2, which are no node's.
    let rows = returned(&d, "INSERT INTO t(v) VALUES ('d1'), ('d2') RETURNING id, v");
    check(&d, &rows);
    wait_count(&p, "SELECT count(*) FROM t", 2);
    // On the primary SQLite picks the device's next id, for both rows in turn.
    let rows = returned(&p, "INSERT INTO t(v) VALUES ('p1'), ('p2') RETURNING id, v");
    check(&p, &rows);
    assert_ne!(rows[0].0, rows[1].0);
    // Whatever the rowid is called, and with the app's own ids in the same statement.
    let rows = returned(
        &p,
        "INSERT INTO t(id, v) VALUES (NULL, 'p3'), (7, 'given') RETURNING _rowid_, v",
    );
    assert_eq!(rows[1], (7, "given".to_string()));
    check(&p, &rows[..1]);
    assert_eq!(p.last_insert_rowid(), 7);
}

#[test]
fn each_device_gets_its_users_rows_and_hears_its_position_past_the_others() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d1 = c.device("d1.db", &p);
    let d2 = c.device("d2.db", &p);
    let user2 = ready(&d2).user_id.expect("a device has a user");
    ready(&d1);
    d1.execute("INSERT INTO t(v) VALUES ('d1 only')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'd1 only'", 1);
    // d2 sees none of it, yet learns that the log moved past it.
    let p_seq = p.sync_status().unwrap().last_seq;
    d2.wait_for(DEADLINE, |s| s.last_seq >= p_seq).unwrap();
    assert_eq!(count(&d2, "SELECT count(*) FROM t WHERE v = 'd1 only'"), 0);
    // A row the backend writes for d2's user reaches d2, not d1; a '*' row reaches both.
    p.execute("INSERT INTO t(v, row_owner) VALUES ('for d2', ?1)", [user2])
        .unwrap();
    p.execute("INSERT INTO t(v, row_owner) VALUES ('for all', '*')", [])
        .unwrap();
    wait_count(
        &d2,
        "SELECT count(*) FROM t WHERE v IN ('for d2', 'for all')",
        2,
    );
    wait_count(&d1, "SELECT count(*) FROM t WHERE v = 'for all'", 1);
    assert_eq!(count(&d1, "SELECT count(*) FROM t WHERE v = 'for d2'"), 0);
}

/// `INSERT OR REPLACE` (and `REPLACE INTO`) deletes the rows a new row conflicts with; those
/// deletes replicate like any other, on a device and on a primary. (SQLite fires no delete
/// trigger for them unless recursive triggers are on: the capture missed them, the primary
/// rejected the device's "insert" of an existing key, and the device lost both rows.) A device
/// still cannot replace a row it may not change.
#[test]
fn rows_replaced_by_insert_or_replace_are_replaced_everywhere() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT, row_owner);
         INSERT INTO t(id, k, v, row_owner) VALUES (100, 'public', 'everyone''s', '*');",
    )
    .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute_batch(
        "INSERT INTO t(id, k, v) VALUES (1, 'a', 'one');
         INSERT INTO t(id, k, v) VALUES (2, 'b', 'two');",
    )
    .unwrap();
    wait_outbox_empty(&d);
    // The same key again, then another key's unique value: row 2 goes.
    d.execute(
        "INSERT OR REPLACE INTO t(id, k, v) VALUES (1, 'a', 'one again')",
        [],
    )
    .unwrap();
    d.execute(
        "REPLACE INTO t(id, k, v) VALUES (3, 'b', 'b, now row 3')",
        [],
    )
    .unwrap();
    let err = d
        .execute(
            "INSERT OR REPLACE INTO t(id, k, v) VALUES (4, 'public', 'mine')",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    wait_outbox_empty(&d);
    // And on the primary: its replace of row 1 by a '*' row reaches the device.
    p.execute(
        "INSERT OR REPLACE INTO t(id, k, v, row_owner) VALUES (10, 'a', 'the backend''s a', '*')",
        [],
    )
    .unwrap();
    let last = p.sync_status().unwrap().last_seq;
    d.wait_for(DEADLINE, |s| s.last_seq >= last).unwrap();
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
    for node in [&p, &d] {
        assert_eq!(
            text(
                node,
                "SELECT group_concat(id || ':' || v, ', ') FROM (SELECT * FROM t ORDER BY id)"
            ),
            "3:b, now row 3, 10:the backend's a, 100:everyone's"
        );
    }
    // The same id replaced by a row of another owner (here the backend's own): the device,
    // which may not see the new row, hears that the old one is gone.
    p.execute(
        "INSERT OR REPLACE INTO t(id, k, v, row_owner) VALUES (3, 'b', 'the backend''s', NULL)",
        [],
    )
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE id = 3", 0);
    assert_eq!(
        count(
            &p,
            "SELECT count(*) FROM t WHERE id = 3 AND row_owner IS NULL"
        ),
        1
    );
}

/// The app's own `PRAGMA recursive_triggers = ON` stays on across an `INSERT OR REPLACE`,
/// which the engine runs with recursive triggers on (triggers walkthrough: the engine turned
/// them off after it, and an app's recursive delete of a subtree then stopped at the first
/// level, a partial delete that replicated).
#[test]
fn an_apps_recursive_triggers_stay_on_after_a_replace() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    let d = c.device("d.db", &p);
    p.execute_batch(
        "CREATE TABLE tree(id INTEGER PRIMARY KEY, parent INTEGER, row_owner);
         CREATE TRIGGER tree_subtree AFTER DELETE ON tree
           BEGIN DELETE FROM tree WHERE parent = OLD.id; END;
         CREATE TABLE kv(k TEXT PRIMARY KEY, v, row_owner);",
    )
    .unwrap();
    p.execute_batch("PRAGMA recursive_triggers = ON").unwrap();
    p.execute_batch(
        "INSERT INTO tree(id, parent, row_owner) VALUES (1, NULL, '*'), (2, 1, '*'),
             (3, 2, '*'), (4, 3, '*');
         INSERT OR REPLACE INTO kv(k, v, row_owner) VALUES ('a', 1, '*');
         INSERT INTO kv(k, v, row_owner) VALUES ('b', 2, '*');",
    )
    .unwrap();
    let on: i64 = p
        .query_row("PRAGMA recursive_triggers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(on, 1, "the app's setting is kept");
    p.execute("DELETE FROM tree WHERE id = 1", []).unwrap();
    assert_eq!(
        count(&p, "SELECT count(*) FROM tree"),
        0,
        "the whole subtree"
    );
    // (The subtree's rows came before the kv rows; its delete after them.)
    wait_count(&d, "SELECT count(*) FROM kv", 2);
    wait_count(&d, "SELECT count(*) FROM tree", 0);
    // Turned off by the app, it stays off after a REPLACE too.
    p.execute_batch(
        "PRAGMA recursive_triggers = OFF;
         INSERT OR REPLACE INTO kv(k, v, row_owner) VALUES ('a', 3, '*');",
    )
    .unwrap();
    let on: i64 = p
        .query_row("PRAGMA recursive_triggers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(on, 0);
}

/// A replicated table needs a rowid: a primary's CREATE of a WITHOUT ROWID table with a
/// row_owner column is refused with what to change (it was accepted, and its rows silently
/// never went anywhere); one without row_owner stays a table of the primary's own.
#[test]
fn a_without_rowid_table_with_row_owner_is_refused() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    let err = p
        .execute(
            "CREATE TABLE tags(name TEXT PRIMARY KEY, color TEXT, row_owner) WITHOUT ROWID",
            [],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("WITHOUT ROWID"), "{err}");
    assert_eq!(
        count(&p, "SELECT count(*) FROM sqlite_schema WHERE name = 'tags'"),
        0,
        "rolled back"
    );
    p.execute(
        "CREATE TABLE lookup(name TEXT PRIMARY KEY, color TEXT) WITHOUT ROWID",
        [],
    )
    .unwrap();
}

/// An app's migrations shared by its backend and its devices run on a device too when they
/// change nothing there: `CREATE TABLE/VIEW IF NOT EXISTS` of what the primaries made (SQLite
/// asks about these before it looks whether the name exists, and they were refused), and
/// `ANALYZE` / `PRAGMA optimize` (their statistics tables were refused as schema). A device's
/// own new table stays refused (the schema walkthrough).
#[test]
fn a_device_runs_schema_statements_that_change_nothing_shared() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    p.execute_batch("CREATE VIEW named AS SELECT v FROM t")
        .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    wait_count(
        &d,
        "SELECT count(*) FROM sqlite_schema WHERE name IN ('t', 'named')",
        2,
    );
    d.execute_batch(
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
         CREATE TABLE IF NOT EXISTS main.\"T\"(x);
         CREATE VIEW IF NOT EXISTS named AS SELECT 1;
         INSERT INTO t(v) VALUES ('a');
         ANALYZE;
         PRAGMA optimize;",
    )
    .unwrap();
    assert_eq!(
        count(&d, "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 't'"),
        1
    );
    let err = d
        .execute_batch("CREATE TABLE t(x)")
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    for sql in [
        "CREATE TABLE IF NOT EXISTS mine(x)",
        "CREATE VIEW IF NOT EXISTS other AS SELECT 1",
    ] {
        let err = d.execute_batch(sql).unwrap_err().to_string();
        assert!(err.contains("comes from the primaries"), "{sql}: {err}");
    }
    // The row went as usual.
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'a'", 1);
}

/// A device's local rows (row_owner NULL) in a table the primaries rebuild (a migration of
/// Django or Alembic: a new table, the rows copied, the old one dropped, the new one renamed)
/// go into the new table by column name; rows that do not fit it stop the sync, saying so,
/// until the app moves them; a table dropped for good takes them with it. (They disappeared
/// at every rebuild, with nothing said: the ORM walkthrough.)
#[test]
fn a_devices_local_rows_survive_a_table_rebuild_of_the_primaries() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    d.execute_batch(
        "INSERT INTO t(v) VALUES ('user row');
         INSERT INTO t(v, row_owner) VALUES ('local row', NULL);",
    )
    .unwrap();
    wait_count(&p, "SELECT count(*) FROM t", 1);
    let rebuild = |extra: &str| {
        format!(
            "BEGIN;
             CREATE TABLE new__t(id INTEGER PRIMARY KEY, v TEXT, row_owner, {extra});
             INSERT INTO new__t(id, v, row_owner) SELECT id, v, row_owner FROM t;
             DROP TABLE t;
             ALTER TABLE new__t RENAME TO t;
             COMMIT;"
        )
    };
    p.execute_batch(&rebuild("extra INTEGER NOT NULL DEFAULT 7"))
        .unwrap();
    wait_count(
        &d,
        "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'extra'",
        1,
    );
    let rows = "SELECT group_concat(v || ':' || extra || ':' || ifnull(row_owner, 'local'), '|') \
                FROM (SELECT * FROM t ORDER BY id)";
    assert_eq!(text(&d, rows), "user row:7:1|local row:7:local");

    // A new NOT NULL column without a default: the local row does not fit; the sync stops
    // naming the table, and goes on once the app moved its row away.
    p.execute_batch(
        "BEGIN;
         CREATE TABLE new__t(id INTEGER PRIMARY KEY, v TEXT, row_owner, strict_col TEXT NOT NULL);
         INSERT INTO new__t(id, v, row_owner, strict_col) SELECT id, v, row_owner, 'x' FROM t;
         DROP TABLE t;
         ALTER TABLE new__t RENAME TO t;
         COMMIT;",
    )
    .unwrap();
    let s = d
        .wait_for(DEADLINE, |s| s.sync_error.is_some())
        .expect("the sync stops");
    let error = s.sync_error.unwrap_or_default();
    assert!(
        error.contains("local rows") && error.contains("`t`"),
        "{error}"
    );
    assert_eq!(
        count(&d, "SELECT count(*) FROM t WHERE row_owner IS NULL"),
        1
    );
    d.execute_batch(
        "CREATE TEMP TABLE mine AS SELECT v FROM t WHERE row_owner IS NULL;
         DELETE FROM t WHERE row_owner IS NULL;",
    )
    .unwrap();
    wait_count(
        &d,
        "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'strict_col'",
        1,
    );
    assert_eq!(text(&d, "SELECT group_concat(v) FROM t"), "user row");

    // Dropped for good: the local rows go with the table, as a DROP takes them anywhere.
    d.execute(
        "INSERT INTO t(v, row_owner, strict_col) VALUES ('local again', NULL, 'y')",
        [],
    )
    .unwrap();
    p.execute_batch("DROP TABLE t").unwrap();
    wait_count(&d, "SELECT count(*) FROM sqlite_schema WHERE name = 't'", 0);
    assert_eq!(d.sync_status().unwrap().sync_error, None);
}

/// A replicated table may not resolve UNIQUE conflicts with ON CONFLICT REPLACE in its
/// definition: a device's insert then deleted a '*' row locally, looked accepted, and its
/// transaction was rejected later (the SQLite-features walkthrough). NOT NULL ON CONFLICT
/// REPLACE (a default for a NULL) and the statement forms stay.
#[test]
fn a_replicated_table_may_not_replace_on_conflict_in_its_definition() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    for sql in [
        "CREATE TABLE ocr(id INTEGER PRIMARY KEY, code TEXT UNIQUE ON CONFLICT REPLACE, row_owner)",
        "CREATE TABLE ocr(id INTEGER PRIMARY KEY, code TEXT, row_owner, UNIQUE(code) ON CONFLICT REPLACE)",
    ] {
        let err = p.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("ON CONFLICT REPLACE"), "{err}");
        assert!(err.contains("remove the clause"), "{err}");
        assert_eq!(
            count(&p, "SELECT count(*) FROM sqlite_schema WHERE name = 'ocr'"),
            0,
            "rolled back"
        );
    }
    // Made replicated later, by a row_owner column added to it.
    p.execute_batch(
        "CREATE TABLE own(id INTEGER PRIMARY KEY, code TEXT UNIQUE ON CONFLICT REPLACE)",
    )
    .unwrap();
    let err = p
        .execute_batch("ALTER TABLE own ADD COLUMN row_owner")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ON CONFLICT REPLACE"), "{err}");
    p.execute_batch(
        "CREATE TABLE fine(id INTEGER PRIMARY KEY, v TEXT NOT NULL ON CONFLICT REPLACE DEFAULT '', \
         code TEXT UNIQUE, row_owner);
         INSERT OR REPLACE INTO fine(code, v, row_owner) VALUES ('a', NULL, '*');",
    )
    .unwrap();
    assert_eq!(count(&p, "SELECT count(*) FROM fine WHERE v = ''"), 1);
}

/// A node opened and closed often (a connection per request) goes on numbering its rows where
/// it stopped: each run skipped the rest of a block of 4,096 reserved ids, and a node has 2^32.
#[test]
fn a_node_closed_cleanly_goes_on_numbering_where_it_stopped() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d_uri = device_uri(&c.path("d.db"), &addr_of(&p));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = octodb::Connection::open(&d_uri).unwrap();
        ready(&d);
        d.execute("INSERT INTO t(v) VALUES ('x')", []).unwrap();
        ids.push(d.last_insert_rowid());
        wait_outbox_empty(&d);
        drop(d);
        wait_closed(&c, "d.db");
    }
    assert_eq!(ids, vec![ids[0], ids[0] + 1, ids[0] + 2], "{ids:x?}");
    wait_count(&p, "SELECT count(*) FROM t", 3);
}

/// A virtual table made on a primary (FTS5, R*Tree) reaches the devices connected then and
/// the new ones; each node fills its own (it has no row_owner). A new device never became
/// ready (the download replayed the FTS table's own shadow tables), and a connected one
/// never got the table (SQL walkthrough).
#[test]
fn virtual_tables_reach_connected_and_new_devices() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    d.wait_until_synced(DEADLINE).unwrap();
    p.execute_batch(
        "CREATE VIRTUAL TABLE search USING fts5(body);
         CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1);",
    )
    .unwrap();
    let has_tables = "SELECT count(*) FROM sqlite_schema WHERE name IN ('search', 'boxes')";
    wait_count(&d, has_tables, 2);
    let newcomer = c.device("new.db", &p);
    newcomer.wait_until_synced(DEADLINE).unwrap();
    assert_eq!(count(&newcomer, has_tables), 2);
    newcomer
        .execute("INSERT INTO search(body) VALUES ('local words')", [])
        .unwrap();
    assert_eq!(
        count(
            &newcomer,
            "SELECT count(*) FROM search WHERE search MATCH 'words'"
        ),
        1
    );
}
