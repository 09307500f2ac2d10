//! Three primaries, each a process of its own, and a device writing through them: the leader
//! is killed with SIGKILL again and again while the device writes. After every kill the
//! device finds the new leader; the killed primary starts again (and, if it died with a tail
//! the cluster never held, is started once more, as a supervisor would, and rejoins as a new
//! member). At the end every primary holds every row the device committed, exactly once.
//!
//! A partition through proxies the test controls: the leader cut off from the other two.
//!
//! And a seeded randomized run: SIGKILL, partitions (and, in the longer hunt, SIGSTOP/SIGCONT)
//! of any primary, the leader half the time, while two devices write, one of them served by a
//! follower; checked in the manner of Jepsen's. CI runs one short seed; more:
//! `CLUSTER_SEEDS=1-10 CLUSTER_STEPS=40 cargo test --release --test cluster_faults -- --ignored`.

mod common;

use common::partition::Partitions;
use common::process::{free_port, Process, ANSWER, MARK, ROLE, URI};
use common::*;
use octodb::Connection;
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::sync::Arc;

/// Set for the first primary: it creates the table.
const CREATE: &str = "OCTODB_FAULT_CREATE";
const ROUNDS: usize = 3;
const WRITES_PER_STEP: usize = 20;

/// Not a test of its own: the body of a primary's process when the suite starts this binary
/// in a role. Run directly, it returns at once.
#[test]
fn child_process() {
    let (Ok(_), Ok(uri)) = (std::env::var(ROLE), std::env::var(URI)) else {
        return;
    };
    common::init_tracing();
    let db = Connection::open(&uri).expect("open the primary");
    if std::env::var_os(CREATE).is_some() {
        db.execute(
            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT UNIQUE, row_owner)",
            [],
        )
        .expect("create table");
    }
    let mut out = std::io::stdout();
    writeln!(out, "{MARK}ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("a command");
        let answer = match line.as_str() {
            "status" => db.sync_status().map(|s| {
                // (No cluster yet while it joins; voters 0 while they change.)
                let (role, voters, silence) = s.cluster.map_or(("joining".into(), 0, None), |c| {
                    let voters = c.settled_voters().unwrap_or(0);
                    (c.role, voters, c.quorum_silence_ms)
                });
                let silence = silence.map_or("-".into(), |ms| ms.to_string());
                let error = s.sync_error.unwrap_or_default().replace(' ', "_");
                format!("status {role} {voters} {silence} {error}")
            }),
            // The backend app writes a row every node sees.
            _ if line.starts_with("write ") => db
                .execute(
                    "INSERT INTO t(tag, row_owner) VALUES (?1, '*')",
                    [&line["write ".len()..]],
                )
                .map(|_| "wrote".to_string()),
            "tags" => db.query("SELECT tag FROM t ORDER BY tag", []).map(|rows| {
                let tags: Vec<String> = rows
                    .iter()
                    .map(|r| r.get::<String>(0).unwrap_or_default())
                    .collect();
                format!("tags {}", tags.join(","))
            }),
            _ => Ok(format!("unknown command {line}")),
        };
        let answer = answer.unwrap_or_else(|e| format!("error {e}"));
        writeln!(out, "{MARK}{}", answer.replace('\n', " ")).unwrap();
        out.flush().unwrap();
    }
}

struct Primary {
    uri: String,
    create: bool,
    process: Option<Process>,
    /// The proxies its member connections pass through, and its place among them.
    net: (Arc<Partitions>, usize),
}

/// Three primaries, not started yet: the first creates the table, the others join it. Their
/// member connections pass through `net`'s proxies. Also their addresses,
/// for devices (not through the proxies: only the primaries are partitioned).
fn three_primaries(c: &Cluster, net: &Arc<Partitions>) -> (Vec<Primary>, Vec<String>) {
    let ports = [free_port(), free_port(), free_port()];
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let primaries = (0..3)
        .map(|i| {
            let mut uri = primary_uri(&c.path(&format!("p{i}.db")), ports[i]);
            uri.push_str(&format!("&advertise=tcp://{}", net.addrs[i]));
            if i > 0 {
                uri.push_str(&format!("&connect=tcp://{}", addrs[0]));
            }
            Primary {
                uri,
                create: i == 0,
                process: None,
                net: (net.clone(), i),
            }
        })
        .collect();
    (primaries, addrs)
}

/// Three primaries started, their member connections through proxies, once all three vote;
/// also the proxies and the primaries' own addresses (for devices).
fn three_behind_proxies(c: &Cluster) -> (Arc<Partitions>, Vec<Primary>, Vec<String>) {
    let net = Partitions::start(3);
    let (mut primaries, addrs) = three_primaries(c, &net);
    net.set_upstreams(&addrs);
    for p in &mut primaries {
        p.start();
    }
    // Three settled voters on every primary: a leader killed while the voters grow from two
    // to three leaves a cluster that cannot elect (the old two must both agree), as Raft must.
    settle(c, &mut primaries, "three primaries started");
    (net, primaries, addrs)
}

impl Primary {
    /// Starts its process (the first primary's first start creates the table).
    fn start(&mut self) {
        if std::mem::take(&mut self.create) {
            std::env::set_var(CREATE, "1");
        }
        let process = Process::start("primary", &self.uri);
        std::env::remove_var(CREATE);
        let (net, i) = &self.net;
        net.set_pid(*i, process.id());
        self.process = Some(process);
    }

    /// (role, voters, sync_error) as the primary answers; None while it is down.
    fn status(&mut self) -> Option<(String, usize, String)> {
        self.full_status()
            .map(|(role, voters, _, error)| (role, voters, error))
    }

    /// Also how long it led without hearing from a majority (when it did).
    fn full_status(&mut self) -> Option<(String, usize, Option<u64>, String)> {
        let answer = self.process.as_mut()?.ask("status", "status");
        let mut words = answer.split(' ').skip(1);
        let role = words.next()?.to_string();
        let voters = words.next()?.parse().ok()?;
        let silence = words.next()?.parse().ok();
        let error = words.next().unwrap_or_default().replace('_', " ");
        Some((role, voters, silence, error))
    }

    /// The backend app on this primary writes a row tagged `tag`: "wrote", or its error.
    fn write(&mut self, tag: &str) -> String {
        let process = self.process.as_mut().expect("running");
        process.ask(&format!("write {tag}"), "wrote")
    }

    /// Whether it is running and in its cluster (not asking to be opened again). One that died
    /// (or was stopped) as a leader with batches its cluster never held finds out once it runs
    /// again, and asks to be opened again: a supervisor does so here, and it rejoins.
    fn up(&mut self) -> Option<(String, usize)> {
        let (role, voters, error) = self.status()?;
        if error.contains("opened again") {
            if let Some(process) = self.process.take() {
                process.kill();
            }
            self.start();
            return None;
        }
        Some((role, voters))
    }

    fn tags(&mut self) -> BTreeSet<String> {
        let answer = self.process.as_mut().expect("running").ask("tags", "tags");
        answer
            .strip_prefix("tags ")
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    }
}

/// The device commits `WRITES_PER_STEP` rows of its own, tagged `step-NN`.
fn write(d: &Connection, step: &str, committed: &mut BTreeSet<String>) {
    for i in 0..WRITES_PER_STEP {
        let tag = format!("{step}-{i:02}");
        d.execute("INSERT INTO t(tag) VALUES (?1)", [&tag])
            .expect("the device commits locally");
        committed.insert(tag);
    }
}

#[test]
fn killing_the_leader_again_and_again_loses_no_committed_row() {
    let c = Cluster::new();
    // (Through proxies that stay open: this test only kills.)
    let (_net, mut primaries, addrs) = three_behind_proxies(&c);
    let first = addrs[0].clone();

    let d = Connection::open(&device_uri(&c.path("d.db"), &first)).expect("open the device");
    ready(&d);
    d.wait_for(ANSWER, |s| s.primaries.len() == 3)
        .expect("the device hears of the three primaries");
    let mut committed = BTreeSet::new();

    for round in 0..ROUNDS {
        write(&d, &format!("r{round}-before"), &mut committed);
        let leader = wait_until("a leader", || {
            primaries
                .iter_mut()
                .position(|p| p.status().is_some_and(|(role, ..)| role == "leader"))
        });
        // SIGKILL, while the device's writes may be on their way.
        if let Some(p) = primaries[leader].process.take() {
            p.kill();
        }
        write(&d, &format!("r{round}-during"), &mut committed);
        wait_until("a new leader among the others", || {
            primaries
                .iter_mut()
                .any(|p| p.status().is_some_and(|(role, ..)| role == "leader"))
                .then_some(())
        });
        primaries[leader].start();
        wait_outbox_empty(&d);
        // The killed primary catches up. One that died with a tail the cluster never held
        // stops and asks to be opened again; a supervisor does so, and it rejoins.
        wait_until("the killed primary back with every committed row", || {
            let p = &mut primaries[leader];
            p.up()?;
            (p.tags() == committed).then_some(())
        });
        // (And a member again: one that rejoined is one only once its change is done.)
        settle(&c, &mut primaries, &format!("round {round}"));
        write(&d, &format!("r{round}-after"), &mut committed);
    }

    wait_outbox_empty(&d);
    let status = d.sync_status().unwrap();
    assert_eq!(status.last_rejected, None, "no transaction was rejected");
    for (i, p) in primaries.iter_mut().enumerate() {
        wait_until(&format!("primary {i} holds every committed row"), || {
            (p.tags() == committed).then_some(())
        });
    }
    assert_eq!(
        count(&d, "SELECT count(*) FROM t") as usize,
        committed.len(),
        "the device holds its rows once each"
    );
}

// ---------------------------------------------------------------------------------------------
// A partition (issue "Cluster", item 6)

/// Three primaries whose member connections pass through proxies the test controls; two
/// devices, one on a follower and one naming only the leader. The leader is cut off from the
/// other two. The majority elects a leader and goes on: both devices' rows, and a backend
/// app's write on the majority, are accepted. The cut-off leader finds out that no majority
/// answers it and takes no write (its app's COMMIT fails with "quorum lost", nothing
/// written), so there is no second history. Once the network heals it follows the new
/// leader, and every primary holds the same rows and the same log.
#[test]
fn a_partition_isolating_the_leader_stops_it_and_heals() {
    let c = Cluster::new();
    let (net, mut primaries, real) = three_behind_proxies(&c);
    let leader = wait_until("a leader", || {
        primaries
            .iter_mut()
            .position(|p| p.status().is_some_and(|(role, ..)| role == "leader"))
    });
    let others = [(leader + 1) % 3, (leader + 2) % 3];
    let device = |name: &str, connect: &[usize]| {
        let connect: Vec<String> = connect
            .iter()
            .map(|i| format!("tcp://{}", real[*i]))
            .collect();
        let d = Connection::open(&format!(
            "file:{}?node=secondary&heartbeat=1&connect={}",
            c.path(name).display(),
            connect.join(",")
        ))
        .expect("open a device");
        ready(&d);
        d
    };
    let on_follower = device("d0.db", &others);
    let on_leader = device("d1.db", &[leader]);
    let mut committed = BTreeSet::new();
    let write_rows = |d: &Connection, name: &str, committed: &mut BTreeSet<String>| {
        for n in 0..5 {
            let tag = format!("{name}-{n}");
            d.execute("INSERT INTO t(tag) VALUES (?1)", [&tag])
                .expect("a device commits locally");
            committed.insert(tag);
        }
    };
    write_rows(&on_follower, "d0-before", &mut committed);
    write_rows(&on_leader, "d1-before", &mut committed);
    wait_outbox_empty(&on_follower);
    wait_outbox_empty(&on_leader);

    net.isolate(leader);
    let new_leader = wait_until("a leader on the majority's side", || {
        others.into_iter().find(|i| {
            primaries[*i]
                .status()
                .is_some_and(|(role, ..)| role == "leader")
        })
    });
    // The minority's side: its leader finds that no majority answers, and refuses writes.
    wait_until("the cut-off leader knows it", || {
        let (role, _, silence, _) = primaries[leader].full_status()?;
        (role == "leader" && silence.is_some()).then_some(())
    });
    let refused = primaries[leader].write("minority-app");
    assert!(
        refused.starts_with("error") && refused.contains("quorum lost"),
        "the cut-off leader's app write is refused: {refused}"
    );
    // The majority goes on: an app's write there, and both devices' rows (the one that named
    // only the cut-off leader moves to a primary its leader vouched for).
    assert_eq!(primaries[new_leader].write("majority-app"), "wrote");
    committed.insert("majority-app".to_string());
    write_rows(&on_follower, "d0-during", &mut committed);
    write_rows(&on_leader, "d1-during", &mut committed);
    wait_outbox_empty(&on_follower);
    wait_outbox_empty(&on_leader);

    net.heal();
    for (i, p) in primaries.iter_mut().enumerate() {
        wait_until(&format!("primary {i} back with every accepted row"), || {
            p.up()?;
            (p.tags() == committed).then_some(())
        });
    }
    for d in [&on_follower, &on_leader] {
        assert_eq!(d.sync_status().unwrap().last_rejected, None);
    }
    let log = "SELECT seq, origin_node, origin_txn, body FROM _octo_log ORDER BY seq";
    let first = file_rows(&c.path("p0.db"), log);
    for i in 1..3 {
        wait_until(&format!("primary {i} holds the same log"), || {
            (file_rows(&c.path(&format!("p{i}.db")), log) == first).then_some(())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// A randomized run (issue "Cluster", item 6)

/// One seeded run: three primaries (processes), two devices of their own users, one naming
/// the first primary and one naming the second (served by a follower, or by whichever leads),
/// both knowing all three. Each step both devices commit rows, while one primary at a time
/// (never more: a majority stays) is killed with SIGKILL, stopped with SIGSTOP or cut off from
/// the others by the proxies, and is brought back (started again, SIGCONT, or the partition
/// healed) before the next. The checks, in the manner of
/// Jepsen's, once every fault is healed: every row a device committed is on every primary
/// exactly once and nothing was rejected; the primaries hold the same rows and the same log;
/// each device holds its own rows, and what it has seen only grew.
fn run_cluster_seed(seed: u64, steps: usize, faults: &[Fault]) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c = Cluster::new();
    let (net, mut primaries, addrs) = three_behind_proxies(&c);
    let device = |name: &str, first: usize| {
        let order = [first, (first + 1) % 3, (first + 2) % 3];
        let connect = order.map(|i| format!("tcp://{}", addrs[i])).join(",");
        // (Heartbeats every second: a primary stopped without a word is found out quickly.)
        let d = Connection::open(&format!(
            "file:{}?node=secondary&heartbeat=1&connect={connect}",
            c.path(name).display()
        ))
        .expect("open a device");
        ready(&d);
        d
    };
    let devices = [device("d0.db", 0), device("d1.db", 1)];
    let mut committed: [BTreeSet<String>; 2] = Default::default();
    let mut seen = [0i64; 2];

    for step in 0..steps {
        // Every primary back in the cluster before the next fault: one down at most.
        settle(&c, &mut primaries, &format!("seed {seed}"));
        // The leader half the time, else any primary.
        let leader = primaries
            .iter_mut()
            .position(|p| p.status().is_some_and(|(role, ..)| role == "leader"));
        let victim = match leader {
            Some(l) if rng.gen_bool(0.5) => l,
            _ => rng.gen_range(0..3),
        };
        let fault = faults[rng.gen_range(0..faults.len())];
        eprintln!("seed {seed} step {step}: {fault:?} primary {victim} (leader: {leader:?})");
        // The fault, while both devices write.
        match fault {
            Fault::Kill => {
                if let Some(p) = primaries[victim].process.take() {
                    p.kill();
                }
            }
            Fault::Stop => {
                if let Some(p) = &primaries[victim].process {
                    p.signal("-STOP");
                }
            }
            Fault::Cut => net.isolate(victim),
        }
        for (i, d) in devices.iter().enumerate() {
            for n in 0..5 {
                let tag = format!("s{seed}-{step:03}-d{i}-{n}");
                d.execute("INSERT INTO t(tag) VALUES (?1)", [&tag])
                    .expect("a device commits locally, whatever the primaries do");
                committed[i].insert(tag);
            }
        }
        // The two primaries left are a majority: the devices' rows get through meanwhile
        // (a device whose primary went moves to another).
        // (A primary that finds out now that it must be opened again is: `Primary::up`.)
        wait_until(&format!("seed {seed}: the devices' rows through"), || {
            for (i, p) in primaries.iter_mut().enumerate() {
                if i != victim {
                    let _ = p.up();
                }
            }
            devices
                .iter()
                .all(|d| d.sync_status().is_ok_and(|s| s.outbox_len == 0))
                .then_some(())
        });
        // Healed before the next fault: one primary down at most.
        match (fault, primaries[victim].process.as_ref()) {
            (Fault::Cut, _) => net.heal(),
            (_, Some(p)) => p.signal("-CONT"),
            (_, None) => primaries[victim].start(),
        }
        // Each device's reads only grow.
        for (i, d) in devices.iter().enumerate() {
            let now = count(d, "SELECT count(*) FROM t");
            assert!(
                now >= seen[i],
                "seed {seed}: device {i} saw {now} rows after {}",
                seen[i]
            );
            seen[i] = now;
        }
    }

    // Everything settles; then the checks.
    let all: BTreeSet<String> = committed.iter().flatten().cloned().collect();
    for (i, d) in devices.iter().enumerate() {
        wait_outbox_empty(d);
        assert_eq!(
            d.sync_status().unwrap().last_rejected,
            None,
            "seed {seed}: device {i}"
        );
        let mine: BTreeSet<String> = d
            .query("SELECT tag FROM t", [])
            .unwrap()
            .iter()
            .map(|r| r.get::<String>(0).unwrap())
            .collect();
        assert_eq!(
            mine, committed[i],
            "seed {seed}: device {i} holds its own rows"
        );
    }
    // Every primary in the cluster with the same log (one that finds out only now that it
    // must be opened again is), then every committed row on each. (Each tag is UNIQUE in
    // the table: a row applied twice would have been rejected.)
    settle(&c, &mut primaries, &format!("seed {seed}"));
    for (i, p) in primaries.iter_mut().enumerate() {
        wait_until(
            &format!("seed {seed}: primary {i} holds every committed row"),
            || {
                p.up()?;
                (p.tags() == all).then_some(())
            },
        );
    }
    eprintln!(
        "seed {seed}: {steps} steps, {} rows committed, every primary equal",
        all.len()
    );
}

/// What befalls a primary in a step of the randomized run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL, then started again.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Stop,
    /// Cut off from the other primaries by the proxies, then healed.
    Cut,
}

/// Waits until every primary is in the cluster again (`Primary::up`), as a leader or a
/// follower, one leads, each sees three voters and no change of them under way, and all
/// hold the same log. (A primary that led with a tail its cluster never held may call
/// itself a follower until the new leader's entries meet that tail; it then rejoins as a
/// new member, and until its membership change is done the cluster counts one primary less:
/// a fault meanwhile would be a second one at once, which three primaries cannot take.)
fn settle(c: &Cluster, primaries: &mut [Primary], when: &str) {
    let log = "SELECT seq, origin_node, origin_txn, body FROM _octo_log ORDER BY seq";
    wait_until(
        &format!("{when}: every primary in the cluster, with the same log"),
        || {
            let mut leaders = 0;
            for p in primaries.iter_mut() {
                let (role, voters) = p.up()?;
                if voters != 3 {
                    return None;
                }
                match role.as_str() {
                    "leader" => leaders += 1,
                    "follower" => {}
                    _ => return None,
                }
            }
            let first = file_rows(&c.path("p0.db"), log);
            let same =
                (1..primaries.len()).all(|i| file_rows(&c.path(&format!("p{i}.db")), log) == first);
            (leaders == 1 && same).then_some(())
        },
    );
}

/// CI's short seed: SIGKILLs and partitions (the hunt adds SIGSTOPs).
#[test]
fn a_randomized_cluster_fault_run_loses_nothing() {
    run_cluster_seed(1, 6, &[Fault::Kill, Fault::Cut]);
}

#[test]
#[ignore = "a longer hunt, SIGSTOPs too: CLUSTER_SEEDS=1-10 CLUSTER_STEPS=40"]
fn a_randomized_cluster_fault_hunt() {
    let seeds = std::env::var("CLUSTER_SEEDS").unwrap_or_else(|_| "1-5".into());
    let (from, to) = seeds
        .split_once('-')
        .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
        .unwrap_or_else(|| (seeds.parse().unwrap(), seeds.parse().unwrap()));
    let steps = std::env::var("CLUSTER_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    for seed in from..=to {
        run_cluster_seed(seed, steps, &[Fault::Kill, Fault::Stop, Fault::Cut]);
    }
}
