//! Randomized convergence (SPEC §3.1-3.4): devices of two users and the backend write at
//! random, devices go offline and come back, the primary restarts and adds columns,
//! transactions conflict and are rejected; in the end every device holds exactly the
//! primary's rows that its user may see, no row a device committed on its own (an id it did
//! not choose) was lost, and no local row left its device.
//!
//! Each run is one fixed seed: a failure names it and replays the same operations.
mod common;
use common::*;
use octodb::{Connection, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;

/// Explicit ids the devices and the backend share: inserts of the same one conflict.
const SHARED_IDS: i64 = 12;

struct Device {
    name: &'static str,
    /// The file's path.
    path: std::path::PathBuf,
    /// Where the primary listens (the same port across its restarts).
    primary_addr: String,
    user: i64,
    conn: Option<Connection>,
    online: bool,
    /// Goes offline and back now and then (not while another connection shares its node).
    toggles: bool,
}

struct World {
    cluster: Cluster,
    primary: Connection,
    primary_port: u16,
    devices: Vec<Device>,
    /// Tags of rows inserted on a device in a transaction of their own with an id SQLite
    /// picked: nothing can reject those (no one else can hold their id, no rule is broken).
    must_arrive: BTreeSet<String>,
    /// Restarting the primary is one of the backend's steps (not while devices run alone).
    restarts: bool,
    /// The two users (ann's devices come first).
    users: [i64; 2],
}

#[test]
fn devices_converge_to_the_primary_under_random_work_seed_1() {
    run(1, 1500);
}

#[test]
fn devices_converge_to_the_primary_under_random_work_seed_2() {
    run(2, 1500);
}

/// The devices' apps and the backend all at once, each in its thread with its own seed (so the
/// interleaving, unlike the steps, differs from run to run).
#[test]
fn devices_converge_when_all_write_at_once() {
    run_concurrently(3, 400);
}

fn run_concurrently(seed: u64, steps: usize) {
    let mut w = World::new();
    w.restarts = false;
    let mut devices = std::mem::take(&mut w.devices);
    // A second app connection on ann's second device, writing at the same time as the first.
    let second = &mut devices[1];
    second.toggles = false;
    let also = Device {
        name: second.name,
        path: second.path.clone(),
        primary_addr: second.primary_addr.clone(),
        user: second.user,
        conn: Some(w.cluster.device(second.name, &w.primary)),
        online: true,
        toggles: false,
    };
    devices.push(also);
    let threads: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(i, mut d)| {
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed * 100 + i as u64);
                let mut must_arrive = Vec::new();
                for step in 0..steps {
                    let tag = format!("s{seed}-d{i}-{step}");
                    let shared_id = rng.gen_range(1..=SHARED_IDS);
                    must_arrive.extend(d.random_step(
                        &mut rng,
                        &tag,
                        shared_id,
                        &format!("v{step}"),
                    ));
                }
                (d, must_arrive)
            })
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed * 100 + 99);
    for step in 0..steps {
        let shared_id = rng.gen_range(1..=SHARED_IDS);
        w.backend_step(
            &mut rng,
            &format!("s{seed}-b-{step}"),
            shared_id,
            &format!("v{step}"),
        );
    }
    for t in threads {
        let (d, must_arrive) = t.join().expect("a device's app thread");
        w.devices.push(d);
        w.must_arrive.extend(must_arrive);
    }
    // The second connection's device is checked through the first.
    w.devices.pop();
    w.check_converged(seed);
}

fn run(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = World::new();
    for step in 0..steps {
        w.random_step(&mut rng, seed, step);
    }
    w.check_converged(seed);
}

impl World {
    fn new() -> World {
        let cluster = Cluster::new();
        let primary = cluster.auth_primary("p.db", "user");
        approve_by_data(&primary);
        primary
            .execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, tag TEXT, v TEXT, n INTEGER, row_owner);
                 CREATE TABLE u(x TEXT, row_owner);
                 -- The backend's trigger: a receipt for every row of t, written on primaries.
                 CREATE TABLE receipts(id INTEGER PRIMARY KEY, tag TEXT, row_owner);
                 CREATE TRIGGER receipt AFTER INSERT ON t WHEN this_user() IS NULL BEGIN
                   INSERT INTO receipts(tag, row_owner) VALUES (NEW.tag, NEW.row_owner);
                 END;
                 -- A local table every node keeps for itself.
                 CREATE TABLE seen_here(tag TEXT);
                 CREATE TRIGGER seen AFTER INSERT ON t BEGIN
                   INSERT INTO seen_here VALUES (NEW.tag);
                 END;",
            )
            .unwrap();
        let primary_port = primary.bound_addrs()[0].port();
        let mut w = World {
            cluster,
            primary,
            primary_port,
            devices: Vec::new(),
            must_arrive: BTreeSet::new(),
            restarts: true,
            users: [0, 0],
        };
        let ann = w.join("ann1.db", "PRAGMA user_signup='ann'".into());
        w.join("ann2.db", format!("PRAGMA user_login='user:{ann}'"));
        let bob = w.join("bob1.db", "PRAGMA user_signup='bob'".into());
        w.users = [ann, bob];
        w
    }

    /// A new device that signs up or logs in with `pragma`; returns its user.
    fn join(&mut self, name: &'static str, pragma: String) -> i64 {
        let conn = self.cluster.device(name, &self.primary);
        conn.execute(&pragma, []).unwrap();
        let user = ready(&conn).user_id.expect("an approved device has a user");
        self.devices.push(Device {
            name,
            path: self.cluster.path(name),
            primary_addr: addr_of(&self.primary),
            user,
            conn: Some(conn),
            online: true,
            toggles: true,
        });
        user
    }

    fn random_step(&mut self, rng: &mut StdRng, seed: u64, step: usize) {
        let tag = format!("s{seed}-{step}");
        let shared_id = rng.gen_range(1..=SHARED_IDS);
        let value = format!("v{step}");
        let who = rng.gen_range(0..=self.devices.len());
        if who == self.devices.len() {
            self.backend_step(rng, &tag, shared_id, &value);
            return;
        }
        if let Some(tag) = self.devices[who].random_step(rng, &tag, shared_id, &value) {
            self.must_arrive.insert(tag);
        }
    }

    /// The backend: rows for a user, for everyone, or its own; changes to any row.
    fn backend_step(&mut self, rng: &mut StdRng, tag: &str, shared_id: i64, value: &str) {
        match rng.gen_range(0..100) {
            0..=1 if self.restarts => return self.restart_primary(),
            2 => {
                // A column more: devices get it, with work pending from before it.
                let column = tag.replace('-', "_");
                self.primary
                    .execute_batch(&format!("ALTER TABLE t ADD COLUMN {column} TEXT"))
                    .unwrap();
                self.primary
                    .execute(
                        &format!("UPDATE t SET {column} = ?1 WHERE id = ?2"),
                        (value, shared_id),
                    )
                    .unwrap();
                return;
            }
            3 => {
                // The newest added column goes again, and an index comes or goes.
                let added: Vec<String> = rows(
                    &self.primary,
                    "SELECT name FROM pragma_table_info('t') WHERE name LIKE 's%' ORDER BY cid",
                )
                .into_iter()
                .filter_map(|r| match r.into_iter().next() {
                    Some(Value::Text(name)) => Some(name),
                    _ => None,
                })
                .collect();
                if let Some(column) = added.last() {
                    self.primary
                        .execute_batch(&format!("ALTER TABLE t DROP COLUMN {column}"))
                        .unwrap();
                }
                self.primary
                    .execute_batch(if rng.gen_bool(0.5) {
                        "CREATE INDEX IF NOT EXISTS t_n ON t(n)"
                    } else {
                        "DROP INDEX IF EXISTS t_n"
                    })
                    .unwrap();
                return;
            }
            4 => {
                // A table dropped and made again, with devices' work pending on it.
                self.primary
                    .execute_batch(
                        "BEGIN IMMEDIATE;
                         DROP TABLE u; CREATE TABLE u(x TEXT, row_owner);
                         INSERT INTO u(x, row_owner) VALUES ('fresh', '*');
                         COMMIT;",
                    )
                    .unwrap();
                return;
            }
            _ => {}
        }
        let (ann, bob) = (self.users[0], self.users[1]);
        let owners = [
            Value::Integer(ann),
            Value::Integer(bob),
            Value::Text("*".into()),
            Value::Null,
        ];
        let owner = owners[rng.gen_range(0..owners.len())].clone();
        let p = &self.primary;
        let r = match rng.gen_range(0..5) {
            4 => p
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE;
                     WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 300)
                       INSERT INTO t(tag, v, n, row_owner)
                       SELECT '{tag}-' || i, '{value}', i, CASE i % 3 WHEN 0 THEN '*' ELSE {} END FROM k;
                     UPDATE t SET v = '{value}' WHERE id = {shared_id};
                     COMMIT;",
                    ann
                ))
                .map(|()| 0),
            0 => p.execute(
                "INSERT INTO t(tag, v, n, row_owner) VALUES (?1, ?2, 0, ?3)",
                (tag, value, owner),
            ),
            1 if rng.gen_bool(0.3) => p.execute(
                "INSERT OR REPLACE INTO t(id, tag, v, n, row_owner) VALUES (?1, ?2, ?3, 0, ?4)",
                (shared_id, tag, value, owner),
            ),
            1 => p.execute(
                "INSERT OR IGNORE INTO t(id, tag, v, n, row_owner) VALUES (?1, ?2, ?3, 0, ?4)",
                (shared_id, tag, value, owner),
            ),
            2 => p.execute(
                "UPDATE t SET v = ?1, n = n + 1 WHERE id = ?2",
                (value, shared_id),
            ),
            _ => p.execute("DELETE FROM t WHERE id = ?1", [shared_id]),
        };
        r.unwrap();
    }

    /// The backend's process stops and starts again on the same port.
    fn restart_primary(&mut self) {
        let path = self.cluster.path("p.db");
        // Dropping the connection closes the node: its file and port are free again.
        self.primary = Connection::open("file::memory:").unwrap();
        self.primary = Connection::open(&format!(
            "{}&auth=user",
            primary_uri(&path, self.primary_port)
        ))
        .expect("the primary reopens on its port");
        approve_by_data(&self.primary);
    }

    fn check_converged(&mut self, seed: u64) {
        for d in &mut self.devices {
            if !d.online {
                d.toggle_online();
            }
        }
        for d in &self.devices {
            let c = d.conn.as_ref().expect("open");
            wait_outbox_empty(c);
        }
        // Every outbox is empty, so the primary's log is final; each device catches up to it.
        let last = self.primary.sync_status().unwrap().last_seq;
        for d in &self.devices {
            let c = d.conn.as_ref().expect("open");
            if let Err(e) = c.wait_for(DEADLINE, |s| s.last_seq >= last) {
                panic!(
                    "seed {seed}: device {} did not reach the primary's position {last}: {e}; \
                     primary's feed at {}, its status {:?}",
                    d.name,
                    self.primary.feed_position(),
                    self.primary.sync_status()
                );
            }
        }
        for d in &self.devices {
            let c = d.conn.as_ref().expect("open");
            for table in ["t", "u", "receipts"] {
                let visible = format!(
                    "SELECT rowid, * FROM {table} WHERE row_owner = {} OR row_owner = '*' ORDER BY rowid",
                    d.user
                );
                let (here, there) = (rows(c, &visible), rows(&self.primary, &visible));
                if here != there {
                    // A few rows of each side that the other lacks (a search per row: only
                    // when they differ).
                    let only_here: Vec<_> =
                        here.iter().filter(|r| !there.contains(r)).take(5).collect();
                    let only_there: Vec<_> =
                        there.iter().filter(|r| !here.contains(r)).take(5).collect();
                    panic!(
                        "seed {seed}: device {} differs from the primary in `{table}`:\n  only on the device: {only_here:?}\n  only on the primary: {only_there:?}",
                        d.name
                    );
                }
                let foreign = format!(
                    "SELECT count(*) FROM {table} WHERE row_owner IS NOT NULL
                       AND row_owner <> '*' AND row_owner <> {}",
                    d.user
                );
                assert_eq!(
                    count(c, &foreign),
                    0,
                    "seed {seed}: {} holds another user's rows",
                    d.name
                );
            }
        }
        assert_eq!(
            count(
                &self.primary,
                // (A device's REPLACE of its own row reaches the primary as the row's update:
                // a transaction carries each row's net change.)
                "SELECT count(*) FROM t WHERE tag NOT IN (SELECT tag FROM receipts)
                   AND tag NOT LIKE '%-r'"
            ),
            0,
            "seed {seed}: a row of t on the primary has no receipt from its trigger"
        );
        let at_primary = tags(&self.primary, "SELECT tag FROM t");
        for d in &self.devices {
            let local = tags(
                d.conn.as_ref().expect("open"),
                "SELECT tag FROM t WHERE row_owner IS NULL",
            );
            let left: Vec<_> = local.intersection(&at_primary).collect();
            assert!(
                left.is_empty(),
                "seed {seed}: local rows of {} reached the primary: {left:?}",
                d.name
            );
        }
        let lost: Vec<_> = self.must_arrive.difference(&at_primary).collect();
        assert!(
            lost.is_empty(),
            "seed {seed}: rows committed on devices never arrived: {lost:?}"
        );
        assert!(
            !self.must_arrive.is_empty(),
            "seed {seed}: the run made no device inserts to check"
        );
    }
}

impl Device {
    /// One random step of this device's app; the tag of a row that must reach the primary
    /// (one inserted alone, with an id SQLite picked), if it made one.
    fn random_step(
        &mut self,
        rng: &mut StdRng,
        tag: &str,
        shared_id: i64,
        value: &str,
    ) -> Option<String> {
        let roll = rng.gen_range(0..100);
        if roll < 6 {
            if self.toggles {
                self.toggle_online();
            }
            return None;
        }
        let mut must_arrive = None;
        let c = self.conn.as_mut().expect("a device is always open");
        let outcome = match roll {
            // A row whose id SQLite picks, in a transaction of its own.
            6..=30 => {
                let r = c.execute(
                    "INSERT INTO t(tag, v, n) VALUES (?1, ?2, 0)",
                    (tag, value),
                );
                if r.is_ok() {
                    must_arrive = Some(tag.to_string());
                }
                r.map(drop)
            }
            31..=45 => c
                .execute(
                    "INSERT INTO t(id, tag, v, n) VALUES (?1, ?2, ?3, 0)",
                    (shared_id, tag, value),
                )
                .map(drop),
            46..=65 => c
                .execute(
                    "UPDATE t SET v = ?1, n = n + 1 WHERE id = ?2 OR tag = (SELECT max(tag) FROM t)",
                    (value, shared_id),
                )
                .map(drop),
            66..=72 => c
                .execute("DELETE FROM t WHERE id = ?1", [shared_id])
                .map(drop),
            73..=78 => c
                .execute("INSERT INTO u(x) VALUES (?1)", [tag])
                .map(drop),
            // A local row, which stays on the device until it is made a row of the user.
            79..=81 => c
                .execute(
                    "INSERT INTO t(tag, v, n, row_owner) VALUES (?1, ?2, 0, NULL)",
                    (tag, value),
                )
                .map(drop),
            // A bigger transaction: more rows than one statement of the outbox's bookkeeping
            // takes, and updates of rows it inserted.
            84..=85 => c.execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 150)
                   INSERT INTO t(tag, v, n) SELECT '{tag}-' || i, '{value}', i FROM k;
                 UPDATE t SET n = n * 2 WHERE tag LIKE '{tag}-%' AND n % 3 = 0;
                 DELETE FROM t WHERE tag LIKE '{tag}-%' AND n % 5 = 0;
                 COMMIT;"
            )),
            86..=87 => c
                .execute(
                    "INSERT OR REPLACE INTO t(id, tag, v, n) VALUES (?1, ?2 || '-r', ?3, 0)",
                    (shared_id, tag, value),
                )
                .map(drop),
            88..=89 => c
                .execute(
                    "INSERT INTO t(id, tag, v, n) VALUES (?1, ?2, ?3, 0)
                     ON CONFLICT(id) DO UPDATE SET v = excluded.v, n = n + 1",
                    (shared_id, tag, value),
                )
                .map(drop),
            82..=83 => c
                .execute(
                    "UPDATE t SET row_owner = this_user()
                     WHERE rowid = (SELECT min(rowid) FROM t WHERE row_owner IS NULL)",
                    [],
                )
                .map(drop),
            // Several statements in one transaction, one of them undone by a savepoint;
            // an explicit id inside can get the whole transaction rejected.
            _ => {
                let other = rng.gen_range(1..=SHARED_IDS);
                let stmts = [
                    "BEGIN".to_string(),
                    format!("INSERT INTO t(tag, v, n) VALUES ('{tag}-a', '{value}', 0)"),
                    "SAVEPOINT s".into(),
                    format!("INSERT INTO t(tag, v, n) VALUES ('{tag}-undone', '{value}', 0)"),
                    format!("UPDATE t SET n = n + 100 WHERE id = {shared_id}"),
                    "ROLLBACK TO s".into(),
                    "RELEASE s".into(),
                    format!("UPDATE t SET n = n + 1 WHERE id = {shared_id}"),
                    format!("INSERT OR IGNORE INTO t(id, tag, v, n) VALUES ({other}, '{tag}-b', '{value}', 0)"),
                    "COMMIT".into(),
                ];
                let mut r = Ok(());
                for s in &stmts {
                    if let Err(e) = c.execute_batch(s) {
                        r = Err(octodb::Error::rule(format!("{s}: {e}")));
                        break;
                    }
                }
                r
            }
        };
        if let Err(e) = outcome {
            // The app's own mistakes (a taken id) fail the statement; nothing else may.
            assert!(
                e.to_string().contains("UNIQUE"),
                "step {tag} (roll {roll}) on {}: {e}",
                self.name
            );
            if !c.is_autocommit() {
                c.execute_batch("ROLLBACK").unwrap();
            }
        }
        must_arrive
    }

    /// Offline: reopened pointing at a port where nothing listens. Online: reopened on the
    /// primary's address.
    fn toggle_online(&mut self) {
        drop(self.conn.take());
        let addr = if self.online {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        } else {
            self.primary_addr.clone()
        };
        self.online = !self.online;
        self.conn = Some(Connection::open(&device_uri(&self.path, &addr)).unwrap());
    }
}

fn tags(c: &Connection, sql: &str) -> BTreeSet<String> {
    rows(c, sql)
        .into_iter()
        .filter_map(|r| match r.into_iter().next() {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        })
        .collect()
}

fn rows(c: &Connection, sql: &str) -> Vec<Vec<Value>> {
    c.query(sql, [])
        .unwrap()
        .iter()
        .map(|r| r.values().to_vec())
        .collect()
}

/// More seeds, longer runs, for hunting: `HUNT_FROM=200 cargo test --release --test
/// convergence -- --ignored` runs seeds 200 to 207, 3,000 steps each, and with each seed all
/// actors at once, 1,000 steps each.
#[test]
#[ignore]
fn more_seeds() {
    let from: u64 = std::env::var("HUNT_FROM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for seed in from..from + 8 {
        run(seed, 3000);
        run_concurrently(seed, 1000);
    }
}
