//! A primary with `auth=user` and its devices, in a temporary directory, on loopback.

use anyhow::{bail, Context, Result};
use octodb::auth::{Action, AuthRequest, Decision};
use octodb::Connection;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// What every node URI of the clusters made from now on ends with: nothing, or a cipher and a
/// key (the `encrypted` scenario runs the same work both ways).
static AT_REST: Mutex<&'static str> = Mutex::new("");

/// A passphrase: SQLCipher's PBKDF2 (~0.2 s here) once for each new file.
pub const PASSPHRASE: &str = "&cipher=sqlcipher&key=octodb-bench-passphrase";
/// A raw 256-bit key: no key derivation.
pub const RAW_KEY: &str =
    "&cipher=sqlcipher&hexkey=5f1c2e3d4a5b6c7d8e9f00112233445566778899aabbccddeeff001122334455";

pub fn encrypt_at_rest(params: &'static str) {
    *AT_REST.lock().unwrap_or_else(|p| p.into_inner()) = params;
}

fn at_rest_params() -> &'static str {
    *AT_REST.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long any single wait of the benchmark may take before it is reported as a failure.
pub const DEADLINE: Duration = Duration::from_secs(600);

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub primary: Connection,
    pub addr: String,
}

/// The backend's decisions in every scenario: a sign-up makes a new user, a login with data
/// `user:N` joins user N's devices.
pub fn approve(r: &AuthRequest) -> Decision {
    match (r.action, r.data.as_deref()) {
        (Action::UserSignup, _) => Decision::User(0),
        (Action::UserLogin, Some(d)) => match d.strip_prefix("user:").map(str::parse::<i64>) {
            Some(Ok(u)) if u > 0 => Decision::User(u),
            _ => Decision::Reject("login data must be user:N".into()),
        },
        _ => Decision::Reject("unexpected request".into()),
    }
}

impl Cluster {
    /// A primary on a free loopback port with the given schema.
    pub fn new(schema: &str) -> Result<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("octodb-bench")
            .tempdir_in(bench_dir()?)?;
        let uri = format!(
            "file:{}?node=primary&bind=tcp://127.0.0.1:0&auth=user{}",
            dir.path().join("primary.db").display(),
            at_rest_params()
        );
        let primary = Connection::open(&uri).context("opening the primary")?;
        primary.set_auth_callback(Action::UserSignup, approve)?;
        primary.set_auth_callback(Action::UserLogin, approve)?;
        primary.execute_batch(schema)?;
        let addr = primary
            .bound_addrs()
            .first()
            .context("the primary is not listening")?
            .to_string();
        Ok(Cluster { dir, primary, addr })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn device_uri(&self, name: &str) -> String {
        device_uri(&self.path(name), &self.addr)
    }

    /// A new device of a new user, ready; returns it with its user id.
    pub fn signup(&self, name: &str) -> Result<(Connection, i64)> {
        let d = Connection::open(&self.device_uri(name))?;
        d.execute(&format!("PRAGMA user_signup='{name}'"), [])?;
        let s = d.wait_until_ready(DEADLINE)?;
        let Some(user) = s.user_id else {
            bail!("device {name} is ready without a user")
        };
        Ok((d, user))
    }

    /// A further device of `user`, ready.
    pub fn login(&self, name: &str, user: i64) -> Result<Connection> {
        let d = Connection::open(&self.device_uri(name))?;
        d.execute(&format!("PRAGMA user_login='user:{user}'"), [])?;
        d.wait_until_ready(DEADLINE)?;
        Ok(d)
    }
}

pub fn device_uri(path: &std::path::Path, addr: &str) -> String {
    format!(
        "file:{}?node=secondary&connect=tcp://{addr}{}",
        path.display(),
        at_rest_params()
    )
}

/// Where benchmark files go: `OCTODB_BENCH_DIR`, else the system temp dir. Both octodb and the
/// SQLite baseline use the same disk, so their figures compare.
pub fn bench_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("OCTODB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Insert `rows` items owned by `owner` in transactions of `per_txn`, numbered from 0.
pub fn fill(
    c: &mut Connection,
    rows: u64,
    per_txn: u64,
    payload_len: usize,
    owner: i64,
) -> Result<()> {
    let mut n = 0;
    while n < rows {
        let tx = c.transaction()?;
        for _ in 0..per_txn.min(rows - n) {
            tx.execute(
                crate::baseline::INSERT,
                rusqlite::params![n as i64, payload(n, payload_len), owner],
            )?;
            n += 1;
        }
        tx.commit()?;
    }
    Ok(())
}

/// The next event of `events`, failing once `end` has passed. None: some were missed.
pub fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<octodb::Event>,
    end: std::time::Instant,
) -> Result<Option<octodb::Event>> {
    let left = end.saturating_duration_since(std::time::Instant::now());
    match octodb::next_event(events, left) {
        octodb::Next::Event(e) => Ok(Some(e)),
        octodb::Next::Missed(_) => Ok(None),
        octodb::Next::Timeout => bail!("no event within the benchmark's deadline"),
        octodb::Next::Closed => bail!("the node stopped"),
    }
}

pub fn count(c: &Connection, sql: &str) -> Result<i64> {
    Ok(c.query_row(sql, [], |r| r.get::<i64>(0))?)
}

/// A payload of about `len` bytes that differs per row (so pages do not compress trivially).
pub fn payload(i: u64, len: usize) -> String {
    let seed = format!("{i:016x}");
    seed.repeat(len / seed.len() + 1)[..len].to_string()
}
