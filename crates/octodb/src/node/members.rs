//! A primary's record of the nodes that joined or asked to (`_octo_nodes`, `_octo_users`):
//! lookups, requests waiting for the backend, and the backend's decisions.

use super::restored_ids;
use super::writer::unix_now;
use crate::auth::{Action, Decision};
use crate::crypto::PublicKey;
use crate::error::{Error, Result};
use crate::uri::Role;
use rusqlite::{Connection, OptionalExtension};

/// Keys that asked and were never approved (waiting, refused, or told to sign up) kept at most;
/// the oldest are dropped beyond this, so a flood of requests from fresh keys cannot grow the
/// file without bound. They hold negative row ids: node ids (1, 2, ...) go to approved nodes
/// only, and are never handed out twice.
const MAX_UNAPPROVED: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registered {
    pub node_id: u32,
    pub user_id: i64,
}

/// What a primary knows of a public key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub node_id: u32,
    pub user_id: Option<i64>,
    pub node_type: String,
    pub auth_state: String,
}

/// The outcome of a decision, as the waiting session needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Admission {
    Approved { registered: Registered, role: Role },
    Rejected(String),
}

/// Primaries: approved nodes as last read from the file, so that a returning device is let in
/// without a read on a blocking thread. Every change of a node's record goes through the writer,
/// which forgets that node here first.
#[derive(Default)]
pub(crate) struct ApprovedCache {
    map: std::sync::Mutex<Approved>,
}

#[derive(Default)]
struct Approved {
    members: std::collections::HashMap<String, Member>,
    /// Bumped by every `forget`: a read that started before a change must not be remembered
    /// after it (a revoked node would stay approved here).
    generation: u64,
}

/// Nodes remembered at most; beyond, the cache starts over (lookups fall back to the file).
const MAX_CACHED: usize = 100_000;

impl ApprovedCache {
    /// The cached record, or the generation to pass to `remember` after reading the file.
    pub fn get(&self, pubkey: &str) -> Result<Member, u64> {
        let a = self.lock();
        a.members.get(pubkey).cloned().ok_or(a.generation)
    }

    /// Keep `m`, read from the file when the cache was at `generation`, unless anything was
    /// forgotten since.
    pub fn remember(&self, pubkey: &str, m: Member, generation: u64) {
        let mut a = self.lock();
        if a.generation != generation {
            return;
        }
        if a.members.len() >= MAX_CACHED {
            a.members.clear();
        }
        a.members.insert(pubkey.to_string(), m);
    }

    pub fn forget(&self, pubkey: &str) {
        let mut a = self.lock();
        a.members.remove(pubkey);
        a.generation += 1;
    }

    /// Forgets every node: a primary that starts to lead was a follower, whose nodes changed
    /// in its file by its cluster's state machine, not by its writer.
    pub fn forget_all(&self) {
        let mut a = self.lock();
        a.members.clear();
        a.generation += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Approved> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the file says of `pubkey`; a key never approved has node id 0 here.
pub(crate) fn lookup(c: &Connection, pubkey: &str) -> Result<Option<Member>> {
    Ok(c.prepare_cached(
        "SELECT node_id, user_id, node_type, auth_state FROM _octo_nodes WHERE pubkey = ?1",
    )?
    .query_row([pubkey], |r| {
        Ok(Member {
            node_id: node_id_of(r.get(0)?),
            user_id: r.get(1)?,
            node_type: r.get(2)?,
            auth_state: r.get(3)?,
        })
    })
    .optional()?)
}

/// The node id a row stands for: 0 for a key never approved (a negative row id).
pub(crate) fn node_id_of(row_id: i64) -> u32 {
    u32::try_from(row_id).unwrap_or(0)
}

fn row_id(c: &Connection, pubkey: &str) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT node_id FROM _octo_nodes WHERE pubkey = ?1")?
            .query_row([pubkey], |r| r.get(0))
            .optional()?,
    )
}

fn next_node_id(c: &Connection) -> Result<i64> {
    // Node 1 is the primary itself.
    Ok(c.query_row(
        "SELECT max(coalesce(max(node_id), 1), 1) + 1 FROM _octo_nodes",
        [],
        |r| r.get(0),
    )?)
}

/// A row id for a key that is not approved: below every other.
fn next_unapproved_row(c: &Connection) -> Result<i64> {
    Ok(c.query_row(
        "SELECT min(coalesce(min(node_id), 0), 0) - 1 FROM _octo_nodes",
        [],
        |r| r.get(0),
    )?)
}

/// A search of the negative ids only (their range of the primary key, or the partial index
/// `_octo_nodes_unapproved`): a network of many approved nodes must not make each new request
/// scan them all.
const COUNT_UNAPPROVED_SQL: &str = "SELECT count(*) FROM _octo_nodes WHERE node_id < 0";

/// Makes room for one more unapproved key, dropping the oldest beyond `max`.
fn prune_unapproved(c: &Connection, max: i64) -> Result<()> {
    let held: i64 = c
        .prepare_cached(COUNT_UNAPPROVED_SQL)?
        .query_row([], |r| r.get(0))?;
    if held >= max {
        tracing::warn!(
            held,
            "more than {max} keys asked to join and were never approved: the oldest are \
             forgotten (a request that still waits must be made again)"
        );
        c.execute(
            "DELETE FROM _octo_nodes WHERE node_id IN
               (SELECT node_id FROM _octo_nodes WHERE node_id < 0 ORDER BY last_seen LIMIT ?1)",
            [held - max + 1],
        )?;
    }
    Ok(())
}

fn new_user(c: &Connection) -> Result<i64> {
    let user_id: i64 = c.query_row(
        "SELECT coalesce(max(user_id), 0) + 1 FROM _octo_users",
        [],
        |r| r.get(0),
    )?;
    c.prepare_cached("INSERT INTO _octo_users(user_id, created_at) VALUES (?1, ?2)")?
        .execute(rusqlite::params![user_id, unix_now()])?;
    Ok(user_id)
}

/// The key's row, created (as `state`) if the key is new. Returns its row id: its node id once
/// approved, a negative id until then.
fn ensure_node(
    c: &Connection,
    pubkey: &str,
    state: &str,
    address: Option<&str>,
    info: Option<&str>,
) -> Result<i64> {
    if let Some(row) = row_id(c, pubkey)? {
        c.prepare_cached(
            "UPDATE _octo_nodes SET address = coalesce(?2, address), info = coalesce(?3, info), last_seen = ?4
             WHERE node_id = ?1",
        )?
        .execute(rusqlite::params![row, address, info, unix_now()])?;
        return Ok(row);
    }
    let row = if state == "approved" {
        restored_ids::claimed_node_id(c, info)?.map_or_else(|| next_node_id(c), Ok)?
    } else {
        prune_unapproved(c, MAX_UNAPPROVED)?;
        next_unapproved_row(c)?
    };
    c.prepare_cached(
        "INSERT INTO _octo_nodes(node_id, pubkey, node_type, auth_state, address, info, created_at, last_seen)
         VALUES (?1, ?2, 'secondary', ?3, ?4, ?5, ?6, ?6)",
    )?
    .execute(rusqlite::params![row, pubkey, state, address, info, unix_now()])?;
    Ok(row)
}

/// The node id of `pubkey`, given now if it waits for approval; 0 for an unknown key.
pub(crate) fn reserve_node_id(c: &Connection, pubkey: &str) -> Result<u32> {
    match row_id(c, pubkey)? {
        Some(row) => give_node_id(c, row),
        None => Ok(0),
    }
}

/// The user `pubkey` becomes if it is approved as a device (`@user_id` in an authorization
/// service's SQL): the user it was approved as before, else a new one, made now so that
/// the engine's and the console's next new users come after it. A service numbering its
/// accounts by it shares one numbering with them (two numberings gave a second person the
/// first one's rows).
pub(crate) fn reserve_user_id(c: &Connection, pubkey: &str) -> Result<i64> {
    let Some(row) = row_id(c, pubkey)? else {
        return Err(Error::rule(format!(
            "octodb: key {pubkey} has not asked to join this primary: there is no user to \
             reserve for it"
        )));
    };
    match lookup(c, pubkey)?.and_then(|m| m.user_id) {
        Some(user_id) => Ok(user_id),
        None => user_for(c, row),
    }
}

/// A primary that rejoins its cluster as a new member (its file diverged, or was restored):
/// its key's record moves to a new node id, never used before.
pub(crate) fn renumber(c: &Connection, pubkey: &str) -> Result<u32> {
    let node_id = next_node_id(c)?;
    c.prepare_cached("UPDATE _octo_nodes SET node_id = ?2 WHERE pubkey = ?1")?
        .execute(rusqlite::params![pubkey, node_id])?;
    Ok(node_id_of(node_id))
}

/// The node information a key's row keeps (what it told in its Hello, `restored_ids`).
fn info_of(c: &Connection, row: i64) -> Result<Option<String>> {
    Ok(
        c.prepare_cached("SELECT info FROM _octo_nodes WHERE node_id = ?1")?
            .query_row([row], |r| r.get(0))
            .optional()?
            .flatten(),
    )
}

/// A new user for the key of row `row`: the one a newer copy of this primary's file
/// approved it as, when it says so and may keep it (`restored_ids`), else the next.
fn user_for(c: &Connection, row: i64) -> Result<i64> {
    let info = info_of(c, row)?;
    match restored_ids::claimed_user_id(c, row, info.as_deref())? {
        Some(user_id) => Ok(user_id),
        None => new_user(c),
    }
}

/// Once approved, a key gets its node id (it had a negative row id while it waited).
fn give_node_id(c: &Connection, row: i64) -> Result<u32> {
    if row > 0 {
        return Ok(node_id_of(row));
    }
    let info = info_of(c, row)?;
    let node_id = match restored_ids::claimed_node_id(c, info.as_deref())? {
        Some(claimed) => claimed,
        None => next_node_id(c)?,
    };
    c.prepare_cached("UPDATE _octo_nodes SET node_id = ?2 WHERE node_id = ?1")?
        .execute(rusqlite::params![row, node_id])?;
    Ok(node_id_of(node_id))
}

/// No authorization: find or create the node; each new device is a new user.
/// A key this primary does not know that says it was approved under ids a newer copy of this
/// file handed out is let in under them only if they were reserved (`restored_ids`).
pub(crate) fn register_open(
    c: &Connection,
    pubkey: PublicKey,
    address: &str,
    info: &str,
) -> Result<Admission> {
    let key = pubkey.to_hex();
    if let Some(claim) = restored_ids::claim_in(info) {
        let approved = lookup(c, &key)?.is_some_and(|m| m.auth_state == "approved");
        if !approved {
            if let Err(reason) = restored_ids::judge(c, claim)? {
                return Ok(Admission::Rejected(reason));
            }
        }
    }
    let row = ensure_node(c, &key, "approved", Some(address), Some(info))?;
    let node_id = give_node_id(c, row)?;
    if row != i64::from(node_id) {
        c.prepare_cached("UPDATE _octo_nodes SET auth_state = 'approved' WHERE node_id = ?1")?
            .execute([node_id])?;
    }
    let user_id = match lookup(c, &key)?.and_then(|m| m.user_id) {
        Some(u) => u,
        None => {
            let u = user_for(c, i64::from(node_id))?;
            c.prepare_cached("UPDATE _octo_nodes SET user_id = ?2 WHERE node_id = ?1")?
                .execute(rusqlite::params![node_id, u])?;
            tracing::info!(node_id, user_id = u, pubkey = %key, "new node joined");
            u
        }
    };
    Ok(Admission::Approved {
        registered: Registered { node_id, user_id },
        role: Role::Secondary,
    })
}

/// When and from where a node was last connected.
#[derive(Debug)]
pub(crate) struct Sighting {
    pub node_id: u32,
    pub address: String,
    pub at: f64,
}

/// Keep the time and address of sessions that ended (`PRAGMA nodes`' `last_seen`).
pub(crate) fn record_sightings(c: &Connection, seen: &[Sighting]) -> Result<()> {
    let mut stmt = c.prepare_cached(
        "UPDATE _octo_nodes SET last_seen = max(coalesce(last_seen, 0), ?2), address = ?3
         WHERE node_id = ?1",
    )?;
    for s in seen {
        stmt.execute(rusqlite::params![s.node_id, s.at, s.address])?;
    }
    Ok(())
}

/// Keep a key that connected without a request while the primaries require one: an admin
/// who approves it by hand (`PRAGMA authorize_user`) finds it, shown as `required`.
pub(crate) fn record_presence(
    c: &Connection,
    pubkey: &str,
    address: &str,
    info: &str,
) -> Result<()> {
    ensure_node(c, pubkey, "required", Some(address), Some(info)).map(drop)
}

/// Keep a request that waits for the backend, visible in `PRAGMA nodes`.
pub(crate) fn record_request(
    c: &Connection,
    pubkey: &str,
    address: &str,
    info: &str,
    action: Action,
    data: Option<&str>,
) -> Result<()> {
    let node_id = ensure_node(c, pubkey, "pending", Some(address), Some(info))?;
    let request = serde_json::json!({ "action": action.as_str(), "data": data }).to_string();
    c.prepare_cached(
        "UPDATE _octo_nodes SET request = ?2,
           auth_state = CASE auth_state WHEN 'approved' THEN 'approved' ELSE 'pending' END
         WHERE node_id = ?1",
    )?
    .execute(rusqlite::params![node_id, request])?;
    Ok(())
}

/// How many requests wait for the backend's decision.
pub(crate) fn pending_requests(c: &Connection) -> Result<usize> {
    let n: i64 = c
        .prepare_cached("SELECT count(*) FROM _octo_nodes WHERE auth_state = 'pending'")?
        .query_row([], |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// What a key waiting for a decision asked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Asked {
    /// `{"action": ..., "data": ...}` as stored; None for a key that only presented itself.
    pub request: Option<String>,
    /// It is a primary asking to join the cluster (its record's type is a device's until it
    /// is approved).
    pub as_primary: bool,
}

/// What each key waiting for a decision asked, by key.
pub(crate) fn requests_of_waiting(
    c: &Connection,
) -> Result<std::collections::HashMap<String, Asked>> {
    let mut stmt = c.prepare_cached(
        "SELECT pubkey, request,
                coalesce(CASE WHEN json_valid(info) THEN json_extract(info, '$.node_type') END
                         = 'primary', 0)
         FROM _octo_nodes WHERE auth_state IN ('pending', 'required')",
    )?;
    let rows = stmt.query_map([], |r| {
        let asked = Asked {
            request: r.get(1)?,
            as_primary: r.get(2)?,
        };
        Ok((r.get(0)?, asked))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Which keys a decision may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// Only a key some node presented (`PRAGMA authorize_*`: a mistyped key is an error, not a
    /// new record).
    Presented,
    /// Any key: approved before its node ever connects (`PRAGMA preauthorize_*`).
    Any,
    /// Only a key whose request still waits: a callback's answer, which may come from several
    /// primaries' processes (each request is decided once: the first decision stands).
    Pending,
}

/// Apply the backend's decision on `pubkey`.
pub(crate) fn decide(
    c: &Connection,
    pubkey: &str,
    decision: &Decision,
    known: Known,
) -> Result<Admission> {
    if known == Known::Presented && row_id(c, pubkey)?.is_none() {
        return Err(Error::rule(format!(
            "no node has presented the key {pubkey}: check it against PRAGMA nodes (which lists \
             the keys that connected or asked). To approve a key before its node ever \
             connects, use PRAGMA preauthorize_user / preauthorize_node with the same value"
        )));
    }
    if known == Known::Pending {
        match lookup(c, pubkey)? {
            Some(m) if m.auth_state == "pending" => {}
            Some(m) if m.auth_state == "approved" => {
                tracing::info!(
                    pubkey,
                    "a later answer on a request decided already is ignored: the first \
                     decision stands"
                );
                let role = match m.node_type.as_str() {
                    "primary" => Role::Primary,
                    _ => Role::Secondary,
                };
                let registered = Registered {
                    node_id: m.node_id,
                    user_id: m.user_id.unwrap_or(0),
                };
                return Ok(Admission::Approved { registered, role });
            }
            _ => {
                return Err(Error::rule(format!(
                    "no request of key {pubkey} waits for a decision (it was decided already)"
                )))
            }
        }
    }
    if lookup(c, pubkey)?.is_some_and(|m| m.auth_state == restored_ids::RESERVED_STATE) {
        return Err(Error::rule(format!(
            "`{pubkey}` is not a node's key: it holds the ids a restore reserved"
        )));
    }
    let row = ensure_node(c, pubkey, "pending", None, None)?;
    let current = lookup(c, pubkey)?.and_then(|m| m.user_id);
    let (role, user_id) = match decision {
        Decision::Pending => return Err(Error::rule("a pending request is not a decision")),
        Decision::Reject(reason) => {
            c.prepare_cached(
                "UPDATE _octo_nodes SET auth_state = 'rejected', request = ?2 WHERE node_id = ?1",
            )?
            .execute(rusqlite::params![row, reason])?;
            tracing::info!(node_id = node_id_of(row), pubkey, %reason, "node rejected");
            return Ok(Admission::Rejected(reason.clone()));
        }
        // A device keeps the user it was first approved as, even after a revocation: its
        // file holds that user's rows, and as another user it would keep them and receive
        // the other's too.
        Decision::User(0) => (
            Role::Secondary,
            Some(current.map_or_else(|| user_for(c, row), Ok)?),
        ),
        Decision::User(u) if current.is_some_and(|had| had != *u) => {
            return Err(Error::rule(format!(
                "key {pubkey} is a device of user {had}: its file holds that user's rows, so \
                 it can be approved as user {had} only. For user {u}, the app makes a new \
                 device (a new file, a new key)",
                had = current.unwrap_or_default()
            )))
        }
        Decision::User(u) => {
            c.prepare_cached(
                "INSERT OR IGNORE INTO _octo_users(user_id, created_at) VALUES (?1, ?2)",
            )?
            .execute(rusqlite::params![u, unix_now()])?;
            (Role::Secondary, Some(*u))
        }
        // Node-level authorization: one node per user.
        Decision::Node(Role::Secondary) => (
            Role::Secondary,
            Some(current.map_or_else(|| user_for(c, row), Ok)?),
        ),
        Decision::Node(Role::Primary) => (Role::Primary, None),
    };
    // A device a restored primary does not know (`restored_ids`) holds its user's rows: it
    // may come back as that user only (as another, it would keep the first one's rows and
    // miss its own).
    let claim = info_of(c, row)?.as_deref().and_then(restored_ids::claim_in);
    if let (Some(claim), Some(user_id)) = (claim.filter(|_| row < 0), user_id) {
        if user_id != claim.user_id {
            let reason = format!(
                "this device holds the rows of user {}, the user it was approved as: it may log \
                 in again as that user only (the backend approved it as user {user_id})",
                claim.user_id
            );
            tracing::info!(pubkey, %reason, "node refused");
            return Ok(Admission::Rejected(reason));
        }
    }
    let node_id = give_node_id(c, row)?;
    c.prepare_cached(
        "UPDATE _octo_nodes SET auth_state = 'approved', node_type = ?2, user_id = ?3, request = NULL
         WHERE node_id = ?1",
    )?
    .execute(rusqlite::params![node_id, role.as_str(), user_id])?;
    tracing::info!(
        node_id,
        user_id,
        pubkey,
        node_type = role.as_str(),
        "node approved"
    );
    Ok(Admission::Approved {
        registered: Registered {
            node_id,
            user_id: user_id.unwrap_or(0),
        },
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unapproved_keys_are_counted_without_scanning_all_nodes() {
        let c = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&c).unwrap();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {COUNT_UNAPPROVED_SQL}"))
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        // A search (of the index or of the negative ids' range), never a scan of all nodes.
        assert!(
            plan.iter().all(|step| step.starts_with("SEARCH")),
            "{plan:?}"
        );
        record_request(&c, "k1", "127.0.0.1:1", "{}", Action::UserSignup, None).unwrap();
        let held: i64 = c.query_row(COUNT_UNAPPROVED_SQL, [], |r| r.get(0)).unwrap();
        assert_eq!(held, 1);
    }

    fn file() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&c).unwrap();
        c
    }

    #[test]
    fn node_ids_go_to_approved_keys_only() {
        let c = file();
        for k in ["a", "b", "c"] {
            record_request(&c, k, "127.0.0.1:1", "{}", Action::UserSignup, None).unwrap();
            let refused = decide(&c, k, &Decision::Reject("no".into()), Known::Presented);
            assert!(matches!(refused, Ok(Admission::Rejected(_))));
            assert_eq!(lookup(&c, k).unwrap().unwrap().node_id, 0);
        }
        record_request(&c, "d", "127.0.0.1:1", "{}", Action::UserSignup, None).unwrap();
        let Admission::Approved { registered, .. } =
            decide(&c, "d", &Decision::User(0), Known::Presented).unwrap()
        else {
            panic!("approved");
        };
        assert_eq!(
            registered.node_id, 2,
            "the first node id after the primary's"
        );
        assert_eq!(lookup(&c, "d").unwrap().unwrap().node_id, 2);
    }

    #[test]
    fn a_device_keeps_its_first_user_even_after_a_revocation() {
        let c = file();
        record_request(&c, "d", "127.0.0.1:1", "{}", Action::UserSignup, None).unwrap();
        let user = |a: Admission| match a {
            Admission::Approved { registered, .. } => registered.user_id,
            Admission::Rejected(r) => panic!("rejected: {r}"),
        };
        let first = user(decide(&c, "d", &Decision::User(0), Known::Presented).unwrap());
        let err = decide(&c, "d", &Decision::User(first + 1), Known::Presented).unwrap_err();
        assert!(err.to_string().contains("new device"), "{err}");
        decide(
            &c,
            "d",
            &Decision::Reject("revoked".into()),
            Known::Presented,
        )
        .unwrap();
        assert!(decide(&c, "d", &Decision::User(first + 1), Known::Presented).is_err());
        let again = user(decide(&c, "d", &Decision::User(0), Known::Presented).unwrap());
        assert_eq!(again, first, "a new user for it means its own");
    }

    #[test]
    fn unapproved_keys_are_capped_oldest_first_and_approved_ones_never_dropped() {
        let c = file();
        record_request(&c, "approved", "a", "{}", Action::UserSignup, None).unwrap();
        decide(&c, "approved", &Decision::User(0), Known::Presented).unwrap();
        for i in 0..5 {
            ensure_node(&c, &format!("k{i}"), "pending", None, None).unwrap();
            c.execute(
                "UPDATE _octo_nodes SET last_seen = ?2 WHERE pubkey = ?1",
                rusqlite::params![format!("k{i}"), i],
            )
            .unwrap();
        }
        prune_unapproved(&c, 3).unwrap();
        let kept: Vec<String> = c
            .prepare("SELECT pubkey FROM _octo_nodes ORDER BY pubkey")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(kept, vec!["approved", "k3", "k4"]);
    }

    #[test]
    fn a_decision_by_hand_needs_a_key_that_was_presented_unless_it_is_a_pre_approval() {
        let c = file();
        let unknown = "ab".repeat(32);
        let err = decide(&c, &unknown, &Decision::User(0), Known::Presented).unwrap_err();
        assert!(err.to_string().contains("preauthorize_user"), "{err}");
        assert!(lookup(&c, &unknown).unwrap().is_none(), "nothing recorded");
        assert!(decide(&c, &unknown, &Decision::User(0), Known::Any).is_ok());
        record_presence(&c, "seen", "127.0.0.1:1", "{}").unwrap();
        assert_eq!(lookup(&c, "seen").unwrap().unwrap().auth_state, "required");
        assert!(decide(&c, "seen", &Decision::User(0), Known::Presented).is_ok());
    }
}
