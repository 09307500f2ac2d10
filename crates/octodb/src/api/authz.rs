//! The SQLite authorizer of a user connection: notes schema statements (to replicate them from
//! primaries) and refuses what the replication rules forbid, remembering why so the error can
//! say it plainly instead of SQLite's bare "not authorized".

use crate::store::schema::{is_private, INTERNAL_TABLE_HINT};
use crate::uri::Role;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct AuthzState {
    /// Set while the engine runs its own statements on the user connection.
    pub internal: bool,
    /// The statement being prepared changes the schema: Some(touches a private_ table).
    pub ddl: Option<bool>,
    pub denied: Option<String>,
    /// Set on a follower's connection for the statements it prepares while in a write: the
    /// main tables they write themselves (not through a trigger) are noted in `direct_writes`.
    pub track_writes: bool,
    /// The main tables the open transaction's statements write themselves (see
    /// `track_writes`), for a follower to tell whether the leader would receive all of it.
    pub direct_writes: Vec<String>,
    /// Device: the main tables and views (lowercase) before a `CREATE` statement is prepared.
    /// SQLite asks about a `CREATE TABLE` or `CREATE VIEW` before it looks whether the name
    /// exists: one that does is let through, to be a no-op (`IF NOT EXISTS`, an app's shared
    /// migrations) or SQLite's own "already exists".
    pub existing: Vec<String>,
    /// The statement being prepared is a `CREATE` or `DROP TRIGGER` of the app's (a `DROP
    /// TABLE` drops the table's triggers too, the engine's among them, and may).
    pub trigger_statement: bool,
}

pub type Shared = Arc<Mutex<AuthzState>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, AuthzState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn install(conn: &rusqlite::Connection, role: Role, state: Shared) {
    conn.authorizer(Some(move |ctx: AuthContext<'_>| decide(role, &state, ctx)));
}

fn decide(role: Role, state: &Shared, ctx: AuthContext<'_>) -> Authorization {
    let mut st = lock(state);
    if st.internal {
        return Authorization::Allow;
    }
    let in_main = match ctx.action {
        // SQLite names the database among ALTER TABLE's own arguments; the slot it fills
        // elsewhere holds the column of a DROP COLUMN, which must not pass for another
        // database and escape the rules below.
        AuthAction::AlterTable { database_name, .. } => database_name == "main",
        _ => ctx.database_name.is_none_or(|d| d == "main"),
    };
    let internal = |t: &str| t.starts_with(crate::store::INTERNAL_PREFIX);
    let ddl_table: Option<&str> =
        match ctx.action {
            AuthAction::CreateTable { table_name } | AuthAction::DropTable { table_name } => {
                Some(table_name)
            }
            AuthAction::AlterTable { table_name, .. } => Some(table_name),
            AuthAction::CreateIndex { table_name, .. }
            | AuthAction::DropIndex { table_name, .. } => Some(table_name),
            AuthAction::CreateTrigger { table_name, .. }
            | AuthAction::DropTrigger { table_name, .. } => Some(table_name),
            AuthAction::CreateView { .. } | AuthAction::DropView { .. } => Some(""),
            // (An FTS or R*Tree table: its statement replicates, and each node fills its own.)
            AuthAction::CreateVtable { table_name, .. }
            | AuthAction::DropVtable { table_name, .. } => Some(table_name),
            _ => None,
        };
    // The engine's TEMP triggers keep the rules on a replicated connection (a device's
    // ownership checks, collision-free ids): an app may not drop or shadow them.
    if let AuthAction::CreateTrigger { trigger_name, .. }
    | AuthAction::DropTrigger { trigger_name, .. }
    | AuthAction::CreateTempTrigger { trigger_name, .. }
    | AuthAction::DropTempTrigger { trigger_name, .. } = ctx.action
    {
        if st.trigger_statement && internal(trigger_name) {
            st.denied = Some(format!(
                "`{trigger_name}` is one of octodb's own triggers, which keep its rules on this \
                 connection; {INTERNAL_TABLE_HINT}"
            ));
            return Authorization::Deny;
        }
    }
    match (ctx.action, ddl_table) {
        (_, Some(t)) if in_main => {
            if internal(t) {
                st.denied = Some(format!(
                    "`{t}` is one of octodb's internal tables; {INTERNAL_TABLE_HINT}"
                ));
                return Authorization::Deny;
            }
            if role == Role::Secondary {
                if device_may_run(&st, &ctx.action) {
                    return Authorization::Allow;
                }
                st.denied = Some(
                    "the schema of a device comes from the primaries: run CREATE/ALTER/DROP on a primary".into(),
                );
                return Authorization::Deny;
            }
            let private = is_private(t);
            st.ddl = Some(st.ddl.unwrap_or(false) || private);
            Authorization::Allow
        }
        (AuthAction::Insert { table_name } | AuthAction::Delete { table_name }, _)
        | (AuthAction::Update { table_name, .. }, _)
            if in_main
                && st.track_writes
                && ctx.accessor.is_none()
                && !internal(table_name)
                // (A schema statement writes SQLite's own table: it is forwarded as DDL.)
                && !table_name.starts_with("sqlite_") =>
        {
            if !st.direct_writes.iter().any(|t| t == table_name) {
                st.direct_writes.push(table_name.to_string());
            }
            Authorization::Allow
        }
        (AuthAction::Insert { table_name } | AuthAction::Delete { table_name }, _)
        | (AuthAction::Update { table_name, .. }, _)
            if in_main && internal(table_name) =>
        {
            st.denied = Some(format!(
                "`{table_name}` is one of octodb's internal tables; {INTERNAL_TABLE_HINT}"
            ));
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }
}

/// Device: the schema statements it runs itself, changing nothing the primaries send: a
/// `CREATE` of a table or view that exists (see `AuthzState::existing`), and the statistics
/// tables `ANALYZE` (and `PRAGMA optimize`) make, which stay the device's own.
fn device_may_run(st: &AuthzState, action: &AuthAction<'_>) -> bool {
    let exists = |name: &str| st.existing.iter().any(|e| e.eq_ignore_ascii_case(name));
    match action {
        AuthAction::CreateTable { table_name } => {
            table_name.starts_with("sqlite_stat") || exists(table_name)
        }
        AuthAction::CreateView { view_name } => exists(view_name),
        _ => false,
    }
}
