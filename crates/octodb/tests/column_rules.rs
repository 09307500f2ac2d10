//! Columns only primaries write, and columns set once at insert (`Connection::set_column_rule`):
//! a device's transaction breaking them is rejected as a whole, with the rule in its reason,
//! and the primary's row is untouched.

mod common;

use common::*;
use octodb::store::column_rules::ColumnRule;

fn rejected_for(d: &octodb::Connection, words: &str) -> String {
    let status = d
        .wait_for(DEADLINE, |s| {
            s.outbox_len == 0
                && s.last_rejected
                    .as_ref()
                    .is_some_and(|r| r.reason.contains(words))
        })
        .expect("the primary rejects the device's transaction");
    status.last_rejected.map(|r| r.reason).unwrap_or_default()
}

#[test]
fn a_device_cannot_write_primary_only_or_set_once_columns() {
    let c = Cluster::new();
    let p = c.primary("p.db");
    p.execute(
        "CREATE TABLE jobs(id INTEGER PRIMARY KEY, spec TEXT, note TEXT, verdict TEXT, row_owner)",
        [],
    )
    .unwrap();
    p.set_column_rule("jobs", "verdict", ColumnRule::PrimaryOnly)
        .unwrap();
    p.set_column_rule("jobs", "spec", ColumnRule::SetAtInsert)
        .unwrap();
    let d = c.device("d.db", &p);
    ready(&d);
    wait_until("the table reaches the device", || {
        d.query("SELECT 1 FROM jobs", []).is_ok().then_some(())
    });

    // Allowed: an insert with the primary's column NULL, an update of a free column.
    d.execute("INSERT INTO jobs(id, spec) VALUES (1, 'a')", [])
        .unwrap();
    d.execute("UPDATE jobs SET note = 'n' WHERE id = 1", [])
        .unwrap();
    wait_outbox_empty(&d);
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
    wait_count(&p, "SELECT count(*) FROM jobs WHERE note = 'n'", 1);

    // The primary decides the verdict; the device's attempt is rejected.
    p.execute("UPDATE jobs SET verdict = 'ok' WHERE id = 1", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM jobs WHERE verdict = 'ok'", 1);
    d.execute("UPDATE jobs SET verdict = 'great' WHERE id = 1", [])
        .unwrap();
    let reason = rejected_for(&d, "`verdict`");
    assert!(reason.contains("written by the primaries only"), "{reason}");
    // Set once: the spec never changes.
    d.execute("UPDATE jobs SET spec = 'b' WHERE id = 1", [])
        .unwrap();
    let reason = rejected_for(&d, "`spec`");
    assert!(reason.contains("never changes"), "{reason}");
    // An insert naming the primary's column.
    d.execute(
        "INSERT INTO jobs(id, spec, verdict) VALUES (2, 'c', 'ok')",
        [],
    )
    .unwrap();
    rejected_for(&d, "inserts the row with it NULL");

    assert_eq!(
        text(&p, "SELECT spec || '/' || verdict FROM jobs WHERE id = 1"),
        "a/ok",
        "the primary's row is untouched"
    );
    assert_eq!(count(&p, "SELECT count(*) FROM jobs"), 1);
    wait_until("the device converges to the primary's row", || {
        let row = text(&d, "SELECT spec || '/' || verdict FROM jobs WHERE id = 1");
        (row == "a/ok" && count(&d, "SELECT count(*) FROM jobs") == 1).then_some(())
    });
    // Rules are declared on primaries.
    assert!(d
        .set_column_rule("jobs", "note", ColumnRule::PrimaryOnly)
        .is_err());
}
