//! Many writers, the primary alone: what one primary accepts when its devices do not share its
//! cores. The primary runs in its own process; this process holds the device sessions, each
//! speaking the device protocol (sign-up, then one single-row transaction at a time, each
//! awaited) with no SQLite file behind it, so that nearly all the machine is the primary's.
//! Not the scenario (its devices are real nodes with files, on the same cores); a
//! measure of the primary's own cost per accepted transaction.

use crate::cluster::payload;
use crate::procs::{self, Proc};
use anyhow::{bail, Context, Result};
use octodb::changes::{ChangeSet, Op};
use octodb::crypto::NodeKeys;
use octodb::log::EntryBody;
use octodb::net::{HandshakeOptions, Message, SecureStream};
use octodb::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 64;

#[derive(Clone)]
pub struct PrimaryAlone {
    /// Accepted transactions per second, over all sessions.
    pub rate: f64,
    /// CPU of the primary's process per accepted transaction, in microseconds.
    pub cpu_us: f64,
    /// Of which its writer thread (checks, apply, log, group commit), which runs alone.
    pub writer_us: f64,
}

/// `followers`: the primary leads a cluster with that many more primaries, in its process
/// (the "3 primaries on this machine": they share its two cores and its disk).
pub fn run(sessions: usize, duration: Duration, followers: usize) -> Result<PrimaryAlone> {
    let dir = tempfile::Builder::new()
        .prefix("octodb-bench")
        .tempdir_in(crate::cluster::bench_dir()?)?;
    let path = dir.path().join("primary.db");
    let mut primary = Proc::spawn(
        "the primary",
        &[
            "_conn-primary".into(),
            path.display().to_string(),
            format!("--followers={followers}"),
        ],
    )?;
    let listening = primary.expect("listening")?;
    let addr: SocketAddr = listening
        .first()
        .context("the primary's address")?
        .parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let devices = rt.block_on(async {
        let mut signups = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            signups.push(tokio::spawn(async move {
                sign_up(addr).await.context("a session signing up")
            }));
        }
        let mut devices = Vec::with_capacity(sessions);
        for s in signups {
            devices.push(s.await??);
        }
        anyhow::Ok(devices)
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let cpu_before = procs::cpu_seconds(primary.pid())?;
    let writer_before = procs::thread_cpu_seconds(primary.pid(), "octodb-writer")?;
    let started = Instant::now();
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|d| rt.spawn(d.write_until(stop.clone(), accepted.clone())))
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let written = rt.block_on(async {
        for t in tasks {
            t.await?.context("a session writing")?;
        }
        anyhow::Ok(())
    });
    if let Err(e) = written {
        primary.send("undecided")?;
        let undecided = primary.expect("undecided")?.join(" ");
        bail!("{e:#}; devices with nothing in the primary's log (node:last_txn:state:user): {undecided}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = procs::cpu_seconds(primary.pid())? - cpu_before;
    let writer = procs::thread_cpu_seconds(primary.pid(), "octodb-writer")? - writer_before;
    primary.send("rows")?;
    let rows: u64 = primary
        .expect("rows")?
        .first()
        .and_then(|n| n.parse().ok())
        .context("the primary's row count")?;
    primary.finish()?;
    let n = accepted.load(Ordering::Relaxed);
    if n == 0 || rows != n {
        bail!("the primary holds {rows} rows but {n} transactions were acknowledged");
    }
    Ok(PrimaryAlone {
        rate: n as f64 / elapsed,
        cpu_us: cpu * 1e6 / n as f64,
        writer_us: writer * 1e6 / n as f64,
    })
}

/// How long a session waits for the decision of its transaction before it reports what it
/// heard instead (a decision that never comes would otherwise end as a bare "closed").
const DECISION_WAIT_MAX: Duration = Duration::from_secs(60);

/// A signed-up device session with no file: its ids, and its next transaction.
struct Device {
    stream: SecureStream,
    node_id: u32,
    user_id: i64,
    next_txn: u64,
}

async fn sign_up(addr: SocketAddr) -> Result<Device> {
    let keys = NodeKeys::generate();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut stream = SecureStream::connect(tcp, &keys, &HandshakeOptions::default()).await?;
    let welcomed = crate::connections::hello(&mut stream, true, 0).await?;
    // As a device does, nothing is sent before the initial download ends: a transaction
    // decided inside the downloaded state would have its decision before the download's
    // position, which is never streamed.
    loop {
        if let Message::SnapshotEnd { .. } = Message::decode(&stream.recv().await?)? {
            break;
        }
    }
    Ok(Device {
        stream,
        node_id: welcomed.node_id,
        user_id: welcomed.user_id,
        next_txn: welcomed.last_decided_txn + 1,
    })
}

impl Device {
    /// One single-row transaction at a time, each awaited, until `stop`.
    async fn write_until(mut self, stop: Arc<AtomicBool>, accepted: Arc<AtomicU64>) -> Result<()> {
        let columns: Vec<String> = ["id", "n", "payload", "row_owner"]
            .map(String::from)
            .to_vec();
        while !stop.load(Ordering::Relaxed) {
            let txn = self.next_txn;
            self.next_txn += 1;
            let rowid = (self.node_id as i64) << 32 | txn as i64;
            let mut cs = ChangeSet::default();
            let table = cs.table_index("items", &columns);
            cs.ops.push(Op::Insert {
                table,
                rowid,
                values: vec![
                    Value::Integer(rowid),
                    Value::Integer(txn as i64),
                    Value::Text(payload(txn, PAYLOAD)),
                    Value::Integer(self.user_id),
                ],
            });
            self.stream
                .send(
                    &Message::Txns {
                        txns: vec![(txn, cs)],
                    }
                    .encode(),
                )
                .await?;
            self.stream.flush().await?;
            self.until_decided(txn).await?;
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Read what the primary sends until it decides `txn`: an error if it rejects it.
    async fn until_decided(&mut self, txn: u64) -> Result<()> {
        // What it heard last, to say so if the decision never comes.
        let mut seen: Vec<String> = Vec::new();
        loop {
            let got = tokio::time::timeout(DECISION_WAIT_MAX, self.stream.recv()).await;
            let Ok(got) = got else {
                bail!(
                    "node {} waited {DECISION_WAIT_MAX:?} for the decision of its transaction {txn}; it heard: {}",
                    self.node_id,
                    seen.join(", ")
                );
            };
            let message = Message::decode(&got?)?;
            seen.push(match &message {
                Message::Entries { entries, up_to } => format!(
                    "Entries({} up to {up_to}: {:?})",
                    entries.len(),
                    entries
                        .iter()
                        .map(|e| (e.seq, e.origin_node, e.origin_txn))
                        .collect::<Vec<_>>()
                ),
                other => other.kind().to_string(),
            });
            if seen.len() > 12 {
                seen.remove(0);
            }
            let entries = match message {
                Message::Entries { entries, .. } => entries,
                // The primary ends the session, saying why.
                Message::Refused { reason } => bail!("the primary ended the session: {reason}"),
                Message::NotLeader { reason, .. } => bail!("the primary stopped leading: {reason}"),
                Message::CopiedFile { reason, .. } => bail!("taken for a copied device: {reason}"),
                // The empty initial download, before the first entries; digests.
                _ => continue,
            };
            for e in entries {
                if e.origin_node != self.node_id || e.origin_txn != txn {
                    continue;
                }
                return match e.body {
                    EntryBody::Changes(_) => Ok(()),
                    EntryBody::Rejected { reason } => bail!("transaction {txn} rejected: {reason}"),
                    // (Primaries only: never sent to a device.)
                    EntryBody::Epoch { .. } => continue,
                };
            }
        }
    }
}
