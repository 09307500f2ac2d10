//! `octodb demo --cluster`: three primaries as a Raft cluster, each a process of its own, and
//! a device on loopback; the leader's process is killed (SIGKILL), the device finds the new
//! leader and goes on, and the killed primary starts again and catches up.

use crate::demo::{count, demo_dir, wait_until};
use anyhow::{bail, Context};
use octodb::Connection;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);
/// The hidden subcommand that runs one of the demo's primaries (`octodb demo-primary URI`).
pub const PRIMARY_COMMAND: &str = "demo-primary";

/// The body of a primary's process: opens it, then answers the demo's questions on stdin
/// (`create`, `role`, `count`), one line each, until stdin closes.
pub fn primary_process(uri: Option<&String>) -> anyhow::Result<ExitCode> {
    let uri = uri.context("octodb demo-primary URI")?;
    let db = Connection::open(uri)?;
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let answer: anyhow::Result<String> = match line?.as_str() {
            "create" => db
                .execute(
                    "CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT NOT NULL, row_owner)",
                    [],
                )
                .map(|_| "created".to_string())
                .map_err(Into::into),
            // ("diverged": it died leading with a tail its cluster never held, and asks to
            // be opened again, which rejoins it as a new member.)
            "role" => db
                .sync_status()
                .map(|s| match (s.sync_error, s.cluster) {
                    (Some(e), _) if e.contains("opened again") => "diverged".to_string(),
                    // (Joining until its three voters are settled: a leader killed while
                    // they grow from two leaves no majority of the two.)
                    (_, Some(c)) if c.settled_voters() == Some(3) => c.role,
                    _ => "joining".to_string(),
                })
                .map_err(Into::into),
            "count" => count(&db, "SELECT count(*) FROM todos").map(|n| n.to_string()),
            other => Ok(format!("unknown command {other}")),
        };
        writeln!(out, "{}", answer.unwrap_or_else(|e| format!("error {e}")))?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One of the demo's primaries: a child process running this binary's `demo-primary`.
struct PrimaryProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl PrimaryProcess {
    fn start(uri: &str) -> anyhow::Result<PrimaryProcess> {
        let exe = std::env::current_exe().context("finding the octodb binary")?;
        let mut child = Command::new(exe)
            .args([PRIMARY_COMMAND, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a primary's process")?;
        let stdin = child.stdin.take().context("the primary's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the primary's stdout")?);
        let mut p = PrimaryProcess {
            child,
            stdin,
            stdout,
        };
        let ready = p.read_line()?;
        if ready != "ready" {
            bail!("a primary did not start: {ready}");
        }
        Ok(p)
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("a primary's process ended");
        }
        Ok(line.trim_end().to_string())
    }

    fn ask(&mut self, question: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{question}")?;
        self.stdin.flush()?;
        let answer = self.read_line()?;
        match answer.strip_prefix("error ") {
            Some(e) => bail!("{e}"),
            None => Ok(answer),
        }
    }

    /// SIGKILL: no goodbye to anyone.
    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for PrimaryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Primaries {
    dir: std::path::PathBuf,
    ports: [u16; 3],
    nodes: [Option<PrimaryProcess>; 3],
}

impl Primaries {
    fn uri(&self, i: usize, join: bool) -> String {
        let mut uri = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:{}",
            self.dir.join(format!("primary{}.db", i + 1)).display(),
            self.ports[i]
        );
        if join {
            uri.push_str(&format!("&connect=tcp://127.0.0.1:{}", self.ports[0]));
        }
        uri
    }

    fn role(&mut self, i: usize) -> String {
        self.nodes[i]
            .as_mut()
            .and_then(|p| p.ask("role").ok())
            .unwrap_or_else(|| "killed".into())
    }

    fn leader(&mut self) -> Option<usize> {
        (0..3).find(|&i| self.role(i) == "leader")
    }

    fn print_roles(&mut self) {
        for i in 0..3 {
            let role = self.role(i);
            let process = self.nodes[i]
                .as_ref()
                .map_or_else(|| "-".into(), |p| p.child.id().to_string());
            println!(
                "   primary{} (tcp://127.0.0.1:{}, process {process}): {role}",
                i + 1,
                self.ports[i],
            );
        }
    }

    fn count(&mut self, i: usize) -> anyhow::Result<i64> {
        let p = self.nodes[i].as_mut().context("a primary")?;
        Ok(p.ask("count")?.parse()?)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn run(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (_temp, dir) = demo_dir(dir)?;
    let dir: &Path = &dir;
    let started = Instant::now();
    println!(
        "octodb demo --cluster: three primaries (a Raft cluster) and a device, over loopback, in {}\n",
        dir.display()
    );
    let mut p = Primaries {
        dir: dir.to_path_buf(),
        ports: [free_port()?, free_port()?, free_port()?],
        nodes: [None, None, None],
    };
    let mut first = PrimaryProcess::start(&p.uri(0, false))?;
    first.ask("create")?;
    p.nodes[0] = Some(first);
    p.nodes[1] = Some(PrimaryProcess::start(&p.uri(1, true))?);
    p.nodes[2] = Some(PrimaryProcess::start(&p.uri(2, true))?);
    wait_until("three primaries in the cluster", || {
        let roles: Vec<String> = (0..3).map(|i| p.role(i)).collect();
        Ok(roles.iter().filter(|r| *r == "leader").count() == 1
            && roles.iter().filter(|r| *r == "follower").count() == 2)
    })?;
    println!(
        "1. primary1 formed the cluster; primary2 and primary3 joined it (connect=primary1), each \
         in a process of its own:"
    );
    p.print_roles();

    let device = Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{}",
        dir.join("device.db").display(),
        p.ports[0]
    ))?;
    device.wait_until_ready(DEADLINE)?;
    wait_until("the device to hear of the primaries", || {
        Ok(device.sync_status()?.primaries.len() == 3)
    })?;
    device.execute(
        "INSERT INTO todos(title) VALUES ('written before the fail-over')",
        [],
    )?;
    wait_until("the device's first row accepted", || {
        Ok(device.sync_status()?.outbox_len == 0)
    })?;
    println!(
        "\n2. A device joined through primary1 only, heard of all three primaries, and wrote a \
         row;\n   the leader accepted it once a majority of the primaries held it."
    );

    let leader = p.leader().context("a leader")?;
    let stopped_at = Instant::now();
    p.nodes[leader].take().context("the leader")?.kill()?;
    println!(
        "\n3. The leader, primary{}, is killed (SIGKILL: no goodbye to anyone).",
        leader + 1
    );
    device.execute(
        "INSERT INTO todos(title) VALUES ('written during the fail-over')",
        [],
    )?;
    wait_until("the device's row accepted by a new leader", || {
        Ok(device.sync_status()?.outbox_len == 0)
    })?;
    let new_leader = p.leader().context("a new leader")?;
    println!(
        "   The other two elected primary{} leader; the device found it and its new row was \
         accepted\n   {:.2} s after the kill:",
        new_leader + 1,
        stopped_at.elapsed().as_secs_f64()
    );
    p.print_roles();

    p.nodes[leader] = Some(PrimaryProcess::start(&p.uri(leader, false))?);
    wait_until("the restarted primary to catch up", || {
        if p.role(leader) == "diverged" {
            // As a supervisor would: it rejoins as a new member.
            drop(p.nodes[leader].take());
            p.nodes[leader] = Some(PrimaryProcess::start(&p.uri(leader, false))?);
        }
        Ok(p.count(leader)? == 2)
    })?;
    println!(
        "\n4. primary{} starts again: its stored membership brings it back as a follower, and \
         it catches up:",
        leader + 1
    );
    p.print_roles();
    println!("\n5. Every primary and the device hold the same rows:");
    for i in 0..3 {
        println!("   primary{}: {} rows", i + 1, p.count(i)?);
    }
    println!(
        "   device: {} rows\nDone in {:.2?}.",
        count(&device, "SELECT count(*) FROM todos")?,
        started.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}
