//! Memory: the resident size of an idle device node (its own process), beyond what SQLite
//! itself holds (page cache, schema, statements).

use crate::baseline::ITEMS;
use crate::cluster::{fill, Cluster, DEADLINE};
use crate::procs::{self, Proc};
use crate::report::{Better, Figure};
use anyhow::Result;
use std::time::Duration;

const ROWS: u64 = 10_000;

pub fn run() -> Result<Vec<Figure>> {
    let mut cluster = Cluster::new(ITEMS)?;
    let (owner, user) = cluster.signup("owner")?;
    drop(owner);
    fill(&mut cluster.primary, ROWS, ROWS, 64, user)?;

    let mut child = Proc::spawn(
        "idle device",
        &[
            "_idle-device".into(),
            cluster.device_uri("idle"),
            user.to_string(),
        ],
    )?;
    let words = child.expect("idle")?;
    let sqlite_kib: u64 = words.first().and_then(|w| w.parse().ok()).unwrap_or(0);
    let rss = procs::rss_kib(child.pid())?;
    let private = procs::status_kib(child.pid(), "RssAnon")?;
    child.finish()?;
    let beyond_mb = rss.saturating_sub(sqlite_kib) as f64 / 1024.0;
    Ok(vec![Figure {
        scenario: "memory",
        metric: format!("idle device RSS beyond SQLite's memory ({ROWS} rows)"),
        octodb: beyond_mb,
        unit: "MB",
        sqlite: None,
        sqlite_setup: "-".into(),
        better: Better::Lower,
        target: "<= 20 MB".into(),
        met: beyond_mb <= 20.0,
        spread: None,
        // Most of the RSS is the benchmark binary's code (file-backed, shared, counted as
        // far as the kernel mapped it around the pages touched): the private part says what
        // the device itself holds.
        notes: format!(
            "RSS {:.1} MB in all, of which SQLite's own allocations {:.1} MB; private \
             (anonymous) memory {:.1} MB, the rest file-backed: the benchmark binary's code \
             and libraries, shared",
            rss as f64 / 1024.0,
            sqlite_kib as f64 / 1024.0,
            private as f64 / 1024.0,
        ),
    }])
}

/// The child: a device that logs in, downloads, then sits idle and reports.
pub fn idle_device(uri: &str, user: i64) -> Result<()> {
    count_sqlite_memory()?;
    let d = octodb::Connection::open(uri)?;
    d.execute(&format!("PRAGMA user_login='user:{user}'"), [])?;
    d.wait_until_ready(DEADLINE)?;
    // Idle: let the node settle (connection up, caches warm, nothing to do).
    std::thread::sleep(Duration::from_secs(2));
    procs::say(&format!("idle {}", sqlite_memory_used() / 1024));
    for _ in procs::commands() {}
    drop(d);
    Ok(())
}

/// Turns on SQLite's count of its allocations, which octodb's builds leave off (the count takes a
/// global lock on every allocation). Must run before SQLite is first used in the process.
fn count_sqlite_memory() -> Result<()> {
    // SAFETY: sqlite3_config is documented as callable before sqlite3_initialize (SQLite itself
    // reports misuse afterwards, checked below); SQLITE_CONFIG_MEMSTATUS takes exactly one int.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 1 as std::ffi::c_int)
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        anyhow::bail!(
            "could not turn on SQLite's memory count (code {rc}): SQLite was already in use"
        );
    }
    Ok(())
}

/// Bytes SQLite has allocated in this process (page caches, schemas, prepared statements).
fn sqlite_memory_used() -> u64 {
    // SAFETY: sqlite3_memory_used takes no arguments, only reads SQLite's global counter under
    // its own mutex, and may be called from any thread at any time.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    used.max(0) as u64
}
