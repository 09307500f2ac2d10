//! Encryption at rest: the streaming, catch-up and download scenarios with `cipher=sqlcipher`
//! against the same without it, in the same run: rounds alternate plain and encrypted, each on
//! fresh clusters, and the median of the per-round ratios is reported (the disk's fsync time
//! drifts within minutes, and the machine is shared).

use crate::cluster::{encrypt_at_rest, PASSPHRASE, RAW_KEY};
use crate::report::{Better, Figure};
use crate::{catchup, download, streaming};
use anyhow::Result;

const ROUNDS: usize = 3;

/// Sizes of the three scenarios, smaller than their own runs so that six of each fit.
pub struct Sizes {
    pub streaming_rows: u64,
    pub catchup_txns: u64,
    pub download_rows: u64,
}

pub fn run(sizes: Sizes) -> Result<Vec<Figure>> {
    let Sizes {
        streaming_rows,
        catchup_txns,
        download_rows,
    } = sizes;
    let streaming = compare(PASSPHRASE, Better::Higher, || {
        streaming::rows_per_second_on_b(streaming_rows)
    })?;
    let catchup = compare(PASSPHRASE, Better::Lower, || {
        catchup::catch_up_secs(catchup_txns)
    })?;
    let download_secs = || download::download_secs(download_rows).map(|(secs, _, _)| secs);
    let download = compare(PASSPHRASE, Better::Lower, download_secs)?;
    // The download's time includes making the device's new file, whose key a passphrase
    // costs a PBKDF2 of its own: the same with a raw key shows the codec's part alone.
    let download_raw = compare(RAW_KEY, Better::Lower, download_secs)?;
    Ok(vec![
        streaming.figure(
            format!("rows/s visible on device B ({streaming_rows} rows)"),
            "rows/s",
            Better::Higher,
        ),
        catchup.figure(
            format!("catch-up of {catchup_txns} single-row txns"),
            "s",
            Better::Lower,
        ),
        download.figure(
            format!("download of {download_rows} rows"),
            "s",
            Better::Lower,
        ),
        download_raw.figure(
            format!("download of {download_rows} rows, hexkey="),
            "s",
            Better::Lower,
        ),
    ])
}

/// Plain and encrypted figures of each round, and the round whose ratio is the median.
struct Compared {
    rounds: Vec<(f64, f64)>,
    median: (f64, f64),
}

/// Encrypted speed as a share of plain speed (throughput, or plain time over encrypted time).
fn share(better: Better, (plain, encrypted): (f64, f64)) -> f64 {
    match better {
        Better::Higher => encrypted / plain,
        Better::Lower => plain / encrypted,
    }
}

fn compare(
    params: &'static str,
    better: Better,
    mut measure: impl FnMut() -> Result<f64>,
) -> Result<Compared> {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // Which goes first alternates, so that neither always meets a warmer disk cache.
        let mut pair = [0.0; 2];
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for encrypted in order {
            encrypt_at_rest(if encrypted { params } else { "" });
            let figure = measure();
            encrypt_at_rest("");
            pair[encrypted as usize] = figure?;
        }
        rounds.push((pair[0], pair[1]));
    }
    let mut by_share = rounds.clone();
    by_share.sort_by(|x, y| share(better, *x).total_cmp(&share(better, *y)));
    Ok(Compared {
        median: by_share[ROUNDS / 2],
        rounds,
    })
}

impl Compared {
    fn figure(&self, metric: String, unit: &'static str, better: Better) -> Figure {
        let (plain, encrypted) = self.median;
        let listed: Vec<String> = self
            .rounds
            .iter()
            .map(|&r| format!("{:.3} / {:.3} = {:.1}%", r.1, r.0, share(better, r) * 100.0))
            .collect();
        Figure {
            scenario: "encrypted",
            metric,
            octodb: encrypted,
            unit,
            sqlite: Some(plain),
            sqlite_setup: "octodb without cipher=, same run".into(),
            better,
            target: ">= 80% of the speed without cipher=".into(),
            met: share(better, self.median) >= 0.8,
            spread: None,
            notes: format!(
                "encrypted / plain per round (median of {ROUNDS}): {}",
                listed.join(", ")
            ),
        }
    }
}
