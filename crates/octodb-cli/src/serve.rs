//! `octodb serve URI`: a node with no shell, until SIGINT or SIGTERM.

use crate::ServeArgs;
use anyhow::Context;
use std::process::ExitCode;

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let conn = octodb::Connection::open(&with_admin(&args))?;
    if conn.role().is_none() {
        anyhow::bail!("`serve` needs a replicated node: add node=primary&bind=... or node=secondary&connect=... to the URI");
    }
    crate::progress::show_download(&conn);
    // The handlers are in place before the node says it serves: a SIGTERM right after that
    // line must stop it cleanly, not kill it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    let mut signals = rt.block_on(async { Signals::install() })?;
    let status = conn.sync_status()?;
    let addrs: Vec<String> = conn
        .bound_addrs()
        .iter()
        .map(|a| format!("tcp://{a}"))
        .collect();
    // A primary that has not joined its cluster yet (no Raft node yet, or not among the
    // members) has no node id of its own there yet.
    let joining = status.node_type == "primary"
        && status.cluster.as_ref().is_none_or(|c| {
            !c.members
                .iter()
                .any(|m| m.node_id == u64::from(status.node_id))
        });
    let id = match joining {
        false => format!("node {}", status.node_id),
        true => "(joining its cluster)".to_string(),
    };
    eprintln!(
        "octodb: {} {id} serving{}; public key {}",
        status.node_type,
        if addrs.is_empty() {
            String::new()
        } else {
            format!(" on {}", addrs.join(", "))
        },
        status.public_key
    );
    let signal = rt.block_on(async {
        let mut joining = joining;
        let mut told: Option<String> = None;
        loop {
            tokio::select! {
                signal = signals.next() => break signal,
                // Until it has joined: why not yet (a typo in connect=, a refusal), then its id.
                () = tokio::time::sleep(std::time::Duration::from_secs(1)), if joining => {
                    let Ok(now) = conn.sync_status() else { continue };
                    if now.cluster.is_some() && now.sync_error.is_none() {
                        eprintln!("octodb: joined its cluster as node {}", now.node_id);
                        joining = false;
                    } else if now.sync_error != told {
                        if let Some(e) = &now.sync_error {
                            eprintln!("octodb: not in its cluster yet: {e}");
                        }
                        told = now.sync_error;
                    }
                }
            }
        }
    });
    eprintln!("octodb: {signal} received, shutting down");
    drop(conn);
    eprintln!("octodb: stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// The URI with `--admin` / `--admin-insecure` added as their URI parameters.
fn with_admin(args: &ServeArgs) -> String {
    let mut uri = crate::normalize_uri(&args.uri);
    if let Some(addr) = &args.admin {
        let sep = if uri.contains('?') { '&' } else { '?' };
        uri.push_str(&format!("{sep}admin={addr}"));
        if args.admin_insecure {
            uri.push_str("&admin_insecure=1");
        }
    }
    uri
}

/// SIGINT and SIGTERM, caught from the moment they are installed.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Inside the runtime that will wait for them.
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
