//! The machine's state beside a run's figures: the disk's fsync time in the directory the
//! benchmarks write to, and the load. This VM's fsync time drifts by a third within minutes and
//! other work shares its cores, so two runs compare only with these printed beside them.

use crate::cluster::bench_dir;
use crate::report::percentile;
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

/// Writes measured per fsync figure: enough for a p99 that is not a single sample.
pub const FSYNC_SAMPLES: usize = 200;
/// What each write appends: one page, as a one-row commit appends one WAL frame.
const BLOCK: usize = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct Conditions {
    /// None where it could not be measured (printed "unknown").
    pub fsync_p50_ms: Option<f64>,
    pub fsync_p99_ms: Option<f64>,
    /// The 1-minute load average, from /proc/loadavg.
    pub load_1min: Option<f64>,
    /// The CPUs this process may run on.
    pub cpus: Option<usize>,
}

impl Conditions {
    /// Measures them now (a fraction of a second: the fsyncs). Never fails: what cannot be read
    /// stays unknown, as a run's figures matter more than its header.
    pub fn measure() -> Conditions {
        let fsync = fsync_ms(FSYNC_SAMPLES)
            .map_err(|e| eprintln!("  fsync time unknown: {e:#}"))
            .ok();
        Conditions {
            fsync_p50_ms: fsync.as_ref().map(|ms| percentile(ms, 50.0)),
            fsync_p99_ms: fsync.as_ref().map(|ms| percentile(ms, 99.0)),
            load_1min: load_1min()
                .map_err(|e| eprintln!("  load unknown: {e:#}"))
                .ok(),
            cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
        }
    }

    /// One line: `fsync p50 0.190 ms, p99 0.420 ms (...); load 0.45 (1 min) on 2 CPUs`.
    pub fn describe(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("unknown".into(), |v| format!("{v:.3} ms"));
        let dir = bench_dir().map_or("unknown".into(), |d| d.display().to_string());
        format!(
            "fsync p50 {}, p99 {} ({FSYNC_SAMPLES} appends of {} KB, each fsynced, in {dir}); load {} (1 min) on {} CPUs",
            ms(self.fsync_p50_ms),
            ms(self.fsync_p99_ms),
            BLOCK / 1024,
            self.load_1min.map_or("unknown".into(), |l| format!("{l:.2}")),
            self.cpus.map_or("unknown".into(), |n| n.to_string()),
        )
    }
}

/// Times (ms, sorted) of `samples` appends of a 4 KB block to a new file in the benchmarks'
/// directory, each followed by an fsync: SQLite as built here calls fsync, not fdatasync, at
/// every FULL commit.
pub fn fsync_ms(samples: usize) -> Result<Vec<f64>> {
    fsync_ms_spaced(samples, Duration::ZERO)
}

/// As [`fsync_ms`], with the disk left idle for `gap` before each append: an fsync after a
/// pause takes longer on this VM than one right after another.
pub fn fsync_ms_spaced(samples: usize, gap: Duration) -> Result<Vec<f64>> {
    let dir = tempfile::Builder::new()
        .prefix("octodb-bench-fsync")
        .tempdir_in(bench_dir()?)?;
    let mut file = std::fs::File::create(dir.path().join("fsync"))?;
    let block = [0x5au8; BLOCK];
    // The first few pay for the new file's metadata and a cold path through the VM's disk.
    for _ in 0..5 {
        file.write_all(&block)?;
        file.sync_all()?;
    }
    let mut ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        std::thread::sleep(gap);
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_all()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn load_1min() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("no load average in /proc/loadavg")
}
