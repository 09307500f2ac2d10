//! Plain local SQLite doing the same work as a scenario, on the same disk, in the same run.

use crate::cluster::{bench_dir, payload};
use anyhow::Result;
use rusqlite::Connection;
use std::time::Instant;

/// SQLite's durability setting for a baseline: FULL is what octodb nodes use, NORMAL is the
/// faster setting the issue names for some targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Full,
    Normal,
}

impl Sync {
    pub fn describe(self) -> &'static str {
        match self {
            Sync::Full => "WAL, synchronous=FULL",
            Sync::Normal => "WAL, synchronous=NORMAL",
        }
    }
}

/// A fresh SQLite file in WAL mode with the items table.
pub struct Local {
    _dir: tempfile::TempDir,
    pub conn: Connection,
}

impl Local {
    pub fn new(sync: Sync) -> Result<Local> {
        let dir = tempfile::Builder::new()
            .prefix("octodb-bench-sqlite")
            .tempdir_in(bench_dir()?)?;
        let conn = Connection::open(dir.path().join("local.db"))?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        conn.execute_batch(match sync {
            Sync::Full => "PRAGMA synchronous=FULL",
            Sync::Normal => "PRAGMA synchronous=NORMAL",
        })?;
        conn.execute_batch(ITEMS)?;
        Ok(Local { _dir: dir, conn })
    }
}

/// The table every scenario writes (row_owner is an ordinary column for plain SQLite).
pub const ITEMS: &str =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, payload TEXT NOT NULL, row_owner);";

pub const INSERT: &str = "INSERT INTO items(n, payload, row_owner) VALUES (?1, ?2, ?3)";

/// Rows per second inserting `rows` rows in transactions of `per_txn`: the median of three
/// runs, each on a fresh file (this disk's fsync time varies from one minute to the next).
pub fn insert_rate(sync: Sync, rows: u64, per_txn: u64, payload_len: usize) -> Result<f64> {
    let mut runs = [0.0; 3];
    for r in &mut runs {
        *r = insert_rate_once(sync, rows, per_txn, payload_len)?;
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[1])
}

fn insert_rate_once(sync: Sync, rows: u64, per_txn: u64, payload_len: usize) -> Result<f64> {
    let local = Local::new(sync)?;
    let c = &local.conn;
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        c.execute_batch("BEGIN")?;
        {
            let mut ins = c.prepare_cached(INSERT)?;
            for _ in 0..per_txn.min(rows - n) {
                ins.execute(rusqlite::params![n as i64, payload(n, payload_len), 7])?;
                n += 1;
            }
        }
        c.execute_batch("COMMIT")?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Latencies (ms) of `samples` single-row autocommit inserts.
pub fn commit_latencies(sync: Sync, samples: usize, payload_len: usize) -> Result<Vec<f64>> {
    commit_latencies_spaced(sync, samples, payload_len, std::time::Duration::ZERO)
}

/// As [`commit_latencies`], with the file left idle for `gap` before each commit.
pub fn commit_latencies_spaced(
    sync: Sync,
    samples: usize,
    payload_len: usize,
    gap: std::time::Duration,
) -> Result<Vec<f64>> {
    let local = Local::new(sync)?;
    let mut ins = local.conn.prepare(INSERT)?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        std::thread::sleep(gap);
        let t = Instant::now();
        ins.execute(rusqlite::params![i as i64, payload(i, payload_len), 7])?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Single-row autocommit inserts per second, all files together, with `files` plain SQLite
/// files written at once for `duration`, one thread each: what the devices of the many-writers
/// scenario must do at the least (each commits its transaction durably before sending it),
/// with nothing else of octodb.
pub fn parallel_files_rate(sync: Sync, files: usize, duration: std::time::Duration) -> Result<f64> {
    let locals: Vec<Local> = (0..files)
        .map(|_| Local::new(sync))
        .collect::<Result<_>>()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = locals
        .into_iter()
        .map(|local| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<u64> {
                let mut ins = local.conn.prepare(INSERT)?;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    ins.execute(rusqlite::params![n as i64, payload(n, 64), 7])?;
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
