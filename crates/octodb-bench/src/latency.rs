//! Latency: a single-row transaction on device A until it is visible on device B of the same
//! user, one at a time on an otherwise idle machine.

use crate::baseline::{self, Sync, INSERT, ITEMS};
use crate::cluster::{next_event, payload, Cluster, DEADLINE};
use crate::report::{percentile, Better, Figure};
use anyhow::Result;
use octodb::Event;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 64;

pub fn run(samples: usize) -> Result<Vec<Figure>> {
    let cluster = Cluster::new(ITEMS)?;
    let (a, user) = cluster.signup("a")?;
    let b = cluster.login("b", user)?;
    let mut events = b.subscribe();
    let mut ms = Vec::with_capacity(samples);
    for i in 0..(samples + samples / 10) as u64 {
        while events.try_recv().is_ok() {}
        let t = Instant::now();
        a.execute(
            INSERT,
            rusqlite::params![i as i64, payload(i, PAYLOAD), user],
        )?;
        let end = Instant::now() + DEADLINE;
        while !matches!(
            next_event(&mut events, end)?,
            Some(Event::DataReceived { .. })
        ) {}
        // The first tenth warms up connections, caches and statement caches.
        if i as usize >= samples / 10 {
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        // Idle between samples, as the scenario asks.
        std::thread::sleep(Duration::from_millis(2));
    }
    ms.sort_by(f64::total_cmp);
    let local = baseline::commit_latencies(Sync::Full, samples, PAYLOAD)?;
    let fig = |p: f64, target_ms: f64| {
        let v = percentile(&ms, p);
        Figure {
            scenario: "latency",
            metric: format!("p{p} device A commit -> visible on B ({samples} samples)"),
            octodb: v,
            unit: "ms",
            sqlite: Some(percentile(&local, p)),
            sqlite_setup: format!("{}, p{p} of a local commit", Sync::Full.describe()),
            better: Better::Lower,
            target: format!("<= {target_ms} ms"),
            met: v <= target_ms,
            spread: None,
            notes: String::new(),
        }
    };
    Ok(vec![fig(50.0, 1.0), fig(99.0, 5.0)])
}

/// Child: latency of a primary's row until it is on a device whose app meanwhile commits a
/// transaction of 100 rows every 5 ms (~15k rows/s, well under what the device can send), or
/// with `unpaced` one after another: the device's engine competes with the app for the
/// file's write lock.
pub fn under_local_writes(samples: usize, unpaced: bool) -> Result<()> {
    let cluster = Cluster::new(ITEMS)?;
    let (a, user) = cluster.signup("a")?;
    let mut events = a.subscribe();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_stop = stop.clone();
    let path = cluster.path("a");
    let uri = crate::cluster::device_uri(&path, &cluster.addr);
    let writer = std::thread::spawn(move || -> Result<u64> {
        let mut app = octodb::Connection::open(&uri)?;
        let mut n = 0u64;
        while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            crate::cluster::fill(&mut app, 100, 100, PAYLOAD, user)?;
            n += 100;
            if !unpaced {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(n)
    });
    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples as i64 {
        while events.try_recv().is_ok() {}
        let t = Instant::now();
        cluster.primary.execute(
            "INSERT INTO items(n, payload, row_owner) VALUES (?1, 'from the primary', '*')",
            rusqlite::params![-1 - i],
        )?;
        let end = Instant::now() + DEADLINE;
        loop {
            let c: i64 = a.query_row(
                "SELECT count(*) FROM items WHERE n = ?1",
                rusqlite::params![-1 - i],
                |r| r.get(0),
            )?;
            if c == 1 {
                break;
            }
            let _ = next_event(&mut events, end)?;
        }
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rows = match writer.join() {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the writing thread panicked"),
    };
    ms.sort_by(f64::total_cmp);
    crate::procs::say(&format!(
        "primary row -> device while its app writes ({rows} rows written): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(0.0)
    ));
    Ok(())
}
