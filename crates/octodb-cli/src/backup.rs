//! `octodb backup URI DEST`: a consistent copy of a node's file, taken while the node runs (in
//! this process or another), by `octodb::backup`: the node goes on writing meanwhile.

use crate::BackupArgs;
use anyhow::Context;
use std::process::ExitCode;

pub fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let uri = crate::normalize_uri(&args.uri);
    let rejoins = copy(&uri, &args.dest)?;
    let path = octodb::NodeConfig::parse(&uri).map(|c| c.path.display().to_string())?;
    eprintln!(
        "octodb: backed up `{path}` into `{}` (it holds the node's secret key: keep it as safe \
         as the node itself)",
        args.dest.display()
    );
    if rejoins {
        eprintln!(
            "octodb: the copy is of a primary of a cluster: restored, it rejoins its cluster \
             as a new member and takes the cluster's current state"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Copy the database of `uri` into the new file `dest` (also the shell's `.backup`). Returns
/// whether the copy rejoins its cluster as a new member once restored.
pub fn copy(uri: &str, dest: &std::path::Path) -> anyhow::Result<bool> {
    let cfg = octodb::NodeConfig::parse(uri)
        .with_context(|| format!("reading the URI `{}`", octodb::NodeConfig::redacted(uri)))?;
    octodb::backup(&cfg, dest).with_context(|| {
        format!(
            "backing up `{}` into `{}`",
            cfg.path.display(),
            dest.display()
        )
    })
}
