//! Running primaries forming a cluster: new primaries opened with `connect=` join the first,
//! receive its shared state, and from then on hold the same rows and the same log as the
//! leader, whatever its devices and its app write. A follower's app writes through the
//! leader, and a follower sends devices to the leader.

mod common;

use common::*;
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::Connection;

const SHARED: [&str; 5] = [
    "SELECT id, v, row_owner FROM t ORDER BY id",
    "SELECT id, body, row_owner FROM notes ORDER BY id",
    "SELECT seq, origin_node, origin_txn, body FROM _octo_log ORDER BY seq",
    // The authorization state: nodes (their sightings included) and users.
    "SELECT node_id, pubkey, node_type, user_id, auth_state, address, last_seen FROM _octo_nodes
     WHERE node_id > 0 ORDER BY node_id",
    "SELECT user_id, created_at FROM _octo_users ORDER BY user_id",
];

#[test]
fn new_primaries_join_the_first_and_hold_what_its_devices_and_app_write() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let leader = addr_of(&p1);
    let d = c.device("d.db", &p1);
    ready(&d);
    d.execute("INSERT INTO t(v) VALUES ('from the device, before')", [])
        .unwrap();
    p1.execute(
        "INSERT INTO t(v, row_owner) VALUES ('from the backend', '*')",
        [],
    )
    .unwrap();
    wait_outbox_empty(&d);

    let p2 = joining_primary(&c.path("p2.db"), &leader);
    let p3 = joining_primary(&c.path("p3.db"), &leader);
    wait_voters(&p1, 3);
    let cluster = p1.sync_status().unwrap().cluster.unwrap();
    assert_eq!(cluster.role, "leader");
    let mut ids: Vec<u64> = cluster.members.iter().map(|m| m.node_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each primary has its own node id: {ids:?}");
    // PRAGMA nodes names the other primaries' roles (this one's is in its sync_status), and
    // the leader sees how far each one lags.
    let primaries = wait_until("PRAGMA nodes shows the other primaries' roles", || {
        let mut primaries: Vec<(String, Option<u64>)> = p1
            .nodes()
            .ok()?
            .into_iter()
            .filter_map(|n| Some((n.cluster_role?, n.raft_lag)))
            .collect();
        primaries.sort();
        (primaries.len() == 2).then_some(primaries)
    });
    let roles: Vec<&str> = primaries.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["follower", "follower"]);
    assert!(
        primaries.iter().all(|(_, lag)| lag.is_some()),
        "the leader knows each member's lag: {primaries:?}"
    );
    let columns = p1.query("PRAGMA nodes", []).unwrap().columns;
    assert!(columns.iter().any(|c| c == "cluster_role") && columns.iter().any(|c| c == "raft_lag"));

    // After the joins: a schema change, the device's and the backend's writes.
    p1.execute(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)",
        [],
    )
    .unwrap();
    for i in 0..20 {
        d.execute("INSERT INTO t(v) VALUES (?1)", [format!("device {i}")])
            .unwrap();
    }
    p1.execute_batch(
        "BEGIN; INSERT INTO notes(body, row_owner) VALUES ('a note', '*');
         UPDATE t SET v = 'edited' WHERE v = 'from the backend'; COMMIT;",
    )
    .unwrap();
    wait_outbox_empty(&d);
    // A device that signs up after the joins: a new node and a new user on every primary.
    let d2 = c.device("d2.db", &p1);
    ready(&d2);
    d2.execute("INSERT INTO t(v) VALUES ('from the second device')", [])
        .unwrap();
    wait_outbox_empty(&d2);
    drop(d2);

    for follower in ["p2.db", "p3.db"] {
        for sql in SHARED {
            let want = file_rows(&c.path("p.db"), sql);
            wait_until(&format!("{follower} holds `{sql}` as the leader"), || {
                (file_rows(&c.path(follower), sql) == want).then_some(())
            });
        }
    }
    assert_eq!(count(&p2, "SELECT count(*) FROM t"), 23);
    let users = file_rows(&c.path("p2.db"), "SELECT user_id FROM _octo_users");
    assert_eq!(users.len(), 2, "both devices' users: {users:?}");

    // A follower's app writes through the leader (tests/cluster_follower_writes.rs): the
    // row is there when its COMMIT returns, and on the leader.
    p2.execute(
        "INSERT INTO t(v, row_owner) VALUES ('on a follower', '*')",
        [],
    )
    .expect("a follower's write goes through the leader");
    assert_eq!(
        count(&p2, "SELECT count(*) FROM t WHERE v = 'on a follower'"),
        1
    );
    wait_count(&p1, "SELECT count(*) FROM t WHERE v = 'on a follower'", 1);
    // Its local rows (no owner: they go nowhere) it writes.
    p2.execute("INSERT INTO t(v) VALUES ('local to the follower')", [])
        .expect("a follower's app writes its local rows");
    let follower_status = p3.sync_status().unwrap().cluster.unwrap();
    assert_eq!(follower_status.role, "follower");

    // The leader takes a primary out; a follower cannot.
    let p3_id = p3.sync_status().unwrap().node_id;
    let refused = p2
        .execute_batch(&format!("PRAGMA remove_primary={p3_id}"))
        .expect_err("only the leader removes primaries");
    assert!(
        refused.to_string().contains(&addr_of(&p1)),
        "the follower says where the leader is: {refused}"
    );
    p1.execute_batch(&format!("PRAGMA remove_primary={p3_id}"))
        .unwrap();
    let members = p1.sync_status().unwrap().cluster.unwrap().members;
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|m| m.node_id != u64::from(p3_id)));
    // PRAGMA nodes tells the removed primary from a member (the operations walkthrough:
    // it read as an approved primary with no role, as a device does).
    let removed = p1.nodes().unwrap();
    let n = removed
        .iter()
        .find(|n| n.node_id == p3_id)
        .expect("the removed primary is still listed");
    assert_eq!(n.cluster_role.as_deref(), Some("not_member"), "{n:?}");
    assert!(p1.execute_batch("PRAGMA remove_primary=99").is_err());
    drop(p3);
}

#[test]
fn a_follower_restarted_after_many_commits_catches_up_from_its_stored_membership() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_joined(&c);
    let leader = addr_of(&p1);
    let p3_port = p3.bound_addrs()[0].port();
    drop(p3);

    // The leader and p2 go on without p3: a majority.
    p1.execute_batch("BEGIN").unwrap();
    for i in 0..2_000 {
        p1.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
            [format!("while p3 was away {i}")],
        )
        .unwrap();
    }
    p1.execute_batch("COMMIT").unwrap();
    for i in 0..300 {
        p1.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
            [format!("one commit each {i}")],
        )
        .unwrap();
    }
    wait_count(&p2, "SELECT count(*) FROM t", 2_300);

    // p3 comes back on its address; its stored membership decides (no join again).
    let p3 = Connection::open(&format!(
        "{}&connect=tcp://{leader}",
        primary_uri(&c.path("p3.db"), p3_port)
    ))
    .unwrap();
    for sql in SHARED {
        if sql.contains("notes") {
            continue;
        }
        let want = file_rows(&c.path("p.db"), sql);
        wait_until(&format!("p3 holds `{sql}` as the leader"), || {
            (file_rows(&c.path("p3.db"), sql) == want).then_some(())
        });
    }
    let cluster = p3.sync_status().unwrap().cluster.unwrap();
    assert_eq!(cluster.role, "follower");
    assert_eq!(
        p1.sync_status().unwrap().cluster.unwrap().members.len(),
        3,
        "p3 came back as the same member"
    );
}

/// The cluster's leader stopped, taken out of the cluster by the next leader, then started
/// again on its old file: the members refuse its calls, its status says why and what to do,
/// and the cluster goes on without it.
#[test]
fn a_removed_primary_started_again_is_told_it_is_no_member() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_joined(&c);
    let p1_port = p1.bound_addrs()[0].port();
    let p1_id = p1.sync_status().unwrap().node_id;
    drop(p1);
    wait_closed(&c, "p.db");
    let new_leader = wait_until("a new leader", || {
        [&p2, &p3].into_iter().find(|p| {
            p.sync_status()
                .ok()
                .and_then(|s| s.cluster)
                .is_some_and(|c| c.role == "leader")
        })
    });
    new_leader
        .execute_batch(&format!("PRAGMA remove_primary={p1_id}"))
        .unwrap();

    let p1 = Connection::open(&format!(
        "{}&connect=tcp://{}",
        primary_uri(&c.path("p.db"), p1_port),
        addr_of(new_leader)
    ))
    .unwrap();
    let error = wait_until("the removed primary says the members refuse it", || {
        p1.sync_status().ok()?.sync_error
    });
    assert!(
        error.contains("not a member") && error.contains("new file"),
        "{error}"
    );
    new_leader
        .execute("INSERT INTO t(v, row_owner) VALUES ('after', '*')", [])
        .unwrap();
    for p in [&p2, &p3] {
        wait_count(p, "SELECT count(*) FROM t WHERE v = 'after'", 1);
    }
    let members = new_leader.sync_status().unwrap().cluster.unwrap().members;
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(count(&p1, "SELECT count(*) FROM t WHERE v = 'after'"), 0);
    // A device that reaches the removed primary hears why it is not served there.
    let d = c.device("d.db", &p1);
    wait_until("the device told why", || {
        let error = d.sync_status().ok()?.sync_error?;
        (error.contains("refuse this primary") && error.contains("use another primary"))
            .then_some(())
    });
}

/// With `auth=`, a new primary's key waits for the backend as a device's does: the leader
/// lists it, and `PRAGMA authorize_node` or the `new_node` callback lets it join.
#[test]
fn with_auth_a_joining_primary_waits_for_the_backend_to_approve_it() {
    let c = Cluster::new();
    let p1 = c.auth_primary("p.db", "user");
    let leader = addr_of(&p1);
    let joining = |name: &str| {
        Connection::open(&format!(
            "{}&connect=tcp://{leader}&auth=user",
            primary_uri(&c.path(name), 0)
        ))
        .expect("open a joining primary")
    };
    let p2 = joining("p2.db");
    let key = p2.sync_status().unwrap().public_key;
    let waits = wait_until("the new primary says it waits for approval", || {
        p2.sync_status()
            .ok()?
            .sync_error
            .filter(|e| e.contains("authorize_node"))
    });
    assert!(waits.contains(&key), "{waits}");
    let listed = p1.nodes().unwrap();
    assert!(
        listed
            .iter()
            .any(|n| n.public_key == key && n.auth_state != "approved"),
        "the leader lists the request: {listed:?}"
    );
    p1.execute(&format!("PRAGMA authorize_node='{key}:primary'"), [])
        .unwrap();
    wait_voters(&p1, 2);

    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    p1.set_auth_callback(Action::NewNode, move |r: &AuthRequest| {
        seen.lock().unwrap().push(r.node_info.clone());
        Decision::Node(octodb::Role::Primary)
    })
    .unwrap();
    let _p3 = joining("p3.db");
    wait_voters(&p1, 3);
    let infos = asked.lock().unwrap().clone();
    assert!(
        infos.iter().any(|i| i.contains(r#""node_type":"primary""#)),
        "the callback is told a primary asks: {infos:?}"
    );
}

/// A primary listening on every interface names the address others reach it at: the
/// cluster stores and uses that one (here a host name, not an address).
#[test]
fn a_primary_bound_to_every_interface_joins_at_the_address_it_advertises() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let p2 = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://0.0.0.0:{port}&advertise=tcp://localhost:{port}\
         &connect=tcp://{}",
        c.path("p2.db").display(),
        addr_of(&p1)
    ))
    .expect("open a joining primary");
    wait_voters(&p1, 2);
    let addrs: Vec<String> = p1
        .sync_status()
        .unwrap()
        .cluster
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.addr)
        .collect();
    assert!(addrs.contains(&format!("localhost:{port}")), "{addrs:?}");
    p1.execute("INSERT INTO t(v, row_owner) VALUES ('to p2', '*')", [])
        .unwrap();
    wait_count(&p2, "SELECT count(*) FROM t WHERE v = 'to p2'", 1);
}

/// A joining primary giving an address its members cannot reach (a mistyped advertise=) is
/// refused with the reason, and never becomes a voter no one can reach.
#[test]
fn a_joining_primary_at_an_unreachable_address_is_refused() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let p2 = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&advertise=tcp://127.0.0.1:{closed}\
         &connect=tcp://{}",
        c.path("p2.db").display(),
        addr_of(&p1)
    ))
    .expect("open a joining primary");
    let s = p2
        .wait_for(DEADLINE, |s| {
            s.sync_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot reach the joining primary"))
        })
        .expect("the joiner hears why");
    assert!(s.cluster.is_none(), "{s:?}");
    let members = p1.sync_status().unwrap().cluster.unwrap().members;
    assert_eq!(members.len(), 1, "no unreachable member: {members:?}");
}

/// A primary on a new disk, started at the address of a member it replaces, is told to take
/// that member out first: joined beside it, the old voter stayed in the cluster unreachable
/// for good (the operator walkthrough's replaced disk). Once it is out, the new one joins.
#[test]
fn a_primary_at_a_members_address_with_another_key_is_told_to_remove_it_first() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_joined(&c);
    let (p3_id, p3_port) = (p3.sync_status().unwrap().node_id, port_of(&p3));
    drop(p3);
    let replacing = || {
        Connection::open(&format!(
            "{}&connect=tcp://{}",
            primary_uri(&c.path("p3-new.db"), p3_port),
            addr_of(&p1)
        ))
        .expect("open the replacing primary")
    };
    let new = replacing();
    new.wait_for(DEADLINE, |s| {
        s.sync_error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("remove_primary={p3_id}")))
    })
    .expect("the new primary hears what to do");
    assert_eq!(p1.sync_status().unwrap().cluster.unwrap().members.len(), 3);

    p1.execute_batch(&format!("PRAGMA remove_primary={p3_id}"))
        .unwrap();
    drop(new);
    let new = replacing();
    wait_voters(&p1, 3);
    wait_until("the new primary to follow", || {
        (cluster_role(&new) == "follower").then_some(())
    });
    drop(p2);
}

/// The leader `p.db` (with table t), and `p2.db` and `p3.db` joined to it, all three voters.
fn three_joined(c: &Cluster) -> (Connection, Connection, Connection) {
    let p1 = c.primary_with_t();
    let leader = addr_of(&p1);
    let p2 = joining_primary(&c.path("p2.db"), &leader);
    let p3 = joining_primary(&c.path("p3.db"), &leader);
    wait_voters(&p1, 3);
    (p1, p2, p3)
}

/// Of two voters, one is gone: its removal cannot be confirmed (both must agree), and the
/// leader says so within a bound instead of waiting for ever; a second try is told an earlier
/// change is under way.
#[test]
fn a_removal_that_cannot_be_confirmed_fails_within_a_bound_and_says_why() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let p2 = joining_primary(&c.path("p2.db"), &addr_of(&p1));
    wait_voters(&p1, 2);
    let p2_id = p2.sync_status().unwrap().node_id;
    let p2_port = port_of(&p2);
    drop(p2);
    let err = p1
        .execute_batch(&format!("PRAGMA remove_primary={p2_id}"))
        .expect_err("no majority to confirm it")
        .to_string();
    assert!(
        err.contains("not confirmed") && err.contains("majority"),
        "{err}"
    );
    let again = p1
        .execute_batch(&format!("PRAGMA remove_primary={p2_id}"))
        .expect_err("the first is still under way")
        .to_string();
    assert!(again.contains("still under way"), "{again}");

    // Once the primary is back, the change's first step commits and the leader finishes it
    // by itself (it stayed half-made, "membership changing", until the removal was sent
    // again).
    let p2 = Connection::open(&format!(
        "{}&connect=tcp://{}",
        primary_uri(&c.path("p2.db"), p2_port),
        addr_of(&p1)
    ))
    .unwrap();
    wait_until("the removal to be finished", || {
        let cluster = p1.sync_status().ok()?.cluster?;
        (!cluster.membership_changing && cluster.members.len() == 1).then_some(())
    });
    drop(p2);
}

/// A new primary whose connect= names a follower joins through the leader the follower names.
#[test]
fn a_primary_joining_through_a_follower_is_sent_to_the_leader() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    let p2 = joining_primary(&c.path("p2.db"), &addr_of(&p1));
    wait_voters(&p1, 2);
    wait_follows_leader(&p2);
    let p3 = joining_primary(&c.path("p3.db"), &addr_of(&p2));
    wait_voters(&p1, 3);
    p3.wait_for(DEADLINE, |s| s.sync_error.is_none() && s.cluster.is_some())
        .expect("the third primary joined");
}

/// Waits until `p` counts `voters` voters in its cluster (while entries may still flow).
fn wait_voter_count(p: &Connection, voters: usize) {
    p.wait_for(DEADLINE, |s| {
        s.cluster
            .as_ref()
            .is_some_and(|c| c.settled_voters() == Some(voters))
    })
    .unwrap_or_else(|e| panic!("waiting for {voters} voters: {e}"));
}

/// Each primary in `names` holds the leader's rows and log.
fn wait_same_as_leader(c: &Cluster, names: &[&str]) {
    for sql in [SHARED[0], SHARED[2]] {
        let want = file_rows(&c.path("p.db"), sql);
        for name in names {
            wait_until(&format!("{name} holds `{sql}` as the leader"), || {
                (file_rows(&c.path(name), sql) == want).then_some(())
            });
        }
    }
}

/// A fourth primary joins while a device writes without pause: it becomes a voter, and at
/// the end all four hold the same rows and the same log, every row the device wrote once.
#[test]
fn a_fourth_primary_joins_under_load() {
    let c = Cluster::new();
    let (p1, p2, p3) = three_joined(&c);
    let leader = addr_of(&p1);
    let d = c.device("d.db", &p1);
    ready(&d);

    let stop = &std::sync::atomic::AtomicBool::new(false);
    let (p4, d, written) = std::thread::scope(|s| {
        let load = s.spawn(move || {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 200 {
                d.execute("INSERT INTO t(v) VALUES (?1)", [format!("load {n}")])
                    .expect("the device writes");
                n += 1;
            }
            (d, n)
        });
        // Joins once the load is on its way.
        wait_until("the load reaches the leader", || {
            (count(&p1, "SELECT count(*) FROM t") >= 100).then_some(())
        });
        let p4 = joining_primary(&c.path("p4.db"), &leader);
        wait_voter_count(&p1, 4);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (d, written) = load.join().expect("the load thread");
        (p4, d, written)
    });
    wait_outbox_empty(&d);
    assert_eq!(count(&p1, "SELECT count(*) FROM t") as usize, written);
    wait_same_as_leader(&c, &["p2.db", "p3.db", "p4.db"]);
    assert_eq!(p4.sync_status().unwrap().cluster.unwrap().role, "follower");
    drop((p2, p3));
}

/// A follower away while the others decide 100,000 device transactions comes back and
/// catches up, from the log or a snapshot, to the same rows and log as the leader.
#[test]
fn a_follower_away_for_100000_commits_catches_up() {
    const COMMITS: usize = 100_000;
    let c = Cluster::new();
    let (p1, p2, p3) = three_joined(&c);
    let p3_port = p3.bound_addrs()[0].port();
    drop(p3);
    wait_closed(&c, "p3.db");

    // Two devices, each committing its transactions one row at a time.
    let started = std::time::Instant::now();
    let devices: Vec<Connection> = std::thread::scope(|s| {
        let writers: Vec<_> = ["d1.db", "d2.db"]
            .into_iter()
            .map(|name| {
                let d = c.device(name, &p1);
                s.spawn(move || {
                    ready(&d);
                    for i in 0..COMMITS / 2 {
                        d.execute("INSERT INTO t(v) VALUES (?1)", [format!("{name} {i}")])
                            .expect("the device commits");
                    }
                    d
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("a device's thread"))
            .collect()
    });
    for d in &devices {
        wait_outbox_empty(d);
    }
    eprintln!("{COMMITS} commits decided in {:?}", started.elapsed());
    assert_eq!(count(&p1, "SELECT count(*) FROM t") as usize, COMMITS);

    let p3 = Connection::open(&primary_uri(&c.path("p3.db"), p3_port)).unwrap();
    wait_same_as_leader(&c, &["p2.db", "p3.db"]);
    assert_eq!(p3.sync_status().unwrap().cluster.unwrap().role, "follower");
    drop(p2);
}

/// An app's schema set-up run as soon as its primary opens, while that primary is still
/// joining its cluster, waits for the join: made before, alone, it numbered the new primary's
/// log apart from the cluster's, and a device that failed over between primaries at the same
/// position missed rows (schema walkthrough, session 33).
#[test]
fn a_joining_primarys_app_writes_once_it_has_joined_and_keeps_the_clusters_numbering() {
    let c = Cluster::new();
    let p1 = c.primary_with_t();
    p1.execute(
        "INSERT INTO t(v, row_owner) VALUES ('before the join', '*')",
        [],
    )
    .unwrap();
    let setup = "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, row_owner);
                 CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT, row_owner);
                 CREATE INDEX IF NOT EXISTS notes_body ON notes(body);";
    let p2 = joining_primary(&c.path("p2.db"), &addr_of(&p1));
    p2.execute_batch(setup).unwrap();
    p2.execute(
        "INSERT INTO t(v, row_owner) VALUES ('from the new primary', '*')",
        [],
    )
    .unwrap();
    wait_voters(&p1, 2);
    let last = p1.sync_status().unwrap().last_seq;
    p2.wait_for(DEADLINE, |s| s.last_seq == last).unwrap();
    let log = "SELECT group_concat(seq || ':' || origin_node || ':' || origin_txn, ' ')
               FROM (SELECT * FROM _octo_log ORDER BY seq)";
    let on_p1 = file_rows(&c.path("p.db"), log);
    assert_eq!(
        file_rows(&c.path("p2.db"), log),
        on_p1,
        "the same log, numbered alike"
    );
    for p in [&p1, &p2] {
        assert_eq!(count(p, "SELECT count(*) FROM t"), 2);
        assert_eq!(
            count(
                p,
                "SELECT count(*) FROM sqlite_master WHERE name = 'notes_body'"
            ),
            1
        );
    }
}

/// A primary the leader has admitted but not yet given its membership (a snapshot of a large
/// database may take minutes) takes Raft's calls from that leader alone: a stranger's vote of
/// a higher term is refused. It took anyone's (the security review): such a vote or a forged
/// snapshot would have made the stranger its leader.
#[test]
fn a_joining_primary_takes_raft_calls_only_from_the_leader_that_admitted_it() {
    use octodb::crypto::NodeKeys;
    use octodb::net::{HandshakeOptions, Message, SecureStream};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = Cluster::new();
    // A leader that admits the joiner, then sends nothing: the joiner stays without a
    // membership for as long as the test needs.
    let leader = NodeKeys::generate();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let leader_addr = listener.local_addr().unwrap();
    let keys = leader.clone();
    let admitting = rt.spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = SecureStream::accept(tcp, &keys, &HandshakeOptions::default())
            .await
            .unwrap();
        let (mut rd, mut wr) = stream.into_split();
        rd.recv().await.unwrap(); // the joiner's Hello
        let welcome = Message::Welcome {
            node_id: 2,
            user_id: 0,
            node_type: octodb::Role::Primary,
            last_decided_txn: 0,
        };
        wr.send(&welcome.encode()).await.unwrap();
        wr.flush().await.unwrap();
        rd.recv().await.unwrap(); // its heartbeat: it waits for its membership now
        (rd, wr)
    });
    let joiner = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0&connect=tcp://{leader_addr}",
        c.path("p2.db").display()
    ))
    .unwrap();
    let _kept_open = rt.block_on(admitting).unwrap();
    wait_until("the joiner's Raft node running", || {
        joiner.sync_status().unwrap().cluster.map(|_| ())
    });
    let addr = joiner.bound_addrs()[0];
    // A vote of term 99 from `keys`: whether it got a Raft answer.
    let answered = |keys: &NodeKeys| {
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let stream = SecureStream::connect(tcp, keys, &HandshakeOptions::default())
                .await
                .unwrap();
            let (mut rd, mut wr) = stream.into_split();
            let hello = Message::Hello {
                role: octodb::Role::Primary,
                last_seq: 0,
                info: "{}".into(),
                auth: None,
            };
            wr.send(&hello.encode()).await.unwrap();
            let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(99, 9), None);
            let mut frame = vec![1u8]; // the cluster messages' encoding, then Request::Vote
            frame.extend(postcard::to_allocvec(&(1u32, vote)).unwrap());
            wr.send(&frame).await.unwrap();
            wr.flush().await.unwrap();
            match tokio::time::timeout(DEADLINE, rd.recv()).await.unwrap() {
                Ok(reply) => match Message::decode(&reply) {
                    Ok(Message::Refused { .. }) => false,
                    _ => reply.first() == Some(&1),
                },
                Err(_) => false, // closed
            }
        })
    };
    assert!(
        !answered(&NodeKeys::generate()),
        "a stranger's vote was taken"
    );
    assert!(answered(&leader), "the admitting leader's vote is answered");
}
