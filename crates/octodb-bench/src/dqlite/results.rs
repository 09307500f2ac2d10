//! Reading the result files of Canonical's `dqlite-benchmark` (go-dqlite's `benchmark`
//! package): one file per worker and kind of query, named `<worker>-<kind>-<unix time>`, e.g.
//! `0-exec-1796423279`, holding
//!
//! ```text
//! n 978
//! n_err 48715
//! avg [ms] 2.431822
//! max [ms] 249.461767
//! min [ms] 0.457582
//! measurements [timestamp in ns] [ms]
//! 1796423269028636474 1.282987
//! ...
//!
//! errors
//! 1796423269030000000 database is locked
//! ...
//! ```
//!
//! The tool prints no rate of its own, so the rate is computed here from the measurements: every
//! successful statement, from the first one's start to the last one's end.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The write statements of every worker of one run.
#[derive(Debug, Default)]
pub struct Summary {
    /// Statements that succeeded (each an autocommit transaction acknowledged by the leader).
    pub ok: u64,
    /// Failed statements by error message.
    pub errors: BTreeMap<String, u64>,
    /// Start of the first successful statement and end of the last one, in ns since the epoch.
    first_start_ns: Option<u128>,
    last_end_ns: Option<u128>,
}

impl Summary {
    /// Successful statements per second over the span in which they ran.
    pub fn rate(&self) -> Option<f64> {
        let span_ns = self.last_end_ns?.checked_sub(self.first_start_ns?)?;
        (span_ns > 0 && self.ok > 0).then(|| self.ok as f64 * 1e9 / span_ns as f64)
    }

    pub fn span_secs(&self) -> f64 {
        match (self.first_start_ns, self.last_end_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => 0.0,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The errors, most frequent first, e.g. `180087 "database is locked"`; "none" without any.
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        let mut by_count: Vec<_> = self.errors.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1));
        by_count
            .iter()
            .take(3)
            .map(|(message, n)| format!("{n} \"{message}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Add one result file's text; `name` is for error messages.
    pub fn add_file(&mut self, name: &str, text: &str) -> Result<()> {
        #[derive(PartialEq)]
        enum Part {
            Header,
            Measurements,
            Errors,
        }
        let mut part = Part::Header;
        let (mut declared_ok, mut declared_err) = (None, None);
        let (mut ok, mut err) = (0u64, 0u64);
        for line in text.lines() {
            if line.starts_with("measurements") {
                part = Part::Measurements;
                continue;
            }
            if line == "errors" {
                part = Part::Errors;
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            match part {
                Part::Header => {
                    if let Some(n) = line.strip_prefix("n ") {
                        declared_ok = Some(n.trim().parse::<u64>()?);
                    } else if let Some(n) = line.strip_prefix("n_err ") {
                        declared_err = Some(n.trim().parse::<u64>()?);
                    }
                }
                Part::Measurements => {
                    let (start, ms) = line
                        .split_once(' ')
                        .with_context(|| format!("{name}: measurement {line:?}"))?;
                    let start: u128 = start
                        .parse()
                        .with_context(|| format!("{name}: measurement {line:?}"))?;
                    let ms: f64 = ms
                        .trim()
                        .parse()
                        .with_context(|| format!("{name}: measurement {line:?}"))?;
                    let end = start + (ms * 1e6) as u128;
                    self.first_start_ns = Some(self.first_start_ns.map_or(start, |f| f.min(start)));
                    self.last_end_ns = Some(self.last_end_ns.map_or(end, |l| l.max(end)));
                    ok += 1;
                }
                Part::Errors => {
                    // "<start in ns> <message>"; the message may be empty.
                    let message = line.split_once(' ').map_or("", |(_, m)| m).trim();
                    *self.errors.entry(message.to_string()).or_default() += 1;
                    err += 1;
                }
            }
        }
        // The counts the tool declares must match its lines: otherwise its format changed and
        // the figures computed here would mean something else.
        if declared_ok != Some(ok) || declared_err != Some(err) {
            bail!(
                "{name}: declares n {declared_ok:?}, n_err {declared_err:?} but lists {ok} \
                 measurements and {err} errors (has dqlite-benchmark's format changed?)"
            );
        }
        self.ok += ok;
        Ok(())
    }
}

/// Every write (`exec`) result file in `dir`. A worker none of whose statements succeeded
/// leaves no file (the tool reports only kinds it measured); its errors are then not counted.
pub fn read_dir(dir: &Path) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.contains("-exec-") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        summary.add_file(&name, &text)?;
        files += 1;
    }
    if files == 0 {
        bail!("no write results in {}", dir.display());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "n 3\nn_err 2\navg [ms] 1.000000\nmax [ms] 2.000000\nmin [ms] 0.500000\n\
        measurements [timestamp in ns] [ms]\n\
        1000000000 0.500000\n1001000000 1.000000\n1999000000 1.000000\n\n\
        errors\n1000500000 database is locked\n1000600000 database is locked\n\n";

    #[test]
    fn a_file_gives_its_successes_errors_and_span() -> Result<()> {
        let mut s = Summary::default();
        s.add_file("0-exec-1", FILE)?;
        assert_eq!(s.ok, 3);
        assert_eq!(s.error_count(), 2);
        assert_eq!(s.errors_text(), "2 \"database is locked\"");
        // From 1.000 s to 1.999 s + 1 ms: exactly one second.
        assert!((s.span_secs() - 1.0).abs() < 1e-9);
        assert!((s.rate().unwrap_or(0.0) - 3.0).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn workers_add_up_over_the_widest_span() -> Result<()> {
        let mut s = Summary::default();
        s.add_file("0-exec-1", FILE)?;
        s.add_file(
            "1-exec-1",
            "n 1\nn_err 0\nmeasurements [timestamp in ns] [ms]\n2999000000 1.000000\n\nerrors\n\n",
        )?;
        assert_eq!(s.ok, 4);
        assert!((s.span_secs() - 2.0).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn a_file_whose_counts_do_not_match_its_lines_is_refused() {
        let mut s = Summary::default();
        let wrong = FILE.replacen("n 3", "n 4", 1);
        assert!(s.add_file("0-exec-1", &wrong).is_err());
    }

    #[test]
    fn no_successes_give_no_rate() {
        assert_eq!(Summary::default().rate(), None);
    }
}
