//! The newest entries of a primary's log, kept in memory for the sessions that stream to
//! devices. Without it every commit would make every connected device's session read the file
//! (and decode the same entries) once: a cost that grows with the square of the devices.
//! The file stays the source of truth: a session that is further behind than this window, or
//! finds a sequence number missing, reads the log from the file instead.

use super::digest::TxnDigest;
use super::{EntryBody, LogEntry};
use crate::changes::Op;
use crate::value::Owner;
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

/// Most entries kept.
pub const MAX_ENTRIES: usize = 8192;
/// Most row operations kept over all entries, so large transactions cannot pin much memory.
const MAX_OPS: usize = 256 * 1024;

/// A log entry with who may be interested in it, worked out once for all sessions.
#[derive(Debug)]
pub struct Recorded {
    pub entry: LogEntry,
    audience: Audience,
    ops: usize,
}

#[derive(Debug, Default)]
struct Audience {
    /// A public row or schema change: every device.
    everyone: bool,
    /// The users whose rows it touches.
    users: Vec<i64>,
}

impl Recorded {
    pub fn new(entry: LogEntry) -> Recorded {
        let mut audience = Audience::default();
        let mut ops = 0;
        if let EntryBody::Changes(cs) = &entry.body {
            ops = cs.ops.len();
            for op in &cs.ops {
                // Rows of `private_` tables reach no device.
                let private_rows = op
                    .row()
                    .and_then(|(table, ..)| cs.header(table))
                    .is_some_and(|h| crate::store::schema::is_private(&h.name));
                if private_rows {
                    continue;
                }
                let owner = match op {
                    Op::Ddl { private, .. } => {
                        audience.everyone |= !private;
                        continue;
                    }
                    Op::Delete { owner, .. } => Some(Owner::of(owner)),
                    Op::Upsert { table, values, .. }
                    | Op::Insert { table, values, .. }
                    | Op::Update { table, values, .. } => cs.owner_of(*table, values),
                };
                match owner {
                    Some(Owner::Global) => audience.everyone = true,
                    Some(Owner::User(u)) if !audience.users.contains(&u) => audience.users.push(u),
                    _ => {}
                }
            }
        }
        Recorded {
            entry,
            audience,
            ops,
        }
    }

    pub fn seq(&self) -> u64 {
        self.entry.seq
    }

    /// Every device may see some of it (a public row or a schema change).
    pub fn is_for_everyone(&self) -> bool {
        self.audience.everyone
    }

    /// The users whose rows it holds.
    pub fn users(&self) -> &[i64] {
        &self.audience.users
    }

    /// What device `node` of `user` may see of this entry, or None; cheap when it sees nothing.
    pub fn for_device(&self, node: u32, user: i64) -> Option<LogEntry> {
        self.may_concern(node, user)
            .then(|| self.entry.for_device(node, user))
            .flatten()
    }

    /// Whether device `node` of `user` may see some of it (or hear its decision): false means
    /// certainly not.
    fn may_concern(&self, node: u32, user: i64) -> bool {
        self.entry.origin_node == node
            || self.audience.everyone
            || self.audience.users.contains(&user)
    }
}

/// The window of newest entries, in sequence order.
#[derive(Default)]
pub struct Recent {
    inner: RwLock<Window>,
}

#[derive(Default)]
struct Window {
    entries: VecDeque<Arc<Recorded>>,
    ops: usize,
}

impl Recent {
    /// Add committed entries; returns them as recorded. Commits of different connections may
    /// arrive slightly out of order; each is placed by its sequence number.
    pub fn push(&self, entries: impl IntoIterator<Item = LogEntry>) -> Vec<Arc<Recorded>> {
        let recorded: Vec<Arc<Recorded>> = entries
            .into_iter()
            .map(|e| Arc::new(Recorded::new(e)))
            .collect();
        let mut w = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for r in recorded.iter().cloned() {
            w.ops += r.ops;
            let at = w.entries.partition_point(|e| e.seq() < r.seq());
            if w.entries.get(at).is_some_and(|e| e.seq() == r.seq()) {
                continue;
            }
            w.entries.insert(at, r);
        }
        while w.entries.len() > MAX_ENTRIES || (w.ops > MAX_OPS && w.entries.len() > 1) {
            if let Some(old) = w.entries.pop_front() {
                w.ops -= old.ops;
            }
        }
        recorded
    }

    /// The digest recorded by the decision of device `node`'s transaction `txn`, if that
    /// decision is still here (`Some(None)`: it recorded none).
    pub fn decided_digest(&self, node: u32, txn: u64) -> Option<Option<TxnDigest>> {
        let w = self.inner.read().unwrap_or_else(|p| p.into_inner());
        w.entries
            .iter()
            .rev()
            .find(|e| e.entry.origin_node == node && e.entry.origin_txn == txn)
            .map(|e| e.entry.origin_digest)
    }

    /// Whether every entry after `after` up to `upto` is here and none concerns device `node`
    /// of `user`: a session may then move past them without copying any (what a position
    /// tick mostly finds).
    pub fn none_for(&self, after: u64, upto: u64, node: u32, user: i64) -> bool {
        let w = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let start = w.entries.partition_point(|e| e.seq() <= after);
        let mut expect = after + 1;
        for e in w.entries.range(start..) {
            if e.seq() > upto {
                break;
            }
            if e.seq() != expect || e.may_concern(node, user) {
                return false;
            }
            expect += 1;
        }
        expect > upto
    }

    /// The entries after `after`, up to `upto` and at most `limit`, if every one of them is
    /// here (sequence numbers are consecutive); None sends the caller to the file.
    pub fn read_after(&self, after: u64, upto: u64, limit: usize) -> Option<Vec<Arc<Recorded>>> {
        let w = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let start = w.entries.partition_point(|e| e.seq() <= after);
        let mut out = Vec::new();
        let mut expect = after + 1;
        for e in w.entries.range(start..) {
            if e.seq() > upto || out.len() >= limit {
                break;
            }
            if e.seq() != expect {
                return None;
            }
            out.push(e.clone());
            expect += 1;
        }
        (expect > upto || out.len() >= limit).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::ChangeSet;

    fn entry(seq: u64) -> LogEntry {
        LogEntry {
            seq,
            origin_node: 1,
            origin_txn: 0,
            body: EntryBody::Changes(ChangeSet::default()),
            origin_digest: None,
        }
    }

    #[test]
    fn serves_only_complete_ranges() {
        let r = Recent::default();
        r.push([entry(1), entry(2), entry(4)]);
        let seqs = |v: Option<Vec<Arc<Recorded>>>| {
            v.map(|v| v.iter().map(|e| e.seq()).collect::<Vec<_>>())
        };
        assert_eq!(seqs(r.read_after(0, 2, 10)), Some(vec![1, 2]));
        assert_eq!(seqs(r.read_after(0, 4, 10)), None, "3 is missing");
        r.push([entry(3)]);
        assert_eq!(seqs(r.read_after(1, 4, 10)), Some(vec![2, 3, 4]));
        assert_eq!(seqs(r.read_after(0, 4, 2)), Some(vec![1, 2]));
        assert_eq!(seqs(r.read_after(4, 4, 10)), Some(vec![]));
        assert_eq!(seqs(r.read_after(4, 5, 10)), None, "5 is not here");
    }

    #[test]
    fn none_for_is_true_only_for_a_complete_range_nobody_here_may_see() {
        let r = Recent::default();
        // Entries 1-3 come from node 1 and touch no user's rows; 4 is node 2's own.
        r.push([entry(1), entry(2), entry(3)]);
        let mut mine = entry(4);
        mine.origin_node = 2;
        r.push([mine]);
        assert!(r.none_for(0, 3, 2, 7), "nothing of 1-3 concerns node 2");
        assert!(!r.none_for(0, 4, 2, 7), "4 decides node 2's transaction");
        assert!(r.none_for(0, 4, 3, 7), "node 3 hears of none of it");
        assert!(!r.none_for(0, 5, 3, 7), "5 is not here: read the file");
        assert!(r.none_for(4, 4, 3, 7), "an empty range");
    }

    #[test]
    fn forgets_the_oldest_beyond_its_limit() {
        let r = Recent::default();
        r.push((1..=(MAX_ENTRIES as u64 + 10)).map(entry));
        assert_eq!(r.read_after(0, 5, 10).map(|v| v.len()), None);
        assert!(r.read_after(20, 30, 100).is_some());
    }
}
