//! Real nodes on loopback sockets and real files; waits on conditions, never fixed sleeps.
#![allow(dead_code)]

use octodb::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OCTODB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub struct Net {
    pub dir: tempfile::TempDir,
}

impl Net {
    pub fn new() -> Net {
        init_tracing();
        Net {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn primary_uri(&self, name: &str, port: u16, auth: Option<&str>) -> String {
        let mut uri = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:{port}",
            self.path(name).display()
        );
        if let Some(a) = auth {
            uri += &format!("&auth={a}");
        }
        uri
    }

    pub fn primary(&self, name: &str) -> Connection {
        Connection::open(&self.primary_uri(name, 0, None)).expect("open primary")
    }

    pub fn device(&self, name: &str, primary: &Connection) -> Connection {
        Connection::open(&device_uri(&self.path(name), &addr_of(primary))).expect("open device")
    }
}

pub fn device_uri(path: &Path, primary_addr: &str) -> String {
    format!(
        "file:{}?node=secondary&connect=tcp://{primary_addr}",
        path.display()
    )
}

pub fn addr_of(primary: &Connection) -> String {
    primary
        .bound_addrs()
        .first()
        .expect("primary is listening")
        .to_string()
}

pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

pub fn ready(c: &Connection) -> octodb::SyncStatus {
    c.wait_until_ready(DEADLINE).expect("node becomes ready")
}

pub fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get::<i64>(0))
        .expect("count query")
}
