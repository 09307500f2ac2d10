//! Rounds of a judged line (issue 23: "each is judged on the median of 3 rounds"): the middle
//! round is what is judged, and the spread over the rounds is printed beside it, so that a line
//! met by one lucky round shows as such.

use anyhow::{bail, Result};
use serde::Serialize;

/// Rounds of each judged line.
pub const ROUNDS: usize = 3;

/// The lowest and highest of a figure over its rounds, in `unit`.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub rounds: usize,
    pub min: f64,
    pub max: f64,
    pub unit: String,
}

impl Spread {
    pub fn of(values: &[f64], unit: impl Into<String>) -> Spread {
        Spread {
            rounds: values.len(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            unit: unit.into(),
        }
    }
}

/// The round in the middle of `rounds` by `key` (a figure judged against a baseline of its own
/// round is ordered by its ratio to it), with the spread of `key` in `unit`.
pub fn median_by<T: Clone>(
    rounds: &[T],
    key: impl Fn(&T) -> f64,
    unit: &str,
) -> Result<(T, Spread)> {
    if rounds.is_empty() {
        bail!("no rounds to judge");
    }
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|x, y| key(x).total_cmp(&key(y)));
    let keys: Vec<f64> = rounds.iter().map(&key).collect();
    Ok((sorted[sorted.len() / 2].clone(), Spread::of(&keys, unit)))
}

/// The median of `values` (the upper middle for an even count) with their spread in `unit`.
pub fn median(values: &[f64], unit: &str) -> Result<(f64, Spread)> {
    median_by(values, |v| *v, unit)
}
