//! Fail-over: three primaries in this process on loopback, with real files, and a device that
//! names only the first of them. Measured beside SQLite's own FULL commit in the same run:
//! - the leader's app commit, which returns once a majority of the three hold it;
//! - from that commit's start until a follower's change feed shows it (replication);
//! - from a device's commit on the leader until another device of its user, served by a
//!   follower, has the row;
//! - from the leader's loss (its node closed: its sockets close, as a kill -9's would) until
//!   the device's next transaction is accepted by the new leader, in several rounds (the lost
//!   primary comes back as a follower between rounds).

use crate::baseline::{self, Sync};
use crate::cluster::{approve, bench_dir};
use crate::report::{percentile, Better, Figure};
use anyhow::{bail, Context, Result};
use octodb::auth::Action;
use octodb::Connection;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

pub fn run(samples: usize, rounds: usize) -> Result<Vec<Figure>> {
    let sqlite = baseline::commit_latencies(Sync::Full, samples, 64)?;
    let sqlite_p50 = percentile(&sqlite, 50.0);
    let dir = tempfile::Builder::new()
        .prefix("octodb-bench-failover")
        .tempdir_in(bench_dir()?)?;
    let ports = [free_port()?, free_port()?, free_port()?];
    let uri = |i: usize, connect: bool| {
        let mut uri = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:{}&auth=user",
            dir.path().join(format!("p{i}.db")).display(),
            ports[i]
        );
        if connect && i > 0 {
            uri.push_str(&format!("&connect=tcp://127.0.0.1:{}", ports[0]));
        }
        uri
    };
    let p0 = Connection::open(&uri(0, false))?;
    p0.execute(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, row_owner)",
        [],
    )?;
    let (p1, p2) = (
        Connection::open(&uri(1, true))?,
        Connection::open(&uri(2, true))?,
    );
    // Users sign up and log in with the backend's callbacks, on every primary (whichever
    // leads); the other two primaries are approved as such.
    for p in [&p0, &p1, &p2] {
        p.set_auth_callback(Action::UserSignup, approve)?;
        p.set_auth_callback(Action::UserLogin, approve)?;
    }
    for p in [&p1, &p2] {
        p0.execute(
            &format!("PRAGMA preauthorize_node='{}:primary'", p.public_key()),
            [],
        )?;
    }
    p0.wait_for(WAIT, |s| {
        s.cluster
            .as_ref()
            .is_some_and(|c| c.settled_voters() == Some(3))
    })?;
    let mut primaries = vec![Some(p0), Some(p1), Some(p2)];
    let first = primaries[0].as_ref().context("the first primary")?;

    // Commit on the leader, and the moment a follower's feed shows it.
    let (mut commits, mut visible) = (Vec::new(), Vec::new());
    let follower = primaries[1].as_ref().context("a follower")?;
    for i in 0..samples {
        let before = follower.feed_position();
        let start = Instant::now();
        first.execute(
            "INSERT INTO t(v, row_owner) VALUES (?1, '*')",
            [format!("sample {i}")],
        )?;
        commits.push(start.elapsed().as_secs_f64() * 1e3);
        if follower.wait_feed(before, WAIT) <= before {
            bail!("the follower never showed sample {i}");
        }
        visible.push(start.elapsed().as_secs_f64() * 1e3);
    }
    commits.sort_by(f64::total_cmp);
    visible.sort_by(f64::total_cmp);
    let _ = (first, follower);

    // Device A on the leader, device B of the same user on a follower.
    let device_at = |name: &str, port: u16| {
        Connection::open(&format!(
            "file:{}?node=secondary&connect=tcp://127.0.0.1:{port}",
            dir.path().join(name).display(),
        ))
    };
    let device = device_at("d.db", ports[0])?;
    device.execute("PRAGMA user_signup='a'", [])?;
    let user = device
        .wait_until_ready(WAIT)?
        .user_id
        .context("device A's user")?;
    let across = across_primaries(samples, &device, user, || device_at("b.db", ports[1]))?;
    device.wait_for(WAIT, |s| s.primaries.len() == 3)?;
    let (mut failovers, mut closing, mut elections) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        device.execute("INSERT INTO t(v) VALUES (?1)", [format!("before {round}")])?;
        device.wait_for(WAIT, |s| s.outbox_len == 0)?;
        let leader = leader_of(&primaries).context("a leader")?;
        let start = Instant::now();
        drop(primaries[leader].take());
        closing.push(start.elapsed().as_secs_f64());
        device.execute("INSERT INTO t(v) VALUES (?1)", [format!("after {round}")])?;
        let deadline = Instant::now() + WAIT;
        while leader_of(&primaries).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        elections.push(start.elapsed().as_secs_f64());
        device.wait_for(WAIT, |s| s.outbox_len == 0)?;
        failovers.push(start.elapsed().as_secs_f64());
        // The lost primary comes back (as a follower) before the next round.
        primaries[leader] = Some(Connection::open(&uri(leader, false))?);
        wait_all_voters(&primaries)?;
    }
    failovers.sort_by(f64::total_cmp);
    let median_failover = percentile(&failovers, 50.0);
    let worst_failover = failovers.last().copied().unwrap_or(0.0);

    let setup = format!("{}, single-row commit p50", Sync::Full.describe());
    let latency = |metric: &str, value: f64, target: &str, met: bool, notes: String| Figure {
        scenario: "failover",
        metric: metric.into(),
        octodb: value,
        unit: "ms",
        sqlite: Some(sqlite_p50),
        sqlite_setup: setup.clone(),
        better: Better::Lower,
        target: target.into(),
        met,
        spread: None,
        notes,
    };
    let visible_p50 = percentile(&visible, 50.0);
    Ok(vec![
        latency(
            "leader's app commit confirmed by 3 primaries, p50",
            percentile(&commits, 50.0),
            "- (informative)",
            true,
            format!(
                "p99 {:.2} ms, {samples} commits",
                percentile(&commits, 99.0)
            ),
        ),
        latency(
            "leader's commit visible in a follower's change feed, p50",
            visible_p50,
            "- (informative)",
            true,
            format!("p99 {:.2} ms", percentile(&visible, 99.0)),
        ),
        latency(
            "device A (on the leader) commit -> visible on device B (on a follower), p50",
            percentile(&across, 50.0),
            "<= 3 ms",
            percentile(&across, 50.0) <= 3.0,
            format!(
                "p99 {:.2} ms, {} samples, one at a time, 2 ms apart",
                percentile(&across, 99.0),
                across.len()
            ),
        ),
        Figure {
            scenario: "failover",
            metric: "leader lost until a device's next transaction is accepted, median".into(),
            octodb: median_failover,
            unit: "s",
            sqlite: None,
            sqlite_setup: "- (SQLite has no fail-over)".into(),
            better: Better::Lower,
            target: "<= 3 s".into(),
            met: worst_failover <= 3.0,
            spread: None,
            notes: format!(
                "{rounds} rounds, worst {worst_failover:.2} s; a new leader after {:.2} s at \
                 most (closing the old one's node in-process: {:.2} s at most); the device \
                 named only the first primary in connect=",
                elections.iter().copied().fold(0.0, f64::max),
                closing.iter().copied().fold(0.0, f64::max)
            ),
        },
    ])
}

fn leader_of(primaries: &[Option<Connection>]) -> Option<usize> {
    primaries.iter().position(|p| {
        p.as_ref()
            .and_then(|p| p.sync_status().ok())
            .and_then(|s| s.cluster)
            .is_some_and(|c| c.role == "leader")
    })
}

/// Until a leader sees three voters and every primary holds its log.
fn wait_all_voters(primaries: &[Option<Connection>]) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(i) = leader_of(primaries) {
            let status = primaries[i].as_ref().context("the leader")?.sync_status()?;
            let cluster = status.cluster.context("a cluster")?;
            let caught_up = cluster
                .members
                .iter()
                .all(|m| m.voter && m.lag.unwrap_or(0) == 0);
            if cluster.members.len() == 3 && caught_up {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the lost primary did not come back within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Device B of `user` served by a follower (`open_b`; it signs up at the leader, then is
/// opened again to stay on the follower): `samples` single-row commits on `a`, one at a
/// time, each timed until B has it. The times in ms, sorted.
fn across_primaries(
    samples: usize,
    a: &Connection,
    user: i64,
    open_b: impl Fn() -> Result<Connection, octodb::Error>,
) -> Result<Vec<f64>> {
    let b = open_b()?;
    b.execute(&format!("PRAGMA user_login='user:{user}'"), [])?;
    b.wait_until_ready(WAIT)?;
    drop(b);
    // (Closed in the background: the next open waits for the file's lock.)
    let deadline = Instant::now() + WAIT;
    let b = loop {
        match open_b() {
            Ok(b) => break b,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.into()),
        }
    };
    b.wait_until_ready(WAIT)?;
    let on_follower = b.wait_for(WAIT, |s| s.connected);
    if !on_follower.is_ok_and(|s| s.peers.len() == 1) {
        bail!("device B did not connect to the follower");
    }
    let mut events = b.subscribe();
    let mut ms = Vec::with_capacity(samples);
    for i in 0..(samples + samples / 10) {
        while events.try_recv().is_ok() {}
        let start = Instant::now();
        a.execute("INSERT INTO t(v) VALUES (?1)", [format!("across {i}")])?;
        let end = Instant::now() + WAIT;
        while !matches!(
            crate::cluster::next_event(&mut events, end)?,
            Some(octodb::Event::DataReceived { .. })
        ) {}
        // The first tenth warms connections and caches up.
        if i >= samples / 10 {
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}
