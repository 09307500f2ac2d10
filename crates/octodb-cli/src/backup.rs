//! `octodb backup URI DEST`: a consistent copy of a node's file, taken while the node runs (in
//! this process or another), with SQLite's `VACUUM INTO` on a read-only connection of its own:
//! the node goes on writing meanwhile.

use crate::BackupArgs;
use anyhow::{bail, Context};
use std::process::ExitCode;

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let uri = crate::normalize_uri(&args.uri);
    copy(&uri, &args.dest)?;
    let path = octodb::NodeConfig::parse(&uri).map(|c| c.path.display().to_string())?;
    eprintln!(
        "octodb: backed up `{path}` into `{}` (it holds the node's secret key: keep it as safe \
         as the node itself)",
        args.dest.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Copy the database of `uri` into the new file `dest` (also the shell's `.backup`).
pub fn copy(uri: &str, dest: &std::path::Path) -> anyhow::Result<()> {
    let cfg = octodb::NodeConfig::parse(uri)
        .with_context(|| format!("reading the URI `{}`", octodb::NodeConfig::redacted(uri)))?;
    if dest.exists() {
        bail!(
            "`{}` exists already: name a new file for the backup",
            dest.display()
        );
    }
    if !cfg.path.exists() {
        bail!("there is no database at `{}`", cfg.path.display());
    }
    // A plain connection of its own, which only reads: the node's lock is not taken, and
    // reading its file beside it is what WAL allows.
    let read_only = octodb::OpenOptions {
        uri: false,
        busy_timeout: std::time::Duration::from_secs(30),
    };
    // With `cipher=`, the source is opened with its key, and SQLCipher writes the copy with the
    // same key and salt: an encrypted node's backup is encrypted alike.
    let source = octodb::Connection::open_file(&cfg, &read_only)
        .with_context(|| format!("opening `{}` to read it", cfg.path.display()))?;
    let dest = dest
        .to_str()
        .context("the backup's path is not valid UTF-8")?;
    source
        .execute("VACUUM INTO ?1", [dest])
        .with_context(|| format!("copying `{}` into `{dest}`", cfg.path.display()))?;
    Ok(())
}
