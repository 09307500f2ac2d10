//! The bytes of every message and stored record, frozen. Devices in the field run older
//! builds for weeks: a change that alters an encoding breaks them. Such a change needs a new
//! protocol version and message encoding (src/net/version.rs, src/net/message.rs), the old
//! one still served, and its own fixtures beside these.
//!
//! A fixture is made once with `OCTODB_WRITE_FIXTURES=1 cargo test --test wire_fixtures`
//! (only missing files are written); after that it never changes.

use octodb::auth::Action;
use octodb::changes::{ChangeSet, Op, TableHeader};
use octodb::log::outbox::RowImage;
use octodb::log::{EntryBody, LogEntry};
use octodb::net::{AuthAsk, Message, PrimaryMember};
use octodb::{Role, Value};
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire/encoding-2")
}

/// Compares `bytes` with the frozen fixture `name`.
fn frozen(name: &str, bytes: &[u8]) {
    let path = fixture_dir().join(format!("{name}.hex"));
    let encoded = hex::encode(bytes);
    match std::fs::read_to_string(&path) {
        Ok(fixture) => assert_eq!(
            fixture.trim(),
            encoded,
            "the encoding of {name} changed: devices and primaries of older builds can no \
             longer read it. Give the change a new protocol version and message encoding, keep \
             the old one served, and freeze the new one in fixtures of its own"
        ),
        Err(_) if std::env::var_os("OCTODB_WRITE_FIXTURES").is_some() => {
            std::fs::create_dir_all(fixture_dir()).unwrap();
            std::fs::write(&path, format!("{encoded}\n")).unwrap();
        }
        Err(e) => panic!(
            "missing fixture {} ({e}); make it with OCTODB_WRITE_FIXTURES=1",
            path.display()
        ),
    }
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path).unwrap();
    hex::decode(text.trim()).unwrap()
}

fn sample_changes() -> ChangeSet {
    ChangeSet {
        tables: vec![TableHeader {
            name: "todos".into(),
            columns: vec!["id".into(), "title".into(), "row_owner".into()],
        }],
        ops: vec![
            Op::Insert {
                table: 0,
                rowid: (7 << 32) | 1,
                values: vec![
                    Value::Integer((7 << 32) | 1),
                    Value::Text("buy milk".into()),
                    Value::Integer(3),
                ],
            },
            Op::Update {
                table: 0,
                rowid: 5,
                changed: 0b10,
                values: vec![Value::Integer(5), Value::Real(1.5), Value::Integer(3)],
            },
            Op::Upsert {
                table: 0,
                rowid: 6,
                values: vec![
                    Value::Null,
                    Value::Blob(vec![0, 255]),
                    Value::Text("*".into()),
                ],
            },
            Op::Delete {
                table: 0,
                rowid: 8,
                owner: Value::Integer(3),
            },
            Op::Ddl {
                sql: "CREATE TABLE t(a, row_owner)".into(),
                private: false,
            },
        ],
    }
}

fn sample_messages() -> Vec<(&'static str, Message)> {
    let entry = |seq, body| LogEntry {
        seq,
        origin_node: 7,
        origin_txn: 42,
        body,
        origin_digest: None,
    };
    vec![
        (
            "hello",
            Message::Hello {
                role: Role::Secondary,
                last_seq: 12,
                info: r#"{"platform":"linux"}"#.into(),
                auth: Some(AuthAsk {
                    action: Action::UserSignup,
                    data: r#"{"name":"ann"}"#.into(),
                }),
            },
        ),
        (
            "hello_login_primary",
            Message::Hello {
                role: Role::Primary,
                last_seq: 0,
                info: "{}".into(),
                auth: Some(AuthAsk {
                    action: Action::UserLogin,
                    data: "x".into(),
                }),
            },
        ),
        (
            "auth_required",
            Message::AuthRequired {
                reason: "sign up".into(),
            },
        ),
        ("auth_pending", Message::AuthPending),
        (
            "welcome",
            Message::Welcome {
                node_id: 7,
                user_id: 3,
                node_type: Role::Secondary,
                last_decided_txn: 41,
            },
        ),
        (
            "refused",
            Message::Refused {
                reason: "no".into(),
            },
        ),
        (
            "snapshot_begin",
            Message::SnapshotBegin {
                seq: 100,
                schema: vec!["CREATE TABLE todos(id INTEGER PRIMARY KEY, title, row_owner)".into()],
                total_rows: 2,
            },
        ),
        (
            "snapshot_rows",
            Message::SnapshotRows {
                table: "todos".into(),
                columns: vec!["id".into(), "title".into(), "row_owner".into()],
                rows: vec![(
                    1,
                    vec![
                        Value::Integer(1),
                        Value::Text("a".into()),
                        Value::Integer(3),
                    ],
                )],
            },
        ),
        ("snapshot_end", Message::SnapshotEnd { seq: 100 }),
        (
            "entries",
            Message::Entries {
                entries: vec![
                    entry(101, EntryBody::Changes(sample_changes())),
                    entry(
                        102,
                        EntryBody::Rejected {
                            reason: "row exists".into(),
                        },
                    ),
                ],
                up_to: 103,
            },
        ),
        (
            "txns",
            Message::Txns {
                txns: vec![(42, sample_changes())],
            },
        ),
        // Protocol 4.
        ("heartbeat", Message::Heartbeat),
        // Protocol 5.
        (
            "primary_members",
            Message::PrimaryMembers {
                members: vec![PrimaryMember {
                    addr: "10.0.0.2:1234".into(),
                    public_key: "ab".repeat(32),
                }],
            },
        ),
        (
            "not_leader",
            Message::NotLeader {
                leader: Some("10.0.0.3:1234".into()),
                reason: "follows".into(),
            },
        ),
        // Protocol 6.
        (
            "open_channel",
            Message::OpenChannel {
                service: "broker".into(),
            },
        ),
        (
            "channel_open",
            Message::ChannelOpen {
                node_id: 7,
                user_id: 3,
            },
        ),
        // Protocol 7.
        (
            "log_history",
            Message::LogHistory {
                epochs: vec![(0x1234_5678_9abc, 1), (77, 4096)],
                resync: Some("behind".into()),
            },
        ),
        (
            "own_digests",
            Message::OwnDigests {
                txns: vec![(42, [0xab; 16]), (43, [7; 16])],
            },
        ),
        (
            "copied_file",
            Message::CopiedFile {
                txn: 42,
                reason: "copy".into(),
            },
        ),
        // Protocol 9.
        (
            "session_ticket",
            Message::SessionTicket {
                ticket: vec![1, 2, 3],
                secret: [0x5a; 32],
                lifetime_s: 86_400,
            },
        ),
        // Protocol 10.
        ("caught_up", Message::CaughtUp { up_to: 1234 }),
        // Protocol 11.
        (
            "snapshot_total",
            Message::SnapshotTotal {
                total_rows: 1_000_000,
            },
        ),
    ]
}

#[test]
fn every_message_keeps_its_encoding() {
    for (name, message) in sample_messages() {
        frozen(name, &message.encode());
        assert_eq!(
            Message::decode(&fixture_bytes(name)).unwrap(),
            message,
            "{name}: the frozen bytes no longer decode to the same message"
        );
    }
}

#[test]
fn stored_records_keep_their_encoding() {
    // Outbox rows and log entries live in the file across upgrades of the app.
    let changes = sample_changes();
    frozen("stored_change_set", &changes.encode());
    assert_eq!(
        ChangeSet::decode(&fixture_bytes("stored_change_set")).unwrap(),
        changes
    );
    let image = RowImage {
        columns: vec!["id".into(), "row_owner".into()],
        values: vec![Value::Integer(1), Value::Null],
    };
    frozen("stored_row_image", &image.encode());
    assert_eq!(
        RowImage::decode(&fixture_bytes("stored_row_image")).unwrap(),
        image
    );
}

#[test]
fn every_message_kind_has_a_fixture() {
    // A new kind of message must be frozen too (add it to sample_messages).
    let kinds: std::collections::BTreeSet<&str> =
        sample_messages().iter().map(|(_, m)| m.kind()).collect();
    assert_eq!(kinds.len(), 21, "message kinds with fixtures: {kinds:?}");
}

/// The entries of the primaries' Raft log: stored in every primary's file and sent between
/// primaries, which a rolling upgrade runs at different builds for a while.
#[test]
fn raft_proposals_keep_their_encoding() {
    use octodb::cluster::{Decided, Proposal};
    let decided = || Decided {
        origin_node: 7,
        origin_txn: 42,
        body: EntryBody::Changes(sample_changes()),
    };
    let samples = [
        ("proposal_decided", Proposal::Decided(vec![decided()])),
        (
            "proposal_in_log",
            Proposal::InLog {
                first_seq: 10,
                last_seq: 12,
            },
        ),
        (
            "proposal_batch",
            Proposal::Batch {
                id: 5,
                txns: vec![decided()],
            },
        ),
        (
            "proposal_rows",
            Proposal::Rows {
                id: 6,
                nodes: vec![vec![Value::Integer(1), Value::Text("key".into())]],
                users: vec![vec![Value::Integer(3), Value::Real(1.5)]],
            },
        ),
        (
            "proposal_rows_written",
            Proposal::RowsWritten {
                nodes: Vec::new(),
                users: vec![vec![Value::Integer(2)]],
            },
        ),
        (
            "proposal_decided_checked",
            Proposal::DecidedChecked {
                txns: vec![decided(), decided()],
                digests: vec![Some([9; 16]), None],
            },
        ),
    ];
    for (name, proposal) in samples {
        frozen(name, &postcard::to_allocvec(&proposal).unwrap());
        let read: Proposal = postcard::from_bytes(&fixture_bytes(name)).unwrap();
        assert_eq!(read, proposal, "{name}");
    }
}
