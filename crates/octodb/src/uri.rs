//! Parsing and validation of the URI that opens an octodb node.
//!
//! The URI is a SQLite-style `file:` URI whose query parameters describe the
//! replication role, e.g. `file:app.db?node=primary&bind=tcp://0.0.0.0:1234`.
//! A bare path (`app.db`) opens a plain local database, as in `sqlite3`.
//! Every error names the offending parameter (or `path`) and says what to write.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Replication role of a node, chosen with `node=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes and serves them to secondaries.
    Primary,
    /// Follows one or more primaries.
    Secondary,
}

impl Role {
    /// The spelling used in URIs: `"primary"` or `"secondary"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

impl FromStr for Role {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "primary" => Ok(Role::Primary),
            "secondary" => Ok(Role::Secondary),
            _ => Err(bad_value("node", s, "node=primary or node=secondary")),
        }
    }
}

/// How a primary authenticates connecting peers, chosen with `auth=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No `auth` parameter was given.
    None,
    /// Peers authenticate as nodes (`auth=node`).
    Node,
    /// Peers authenticate as users (`auth=user`).
    User,
}

/// One `tcp://HOST:PORT` entry of `bind` or `connect`; the host is not resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Hostname or IP address; IPv6 addresses are stored without brackets.
    pub host: String,
    /// TCP port; 0 (only in `bind`) means "any free port".
    pub port: u16,
}

impl Endpoint {
    fn new(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: host.to_string(),
            port,
        }
    }

    /// The endpoint of a `host:port` address (IPv6 hosts in brackets), as peers tell them;
    /// None when it is not one.
    pub fn from_addr(addr: &str) -> Option<Endpoint> {
        let (host, port) = addr.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let plausible = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
        plausible.then(|| Endpoint::new(host, port))
    }

    /// `"host:port"`, bracketing IPv6 addresses (`"[::1]:1234"`), ready for socket APIs.
    pub fn to_addr_string(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp://{}", self.to_addr_string())
    }
}

/// The key given with `key=`, `keyenv=`, `keyfile=` (a passphrase) or `hexkey=` (raw bytes).
/// Alone it is the network key; with `cipher=` it is the file's key as given, and the network
/// key is derived from it (see `store::at_rest`).
#[derive(Clone, PartialEq, Eq)]
pub enum NetworkKey {
    /// From `key=`, or read from `keyenv=` / `keyfile=`.
    Passphrase(String),
    /// From `hexkey=`, already decoded.
    Bytes(Vec<u8>),
}

/// A key's bytes are cleared from memory when it is dropped (the review found old keys kept
/// in the process after a rekey).
impl Drop for NetworkKey {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        match self {
            NetworkKey::Passphrase(p) => p.zeroize(),
            NetworkKey::Bytes(b) => b.zeroize(),
        }
    }
}

// Hand-written so that logging a NodeConfig never leaks the secret.
impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkKey::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
            NetworkKey::Bytes(b) => write!(f, "Bytes(<{} bytes redacted>)", b.len()),
        }
    }
}

/// Everything a node URI specifies, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Database file path, percent-decoded.
    pub path: PathBuf,
    /// `None` means a plain local database with no replication.
    pub role: Option<Role>,
    /// Addresses to listen on.
    pub bind: Vec<Endpoint>,
    /// Peers to connect to.
    pub connect: Vec<Endpoint>,
    /// Primaries: the address other primaries reach this one at (`advertise=`), when its
    /// `bind` address is not one they can reach (`0.0.0.0`, a NAT).
    pub advertise: Option<Endpoint>,
    /// `AuthMode::None` when `auth` is absent.
    pub auth: AuthMode,
    /// Encryption at rest (`cipher=sqlcipher`), with `key` as the file's key.
    pub cipher: Option<Cipher>,
    /// Network (and, with `cipher`, at-rest) key.
    pub key: Option<NetworkKey>,
    /// How long a connection may stay silent before this node sends a heartbeat; one that
    /// hears nothing for [`NodeConfig::dead_after`] is taken as dead. A device's setting
    /// holds for its connection (the primary follows it).
    pub heartbeat: Duration,
    /// Primaries: the newest entries of the log kept when it is compacted (`log_keep=`).
    pub log_keep: u64,
    /// Plain local databases only: the `file:` URI as given when it carries SQLite's own
    /// parameters (`mode=ro`, `cache=shared`, ...), so that SQLite opens it and reads them;
    /// octodb's own parameters (the key among them) are taken out of it.
    pub sqlite_uri: Option<String>,
    /// Primaries: the admin console and `/metrics` (`admin=HOST:PORT`), when asked for.
    pub admin: Option<AdminConfig>,
    /// Primaries: the authorization service deciding sign-ups, logins and new nodes
    /// (`authorizer_service=tcp://HOST:PORT`, as `host:port`), from the node's start.
    pub authorizer_service: Option<String>,
}

/// Where and how a primary serves its admin console (`admin=`, `admin_token*=`,
/// `admin_insecure=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub addr: std::net::SocketAddr,
    /// The operator's own secret; without it the node makes one and keeps it in its file.
    pub token: Option<AdminToken>,
    /// Serve plain HTTP beyond loopback (`admin_insecure=1`).
    pub insecure: bool,
}

/// The admin console's secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

// Hand-written so that logging a NodeConfig never leaks the secret.
impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The page codec that encrypts a file at rest, chosen with `cipher=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// SQLCipher 4: AES-256-CBC with an HMAC-SHA512 per page, PBKDF2-HMAC-SHA512 key derivation.
    SqlCipher,
}

impl FromStr for Cipher {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refused = |expected| Err(bad_value("cipher", s, expected));
        match s.to_ascii_lowercase().as_str() {
            "sqlcipher" => Ok(Cipher::SqlCipher),
            "rc4" | "xrc4" => refused(
                "cipher=sqlcipher (RC4 is insecure: its keystream is biased and it has no \
                 integrity check, so octodb never offers it)",
            ),
            "chacha20" => refused(
                "cipher=sqlcipher (the codec octodb links, SQLCipher, has no ChaCha20; it is \
                 AES-256 with an HMAC per page)",
            ),
            "aes256" => refused(
                "cipher=sqlcipher (which is AES-256-CBC with an HMAC-SHA512 per page; octodb \
                 keeps one name for it so that a URI says which file format it makes)",
            ),
            _ => refused("cipher=sqlcipher, the only cipher octodb supports"),
        }
    }
}

/// Why a node URI was rejected; each message names the parameter and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    /// `file:` with nothing before `?`, or an empty string.
    #[error("URI `path` is empty; write file:PATH, e.g. file:app.db")]
    EmptyPath,
    /// The path part is malformed (bad escape, remote host, `?` without `file:`).
    #[error("URI `path` {problem}")]
    BadPath { problem: &'static str },
    /// A parameter neither octodb nor SQLite knows.
    #[error("unknown URI parameter `{name}`; known parameters are {KNOWN_LIST}")]
    Unknown { name: String },
    /// One of SQLite's own parameters on a node URI: the engine opens a node's file itself.
    #[error("URI parameter `{name}` is SQLite's own and applies to plain local databases only (without `node`); remove it")]
    SqliteOnNode { name: String },
    /// The same parameter appears twice.
    #[error("URI parameter `{name}` is given twice; keep only one `{name}=`")]
    Duplicate { name: &'static str },
    /// `name=` or a bare `name` with no value.
    #[error("URI parameter `{name}` has an empty value; write {name}=VALUE or remove it")]
    Empty { name: &'static str },
    /// A value outside a fixed set (`node`, `auth`, `cipher`).
    #[error("URI parameter `{name}`: `{value}` is not valid; write {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A malformed `bind` or `connect` entry.
    #[error("URI parameter `{name}`: `{entry}` {problem}")]
    BadEndpoint {
        name: &'static str,
        entry: String,
        problem: &'static str,
    },
    /// A value that cannot be decoded (percent escapes, `hexkey`); never echoes secrets.
    #[error("URI parameter `{name}` {problem}")]
    Invalid { name: String, problem: &'static str },
    /// `keyenv` or `keyfile` could not be read; never echoes the key.
    #[error("URI parameter `{name}`: {problem}")]
    KeySource { name: &'static str, problem: String },
    /// A parameter that is missing, or not allowed, given the others.
    #[error("URI parameter `{name}` {problem}")]
    Conflict {
        name: &'static str,
        problem: &'static str,
    },
}

const KNOWN: [&str; 18] = [
    "node",
    "bind",
    "connect",
    "auth",
    "cipher",
    "key",
    "hexkey",
    "heartbeat",
    "keyenv",
    "keyfile",
    "advertise",
    "admin",
    "admin_token",
    "admin_token_env",
    "admin_token_file",
    "admin_insecure",
    "log_keep",
    "authorizer_service",
];
const KNOWN_LIST: &str = "node, bind, connect, advertise, auth, cipher, key, hexkey, keyenv, \
     keyfile, heartbeat, admin, admin_token, admin_token_env, admin_token_file, admin_insecure, log_keep, authorizer_service, and without `node` SQLite's own vfs, mode, cache, psow, nolock, immutable, modeof";
/// The parameters that give a key: at most one of them.
const KEY_SOURCES: [&str; 4] = ["key", "hexkey", "keyenv", "keyfile"];
/// Parameters whose value is a secret, masked wherever a URI is printed.
const SECRET_PARAMS: [&str; 3] = ["key", "hexkey", "admin_token"];
/// SQLite's own URI parameters, handed to SQLite when the URI opens a plain local database.
const SQLITE_PARAMS: [&str; 7] = [
    "vfs",
    "mode",
    "cache",
    "psow",
    "nolock",
    "immutable",
    "modeof",
];
const MIN_HEXKEY_BYTES: usize = 16;
/// SQLCipher takes a raw key of exactly 256 bits.
const FILE_HEXKEY_BYTES: usize = 32;

const NEEDS_NODE: &str =
    "needs node=primary or node=secondary; without `node` the URI opens a plain local database";
const MEMORY: &str = "cannot replicate `:memory:`; give a file path or remove `node`";
const ADVERTISE_ON_SECONDARY: &str =
    "applies to primaries only (the address other primaries reach it at); remove it";
const ADVERTISE_ONE: &str = "takes one address, tcp://HOST:PORT, that other primaries reach";
const AUTH_ON_SECONDARY: &str = "applies to primaries only; remove it for node=secondary";
const SERVICE_WITHOUT_AUTH: &str =
    "decides sign-ups, logins and new nodes, which a primary asks for with auth=user or \
     auth=node only; add one of them";
const BIND_ON_SECONDARY: &str =
    "is not supported with node=secondary; remove it and name the primaries in `connect`";
const SECONDARY_ALONE: &str =
    "is required with node=secondary; add connect=tcp://HOST:PORT of a primary";
const PRIMARY_ALONE: &str =
    "(or `connect`) is required with node=primary; add e.g. bind=tcp://0.0.0.0:PORT";
const TWO_KEYS: &str =
    "cannot be combined with `key`, `hexkey`, `keyenv` or `keyfile`; keep only one of them";
// A key without `cipher` only protects the network, which is useful;
// encryption at rest without a key is not.
const CIPHER_NO_KEY: &str =
    "(or `hexkey`, `keyenv`, `keyfile`) is required with `cipher`; add key=PASSPHRASE";
const KEY_WITHOUT_NODE: &str = "alone is a network key and needs node=primary or \
     node=secondary; to encrypt a plain local database add cipher=sqlcipher";
const CIPHER_MEMORY: &str = "cannot encrypt `:memory:`, which never reaches the disk; remove it";
const FILE_HEXKEY: &str =
    "must be 64 hex digits (a 256-bit key) with `cipher`; make one with `openssl rand -hex 32`";

impl NodeConfig {
    /// Parses and validates a node URI (`file:PATH?...` or a bare path).
    pub fn parse(uri: &str) -> Result<NodeConfig, UriError> {
        let (path, query) = split_uri(uri)?;
        if path.is_empty() {
            return Err(UriError::EmptyPath);
        }
        let (ours, sqlite_own) = parameters(query)?;
        let [node, bind, connect, auth, cipher, key, hexkey, heartbeat, keyenv, keyfile, advertise, admin, admin_token, admin_token_env, admin_token_file, admin_insecure, log_keep, authorizer_service] =
            ours;
        let admin_given = [
            &admin,
            &admin_token,
            &admin_token_env,
            &admin_token_file,
            &admin_insecure,
        ];
        let admin_on = |role: Option<&String>| -> Result<Option<AdminConfig>, UriError> {
            admin_config(role, admin_given)
        };
        let rule = |broken: bool, name, problem| match broken {
            true => Err(UriError::Conflict { name, problem }),
            false => Ok(()),
        };
        let sources = [&key, &hexkey, &keyenv, &keyfile];
        let given_keys: Vec<&str> = (0..4)
            .filter(|&i| sources[i].is_some())
            .map(|i| KEY_SOURCES[i])
            .collect();
        if let [_, second, ..] = given_keys[..] {
            rule(true, second, TWO_KEYS)?;
        }
        let keyed = !given_keys.is_empty();
        rule(cipher.is_some() && !keyed, "key", CIPHER_NO_KEY)?;
        let cipher: Option<Cipher> = cipher.as_deref().map(str::parse).transpose()?;
        rule(
            cipher.is_some() && path == ":memory:",
            "cipher",
            CIPHER_MEMORY,
        )?;
        if let (None, None, Some(&source)) = (&node, cipher, given_keys.first()) {
            rule(true, source, KEY_WITHOUT_NODE)?;
        }
        let key = match (key, hexkey, keyenv, keyfile) {
            (Some(k), ..) => Some(NetworkKey::Passphrase(k)),
            (_, Some(h), ..) => Some(NetworkKey::Bytes(decode_hexkey(&h, cipher.is_some())?)),
            (_, _, Some(var), _) => Some(NetworkKey::Passphrase(key_from_env(&var)?)),
            (.., Some(file)) => Some(NetworkKey::Passphrase(key_from_file(&file)?)),
            _ => None,
        };
        let Some(node) = node else {
            // Replication parameters on a plain database are almost certainly
            // a forgotten `node=`, so refuse rather than silently ignore them.
            let given = [&bind, &connect, &auth, &None, &None, &None, &heartbeat];
            rule(advertise.is_some(), "advertise", NEEDS_NODE)?;
            rule(log_keep.is_some(), "log_keep", NEEDS_NODE)?;
            rule(
                authorizer_service.is_some(),
                "authorizer_service",
                NEEDS_NODE,
            )?;
            admin_on(None)?;
            if let Some(i) = given.iter().position(|v| v.is_some()) {
                rule(true, KNOWN[i + 1], NEEDS_NODE)?;
            }
            let sqlite_uri = (!sqlite_own.is_empty()).then(|| sqlite_only_uri(uri));
            return Ok(NodeConfig {
                sqlite_uri,
                cipher,
                key,
                ..NodeConfig::local(path)
            });
        };
        if let Some(name) = sqlite_own.into_iter().next() {
            return Err(UriError::SqliteOnNode { name });
        }
        let role: Role = node.parse()?;
        let admin = admin_on(Some(&node))?;
        let secondary = role == Role::Secondary;
        rule(path == ":memory:", "node", MEMORY)?;
        rule(secondary && auth.is_some(), "auth", AUTH_ON_SECONDARY)?;
        rule(secondary && bind.is_some(), "bind", BIND_ON_SECONDARY)?;
        rule(secondary && connect.is_none(), "connect", SECONDARY_ALONE)?;
        let peers = bind.is_some() || connect.is_some();
        rule(!secondary && !peers, "bind", PRIMARY_ALONE)?;
        rule(
            secondary && advertise.is_some(),
            "advertise",
            ADVERTISE_ON_SECONDARY,
        )?;
        let advertise = endpoints("advertise", advertise.as_deref(), false)?;
        if advertise.len() > 1 {
            rule(true, "advertise", ADVERTISE_ONE)?;
        }

        let auth = match auth.as_deref() {
            None => AuthMode::None,
            Some("node") => AuthMode::Node,
            Some("user") => AuthMode::User,
            Some(v) => return Err(bad_value("auth", v, "auth=node or auth=user")),
        };
        rule(
            secondary && log_keep.is_some(),
            "log_keep",
            LOG_KEEP_ON_SECONDARY,
        )?;
        let log_keep = match log_keep.as_deref() {
            None => DEFAULT_LOG_KEEP,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= MIN_LOG_KEEP => n,
                _ => return Err(bad_value("log_keep", v, LOG_KEEP_EXPECTED)),
            },
        };
        rule(
            secondary && authorizer_service.is_some(),
            "authorizer_service",
            AUTH_ON_SECONDARY,
        )?;
        rule(
            auth == AuthMode::None && authorizer_service.is_some(),
            "authorizer_service",
            SERVICE_WITHOUT_AUTH,
        )?;
        let authorizer_service = match authorizer_service.as_deref() {
            None => None,
            Some(v) => Some(
                crate::auth::service::address(v)
                    .map_err(|_| bad_value("authorizer_service", v, "tcp://HOST:PORT"))?,
            ),
        };
        let heartbeat = match heartbeat.as_deref() {
            None => DEFAULT_HEARTBEAT,
            Some(v) => match v.parse::<u64>() {
                Ok(s) if HEARTBEAT_SECONDS.contains(&s) => Duration::from_secs(s),
                _ => return Err(bad_value("heartbeat", v, HEARTBEAT_EXPECTED)),
            },
        };
        Ok(NodeConfig {
            role: Some(role),
            heartbeat,
            log_keep,
            bind: endpoints("bind", bind.as_deref(), true)?,
            connect: endpoints("connect", connect.as_deref(), false)?,
            advertise: advertise.into_iter().next(),
            auth,
            cipher,
            key,
            admin,
            authorizer_service,
            ..NodeConfig::local(path)
        })
    }

    /// The key that encrypts the file at rest: the URI's key, when `cipher` is given.
    pub fn file_key(&self) -> Option<&NetworkKey> {
        self.cipher.and(self.key.as_ref())
    }

    /// Whether `uri` needs octodb's own parsing rather than SQLite's: a `file:` URI with `node`,
    /// `cipher` or a key parameter. The Python module opens everything else as `sqlite3` would.
    pub fn has_octodb_parameters(uri: &str) -> bool {
        query_names(uri).any(|n| n == "node" || n == "cipher" || KEY_SOURCES.contains(&n.as_str()))
    }

    /// `uri` with the values of its secret parameters (`key`, `hexkey`) masked, for anything
    /// printed or logged. Anything that is not a URI with a query is returned as it is.
    pub fn redacted(uri: &str) -> String {
        let Some((head, query)) = uri.split_once('?') else {
            return uri.to_string();
        };
        let masked: Vec<String> = query
            .split('&')
            .map(|segment| match segment.split_once('=') {
                Some((name, _))
                    if decode(name).is_ok_and(|n| SECRET_PARAMS.contains(&n.as_str())) =>
                {
                    format!("{name}=***")
                }
                _ => segment.to_string(),
            })
            .collect();
        format!("{head}?{}", masked.join("&"))
    }

    /// True when the URI named a `node` role, i.e. replication is on.
    pub fn is_replicated(&self) -> bool {
        self.role.is_some()
    }

    /// Whether `uri` asks for a node: a `file:` URI with a `node` parameter. Anything else opens
    /// a plain local database, which is how the Python module tells `sqlite3` filenames apart.
    pub fn names_a_node(uri: &str) -> bool {
        query_names(uri).any(|n| n == "node")
    }

    fn local(path: String) -> NodeConfig {
        NodeConfig {
            path: PathBuf::from(path),
            role: None,
            bind: Vec::new(),
            connect: Vec::new(),
            advertise: None,
            auth: AuthMode::None,
            cipher: None,
            key: None,
            heartbeat: DEFAULT_HEARTBEAT,
            log_keep: DEFAULT_LOG_KEEP,
            sqlite_uri: None,
            admin: None,
            authorizer_service: None,
        }
    }

    /// How long a connection with heartbeats may hear nothing before it counts as dead.
    pub fn dead_after(&self) -> Duration {
        dead_after(self.heartbeat)
    }
}

/// A device's heartbeat after 20 s of silence, which its primary answers: a dead connection
/// is noticed within 30 s, and an idle device costs its primary one small message each way
/// per 20 s.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(20);
const HEARTBEAT_SECONDS: std::ops::RangeInclusive<u64> = 1..=60;
/// Entries a primary's log keeps by default: a device offline for longer than that many
/// transactions downloads again (keeping its pending work) instead of catching up.
pub const DEFAULT_LOG_KEEP: u64 = 1_000_000;
const MIN_LOG_KEEP: u64 = 100;
const LOG_KEEP_EXPECTED: &str = "log_keep=ENTRIES, at least 100 (default 1000000)";
const LOG_KEEP_ON_SECONDARY: &str =
    "is for primaries: a device keeps no log of the primaries' entries";
const HEARTBEAT_EXPECTED: &str = "heartbeat=SECONDS, from 1 to 60 (default 20)";

/// Silence allowed on a connection with heartbeats every `heartbeat`: the interval and half
/// as much again (at least 2 s), so that a beat a little late is no reason to drop it.
pub fn dead_after(heartbeat: Duration) -> Duration {
    heartbeat + (heartbeat / 2).max(Duration::from_secs(2))
}

/// The decoded parameter names of a `file:` URI's query (none for anything else).
fn query_names(uri: &str) -> impl Iterator<Item = String> + '_ {
    let query = uri
        .strip_prefix("file:")
        .map(|rest| rest.split_once('#').map_or(rest, |(before, _)| before))
        .and_then(|rest| rest.split_once('?'))
        .map_or("", |(_, query)| query);
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .filter_map(|segment| decode(segment.split_once('=').map_or(segment, |(n, _)| n)).ok())
}

/// A local database's URI with only SQLite's own parameters: octodb's (the key among them)
/// are taken out, since SQLCipher would read `key`/`hexkey` itself, with other meanings.
fn sqlite_only_uri(uri: &str) -> String {
    let (head, query) = uri.split_once('?').unwrap_or((uri, ""));
    let (query, fragment) = query.split_once('#').unwrap_or((query, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|segment| {
            let name = segment.split_once('=').map_or(*segment, |(n, _)| n);
            decode(name).is_ok_and(|n| SQLITE_PARAMS.contains(&n.as_str()))
        })
        .collect();
    let fragment = if fragment.is_empty() {
        String::new()
    } else {
        format!("#{fragment}")
    };
    format!("{head}?{}{fragment}", kept.join("&"))
}

const ADMIN_NEEDS_PRIMARY: &str = "applies to primaries only (node=primary): the console \
     serves from the process holding a primary; remove it";
const ADMIN_TOKEN_ALONE: &str = "needs admin=HOST:PORT, the console's address, e.g. \
     admin=127.0.0.1:8080";
const ADMIN_ADDR: &str = "admin=HOST:PORT with an IP address, e.g. admin=127.0.0.1:8080";
const ADMIN_INSECURE: &str = "admin_insecure=1 (or leave it out)";

/// The admin console's settings: `given` holds `admin`, `admin_token`, `admin_token_env`,
/// `admin_token_file` and `admin_insecure`, in that order.
fn admin_config(
    role: Option<&String>,
    given: [&Option<String>; 5],
) -> Result<Option<AdminConfig>, UriError> {
    let names = [
        "admin",
        "admin_token",
        "admin_token_env",
        "admin_token_file",
        "admin_insecure",
    ];
    if let Some(i) = given.iter().position(|v| v.is_some()) {
        if role.map(String::as_str) != Some("primary") {
            return Err(UriError::Conflict {
                name: names[i],
                problem: ADMIN_NEEDS_PRIMARY,
            });
        }
    }
    let Some(addr) = given[0] else {
        if let Some(i) = given.iter().position(|v| v.is_some()) {
            return Err(UriError::Conflict {
                name: names[i],
                problem: ADMIN_TOKEN_ALONE,
            });
        }
        return Ok(None);
    };
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| bad_value("admin", addr, ADMIN_ADDR))?;
    let sources: Vec<usize> = (1..4).filter(|&i| given[i].is_some()).collect();
    if let [_, second, ..] = sources[..] {
        return Err(UriError::Conflict {
            name: names[second],
            problem: "cannot be combined with another admin_token source; keep only one",
        });
    }
    let token = match (given[1], given[2], given[3]) {
        (Some(t), ..) => Some(t.clone()),
        (_, Some(var), _) => Some(secret_from_env("admin_token_env", var)?),
        (.., Some(file)) => Some(secret_from_file("admin_token_file", file)?),
        _ => None,
    };
    let insecure = match given[4].as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(v) => return Err(bad_value("admin_insecure", v, ADMIN_INSECURE)),
    };
    Ok(Some(AdminConfig {
        addr,
        token: token.map(AdminToken),
        insecure,
    }))
}

/// A passphrase from the environment variable `var` (`keyenv=`).
fn key_from_env(var: &str) -> Result<String, UriError> {
    secret_from_env("keyenv", var)
}

/// A secret from the environment variable `var`, for parameter `name`.
fn secret_from_env(name: &'static str, var: &str) -> Result<String, UriError> {
    let problem = match std::env::var(var) {
        Ok(v) if !v.is_empty() => return Ok(v),
        Ok(_) => format!("the environment variable `{var}` is empty; put the key in it"),
        Err(std::env::VarError::NotPresent) => {
            format!("the environment variable `{var}` is not set; export it with the key")
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            format!("the environment variable `{var}` is not UTF-8; give the key as UTF-8 text")
        }
    };
    Err(UriError::KeySource { name, problem })
}

/// A passphrase from the file `path` (`keyfile=`): its text, less one trailing line end.
fn key_from_file(path: &str) -> Result<String, UriError> {
    secret_from_file("keyfile", path)
}

/// A secret from the file `path`, for parameter `name`: its text, less one trailing line end.
fn secret_from_file(name: &'static str, path: &str) -> Result<String, UriError> {
    let fail = |problem: String| UriError::KeySource { name, problem };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read `{path}`: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| fail(format!("`{path}` is not UTF-8 text; write the key as text")))?;
    let key = text.strip_suffix('\n').unwrap_or(&text);
    let key = key.strip_suffix('\r').unwrap_or(key);
    if key.is_empty() {
        return Err(fail(format!("`{path}` is empty; write the key in it")));
    }
    Ok(key.to_string())
}

fn bad_value(name: &'static str, value: &str, expected: &'static str) -> UriError {
    UriError::BadValue {
        name,
        value: value.to_string(),
        expected,
    }
}

fn invalid(name: &str, problem: &'static str) -> UriError {
    UriError::Invalid {
        name: name.to_string(),
        problem,
    }
}

/// Decoded values of the query, in the order of `KNOWN`.
/// octodb's parameters in `KNOWN` order, and the names of SQLite's own ones (left for SQLite).
type Parameters = ([Option<String>; KNOWN.len()], Vec<String>);

fn parameters(query: &str) -> Result<Parameters, UriError> {
    let mut values: [Option<String>; KNOWN.len()] = Default::default();
    let mut sqlite_own = Vec::new();
    for segment in query.split('&').filter(|s| !s.is_empty()) {
        let (raw_name, raw_value) = segment.split_once('=').unwrap_or((segment, ""));
        let decoded = decode(raw_name).map_err(|p| invalid(raw_name, p))?;
        let Some(idx) = KNOWN.iter().position(|k| *k == decoded) else {
            if SQLITE_PARAMS.contains(&decoded.as_str()) {
                sqlite_own.push(decoded);
                continue;
            }
            return Err(UriError::Unknown { name: decoded });
        };
        let name = KNOWN[idx];
        let value = decode(raw_value).map_err(|p| invalid(name, p))?;
        if value.is_empty() {
            return Err(UriError::Empty { name });
        }
        if values[idx].replace(value).is_some() {
            return Err(UriError::Duplicate { name });
        }
    }
    Ok((values, sqlite_own))
}

/// Splits into the decoded path and the raw query string.
fn split_uri(uri: &str) -> Result<(String, &str), UriError> {
    let bad = |problem| UriError::BadPath { problem };
    let Some(rest) = uri.strip_prefix("file:") else {
        // A bare path is taken literally, as sqlite3 does; but a `?` in it
        // almost always means parameters were meant, and those need `file:`.
        if uri.contains('?') {
            return Err(bad("has `?` but no `file:` prefix; write file:PATH?PARAMS"));
        }
        return Ok((uri.to_string(), ""));
    };
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (mut path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if let Some(after) = path.strip_prefix("//") {
        let (authority, p) = after.find('/').map_or((after, ""), |i| after.split_at(i));
        if !authority.is_empty() && authority != "localhost" {
            return Err(bad("names a remote host; write file:///ABSOLUTE/PATH"));
        }
        path = p;
    }
    Ok((decode(path).map_err(bad)?, query))
}

/// Percent-decodes `raw`; the error is a problem phrase for the caller to attach.
fn decode(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let digit = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        match (digit(i + 1), digit(i + 2)) {
            (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
            _ => return Err("has a `%` not followed by two hex digits; write a literal % as %25"),
        }
        i += 3;
    }
    if out.contains(&0) {
        return Err("contains %00 (a NUL byte), which SQLite cannot accept; remove it");
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded; encode é as %C3%A9")
}

/// Parses a comma-separated `bind`/`connect` list; `port0` allows "any free port".
fn endpoints(
    name: &'static str,
    list: Option<&str>,
    port0: bool,
) -> Result<Vec<Endpoint>, UriError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let bad = |entry: &str, problem| UriError::BadEndpoint {
        name,
        entry: entry.to_string(),
        problem,
    };
    list.split(',')
        .map(str::trim)
        .map(|entry| match entry {
            "" => Err(bad(
                list,
                "has an empty entry; separate addresses with single commas",
            )),
            _ => endpoint(entry, port0).map_err(|problem| bad(entry, problem)),
        })
        .collect()
}

/// Parses one `tcp://HOST:PORT`; the error is a problem phrase for the caller to attach.
fn endpoint(entry: &str, port0: bool) -> Result<Endpoint, &'static str> {
    let Some(rest) = entry.strip_prefix("tcp://") else {
        return Err("does not start with tcp://; write it as tcp://HOST:PORT");
    };
    if rest.contains("://") {
        return Err("names a scheme twice; write it as tcp://HOST:PORT");
    }
    // Brackets keep an IPv6 address's colons apart from the port's.
    let (host, port) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((host, _)) if host.parse::<Ipv6Addr>().is_err() => {
            return Err("has brackets around a non-IPv6 address; write tcp://[IPV6]:PORT")
        }
        Some((host, after)) => (host, after.strip_prefix(':').unwrap_or("")),
        None => rest.split_once(':').unwrap_or((rest, "")),
    };
    let hostname_char = |c: char| c.is_ascii_alphanumeric() || "-._:".contains(c);
    Err(if port.contains(':') {
        "has an IPv6 address without brackets; write it as tcp://[IPV6]:PORT"
    } else if host.is_empty() {
        "has no host; write it as tcp://HOST:PORT"
    } else if !host.chars().all(hostname_char) {
        "has characters not allowed in a hostname; write it as tcp://HOST:PORT"
    } else if port.is_empty() {
        "has no port; write it as tcp://HOST:PORT"
    } else {
        // `u16::from_str` accepts a leading `+`, which is not a port number.
        match port.parse::<u16>().ok().filter(|_| !port.starts_with('+')) {
            None => "has a port that is not a number from 0 to 65535; write tcp://HOST:PORT",
            Some(0) if !port0 => "uses port 0, which only `bind` accepts; give the real port",
            Some(port) => return Ok(Endpoint::new(host, port)),
        }
    })
}

/// A `hexkey`: at least 128 bits for the network alone; exactly 256 bits for a file's key.
fn decode_hexkey(hex: &str, for_file: bool) -> Result<Vec<u8>, UriError> {
    let problem = match hex::decode(hex) {
        Ok(bytes) if for_file && bytes.len() != FILE_HEXKEY_BYTES => FILE_HEXKEY,
        Ok(bytes) if bytes.len() >= MIN_HEXKEY_BYTES => return Ok(bytes),
        Ok(_) => "is shorter than 32 hex digits; make one with `openssl rand -hex 32`",
        Err(hex::FromHexError::OddLength) => "has an odd number of hex digits; give two per byte",
        Err(_) => "contains a character that is not a hex digit; use only 0-9 and a-f",
    };
    Err(invalid("hexkey", problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str) -> NodeConfig {
        NodeConfig::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"))
    }

    #[test]
    fn admin_parameters() {
        let base = "file:p.db?node=primary&bind=tcp://127.0.0.1:0";
        let c = parse(&format!("{base}&admin=127.0.0.1:8080"));
        let a = c.admin.expect("admin");
        assert_eq!(a.addr.to_string(), "127.0.0.1:8080");
        assert!(a.token.is_none() && !a.insecure);
        let c = parse(&format!(
            "{base}&admin=0.0.0.0:0&admin_token=s3cret&admin_insecure=1"
        ));
        let a = c.admin.expect("admin");
        assert_eq!(a.token, Some(AdminToken("s3cret".into())));
        assert!(a.insecure);
        assert!(
            !format!("{a:?}").contains("s3cret"),
            "the token never shows in logs"
        );
        assert!(
            NodeConfig::redacted(&format!("{base}&admin_token=s3cret")).contains("admin_token=***")
        );
        let err = |uri: String| NodeConfig::parse(&uri).unwrap_err().to_string();
        assert!(err(format!("{base}&admin_token=x")).contains("needs admin=HOST:PORT"));
        assert!(err(format!("{base}&admin=localhost")).contains("admin=HOST:PORT"));
        assert!(err(format!("{base}&admin=127.0.0.1:1&admin_insecure=yes"))
            .contains("admin_insecure=1"));
        assert!(err(format!(
            "{base}&admin=127.0.0.1:1&admin_token=a&admin_token_env=B"
        ))
        .contains("admin_token_env"));
        assert!(
            err("file:d.db?node=secondary&connect=tcp://h:1&admin=127.0.0.1:1".into())
                .contains("primaries only")
        );
        assert!(err("file:x.db?admin=127.0.0.1:1".into()).contains("primaries only"));
        let err_env = err(format!(
            "{base}&admin=127.0.0.1:1&admin_token_env=OCTODB_TEST_NO_SUCH_VAR"
        ));
        assert!(
            err_env.contains("admin_token_env") && err_env.contains("not set"),
            "{err_env}"
        );
    }

    #[test]
    fn plain_local_paths() {
        for (uri, path) in [
            ("file:app.db", "app.db"),
            ("app.db", "app.db"),
            ("/tmp/x.db", "/tmp/x.db"),
            (":memory:", ":memory:"),
            ("file::memory:", ":memory:"),
            ("file:my%20app.db", "my app.db"),
            ("file:///abs/x.db", "/abs/x.db"),
            ("file://localhost/abs/x.db#frag", "/abs/x.db"),
            ("file:a.db?", "a.db"),
        ] {
            let c = parse(uri);
            assert_eq!(c, NodeConfig::local(path.to_string()), "{uri}");
            assert!(!c.is_replicated());
        }
    }

    #[test]
    fn sqlite_parameters_are_left_to_sqlite_on_local_databases() {
        let c = parse("file:app.db?mode=ro&cache=shared");
        assert_eq!((c.path.to_str(), c.role), (Some("app.db"), None));
        assert_eq!(
            c.sqlite_uri.as_deref(),
            Some("file:app.db?mode=ro&cache=shared")
        );
        assert_eq!(parse("file:app.db").sqlite_uri, None);
        for (uri, node) in [
            ("file:a.db?node=primary&bind=tcp://h:1", true),
            ("file:a.db?mode=ro&node=secondary", true),
            ("file:a.db?n%6fde=primary", true),
            ("file:a.db?mode=ro", false),
            ("file:a.db#?node=primary", false),
            ("a.db?node=primary", false),
            (":memory:", false),
        ] {
            assert_eq!(NodeConfig::names_a_node(uri), node, "{uri}");
        }
    }

    #[test]
    fn a_primary_advertises_one_address_others_reach() {
        let c =
            parse("file:p.db?node=primary&bind=tcp://0.0.0.0:1235&advertise=tcp://db2.lan:1235");
        assert_eq!(c.advertise, Some(Endpoint::new("db2.lan", 1235)));
        assert_eq!(
            parse("file:p.db?node=primary&bind=tcp://h:1").advertise,
            None
        );
        for (uri, says) in [
            (
                "file:d.db?node=secondary&connect=tcp://h:1&advertise=tcp://h:2",
                "primaries only",
            ),
            (
                "file:p.db?node=primary&bind=tcp://h:1&advertise=tcp://a:1,tcp://b:1",
                "one address",
            ),
            (
                "file:p.db?node=primary&bind=tcp://h:1&advertise=h:1",
                "tcp://",
            ),
            (
                "file:p.db?node=primary&bind=tcp://h:1&advertise=tcp://h:0",
                "port",
            ),
            ("file:p.db?advertise=tcp://h:1", "node"),
        ] {
            let e = NodeConfig::parse(uri).expect_err(uri).to_string();
            assert!(e.contains("advertise") && e.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn peers_tell_addresses_as_host_and_port() {
        assert_eq!(
            Endpoint::from_addr("10.0.0.2:1234"),
            Some(Endpoint::new("10.0.0.2", 1234))
        );
        assert_eq!(
            Endpoint::from_addr("[::1]:7"),
            Some(Endpoint::new("::1", 7))
        );
        assert_eq!(
            Endpoint::from_addr("db.lan:80"),
            Some(Endpoint::new("db.lan", 80))
        );
        for bad in [
            "",
            "h",
            "h:0",
            ":1",
            "h:99999",
            "a b:1",
            "h:1/x",
            "tcp://h:1",
        ] {
            assert_eq!(Endpoint::from_addr(bad), None, "{bad}");
        }
    }

    #[test]
    fn primary_with_bind_and_auth() {
        let c = parse("file:PATH?node=primary&bind=tcp://0.0.0.0:1234&auth=user");
        assert_eq!(
            (c.path.to_str(), c.role),
            (Some("PATH"), Some(Role::Primary))
        );
        assert_eq!(
            (c.bind, c.connect),
            (vec![Endpoint::new("0.0.0.0", 1234)], vec![])
        );
        assert_eq!(c.auth, AuthMode::User);
        assert!(parse("file:a?node=primary&connect=tcp://p:1").is_replicated());
    }

    #[test]
    fn secondary_with_two_peers() {
        let c = parse("file:PATH?node=secondary&connect=tcp://host1:1234,tcp://host2:1234");
        assert_eq!(c.role, Some(Role::Secondary));
        let peers = vec![Endpoint::new("host1", 1234), Endpoint::new("host2", 1234)];
        assert_eq!(c.connect, peers);
        assert_eq!((c.auth, c.cipher, c.key), (AuthMode::None, None, None));
    }

    #[test]
    fn absolute_path_and_port_zero() {
        let c = parse("file:/abs/path/app.db?node=primary&bind=tcp://127.0.0.1:0");
        assert_eq!(c.path, PathBuf::from("/abs/path/app.db"));
        assert_eq!(c.bind, vec![Endpoint::new("127.0.0.1", 0)]);
    }

    #[test]
    fn ipv6_endpoint_and_formatting() {
        let c = parse("file:a.db?node=primary&bind=tcp://[::1]:1234&connect=tcp://peer:9");
        assert_eq!(c.bind, vec![Endpoint::new("::1", 1234)]);
        assert_eq!(c.bind[0].to_addr_string(), "[::1]:1234");
        assert_eq!(c.bind[0].to_string(), "tcp://[::1]:1234");
        assert_eq!(c.connect[0].to_string(), "tcp://peer:9");
    }

    #[test]
    fn keys_and_cipher() {
        let c = parse("file:a?node=primary&bind=tcp://h:1&cipher=sqlcipher&key=a%20b&auth=node");
        assert_eq!(c.cipher, Some(Cipher::SqlCipher));
        assert_eq!(c.file_key(), c.key.as_ref());
        assert_eq!(c.key, Some(NetworkKey::Passphrase("a b".into())));
        assert_eq!(c.auth, AuthMode::Node);
        // A key without a cipher is a network-only key.
        let hex = "00112233445566778899aabbccddeeff";
        let c = parse(&format!(
            "file:a?node=secondary&connect=tcp://p:1&hexkey={hex}"
        ));
        let bytes = hex::decode(hex).unwrap_or_default();
        assert_eq!(
            (&c.cipher, &c.key),
            (&None, &Some(NetworkKey::Bytes(bytes)))
        );
        assert!(
            !format!("{c:?}").contains(hex),
            "Debug must not print the key"
        );
    }

    #[test]
    fn encrypted_local_databases_and_key_sources() {
        let c = parse("file:a.db?cipher=sqlcipher&key=s3cret&mode=rwc");
        assert_eq!((c.role, c.cipher), (None, Some(Cipher::SqlCipher)));
        assert_eq!(c.file_key(), Some(&NetworkKey::Passphrase("s3cret".into())));
        // SQLCipher would read `key` itself: SQLite gets only its own parameters.
        assert_eq!(c.sqlite_uri.as_deref(), Some("file:a.db?mode=rwc"));
        assert_eq!(parse("file:a.db?cipher=sqlcipher&key=k").sqlite_uri, None);
        let dir = std::env::temp_dir().join(format!("octodb-uri-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("key.txt");
        let _ = std::fs::write(&file, "from a file\n");
        let c = parse(&format!(
            "file:a.db?cipher=sqlcipher&keyfile={}",
            file.display()
        ));
        assert_eq!(c.key, Some(NetworkKey::Passphrase("from a file".into())));
        let _ = std::fs::remove_dir_all(&dir);
        // PATH is set in any test environment; its value stands in for a key.
        let path = std::env::var("PATH").unwrap_or_default();
        let c = parse("file:a.db?cipher=sqlcipher&keyenv=PATH");
        assert_eq!(c.key, Some(NetworkKey::Passphrase(path)));
        for (uri, octodb) in [
            ("file:a.db?cipher=sqlcipher&key=k", true),
            ("file:a.db?hexkey=00", true),
            ("file:a.db?mode=ro", false),
            ("a.db", false),
        ] {
            assert_eq!(NodeConfig::has_octodb_parameters(uri), octodb, "{uri}");
        }
    }

    #[test]
    fn printed_uris_hide_keys() {
        let uri = "file:a.db?node=primary&key=s3cret&bind=tcp://h:1&h%65xkey=abcd&keyenv=V";
        let shown = NodeConfig::redacted(uri);
        assert_eq!(
            shown,
            "file:a.db?node=primary&key=***&bind=tcp://h:1&h%65xkey=***&keyenv=V"
        );
        assert_eq!(NodeConfig::redacted("app.db"), "app.db");
    }

    #[test]
    fn role_strings() {
        for role in [Role::Primary, Role::Secondary] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            let json = serde_json::to_string(&role).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
        assert!("Primary".parse::<Role>().is_err());
    }

    #[test]
    fn errors_name_the_parameter() {
        // Shorthands: `P?`/`S?` a valid primary/secondary prefix, `B=` a primary
        // about to get `bind=`, `HEX` a valid hexkey.
        let cases = [
            ("file:", "`path`", "empty"),
            ("file:?node=primary", "`path`", "empty"),
            ("", "`path`", "empty"),
            ("file:a%zz", "`path`", "%25"),
            ("file://host/a.db", "`path`", "remote host"),
            ("a.db?node=primary", "`path`", "file:PATH?"),
            ("file:a?mode=ro&nodes=primary", "`nodes`", "unknown"),
            ("file:a?bogus=1", "`bogus`", "mode, cache"),
            ("P?mode=ro", "`mode`", "plain local"),
            ("S?cache=shared", "`cache`", "plain local"),
            ("P?vfs=unix", "`vfs`", "without `node`"),
            ("P?immutable=1", "`immutable`", "SQLite's own"),
            ("P?node=primary", "`node`", "twice"),
            ("file:a?node=", "`node`", "empty value"),
            ("file:a?node", "`node`", "empty value"),
            ("file:a?node=leader", "`node`", "node=primary or"),
            ("P?key=a%2", "`key`", "%25"),
            ("P?key=%FF", "`key`", "UTF-8"),
            ("P?auth=root", "`auth`", "auth=node or"),
            ("S?auth=user", "`auth`", "primaries only"),
            ("S?bind=tcp://h:2", "`bind`", "not supported"),
            ("file:a?node=secondary", "`connect`", "add connect="),
            ("file:a?node=primary", "`bind`", "add e.g. bind="),
            ("B=h:1", "`bind`", "tcp://HOST:PORT"),
            ("B=tcp://localhost", "`bind`", "has no port"),
            ("B=tcp://h:", "`bind`", "has no port"),
            ("B=tcp://:1", "`bind`", "has no host"),
            ("B=tcp://h:70000", "`bind`", "0 to 65535"),
            ("B=tcp://h:http", "`bind`", "0 to 65535"),
            ("B=tcp://h/x:1", "`bind`", "hostname"),
            ("B=tcp://::1:1", "`bind`", "brackets"),
            ("B=tcp://[zz]:1", "`bind`", "IPv6"),
            ("B=tcp://tcp://h:1", "`bind`", "scheme twice"),
            ("B=tcp://h:1,", "`bind`", "empty entry"),
            ("B=tcp://h:1&connect=tcp://h:0", "`connect`", "port 0"),
            ("file:a?bind=tcp://h:1", "`bind`", "node="),
            ("file:a?connect=tcp://h:1", "`connect`", "node="),
            ("file:a?auth=user", "`auth`", "node="),
            ("file:a?cipher=aes256&key=k", "`cipher`", "AES-256"),
            ("file:a?cipher=chacha20&key=k", "`cipher`", "no ChaCha20"),
            ("file:a?cipher=rc4&key=k", "`cipher`", "insecure"),
            ("P?cipher=xrc4&key=k", "`cipher`", "insecure"),
            (
                "file:a?cipher=sqlcipher&hexkey=HEX",
                "`hexkey`",
                "64 hex digits",
            ),
            (
                "file::memory:?cipher=sqlcipher&key=k",
                "`cipher`",
                ":memory:",
            ),
            ("file:a?cipher=sqlcipher", "`key`", "`cipher`"),
            (
                "file:a?cipher=sqlcipher&keyenv=OCTODB_TEST_UNSET_VAR",
                "`keyenv`",
                "not set",
            ),
            ("file:a?keyenv=V", "`keyenv`", "network key"),
            (
                "P?keyfile=/nonexistent/octodb-key",
                "`keyfile`",
                "cannot read",
            ),
            ("P?key=k&keyenv=V", "`keyenv`", "keep only one"),
            ("file:a?key=k", "`key`", "node="),
            ("file:a?hexkey=00", "`hexkey`", "node="),
            ("file::memory:?node=primary", "`node`", ":memory:"),
            ("P?key=k&hexkey=HEX", "`hexkey`", "`key`"),
            ("P?cipher=aes256", "`key`", "`cipher`"),
            ("P?cipher=rot13&key=k", "`cipher`", "cipher=sqlcipher"),
            ("P?hexkey=HEXa", "`hexkey`", "odd"),
            ("P?hexkey=zzHEX", "`hexkey`", "not a hex digit"),
            ("P?hexkey=abcd", "`hexkey`", "shorter than 32"),
        ];
        for (uri, param, phrase) in cases {
            let uri = uri
                .replace("P?", "file:a?node=primary&bind=tcp://h:1&")
                .replace("S?", "file:a?node=secondary&connect=tcp://h:1&")
                .replace("B=", "file:a?node=primary&bind=")
                .replace("HEX", &"ab".repeat(16));
            let msg = match NodeConfig::parse(&uri) {
                Ok(c) => panic!("{uri}: expected an error, got {c:?}"),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains(param), "{uri}: `{msg}` does not name {param}");
            assert!(msg.contains(phrase), "{uri}: `{msg}` lacks `{phrase}`");
        }
    }
}
