//! `octodb encrypt PLAIN ENCRYPTED_URI` and `octodb decrypt ENCRYPTED_URI PLAIN`: a copy of a
//! database file with encryption at rest added or taken off, through SQLCipher's own
//! `sqlcipher_export` into a new file attached with the target's key. The source is read
//! beside a node that may be running on it (as `octodb backup` does) and is never changed; the
//! target must not exist.

use crate::ConvertArgs;
use anyhow::{bail, Context};
use octodb::uri::NetworkKey;
use octodb::NodeConfig;
use std::process::ExitCode;

/// Which way a conversion goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

pub fn run(direction: Direction, args: ConvertArgs) -> anyhow::Result<ExitCode> {
    let source = match direction {
        Direction::Encrypt => parse_plain_source(&args.source)?,
        Direction::Decrypt => parse(&args.source)?,
    };
    let target = parse(&args.target)?;
    let (encrypted, verb) = match direction {
        Direction::Encrypt => (&target, "encrypt"),
        Direction::Decrypt => (&source, "decrypt"),
    };
    if encrypted.file_key().is_none() {
        bail!(
            "octodb {verb}: the encrypted side needs its key: write it as \
             file:PATH?cipher=sqlcipher&key=... (or hexkey=, keyenv=, keyfile=)"
        );
    }
    let plain = if direction == Direction::Encrypt {
        &source
    } else {
        &target
    };
    if plain.file_key().is_some() {
        bail!(
            "octodb {verb}: the plain side is given a file key (cipher=); name it by its path, \
             with the network key its node runs with as key= if it has one"
        );
    }
    if target.path.exists() {
        bail!(
            "`{}` exists already: name a new file (octodb never overwrites one)",
            target.path.display()
        );
    }
    if !source.path.exists() {
        bail!("there is no database at `{}`", source.path.display());
    }
    let opts = octodb::OpenOptions {
        uri: false,
        busy_timeout: std::time::Duration::from_secs(30),
    };
    let conn = octodb::Connection::open_file(&source, &opts)
        .with_context(|| format!("opening `{}`", source.path.display()))?;
    // A source that cannot be read as given (an encrypted file named as plain, a wrong key)
    // is named as such, before the new file is made.
    if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())) {
        match direction {
            Direction::Encrypt => bail!(
                "`{}` cannot be read as a plain database ({e}): it is encrypted already \
                 (`octodb decrypt` makes a plain copy) or not a database",
                source.path.display()
            ),
            Direction::Decrypt => {
                return Err(e).with_context(|| format!("reading `{}`", source.path.display()))
            }
        }
    }
    // Written under a name of its own, readable by its owner only (a plain copy holds every
    // row and the node's secret key), and marked as a backup's copy is when a node runs on
    // the source (a stopped node's copy is its file exactly).
    let mark = octodb::write_copy(&source.path, &target, |partial| {
        export(&conn, direction, &source, target.file_key(), partial)
            .map_err(|e| octodb::Error::rule(format!("{e:#}")))
    })
    .context("copying the database into the new file")?;
    eprintln!(
        "octodb: {verb}ed `{}` into `{}`; `{}` is unchanged",
        source.path.display(),
        target.path.display(),
        source.path.display()
    );
    if let Some(note) = crate::backup::mark_note(&mark) {
        eprintln!("octodb: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Exports the source database `conn` reads into the empty file `dest`, with the target's key.
fn export(
    conn: &octodb::Connection,
    direction: Direction,
    source: &NodeConfig,
    target_key: Option<&NetworkKey>,
    dest: &std::path::Path,
) -> anyhow::Result<()> {
    let dest = dest
        .to_str()
        .context("the new file's path is not valid UTF-8")?;
    // An empty key attaches a plain file; the key is bound, never spliced into the SQL.
    let key = target_key.map(attach_key).unwrap_or_default();
    conn.execute(
        "ATTACH DATABASE ?1 AS converted KEY ?2",
        [dest, key.as_str()],
    )
    .context("creating the new file")?;
    conn.query_row("SELECT sqlcipher_export('converted')", [], |_| Ok(()))?;
    if direction == Direction::Encrypt {
        keep_network_key(conn, source)?;
    }
    keep_header_settings(conn)?;
    conn.execute_batch("DETACH DATABASE converted")?;
    Ok(())
}

/// The settings a file keeps in its header, which `sqlcipher_export` copies no more than
/// `VACUUM INTO` would: the app's schema version (`user_version`, which apps count their
/// migrations by: lost, they would run them all again), its `application_id`, and WAL mode.
fn keep_header_settings(conn: &octodb::Connection) -> anyhow::Result<()> {
    for setting in ["user_version", "application_id"] {
        let value: i64 = conn.query_row(&format!("PRAGMA main.{setting}"), [], |r| r.get(0))?;
        if value != 0 {
            // An integer read from SQLite: nothing of a user's text goes into the statement.
            conn.execute_batch(&format!("PRAGMA converted.{setting} = {value}"))?;
        }
    }
    let mode: String = conn.query_row("PRAGMA main.journal_mode", [], |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        conn.query_row("PRAGMA converted.journal_mode = wal", [], |_| Ok(()))?;
    }
    Ok(())
}

/// A node's file, encrypted, keeps the network key its node had plain (the source URI's `key=`,
/// or none): an encrypted node would otherwise derive a new one from its file key at its next
/// start, and its devices and peers, which hold the old one, could not connect any more. (A
/// decrypted file keeps the key its encrypted node had: it is in the copied `_octo_meta`.)
fn keep_network_key(conn: &octodb::Connection, source: &NodeConfig) -> anyhow::Result<()> {
    let is_node: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM converted.sqlite_master WHERE name = '_octo_meta')",
        [],
        |r| r.get(0),
    )?;
    if !is_node {
        return Ok(());
    }
    // (A plain file made by `octodb decrypt` keeps its encrypted node's network key.)
    let keeps_one: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM converted._octo_meta WHERE key = 'network_key')",
        [],
        |r| r.get(0),
    )?;
    if source.key.is_none() && !keeps_one {
        // A plain file does not hold its network key: only the source's URI tells it.
        eprintln!(
            "octodb: note: the new file's node has no network key (devices and primaries join \
             it with node keys alone). If `{}` ran with key= (or hexkey=, keyenv=, keyfile=), \
             remove the new file and give that key on the source: \
             octodb encrypt 'file:{}?key=...' ...",
            source.path.display(),
            source.path.display()
        );
    }
    let kept = source
        .key
        .as_ref()
        .map(|k| octodb::crypto::plain_network_key(k).to_vec())
        .unwrap_or_default();
    conn.execute(
        "INSERT OR IGNORE INTO converted._octo_meta(key, value)
         SELECT 'network_key', ?1
         WHERE EXISTS(SELECT 1 FROM converted._octo_meta WHERE key = 'node_keys')",
        [kept],
    )?;
    Ok(())
}

/// The plain source of `encrypt`, whose `key=` (or `hexkey=`, `keyenv=`, `keyfile=`) is the
/// network key its node runs with: taken as such without `node=` here, since the file itself
/// does not hold it.
fn parse_plain_source(uri: &str) -> anyhow::Result<NodeConfig> {
    let normalized = crate::normalize_uri(uri);
    let parsed = NodeConfig::parse(&normalized);
    let key_alone = parsed.is_err()
        && normalized.contains('?')
        && !normalized.contains("node=")
        && !normalized.contains("cipher=");
    if key_alone {
        // Read as a primary's URI (its address unused), then as a file with a network key.
        let as_node = format!("{normalized}&node=primary&bind=tcp://127.0.0.1:0");
        if let Ok(mut config) = NodeConfig::parse(&as_node) {
            config.role = None;
            config.bind.clear();
            return Ok(config);
        }
    }
    parsed.with_context(|| format!("reading the URI `{}`", NodeConfig::redacted(uri)))
}

fn parse(uri: &str) -> anyhow::Result<NodeConfig> {
    NodeConfig::parse(&crate::normalize_uri(uri))
        .with_context(|| format!("reading the URI `{}`", NodeConfig::redacted(uri)))
}

/// The key as SQLCipher's `ATTACH ... KEY` takes it: a passphrase as it is, raw bytes as
/// `x'<hex>'`.
fn attach_key(key: &NetworkKey) -> String {
    match key {
        NetworkKey::Passphrase(p) => p.clone(),
        NetworkKey::Bytes(b) => format!("x'{}'", hex_of(b)),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
