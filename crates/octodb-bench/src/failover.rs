//! Fail-over: three primaries in this process on loopback, with real files, and a device that
//! names only the first of them. Measured beside SQLite's own FULL commit in the same run:
//! - the leader's app commit, which returns once a majority of the three hold it;
//! - from that commit's start until a follower's change feed shows it (replication);
//! - from the leader's loss (its node closed: its sockets close, as a kill -9's would) until
//!   the device's next transaction is accepted by the new leader, in several rounds (the lost
//!   primary comes back as a follower between rounds).

use crate::baseline::{self, Sync};
use crate::cluster::bench_dir;
use crate::report::{percentile, Better, Figure};
use anyhow::{bail, Context, Result};
use octodb::Connection;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

pub fn run(samples: usize, rounds: usize) -> Result<Vec<Figure>> {
    let sqlite = baseline::commit_latencies(Sync::Full, samples, 64)?;
    let sqlite_p50 = percentile(&sqlite, 0.5);
    let dir = tempfile::Builder::new()
        .prefix("octodb-bench-failover")
        .tempdir_in(bench_dir()?)?;
    let ports = [free_port()?, free_port()?, free_port()?];
    let uri = |i: usize, connect: bool| {
        let mut uri = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:{}",
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
    p0.wait_for(WAIT, |s| {
        s.cluster
            .as_ref()
            .is_some_and(|c| c.members.iter().filter(|m| m.voter).count() == 3)
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

    // Fail-over rounds.
    let device = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{}",
        dir.path().join("d.db").display(),
        ports[0]
    ))?;
    device.wait_until_ready(WAIT)?;
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
    let median_failover = percentile(&failovers, 0.5);
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
    let visible_p50 = percentile(&visible, 0.5);
    Ok(vec![
        latency(
            "leader's app commit confirmed by 3 primaries, p50",
            percentile(&commits, 0.5),
            "- (informative)",
            true,
            format!(
                "p99 {:.2} ms, {samples} commits",
                percentile(&commits, 0.99)
            ),
        ),
        latency(
            "leader's commit visible in a follower's change feed, p50",
            visible_p50,
            "<= 3 ms (device A to device B on another primary)",
            visible_p50 <= 3.0,
            format!(
                "p99 {:.2} ms; measured primary to primary (followers do not serve devices yet)",
                percentile(&visible, 0.99)
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
