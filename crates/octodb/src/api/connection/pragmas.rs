//! octodb's own PRAGMAs (`sync_status`, `nodes`, `user_signup`, `authorize_*`,
//! `authorizer_service`, `remove_primary`, `txn_status`, `pending_txns`), answered by the
//! connection without SQLite.

use super::{Connection, Outcome};
use crate::api::pragma::Pragma;
use crate::api::rows::Rows;
use crate::error::{Error, Result};
use crate::node::NodeRecord;
use crate::uri::{NetworkKey, NodeConfig};
use crate::value::Value;
use crate::TxnStatus;
use std::sync::Arc;

impl Connection {
    pub(super) fn pragma(&self, p: Pragma) -> Result<Outcome> {
        let rows = match p.name.as_str() {
            "sync_status" => {
                let json = serde_json::to_string(&self.sync_status()?)
                    .map_err(|e| Error::rule(format!("cannot encode sync_status: {e}")))?;
                Rows {
                    columns: pragma_columns(&p),
                    rows: vec![vec![Value::Text(json)]],
                }
            }
            "nodes" => Rows {
                columns: pragma_columns(&p),
                rows: self.nodes()?.into_iter().map(node_row).collect(),
            },
            // Devices: where a transaction stands, by the id `last_txn_id` gave.
            "txn_status" => {
                let id = p.value.as_deref().and_then(|v| v.parse::<u64>().ok());
                let id = id.ok_or_else(|| Error::Pragma {
                    name: p.name.clone(),
                    reason: "give the transaction's id: PRAGMA txn_status(42)".into(),
                })?;
                Rows {
                    columns: pragma_columns(&p),
                    rows: vec![txn_row(id, self.txn_status(id)?)],
                }
            }
            "pending_txns" => Rows {
                columns: pragma_columns(&p),
                rows: (self.pending_txns()?.into_iter())
                    .map(|id| vec![Value::Integer(id as i64)])
                    .collect(),
            },
            "user_signup" | "user_login" => {
                let action = crate::auth::Action::from_name(&p.name)
                    .unwrap_or(crate::auth::Action::UserSignup);
                let data = p.value.ok_or_else(|| Error::Pragma {
                    name: p.name.clone(),
                    reason: "give the sign-up / login data: PRAGMA user_signup='...'".into(),
                })?;
                self.node(action.as_str())?.request_auth(action, data)?;
                Rows::default()
            }
            // The admin console's address (`http://HOST:PORT/`) and token; NULL without `admin=`.
            "admin_address" | "admin_token" => {
                if p.value.is_some() {
                    return Err(Error::Pragma {
                        name: p.name.clone(),
                        reason: "it is read-only: the console's address and token are set on \
                                 the node's URI (admin=HOST:PORT; admin_token=, \
                                 admin_token_env= or admin_token_file=), from its next start"
                            .into(),
                    });
                }
                let node = self.node(&format!("PRAGMA {}", p.name))?;
                let value = match p.name.as_str() {
                    "admin_address" => node.admin_address().map(|a| format!("http://{a}/")),
                    _ => match node.admin_address() {
                        Some(_) => node.admin_token()?,
                        None => None,
                    },
                };
                Rows {
                    columns: pragma_columns(&p),
                    rows: vec![vec![value.map_or(Value::Null, Value::Text)]],
                }
            }
            // A device whose file was found a copy of another device's: a new key.
            "new_identity" => Rows {
                columns: pragma_columns(&p),
                rows: vec![vec![Value::Text(
                    self.node("PRAGMA new_identity")?.new_identity()?,
                )]],
            },
            "rekey" | "hexrekey" => {
                self.rekey(&p)?;
                Rows::default()
            }
            "authorize_user" | "authorize_node" | "preauthorize_user" | "preauthorize_node" => {
                let (key, decision) = crate::auth::parse_authorize(&p.name, p.value.as_deref())?;
                let preapproval = p.name.starts_with("pre");
                self.node(&p.name)?.authorize(key, decision, preapproval)?;
                Rows::default()
            }
            "remove_primary" => {
                let id = p
                    .value
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| Error::Pragma {
                        name: p.name.clone(),
                        reason: "give the primary's node id (PRAGMA sync_status lists the \
                                 members): PRAGMA remove_primary=3"
                            .into(),
                    })?;
                self.node("removing a primary")?.remove_primary(id)?;
                Rows::default()
            }
            // Read back: the service deciding now, NULL without one.
            "authorizer_service" if p.value.is_none() => Rows {
                columns: pragma_columns(&p),
                rows: vec![vec![self
                    .node("PRAGMA authorizer_service")?
                    .authorizer_service()
                    .map_or(Value::Null, |a| Value::Text(format!("tcp://{a}")))]],
            },
            _ => {
                let addr = service_address(p.value.as_deref()).map_err(|reason| Error::Pragma {
                    name: p.name.clone(),
                    reason,
                })?;
                let exec = service_executor(&self.node("an authorization service")?.shared);
                self.node("an authorization service")?
                    .set_authorizer_service(addr, exec)?;
                Rows::default()
            }
        };
        Ok(Outcome {
            rows: Some(rows),
            changes: 0,
        })
    }
}

impl Connection {
    /// `PRAGMA rekey='NEW PASSPHRASE'` / `PRAGMA hexrekey='64 HEX DIGITS'` on a node: the file
    /// is re-encrypted with the new key. Every other connection on the file holds the old key,
    /// so this one must be the app's only connection to the node.
    fn rekey(&self, p: &Pragma) -> Result<()> {
        let bad = |reason: &str| Error::Pragma {
            name: p.name.clone(),
            reason: reason.to_string(),
        };
        let node = self.node(&format!("PRAGMA {}", p.name))?;
        let value = p
            .value
            .as_deref()
            .ok_or_else(|| bad("give the new key: PRAGMA rekey='NEW PASSPHRASE'"))?;
        let key = match p.name.as_str() {
            "hexrekey" => match hex::decode(value) {
                Ok(bytes) if bytes.len() == 32 => NetworkKey::Bytes(bytes),
                _ => {
                    return Err(bad(
                        "give 64 hex digits (a 256-bit key), e.g. from `openssl rand -hex 32`",
                    ))
                }
            },
            _ if value.is_empty() => {
                return Err(bad(
                    "the new key is empty; to decrypt a copy use `octodb decrypt`",
                ))
            }
            _ => NetworkKey::Passphrase(value.to_string()),
        };
        if !self.conn.is_autocommit() {
            return Err(bad("run it outside a transaction"));
        }
        if Arc::strong_count(node) > 1 {
            return Err(bad(
                "close the app's other connections to this node first: each holds the file's old key",
            ));
        }
        node.rekey(&self.conn, key)
    }
}

/// `tcp://host:port` → `host:port`, or why not.
fn service_address(value: Option<&str>) -> std::result::Result<String, String> {
    let v =
        value.ok_or("give the service's address: PRAGMA authorizer_service='tcp://host:port'")?;
    crate::auth::service::address(v)
}

/// Runs an authorization service's `execute` / `find` for the primary of `shared`.
pub(crate) fn service_executor(shared: &crate::node::Shared) -> crate::auth::service::Executor {
    let cfg = shared.cfg.clone();
    let file_key = shared.file_key.clone();
    Arc::new(
        move |pubkey: &str, execute: &[String], find: Option<&str>| {
            // The file's key as it is now: a PRAGMA rekey may have changed it.
            let cfg = match file_key.get() {
                Some(key) => NodeConfig {
                    key: Some(key),
                    ..cfg.clone()
                },
                None => cfg.clone(),
            };
            run_service_sql(&cfg, pubkey, execute, find)
        },
    )
}

/// The `execute` / `find` of an authorization service's answer, run on the primary's database
/// through a connection of its own (so writes replicate like any other).
fn run_service_sql(
    cfg: &NodeConfig,
    pubkey: &str,
    execute: &[String],
    find: Option<&str>,
) -> Result<Option<i64>> {
    let conn = Connection::open_config(cfg.clone())?;
    // A key waiting for approval has no node id yet: one that the service's SQL names gets
    // it now, as the node it is about to approve; likewise its user (`@user_id`), so that
    // the service's accounts and the engine's users are one numbering.
    let names = |name: &str| {
        execute.iter().any(|s| s.contains(name)) || find.is_some_and(|s| s.contains(name))
    };
    let node_id = match names("@node_id") {
        true => conn.node("@node_id")?.reserve_node_id(pubkey.to_string())?,
        false => 0,
    };
    let user_id = match names("@user_id") {
        true => conn.node("@user_id")?.reserve_user_id(pubkey.to_string())?,
        false => 0,
    };
    let with_id = |sql: &str| {
        sql.replace("@node_id", &node_id.to_string())
            .replace("@user_id", &user_id.to_string())
    };
    let mut user = None;
    for sql in execute {
        conn.execute(&with_id(sql), [])?;
        user = Some(conn.last_insert_rowid());
    }
    if let Some(sql) = find {
        let rows = conn.query(&with_id(sql), [])?;
        let col = rows
            .columns
            .iter()
            .position(|c| c == "user_id")
            .unwrap_or(0);
        user = rows.iter().next().map(|r| r.get::<i64>(col)).transpose()?;
    }
    Ok(user)
}

pub(super) fn pragma_columns(p: &Pragma) -> Vec<String> {
    let names: &[&str] = match p.name.as_str() {
        "sync_status" => &["sync_status"],
        "admin_address" => &["admin_address"],
        "admin_token" => &["admin_token"],
        "authorizer_service" if p.value.is_none() => &["authorizer_service"],
        "new_identity" => &["public_key"],
        "txn_status" => &["txn_id", "status", "reason", "decided_at"],
        "pending_txns" => &["txn_id"],
        "nodes" => &[
            "public_key",
            "node_id",
            "node_type",
            "user_id",
            "address",
            "connected",
            "auth_state",
            "last_seen",
            "cluster_role",
            "raft_lag",
        ],
        _ => &[],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// A transaction's status as a row: its id, `pending` / `accepted` / `rejected` / `unknown`,
/// and for a rejection the reason and when (Unix time).
fn txn_row(id: u64, status: TxnStatus) -> Vec<Value> {
    let word = |w: &str| Value::Text(w.into());
    let (status, reason, at) = match status {
        TxnStatus::Pending => (word("pending"), Value::Null, Value::Null),
        TxnStatus::Accepted => (word("accepted"), Value::Null, Value::Null),
        TxnStatus::Rejected { reason, at } => {
            (word("rejected"), Value::Text(reason), Value::Real(at))
        }
        TxnStatus::Unknown => (word("unknown"), Value::Null, Value::Null),
    };
    vec![Value::Integer(id as i64), status, reason, at]
}

fn node_row(n: NodeRecord) -> Vec<Value> {
    vec![
        Value::Text(n.public_key),
        Value::Integer(n.node_id as i64),
        Value::Text(n.node_type),
        n.user_id.map_or(Value::Null, Value::Integer),
        n.address.map_or(Value::Null, Value::Text),
        Value::Integer(n.connected as i64),
        Value::Text(n.auth_state),
        n.last_seen.map_or(Value::Null, Value::Real),
        n.cluster_role.map_or(Value::Null, Value::Text),
        n.raft_lag.map_or(Value::Null, |l| Value::Integer(l as i64)),
    ]
}
