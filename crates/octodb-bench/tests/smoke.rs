//! The benchmark program keeps working: a reduced run of two scenarios prints its figures.
//! (Timing targets are judged by reading the figures, never by a test.)

use std::process::Command;

#[test]
fn a_reduced_run_prints_each_figure_with_its_sqlite_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_octodb-bench"))
        .args(["--quick", "latency"])
        .env("OCTODB_BENCH_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("latency"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in lines {
        assert!(
            l.contains("ms") && l.contains("SQLite") && l.contains("target"),
            "{l}"
        );
    }
    // Nothing left behind in the benchmark's directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
