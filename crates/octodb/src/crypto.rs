//! Node identity keys.
//!
//! A node is identified by an Ed25519 public key. Transport encryption uses a separate X25519
//! key pair (the Noise static key); the two are tied together during the handshake by an
//! Ed25519 signature over the Noise handshake hash (see [`crate::net::transport`]). Keeping them
//! separate avoids converting one curve's secret into the other's, which is easy to get subtly
//! wrong. All primitives come from `ed25519-dalek`, `snow` and `aws-lc-rs` (see
//! [`noise_suite`]); nothing is implemented here.

mod noise_suite;

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

pub(crate) use noise_suite::NoiseSuite;

/// The Noise parameters used only to have snow generate an X25519 key pair; any pattern that
/// uses Curve25519 gives the same kind of key.
const KEYGEN_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// A 32-byte key derived from `material` with BLAKE2s (the Noise suite's own hash, from snow),
/// separated by `context` so the same input never yields the same key for two purposes.
pub fn derive_key(context: &[u8], material: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Some(mut h) = DefaultResolver.resolve_hash(&snow::params::HashChoice::Blake2s) {
        h.input(context);
        h.input(&(material.len() as u64).to_be_bytes());
        h.input(material);
        h.result(&mut out);
    }
    out
}

/// The network key (Noise's pre-shared key) of a node without encryption at rest, from the
/// URI's `key=`/`hexkey=`: the user's key stretched with the Noise suite's own hash. (An
/// encrypted node's is derived from its file key instead and kept in its file:
/// `store::at_rest::network_key`.)
pub fn plain_network_key(key: &crate::uri::NetworkKey) -> [u8; 32] {
    use crate::uri::NetworkKey;
    let material: &[u8] = match key {
        NetworkKey::Passphrase(p) => p.as_bytes(),
        NetworkKey::Bytes(b) => b,
    };
    derive_key(b"octodb network key v1", material)
}

/// Length of a stored key pair: Ed25519 secret || X25519 secret.
const STORED_LEN: usize = 64;

/// Errors from parsing keys or checking signatures.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A byte or text form had the wrong length.
    #[error("{what} has the wrong length: expected {expected}, got {got}")]
    WrongLength {
        /// What was being parsed.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The length actually given.
        got: usize,
    },
    /// A public key in text form contained characters other than hex digits.
    #[error("public key is not valid hex ({0}); expected 64 hex characters")]
    NotHex(String),
    /// 32 bytes that do not encode a point on the Ed25519 curve.
    #[error("not a valid Ed25519 public key: {0}")]
    InvalidPublicKey(String),
    /// The signature does not match the key and message.
    #[error("signature verification failed: the message or signature was altered, or was signed by another key")]
    BadSignature,
}

/// A node's key pair. Identity = Ed25519 public key (32 bytes, shown as 64 lowercase hex chars).
/// The Noise static key is a separate X25519 key pair; the binding between the two is proven in
/// the handshake by an Ed25519 signature over the Noise handshake hash (see transport).
#[derive(Clone)]
pub struct NodeKeys {
    signing: SigningKey,
    noise_private: [u8; 32],
    noise_public: [u8; 32],
}

impl NodeKeys {
    /// Generates a fresh identity and Noise key pair from the operating system's RNG.
    pub fn generate() -> NodeKeys {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let params = KEYGEN_PARAMS
            .parse()
            .expect("KEYGEN_PARAMS is a valid, constant Noise pattern");
        // Only fails if the resolver lacks Curve25519 or an RNG, and NoiseSuite has both.
        let pair = snow::Builder::with_resolver(params, Box::new(NoiseSuite))
            .generate_keypair()
            .expect("NoiseSuite supports Curve25519");
        let mut noise_private = [0u8; 32];
        let mut noise_public = [0u8; 32];
        noise_private.copy_from_slice(&pair.private);
        noise_public.copy_from_slice(&pair.public);
        NodeKeys {
            signing,
            noise_private,
            noise_public,
        }
    }

    /// Serializes both secrets (64 bytes: Ed25519 secret || X25519 secret), for storing in the db.
    /// The result is secret material.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STORED_LEN);
        out.extend_from_slice(&self.signing.to_bytes());
        out.extend_from_slice(&self.noise_private);
        out
    }

    /// Restores keys stored by [`NodeKeys::to_bytes`]; public halves are re-derived.
    pub fn from_bytes(b: &[u8]) -> Result<NodeKeys, CryptoError> {
        if b.len() != STORED_LEN {
            return Err(CryptoError::WrongLength {
                what: "stored node key pair",
                expected: STORED_LEN,
                got: b.len(),
            });
        }
        let mut ed = [0u8; 32];
        ed.copy_from_slice(&b[..32]);
        let mut noise_private = [0u8; 32];
        noise_private.copy_from_slice(&b[32..]);
        Ok(NodeKeys {
            signing: SigningKey::from_bytes(&ed),
            noise_public: x25519_public(&noise_private),
            noise_private,
        })
    }

    /// The node's identity.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `msg` with the identity key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The X25519 secret used as the Noise static key.
    pub fn noise_private(&self) -> &[u8; 32] {
        &self.noise_private
    }

    /// The X25519 public key matching [`NodeKeys::noise_private`].
    pub fn noise_public(&self) -> [u8; 32] {
        self.noise_public
    }
}

/// Never prints secrets, so keys can sit inside structs that derive `Debug`.
impl fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeys")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// Derives the X25519 public key with the implementation the handshake will use.
fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    let mut dh = NoiseSuite
        .resolve_dh(&DHChoice::Curve25519)
        .expect("NoiseSuite supports Curve25519");
    dh.set(private);
    let mut public = [0u8; 32];
    public.copy_from_slice(dh.pubkey());
    public
}

/// A node identity: an Ed25519 public key.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters and checks that they encode a valid Ed25519 point.
    pub fn from_hex(s: &str) -> Result<PublicKey, CryptoError> {
        if s.len() != 64 {
            return Err(CryptoError::WrongLength {
                what: "public key (hex)",
                expected: 64,
                got: s.len(),
            });
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|e| CryptoError::NotHex(e.to_string()))?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|e| CryptoError::InvalidPublicKey(e.to_string()))?;
        Ok(PublicKey(bytes))
    }

    /// Verifies an Ed25519 signature. Uses strict verification, which rejects weak keys and
    /// malleable signatures, so a signature cannot be valid for more than one key/message pair.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        let key = VerifyingKey::from_bytes(&self.0)
            .map_err(|e| CryptoError::InvalidPublicKey(e.to_string()))?;
        let sig = Signature::from_slice(sig).map_err(|_| CryptoError::WrongLength {
            what: "signature",
            expected: 64,
            got: sig.len(),
        })?;
        key.verify_strict(msg, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_bytes() {
        let keys = NodeKeys::generate();
        let bytes = keys.to_bytes();
        assert_eq!(bytes.len(), 64);
        let back = NodeKeys::from_bytes(&bytes).unwrap();
        assert_eq!(back.public_key(), keys.public_key());
        assert_eq!(back.noise_private(), keys.noise_private());
        assert_eq!(back.noise_public(), keys.noise_public());
        assert_ne!(keys.public_key(), NodeKeys::generate().public_key());
        let err = NodeKeys::from_bytes(&bytes[..63]).unwrap_err();
        assert!(err.to_string().contains("expected 64, got 63"), "{err}");
    }

    #[test]
    fn derived_noise_public_matches_snow() {
        let keys = NodeKeys::generate();
        assert_eq!(x25519_public(keys.noise_private()), keys.noise_public());
    }

    #[test]
    fn debug_hides_secrets() {
        let keys = NodeKeys::generate();
        let shown = format!("{keys:?}");
        assert!(shown.contains(&keys.public_key().to_hex()));
        assert!(!shown.contains(&hex::encode(keys.noise_private())));
        assert!(!shown.contains(&hex::encode(&keys.to_bytes()[..32])));
    }

    #[test]
    fn sign_and_verify() {
        let keys = NodeKeys::generate();
        let pk = keys.public_key();
        let sig = keys.sign(b"hello");
        pk.verify(b"hello", &sig).unwrap();
        assert!(matches!(
            pk.verify(b"hellp", &sig),
            Err(CryptoError::BadSignature)
        ));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(pk.verify(b"hello", &bad).is_err());
        assert!(matches!(
            pk.verify(b"hello", &sig[..63]),
            Err(CryptoError::WrongLength { .. })
        ));
        let other = NodeKeys::generate().public_key();
        assert!(other.verify(b"hello", &sig).is_err());
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let pk = NodeKeys::generate().public_key();
        let text = pk.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(format!("{pk}"), text);
        assert_eq!(format!("{pk:?}"), text);
        assert_eq!(PublicKey::from_hex(&text).unwrap(), pk);
        assert_eq!(PublicKey::from_hex(&text.to_uppercase()).unwrap(), pk);

        assert!(matches!(
            PublicKey::from_hex(&text[..62]),
            Err(CryptoError::WrongLength { got: 62, .. })
        ));
        let not_hex = format!("zz{}", &text[2..]);
        assert!(matches!(
            PublicKey::from_hex(&not_hex),
            Err(CryptoError::NotHex(_))
        ));
        // y = 2 has no matching x on the curve, so it does not decompress.
        let off_curve = format!("02{}", "00".repeat(31));
        assert!(matches!(
            PublicKey::from_hex(&off_curve),
            Err(CryptoError::InvalidPublicKey(_))
        ));
    }

    #[test]
    fn serde_round_trip() {
        let pk = NodeKeys::generate().public_key();
        let bytes = postcard::to_allocvec(&pk).unwrap();
        let back: PublicKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, pk);
    }
}
