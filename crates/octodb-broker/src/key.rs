//! Object keys and their access codes.
//!
//! A key is a stable tuple: the loader's name and its parts (`('static', 'root')`,
//! `('todos', 42)`). Keys never come from counters, so they survive a restart of the server.
//! Each key travels with an access code, an HMAC-SHA256 of the key under the server's secret:
//! a client can use a key only if the server handed it out, so it cannot enumerate objects it
//! was never given. The secret is shared by all primaries (see [`Secret::load_or_create`]),
//! so codes stay valid across a fail-over.

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes of an access code (a truncated HMAC-SHA256: 128 bits leave nothing to guess).
pub const CODE_LEN: usize = 16;

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyPart {
    Int(i64),
    Str(String),
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Int(i) => write!(f, "{i}"),
            KeyPart::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<&str> for KeyPart {
    fn from(s: &str) -> KeyPart {
        KeyPart::Str(s.to_string())
    }
}
impl From<i64> for KeyPart {
    fn from(i: i64) -> KeyPart {
        KeyPart::Int(i)
    }
}

/// An object's stable key: its loader and the loader's parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub loader: String,
    pub parts: Vec<KeyPart>,
}

impl Key {
    pub fn new(loader: &str, parts: impl IntoIterator<Item = KeyPart>) -> Key {
        Key {
            loader: loader.to_string(),
            parts: parts.into_iter().collect(),
        }
    }

    /// A key of the static loader: `Key::of_static(["root"])` is `('static', 'root')`.
    pub fn of_static<'a>(parts: impl IntoIterator<Item = &'a str>) -> Key {
        Key::new(
            crate::server::STATIC_LOADER,
            parts.into_iter().map(KeyPart::from),
        )
    }

    /// The bytes the access code covers: unambiguous (lengths before contents).
    fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        crate::codec::write_ref(
            &mut out,
            &ObjRef {
                key: self.clone(),
                code: Vec::new(),
            },
        );
        out
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:?}", self.loader)?;
        for p in &self.parts {
            write!(f, ", {p}")?;
        }
        write!(f, ")")
    }
}

/// A key with its access code, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjRef {
    pub key: Key,
    pub code: Vec<u8>,
}

impl ObjRef {
    /// A reference the server has not signed yet (the server signs every reference it sends).
    pub fn unsigned(key: Key) -> ObjRef {
        ObjRef {
            key,
            code: Vec::new(),
        }
    }
}

/// The server's secret behind access codes.
#[derive(Clone)]
pub struct Secret {
    key: hmac::Key,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// Where the primaries keep the secret: a `private_` table (never sent to devices, schema or
/// rows) whose row has an owner no device can be (`'primaries'`), so it travels the primaries'
/// log, and with it their Raft cluster, to every primary.
pub const SECRET_TABLE: &str = "private_octo_broker";
const SECRET_OWNER: &str = "primaries";

impl Secret {
    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// A fresh random secret (for tests and servers without a database).
    pub fn random() -> Result<Secret, crate::BrokerError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| crate::BrokerError::Internal("no randomness for the secret".into()))?;
        Ok(Secret::from_bytes(&bytes))
    }

    /// The secret of `service` kept in the primary's database, made on first use.
    pub fn load_or_create(
        conn: &octodb::Connection,
        service: &str,
    ) -> Result<Secret, crate::BrokerError> {
        // Read first: a follower of the cluster refuses writes, and gets the secret through
        // the log.
        if let Some(bytes) = read_secret(conn, service)? {
            return Ok(Secret::from_bytes(&bytes));
        }
        // Only a leader may make it: a write tried on another primary is refused at its
        // commit, and tried again and again it would hold up the very log that brings the
        // secret here.
        let role = conn
            .sync_status()
            .ok()
            .and_then(|s| s.cluster)
            .map(|c| c.role);
        if let Some(role) = role.filter(|r| r != "leader") {
            return Err(crate::BrokerError::NotYet(format!(
                "the broker's secret is not in this primary's database yet and cannot be made \
                 here (it is the cluster's {role}): start the broker on the cluster's leader \
                 first, or wait until this primary has caught up"
            )));
        }
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| crate::BrokerError::Internal("no randomness for the secret".into()))?;
        let made = conn
            .execute(
                &format!(
                    "CREATE TABLE IF NOT EXISTS {SECRET_TABLE}(service TEXT PRIMARY KEY, \
                     secret BLOB NOT NULL, row_owner)"
                ),
                [],
            )
            .and_then(|_| {
                // Two primaries starting at once: the first insert wins, both read the same.
                conn.execute(
                    &format!(
                        "INSERT OR IGNORE INTO {SECRET_TABLE}(service, secret, row_owner) \
                         VALUES (?1, ?2, '{SECRET_OWNER}')"
                    ),
                    rusqlite::params![service, bytes.to_vec()],
                )
            });
        if let Err(e) = made {
            return Err(crate::BrokerError::NotYet(format!(
                "the broker's secret is not in this primary's database yet and cannot be made \
                 here ({e}): start the broker on the cluster's leader first, or wait until this \
                 primary has caught up"
            )));
        }
        let bytes = read_secret(conn, service)?
            .ok_or_else(|| crate::BrokerError::Internal("the secret was not stored".into()))?;
        Ok(Secret::from_bytes(&bytes))
    }

    pub fn code(&self, key: &Key) -> Vec<u8> {
        let tag = hmac::sign(&self.key, &key.canonical());
        tag.as_ref()[..CODE_LEN].to_vec()
    }

    pub fn sign(&self, r: &mut ObjRef) {
        r.code = self.code(&r.key);
    }

    /// Whether `r` carries the code the server gave its key (compared in constant time).
    pub fn verify(&self, r: &ObjRef) -> bool {
        let expected = self.code(&r.key);
        r.code.len() == CODE_LEN
            && aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &r.code).is_ok()
    }
}

fn read_secret(
    conn: &octodb::Connection,
    service: &str,
) -> Result<Option<Vec<u8>>, crate::BrokerError> {
    let exists = conn.query(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [SECRET_TABLE],
    )?;
    if exists.is_empty() {
        return Ok(None);
    }
    let rows = conn.query(
        &format!("SELECT secret FROM {SECRET_TABLE} WHERE service = ?1"),
        [service],
    )?;
    let found = match rows.iter().next() {
        Some(row) => Some(row.get::<Vec<u8>>(0)?),
        None => None,
    };
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_depend_on_the_secret_and_every_part() {
        let s = Secret::from_bytes(b"one");
        let k = Key::of_static(["root"]);
        let mut r = ObjRef::unsigned(k.clone());
        assert!(!s.verify(&r));
        s.sign(&mut r);
        assert!(s.verify(&r));
        assert!(!Secret::from_bytes(b"two").verify(&r));
        let other = ObjRef {
            key: Key::of_static(["roots"]),
            code: r.code.clone(),
        };
        assert!(!s.verify(&other));
        // ("a", "bc") and ("ab", "c") must differ.
        let a = Key::new("x", [KeyPart::from("a"), KeyPart::from("bc")]);
        let b = Key::new("x", [KeyPart::from("ab"), KeyPart::from("c")]);
        assert_ne!(s.code(&a), s.code(&b));
        assert_ne!(
            s.code(&Key::new("x", [KeyPart::Int(1)])),
            s.code(&Key::new("x", [KeyPart::from("1")]))
        );
    }
}
