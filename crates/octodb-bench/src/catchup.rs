//! Catch-up: a device offline while single-row transactions accumulate for its user; time from
//! its reconnection until it has applied everything.

use crate::baseline::{self, Sync, INSERT, ITEMS};
use crate::cluster::{count, payload, Cluster, DEADLINE};
use crate::report::{Better, Figure};
use anyhow::{bail, Result};
use std::time::Instant;

const PAYLOAD: usize = 64;

pub fn run(txns: u64) -> Result<Vec<Figure>> {
    let secs = catch_up_secs(txns)?;
    let rows_per_s = baseline::insert_rate(Sync::Full, txns, txns, PAYLOAD)?;
    let sqlite_secs = txns as f64 / rows_per_s;
    Ok(vec![Figure {
        scenario: "catch-up",
        metric: format!("reconnect -> caught up, {txns} single-row txns missed"),
        octodb: secs,
        unit: "s",
        sqlite: Some(sqlite_secs),
        sqlite_setup: format!("{}, the same rows in one txn", Sync::Full.describe()),
        better: Better::Lower,
        target: "<= 2 s".into(),
        met: secs <= 2.0 * (txns as f64 / 100_000.0).max(1.0),
        spread: None,
        notes: if txns < 100_000 {
            "reduced size (--quick): target scaled".into()
        } else {
            String::new()
        },
    }])
}

/// Seconds from a device's reconnection until it has applied the `txns` single-row
/// transactions it missed.
pub fn catch_up_secs(txns: u64) -> Result<f64> {
    let cluster = Cluster::new(ITEMS)?;
    let (d, user) = cluster.signup("d")?;
    let uri = cluster.device_uri("d");
    drop(d);

    // Setting up is not what is measured, but it is durable like any primary's commit (a
    // replicated connection refuses to lower `synchronous`): an fsync per transaction.
    let p = &cluster.primary;
    let setup = Instant::now();
    for i in 0..txns {
        p.execute(
            INSERT,
            rusqlite::params![i as i64, payload(i, PAYLOAD), user],
        )?;
    }
    let target_seq = p.sync_status()?.last_seq;
    eprintln!(
        "  catch-up: {txns} transactions committed on the primary in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let d = octodb::Connection::open(&uri)?;
    d.wait_for(DEADLINE, |s| s.last_seq >= target_seq)?;
    let secs = started.elapsed().as_secs_f64();
    let got = count(&d, "SELECT count(*) FROM items")? as u64;
    if got != txns {
        bail!("the device has {got} rows after catching up, expected {txns}");
    }
    Ok(secs)
}

/// Child: a device offline makes `txns` single-row transactions that all change the same row
/// (a counter, a document being edited), then reconnects; prints how long its queue takes to
/// be accepted. Rebase finds a row's pending work by the range of queued transactions that
/// touched it, so this is its worst case.
/// With `distinct`, each transaction inserts a row of its own instead (the common case).
pub fn offline_hot_row(txns: u64, distinct: bool) -> Result<()> {
    let cluster = Cluster::new(ITEMS)?;
    let (d, user) = cluster.signup("d")?;
    d.execute(INSERT, rusqlite::params![0, "start", user])?;
    d.wait_for(DEADLINE, |s| s.outbox_len == 0)?;
    drop(d);
    // Port 1 on loopback refuses: the device works offline.
    let offline = crate::cluster::device_uri(&cluster.path("d"), "127.0.0.1:1");
    let d = octodb::Connection::open(&offline)?;
    let queued = Instant::now();
    for i in 1..=txns {
        if distinct {
            d.execute(
                INSERT,
                rusqlite::params![i as i64, payload(i, PAYLOAD), user],
            )?;
        } else {
            d.execute(
                "UPDATE items SET n = ?1, payload = ?2 WHERE n = ?3",
                rusqlite::params![i as i64, payload(i, PAYLOAD), i as i64 - 1],
            )?;
        }
    }
    let queue_secs = queued.elapsed().as_secs_f64();
    drop(d);
    let started = Instant::now();
    let d = octodb::Connection::open(&cluster.device_uri("d"))?;
    d.wait_for(DEADLINE, |s| s.outbox_len == 0)?;
    let secs = started.elapsed().as_secs_f64();
    let target_seq = cluster.primary.sync_status()?.last_seq;
    d.wait_for(DEADLINE, |s| s.last_seq >= target_seq)?;
    let settled_secs = started.elapsed().as_secs_f64();
    let on_primary = count(
        &cluster.primary,
        &format!("SELECT count(*) FROM items WHERE n = {txns}"),
    )?;
    if on_primary != 1 {
        bail!("the primary does not hold the row's last version");
    }
    crate::procs::say(&format!(
        "{txns} offline transactions on {}: queued in {queue_secs:.2} s, accepted {secs:.2} s after reconnecting ({:.0} txn/s), all back in the device's log after {settled_secs:.2} s",
        if distinct { "rows of their own" } else { "one row" },
        txns as f64 / secs
    ));
    Ok(())
}
