//! Session tickets: what lets an approved device reconnect with a cheaper handshake.
//!
//! After a full handshake and the device's admission, a primary hands the device a ticket and
//! a fresh 32-byte secret over the encrypted connection (`Message::SessionTicket`). The ticket
//! is the secret and the device's identity sealed with AES-256-GCM under a key only that
//! primary process holds, so the primary keeps no state per device and reads both back from
//! the ticket when the device returns. The device then proves it holds the secret by using it
//! as the pre-shared key of a `Noise_NNpsk0` handshake ([`super::resume`]): two X25519
//! operations a side instead of XX's four, with a fresh ephemeral exchange (forward secrecy).
//!
//! The sealing key lives in memory only and rotates every [`TICKET_LIFETIME`]; a ticket is good
//! for that long after it was issued, under the current key or the one before. A primary that
//! restarts, another primary, or a ticket past its time: the device is told so in the clear
//! (nothing secret in that) and the same connection goes on with a full handshake.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::crypto::PublicKey;

/// How long a ticket is good for, and how often the sealing key changes.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The secret a ticket carries: the resumed handshake's pre-shared key.
pub const SECRET_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// `[format][issued at, unix seconds: 8][identity: 32][secret: 32]`.
const PLAIN_LEN: usize = 1 + 8 + 32 + SECRET_LEN;
const FORMAT: u8 = 1;
/// `[key generation][nonce][sealed plain text and its tag]`.
pub const SEALED_LEN: usize = 1 + NONCE_LEN + PLAIN_LEN + TAG_LEN;
/// Bound into each ticket's seal, so the key could never authenticate anything else.
const CONTEXT: &[u8] = b"octodb-session-ticket-1";

/// What a primary learns from a ticket that opens: who the device is and the secret it must
/// prove it holds.
pub struct Opened {
    pub identity: PublicKey,
    pub secret: [u8; SECRET_LEN],
}

/// Why a ticket was not taken; the connection goes on with a full handshake either way.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// Sealed under a key this process does not hold (another primary, a restart, an old key)
    /// or altered.
    Unknown,
    /// Issued longer ago than [`TICKET_LIFETIME`], or in the future.
    Expired,
}

/// A primary's sealing keys: the current one and the one before.
pub struct TicketKeys {
    rng: SystemRandom,
    keys: Mutex<Generations>,
}

struct Generations {
    current: Generation,
    previous: Option<Generation>,
}

struct Generation {
    id: u8,
    key: LessSafeKey,
    since: Instant,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKeys(<secret>)")
    }
}

impl TicketKeys {
    /// Fresh keys from the system's random source.
    pub fn generate() -> Result<TicketKeys, aws_lc_rs::error::Unspecified> {
        let rng = SystemRandom::new();
        let current = Generation::new(&rng, 0, Instant::now())?;
        Ok(TicketKeys {
            rng,
            keys: Mutex::new(Generations {
                current,
                previous: None,
            }),
        })
    }

    /// A ticket for `identity`, and the secret that goes with it.
    pub fn issue(
        &self,
        identity: &PublicKey,
    ) -> Result<(Vec<u8>, [u8; SECRET_LEN]), aws_lc_rs::error::Unspecified> {
        self.issue_at(identity, Now::read())
    }

    fn issue_at(
        &self,
        identity: &PublicKey,
        now: Now,
    ) -> Result<(Vec<u8>, [u8; SECRET_LEN]), aws_lc_rs::error::Unspecified> {
        let mut secret = [0u8; SECRET_LEN];
        self.rng.fill(&mut secret)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce)?;
        let mut body = Vec::with_capacity(PLAIN_LEN + TAG_LEN);
        body.push(FORMAT);
        body.extend_from_slice(&now.unix_s.to_be_bytes());
        body.extend_from_slice(&identity.0);
        body.extend_from_slice(&secret);
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.rotate_if_due(&self.rng, now.instant)?;
        let generation = &keys.current;
        generation.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(generation.id)),
            &mut body,
        )?;
        let sealed = [&[generation.id][..], &nonce, &body].concat();
        Ok((sealed, secret))
    }

    /// The identity and secret a ticket carries, if this process sealed it and it is fresh.
    pub fn open(&self, ticket: &[u8]) -> Result<Opened, NotTaken> {
        self.open_at(ticket, Now::read().unix_s)
    }

    fn open_at(&self, ticket: &[u8], now_unix_s: u64) -> Result<Opened, NotTaken> {
        if ticket.len() != SEALED_LEN {
            return Err(NotTaken::Unknown);
        }
        let (id, rest) = (ticket[0], &ticket[1..]);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| NotTaken::Unknown)?;
        let mut body = body.to_vec();
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let generation = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|g| g.id == id)
            .ok_or(NotTaken::Unknown)?;
        let plain = generation
            .key
            .open_in_place(nonce, Aad::from(aad(id)), &mut body)
            .map_err(|_| NotTaken::Unknown)?;
        drop(keys);
        // Sealed by this process, so laid out as `issue` writes; checked all the same.
        let fields = match &*plain {
            [FORMAT, rest @ ..] if rest.len() == PLAIN_LEN - 1 => rest,
            _ => return Err(NotTaken::Unknown),
        };
        let (issued, rest) = fields.split_at(8);
        let (identity, secret) = rest.split_at(32);
        let issued = u64::from_be_bytes(issued.try_into().map_err(|_| NotTaken::Unknown)?);
        let age = now_unix_s.checked_sub(issued).ok_or(NotTaken::Expired)?;
        if age >= TICKET_LIFETIME.as_secs() {
            return Err(NotTaken::Expired);
        }
        let identity = PublicKey(identity.try_into().map_err(|_| NotTaken::Unknown)?);
        let secret = secret.try_into().map_err(|_| NotTaken::Unknown)?;
        Ok(Opened { identity, secret })
    }
}

impl Generations {
    fn rotate_if_due(
        &mut self,
        rng: &SystemRandom,
        now: Instant,
    ) -> Result<(), aws_lc_rs::error::Unspecified> {
        if now.saturating_duration_since(self.current.since) < TICKET_LIFETIME {
            return Ok(());
        }
        let next = Generation::new(rng, self.current.id.wrapping_add(1), now)?;
        self.previous = Some(std::mem::replace(&mut self.current, next));
        Ok(())
    }
}

impl Generation {
    fn new(
        rng: &SystemRandom,
        id: u8,
        since: Instant,
    ) -> Result<Generation, aws_lc_rs::error::Unspecified> {
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes)?;
        Ok(Generation {
            id,
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes)?),
            since,
        })
    }
}

fn aad(generation: u8) -> [u8; CONTEXT.len() + 1] {
    let mut aad = [0u8; CONTEXT.len() + 1];
    aad[..CONTEXT.len()].copy_from_slice(CONTEXT);
    aad[CONTEXT.len()] = generation;
    aad
}

/// The two clocks a ticket needs: the wall clock it carries (it outlives the process's
/// monotonic one only as long as the key does) and the monotonic one that rotates keys.
#[derive(Clone, Copy)]
struct Now {
    instant: Instant,
    unix_s: u64,
}

impl Now {
    fn read() -> Now {
        Now {
            instant: Instant::now(),
            unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    #[cfg(test)]
    fn later(self, by: Duration) -> Now {
        Now {
            instant: self.instant + by,
            unix_s: self.unix_s + by.as_secs(),
        }
    }
}

/// What a device keeps to resume with one primary: the ticket, its secret, and the primary's
/// identity as the full handshake proved it (a resumed handshake proves it again only through
/// the secret, which that primary alone can read back from the ticket).
#[derive(Clone)]
pub struct Resumption {
    pub ticket: Vec<u8>,
    pub secret: [u8; SECRET_LEN],
    pub primary: PublicKey,
    /// Past this, the primary would refuse it: not worth a round trip.
    pub good_until: Instant,
}

/// Never shows the secret.
impl fmt::Debug for Resumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resumption")
            .field("primary", &self.primary)
            .field("good_until", &self.good_until)
            .finish_non_exhaustive()
    }
}

impl Resumption {
    /// As received now from `primary`, good for `lifetime_s` seconds (less a margin for the
    /// clocks and the trip).
    pub fn received(
        ticket: Vec<u8>,
        secret: [u8; SECRET_LEN],
        primary: PublicKey,
        lifetime_s: u32,
    ) -> Resumption {
        let lifetime = Duration::from_secs(u64::from(lifetime_s));
        let margin = (lifetime / 10).min(Duration::from_secs(600));
        Resumption {
            ticket,
            secret,
            primary,
            good_until: Instant::now() + lifetime.saturating_sub(margin),
        }
    }

    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.good_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeKeys;

    #[test]
    fn a_ticket_opens_to_the_identity_and_secret_it_was_issued_with() {
        let keys = TicketKeys::generate().unwrap();
        let device = NodeKeys::generate().public_key();
        let (ticket, secret) = keys.issue(&device).unwrap();
        assert_eq!(ticket.len(), SEALED_LEN);
        let opened = keys.open(&ticket).unwrap();
        assert_eq!(opened.identity, device);
        assert_eq!(opened.secret, secret);
        // Two tickets for the same device share nothing.
        let (again, other_secret) = keys.issue(&device).unwrap();
        assert_ne!(again, ticket);
        assert_ne!(other_secret, secret);
    }

    #[test]
    fn another_primarys_or_an_altered_ticket_is_not_taken() {
        let (keys, others) = (
            TicketKeys::generate().unwrap(),
            TicketKeys::generate().unwrap(),
        );
        let (ticket, _) = others.issue(&NodeKeys::generate().public_key()).unwrap();
        assert_eq!(keys.open(&ticket).err(), Some(NotTaken::Unknown));
        let (ticket, _) = keys.issue(&NodeKeys::generate().public_key()).unwrap();
        for i in 0..ticket.len() {
            let mut altered = ticket.clone();
            altered[i] ^= 0x01;
            assert_eq!(
                keys.open(&altered).err(),
                Some(NotTaken::Unknown),
                "byte {i}"
            );
        }
        assert_eq!(keys.open(&ticket[1..]).err(), Some(NotTaken::Unknown));
        assert_eq!(keys.open(&[]).err(), Some(NotTaken::Unknown));
    }

    #[test]
    fn after_a_rotation_the_previous_keys_tickets_still_open_and_older_ones_do_not() {
        let keys = TicketKeys::generate().unwrap();
        let device = NodeKeys::generate().public_key();
        let now = Now::read();
        let (first, _) = keys.issue_at(&device, now).unwrap();
        let day = now.later(TICKET_LIFETIME);
        let (second, _) = keys.issue_at(&device, day).unwrap();
        let just_before = TICKET_LIFETIME.as_secs() - 1;
        assert!(
            keys.open_at(&first, now.unix_s + just_before).is_ok(),
            "previous key"
        );
        assert!(keys.open_at(&second, day.unix_s).is_ok());
        let two_days = day.later(TICKET_LIFETIME);
        let _ = keys.issue_at(&device, two_days).unwrap();
        assert_eq!(
            keys.open_at(&first, day.unix_s).err(),
            Some(NotTaken::Unknown)
        );
        assert!(keys.open_at(&second, day.unix_s + just_before).is_ok());
    }

    #[test]
    fn a_ticket_past_its_lifetime_or_from_the_future_is_expired() {
        let keys = TicketKeys::generate().unwrap();
        let now = Now::read();
        let (ticket, _) = keys
            .issue_at(&NodeKeys::generate().public_key(), now)
            .unwrap();
        let lifetime = TICKET_LIFETIME.as_secs();
        assert!(keys.open_at(&ticket, now.unix_s + lifetime - 1).is_ok());
        assert_eq!(
            keys.open_at(&ticket, now.unix_s + lifetime).err(),
            Some(NotTaken::Expired)
        );
        assert_eq!(
            keys.open_at(&ticket, now.unix_s - 1).err(),
            Some(NotTaken::Expired)
        );
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let secret = [0xabu8; SECRET_LEN];
        let r = Resumption::received(vec![1, 2], secret, NodeKeys::generate().public_key(), 60);
        let shown = format!("{r:?}");
        // Neither as bytes (`[171, 171, ...]`) nor as hex: a random key or a time may hold
        // "171" or "abab" by chance.
        assert!(
            !shown.contains("171, 171") && !shown.to_lowercase().contains("abababababab"),
            "{shown}"
        );
        assert!(r.is_fresh());
    }
}
