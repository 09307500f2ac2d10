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
            notes: String::new(),
        }
    };
    Ok(vec![fig(50.0, 1.0), fig(99.0, 5.0)])
}
