//! `octodb backup URI DEST`: a consistent copy of a node's file, taken while the node runs (in
//! this process or another), by `octodb::backup`: the node goes on writing meanwhile.
//! `octodb restore-cluster URI`: the copy of a primary whose whole cluster was lost starts a
//! new cluster (`octodb::restore_cluster`). `octodb mark-restored URI`: a primary restored from
//! a copy `octodb backup` did not make is marked as its copies are (`octodb::mark_restored`).

use crate::{BackupArgs, MarkRestoredArgs, RestoreClusterArgs};
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
             as a new member and takes the cluster's current state (were every primary lost, \
             `octodb restore-cluster` on the copy starts a new cluster from it)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Copy the database of `uri` into the new file `dest` (also the shell's `.backup`). Returns
/// whether the copy rejoins its cluster as a new member once restored.
pub fn copy(uri: &str, dest: &std::path::Path) -> anyhow::Result<bool> {
    let cfg = node_config(uri)?;
    octodb::backup(&cfg, dest).with_context(|| {
        format!(
            "backing up `{}` into `{}`",
            cfg.path.display(),
            dest.display()
        )
    })
}

pub fn restore_cluster(args: RestoreClusterArgs) -> anyhow::Result<ExitCode> {
    let cfg = node_config(&crate::normalize_uri(&args.uri))?;
    let restored = octodb::restore_cluster(&cfg)
        .with_context(|| format!("restoring a cluster from `{}`", cfg.path.display()))?;
    eprintln!(
        "octodb: `{}` now starts a new cluster as its only primary (node {}), with the rows \
         and log it holds. Start it as a primary (octodb serve 'file:...?node=primary&bind=...'); \
         other primaries join it from fresh files with connect=. Devices that had more from \
         the lost cluster take the new cluster's data when they reconnect, their own \
         unsent rows kept.",
        cfg.path.display(),
        restored.node_id
    );
    if !restored.former_members.is_empty() {
        eprintln!(
            "octodb: its old cluster's members ({}) are not called: if one of them still runs, \
             stop it, or it serves devices a second, separate history",
            restored.former_members.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn mark_restored(args: MarkRestoredArgs) -> anyhow::Result<ExitCode> {
    let cfg = node_config(&crate::normalize_uri(&args.uri))?;
    let marked = octodb::mark_restored(&cfg)
        .with_context(|| format!("marking `{}` as restored", cfg.path.display()))?;
    if marked {
        eprintln!(
            "octodb: `{}` is marked as restored: started, it rejoins its cluster as a new member \
             and takes the cluster's current state",
            cfg.path.display()
        );
    } else {
        eprintln!(
            "octodb: `{}` is a primary alone: it restores as it is (devices ahead of it are \
             handled when they reconnect); nothing marked",
            cfg.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The node configuration `uri` gives, or an error naming the URI with its keys redacted.
fn node_config(uri: &str) -> anyhow::Result<octodb::NodeConfig> {
    octodb::NodeConfig::parse(uri)
        .with_context(|| format!("reading the URI `{}`", octodb::NodeConfig::redacted(uri)))
}
