//! Every decoder of bytes that come from the network or from a file, fed hostile input: random
//! bytes, and valid encodings cut, extended or with bytes changed. Each must answer with an
//! error or a value, never a panic, a hang or unbounded memory. (The decoders inside the
//! crate, such as the handshake's offer and claims and the cluster's frames and snapshots,
//! have property tests of their own next to them.)
//!
//! CI runs a bounded number of cases; a longer hunt:
//! `OCTODB_FUZZ_CASES=200000 cargo test --release --test fuzz_decoders`.

use octodb::auth::service::{parse_answer, read_frame, ExecuteFn};
use octodb::changes::{ChangeSet, Op, TableHeader};
use octodb::log::outbox::{decode_change, RowImage};
use octodb::log::{EntryBody, LogEntry};
use octodb::net::Message;
use octodb::Value;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("OCTODB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Real),
        ".{0,12}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Blob),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let values = || proptest::collection::vec(value(), 0..4);
    prop_oneof![
        (any::<u32>(), any::<i64>(), values()).prop_map(|(table, rowid, values)| Op::Insert {
            table,
            rowid,
            values
        }),
        (any::<u32>(), any::<i64>(), any::<u64>(), values()).prop_map(
            |(table, rowid, changed, values)| Op::Update {
                table,
                rowid,
                changed,
                values
            }
        ),
        (any::<u32>(), any::<i64>(), values()).prop_map(|(table, rowid, values)| Op::Upsert {
            table,
            rowid,
            values
        }),
        (any::<u32>(), any::<i64>(), value()).prop_map(|(table, rowid, owner)| Op::Delete {
            table,
            rowid,
            owner
        }),
        (".{0,20}", any::<bool>()).prop_map(|(sql, private)| Op::Ddl { sql, private }),
    ]
}

fn change_set() -> impl Strategy<Value = ChangeSet> {
    let header = (".{0,8}", proptest::collection::vec(".{0,6}", 0..4))
        .prop_map(|(name, columns)| TableHeader { name, columns });
    (
        proptest::collection::vec(header, 0..3),
        proptest::collection::vec(op(), 0..5),
    )
        .prop_map(|(tables, ops)| ChangeSet { tables, ops })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), ".{0,10}").prop_map(|(last_seq, info)| Message::Hello {
            role: octodb::Role::Secondary,
            last_seq,
            info,
            auth: None,
        }),
        (any::<u32>(), any::<i64>(), any::<u64>()).prop_map(|(node_id, user_id, txn)| {
            Message::Welcome {
                node_id,
                user_id,
                node_type: octodb::Role::Secondary,
                last_decided_txn: txn,
            }
        }),
        ".{0,10}".prop_map(|reason| Message::Refused { reason }),
        (any::<u64>(), change_set()).prop_map(|(seq, cs)| Message::Entries {
            entries: vec![LogEntry {
                seq,
                origin_node: 3,
                origin_txn: seq,
                body: EntryBody::Changes(cs),
                origin_digest: None,
            }],
            up_to: seq,
        }),
        proptest::collection::vec((any::<u64>(), change_set()), 0..3)
            .prop_map(|txns| Message::Txns { txns }),
        Just(Message::Heartbeat),
        proptest::collection::vec((any::<u64>(), any::<[u8; 16]>()), 0..4)
            .prop_map(|txns| Message::OwnDigests { txns }),
        (any::<u64>(), ".{0,10}").prop_map(|(txn, reason)| Message::CopiedFile { txn, reason }),
    ]
}

/// A valid encoding, damaged: cut short, extended, or with some bytes changed.
fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    prop_oneof![
        (0..=len).prop_map({
            let v = valid.clone();
            move |cut| v[..cut].to_vec()
        }),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map({
            let v = valid.clone();
            move |tail| [v.clone(), tail].concat()
        }),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6).prop_map(move |edits| {
            let mut v = valid.clone();
            if !v.is_empty() {
                for (at, byte) in edits {
                    let n = v.len();
                    v[at % n] = byte;
                }
            }
            v
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn messages_from_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Message::decode(&bytes);
        let mut versioned = vec![octodb::net::message::MESSAGE_ENCODING];
        versioned.extend_from_slice(&bytes);
        let _ = Message::decode(&versioned);
    }

    #[test]
    fn messages_round_trip_and_survive_damage(
        (m, bytes) in message().prop_flat_map(|m| {
            let valid = m.encode();
            (Just(m), damaged(valid))
        })
    ) {
        prop_assert_eq!(Message::decode(&m.encode()).ok(), Some(m));
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn stored_change_sets_survive_damage(
        (cs, bytes) in change_set().prop_flat_map(|cs| {
            let valid = cs.encode();
            (Just(cs), damaged(valid))
        })
    ) {
        prop_assert_eq!(ChangeSet::decode(&cs.encode()).ok(), Some(cs));
        let _ = ChangeSet::decode(&bytes);
        let _ = decode_change(&bytes);
    }

    #[test]
    fn stored_row_images_from_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = RowImage::decode(&bytes);
    }

    #[test]
    fn authorizer_frames_from_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut reader: &[u8] = &bytes;
        // Whatever the bytes claim as length, reading stops at the data there is.
        let _ = rt.block_on(read_frame(&mut reader));
    }

    #[test]
    fn authorizer_answers_of_any_shape(text in ".{0,64}", user in any::<i64>(), pick in 0..6usize) {
        let never: &ExecuteFn = &|_, _, _| Ok(None);
        let key = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
        let candidates = [
            serde_json::json!({"pubkey": key, "user_id": user}),
            serde_json::json!({"pubkey": key, "node_type": text}),
            serde_json::json!({"pubkey": key, "execute": [text], "user_id": user}),
            serde_json::json!({"pubkey": text, "user_id": user}),
            serde_json::json!({"pubkey": key, "find": user}),
            serde_json::json!([text, user]),
        ];
        let _ = parse_answer(&candidates[pick], never);
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
            let _ = parse_answer(&json, never);
        }
    }
}

#[test]
fn deeply_nested_authorizer_json_is_refused_not_overflowed() {
    let deep = "[".repeat(100_000);
    let mut frame = (deep.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(deep.as_bytes());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut reader: &[u8] = &frame;
    assert!(rt.block_on(read_frame(&mut reader)).is_err());
}

#[test]
fn a_huge_claimed_length_allocates_nothing_big() {
    // A Txns message claiming 2^60 transactions, with no data behind the claim.
    let mut bytes = vec![octodb::net::message::MESSAGE_ENCODING, 9];
    let mut n: u64 = 1 << 60;
    while n >= 0x80 {
        bytes.push((n as u8) | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
    assert!(Message::decode(&bytes).is_err());
    assert!(ChangeSet::decode(&bytes[1..]).is_err());
}
