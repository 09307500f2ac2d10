//! A randomized fault run across processes: a primary and several devices, each a process of
//! its own (this test binary, started again in a child role), each device behind a proxy the
//! test controls. While the devices write and the primary publishes rows for everyone, the run
//! kills any process with SIGKILL and starts it again, stops the primary (SIGSTOP) and lets it
//! go on, resets connections, cuts them silently and slows them down.
//!
//! The checks, after every fault is healed (in the manner of jepsen-powersync's):
//! - every transaction a device committed is on the primary exactly once (none is rejected
//!   here: every row is new and the device's own);
//! - every device ends with exactly the rows its user may see: its own and the public ones;
//! - what a device has seen of the public rows only grows, across its restarts too;
//! - nothing a device wrote is lost from it.
//!
//! CI runs one short seed; more and longer: `FAULT_SEEDS=1-20 FAULT_STEPS=200 cargo test
//! --release --test fault_suite -- --ignored`.

mod common;

use common::process::{free_port, Process, ANSWER, MARK, ROLE, URI};
use common::proxy::Proxy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEVICES: usize = 3;

// ---------------------------------------------------------------------------------------------
// The child processes

/// Not a test of its own: the body of a child process when the suite starts this binary in a
/// role. Run directly, it returns at once.
#[test]
fn child_process() {
    let (Ok(role), Ok(uri)) = (std::env::var(ROLE), std::env::var(URI)) else {
        return;
    };
    common::init_tracing();
    let db = octodb::Connection::open(&uri).expect("open the node");
    if role == "primary" {
        db.execute(
            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, tag TEXT UNIQUE, row_owner)",
            [],
        )
        .expect("create table");
    } else {
        db.wait_until_ready(ANSWER).expect("device ready");
    }
    let mut out = std::io::stdout();
    writeln!(out, "{MARK}ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("a command");
        let answer = match line.split_once(' ') {
            // Device: commit one row of its user; the answer comes once the commit returned.
            Some(("write", tag)) => db
                .execute("INSERT INTO t(tag) VALUES (?1)", [tag])
                .map(|_| format!("ok {tag}")),
            // Primary: one row for everyone.
            Some(("public", tag)) => db
                .execute("INSERT INTO t(tag, row_owner) VALUES (?1, '*')", [tag])
                .map(|_| format!("ok {tag}")),
            _ if line == "rows" => db.query("SELECT tag, row_owner FROM t", []).map(|rows| {
                let rows: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        let owner = match r.get::<octodb::Value>(1) {
                            Ok(octodb::Value::Text(s)) => s,
                            Ok(octodb::Value::Integer(u)) => u.to_string(),
                            _ => "null".into(),
                        };
                        format!("{}={owner}", r.get::<String>(0).unwrap_or_default())
                    })
                    .collect();
                format!("rows {}", rows.join(","))
            }),
            _ if line == "status" => db.sync_status().map(|s| {
                format!(
                    "status {} {} {} {} {}",
                    s.outbox_len,
                    s.last_seq,
                    s.user_id.unwrap_or(0),
                    s.connected,
                    s.sync_error.unwrap_or_default()
                )
            }),
            _ => Ok(format!("unknown command {line}")),
        };
        let answer = answer.unwrap_or_else(|e| format!("error {e}"));
        writeln!(out, "{MARK}{}", answer.replace('\n', " ")).unwrap();
        out.flush().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Device {
    proxy: Proxy,
    uri: String,
    process: Option<Process>,
    /// Every tag this device committed.
    committed: BTreeSet<String>,
    /// The public tags it has seen so far.
    public_seen: BTreeSet<String>,
}

struct Run {
    rng: StdRng,
    primary_uri: String,
    primary: Option<Process>,
    stopped: bool,
    devices: Vec<Device>,
    next_tag: usize,
    published: BTreeSet<String>,
}

impl Run {
    fn new(dir: &Path, seed: u64) -> Run {
        let port = free_port();
        let primary_uri = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:{port}",
            dir.join("p.db").display()
        );
        let primary = Process::start("primary", &primary_uri);
        let devices = (0..DEVICES)
            .map(|i| {
                let proxy = Proxy::start(&format!("127.0.0.1:{port}"));
                let path: PathBuf = dir.join(format!("d{i}.db"));
                let uri = format!(
                    "file:{}?node=secondary&connect=tcp://{}&heartbeat=1",
                    path.display(),
                    proxy.addr
                );
                let process = Some(Process::start("device", &uri));
                Device {
                    proxy,
                    uri,
                    process,
                    committed: BTreeSet::new(),
                    public_seen: BTreeSet::new(),
                }
            })
            .collect();
        Run {
            rng: StdRng::seed_from_u64(seed),
            primary_uri,
            primary: Some(primary),
            stopped: false,
            devices,
            next_tag: 0,
            published: BTreeSet::new(),
        }
    }

    fn tag(&mut self, prefix: &str) -> String {
        self.next_tag += 1;
        format!("{prefix}{}", self.next_tag)
    }

    fn step(&mut self) {
        let d = self.rng.gen_range(0..DEVICES);
        match self.rng.gen_range(0..100) {
            // Writes, most of the time.
            0..=44 => {
                let tag = self.tag(&format!("d{d}-"));
                if let Some(p) = self.devices[d].process.as_mut() {
                    let answer = p.ask(&format!("write {tag}"), "ok");
                    assert_eq!(answer, format!("ok {tag}"), "device {d} commits locally");
                    self.devices[d].committed.insert(tag);
                }
            }
            45..=54 if !self.stopped => {
                let tag = self.tag("pub-");
                if let Some(p) = self.primary.as_mut() {
                    if p.ask(&format!("public {tag}"), "ok") == format!("ok {tag}") {
                        self.published.insert(tag);
                    }
                }
            }
            55..=62 => self.check_public_grows(d),
            63..=67 => {
                if let Some(p) = self.devices[d].process.take() {
                    p.kill();
                }
                let uri = self.devices[d].uri.clone();
                self.devices[d].process = Some(Process::start("device", &uri));
            }
            68..=71 if !self.stopped => {
                if let Some(p) = self.primary.take() {
                    p.kill();
                }
                self.primary = Some(Process::start("primary", &self.primary_uri));
            }
            72..=76 => {
                if let Some(p) = &self.primary {
                    match self.stopped {
                        false => p.signal("-STOP"),
                        true => p.signal("-CONT"),
                    }
                    self.stopped = !self.stopped;
                }
            }
            77..=83 => self.devices[d].proxy.reset(),
            84..=89 => self.devices[d].proxy.swallow(),
            90..=94 => self.devices[d].proxy.pass(),
            95..=97 => self.devices[d]
                .proxy
                .slow(Duration::from_millis(self.rng.gen_range(1..40))),
            _ => self.devices[d].proxy.slow(Duration::ZERO),
        }
        std::thread::sleep(Duration::from_millis(self.rng.gen_range(0..60)));
    }

    /// What device `d` has seen of the public rows never shrinks.
    fn check_public_grows(&mut self, d: usize) {
        let Some(p) = self.devices[d].process.as_mut() else {
            return;
        };
        let rows = parse_rows(&p.ask("rows", "rows"));
        let public: BTreeSet<String> = rows
            .iter()
            .filter(|(_, owner)| owner.as_str() == "*")
            .map(|(tag, _)| tag.clone())
            .collect();
        let lost: Vec<_> = self.devices[d].public_seen.difference(&public).collect();
        assert!(
            lost.is_empty(),
            "device {d} no longer sees public rows {lost:?}"
        );
        self.devices[d].public_seen = public;
    }

    fn heal(&mut self) {
        if self.stopped {
            if let Some(p) = &self.primary {
                p.signal("-CONT");
            }
            self.stopped = false;
        }
        for d in &mut self.devices {
            d.proxy.slow(Duration::ZERO);
            d.proxy.pass();
        }
    }

    /// Waits until every device has sent everything and received everything, then checks.
    fn converge_and_check(&mut self) {
        let end = Instant::now() + Duration::from_secs(120);
        let primary_rows = loop {
            let primary = self.primary.as_mut().unwrap();
            let rows = parse_rows(&primary.ask("rows", "rows"));
            let primary_status = primary.ask("status", "status");
            let mut settled = true;
            let mut report = vec![format!("primary: {} rows, {primary_status}", rows.len())];
            for d in &mut self.devices {
                let p = d.process.as_mut().unwrap();
                let status = p.ask("status", "status");
                let words: Vec<&str> = status.split(' ').collect();
                let (outbox, user) = (words[1], words[3]);
                let expected = rows
                    .iter()
                    .filter(|(_, owner)| owner == "*" || owner == user)
                    .count();
                let has = parse_rows(&p.ask("rows", "rows")).len();
                settled &= outbox == "0" && has == expected;
                report.push(format!("device: {has} of {expected} rows, {status}"));
            }
            if settled {
                break rows;
            }
            assert!(
                Instant::now() < end,
                "the nodes did not converge within 120 s after healing:\n{}",
                report.join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut on_primary: BTreeMap<&str, usize> = BTreeMap::new();
        for (tag, _) in &primary_rows {
            *on_primary.entry(tag.as_str()).or_default() += 1;
        }
        for (i, d) in self.devices.iter_mut().enumerate() {
            for tag in &d.committed {
                assert_eq!(
                    on_primary.get(tag.as_str()),
                    Some(&1),
                    "device {i}'s committed row {tag} is on the primary exactly once"
                );
            }
            let p = d.process.as_mut().unwrap();
            let user = p
                .ask("status", "status")
                .split(' ')
                .nth(3)
                .unwrap()
                .to_string();
            let mut mine = parse_rows(&p.ask("rows", "rows"));
            let mut visible: Vec<_> = primary_rows
                .iter()
                .filter(|(_, owner)| owner == "*" || *owner == user)
                .cloned()
                .collect();
            mine.sort();
            visible.sort();
            assert_eq!(
                mine, visible,
                "device {i} holds exactly what its user may see"
            );
            let own: BTreeSet<String> = mine
                .iter()
                .filter(|(_, owner)| *owner == user)
                .map(|(tag, _)| tag.clone())
                .collect();
            assert!(
                own.is_superset(&d.committed),
                "device {i} lost none of its rows"
            );
        }
        for tag in &self.published {
            assert_eq!(on_primary.get(tag.as_str()), Some(&1), "public row {tag}");
        }
        for d in 0..DEVICES {
            self.check_public_grows(d);
        }
    }
}

fn parse_rows(line: &str) -> Vec<(String, String)> {
    let body = line
        .strip_prefix("rows ")
        .or_else(|| line.strip_prefix("rows"))
        .unwrap_or_else(|| panic!("not a row list: {line}"));
    body.split(',')
        .filter(|s| !s.is_empty())
        .map(|r| {
            let (tag, owner) = r.split_once('=').expect("tag=owner");
            (tag.to_string(), owner.to_string())
        })
        .collect()
}

fn run_seed(seed: u64, steps: usize) {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(dir.path(), seed);
    for _ in 0..steps {
        run.step();
    }
    run.heal();
    run.converge_and_check();
    eprintln!(
        "seed {seed}: {steps} steps, {} rows committed by devices, {} public",
        run.devices.iter().map(|d| d.committed.len()).sum::<usize>(),
        run.published.len()
    );
}

#[test]
fn faults_across_processes_lose_nothing_and_converge() {
    run_seed(1, 60);
}

#[test]
#[ignore = "a longer hunt: FAULT_SEEDS=1-20 FAULT_STEPS=200"]
fn faults_across_processes_hunt() {
    let seeds = std::env::var("FAULT_SEEDS").unwrap_or_else(|_| "1-8".into());
    let (from, to) = seeds
        .split_once('-')
        .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
        .unwrap_or_else(|| (seeds.parse().unwrap(), seeds.parse().unwrap()));
    let steps = std::env::var("FAULT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in from..=to {
        run_seed(seed, steps);
    }
}
