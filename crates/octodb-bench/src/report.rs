//! One line per measured figure: octodb's, plain local SQLite's for the same work in the same
//! run, their ratio, and the target.

use crate::rounds::Spread;
use serde::Serialize;

/// Whether a bigger or a smaller figure is better (rows/s vs. milliseconds).
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    /// What was measured, e.g. "rows/s visible on device B".
    pub metric: String,
    pub octodb: f64,
    pub unit: &'static str,
    /// Plain local SQLite doing the same work, and how it was set up.
    pub sqlite: Option<f64>,
    pub sqlite_setup: String,
    pub better: Better,
    /// The target as the issue states it, e.g. ">= 25% of local SQLite".
    pub target: String,
    pub met: bool,
    /// A line judged on the median of several rounds: how far the rounds lay apart.
    pub spread: Option<Spread>,
    pub notes: String,
}

impl Figure {
    /// octodb as a share of SQLite's speed (throughputs) or a multiple of its time (durations).
    pub fn ratio(&self) -> Option<f64> {
        let s = self.sqlite?;
        if s == 0.0 || self.octodb == 0.0 {
            return None;
        }
        Some(self.octodb / s)
    }

    pub fn ratio_text(&self) -> String {
        match (self.ratio(), self.better) {
            (Some(r), Better::Higher) => format!("{:.1}% of SQLite", r * 100.0),
            (Some(r), Better::Lower) => format!("{r:.2}x SQLite's time"),
            (None, _) => "-".into(),
        }
    }

    pub fn print(&self) {
        let sqlite = match self.sqlite {
            Some(s) => format!("{} {}", human(s), self.unit),
            None => "-".into(),
        };
        println!(
            "{:<12} {:<44} octodb {:>14} | SQLite {:>14} ({}) | {:<20} | target {:<26} {}",
            self.scenario,
            self.metric,
            format!("{} {}", human(self.octodb), self.unit),
            sqlite,
            self.sqlite_setup,
            self.ratio_text(),
            self.target,
            if self.met { "MET" } else { "MISSED" }
        );
        if let Some(s) = &self.spread {
            println!(
                "{:<12} rounds: the median of {} is judged; spread {} - {} {}",
                "",
                s.rounds,
                human(s.min),
                human(s.max),
                s.unit
            );
        }
        if !self.notes.is_empty() {
            for line in self.notes.lines() {
                println!("{:<12} note: {}", "", line);
            }
        }
    }
}

/// A number with a sensible number of digits for a table.
pub fn human(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{:.0}", v);
        // Thousands separators make throughput figures readable at a glance.
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        out
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Percentile `p` (0..=100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
