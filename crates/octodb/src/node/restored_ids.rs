//! Node and user ids that a primary restored from an older copy of its file handed out and
//! no longer remembers.
//!
//! A primary restored from a backup forgets the devices approved after the backup was taken.
//! Left alone, it would hand their node and user ids out again: two devices under one
//! identity, each reading the other's rows, and the returning device locked out. So a
//! restored primary's file reserves, above the highest ids it holds, a range of [`GAP`] node
//! ids and as many user ids, which it never hands out ([`reserve`]). A device that comes back
//! with ids from such a range, under a key the primary does not know (its Hello's information
//! says `approved_as`), is approved again as the network's authorization decides, and keeps
//! those ids, with its rows and pending work ([`claimed_node_id`], [`claimed_user_id`]).
//!
//! A claim outside every reserved range, or of a node id in use, is refused ([`judge`]): a key
//! cannot take another node's identity by naming it.
//!
//! The reservation is a row in `_octo_nodes` and one in `_octo_users` holding the top of each
//! range, so that it reaches every primary of the cluster as the rest of the authorization
//! state does (in snapshots and whole-row proposals), and the ids handed out after it start
//! above it without any other change.

use crate::error::Result;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// How many node ids, and how many user ids, a restore reserves for the devices approved
/// after the backup. Node ids stay below 2^31 (they are the high half of row ids): this
/// allows some two thousand restores.
pub(crate) const GAP: i64 = 1_000_000;

/// `_octo_nodes.auth_state` of a reservation's row: never a key, never listed, never approved.
pub(crate) const RESERVED_STATE: &str = "reserved";

/// The ids one restore reserved: node ids `nodes.0..nodes.1` and user ids `users.0..users.1`
/// (the tops are the reservation's own rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedIds {
    pub nodes: (i64, i64),
    pub users: (i64, i64),
}

/// The ids a device says it was approved under (its Hello's `approved_as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    pub node_id: u32,
    pub user_id: i64,
}

/// How a restored primary's request to log in again begins: the device takes it for that
/// (and lets its app log in again) rather than for its approval taken back.
pub(crate) const LOG_IN_AGAIN: &str =
    "this primary was restored from a copy of its file older than this device's approval";

/// The key of the claim in a device's Hello information.
pub(crate) const CLAIM_FIELD: &str = "approved_as";

/// The claim in a node's information (JSON), if it makes one.
pub(crate) fn claim_in(info: &str) -> Option<Claim> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    let claim: Claim = serde_json::from_value(v.get(CLAIM_FIELD)?.clone()).ok()?;
    (claim.node_id > 1).then_some(claim)
}

/// In a restored primary's file (the node stopped): reserves the next [`GAP`] node ids and
/// user ids. Returns them; None when nothing was handed out since the last reservation,
/// which then still stands (marking a file twice reserves once).
pub(crate) fn reserve(c: &Connection) -> Result<Option<ReservedIds>> {
    let (top_node, top_is_reserved): (i64, bool) = c.query_row(
        "SELECT coalesce(max(node_id), 1), coalesce(
             (SELECT auth_state = ?1 FROM _octo_nodes ORDER BY node_id DESC LIMIT 1), 0)
         FROM _octo_nodes",
        [RESERVED_STATE],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let top_user: i64 = c.query_row(
        "SELECT coalesce(max(user_id), 0) FROM _octo_users",
        [],
        |r| r.get(0),
    )?;
    if top_is_reserved && reservations(c)?.iter().any(|r| r.users.1 == top_user) {
        return Ok(None);
    }
    let ids = ReservedIds {
        nodes: (top_node.max(1) + 1, top_node.max(1) + GAP),
        users: (top_user + 1, top_user + GAP),
    };
    let now = super::writer::unix_now();
    c.execute(
        "INSERT INTO _octo_nodes(node_id, pubkey, node_type, auth_state, info, created_at)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
        rusqlite::params![
            ids.nodes.1,
            format!("{RESERVED_STATE}:{}", ids.nodes.1),
            RESERVED_STATE,
            serde_json::to_string(&ids).map_err(|e| crate::error::Error::rule(e.to_string()))?,
            now
        ],
    )?;
    c.execute(
        "INSERT INTO _octo_users(user_id, created_at) VALUES (?1, ?2)",
        rusqlite::params![ids.users.1, now],
    )?;
    tracing::info!(
        node_ids = ?ids.nodes,
        user_ids = ?ids.users,
        "ids reserved for the devices approved after this copy was taken"
    );
    Ok(Some(ids))
}

/// Every reservation in the file, oldest first.
fn reservations(c: &Connection) -> Result<Vec<ReservedIds>> {
    let mut stmt = c.prepare_cached(
        "SELECT info FROM _octo_nodes WHERE auth_state = ?1 AND node_id > 0 ORDER BY node_id",
    )?;
    let infos = stmt
        .query_map([RESERVED_STATE], |r| r.get::<_, Option<String>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(infos
        .into_iter()
        .flatten()
        .filter_map(|info| serde_json::from_str(&info).ok())
        .collect())
}

fn within((from, to): (i64, i64), id: i64) -> bool {
    (from..to).contains(&id)
}

/// Whether `claim`, made under a key this primary has not approved, can be honoured: Err
/// with the reason to tell the device when it cannot.
pub(crate) fn judge(c: &Connection, claim: Claim) -> Result<std::result::Result<(), String>> {
    let Claim { node_id, user_id } = claim;
    let holder: Option<String> = c
        .prepare_cached("SELECT pubkey FROM _octo_nodes WHERE node_id = ?1")?
        .query_row([node_id], |r| r.get(0))
        .optional()?;
    if let Some(holder) = holder {
        return Ok(Err(format!(
            "node {node_id}, which this device was approved as, is another key's on this \
             primary ({holder}): a device cannot take another node's identity. (A primary \
             restored from a copy older than the device's approval, and started without \
             `octodb mark-restored`, hands such ids out again.) The device keeps its data and \
             pending work"
        )));
    }
    let in_range = reservations(c)?
        .iter()
        .any(|r| within(r.nodes, i64::from(node_id)));
    if !in_range {
        return Ok(Err(format!(
            "this primary does not know this device (node {node_id}, user {user_id}): it was \
             probably restored from a copy of its file older than the device's approval, and \
             started without `octodb mark-restored`, which keeps the ids of such devices for \
             them. To let it back in: stop the primary, run `octodb mark-restored` on its \
             file and start it again. The device keeps its data and pending work"
        )));
    }
    Ok(Ok(()))
}

/// The node id to give the key whose information is `info` on its approval: its claim's, if
/// it can be honoured ([`judge`]).
pub(crate) fn claimed_node_id(c: &Connection, info: Option<&str>) -> Result<Option<i64>> {
    let Some(claim) = info.and_then(claim_in) else {
        return Ok(None);
    };
    Ok(judge(c, claim)?.is_ok().then_some(i64::from(claim.node_id)))
}

/// The user id to give node `node_id` (information `info`) where it would get a new user:
/// its claim's, if that user id is in a reserved range and no other node holds it.
pub(crate) fn claimed_user_id(
    c: &Connection,
    node_id: i64,
    info: Option<&str>,
) -> Result<Option<i64>> {
    let Some(claim) = info.and_then(claim_in) else {
        return Ok(None);
    };
    let in_range = reservations(c)?
        .iter()
        .any(|r| within(r.users, claim.user_id));
    if !in_range {
        return Ok(None);
    }
    let held: bool = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM _octo_nodes WHERE user_id = ?1 AND node_id <> ?2)",
        )?
        .query_row(rusqlite::params![claim.user_id, node_id], |r| r.get(0))?;
    if held {
        return Ok(None);
    }
    c.prepare_cached("INSERT OR IGNORE INTO _octo_users(user_id, created_at) VALUES (?1, ?2)")?
        .execute(rusqlite::params![claim.user_id, super::writer::unix_now()])?;
    Ok(Some(claim.user_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&c).unwrap();
        c
    }

    fn add_node(c: &Connection, node_id: i64, user_id: i64) {
        c.execute(
            "INSERT INTO _octo_nodes(node_id, pubkey, node_type, auth_state, user_id)
             VALUES (?1, ?2, 'secondary', 'approved', ?3)",
            rusqlite::params![node_id, format!("key{node_id}"), user_id],
        )
        .unwrap();
        c.execute(
            "INSERT OR IGNORE INTO _octo_users(user_id) VALUES (?1)",
            [user_id],
        )
        .unwrap();
    }

    fn info(node_id: u32, user_id: i64) -> String {
        serde_json::json!({ CLAIM_FIELD: { "node_id": node_id, "user_id": user_id } }).to_string()
    }

    #[test]
    fn a_restore_reserves_ids_above_those_held_once_until_more_are_handed_out() {
        let c = file();
        add_node(&c, 2, 1);
        add_node(&c, 3, 2);
        let ids = reserve(&c).unwrap().unwrap();
        assert_eq!(ids.nodes, (4, 3 + GAP));
        assert_eq!(ids.users, (3, 2 + GAP));
        assert_eq!(reserve(&c).unwrap(), None, "marking twice reserves once");
        add_node(&c, 4 + GAP, 3 + GAP);
        let again = reserve(&c).unwrap().unwrap();
        assert_eq!(again.nodes.0, 5 + GAP);
    }

    #[test]
    fn only_a_free_node_id_in_a_reserved_range_is_honoured() {
        let c = file();
        add_node(&c, 2, 1);
        let claim = |node_id| Claim {
            node_id,
            user_id: 2,
        };
        assert!(
            judge(&c, claim(3)).unwrap().is_err(),
            "no restore: nothing reserved"
        );
        reserve(&c).unwrap();
        assert!(
            judge(&c, claim(2)).unwrap().is_err(),
            "below the range: another key's"
        );
        assert_eq!(judge(&c, claim(3)).unwrap(), Ok(()));
        add_node(&c, 3, 5);
        let taken = judge(&c, claim(3)).unwrap().unwrap_err();
        assert!(taken.contains("another key's"), "{taken}");
        let top = u32::try_from(2 + GAP).unwrap();
        assert!(
            judge(&c, claim(top)).unwrap().is_err(),
            "the reservation's own row"
        );
        assert_eq!(claimed_node_id(&c, Some(&info(4, 2))).unwrap(), Some(4));
        assert_eq!(claimed_node_id(&c, Some("{}")).unwrap(), None);
    }

    #[test]
    fn a_reservation_is_no_key_a_decision_can_approve() {
        use crate::auth::Decision;
        use crate::node::members::{decide, Known};
        let c = file();
        let ids = reserve(&c).unwrap().unwrap();
        let name = format!("{RESERVED_STATE}:{}", ids.nodes.1);
        let refused = decide(&c, &name, &Decision::User(0), Known::Presented).unwrap_err();
        assert!(
            refused.to_string().contains("not a node's key"),
            "{refused}"
        );
    }

    #[test]
    fn a_claimed_user_id_is_honoured_only_in_a_reserved_range_and_unheld() {
        let c = file();
        add_node(&c, 2, 1);
        reserve(&c).unwrap();
        assert_eq!(
            claimed_user_id(&c, 4, Some(&info(4, 1))).unwrap(),
            None,
            "user 1 is node 2's"
        );
        assert_eq!(claimed_user_id(&c, 4, Some(&info(4, 7))).unwrap(), Some(7));
        add_node(&c, 5, 8);
        assert_eq!(claimed_user_id(&c, 4, Some(&info(4, 8))).unwrap(), None);
    }
}
