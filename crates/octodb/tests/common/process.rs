//! Child processes of a test binary: the binary started again in a role (a primary, a
//! device), driven line by line over its stdin, answering on its stdout. Each test binary
//! that uses them has a `child_process` test that does the role's work when `ROLE` is set.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const ROLE: &str = "OCTODB_FAULT_ROLE";
pub const URI: &str = "OCTODB_FAULT_URI";
/// How long a child may take to answer one command (generous: CI machines are slow).
pub const ANSWER: Duration = Duration::from_secs(60);
/// Marks the child's answers among the lines the test harness prints (which may share a line).
pub const MARK: &str = "@@ ";

/// A loopback port free now, for a URI that must name its port before binding it (and bind
/// it again after a restart). Taken below Linux's ephemeral range (32768-60999), so that no
/// other test's outgoing connection is handed it while its primary is down; each test
/// process counts on from a place of its own, so parallel tests do not pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process in a role, driven line by line.
pub struct Process {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Process {
    pub fn start(role: &str, uri: &str) -> Process {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .env(URI, uri)
            .env(
                "OCTODB_LOG",
                std::env::var("FAULT_CHILD_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match std::env::var_os("FAULT_CHILD_LOG") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
            .spawn()
            .expect("start a child process");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let show_logs = std::env::var_os("FAULT_CHILD_LOG").is_some();
        let name = format!("{role} {}", child.id());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if show_logs && !line.contains(MARK) {
                    eprintln!("[{name}] {line}");
                }
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut p = Process {
            child,
            stdin,
            lines,
        };
        p.expect("ready");
        p
    }

    /// The child's next answer that starts with `word` (or an error).
    pub fn expect(&mut self, word: &str) -> String {
        let end = Instant::now() + ANSWER;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!("no `{word}` from the child: {e}"),
            };
            let Some((_, answer)) = line.split_once(MARK) else {
                continue;
            };
            if answer.starts_with(word) || answer.starts_with("error") {
                return answer.to_string();
            }
        }
    }

    pub fn ask(&mut self, command: &str, word: &str) -> String {
        self.send(command);
        self.expect(word)
    }

    /// Gives the child a command without waiting for its answer (a stopped child reads it
    /// when it runs again).
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("the child reads its commands");
        self.stdin.flush().unwrap();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "kill {signal} failed: the suite needs the `kill` command"
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
