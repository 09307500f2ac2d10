//! A leader that wrote a transaction no other primary held, and stopped, comes back with a
//! file the cluster does not agree with. It must not serve that tail, nor stop the cluster:
//! its Raft node stops and says why, and opened again it rejoins as a new member whose
//! shared state is the cluster's.

mod common;

use common::*;
use octodb::Connection;

fn primary_at(path: &std::path::Path, port: u16, connect: Option<&str>) -> Connection {
    let uri = match connect {
        Some(addr) => format!("{}&connect=tcp://{addr}", primary_uri(path, port)),
        None => primary_uri(path, port),
    };
    Connection::open(&uri).expect("open a primary")
}

fn voters(p: &Connection) -> Vec<u64> {
    p.sync_status()
        .ok()
        .and_then(|s| s.cluster)
        .map(|c| {
            c.members
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.node_id)
                .collect()
        })
        .unwrap_or_default()
}

/// Three primaries on ports of their own (to be restarted on), all voters, with table t.
struct Three {
    ports: [u16; 3],
    paths: [std::path::PathBuf; 3],
    primaries: [Connection; 3],
}

fn three(c: &Cluster) -> Three {
    let ports = [
        common::process::free_port(),
        common::process::free_port(),
        common::process::free_port(),
    ];
    let paths = [c.path("p1.db"), c.path("p2.db"), c.path("p3.db")];
    let first = format!("127.0.0.1:{}", ports[0]);
    let p1 = primary_at(&paths[0], ports[0], None);
    p1.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )
    .unwrap();
    let p2 = primary_at(&paths[1], ports[1], Some(&first));
    let p3 = primary_at(&paths[2], ports[2], Some(&first));
    wait_voters(&p1, 3);
    Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    }
}

#[test]
fn a_leader_whose_file_diverged_rejoins_as_a_new_member() {
    let c = Cluster::new();
    let Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    } = three(&c);
    let old_id = p1.sync_status().unwrap().node_id;
    p1.execute(
        "INSERT INTO t(v, row_owner) VALUES ('held by all', '*')",
        [],
    )
    .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t", 1);

    // The leader alone: its commit is written in its file, and never confirmed.
    drop(p2);
    drop(p3);
    let err = p1
        .execute("INSERT INTO t(v, row_owner) VALUES ('only on p1', '*')", [])
        .expect_err("no majority");
    assert!(err.to_string().contains("did not confirm"), "{err}");
    drop(p1);

    // The two others lead on without it.
    let p2 = primary_at(&paths[1], ports[1], None);
    let p3 = primary_at(&paths[2], ports[2], None);
    let leader = wait_until("a leader among p2 and p3", || {
        match (cluster_role(&p2).as_str(), cluster_role(&p3).as_str()) {
            ("leader", _) => Some(&p2),
            (_, "leader") => Some(&p3),
            _ => None,
        }
    });
    leader
        .execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .expect("two of three confirm");

    // p1 comes back: the cluster's log contradicts its tail; it stops and says why.
    let p1 = primary_at(&paths[0], ports[0], None);
    let status = p1
        .wait_for(DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("opened again"))
        })
        .expect("the diverged primary says why it stopped");
    assert!(status.sync_error.unwrap().contains("rejoins"));
    assert_eq!(
        cluster_role(&p1),
        "stopped",
        "its role says it serves nothing"
    );
    // Its app's write is refused before anything is sent: the leader committed it, and this
    // primary then reported a failure (the failover walkthrough).
    let err = p1
        .execute(
            "INSERT INTO t(v, row_owner) VALUES ('on stopped p1', '*')",
            [],
        )
        .expect_err("a stopped Raft node takes no write");
    assert!(matches!(err, octodb::Error::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("Nothing of the transaction was sent"),
        "{err}"
    );
    assert_eq!(
        count(leader, "SELECT count(*) FROM t WHERE v = 'on stopped p1'"),
        0
    );
    assert_eq!(
        count(leader, "SELECT count(*) FROM t WHERE v = 'only on p1'"),
        0,
        "the cluster never took p1's unconfirmed tail"
    );

    // Opened again, it rejoins under a new id, with the cluster's rows and not its tail.
    drop(p1);
    let p1 = primary_at(&paths[0], ports[0], None);
    wait_until("p1 back among three voters, under a new id", || {
        let v = voters(leader);
        (v.len() == 3 && !v.contains(&u64::from(old_id))).then_some(())
    });
    // (Its membership change applied: a write meeting it is told to try again.)
    wait_voters(leader, 3);
    wait_count(&p1, "SELECT count(*) FROM t WHERE v = 'after'", 1);
    assert_eq!(
        count(&p1, "SELECT count(*) FROM t WHERE v = 'only on p1'"),
        0,
        "its tail is gone"
    );
    assert_ne!(p1.sync_status().unwrap().node_id, old_id);
    leader
        .execute("INSERT INTO t(v, row_owner) VALUES ('later', '*')", [])
        .unwrap();
    wait_count(&p1, "SELECT count(*) FROM t WHERE v = 'later'", 1);
}

/// p3 (of `three`, its id `old_id`) stops and its disk is lost: its files are deleted,
/// `restore` puts a copy in their place, and p3 opened again must rejoin as a new member (a
/// new node id) and hold the row `'after'`, written after the copy. Returns p3.
fn lose_p3_and_restore(
    c: &Cluster,
    p1: &Connection,
    p3: Connection,
    (path, port): (&std::path::Path, u16),
    restore: impl FnOnce(),
) -> Connection {
    let old_id = p3.sync_status().unwrap().node_id;
    drop(p3);
    wait_closed(c, "p3.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    restore();
    let p3 = primary_at(path, port, None);
    wait_until("p3 back among three voters, under a new id", || {
        let v = voters(p1);
        (v.len() == 3 && !v.contains(&u64::from(old_id))).then_some(())
    });
    // (Its membership change applied: a write meeting it is told to try again.)
    wait_voters(p1, 3);
    assert_ne!(p3.sync_status().unwrap().node_id, old_id);
    wait_count(&p3, "SELECT count(*) FROM t WHERE v = 'after'", 1);
    p3
}

/// `three` with p3 restored from a backup (`octodb backup`) taken after the row 'before' and
/// before the row 'after': p3 has rejoined as a new member and holds 'after'.
struct Restored {
    ports: [u16; 3],
    paths: [std::path::PathBuf; 3],
    p1: Connection,
    p2: Connection,
    p3: Connection,
}

fn p3_restored_from_backup(c: &Cluster) -> Restored {
    let Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    } = three(c);
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t", 1);

    // A backup of p3 while it runs, then more writes it acknowledges.
    let copy = c.path("p3-backup.db");
    let cfg = octodb::NodeConfig::parse(&primary_uri(&paths[2], ports[2])).unwrap();
    assert_eq!(
        octodb::backup(&cfg, &copy).expect("back up p3"),
        octodb::RestoreMark::Rejoins,
        "a member's backup is marked to rejoin"
    );
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t", 2);

    // p3's disk is lost; its backup is restored in its place.
    let p3 = lose_p3_and_restore(c, &p1, p3, (&paths[2], ports[2]), || {
        std::fs::rename(&copy, &paths[2]).unwrap()
    });
    Restored {
        ports,
        paths,
        p1,
        p2,
        p3,
    }
}

/// A follower's file replaced by a backup taken earlier (`octodb backup`): restored, it may
/// be older than what it acknowledged to the others, so it rejoins as a new member (a new
/// node id) and takes the cluster's current state, the rows written after the backup too.
#[test]
fn a_member_restored_from_an_old_backup_rejoins_as_a_new_member() {
    let c = Cluster::new();
    let Restored {
        paths, p1, p2, p3, ..
    } = p3_restored_from_backup(&c);
    let log = "SELECT seq, origin_node, origin_txn, body FROM _octo_log ORDER BY seq";
    wait_until("p3 holds the cluster's log", || {
        (file_rows(&paths[2], log) == file_rows(&paths[0], log)).then_some(())
    });
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('later', '*')", [])
        .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t WHERE v = 'later'", 1);
    // The leader's status holds no refusal of p3's old id, which no member has any more.
    wait_until("the leader's status clear of refusals", || {
        let s = p1.sync_status().ok()?;
        s.sync_error.is_none().then_some(())
    });
    drop(p2);
}

/// Every primary lost: a backup of one of them, restored with `octodb::restore_cluster`,
/// starts a new cluster of its own with the rows of the copy; a device that had more from the
/// lost cluster takes the new cluster's data and writes to it; a new primary joins the new
/// cluster and receives everything. Without the command the copy would wait for its old
/// members forever; the command refuses a device's file and a running node.
#[test]
fn every_primary_lost_a_restored_backup_starts_a_new_cluster() {
    let c = Cluster::new();
    let Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    } = three(&c);
    let d = Connection::open(&device_uri(
        &c.path("d.db"),
        &format!("127.0.0.1:{}", ports[0]),
    ))
    .unwrap();
    ready(&d);
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'before'", 1);
    // (A majority confirmed the commit: p2 may not hold it yet when p1 and p3 were that
    // majority. The copy is taken once it does.)
    wait_count(&p2, "SELECT count(*) FROM t WHERE v = 'before'", 1);

    let copy = c.path("p2-backup.db");
    let cfg = octodb::NodeConfig::parse(&primary_uri(&paths[1], ports[1])).unwrap();
    assert_eq!(
        octodb::backup(&cfg, &copy).unwrap(),
        octodb::RestoreMark::Rejoins,
        "a member's copy"
    );
    let copy_cfg = octodb::NodeConfig::parse(&format!("file:{}", copy.display())).unwrap();
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'after'", 1);

    // A running node's file is refused, and so is a device's.
    let running = octodb::restore_cluster(&cfg).unwrap_err().to_string();
    assert!(running.contains("already open"), "{running}");
    let p2_id = p2.sync_status().unwrap().node_id;

    // Every primary is lost with its disk; the device goes offline meanwhile.
    drop(d);
    wait_closed(&c, "d.db");
    let device_file =
        octodb::NodeConfig::parse(&format!("file:{}", c.path("d.db").display())).unwrap();
    let not_primary = octodb::restore_cluster(&device_file)
        .unwrap_err()
        .to_string();
    assert!(
        not_primary.contains("not the file of a primary"),
        "{not_primary}"
    );
    for (p, path) in [p1, p2, p3].into_iter().zip(&paths) {
        drop(p);
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        wait_closed(&c, &name);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    let restored = octodb::restore_cluster(&copy_cfg).expect("restore the cluster");
    assert_eq!(restored.node_id, p2_id);
    let mut others = vec![
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[2]),
    ];
    others.sort();
    let mut former = restored.former_members.clone();
    former.sort();
    assert_eq!(former, others, "the other members, named");
    // Put in place at the first primary's address, which the device knows. Opened with the
    // connect= it had as a member, it would join the old cluster instead: refused, with why.
    std::fs::rename(&copy, &paths[0]).unwrap();
    let joining = Connection::open(&format!(
        "{}&connect=tcp://127.0.0.1:{}",
        primary_uri(&paths[0], ports[0]),
        ports[2]
    ))
    .err()
    .expect("refused")
    .to_string();
    assert!(joining.contains("without connect="), "{joining}");
    wait_closed(&c, "p1.db");
    let p = primary_at(&paths[0], ports[0], None);
    wait_until("the copy leads a cluster of one", || {
        (voters(&p) == [u64::from(p2_id)] && cluster_role(&p) == "leader").then_some(())
    });
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'before'"), 1);
    assert_eq!(count(&p, "SELECT count(*) FROM t WHERE v = 'after'"), 0);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('new', '*')", [])
        .unwrap();

    // The device was ahead of the copy: it takes the new cluster's data.
    let d = Connection::open(&device_uri(
        &c.path("d.db"),
        &format!("127.0.0.1:{}", ports[0]),
    ))
    .unwrap();
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'new'", 1);
    wait_count(&d, "SELECT count(*) FROM t WHERE v = 'after'", 0);
    d.execute("INSERT INTO t(v) VALUES ('from the device')", [])
        .unwrap();
    wait_count(&p, "SELECT count(*) FROM t WHERE v = 'from the device'", 1);

    // A new primary joins the new cluster and gets everything.
    let joiner = joining_primary(&c.path("p4.db"), &format!("127.0.0.1:{}", ports[0]));
    wait_voters(&p, 2);
    wait_count(&joiner, "SELECT count(*) FROM t", 3);
    p.execute("INSERT INTO t(v, row_owner) VALUES ('later', '*')", [])
        .unwrap();
    wait_count(&joiner, "SELECT count(*) FROM t WHERE v = 'later'", 1);
}

/// With a row `'before'` written on p1 and held by p3, p3 stops, its files are copied to
/// `p3-snapshot.db` (as a file system snapshot would be) and it starts again. Returns p3.
fn snapshot_p3_while_stopped(
    c: &Cluster,
    p1: &Connection,
    p3: Connection,
    (path, port): (&std::path::Path, u16),
) -> Connection {
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('before', '*')", [])
        .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t", 1);
    drop(p3);
    wait_closed(c, "p3.db");
    copy_closed_db(c, "p3.db", "p3-snapshot.db");
    primary_at(path, port, None)
}

/// A member restored from a copy `octodb backup` did not make (here a copy of its files taken
/// while it was stopped, as a file system snapshot would be) carries no mark; `octodb::
/// mark_restored` marks it, and it rejoins as a new member with the cluster's current state.
#[test]
fn a_member_restored_from_a_file_copy_and_marked_rejoins_as_a_new_member() {
    let c = Cluster::new();
    let Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    } = three(&c);
    let p3 = snapshot_p3_while_stopped(&c, &p1, p3, (&paths[2], ports[2]));
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t", 2);

    // p3's disk is lost; the snapshot is put back and marked.
    let p3 = lose_p3_and_restore(&c, &p1, p3, (&paths[2], ports[2]), || {
        copy_closed_db(&c, "p3-snapshot.db", "p3.db");
        let cfg = octodb::NodeConfig::parse(&primary_uri(&paths[2], ports[2])).unwrap();
        assert_eq!(
            octodb::mark_restored(&cfg).unwrap(),
            octodb::RestoreMark::Rejoins,
            "a member's file is marked"
        );
    });
    drop((p2, p3));
}

/// A member restored from a copy nobody marked (a file system snapshot put back) comes back
/// under its old identity, with less of the log than it acknowledged. The cluster must not
/// stall or crash on it (openraft's leader sees the follower's log go back, and sends it
/// again what it lacks): the member catches up with everything, including what was written
/// while it was away. (What it had acknowledged and lost is why the README says to mark such
/// a copy: it could have counted toward a majority.)
#[test]
fn a_member_restored_from_an_unmarked_copy_catches_up() {
    let c = Cluster::new();
    let Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    } = three(&c);
    let p3 = snapshot_p3_while_stopped(&c, &p1, p3, (&paths[2], ports[2]));
    let old_id = p3.sync_status().unwrap().node_id;
    for _ in 0..20 {
        p1.execute(
            "INSERT INTO t(v, row_owner) VALUES ('acknowledged', '*')",
            [],
        )
        .unwrap();
    }
    wait_count(&p3, "SELECT count(*) FROM t", 21);

    // p3's files go back to the snapshot, unmarked.
    drop(p3);
    wait_closed(&c, "p3.db");
    copy_closed_db(&c, "p3-snapshot.db", "p3.db");
    let p3 = primary_at(&paths[2], ports[2], None);
    assert_eq!(p3.sync_status().unwrap().node_id, old_id);
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('later', '*')", [])
        .unwrap();
    wait_count(&p3, "SELECT count(*) FROM t", 22);
    let log = "SELECT seq, origin_node, origin_txn, body FROM _octo_log ORDER BY seq";
    wait_until("p3 holds the cluster's log", || {
        (file_rows(&paths[2], log) == file_rows(&paths[0], log)).then_some(())
    });
    assert_eq!(voters(&p1).len(), 3);
    drop(p2);
}

fn role(p: &Connection) -> Option<String> {
    p.sync_status().ok()?.cluster.map(|c| c.role)
}

/// A member restored from a backup rejoined under a new id, its Raft log replaced by the
/// snapshot it received. Once it leads, a primary that joins through it receives a snapshot
/// naming the members as they are, this leader among them; a snapshot naming the members of
/// its own join (without itself) would have the new primary refuse its leader for good, a
/// voter that never catches up.
#[test]
fn a_primary_joining_through_a_leader_that_rejoined_from_a_backup_catches_up() {
    let c = Cluster::new();
    let Restored {
        ports,
        paths,
        p1,
        p2,
        p3,
    } = p3_restored_from_backup(&c);

    // The restored member must lead: stop whichever other primary leads until it does (each
    // election among two is a coin toss; the stopped one comes back as a follower).
    let mut others = [Some(p1), Some(p2)];
    for _ in 0..20 {
        if role(&p3).as_deref() == Some("leader") {
            break;
        }
        let leading = wait_until("a leader", || {
            if role(&p3).as_deref() == Some("leader") {
                return Some(None);
            }
            others
                .iter()
                .position(|p| {
                    p.as_ref()
                        .is_some_and(|p| role(p).as_deref() == Some("leader"))
                })
                .map(Some)
        });
        let Some(i) = leading else { break };
        drop(others[i].take());
        let name = format!("p{}.db", i + 1);
        wait_closed(&c, &name);
        wait_until("another leader", || {
            [others[1 - i].as_ref(), Some(&p3)]
                .into_iter()
                .flatten()
                .any(|p| role(p).as_deref() == Some("leader"))
                .then_some(())
        });
        others[i] = Some(primary_at(&paths[i], ports[i], None));
        wait_voters(&p3, 3);
    }
    assert_eq!(role(&p3).as_deref(), Some("leader"));

    let p4 = primary_at(
        &c.path("p4.db"),
        0,
        Some(&format!("127.0.0.1:{}", ports[2])),
    );
    wait_voters(&p3, 4);
    p3.execute(
        "INSERT INTO t(v, row_owner) VALUES ('led by the restored', '*')",
        [],
    )
    .unwrap();
    wait_count(
        &p4,
        "SELECT count(*) FROM t WHERE v = 'led by the restored'",
        1,
    );
    assert_eq!(count(&p4, "SELECT count(*) FROM t"), 3);
    assert_eq!(role(&p4).as_deref(), Some("follower"));
}

/// A leader restarted while the other voters are away is restored as leader by Raft, but no
/// majority answers it: its status must not say it leads (an app, or the task workers, gate
/// leader-only work on the role), until a majority is back.
#[test]
fn a_leader_restarted_without_its_majority_does_not_report_leading() {
    let c = Cluster::new();
    let Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    } = three(&c);
    assert_eq!(cluster_role(&p1), "leader");
    drop(p2);
    drop(p3);
    wait_closed(&c, "p2.db");
    wait_closed(&c, "p3.db");
    drop(p1);
    wait_closed(&c, "p1.db");

    let p1 = primary_at(&paths[0], ports[0], None);
    let cluster = wait_until("the restarted leader's role", || {
        let cluster = p1.sync_status().ok()?.cluster?;
        assert_ne!(
            cluster.role, "leader",
            "no majority answered the restarted leader: {cluster:?}"
        );
        matches!(cluster.role.as_str(), "leader_unconfirmed" | "candidate").then_some(cluster)
    });
    assert_eq!(cluster.leader, None, "{cluster:?}");

    let first = format!("127.0.0.1:{}", ports[0]);
    let p2 = primary_at(&paths[1], ports[1], Some(&first));
    wait_until("a leader a majority answers", || {
        let roles = [cluster_role(&p1), cluster_role(&p2)];
        (roles.contains(&"leader".to_string()) && roles.contains(&"follower".to_string()))
            .then_some(())
    });
}

/// A follower restarted while the leader changed the schema runs its app's start-up
/// migration (`CREATE TABLE IF NOT EXISTS`) on the cluster's schema: its first write waits
/// until it has applied what the leader had committed, so the statement finds the table and
/// does nothing, where it made it again and failed at COMMIT ("the schema changed since it
/// began"), or recorded a second CREATE.
#[test]
fn a_restarted_followers_start_up_migration_sees_the_leaders_schema() {
    let c = Cluster::new();
    let Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    } = three(&c);
    drop(p2);
    wait_closed(&c, "p2.db");
    let migration = "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body, row_owner)";
    p1.execute(migration, []).expect("the leader's migration");
    let entries = "SELECT count(*) FROM _octo_log";
    let before = count(&p1, entries);

    let first = format!("127.0.0.1:{}", ports[0]);
    let p2 = primary_at(&paths[1], ports[1], Some(&first));
    p2.execute(migration, [])
        .expect("the restarted follower's migration");
    p2.execute(
        "INSERT INTO notes(body, row_owner) VALUES ('from p2', '*')",
        [],
    )
    .expect("a write to the table");
    for p in [&p1, &p2, &p3] {
        wait_count(p, "SELECT count(*) FROM notes WHERE body = 'from p2'", 1);
        assert_eq!(
            count(p, entries),
            before + 1,
            "only the insert was logged after"
        );
    }
}

/// A leader closed cleanly while its followers' apps write through it hands the cluster what
/// it wrote before it stops: opened again, it follows (or leads) on, where a write it had
/// made its own but no majority held yet left its file diverged, its Raft node stopped until
/// it was opened once more (the cluster walkthrough: 1 leader close in 4 under load).
#[test]
fn a_leader_closed_under_its_followers_writes_opens_again_in_step() {
    let c = Cluster::new();
    let Three {
        ports,
        paths,
        primaries: [p1, p2, p3],
    } = three(&c);
    let first = format!("127.0.0.1:{}", ports[0]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = [(1usize, "p2"), (2, "p3")]
        .into_iter()
        .map(|(i, name)| {
            let uri = format!("{}&connect=tcp://{first}", primary_uri(&paths[i], ports[i]));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let w = Connection::open(&uri).expect("another connection to a follower");
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Refused while the leader is away; a refusal that says nothing was
                    // applied must say so by its type, for an app's retry.
                    let written = w.execute(
                        "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
                        [format!("{name} {n}")],
                    );
                    if let Err(e) = written {
                        let not_applied = e.to_string().to_lowercase().contains("nothing of");
                        assert!(
                            !not_applied || matches!(e, octodb::Error::Unavailable(_)),
                            "not applied, yet not Error::Unavailable: {e:?}"
                        );
                    }
                    n += 1;
                }
            })
        })
        .collect();
    // A device writing through the leader's own writer too.
    let device_uri = device_uri(&c.path("d.db"), &first);
    let device_stop = stop.clone();
    let device = std::thread::spawn(move || {
        let d = Connection::open(&device_uri).expect("open a device");
        ready(&d);
        let mut n = 0;
        while !device_stop.load(std::sync::atomic::Ordering::Relaxed) {
            d.execute("INSERT INTO t(v) VALUES (?1)", [format!("d {n}")])
                .expect("a device writes offline or not");
            n += 1;
        }
    });
    wait_until("the followers' writes flowing", || {
        (count(&p1, "SELECT count(*) FROM t") >= 50).then_some(())
    });
    drop(p1);
    wait_closed(&c, "p1.db");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer thread");
    }
    device.join().expect("the device's thread");
    let p1 = primary_at(&paths[0], ports[0], None);
    wait_until("the reopened leader in step with its cluster", || {
        let s = p1.sync_status().ok()?;
        if let Some(error) = &s.sync_error {
            assert!(
                !error.contains("did not keep"),
                "the leader's file diverged: {error}"
            );
        }
        let c = s.cluster?;
        (matches!(c.role.as_str(), "leader" | "follower") && c.applied_index == c.last_log_index)
            .then_some(())
    });
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .expect("a write on the reopened primary");
    for p in [&p1, &p2, &p3] {
        wait_count(p, "SELECT count(*) FROM t WHERE v = 'after'", 1);
    }
}
