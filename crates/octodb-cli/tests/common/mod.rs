//! What the `octodb` binary's integration tests share: the binary, a primary and a device
//! on loopback, a served process, counts.
#![allow(dead_code)] // each test binary uses its own part

use octodb::Connection;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn octodb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_octodb"))
}

pub fn primary(dir: &std::path::Path) -> (Connection, String) {
    let p = Connection::open(&format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:0",
        dir.join("p.db").display()
    ))
    .expect("open primary");
    let addr = p.bound_addrs()[0].to_string();
    (p, addr)
}

pub fn device_uri(dir: &std::path::Path, addr: &str) -> String {
    format!(
        "file:{}?node=secondary&connect=tcp://{addr}",
        dir.join("d.db").display()
    )
}

/// Lines of a child's stdout, read on a thread so that the test can wait with a deadline.
pub fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The shell run with `args`, its standard input to write to, and the lines it prints.
pub fn piped_shell(args: &[&str]) -> (Child, std::process::ChildStdin, mpsc::Receiver<String>) {
    let mut child = octodb()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let lines = lines_of(&mut child);
    (child, stdin, lines)
}

pub fn next_line(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(DEADLINE)
        .expect("a line of output before the deadline")
}

pub fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get::<i64>(0)).expect("count")
}

/// An `octodb serve` process, killed if the test ends without stopping it.
pub struct Served(pub Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `octodb serve` on `uri`; returns the process and the address it serves on.
pub fn serve(uri: &str) -> (Served, String) {
    let mut child = octodb()
        .args(["serve", uri])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Served(child);
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("serving on tcp://")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_string();
    // Keep reading, so that the process never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    (child, addr)
}
