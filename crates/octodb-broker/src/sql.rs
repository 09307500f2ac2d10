//! SQL tables of the primary's own database exported as classes.
//!
//! An export's objects are its rows, keyed `(export name, rowid)`. Access:
//! - `ReadOnly`: fetch, `get`, `find`, `count`; new, update and delete are refused;
//! - `ReadWrite`: also new, field updates (each with the value the client last saw: refused if
//!   the row changed meanwhile) and delete;
//! - `AttributesOnly`: fetch by reference only (no search, no writes).
//!
//! Hidden columns are never read into anything sent (replies or invalidations, which carry keys
//! only). Foreign keys to exported tables become references; the rows of exported tables that
//! point at a row become its lists (back references).
//!
//! `row_owner` applies as on the node network: a device's user sees its own rows and the
//! public ones (`'*'`), never another user's; a write on a device's behalf obeys the device's
//! rules (new rows are its user's, only its own rows change, no `'*'` rows). Primaries see and
//! write everything, as their own SQL does.
//!
//! Writes run in a transaction; a write inside another ([`SqlTables::transaction`]) runs in a
//! savepoint, so a failing inner write rolls back only its own part.

use crate::codec::{ObjectState, Value};
use crate::error::BrokerError;
use crate::key::{Key, KeyPart, ObjRef};
use crate::protocol::SearchMode;
use crate::server::{Change, Loader, Peer, Server};
use octodb::Role;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Results at most this many come whole; more come as references.
pub const WHOLE_RESULTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
    AttributesOnly,
}

#[derive(Debug, Clone)]
struct TableExport {
    name: String,
    table: String,
    /// Columns sent (hidden ones left out), in the table's order.
    columns: Vec<String>,
    access: Access,
    has_owner: bool,
    /// (reference name, column, export name of the table it points at).
    refs: Vec<(String, String, String)>,
}

/// The exported tables of one database, and the connection they are read and written with.
pub struct SqlTables {
    conn: Mutex<octodb::Connection>,
    exports: RwLock<HashMap<String, TableExport>>,
    server: Server,
    /// Savepoint depth of the transaction the current thread holds (see `transaction`).
    depth: Mutex<u32>,
    /// Held through an outermost transaction: one thread's transaction at a time on the
    /// shared connection.
    txn_turn: Mutex<()>,
}

thread_local! {
    static IN_TRANSACTION: Cell<bool> = const { Cell::new(false) };
}

fn sql_value(v: &Value, column: &str) -> Result<octodb::Value, BrokerError> {
    Ok(match v {
        Value::None => octodb::Value::Null,
        Value::Bool(b) => octodb::Value::Integer(i64::from(*b)),
        Value::Int(i) => octodb::Value::Integer(*i),
        Value::Float(x) => octodb::Value::Real(*x),
        Value::Str(s) => octodb::Value::Text(s.clone()),
        Value::Bytes(b) => octodb::Value::Blob(b.clone()),
        other => {
            return Err(BrokerError::Permission(format!(
                "column {column} takes None, bool, int, float, str or bytes, not {other}"
            )))
        }
    })
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl SqlTables {
    /// Exports tables of the database behind `conn` (a connection of its own: the broker
    /// reads and writes through it) on `server`.
    pub fn new(conn: octodb::Connection, server: &Server) -> Arc<SqlTables> {
        Arc::new(SqlTables {
            conn: Mutex::new(conn),
            exports: RwLock::new(HashMap::new()),
            server: server.clone(),
            depth: Mutex::new(0),
            txn_turn: Mutex::new(()),
        })
    }

    fn lock_conn(&self) -> std::sync::MutexGuard<'_, octodb::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exports `table` as the class `name` (also its loader's name and its keys' first part).
    pub fn export(
        self: &Arc<Self>,
        table: &str,
        name: &str,
        access: Access,
        hide: &[&str],
    ) -> Result<(), BrokerError> {
        let conn = self.lock_conn();
        let cols = conn.query(&format!("PRAGMA table_info({})", quote(table)), [])?;
        let all: Vec<String> = cols
            .iter()
            .map(|r| r.get::<String>(1))
            .collect::<Result<_, _>>()?;
        if all.is_empty() {
            return Err(BrokerError::Unknown(format!(
                "no table named `{table}` in the database: create it before exporting it"
            )));
        }
        for h in hide {
            if !all.iter().any(|c| c.eq_ignore_ascii_case(h)) {
                return Err(BrokerError::Unknown(format!(
                    "hide: table `{table}` has no column `{h}`"
                )));
            }
        }
        let columns: Vec<String> = all
            .iter()
            .filter(|c| !hide.iter().any(|h| h.eq_ignore_ascii_case(c)))
            .cloned()
            .collect();
        let has_owner = all
            .iter()
            .any(|c| c.eq_ignore_ascii_case(octodb::ROW_OWNER));
        let fks = conn.query(&format!("PRAGMA foreign_key_list({})", quote(table)), [])?;
        let mut fk_list = Vec::new();
        for r in fks.iter() {
            let to: String = r.get(2)?;
            let from: String = r.get(3)?;
            fk_list.push((from, to));
        }
        drop(conn);
        let mut exports = self.exports.write().unwrap_or_else(|p| p.into_inner());
        let refs = fk_list
            .into_iter()
            .filter(|(from, _)| columns.iter().any(|c| c.eq_ignore_ascii_case(from)))
            .filter_map(|(from, to)| {
                let target = exports
                    .values()
                    .find(|e| e.table.eq_ignore_ascii_case(&to))
                    .map(|e| e.name.clone())
                    .or_else(|| to.eq_ignore_ascii_case(table).then(|| name.to_string()))?;
                let ref_name = from.strip_suffix("_id").unwrap_or(&from).to_string();
                Some((ref_name, from, target))
            })
            .collect();
        exports.insert(
            name.to_string(),
            TableExport {
                name: name.to_string(),
                table: table.to_string(),
                columns,
                access,
                has_owner,
                refs,
            },
        );
        drop(exports);
        self.server.add_loader(name, self.clone());
        self.server.add_class(name, name);
        self.server
            .inner
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(table.to_lowercase())
            .or_default()
            .push(name.to_string());
        Ok(())
    }

    fn export_of(&self, name: &str) -> Result<TableExport, BrokerError> {
        self.exports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::Unknown(format!("no exported class `{name}`")))
    }

    /// The rows of exports pointing at export `name` (its lists): (list name, export, column).
    fn lists_of(&self, name: &str) -> Vec<(String, String, String)> {
        let exports = self.exports.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = exports
            .values()
            .flat_map(|e| {
                e.refs
                    .iter()
                    .filter(|(_, _, target)| target == name)
                    .map(|(_, col, _)| (e.name.clone(), e.name.clone(), col.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// SQL limiting rows to what `peer` may see (with its parameter), or nothing.
    fn visibility(e: &TableExport, peer: &Peer) -> Option<(String, octodb::Value)> {
        (e.has_owner && peer.role != Role::Primary).then(|| {
            (
                format!("({0} = ? OR {0} = '*')", quote(octodb::ROW_OWNER)),
                octodb::Value::Integer(peer.user_id),
            )
        })
    }

    fn rowid_of(key: &Key) -> Result<i64, BrokerError> {
        match key.parts.as_slice() {
            [KeyPart::Int(rowid)] => Ok(*rowid),
            _ => Err(BrokerError::NotFound(key.to_string())),
        }
    }

    fn state(&self, e: &TableExport, rowid: i64, values: &[octodb::Value]) -> ObjectState {
        let get = |col: &str| {
            e.columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(col))
                .and_then(|i| values.get(i))
        };
        ObjectState {
            key: ObjRef::unsigned(Key::new(&e.name, [KeyPart::Int(rowid)])),
            class: e.name.clone(),
            fields: e
                .columns
                .iter()
                .zip(values)
                .map(|(c, v)| (c.clone(), Value::from(v)))
                .collect(),
            refs: e
                .refs
                .iter()
                .map(|(name, col, target)| {
                    let r = match get(col) {
                        Some(octodb::Value::Integer(id)) => {
                            Some(ObjRef::unsigned(Key::new(target, [KeyPart::Int(*id)])))
                        }
                        _ => None,
                    };
                    (name.clone(), r)
                })
                .collect(),
            backrefs: self
                .lists_of(&e.name)
                .into_iter()
                .map(|(n, _, _)| n)
                .collect(),
            methods: Vec::new(),
        }
    }

    /// Rows of `e` matching `where_sql` (visible to `peer`), as (rowid, values).
    fn select(
        &self,
        e: &TableExport,
        peer: &Peer,
        mut conditions: Vec<String>,
        mut params: Vec<octodb::Value>,
        limit: Option<u32>,
    ) -> Result<Vec<(i64, Vec<octodb::Value>)>, BrokerError> {
        if let Some((cond, p)) = Self::visibility(e, peer) {
            conditions.push(cond);
            params.push(p);
        }
        let cols: Vec<String> = e.columns.iter().map(|c| quote(c)).collect();
        let mut sql = format!("SELECT rowid, {} FROM {}", cols.join(", "), quote(&e.table));
        if !conditions.is_empty() {
            sql += &format!(" WHERE {}", conditions.join(" AND "));
        }
        sql += " ORDER BY rowid";
        if let Some(n) = limit {
            sql += &format!(" LIMIT {n}");
        }
        let rows = self
            .lock_conn()
            .query(&sql, rusqlite::params_from_iter(params))?;
        rows.iter()
            .map(|r| {
                let values = r.values();
                let rowid = match values.first() {
                    Some(octodb::Value::Integer(i)) => *i,
                    _ => return Err(BrokerError::Internal("a row without rowid".into())),
                };
                Ok((rowid, values[1..].to_vec()))
            })
            .collect()
    }

    fn eq_conditions(
        e: &TableExport,
        eq: &[(String, Value)],
    ) -> Result<(Vec<String>, Vec<octodb::Value>), BrokerError> {
        let mut conds = Vec::new();
        let mut params = Vec::new();
        for (name, v) in eq {
            let col = e
                .columns
                .iter()
                .find(|c| c.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    BrokerError::Unknown(format!("class {} has no field `{name}`", e.name))
                })?;
            if matches!(v, Value::None) {
                conds.push(format!("{} IS NULL", quote(col)));
            } else {
                conds.push(format!("{} = ?", quote(col)));
                params.push(sql_value(v, col)?);
            }
        }
        Ok((conds, params))
    }

    fn writable(e: &TableExport) -> Result<(), BrokerError> {
        match e.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(BrokerError::Permission(format!(
                "class {} is exported read-only: new, update and delete are refused",
                e.name
            ))),
            Access::AttributesOnly => Err(BrokerError::Permission(format!(
                "class {} is exported for its attributes only",
                e.name
            ))),
        }
    }

    /// Runs `f` in a transaction: a `BEGIN IMMEDIATE ... COMMIT` at the outermost level, a
    /// savepoint inside another (on this thread), rolled back alone when `f` fails.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&SqlTables) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let nested = IN_TRANSACTION.with(Cell::get);
        if !nested {
            let _turn = self.txn_turn.lock().unwrap_or_else(|p| p.into_inner());
            self.lock_conn().execute("BEGIN IMMEDIATE", [])?;
            IN_TRANSACTION.with(|c| c.set(true));
            let result = f(self);
            IN_TRANSACTION.with(|c| c.set(false));
            let conn = self.lock_conn();
            return match result {
                Ok(v) => {
                    if let Err(e) = conn.execute("COMMIT", []) {
                        let _ = conn.execute("ROLLBACK", []);
                        return Err(e.into());
                    }
                    Ok(v)
                }
                Err(e) => {
                    let _ = conn.execute("ROLLBACK", []);
                    Err(e)
                }
            };
        }
        let name = {
            let mut depth = self.depth.lock().unwrap_or_else(|p| p.into_inner());
            *depth += 1;
            format!("octo_broker_{}", *depth)
        };
        self.lock_conn().execute(&format!("SAVEPOINT {name}"), [])?;
        let result = f(self);
        {
            let conn = self.lock_conn();
            if result.is_err() {
                conn.execute(&format!("ROLLBACK TO {name}"), [])?;
            }
            conn.execute(&format!("RELEASE {name}"), [])?;
        }
        *self.depth.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        result
    }

    /// Inserts a row into export `class` on behalf of `peer`; its key.
    pub fn insert(
        &self,
        peer: &Peer,
        class: &str,
        values: Vec<(String, Value)>,
    ) -> Result<Key, BrokerError> {
        let e = self.export_of(class)?;
        Self::writable(&e)?;
        let mut cols = Vec::new();
        let mut params = Vec::new();
        let mut owner_given = false;
        for (name, v) in &values {
            let col = e
                .columns
                .iter()
                .find(|c| c.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    BrokerError::Permission(format!("class {class} has no writable field `{name}`"))
                })?;
            if col.eq_ignore_ascii_case(octodb::ROW_OWNER) {
                owner_given = true;
                if peer.role != Role::Primary && *v != Value::Int(peer.user_id) {
                    return Err(BrokerError::Permission(
                        "a device makes rows of its own user only (no '*' or other users' rows)"
                            .into(),
                    ));
                }
            }
            cols.push(quote(col));
            params.push(sql_value(v, col)?);
        }
        if e.has_owner && !owner_given && peer.role != Role::Primary {
            cols.push(quote(octodb::ROW_OWNER));
            params.push(octodb::Value::Integer(peer.user_id));
        }
        let sql = if cols.is_empty() {
            format!("INSERT INTO {} DEFAULT VALUES", quote(&e.table))
        } else {
            format!(
                "INSERT INTO {}({}) VALUES ({})",
                quote(&e.table),
                cols.join(", "),
                vec!["?"; cols.len()].join(", ")
            )
        };
        let rowid = self.transaction(|me| {
            let conn = me.lock_conn();
            conn.execute(&sql, rusqlite::params_from_iter(params))?;
            Ok(conn.last_insert_rowid())
        })?;
        self.server.class_changed(&e.name);
        Ok(Key::new(&e.name, [KeyPart::Int(rowid)]))
    }

    /// Whether `peer` may change the row (a device: rows of its own user only).
    fn check_owner(&self, e: &TableExport, peer: &Peer, rowid: i64) -> Result<(), BrokerError> {
        if !e.has_owner || peer.role == Role::Primary {
            return Ok(());
        }
        let rows = self.lock_conn().query(
            &format!(
                "SELECT {} FROM {} WHERE rowid = ?",
                quote(octodb::ROW_OWNER),
                quote(&e.table)
            ),
            [rowid],
        )?;
        let owner = rows.iter().next().and_then(|r| r.values().first().cloned());
        match owner {
            Some(octodb::Value::Integer(u)) if u == peer.user_id => Ok(()),
            Some(octodb::Value::Text(t)) if t == "*" => Err(BrokerError::Permission(
                "public rows ('*') are changed by the backend only".into(),
            )),
            _ => Err(BrokerError::NotFound(format!("({:?}, {rowid})", e.name))),
        }
    }
}

impl Loader for SqlTables {
    fn fetch(&self, peer: &Peer, key: &Key) -> Result<ObjectState, BrokerError> {
        let e = self.export_of(&key.loader)?;
        let rowid = Self::rowid_of(key)?;
        let rows = self.select(
            &e,
            peer,
            vec!["rowid = ?".into()],
            vec![octodb::Value::Integer(rowid)],
            Some(1),
        )?;
        let (rowid, values) = rows
            .into_iter()
            .next()
            .ok_or_else(|| BrokerError::NotFound(key.to_string()))?;
        Ok(self.state(&e, rowid, &values))
    }

    fn backref(&self, peer: &Peer, key: &Key, name: &str) -> Result<Vec<Value>, BrokerError> {
        let target = self.export_of(&key.loader)?;
        let rowid = Self::rowid_of(key)?;
        // The object itself must be visible to the peer.
        self.fetch(peer, key)?;
        let (_, export, col) = self
            .lists_of(&target.name)
            .into_iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| {
                BrokerError::Unknown(format!("class {} has no list `{name}`", target.name))
            })?;
        let e = self.export_of(&export)?;
        let rows = self.select(
            &e,
            peer,
            vec![format!("{} = ?", quote(&col))],
            vec![octodb::Value::Integer(rowid)],
            None,
        )?;
        Ok(rows
            .into_iter()
            .map(|(rowid, _)| {
                Value::Ref(ObjRef::unsigned(Key::new(&e.name, [KeyPart::Int(rowid)])))
            })
            .collect())
    }

    fn search(
        &self,
        peer: &Peer,
        class: &str,
        eq: &[(String, Value)],
        limit: Option<u32>,
        mode: SearchMode,
    ) -> Result<Value, BrokerError> {
        let e = self.export_of(class)?;
        if e.access == Access::AttributesOnly {
            return Err(BrokerError::Permission(format!(
                "class {class} is exported for its attributes only: no search"
            )));
        }
        let (conds, params) = Self::eq_conditions(&e, eq)?;
        let criteria = || {
            let parts: Vec<String> = eq.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("({})", parts.join(", "))
        };
        match mode {
            SearchMode::Count => {
                let rows = self.select(&e, peer, conds, params, None)?;
                Ok(Value::Int(rows.len() as i64))
            }
            SearchMode::Get => {
                let rows = self.select(&e, peer, conds, params, Some(2))?;
                match rows.len() {
                    0 => Err(BrokerError::NoData {
                        class: class.into(),
                        criteria: criteria(),
                    }),
                    1 => Ok(Value::List(
                        rows.iter()
                            .map(|(id, v)| Value::Object(Box::new(self.state(&e, *id, v))))
                            .collect(),
                    )),
                    _ => {
                        let (conds, params) = Self::eq_conditions(&e, eq)?;
                        let count = self.select(&e, peer, conds, params, None)?.len() as u64;
                        Err(BrokerError::ManyData {
                            class: class.into(),
                            criteria: criteria(),
                            count,
                        })
                    }
                }
            }
            SearchMode::Find => {
                let rows = self.select(&e, peer, conds, params, limit)?;
                let whole = rows.len() <= WHOLE_RESULTS;
                Ok(Value::List(
                    rows.iter()
                        .map(|(id, v)| {
                            if whole {
                                Value::Object(Box::new(self.state(&e, *id, v)))
                            } else {
                                Value::Ref(ObjRef::unsigned(Key::new(&e.name, [KeyPart::Int(*id)])))
                            }
                        })
                        .collect(),
                ))
            }
        }
    }

    fn create(
        &self,
        peer: &Peer,
        class: &str,
        values: Vec<(String, Value)>,
    ) -> Result<Value, BrokerError> {
        let key = self.insert(peer, class, values)?;
        Ok(Value::Object(Box::new(self.fetch(peer, &key)?)))
    }

    fn update(&self, peer: &Peer, key: &Key, changes: Vec<Change>) -> Result<(), BrokerError> {
        let e = self.export_of(&key.loader)?;
        Self::writable(&e)?;
        let rowid = Self::rowid_of(key)?;
        self.transaction(|me| {
            me.check_owner(&e, peer, rowid)?;
            let current = me
                .select(
                    &e,
                    peer,
                    vec!["rowid = ?".into()],
                    vec![octodb::Value::Integer(rowid)],
                    Some(1),
                )?
                .into_iter()
                .next()
                .ok_or_else(|| BrokerError::NotFound(key.to_string()))?
                .1;
            let mut sets = Vec::new();
            let mut params = Vec::new();
            for (name, old, new) in &changes {
                let i = e
                    .columns
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(name))
                    .ok_or_else(|| {
                        BrokerError::Permission(format!(
                            "class {} has no writable field `{name}`",
                            e.name
                        ))
                    })?;
                let col = &e.columns[i];
                if col.eq_ignore_ascii_case(octodb::ROW_OWNER) && peer.role != Role::Primary {
                    return Err(BrokerError::Permission(
                        "a device cannot give its rows to another owner".into(),
                    ));
                }
                let now = Value::from(&current[i]);
                if now != *old {
                    return Err(BrokerError::Conflict(format!(
                        "field `{name}` of {key} is now {now}, not {old}"
                    )));
                }
                sets.push(format!("{} = ?", quote(col)));
                params.push(sql_value(new, col)?);
            }
            if sets.is_empty() {
                return Ok(());
            }
            params.push(octodb::Value::Integer(rowid));
            me.lock_conn().execute(
                &format!(
                    "UPDATE {} SET {} WHERE rowid = ?",
                    quote(&e.table),
                    sets.join(", ")
                ),
                rusqlite::params_from_iter(params),
            )?;
            Ok(())
        })?;
        // Told now, before the reply: the feed tells again later, harmlessly.
        self.server.invalidate(std::slice::from_ref(key));
        self.server.class_changed(&e.name);
        Ok(())
    }

    fn delete(&self, peer: &Peer, key: &Key) -> Result<(), BrokerError> {
        let e = self.export_of(&key.loader)?;
        Self::writable(&e)?;
        let rowid = Self::rowid_of(key)?;
        self.transaction(|me| {
            me.check_owner(&e, peer, rowid)?;
            let n = me.lock_conn().execute(
                &format!("DELETE FROM {} WHERE rowid = ?", quote(&e.table)),
                [rowid],
            )?;
            if n == 0 {
                return Err(BrokerError::NotFound(key.to_string()));
            }
            Ok(())
        })?;
        self.server.invalidate(std::slice::from_ref(key));
        self.server.class_changed(&e.name);
        Ok(())
    }
}

/// Follows the primary's change feed: every committed row change of an exported table (by
/// SQL, the app, a device or another primary) invalidates that row's object and the searches
/// of its class. Runs on a thread of its own until the server stops.
pub fn follow_feed(server: &Server, conn: octodb::Connection) -> Result<(), BrokerError> {
    let server = server.clone();
    let mut after = conn.feed_position();
    std::thread::Builder::new()
        .name("octodb-broker-feed".into())
        .spawn(move || {
            while !server.is_stopped() {
                conn.wait_feed(after, std::time::Duration::from_millis(200));
                let batch = match conn.changes_after(after, 512) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("broker: reading the change feed failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        continue;
                    }
                };
                after = batch.up_to;
                let tables = server
                    .inner
                    .tables
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let mut keys = Vec::new();
                let mut classes = Vec::new();
                for c in &batch.changes {
                    for export in tables.get(&c.table.to_lowercase()).into_iter().flatten() {
                        keys.push(Key::new(export, [KeyPart::Int(c.rowid)]));
                        if !classes.contains(export) {
                            classes.push(export.clone());
                        }
                    }
                }
                server.invalidate(&keys);
                for c in &classes {
                    server.class_changed(c);
                }
            }
        })
        .map_err(|e| BrokerError::Internal(format!("cannot start the feed thread: {e}")))?;
    Ok(())
}
