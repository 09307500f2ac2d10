//! A fixed amount of plain local SQLite work (no octodb node), for comparing one build of the
//! SQLite library with another by instruction counts (`valgrind --tool=callgrind`): the same
//! statements on the same data every run, so the count does not depend on the machine's load.

use crate::baseline::{INSERT, ITEMS};
use crate::cluster::{bench_dir, payload};
use anyhow::Result;
use rusqlite::Connection;

/// Inserts `rows` rows (transactions of 100), then reads them back by key, by an index and in
/// one aggregate scan, then updates and deletes a tenth of them. Prints what it read, so that
/// two builds can be checked to have done the same work.
pub fn run(rows: u64) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("octodb-bench-plain")
        .tempdir_in(bench_dir()?)?;
    let c = Connection::open(dir.path().join("plain.db"))?;
    c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    // fsync is kernel time, which callgrind does not count anyway.
    c.execute_batch("PRAGMA synchronous=OFF")?;
    c.execute_batch(ITEMS)?;
    c.execute_batch("CREATE INDEX items_n ON items(n)")?;
    let mut n = 0;
    while n < rows {
        c.execute_batch("BEGIN")?;
        let mut ins = c.prepare_cached(INSERT)?;
        for _ in 0..100.min(rows - n) {
            ins.execute(rusqlite::params![(n * 7919) % rows, payload(n, 100), 7])?;
            n += 1;
        }
        drop(ins);
        c.execute_batch("COMMIT")?;
    }
    let mut by_key = c.prepare("SELECT length(payload) FROM items WHERE id = ?1")?;
    let mut by_index = c.prepare("SELECT count(*) FROM items WHERE n BETWEEN ?1 AND ?1 + 9")?;
    let (mut total_len, mut total_hits) = (0i64, 0i64);
    for i in 1..=rows as i64 {
        total_len += by_key.query_row([i], |r| r.get::<_, i64>(0))?;
        total_hits += by_index.query_row([i], |r| r.get::<_, i64>(0))?;
    }
    let sum: i64 = c.query_row("SELECT sum(n) FROM items", [], |r| r.get(0))?;
    c.execute_batch(
        "BEGIN; UPDATE items SET payload = upper(payload) WHERE id % 10 = 0;
         DELETE FROM items WHERE id % 10 = 1; COMMIT",
    )?;
    let left: i64 = c.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?;
    println!("plain work: {rows} rows, lengths {total_len}, index hits {total_hits}, sum {sum}, {left} left");
    Ok(())
}
