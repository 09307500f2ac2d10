//! `octodb-bench`: the performance scenarios of octodb, each measured against plain local SQLite
//! doing the same work on the same machine in the same run. See BENCHMARKS.md.

mod baseline;
mod catchup;
mod cluster;
mod conditions;
mod connections;
mod download;
mod dqlite;
mod encrypted;
mod failover;
mod latency;
mod memory;
mod plain_work;
mod primary_alone;
mod procs;
mod raft;
mod report;
mod rounds;
mod streaming;
mod writers;

/// octodb's threads hand rows to one another all the time (app thread, network tasks, the
/// writer), so much memory is freed on another thread than the one that allocated it; glibc's
/// allocator then contends on its arena locks (14% of all CPU in the streaming benchmark).
/// mimalloc frees across threads without a lock. Built without transparent huge pages
/// (`no_thp`), which otherwise cost an idle device ~15 MB of RSS. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Result;
use clap::{Parser, Subcommand};
use conditions::Conditions;
use report::Figure;
use serde::Serialize;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "octodb benchmarks: replication figures against plain local SQLite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Smaller sizes (a smoke run of a minute or two, not the figures of record).
    #[arg(long, global = true)]
    quick: bool,
    /// Also write the figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Every scenario, in turn.
    All,
    Streaming,
    Writers {
        /// Devices writing at once.
        #[arg(long, default_value_t = 100)]
        devices: usize,
    },
    Latency,
    Catchup,
    Download,
    Connections,
    Memory,
    /// The primaries' Raft layer alone, with whole batches as proposals.
    Raft,
    /// Streaming, catch-up and download with `cipher=sqlcipher` against the same without it.
    Encrypted,
    /// Three primaries: commits confirmed by a majority, replication to a follower, and the
    /// time from the leader's loss until a device's next transaction is accepted.
    Failover,
    /// Three primaries beside a 3-node dqlite cluster (Debian's go-dqlite tools; skipped
    /// without them): single-row write transactions per second, in the same run.
    Dqlite {
        /// Concurrent clients on each side, one measurement per count.
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        clients: Vec<usize>,
    },
    #[command(name = "_idle-device", hide = true)]
    IdleDevice {
        uri: String,
        user: i64,
    },
    #[command(name = "_device-commits", hide = true)]
    DeviceCommits {
        rows: u64,
    },
    #[command(name = "_busy-device-latency", hide = true)]
    BusyDeviceLatency {
        samples: usize,
        /// The app commits without pausing between transactions.
        #[arg(long)]
        unpaced: bool,
    },
    #[command(name = "_offline-hot-row", hide = true)]
    OfflineHotRow {
        txns: u64,
        /// Each transaction inserts its own row instead.
        #[arg(long)]
        distinct: bool,
    },
    #[command(name = "_handshake-cost", hide = true)]
    HandshakeCost {
        count: usize,
    },
    /// A fixed amount of plain local SQLite work, for instruction counts under callgrind.
    #[command(name = "_plain-work", hide = true)]
    PlainWork {
        rows: u64,
    },
    #[command(name = "_conn-primary", hide = true)]
    ConnPrimary {
        path: String,
        /// Primaries joining this one's cluster, in this process.
        #[arg(long, default_value_t = 0)]
        followers: usize,
    },
    #[command(name = "_conn-clients", hide = true)]
    ConnClients {
        addr: String,
        count: usize,
        ips: String,
        last_seq: u64,
    },
}

/// What `--json` writes: the figures with the machine's state around them, so that two runs'
/// files compare like their printed output.
#[derive(Serialize)]
struct Run {
    before: Conditions,
    figures: Vec<Figure>,
    after: Conditions,
}

fn main() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OCTODB_LOG")
                // (openraft reports every unreachable member of a cluster whose leader the
                // fail-over scenario stops, at warn and error levels.)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let cli = Cli::parse();
    // Any scenario on encrypted files, e.g. to profile one: OCTODB_BENCH_CIPHER=key or hexkey.
    match std::env::var("OCTODB_BENCH_CIPHER").as_deref() {
        Ok("key") => cluster::encrypt_at_rest(cluster::PASSPHRASE),
        Ok("hexkey") => cluster::encrypt_at_rest(cluster::RAW_KEY),
        _ => {}
    }
    let q = cli.quick;
    let mut writer_devices = 100;
    let mut dqlite_clients = vec![1, 4];
    let scenarios: Vec<&str> = match &cli.command {
        Command::IdleDevice { uri, user } => return memory::idle_device(uri, *user),
        Command::ConnPrimary { path, followers } => {
            return connections::primary_proc(path, *followers)
        }
        Command::PlainWork { rows } => return plain_work::run(*rows),
        Command::HandshakeCost { count } => return connections::handshake_cost(*count),
        Command::OfflineHotRow { txns, distinct } => {
            return catchup::offline_hot_row(*txns, *distinct)
        }
        Command::DeviceCommits { rows } => return streaming::device_commit_rate(*rows),
        Command::BusyDeviceLatency { samples, unpaced } => {
            return latency::under_local_writes(*samples, *unpaced)
        }
        Command::ConnClients {
            addr,
            count,
            ips,
            last_seq,
        } => return connections::clients_proc(addr, *count, ips, *last_seq),
        Command::All => vec![
            "streaming",
            "writers",
            "latency",
            "catchup",
            "download",
            "connections",
            "memory",
            "raft",
            "encrypted",
            "failover",
        ],
        Command::Streaming => vec!["streaming"],
        Command::Writers { devices } => {
            writer_devices = *devices;
            vec!["writers"]
        }
        Command::Latency => vec!["latency"],
        Command::Catchup => vec!["catchup"],
        Command::Download => vec!["download"],
        Command::Connections => vec!["connections"],
        Command::Memory => vec!["memory"],
        Command::Raft => vec!["raft"],
        Command::Encrypted => vec!["encrypted"],
        Command::Failover => vec!["failover"],
        Command::Dqlite { clients } => {
            dqlite_clients = clients.clone();
            vec!["dqlite"]
        }
    };
    println!(
        "octodb-bench{}",
        if q { " (--quick: reduced sizes)" } else { "" }
    );
    // Before any scenario, so that the load is the machine's and not this run's.
    let before = Conditions::measure();
    println!("machine before: {}", before.describe());
    let mut all: Vec<Figure> = Vec::new();
    let mut failed = Vec::new();
    for s in scenarios {
        eprintln!("== {s}");
        let result = match s {
            "streaming" => streaming::run(if q { 20_000 } else { 200_000 }),
            "writers" => writers::run(writer_devices, Duration::from_secs(if q { 2 } else { 10 })),
            "latency" => latency::run(if q { 200 } else { 2_000 }),
            "catchup" => catchup::run(if q { 10_000 } else { 100_000 }),
            "download" => download::run(if q { 100_000 } else { 1_000_000 }),
            "connections" => connections::run(if q { 2_000 } else { 19_900 }),
            "raft" => raft::run(if q { 2_000 } else { 20_000 }),
            "failover" => failover::run(if q { 50 } else { 500 }, 3),
            "dqlite" => dqlite::run(
                &dqlite_clients,
                if q { 3 } else { 10 },
                if q { 300 } else { 2_000 },
            ),
            "encrypted" => encrypted::run(encrypted::Sizes {
                streaming_rows: if q { 20_000 } else { 100_000 },
                catchup_txns: if q { 2_000 } else { 20_000 },
                download_rows: if q { 50_000 } else { 300_000 },
            }),
            _ => memory::run(),
        };
        match result {
            Ok(figures) => {
                for f in &figures {
                    f.print();
                }
                all.extend(figures);
            }
            Err(e) => {
                println!("{s:<12} FAILED: {e:#}");
                failed.push(s);
            }
        }
    }
    let after = Conditions::measure();
    println!(
        "machine after:  {} (this run's own work in the load)",
        after.describe()
    );
    if let Some(path) = &cli.json {
        let run = Run {
            before,
            figures: all,
            after,
        };
        std::fs::write(path, serde_json::to_string_pretty(&run)?)?;
    }
    if !failed.is_empty() {
        anyhow::bail!("scenarios failed to run: {failed:?}");
    }
    Ok(())
}
