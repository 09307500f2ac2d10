//! Encryption at rest: handing a file's key to SQLCipher, the page codec linked in (AES-256-CBC
//! and an HMAC-SHA512 per page, over the file and its WAL). Every connection octodb opens on an
//! encrypted file (the app's, the writer's, readers, the cluster's, plain local ones, backups)
//! gets its key here, in [`unlock`], and nowhere else.
//!
//! The file takes the key exactly as the URI gives it, so stock SQLCipher 4 opens it with the
//! same `PRAGMA key`. A passphrase costs SQLCipher a PBKDF2 of 256,000 rounds (about a quarter of
//! a second) at every connection; octodb derives it once per process and file salt and hands
//! the raw key to every later connection instead (see [`key_spec`]).

use crate::error::{Error, Result};
use crate::uri::NetworkKey;
use rusqlite::{Connection, ErrorCode};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use zeroize::Zeroizing;

/// SQLCipher 4's default key derivation, which octodb keeps so that stock SQLCipher 4 opens
/// its files: PBKDF2-HMAC-SHA512, 256,000 iterations, a 256-bit key, a 16-byte random salt
/// kept as the file's first 16 bytes.
const KDF_ITERATIONS: u32 = 256_000;
const KEY_BYTES: usize = 32;
const SALT_BYTES: usize = 16;
/// What a plain SQLite file starts with (an encrypted one starts with its salt).
const PLAIN_HEADER: &[u8; SALT_BYTES] = b"SQLite format 3\0";

/// Hand `key` to a connection just opened on `file`, and check that it opens the file: a wrong
/// key, or a key for a plain file, fails here with [`Error::WrongKey`] and changes nothing.
pub fn unlock(conn: &Connection, file: &Path, key: &NetworkKey) -> Result<()> {
    let salt = file_salt(conn);
    let spec = key_spec(key, salt)?;
    conn.pragma_update(None, "key", spec.as_str())?;
    // After the key: SQLCipher sets its default log (stderr) when its first codec starts.
    quiet_sqlcipher_log(conn);
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
        Ok(()) => {}
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
            // (Debug: the error says it to the caller, who would otherwise read it twice.)
            tracing::debug!(file = %file.display(), "the key given does not open this file");
            return Err(Error::WrongKey {
                path: file.to_path_buf(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    if salt.is_none() && file.exists() {
        // A new file: write its first page now, in the main file, so that the salt SQLCipher
        // drew is on disk before any other connection reads the header (in WAL mode page 1
        // would otherwise sit in the WAL, and another connection would draw a salt of its own
        // and fail to read it).
        conn.execute_batch("PRAGMA user_version = 0")?;
    }
    Ok(())
}

/// The file's salt: its first 16 bytes, when it has them and is not a plain SQLite file.
///
/// Read through `conn`'s own handle on the file, never through one of ours: closing any
/// descriptor of a file drops every POSIX lock the process holds on it, and SQLite's locks
/// are POSIX locks. Without its shared lock, a node looked closed to other processes, and
/// one of them (a backup, a shell) deleted the node's WAL, committed rows in it, on closing.
fn file_salt(conn: &Connection) -> Option<[u8; SALT_BYTES]> {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn` is open and used by this thread only; SQLITE_FCNTL_FILE_POINTER writes
    // the main database's `sqlite3_file*` (owned by SQLite, valid while `conn` is open) into
    // `file`, which outlives the call.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        )
    };
    if rc != ffi::SQLITE_OK || file.is_null() {
        return None;
    }
    // SAFETY: `file` is the open file of `conn` (above); its methods, when set, are the
    // VFS's, and xRead reads the raw bytes at the offset into `salt`, which is SALT_BYTES
    // long. A file shorter than that (a new one) answers SQLITE_IOERR_SHORT_READ.
    let mut salt = [0u8; SALT_BYTES];
    let rc = unsafe {
        let methods = (*file).pMethods;
        if methods.is_null() {
            return None;
        }
        let read = (*methods).xRead?;
        read(
            file,
            salt.as_mut_ptr().cast(),
            SALT_BYTES as std::ffi::c_int,
            0,
        )
    };
    (rc == ffi::SQLITE_OK && &salt != PLAIN_HEADER).then_some(salt)
}

/// What `PRAGMA key` is given: SQLCipher reads `x'<64 hex>'` as a raw key, `x'<96 hex>'` as a
/// raw key and the salt it was derived with, and anything else as a passphrase to stretch.
/// A passphrase is stretched here, as SQLCipher would with the file's salt (a new file gets a
/// random salt, which SQLCipher writes as its first 16 bytes): once per process and salt.
fn key_spec(key: &NetworkKey, salt: Option<[u8; SALT_BYTES]>) -> Result<Secret> {
    let passphrase = match key {
        NetworkKey::Bytes(raw) => return Ok(Secret(format!("x'{}'", hex::encode(raw)))),
        // A passphrase that is itself a raw-key literal is SQLCipher's to read as one.
        NetworkKey::Passphrase(p) if looks_raw(p) => return Ok(Secret(p.clone())),
        NetworkKey::Passphrase(p) => p,
    };
    let salt = match salt {
        Some(salt) => salt,
        None => {
            let mut fresh = [0u8; SALT_BYTES];
            aws_lc_rs::rand::fill(&mut fresh)
                .map_err(|_| Error::rule("the system's random source failed; try again"))?;
            fresh
        }
    };
    let derived = derived_key(passphrase, &salt);
    Ok(Secret(format!(
        "x'{}{}'",
        hex::encode(&derived[..]),
        hex::encode(salt)
    )))
}

fn looks_raw(passphrase: &str) -> bool {
    let lower = passphrase.to_ascii_lowercase();
    lower.starts_with("x'") && lower.ends_with('\'')
}

/// Derived keys by a digest of their passphrase (the passphrase itself is not kept) and salt,
/// cleared from memory when dropped.
type DerivedKeys = HashMap<([u8; 32], [u8; SALT_BYTES]), Zeroizing<[u8; KEY_BYTES]>>;
/// The keys derived in this process.
static DERIVED: OnceLock<Mutex<DerivedKeys>> = OnceLock::new();

fn derived() -> std::sync::MutexGuard<'static, DerivedKeys> {
    DERIVED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn passphrase_digest(passphrase: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, passphrase.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// How many PBKDF2 derivations of `passphrase` this process has run (one per file salt): what
/// the tests check to show that a connection after the first does not derive again.
#[doc(hidden)]
pub fn derivations_of(passphrase: &str) -> usize {
    let digest = passphrase_digest(passphrase);
    derived().keys().filter(|(p, _)| *p == digest).count()
}

/// PBKDF2 of `passphrase` with `salt`, SQLCipher 4's way, once per process for each pair.
fn derived_key(passphrase: &str, salt: &[u8; SALT_BYTES]) -> Zeroizing<[u8; KEY_BYTES]> {
    // The lock is held while deriving: a second connection waits for the first derivation
    // rather than doing its own.
    let mut cache = derived();
    cache
        .entry((passphrase_digest(passphrase), *salt))
        .or_insert_with(|| {
            let mut out = Zeroizing::new([0u8; KEY_BYTES]);
            let rounds = NonZeroU32::new(KDF_ITERATIONS).unwrap_or(NonZeroU32::MIN);
            aws_lc_rs::pbkdf2::derive(
                aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA512,
                rounds,
                salt,
                passphrase.as_bytes(),
                &mut out[..],
            );
            out
        })
        .clone()
}

/// A file's old key, replaced by a rekey, is no longer kept derived in memory (where it would
/// open the file's older backups for whoever reads this process's memory).
fn forget_derived(old: &NetworkKey, salt: &[u8; SALT_BYTES]) {
    if let NetworkKey::Passphrase(p) = old {
        derived().remove(&(passphrase_digest(p), *salt));
    }
}

/// SQLCipher prints its warnings ("hmac check failed for pgno=1" at every wrong key) on
/// stderr by default. octodb reports those cases itself, as typed errors and `tracing` lines,
/// so SQLCipher's own log is turned off, once per process (the setting is global).
fn quiet_sqlcipher_log(conn: &Connection) {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        if let Err(e) = conn.query_row("PRAGMA cipher_log = off", [], |_| Ok(())) {
            tracing::debug!(error = %e, "could not turn SQLCipher's log off");
        }
    });
}

/// A key spec, cleared from memory when dropped.
struct Secret(String);

impl Secret {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: zeroes are valid UTF-8, so the String stays valid; the bytes are this
        // String's own, borrowed mutably for the call only.
        unsafe { self.0.as_bytes_mut() }.fill(0);
    }
}

/// Where a node on an encrypted file keeps its network key (in the encrypted file itself).
const NETWORK_KEY: &str = "network_key";

/// The network key kept in this file, if one is: `Some(None)` when the file says its node's
/// network has no key (a plain node's file that `octodb encrypt` converted).
pub fn kept_network_key(conn: &Connection) -> Result<Option<Option<[u8; 32]>>> {
    let Some(stored) = super::meta_get::<Vec<u8>>(conn, NETWORK_KEY)? else {
        return Ok(None);
    };
    if stored.is_empty() {
        return Ok(Some(None));
    }
    <[u8; 32]>::try_from(stored.as_slice())
        .map(|k| Some(Some(k)))
        .map_err(|_| {
            Error::rule("the network key kept in this file is damaged; restore it from a backup")
        })
}

/// The network key of a node whose file is encrypted with `file_key`: the one kept in the file,
/// or, on a file that has none yet, one derived from `file_key` and kept. Kept, so that a
/// `PRAGMA rekey` of the file (or a conversion, `octodb encrypt`/`decrypt`) leaves the network
/// key as it was: the other nodes still have it.
pub fn network_key(conn: &Connection, file_key: &NetworkKey) -> Result<Option<[u8; 32]>> {
    if let Some(kept) = kept_network_key(conn)? {
        return Ok(kept);
    }
    let derived = derive_network_key(file_key)?;
    super::meta_set(conn, NETWORK_KEY, derived.to_vec())?;
    Ok(Some(derived))
}

/// HKDF-SHA256 of the file's key, with a salt and a label of octodb's own: the bytes that
/// encrypt the file are never the bytes that key the network (Noise's pre-shared key).
pub fn derive_network_key(file_key: &NetworkKey) -> Result<[u8; 32]> {
    use aws_lc_rs::hkdf;
    let material = match file_key {
        NetworkKey::Passphrase(p) => p.as_bytes(),
        NetworkKey::Bytes(b) => b.as_slice(),
    };
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"octodb at-rest key to network key v1")
        .extract(material);
    let mut out = [0u8; 32];
    prk.expand(&[b"noise pre-shared key"], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| Error::rule("deriving the network key from the file's key failed"))?;
    Ok(out)
}

/// The key a node's file has now: the URI's, until a `PRAGMA rekey` changes it. The node's
/// own connections (writer, readers) are opened with it; `generation` counts the changes, so
/// that a connection opened with an older key is closed rather than used again.
#[derive(Default)]
pub struct CurrentKey {
    key: Mutex<Option<NetworkKey>>,
    generation: AtomicU64,
}

impl CurrentKey {
    pub fn new(key: Option<NetworkKey>) -> CurrentKey {
        CurrentKey {
            key: Mutex::new(key),
            generation: AtomicU64::new(0),
        }
    }

    pub fn get(&self) -> Option<NetworkKey> {
        self.key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn replace(&self, key: NetworkKey) {
        *self.key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Re-encrypt `file` with `new_key` through `conn` (SQLCipher's `PRAGMA rekey`: every page is
/// rewritten in one transaction; the salt stays), and make `new_key` the file's key for the
/// connections opened from now on. Only `conn` goes on working: any other connection open on
/// the file still has the old key, and must be closed (the caller sees to that).
pub fn rekey(
    conn: &Connection,
    file: &Path,
    new_key: NetworkKey,
    current: &CurrentKey,
) -> Result<()> {
    // The salt is the file's own: the new key is derived with it, as SQLCipher would.
    let Some(salt) = file_salt(conn) else {
        return Err(Error::WrongKey {
            path: file.to_path_buf(),
        });
    };
    let spec = key_spec(&new_key, Some(salt))?;
    conn.pragma_update(None, "rekey", spec.as_str())?;
    // Proof that the file reads with the new key, through this connection.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    let old = current.get();
    current.replace(new_key);
    if let Some(old) = old {
        forget_derived(&old, &salt);
    }
    tracing::info!(file = %file.display(), "the file was re-encrypted with a new key");
    Ok(())
}
