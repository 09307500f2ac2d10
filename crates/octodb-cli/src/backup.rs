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
    let mark = copy(&uri, &args.dest)?;
    let path = octodb::NodeConfig::parse(&uri).map(|c| c.path.display().to_string())?;
    eprintln!(
        "octodb: backed up `{path}` into `{}` (a node's copy holds the node's secret key: keep \
         it as safe as the node itself)",
        args.dest.display()
    );
    if let Some(note) = mark_note(&mark) {
        eprintln!("octodb: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// What a copy of a primary does once restored, when there is something to say.
pub fn mark_note(mark: &octodb::RestoreMark) -> Option<String> {
    match mark {
        octodb::RestoreMark::Rejoins => Some(
            "the copy is of a primary of a cluster: restored, it rejoins its cluster as a new \
             member and takes the cluster's current state (were every primary lost, `octodb \
             restore-cluster` on the copy starts a new cluster from it)"
                .into(),
        ),
        octodb::RestoreMark::IdsReserved(Some(ids)) => Some(reserved_note(ids)),
        octodb::RestoreMark::IdsReserved(None) | octodb::RestoreMark::Unmarked => None,
    }
}

/// What a restored primary does with the ids a restore reserved.
fn reserved_note(ids: &octodb::ReservedIds) -> String {
    format!(
        "once restored, this primary keeps node ids {}-{} and user ids {}-{} for the devices \
         approved after the copy was taken: they come back under their ids, with their data \
         and pending work (new devices get ids above them)",
        ids.nodes.0,
        ids.nodes.1 - 1,
        ids.users.0,
        ids.users.1 - 1
    )
}

/// Copy the database of `uri` into the new file `dest` (also the shell's `.backup`). Returns
/// what the copy of a primary does once restored.
pub fn copy(uri: &str, dest: &std::path::Path) -> anyhow::Result<octodb::RestoreMark> {
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
    if let Some(ids) = &restored.reserved {
        eprintln!("octodb: {}", reserved_note(ids));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn mark_restored(args: MarkRestoredArgs) -> anyhow::Result<ExitCode> {
    let cfg = node_config(&crate::normalize_uri(&args.uri))?;
    let mark = octodb::mark_restored(&cfg)
        .with_context(|| format!("marking `{}` as restored", cfg.path.display()))?;
    let path = cfg.path.display();
    match mark {
        octodb::RestoreMark::Rejoins => eprintln!(
            "octodb: `{path}` is marked as restored: started, it rejoins its cluster as a new \
             member and takes the cluster's current state"
        ),
        octodb::RestoreMark::IdsReserved(Some(ids)) => eprintln!(
            "octodb: `{path}` is a primary alone, marked as restored: {}",
            reserved_note(&ids)
        ),
        octodb::RestoreMark::IdsReserved(None) => eprintln!(
            "octodb: `{path}` is a primary alone, marked as restored already (no ids were \
             handed out since): nothing more to do"
        ),
        octodb::RestoreMark::Unmarked => eprintln!(
            "octodb: `{path}` has no cluster state (a primary's file from before clusters): \
             nothing marked"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The node configuration `uri` gives, or an error naming the URI with its keys redacted.
fn node_config(uri: &str) -> anyhow::Result<octodb::NodeConfig> {
    octodb::NodeConfig::parse(uri)
        .with_context(|| format!("reading the URI `{}`", octodb::NodeConfig::redacted(uri)))
}
