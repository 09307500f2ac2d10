//! The primitives behind octodb's Noise suite (`25519_AESGCM_BLAKE2s`), handed to snow.
//!
//! snow runs the Noise protocol; this resolver only chooses who computes X25519 and AES-256-GCM:
//! aws-lc-rs, whose assembly implementations do a Diffie-Hellman in about half the time of
//! snow's built-in curve25519-dalek (a handshake does four per side, and they were three
//! quarters of a handshake's CPU) and keep the AES key schedule across messages instead of
//! redoing it per message. BLAKE2s and the RNG stay snow's own. Nothing cryptographic is
//! implemented here: the code copies bytes between snow's buffers and aws-lc-rs's calls.
//!
//! Both libraries implement the same standard functions (RFC 7748, NIST GCM), so a node using
//! this resolver talks to any Noise implementation of the same suite (the wire-attack tests
//! use snow's default resolver on the other side).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// A snow resolver taking X25519 and AES-256-GCM from aws-lc-rs and the rest from snow.
pub struct NoiseSuite;

impl CryptoResolver for NoiseSuite {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519Key::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::AESGCM => Some(Box::new(AesGcmKey::default())),
            _ => DefaultResolver.resolve_cipher(choice),
        }
    }
}

/// An X25519 key pair. snow wants the raw secret and public bytes by reference, so both are kept
/// next to aws-lc-rs's key object (built once per key, not once per Diffie-Hellman).
#[derive(Default)]
struct X25519Key {
    key: Option<PrivateKey>,
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl X25519Key {
    fn load(&mut self, private: [u8; KEY_LEN]) {
        self.private = private;
        // A 32-byte X25519 secret is always accepted (it is clamped, not validated); should
        // aws-lc-rs ever refuse one, the key stays unset and every `dh` fails instead of
        // computing with a wrong key.
        self.key = PrivateKey::from_private_key(&X25519, &private).ok();
        self.public = [0; KEY_LEN];
        if let Some(public) = self.key.as_ref().and_then(|k| k.compute_public_key().ok()) {
            if public.as_ref().len() == KEY_LEN {
                self.public.copy_from_slice(public.as_ref());
            }
        }
    }
}

impl Dh for X25519Key {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        // snow checks lengths before calling; a wrong one leaves the key unset (`dh` fails).
        match <[u8; KEY_LEN]>::try_from(privkey) {
            Ok(private) => self.load(private),
            Err(_) => *self = X25519Key::default(),
        }
    }

    fn generate(&mut self, rng: &mut dyn Random) {
        let mut private = [0u8; KEY_LEN];
        rng.fill_bytes(&mut private);
        self.load(private);
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.private
    }

    /// Fails for a peer key of low order (an all-zero shared secret), which snow's default
    /// implementation would accept: such a key only comes from a hostile peer.
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        // snow may pass a buffer longer than the key (sized for its largest curve).
        let peer = pubkey.get(..KEY_LEN).ok_or(snow::Error::Dh)?;
        let peer = UnparsedPublicKey::new(&X25519, peer);
        agreement::agree(key, peer, snow::Error::Dh, |shared| {
            let out = out.get_mut(..shared.len()).ok_or(snow::Error::Dh)?;
            out.copy_from_slice(shared);
            Ok(())
        })
    }
}

/// An AES-256-GCM key with Noise's nonce layout: 4 zero bytes, then the 64-bit counter big-endian.
#[derive(Default)]
struct AesGcmKey {
    key: Option<LessSafeKey>,
}

fn noise_nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

impl Cipher for AesGcmKey {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8]) {
        self.key = UnboundKey::new(&AES_256_GCM, key)
            .ok()
            .map(LessSafeKey::new);
    }

    /// snow sizes `out` to hold the plaintext and the tag, and only encrypts after `set`; the
    /// trait cannot report errors, so breaking either promise is a bug in snow and panics.
    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let key = self
            .key
            .as_ref()
            .expect("snow sets a cipher key before encrypting");
        let len = plaintext.len();
        let (body, rest) = out.split_at_mut(len);
        body.copy_from_slice(plaintext);
        let tag = key
            .seal_in_place_separate_tag(noise_nonce(nonce), Aad::from(authtext), body)
            .expect("AES-GCM seals any message snow allows (at most 64 KiB)");
        rest[..TAG_LEN].copy_from_slice(tag.as_ref());
        len + TAG_LEN
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Decrypt)?;
        let len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        let (body, tag) = ciphertext.split_at(len);
        let out = out.get_mut(..len).ok_or(snow::Error::Decrypt)?;
        key.open_separate_gather(noise_nonce(nonce), Aad::from(authtext), body, tag, out)
            .map_err(|_| snow::Error::Decrypt)?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_dh() -> Box<dyn Dh> {
        DefaultResolver.resolve_dh(&DHChoice::Curve25519).unwrap()
    }

    #[test]
    fn x25519_agrees_with_snows_default_implementation() {
        for seed in [[0u8; 32], [0xff; 32], [7; 32]] {
            let mut ours = X25519Key::default();
            ours.set(&seed);
            let mut theirs = default_dh();
            theirs.set(&[seed[0] ^ 0x55; 32]);
            let mut reference = default_dh();
            reference.set(&seed);
            assert_eq!(ours.pubkey(), reference.pubkey(), "public key of {seed:?}");

            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            ours.dh(theirs.pubkey(), &mut a).unwrap();
            theirs.dh(ours.pubkey(), &mut b).unwrap();
            assert_eq!(a, b, "shared secret with seed {seed:?}");
        }
    }

    #[test]
    fn x25519_refuses_a_low_order_peer_key() {
        let mut ours = X25519Key::default();
        ours.set(&[9; 32]);
        let mut out = [0u8; 32];
        assert!(ours.dh(&[0u8; 32], &mut out).is_err());
        assert!(ours.dh(&[1u8; 31], &mut out).is_err(), "short key");
    }

    #[test]
    fn aes_gcm_interoperates_with_snows_default_implementation() {
        let key = [3u8; 32];
        let mut ours = AesGcmKey::default();
        ours.set(&key);
        let mut theirs = DefaultResolver
            .resolve_cipher(&CipherChoice::AESGCM)
            .unwrap();
        theirs.set(&key);

        let message = b"rows and schema";
        let mut sealed = [0u8; 15 + TAG_LEN];
        assert_eq!(ours.encrypt(42, b"ad", message, &mut sealed), sealed.len());
        let mut opened = [0u8; 15];
        assert_eq!(theirs.decrypt(42, b"ad", &sealed, &mut opened).unwrap(), 15);
        assert_eq!(&opened, message);

        theirs.encrypt(43, b"", message, &mut sealed);
        assert_eq!(ours.decrypt(43, b"", &sealed, &mut opened).unwrap(), 15);
        assert_eq!(&opened, message);

        sealed[0] ^= 1;
        assert!(ours.decrypt(43, b"", &sealed, &mut opened).is_err());
        assert!(ours.decrypt(44, b"", &sealed, &mut opened).is_err());
        assert!(ours.decrypt(43, b"", &sealed[..10], &mut opened).is_err());
    }
}
