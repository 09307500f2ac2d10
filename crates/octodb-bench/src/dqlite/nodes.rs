//! A 3-node dqlite cluster on loopback, each node a `dqlite-benchmark` process (Debian's
//! go-dqlite package, over its libdqlite0), in a temporary directory.
//!
//! Why this tool: it is dqlite's own benchmark, so dqlite is driven as its authors drive it
//! (go-dqlite's client, its connection to the leader, its statements), and nothing has to be
//! compiled against libdqlite here. Each node is one process; the workers run inside one of
//! them and send their statements over TCP to the leader, as any client does.
//!
//! Order of start: node 1 bootstraps the cluster; node 2 joins it (go-dqlite leaves it a
//! spare: two voters are no safer than one); node 3 joins last and runs the workload (the
//! tool's `--driver`). A node reports "ready" only once it has joined and taken its role, and
//! node 3, the third, makes itself and node 2 voters before that, so the workload starts on
//! three voters. (Starting the driver on node 1 with the others joining at once, as the tool's
//! help shows, can measure the first writes on a cluster of one voter.) After the run the
//! roles are read back: a run on fewer than three voters fails.

use super::results::{self, Summary};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What the tool prints once its node has joined and has its role.
const READY: &str = "Benchmark client ready";
/// How long a node may take to join (the tool's `--cluster-timeout` too).
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// The programs of Debian's go-dqlite package.
pub struct Tools {
    benchmark: PathBuf,
    shell: PathBuf,
    /// The installed libdqlite0 package's version, or "unknown".
    pub version: String,
}

/// The tools, or why they cannot be used (then the scenario is skipped).
pub fn find_tools() -> std::result::Result<Tools, String> {
    let missing = |name: &str| {
        format!(
            "`{name}` is not on PATH: it comes with Debian's go-dqlite package \
             (scripts/bench-dqlite-setup installs it)"
        )
    };
    let benchmark = on_path("dqlite-benchmark").ok_or_else(|| missing("dqlite-benchmark"))?;
    let shell = on_path("dqlite").ok_or_else(|| missing("dqlite"))?;
    Ok(Tools {
        benchmark,
        shell,
        version: package_version("libdqlite0").unwrap_or_else(|| "unknown".into()),
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn package_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// One run of the tool's write workload on a fresh cluster.
pub struct Outcome {
    pub summary: Summary,
    /// Rows in the workload's table afterwards, read through the leader.
    pub rows: u64,
}

/// `clients` workers (the tool's `--workers`, sharing one connection pool to the leader),
/// each inserting one row per autocommit transaction for `secs` seconds. Keys of 16 and values
/// of 64 bytes (a row about the size of the octodb scenarios' 64-byte payloads).
pub fn run(tools: &Tools, clients: usize, secs: u64) -> Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("octodb-bench-dqlite")
        .tempdir_in(crate::cluster::bench_dir()?)?;
    let addrs = free_loopback_addrs(3)?;
    let cluster = addrs.join(",");
    let wait = JOIN_WAIT.as_secs().to_string();
    let mut first = Node::spawn(tools, dir.path(), 1, &addrs[0], &[])?;
    first.wait_ready()?;
    let join = ["--join", &addrs[0]];
    let mut second = Node::spawn(tools, dir.path(), 2, &addrs[1], &join)?;
    second.wait_ready()?;
    let (workers, duration) = (clients.to_string(), secs.to_string());
    #[rustfmt::skip]
    let driving = [
        "--join", &addrs[0], "--driver", "--cluster", &cluster, "--cluster-timeout", &wait,
        "--workload", "kvwrite", "--workers", &workers, "--duration", &duration,
        "--key-size", "16", "--value-size", "64",
    ];
    let mut driver = Node::spawn(tools, dir.path(), 3, &addrs[2], &driving)?;
    driver.wait_exit(Duration::from_secs(secs) + 2 * JOIN_WAIT)?;
    // The tool writes its results under <dir>/<its address>/results.
    let summary = results::read_dir(&dir.path().join("3").join(&addrs[2]).join("results"))
        .with_context(|| format!("dqlite's results; its log:\n{}", driver.log_tail()))?;
    // Nodes 1 and 2 are still a majority of three: the leader answers.
    let roles = shell(tools, &addrs[0], ".cluster")?;
    // One line per node: `<id>|<address>|<role>`.
    let voters = roles
        .lines()
        .filter(|l| l.trim().ends_with("|voter"))
        .count();
    if voters != 3 {
        bail!("dqlite's cluster has {voters} voters, not 3:\n{roles}");
    }
    let count = shell(tools, &addrs[0], "SELECT count(*) FROM model")?;
    let rows = count
        .trim()
        .parse()
        .with_context(|| format!("the dqlite shell's count: {count:?}"))?;
    drop((first, second));
    Ok(Outcome { summary, rows })
}

/// `n` distinct free ports on 127.0.0.1. (Each is released before the tool binds it: another
/// program could take it in between, and the node would then fail to start, loudly.)
fn free_loopback_addrs(n: usize) -> Result<Vec<String>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.to_string()))
        .collect()
}

/// What the dqlite shell prints for `command` (SQL or a dot command) on the workload's
/// database, through the leader.
fn shell(tools: &Tools, leader: &str, command: &str) -> Result<String> {
    let mut child = Command::new(&tools.shell)
        .args(["-s", leader, "benchmark", command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the dqlite shell")?;
    let status = wait_until(&mut child, Instant::now() + JOIN_WAIT)?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err)?;
    }
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => bail!("the dqlite shell failed on {command:?} ({s}): {out}{err}"),
        None => bail!("the dqlite shell did not answer {command:?} within {JOIN_WAIT:?}"),
    }
}

/// Wait for `child` until `deadline`: its status, or None (then it has been killed).
fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A node's process, killed when dropped (its files go with the temporary directory).
struct Node {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Node {
    fn spawn(tools: &Tools, dir: &Path, n: usize, addr: &str, args: &[&str]) -> Result<Node> {
        let name = format!("dqlite node {n} ({addr})");
        let data = dir.join(n.to_string());
        let log = dir.join(format!("node{n}.log"));
        let out = File::create(&log)?;
        let child = Command::new(&tools.benchmark)
            .args(["--db", addr, "--dir"])
            .arg(&data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Node { child, log, name })
    }

    /// Until the node says it has joined, failing if it exits or takes too long.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + JOIN_WAIT;
        loop {
            if std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(READY)) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {JOIN_WAIT:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Until the driver ends its workload, which must succeed within `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Result<()> {
        match wait_until(&mut self.child, Instant::now() + limit)? {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("{} failed ({s}):\n{}", self.name, self.log_tail()),
            None => bail!(
                "{} still running after {limit:?}:\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// The last lines of the node's output, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // An error means it has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
