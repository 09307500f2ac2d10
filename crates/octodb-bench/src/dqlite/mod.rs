//! octodb's three primaries beside a 3-node dqlite cluster (issue "Cluster of primaries", item
//! 7): single-row write transactions per second, each acknowledged only once a majority of the
//! three holds it, both on this machine in the same run, beside SQLite's own single-row
//! autocommit inserts (WAL, synchronous=FULL: a durable commit each, as both clusters give).
//!
//! - dqlite: `clients` workers of dqlite's own benchmark tool (see `nodes`), each sending
//!   `INSERT OR REPLACE INTO model(key, value)` with a new 16-byte key and a 64-byte value, one
//!   autocommit transaction each, to the leader over TCP.
//! - octodb: the primary-alone load of `writers` (BENCHMARKS.md, "Three primaries") with as
//!   many sessions: each speaks the device protocol from this process and sends one single-row
//!   transaction (a 64-byte payload) at a time, awaiting its acceptance, to a primary leading a
//!   cluster of three (the followers in its process).
//!
//! The client counts alternate (dqlite, then octodb, for each count) so that a change in the
//! machine's load touches both sides alike.

mod nodes;
mod results;

use crate::baseline::{self, Sync};
use crate::primary_alone;
use crate::report::{human, Better, Figure};
use anyhow::{bail, Result};
use std::time::Duration;

const PAYLOAD: usize = 64;

pub fn run(clients: &[usize], secs: u64, sqlite_rows: u64) -> Result<Vec<Figure>> {
    if clients.contains(&0) {
        bail!("--clients: each count must be at least 1");
    }
    let tools = match nodes::find_tools() {
        Ok(t) => t,
        Err(why) => {
            // Not a failure: dqlite is a peer to compare with, not something octodb needs.
            println!("{:<12} SKIPPED: {why}", "dqlite");
            return Ok(Vec::new());
        }
    };
    let sqlite = baseline::insert_rate(Sync::Full, sqlite_rows, 1, PAYLOAD)?;
    let mut figures = Vec::with_capacity(clients.len());
    for &n in clients {
        let load_dqlite = load_average();
        let dq = nodes::run(&tools, n, secs)?;
        let Some(dq_rate) = dq.summary.rate() else {
            bail!(
                "dqlite acknowledged no transaction with {n} clients; errors: {}",
                dq.summary.errors_text()
            );
        };
        // Every acknowledged insert must be in the table (a worker's last statement may have
        // committed after the tool stopped counting: the table may hold a few more).
        if dq.rows < dq.summary.ok {
            bail!(
                "dqlite's table holds {} rows but {} inserts were acknowledged",
                dq.rows,
                dq.summary.ok
            );
        }
        let load_octodb = load_average();
        let ours = primary_alone::run(n, Duration::from_secs(secs), 2)?;
        figures.push(Figure {
            scenario: "dqlite",
            metric: format!("3 primaries, {n} client{}: accepted txn/s", plural(n)),
            octodb: ours.rate,
            unit: "txn/s",
            sqlite: Some(sqlite),
            sqlite_setup: format!("{}, single-row autocommit", Sync::Full.describe()),
            better: Better::Higher,
            target: "- (informative: beside dqlite)".into(),
            met: true,
            spread: None,
            notes: format!(
                "dqlite {} (3 nodes, {n} client{}): {} txn/s = {:.1}% of SQLite; octodb / dqlite = {:.2}x\n\
                 dqlite: {} inserts acknowledged in {:.1} s, {} errors ({}); its table holds {} rows afterwards\n\
                 octodb: the three primaries' CPU {:.0} us per accepted txn\n\
                 load average (1 min) before each side: dqlite {load_dqlite}, octodb {load_octodb}",
                tools.version,
                plural(n),
                human(dq_rate),
                100.0 * dq_rate / sqlite,
                ours.rate / dq_rate,
                dq.summary.ok,
                dq.summary.span_secs(),
                dq.summary.error_count(),
                dq.summary.errors_text(),
                dq.rows,
                ours.cpu_us,
            ),
        });
    }
    Ok(figures)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The machine's 1-minute load average, as /proc/loadavg gives it ("?" where there is none):
/// on a shared machine it tells how much the figures may have been pushed down.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}
