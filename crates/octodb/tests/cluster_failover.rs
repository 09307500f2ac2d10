//! Devices follow their cluster's leader: a device hears of every primary of the cluster
//! from the one it trusts, and when the leader goes it finds the new one (even one its
//! `connect=` never named), sends it what it wrote meanwhile, and receives its writes.

mod common;

use common::*;
use octodb::Connection;

/// A cluster of three primaries with table `t`, the first (`p.db`) leading.
fn three_primaries(c: &Cluster) -> (Connection, Connection, Connection) {
    let p1 = c.primary_with_t();
    let first = addr_of(&p1);
    let p2 = joining_primary(&c.path("p2.db"), &first);
    let p3 = joining_primary(&c.path("p3.db"), &first);
    wait_voters(&p1, 3);
    (p1, p2, p3)
}

#[test]
fn a_device_fails_over_to_the_new_leader_when_its_primary_goes() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries(&c);

    // The device names only the first primary; it hears of the others from it.
    let d = c.device("d.db", &p1);
    ready(&d);
    d.wait_for(DEADLINE, |s| s.primaries.len() == 3)
        .expect("the device hears of the cluster's three primaries");
    d.execute("INSERT INTO t(v) VALUES ('before')", []).unwrap();
    wait_outbox_empty(&d);

    drop(p1);
    let (leader, follower) = wait_until("a new leader among the other two", || {
        match (cluster_role(&p2).as_str(), cluster_role(&p3).as_str()) {
            ("leader", _) => Some((&p2, &p3)),
            (_, "leader") => Some((&p3, &p2)),
            _ => None,
        }
    });

    // What the device writes now reaches the new leader, and its followers.
    d.execute("INSERT INTO t(v) VALUES ('after')", []).unwrap();
    wait_outbox_empty(&d);
    // (On the new leader, or on the follower, which serves devices too.)
    let status = d.sync_status().unwrap();
    let served_by = [leader, follower].map(|p| vec![format!("tcp://{}", addr_of(p))]);
    assert!(served_by.contains(&status.peers), "{status:?}");
    assert_eq!(status.last_rejected, None);
    wait_count(
        leader,
        "SELECT count(*) FROM t WHERE v IN ('before', 'after')",
        2,
    );
    wait_count(
        follower,
        "SELECT count(*) FROM t WHERE v IN ('before', 'after')",
        2,
    );

    // And what the new leader writes reaches the device.
    leader
        .execute(
            "INSERT INTO t(v, row_owner) VALUES ('from the new leader', '*')",
            [],
        )
        .unwrap();
    wait_count(
        &d,
        "SELECT count(*) FROM t WHERE v = 'from the new leader'",
        1,
    );
    assert_eq!(count(&d, "SELECT count(*) FROM t"), 3, "nothing doubled");
}

/// A follower's app writing right as its leader goes: while the follower still knows the
/// old leader, which no longer answers, its commit waits for the new one (through the
/// election) and goes there, rather than failing at once (the failover walkthrough: every
/// such write in the first second or two failed with "could not reach its cluster's
/// leader").
#[test]
fn a_followers_write_as_its_leader_goes_waits_for_the_new_leader() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries(&c);
    p2.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();

    drop(p1);
    // At once: no election has ended yet. The write waits for the new leader, unless p2 is
    // elected itself meanwhile: then it is to be run again, as an app retries SQLITE_BUSY.
    let insert = "INSERT INTO t(v, row_owner) VALUES ('as the leader goes', '*')";
    if let Err(e) = p2.execute(insert, []) {
        assert!(
            matches!(&e, octodb::Error::Unavailable(m) if m.contains("was elected")),
            "{e:?}"
        );
        assert_eq!(cluster_role(&p2), "leader");
        p2.execute(insert, []).expect("run again on the new leader");
    }
    for p in [&p2, &p3] {
        wait_count(
            p,
            "SELECT count(*) FROM t WHERE v = 'as the leader goes'",
            1,
        );
    }
}

#[test]
fn a_device_is_not_served_by_a_primary_outside_its_cluster() {
    let c = Cluster::new();
    let p = c.primary_with_t();
    let d = c.device("d.db", &p);
    ready(&d);
    d.wait_for(DEADLINE, |s| s.primaries.len() == 1)
        .expect("the device hears of its primary");
    drop(d);
    drop(p);
    // Another network's primary: the device, reopened towards it, sends it nothing.
    let other = c.primary("other.db");
    let d = Connection::open(&device_uri(&c.path("d.db"), &addr_of(&other)))
        .expect("reopen the device");
    let status = d
        .wait_for(DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("impostor"))
        })
        .expect("the device refuses the other primary's key");
    assert!(!status.connected);
}

/// With other primaries, an app's COMMIT on the leader returns once a majority holds the
/// transaction; when none can (the other primary of two is gone), it says so instead of
/// pretending, and the transaction reaches the other primary once it is back.
#[test]
fn a_commit_the_cluster_cannot_confirm_says_so() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let p2_uri = format!(
        "{}&connect=tcp://{}",
        primary_uri(&c.path("p2.db"), common::process::free_port()),
        addr_of(&p1)
    );
    let p2 = Connection::open(&p2_uri).expect("open the second primary");
    wait_voters(&p1, 2);
    p1.execute(
        "INSERT INTO t(v, row_owner) VALUES ('held by both', '*')",
        [],
    )
    .expect("a majority holds it");
    wait_count(&p2, "SELECT count(*) FROM t WHERE v = 'held by both'", 1);

    drop(p2);
    let err = p1
        .execute("INSERT INTO t(v, row_owner) VALUES ('alone', '*')", [])
        .expect_err("no majority can hold it");
    assert!(err.to_string().contains("did not confirm"), "{err}");

    let p2 = Connection::open(&p2_uri).expect("reopen the second primary");
    wait_count(&p2, "SELECT count(*) FROM t WHERE v = 'alone'", 1);
}

/// A leader stopped and started again comes back leading its old term (openraft restores it
/// so) until it hears that the others elected another: its app's first write, made at once,
/// waits for the cluster's leader and goes there, instead of failing with "no leader" or
/// writing an entry the cluster never keeps, after which this primary's Raft node stopped
/// (cluster walkthrough, with kill -9; a clean stop leaves the same stored vote).
#[test]
fn a_former_leaders_write_right_after_its_restart_goes_to_the_new_leader() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let first = addr_of(&p1);
    let port = port_of(&p1);
    let p2 = joining_primary(&c.path("p2.db"), &first);
    let p3 = joining_primary(&c.path("p3.db"), &first);
    wait_voters(&p1, 3);
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t", 1);

    drop(p1);
    wait_closed(&c, "p.db");
    wait_until("a new leader among the other two", || {
        [&p2, &p3]
            .iter()
            .any(|p| cluster_role(p) == "leader")
            .then_some(())
    });
    let p1 = Connection::open(&primary_uri(&c.path("p.db"), port)).unwrap();
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('at once', '*')", [])
        .expect("the write goes to the cluster's leader");
    for p in [&p1, &p2, &p3] {
        wait_count(p, "SELECT count(*) FROM t WHERE v = 'at once'", 1);
    }
    let status = p1.sync_status().unwrap();
    assert_eq!(status.sync_error, None, "its Raft node goes on");
    assert_eq!(cluster_role(&p1), "follower");
    // And it keeps serving its cluster: the leader's writes reach it.
    let leader = if cluster_role(&p2) == "leader" {
        &p2
    } else {
        &p3
    };
    leader
        .execute("INSERT INTO t(v, row_owner) VALUES ('later', '*')", [])
        .unwrap();
    wait_count(&p1, "SELECT count(*) FROM t WHERE v = 'later'", 1);
}

/// The renames a leader's schema statements made reach its followers with the statements: a
/// device's offline edit of a renamed column, sent after a fail-over to a new leader, lands
/// under the new name there too.
#[test]
fn a_new_leader_reads_offline_work_under_the_names_its_predecessor_gave() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries_and_an_offline_edit(&c, "edited offline");

    p1.execute("ALTER TABLE t RENAME COLUMN v TO label", [])
        .unwrap();
    for p in [&p2, &p3] {
        wait_count(
            p,
            "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'label'",
            1,
        );
    }
    drop(p1);
    let (leader, follower) = wait_until("a new leader among the other two", || {
        match (cluster_role(&p2).as_str(), cluster_role(&p3).as_str()) {
            ("leader", _) => Some((&p2, &p3)),
            (_, "leader") => Some((&p3, &p2)),
            _ => None,
        }
    });
    let d = c.device("d.db", leader);
    wait_outbox_empty(&d);
    assert_eq!(d.sync_status().unwrap().last_rejected, None);
    for node in [leader, follower, &d] {
        wait_count(
            node,
            "SELECT count(*) FROM t WHERE label = 'edited offline'",
            1,
        );
    }
}

/// A device's pending edit of a column the primaries renamed, on a row they changed since,
/// still shows on the device while it waits for their decision (a follower without a leader
/// serves it the log but decides nothing): its work is replayed under the new name. (It
/// showed the primaries' value until the decision came.)
#[test]
fn pending_work_on_a_renamed_column_shows_on_the_device_until_decided() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_primaries_and_an_offline_edit(&c, "from the device");

    p1.execute_batch(
        "ALTER TABLE t RENAME COLUMN v TO label;
         UPDATE t SET label = 'from the primaries';",
    )
    .unwrap();
    let last = p1.sync_status().unwrap().last_seq;
    p2.wait_for(DEADLINE, |s| s.last_seq == last).unwrap();
    drop(p1);
    drop(p3);

    let d = c.device("d.db", &p2);
    d.wait_for(DEADLINE, |s| s.last_seq == last).unwrap();
    assert_eq!(d.sync_status().unwrap().outbox_len, 1, "not decided yet");
    assert_eq!(text(&d, "SELECT label FROM t"), "from the device");
}

/// A cluster of three primaries (the first leads), and device `d.db`, synced with a row of
/// `t` through the first, then closed having set that row's `v` to `edit` offline.
fn three_primaries_and_an_offline_edit(
    c: &Cluster,
    edit: &str,
) -> (Connection, Connection, Connection) {
    let (p1, p2, p3) = three_primaries(c);
    let first = addr_of(&p1);
    let d = c.device("d.db", &p1);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('first')", []).unwrap();
    wait_outbox_empty(&d);
    drop(d);
    let nobody = keep_device_offline(c, "d.db", [first.as_str(), &addr_of(&p2), &addr_of(&p3)]);
    let d = Connection::open(&device_uri(&c.path("d.db"), &nobody)).unwrap();
    d.execute("UPDATE t SET v = ?1", [edit]).unwrap();
    assert_eq!(d.sync_status().unwrap().outbox_len, 1);
    drop(d);
    wait_closed(c, "d.db");
    (p1, p2, p3)
}

/// Device `name` (closed) kept offline when opened next: the cluster's primaries it was told
/// of (`addrs`; it would reach them) are kept at an address where nothing listens, which it
/// returns for its connect=.
fn keep_device_offline<'a>(
    c: &Cluster,
    name: &str,
    addrs: impl IntoIterator<Item = &'a str>,
) -> String {
    wait_closed(c, name);
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = nobody.local_addr().unwrap().to_string();
    let file = rusqlite::Connection::open(c.path(name)).unwrap();
    for addr in addrs {
        file.execute(
            "UPDATE _octo_meta SET value = replace(value, ?1, ?2) WHERE key = 'primary_members'",
            [addr, &nobody],
        )
        .unwrap();
    }
    nobody
}
