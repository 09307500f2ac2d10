//! Which protocol version two nodes speak, agreed in the handshake.
//!
//! Phones update their apps over weeks, so a primary must keep serving devices of older
//! versions. The initiator offers the range of versions it speaks in the payload of the Noise
//! handshake's first message (`[OFFER_TAG][oldest][newest]`); the responder answers with the
//! version chosen (the newest both speak) and its own range, inside its encrypted claim. Both
//! messages are covered by the handshake hash, so a man in the middle cannot downgrade the
//! choice without failing the handshake.
//!
//! Version 2 predates negotiation: its initiators send an empty first message, and its
//! responders refuse a non-empty one. A responder therefore takes an empty first message as
//! "speaks 2 only", and a node whose newest version is 2 makes no offer.
//!
//! Policy (README, "Upgrades"): upgrade the primaries first. A primary serves its own version
//! and at least the one before; a device newer than every version its primary speaks says so
//! in `sync_error`.

use std::fmt;

/// Versions: 2 (signatures only when asked), 3 (negotiation in the handshake; messages
/// encoded as in 2), 4 (heartbeats: `Message::Heartbeat`, sent only to peers of 4 or newer),
/// 5 (a primary tells its devices the cluster's primaries: `Message::PrimaryMembers`),
/// 6 (service channels: `Message::OpenChannel` instead of `Hello`, for the object broker),
/// 7 (the log's epochs: `Message::LogHistory`; a device names its position's epoch in its
/// Hello's information, and re-downloads from a primary that is behind it), 8 (copied device
/// files: `Message::OwnDigests` beside the entries that decide a device's transactions, and
/// `Message::CopiedFile`), 9 (session tickets: `Message::SessionTicket` after a device's
/// admission, and the resumed handshake that takes one, `net::resume`), 10 (a primary tells a
/// device when it has caught up: `Message::CaughtUp`), 11 (a download's row count follows its
/// first rows instead of holding them up: `Message::SnapshotTotal`), 12 (a follower asks its
/// leader how far to catch up before its app writes or changes the schema: the cluster's
/// `ReadIndex` request; a leader says which transactions it could not take now, to be sent
/// again: `ForwardOutcome::Unavailable`), 13 (a download brings the primaries' renames of
/// tables and columns: `Message::Renames`).
pub const NEWEST: u8 = 13;
/// The first version whose devices take the primaries' renames with a download
/// (`Message::Renames`).
pub const DOWNLOAD_RENAMES: u8 = 13;
/// The first version whose leaders answer a follower's `ReadIndex` (the position up to which
/// the cluster has committed).
pub const READ_INDEX: u8 = 12;
/// The first version whose followers tell a transaction their leader could not take now
/// (`ForwardOutcome::Unavailable`) from one it refused.
pub const FORWARD_UNAVAILABLE: u8 = 12;
/// The first version whose devices take a download's row count after its first rows
/// (`Message::SnapshotTotal`; `SnapshotBegin` then says 0).
pub const DOWNLOAD_TOTAL_LATER: u8 = 11;
/// The first version whose primaries tell a device that it holds what they held when it
/// connected (`Message::CaughtUp`).
pub const CAUGHT_UP: u8 = 10;
/// The first version whose primaries hand devices session tickets and take them back.
pub const SESSION_TICKETS: u8 = 9;
/// The first version whose devices check that a decision is about their own work, and hear
/// that their file is a copy of another device's.
pub const COPIED_FILES: u8 = 8;
/// The first version whose devices hear of the log's epochs and can download again.
pub const LOG_EPOCHS: u8 = 7;
/// The first version whose primaries open service channels (`Message::OpenChannel`).
pub const CHANNELS: u8 = 6;
/// The first version whose peers send heartbeats, so that silence means a dead connection.
pub const HEARTBEATS: u8 = 4;
/// The first version whose devices hear of the cluster's primaries, to fail over to them.
pub const PRIMARY_MEMBERS: u8 = 5;
/// The oldest version this build still serves.
pub const OLDEST: u8 = 2;
/// The version from before negotiation: what a peer that makes no offer speaks.
pub const PRE_NEGOTIATION: u8 = 2;

/// First byte of an offer: tells an offer from the 16-byte tag that a first message carries
/// when only one side has a network key.
const OFFER_TAG: u8 = 0xa7;
pub(super) const OFFER_LEN: usize = 3;

/// A contiguous range of protocol versions a node speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub oldest: u8,
    pub newest: u8,
}

impl Default for Versions {
    /// What this build speaks.
    fn default() -> Self {
        Versions {
            oldest: OLDEST,
            newest: NEWEST,
        }
    }
}

impl fmt::Display for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.oldest == self.newest {
            write!(f, "{}", self.oldest)
        } else {
            write!(f, "{} to {}", self.oldest, self.newest)
        }
    }
}

impl Versions {
    /// What a node from before negotiation speaks.
    pub const PRE_NEGOTIATION: Versions = Versions {
        oldest: PRE_NEGOTIATION,
        newest: PRE_NEGOTIATION,
    };

    /// Whether this node's handshake carries an offer (a node that speaks only the version
    /// from before negotiation behaves exactly as such a node did).
    pub(super) fn makes_offer(&self) -> bool {
        self.newest > PRE_NEGOTIATION
    }

    pub(super) fn encode_offer(&self) -> [u8; OFFER_LEN] {
        [OFFER_TAG, self.oldest, self.newest]
    }

    /// The range in a first message's payload; `None` when it is no offer (another network
    /// key, or not an octodb node).
    pub(super) fn decode_offer(payload: &[u8]) -> Option<Versions> {
        match *payload {
            [OFFER_TAG, oldest, newest] if oldest <= newest && oldest > 0 => {
                Some(Versions { oldest, newest })
            }
            _ => None,
        }
    }

    /// The newest version both speak.
    pub fn choose(&self, peer: &Versions) -> Option<u8> {
        let newest = self.newest.min(peer.newest);
        (newest >= self.oldest.max(peer.oldest)).then_some(newest)
    }

    pub fn contains(&self, version: u8) -> bool {
        (self.oldest..=self.newest).contains(&version)
    }
}

/// What to tell the operator when two nodes share no version: which side must be upgraded.
pub(super) fn mismatch_advice(ours: &Versions, theirs: &Versions) -> String {
    let who = if theirs.newest < ours.oldest {
        "the peer is older than anything this node speaks: upgrade the peer"
    } else {
        "the peer is newer than anything this node speaks: upgrade this node"
    };
    format!(
        "no common protocol version: the peer speaks octodb protocol {theirs}, this node \
         {ours}; {who} (primaries are upgraded before their devices)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_common_version_is_chosen() {
        let v = |oldest, newest| Versions { oldest, newest };
        assert_eq!(v(2, 3).choose(&v(2, 3)), Some(3));
        assert_eq!(v(2, 3).choose(&v(2, 2)), Some(2));
        assert_eq!(v(3, 5).choose(&v(2, 4)), Some(4));
        assert_eq!(v(3, 4).choose(&v(2, 2)), None);
        assert_eq!(v(2, 2).choose(&v(3, 4)), None);
    }

    #[test]
    fn offers_round_trip_and_anything_else_is_no_offer() {
        let ours = Versions::default();
        assert_eq!(Versions::decode_offer(&ours.encode_offer()), Some(ours));
        assert_eq!(Versions::decode_offer(&[]), None);
        assert_eq!(Versions::decode_offer(&[OFFER_TAG, 4, 3]), None);
        assert_eq!(Versions::decode_offer(&[OFFER_TAG, 0, 3]), None);
        assert_eq!(Versions::decode_offer(&[0; 16]), None);
        assert_eq!(Versions::decode_offer(&[OFFER_TAG, 2, 3, 0]), None);
        assert!(!Versions::PRE_NEGOTIATION.makes_offer());
        assert!(ours.makes_offer());
    }

    proptest::proptest! {
        #![proptest_config(crate::test_support::fuzz_config())]
        #[test]
        fn any_first_message_payload_is_an_offer_or_none(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)
        ) {
            if let Some(v) = Versions::decode_offer(&bytes) {
                proptest::prop_assert!(v.oldest >= 1 && v.oldest <= v.newest);
            }
        }
    }

    #[test]
    fn advice_names_the_side_to_upgrade() {
        let ours = Versions::default();
        let older = Versions::PRE_NEGOTIATION;
        let newer = Versions {
            oldest: NEWEST + 1,
            newest: NEWEST + 2,
        };
        assert!(mismatch_advice(
            &Versions {
                oldest: 3,
                newest: 3
            },
            &older
        )
        .contains("upgrade the peer"));
        assert!(mismatch_advice(&ours, &newer).contains("upgrade this node"));
    }
}
