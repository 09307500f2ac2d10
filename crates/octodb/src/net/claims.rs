//! What each side says of itself inside the Noise handshake: the responder's answer to the
//! initiator's version offer, and the identity claims (their layouts before and after version
//! negotiation). The handshake itself is `transport`'s.

use super::transport::NetError;
use super::version::{self, Versions};

/// The claim's layout in a handshake without an offer (protocol 2) and with one.
const CLAIM_PRE_NEGOTIATION: u8 = 2;
const CLAIM_NEGOTIATED: u8 = 3;
/// `[claim version][identity]`; the initiator's claim has one byte more, the responder's three
/// more when it answers an offer.
const CLAIM_LEN: usize = 1 + 32;
/// The protocol version as the handshake goes: what was offered and chosen.
#[derive(Clone, Copy)]
pub(super) enum Negotiation {
    /// Initiator: nothing heard yet (`offered`: whether message 1 carried an offer).
    Pending { offered: bool },
    /// Both sides know the version; `with_offer`: whether the claims use the negotiated
    /// layout.
    Agreed { version: u8, with_offer: bool },
    /// Responder: the initiator's offer shares no version with ours; message 2 says so.
    NoneInCommon { theirs: Versions },
}

impl Negotiation {
    pub(super) fn with_offer(&self) -> bool {
        match *self {
            Negotiation::Pending { offered } => offered,
            Negotiation::Agreed { with_offer, .. } => with_offer,
            Negotiation::NoneInCommon { .. } => true,
        }
    }
}

/// The responder reads the initiator's first message: an offer, or nothing from a node of
/// version 2.
pub(super) fn answer_offer(ours: &Versions, payload: &[u8]) -> Result<Negotiation, NetError> {
    if payload.is_empty() {
        return match ours.contains(version::PRE_NEGOTIATION) {
            true => Ok(Negotiation::Agreed {
                version: version::PRE_NEGOTIATION,
                with_offer: false,
            }),
            // A node of version 2 cannot be told why; the log says it here.
            false => Err(NetError::Version(version::mismatch_advice(
                ours,
                &Versions::PRE_NEGOTIATION,
            ))),
        };
    }
    // With a network key on one side only, the other reads its authentication tag as data.
    let theirs = Versions::decode_offer(payload).ok_or_else(|| {
        NetError::Authentication(
            "peer failed the handshake (its first message is no version offer): wrong \
             network key, different octodb version, or not an octodb node"
                .into(),
        )
    })?;
    Ok(match ours.choose(&theirs) {
        Some(version) => Negotiation::Agreed {
            version,
            with_offer: true,
        },
        None => Negotiation::NoneInCommon { theirs },
    })
}

/// The initiator reads the version the responder chose (0: none in common).
pub(super) fn agreed_by_responder(
    ours: &Versions,
    chosen: u8,
    theirs: Versions,
) -> Result<Negotiation, NetError> {
    if chosen == 0 {
        return Err(NetError::Version(version::mismatch_advice(ours, &theirs)));
    }
    if !ours.contains(chosen) || !theirs.contains(chosen) {
        return Err(NetError::Malformed(format!(
            "the peer chose protocol version {chosen}, outside this node's {ours} or its own \
             {theirs}"
        )));
    }
    Ok(Negotiation::Agreed {
        version: chosen,
        with_offer: true,
    })
}

/// What a side says of itself inside the Noise handshake.
#[derive(Debug)]
pub(super) struct Claim {
    pub(super) identity: [u8; 32],
    /// The initiator's request for the responder's signature (message 3 only).
    pub(super) wants_proof: Option<bool>,
    /// The responder's answer to an offer: the version chosen (0: none) and its own range.
    pub(super) answer: Option<(u8, Versions)>,
}

/// Which claim a message holds.
#[derive(Clone, Copy)]
pub(super) struct ClaimLayout {
    /// The handshake began with an offer (claim version 3), or not (2).
    pub(super) with_offer: bool,
    pub(super) from_initiator: bool,
}

impl ClaimLayout {
    fn version(&self) -> u8 {
        match self.with_offer {
            true => CLAIM_NEGOTIATED,
            false => CLAIM_PRE_NEGOTIATION,
        }
    }

    fn len(&self) -> usize {
        match (self.from_initiator, self.with_offer) {
            (true, _) => CLAIM_LEN + 1,
            (false, true) => CLAIM_LEN + 3,
            (false, false) => CLAIM_LEN,
        }
    }

    /// `[claim version][Ed25519 identity: 32]`, then `[wants the responder's signature: 0|1]`
    /// from the initiator, or `[chosen][oldest][newest]` from a responder answering an offer.
    pub(super) fn encode(
        &self,
        identity: [u8; 32],
        wants_proof: Option<bool>,
        answer: Option<(&Negotiation, &Versions)>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.push(self.version());
        out.extend_from_slice(&identity);
        out.extend(wants_proof.map(u8::from));
        if let (false, true, Some((negotiation, ours))) =
            (self.from_initiator, self.with_offer, answer)
        {
            let chosen = match *negotiation {
                Negotiation::Agreed { version, .. } => version,
                _ => 0,
            };
            out.extend_from_slice(&[chosen, ours.oldest, ours.newest]);
        }
        out
    }

    pub(super) fn decode(&self, bytes: &[u8]) -> Result<Claim, NetError> {
        let expected = self.len();
        if bytes.first().is_some_and(|&v| v != self.version()) {
            return Err(NetError::Authentication(format!(
                "peer uses handshake claim version {}, where this handshake needs {}: the \
                 peer is not an octodb node of a compatible version; upgrade the older node",
                bytes[0],
                self.version()
            )));
        }
        if bytes.len() != expected || (self.from_initiator && bytes[CLAIM_LEN] > 1) {
            return Err(NetError::Malformed(format!(
                "identity claim of {} bytes, expected {expected}: the peer is not an octodb \
                 node of this version",
                bytes.len()
            )));
        }
        let mut identity = [0u8; 32];
        identity.copy_from_slice(&bytes[1..CLAIM_LEN]);
        let answer = match (self.from_initiator, self.with_offer) {
            (false, true) => {
                let (chosen, oldest, newest) =
                    (bytes[CLAIM_LEN], bytes[CLAIM_LEN + 1], bytes[CLAIM_LEN + 2]);
                if oldest == 0 || oldest > newest {
                    return Err(NetError::Malformed(format!(
                        "the peer claims protocol versions {oldest} to {newest}"
                    )));
                }
                Some((chosen, Versions { oldest, newest }))
            }
            _ => None,
        };
        Ok(Claim {
            identity,
            wants_proof: self.from_initiator.then(|| bytes[CLAIM_LEN] == 1),
            answer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeKeys;

    #[test]
    fn claims_are_checked_for_version_and_length() {
        let id = NodeKeys::generate().public_key().0;
        let initiator = ClaimLayout {
            with_offer: true,
            from_initiator: true,
        };
        let responder = ClaimLayout {
            from_initiator: false,
            ..initiator
        };
        let claim = initiator.encode(id, Some(true), None);
        let decoded = initiator.decode(&claim).unwrap();
        assert_eq!((decoded.identity, decoded.wants_proof), (id, Some(true)));
        let agreed = Negotiation::Agreed {
            version: 3,
            with_offer: true,
        };
        let ours = Versions::default();
        let answer = responder.encode(id, None, Some((&agreed, &ours)));
        assert_eq!(responder.decode(&answer).unwrap().answer, Some((3, ours)));
        assert!(initiator.decode(&answer).is_err());
        assert!(responder.decode(&claim).is_err());
        let mut bad_flag = claim.clone();
        bad_flag[CLAIM_LEN] = 2;
        assert!(initiator.decode(&bad_flag).is_err());
        let mut bad_range = answer.clone();
        bad_range[CLAIM_LEN + 1] = u8::MAX;
        assert!(responder.decode(&bad_range).is_err());
        let mut old = claim;
        old[0] = 1;
        let err = initiator.decode(&old).unwrap_err();
        assert!(err.to_string().contains("upgrade"), "{err}");
        let legacy = ClaimLayout {
            with_offer: false,
            from_initiator: false,
        };
        assert_eq!(legacy.encode(id, None, None).len(), CLAIM_LEN);
        assert!(legacy.decode(&answer).is_err());
    }

    proptest::proptest! {
        #![proptest_config(crate::test_support::fuzz_config())]
        #[test]
        fn any_claim_bytes_decode_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
            with_offer in proptest::prelude::any::<bool>(),
            from_initiator in proptest::prelude::any::<bool>(),
        ) {
            let layout = ClaimLayout { with_offer, from_initiator };
            if let Ok(claim) = layout.decode(&bytes) {
                proptest::prop_assert_eq!(bytes.len(), layout.len());
                if let Some((_, theirs)) = claim.answer {
                    proptest::prop_assert!(theirs.oldest >= 1 && theirs.oldest <= theirs.newest);
                }
            }
            let _ = answer_offer(&Versions::default(), &bytes);
        }
    }
}
