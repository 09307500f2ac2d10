//! Child processes of the benchmark (a primary, clients, an idle device), driven by lines on
//! their standard input and answering with lines on their standard output.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    name: String,
}

impl Proc {
    /// Start this benchmark binary with `args` (a hidden subcommand).
    pub fn spawn(name: &str, args: &[String]) -> Result<Proc> {
        let exe = std::env::current_exe().context("finding the benchmark binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        Ok(Proc {
            child,
            stdin,
            stdout,
            name: name.to_string(),
        })
    }

    pub fn send(&mut self, line: &str) -> Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("{}: input already closed", self.name)
        };
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The next line the child prints, split into words.
    pub fn recv(&mut self) -> Result<Vec<String>> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("{} exited early", self.name);
        }
        Ok(line.split_whitespace().map(String::from).collect())
    }

    /// The next line, which must start with `word`; returns the rest.
    pub fn expect(&mut self, word: &str) -> Result<Vec<String>> {
        let words = self.recv()?;
        match words.split_first() {
            Some((w, rest)) if w == word => Ok(rest.to_vec()),
            _ => bail!("{}: expected `{word} ...`, got {words:?}", self.name),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Close its input (its signal to stop) and wait for it.
    pub fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("{} failed: {status}", self.name);
        }
        Ok(())
    }
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A figure in kB of a process's /proc status (`VmRSS`, `RssAnon`, `RssFile`, ...).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (Linux only)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc status"))
}

/// CPU time (user and system) a process has used so far, in seconds, from /proc.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).with_context(|| format!("reading {path} (Linux only)"))?;
    Ok(stat_cpu(&stat)?.1)
}

/// CPU time the threads of a process named `name` have used so far, in seconds.
pub fn thread_cpu_seconds(pid: u32, name: &str) -> Result<f64> {
    let mut total = 0.0;
    let tasks = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        // A thread that ended since the listing has no stat any more: it counts for nothing.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
            continue;
        };
        let (comm, cpu) = stat_cpu(&stat)?;
        if comm == name {
            total += cpu;
        }
    }
    Ok(total)
}

/// The command name and CPU seconds (user and system) of a /proc `stat` line.
fn stat_cpu(stat: &str) -> Result<(&str, f64)> {
    // The command name is in parentheses and may hold spaces.
    let (head, rest) = stat
        .rsplit_once(')')
        .context("no command name in /proc stat")?;
    let comm = head.split_once('(').map_or("", |(_, c)| c);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name and state.
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .context("no CPU times in /proc stat")? as f64)
    };
    // SAFETY: sysconf only reads a configuration value; _SC_CLK_TCK is a valid name.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((comm, (ticks(11)? + ticks(12)?) / per_second))
}

/// Lines from standard input until it closes; the child's command loop.
pub fn commands() -> impl Iterator<Item = String> {
    std::io::stdin().lock().lines().map_while(|l| l.ok())
}

pub fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}
