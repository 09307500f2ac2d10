//! The phases of running one statement. [`Connection::run`] goes through them with rusqlite; a
//! driver that prepares and steps SQLite statements itself on [`Connection::handle`] (the
//! Python module, which must keep cursors lazy as `sqlite3` does) calls them in the same order,
//! so that replication sees its statements exactly as it sees the engine's own:
//!
//! 1. [`Connection::answer_pragma`]: octodb's PRAGMAs are answered here, never by SQLite;
//! 2. [`Connection::before_prepare`], then prepare the statement, afresh when
//!    [`Prepared::fresh`] says so (the authorizer notes schema statements only while they are
//!    prepared);
//! 3. [`Connection::before_step`] once it is prepared and bound;
//! 4. step it to its end, then, if it returned rows, [`Connection::correct_returned_ids`],
//!    then [`Connection::after_steps`] with the number of rows it changed, or `Err(())` if it
//!    failed (the driver reports SQLite's error itself).
//!
//! On a plain local database the phases do nothing but note the counters.

use super::rules::{
    alters_row_owner, attaches_with_key, gives_a_key, leaves_wal, lowers_synchronous, names_rekey,
    spills_temp_to_files, writes_the_schema,
};
use super::Connection;
use crate::api::authz;
use crate::api::pragma;
use crate::api::rows::Rows;
use crate::api::sql_text;
use crate::error::{Error, Result};
use crate::store::renames;
use crate::store::returned_ids::{self, ColumnOrigin};
use crate::uri::Role;
use crate::value::Value;

/// Statements that write and, outside an explicit transaction, run in one the engine opens
/// (`BEGIN IMMEDIATE`, so the write lock is taken before any work is done).
const WRAPPED: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "WITH",
];
const SCHEMA_WORDS: &[&str] = &["CREATE", "DROP", "ALTER"];
/// Takes the write lock of the main database and changes nothing: SQLite opens a statement's
/// write transaction before it looks at its WHERE clause.
const TAKE_WRITE_LOCK: &str = "DELETE FROM main._octo_meta WHERE 0";

/// Which of SQLite's counters a statement moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dml {
    /// Neither (a query, a schema statement, a pragma): `changes()` keeps its value.
    None,
    /// `changes()`; `last_insert_rowid()` only if it inserted (`WITH ... INSERT`, an UPDATE).
    Writes,
    /// A plain INSERT or REPLACE: `last_insert_rowid()` is the last row it inserted.
    Inserts,
}

impl Dml {
    fn of(word: &str, readonly: bool) -> Dml {
        match word {
            "INSERT" | "REPLACE" => Dml::Inserts,
            "UPDATE" | "DELETE" => Dml::Writes,
            "WITH" if !readonly => Dml::Writes,
            _ => Dml::None,
        }
    }
}

/// A statement about to be prepared (phase 2).
#[derive(Debug)]
#[must_use = "pass it to before_step"]
pub struct Prepared {
    word: String,
    /// A write on a follower: its authorizer must see the tables it writes
    /// (`commit_point::forward_to_leader`), which a statement taken from a cache skips.
    afresh: bool,
}

impl Prepared {
    /// Prepare it afresh rather than take it from a statement cache.
    pub fn fresh(&self) -> bool {
        self.afresh || SCHEMA_WORDS.contains(&self.word.as_str())
    }
}

/// How long an app's write waits for its primary to join its cluster.
const JOIN_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);
const JOIN_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// A statement whose steps are about to run (phase 3); give it back to `after_steps`.
#[derive(Debug)]
#[must_use = "pass it to after_steps once the statement is done"]
pub struct Started {
    word: String,
    /// SQLite's last inserted row id before the statement ran.
    rowid_before: i64,
    /// What SQLite's `changes()` and `last_insert_rowid()` follow: an INSERT, UPDATE or DELETE
    /// (not a query, a schema statement or a pragma).
    dml: Dml,
    /// Its text, when it changed the schema of a primary (to replicate), with "private?".
    ddl: Option<(String, bool)>,
    /// With `ddl`: the replicated tables that had a VIRTUAL generated column before it.
    virtual_before: Vec<String>,
    /// With `ddl` on a primary, when it may rename: the tables before it (`store::renames`).
    shapes_before: Option<renames::Shapes>,
    /// With `ddl`: SQLite's schema cookie before it, to tell a statement that changed nothing
    /// (`CREATE TABLE IF NOT EXISTS` of a table there).
    schema_cookie_before: Option<i64>,
    /// The engine opened a transaction around it.
    wrap: bool,
}

/// `INSERT OR REPLACE`, `REPLACE INTO`, `UPDATE OR REPLACE`: the rows SQLite deletes to resolve
/// a conflict fire delete triggers only while recursive triggers are on, and a device's rule
/// that leaves other users' and `'*'` rows alone is a delete trigger (the capture, a preupdate
/// hook, sees those deletes either way). Such a statement runs with them on; apps' own triggers
/// may then fire themselves during it, as in other databases.
/// (Every write passes here: only the two words after INSERT or UPDATE are read, and a whole
/// statement only when it starts with WITH.)
fn deletes_by_replace(word: &str, sql: &str) -> bool {
    let words = match word {
        "REPLACE" => return true,
        "INSERT" | "UPDATE" => 3,
        "WITH" => usize::MAX,
        _ => return false,
    };
    let mut previous = String::new();
    sql_text::words(sql).take(words).any(|w| {
        let hit = previous == "OR" && w == "REPLACE";
        previous = w;
        hit
    })
}

/// Whether a statement run outside any transaction opens one that writes: a write (SQLite
/// runs it in a transaction of its own, or the engine does) or `BEGIN IMMEDIATE`/`EXCLUSIVE`.
/// (A deferred `BEGIN` or a `SAVEPOINT` may only read; see `before_step`.)
fn opens_write_transaction(word: &str, sql: &str, readonly: bool) -> bool {
    match word {
        "BEGIN" => sql_text::words(sql)
            .nth(1)
            .is_some_and(|w| w == "IMMEDIATE" || w == "EXCLUSIVE"),
        _ => !readonly,
    }
}

impl Connection {
    /// Phase 1: octodb's own PRAGMAs (`sync_status`, `nodes`, `user_signup`, ...) answered
    /// without SQLite; None when `sql` is anything else.
    pub fn answer_pragma(&self, sql: &str) -> Result<Option<Rows>> {
        match pragma::parse(sql)? {
            // Checked in `before_prepare`, whatever form the statement takes.
            Some(p) if self.node.is_none() && pragma::REKEY.contains(&p.name.as_str()) => Ok(None),
            Some(p) => Ok(Some(self.pragma(p)?.rows.unwrap_or_default())),
            None => Ok(None),
        }
    }

    /// A local connection's `PRAGMA rekey` of a file a node runs on (in this process or
    /// another) would re-encrypt it under the node, whose connections hold the old key: every
    /// later read or write of the node would fail, and its Raft node stop.
    fn refuse_rekey_under_a_running_node(&self) -> Result<()> {
        let Some(path) = self.conn.path().filter(|p| !p.is_empty()) else {
            return Ok(()); // an in-memory database
        };
        let path = std::path::Path::new(path);
        match crate::store::lock::ProcessLock::holder(path)? {
            None => Ok(()),
            Some(holder) => Err(Error::NotPermitted(format!(
                "PRAGMA rekey: a node runs on `{}`{}: re-encrypting its file under it would \
                 stop it. Run the PRAGMA on the node's own connection (its URI with node=), or \
                 stop the node first",
                path.display(),
                match holder {
                    0 => String::new(),
                    pid => format!(" (process {pid})"),
                }
            ))),
        }
    }

    /// A key is given (to the main file, or with an attached one): SQLCipher does not encrypt
    /// temporary files, so whatever the app set before, temporary tables, indexes and sorts
    /// stay in memory from now on. (`temp_store` reads no page: it may come before the key.)
    fn keep_temporary_data_in_memory(&self) -> Result<()> {
        self.encrypted.set(true);
        self.conn.execute_batch("PRAGMA temp_store = MEMORY")?;
        Ok(())
    }

    /// Phase 2: before `sql` is prepared.
    pub fn before_prepare(&self, sql: &str) -> Result<Prepared> {
        let word = sql_text::first_word(sql);
        if word == "PRAGMA" {
            if names_rekey(sql) {
                match self.node {
                    None => self.refuse_rekey_under_a_running_node()?,
                    // A node's own rekey (which pauses its writer) is answered before SQLite
                    // sees it, in its plain form only (`answer_pragma`): any other form would
                    // reach SQLCipher and re-encrypt the file under the node.
                    Some(_) => {
                        return Err(Error::NotPermitted(
                            "write it as PRAGMA rekey = '...' (or hexrekey), without a schema \
                             name or quotes: a node re-encrypts its file through its own rekey"
                                .into(),
                        ))
                    }
                }
            }
            if gives_a_key(sql) {
                self.keep_temporary_data_in_memory()?;
            }
            if self.encrypted.get() && spills_temp_to_files(sql) {
                return Err(Error::NotPermitted(
                    "an encrypted database keeps temp_store=MEMORY: SQLCipher does not encrypt \
                     temporary files, so temporary tables, indexes and sorts would reach the \
                     disk in plain text"
                        .into(),
                ));
            }
        }
        if word == "ATTACH" && attaches_with_key(sql) {
            self.keep_temporary_data_in_memory()?;
        }
        if self.repl.is_some() {
            self.write_lock_before_reading(&word)?;
            self.refresh_schema()?;
            if word == "ALTER" && alters_row_owner(sql) {
                return Err(Error::NotPermitted(
                    "the row_owner column cannot be renamed or dropped: it decides where rows replicate"
                        .into(),
                ));
            }
            if word == "PRAGMA" && writes_the_schema(sql) {
                return Err(Error::NotPermitted(
                    "the schema of a replicated node changes only through SQL statements the \
                     engine sees (CREATE, ALTER, DROP), not by writing sqlite_schema"
                        .into(),
                ));
            }
            if word == "PRAGMA" && leaves_wal(sql) {
                return Err(Error::NotPermitted(
                    "a replicated node keeps journal_mode=WAL: its engine reads beside the app's \
                     writes"
                        .into(),
                ));
            }
            if word == "PRAGMA" && lowers_synchronous(sql) {
                return Err(Error::NotPermitted(
                    "a replicated node keeps synchronous=FULL (or EXTRA): a commit lost at a power \
                     loss after it was sent would make the node hand out its transaction and row \
                     ids again"
                        .into(),
                ));
            }
            let existing = match word == "CREATE" && self.is_device() {
                true => self.main_tables_and_views()?,
                false => Vec::new(),
            };
            let afresh = WRAPPED.contains(&word.as_str()) && self.leader_followed();
            let mut a = authz::lock(&self.authz);
            a.existing = existing;
            a.trigger_statement = (word == "CREATE" || word == "DROP")
                && sql_text::words(sql).take(3).any(|w| w == "TRIGGER");
            a.ddl = None;
            a.denied = None;
            a.track_writes = afresh;
            return Ok(Prepared { word, afresh });
        }
        Ok(Prepared {
            word,
            afresh: false,
        })
    }

    fn is_device(&self) -> bool {
        self.repl.as_ref().map(|r| r.role) == Some(crate::uri::Role::Secondary)
    }

    /// The names of the main database's tables and views (see `authz::AuthzState::existing`).
    fn main_tables_and_views(&self) -> Result<Vec<String>> {
        self.internal(|| {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')")?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(names)
        })
    }

    /// The first statement after a deferred `BEGIN` (or an outermost `SAVEPOINT`) writes:
    /// take the write lock, waiting for the engine's turn, before octodb reads anything in
    /// the transaction. Otherwise the schema check would start a read snapshot, and SQLite
    /// does not wait for a busy write lock on behalf of a transaction that holds one: the
    /// app's INSERT would fail with "database is locked" whenever the engine was writing,
    /// though the app itself had read nothing.
    fn write_lock_before_reading(&self, word: &str) -> Result<()> {
        // The words of writes, but `WITH`, which may only read.
        let writes = word != "WITH" && WRAPPED.contains(&word);
        if self.conn.is_autocommit() || self.turn.is_writing() || !writes {
            return Ok(());
        }
        if self.conn.transaction_state(None::<&str>)? != rusqlite::TransactionState::None {
            return Ok(());
        }
        self.wait_until_joined()?;
        self.catch_up_with_leader(false);
        self.turn.begins_writing();
        if let Err(e) = self.internal_sql(TAKE_WRITE_LOCK) {
            self.turn.idle();
            return Err(e);
        }
        Ok(())
    }

    /// Phase 3: `sql` is prepared (`readonly` as SQLite judges it) and bound; it is about to
    /// run. On a replicated node this may record the open transaction or open one.
    pub fn before_step(&self, prepared: Prepared, sql: &str, readonly: bool) -> Result<Started> {
        let word = prepared.word;
        let Some(r) = &self.repl else {
            return Ok(Started {
                dml: Dml::of(&word, readonly),
                word,
                rowid_before: self.conn.last_insert_rowid(),
                ddl: None,
                virtual_before: Vec::new(),
                shapes_before: None,
                schema_cookie_before: None,
                wrap: false,
            });
        };
        let ddl = authz::lock(&self.authz)
            .ddl
            .take()
            .map(|private| (sql.to_string(), private));
        let in_txn = !self.conn.is_autocommit();
        // (A schema statement of its own: no transaction's snapshot or lock is held yet.)
        self.catch_up_with_leader(ddl.is_some() && !in_txn);
        let wrap = !in_txn && !readonly && WRAPPED.contains(&word.as_str());
        if in_txn && matches!(word.as_str(), "COMMIT" | "END" | "RELEASE") {
            let commits = word != "RELEASE" || self.release_commits(sql);
            // Record the transaction's changes inside it, just before it commits.
            self.flush()?;
            if commits {
                if let Err(e) = self.propose_before_commit(&word) {
                    self.rolled_back();
                    // (Nothing committed: nothing to confirm.)
                    let _ = self.after_statement(false);
                    return Err(e);
                }
            }
        }
        self.track_savepoint(&word, sql, in_txn);
        // Turns at writing the file (`node::write_turns`): only a connection about to write
        // and holding no read snapshot may wait for the engine; a reader never waits, and one
        // whose snapshot is taken would only fail to write after the engine's commit.
        if !in_txn && opens_write_transaction(&word, sql, readonly) {
            self.wait_until_joined()?;
            self.catch_up_with_leader(false);
            self.turn.begins_writing();
        } else if in_txn && !readonly && !self.turn.is_writing() {
            let no_snapshot =
                self.conn.transaction_state(None::<&str>)? == rusqlite::TransactionState::None;
            if no_snapshot {
                // A deferred `BEGIN` (or `SAVEPOINT`) whose first statement writes.
                self.wait_until_joined()?;
                self.catch_up_with_leader(false);
                self.turn.begins_writing();
            } else {
                self.turn.writes();
            }
        }
        let recursive = !readonly && deletes_by_replace(&word, sql);
        if let Err(e) = self.prepare_to_run(&word, sql, wrap, recursive) {
            if wrap {
                if !self.conn.is_autocommit() {
                    let _ = self.internal_sql("ROLLBACK");
                }
                self.turn.idle();
            }
            return Err(e);
        }
        r.capture.begin_statement();
        let virtual_before = match ddl {
            Some(_) => crate::store::schema::replicated_with_virtual_columns(&self.conn)?,
            None => Vec::new(),
        };
        let shapes_before = match &ddl {
            Some((sql, _)) if r.role == Role::Primary && renames::may_rename(sql) => {
                Some(renames::shapes(&self.conn)?)
            }
            _ => None,
        };
        let schema_cookie_before = match ddl {
            Some(_) => Some(crate::store::schema_version(&self.conn)?),
            None => None,
        };
        Ok(Started {
            dml: Dml::of(&word, readonly),
            word,
            rowid_before: self.conn.last_insert_rowid(),
            ddl,
            virtual_before,
            shapes_before,
            schema_cookie_before,
            wrap,
        })
    }

    /// What phase 3 does to the file just before the statement runs (`wrap`: in a transaction
    /// opened for it, which the caller undoes if this fails).
    fn prepare_to_run(&self, word: &str, sql: &str, wrap: bool, recursive: bool) -> Result<()> {
        if wrap {
            // The schema is checked again once the write lock is held: the engine may have
            // changed it (a column dropped or renamed from the primaries) since the check
            // before the statement was prepared, and triggers naming a column that is
            // gone would fail the statement. SQLite prepares it again for new triggers.
            self.internal_sql("BEGIN IMMEDIATE")?;
            self.refresh_schema()?;
        }
        if word == "ALTER" && sql_text::words(sql).any(|w| w == "DROP") {
            // Last, just before it runs: nothing in between may install them again.
            self.capture_off_for_drop_column()?;
        }
        // Outside a REPLACE, the app's own setting (it was reset to off after every REPLACE:
        // an app's recursive delete of a subtree then stopped at the first level, and that
        // partial delete replicated).
        let wanted = recursive || self.app_recursive_triggers()?;
        if wanted != self.recursive_triggers.get() {
            // Once the statement is prepared: the pragma expires it, and SQLite prepares it
            // again with (or without) the delete triggers coded in. Switched only when the
            // kind of statement changes, so that a run of REPLACEs is prepared once.
            self.internal_sql(if wanted {
                "PRAGMA recursive_triggers = ON"
            } else {
                "PRAGMA recursive_triggers = OFF"
            })?;
            self.recursive_triggers.set(wanted);
        }
        if word == "PRAGMA" && sql.to_ascii_lowercase().contains("recursive_triggers") {
            self.app_recursive_triggers.set(None);
        }
        Ok(())
    }

    /// A follower's app writes on what the cluster had committed, not on what this primary
    /// happens to have applied yet: before a connection's first write transaction, and before
    /// each schema statement of its own (`schema_statement`), it waits until it has applied
    /// everything the leader had committed then (a read index: one round trip). Start-up
    /// migrations on a follower restarted, or run just after the leader's, otherwise ran on an
    /// older schema and failed at COMMIT ("the schema changed since it began"), and a
    /// `CREATE TABLE IF NOT EXISTS` the leader had run was made again. Holding no lock, as
    /// the state machine needs the file's write lock to apply. Best effort, bounded: without
    /// a leader (or with one of an older build) the app goes on, and the leader's conflict
    /// check still guards the transaction.
    fn catch_up_with_leader(&self, schema_statement: bool) {
        if self.caught_up_once.get() && !schema_statement {
            return;
        }
        self.caught_up_once.set(true);
        if !self.leader_followed() {
            return;
        }
        let Some(proposer) = self.node.as_ref().and_then(|n| n.shared.cluster.get()) else {
            return;
        };
        let caught_up =
            crate::node::block_on(proposer.catch_up_with_leader(crate::cluster::LEADERLESS_MAX));
        if let Err(e) = caught_up {
            tracing::debug!("a follower's app goes on without catching up with its leader: {e}");
        }
    }

    /// A primary joining its cluster (opened with `connect=`, its join not done) takes its
    /// app's writes once it has joined: made before, alone, they numbered its log apart from
    /// the cluster's, and a device failing over between primaries then missed rows (a schema
    /// set-up run at start did it, in the schema walkthrough; a broker's first write stopped
    /// the primary's Raft node). Waits for the join, at most [`JOIN_WAIT_MAX`].
    fn wait_until_joined(&self) -> Result<()> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        if self.repl.as_ref().map(|r| r.role) != Some(Role::Primary) {
            return Ok(());
        }
        // (Once it has joined, it stays: a connection asks until it has.)
        if !node.shared.joins || self.member_seen.get() {
            return Ok(());
        }
        let joined = || {
            node.shared
                .cluster
                .get()
                .is_some_and(|c| crate::cluster::joined_and_caught_up(c.raft()))
        };
        if !joined() {
            tracing::info!("an app's write waits until this primary has joined its cluster");
        }
        let deadline = std::time::Instant::now() + JOIN_WAIT_MAX;
        while !joined() {
            if std::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "this primary is still joining its cluster (connect=): its app's writes go \
                     through once it has joined, which it has not within {}s (PRAGMA \
                     sync_status says what it waits for; a primary must be approved to join \
                     where the cluster authorizes nodes). Nothing was written; try again",
                    JOIN_WAIT_MAX.as_secs()
                )));
            }
            // (A join takes from milliseconds to the time its snapshot takes to install: a
            // rare wait, polled rather than signalled.)
            std::thread::sleep(JOIN_POLL);
        }
        self.member_seen.set(true);
        Ok(())
    }

    /// The app's `PRAGMA recursive_triggers`; read from SQLite once after the app set it (no
    /// statement of the engine's has changed it since).
    fn app_recursive_triggers(&self) -> Result<bool> {
        if let Some(on) = self.app_recursive_triggers.get() {
            return Ok(on);
        }
        let on: bool = self
            .conn
            .query_row("PRAGMA recursive_triggers", [], |r| r.get(0))?;
        self.app_recursive_triggers.set(Some(on));
        self.recursive_triggers.set(on);
        Ok(on)
    }

    /// Phase 4, first, for a statement that returned rows: `INSERT ... RETURNING` computes its
    /// values before the engine moves a row into this node's id range, so the ids among
    /// `rows` (the statement's results, in order) are corrected to those the rows ended with.
    /// `origins` is asked for only when the statement moved a row: per result column, where
    /// its values come from (`sqlite3_column_database_name`, `_table_name`, `_origin_name`).
    pub fn correct_returned_ids(
        &self,
        origins: impl FnOnce() -> Vec<Option<ColumnOrigin>>,
        rows: &mut [Vec<Value>],
    ) {
        let Some(r) = &self.repl else { return };
        if rows.is_empty() {
            return;
        }
        let moved = r.capture.moved_ids();
        if !moved.is_empty() {
            returned_ids::correct(&moved, &origins(), rows);
        }
    }

    /// Phase 4: the statement ran to its end having changed `changes` rows, or failed.
    /// Completes what the engine opened for it; an error here means it was not committed.
    pub fn after_steps(&self, started: Started, changes: Result<u64, ()>) -> Result<()> {
        // A schema statement that ran but cannot be replicated (or recorded) must not stay in
        // its transaction: committed, the primary would differ from everyone else.
        let mut schema_refused = false;
        let result = changes.map_err(|_| None).and_then(|changes| {
            self.note_counters(started.dml, changes, started.rowid_before);
            // A schema statement that changed nothing (an app's `CREATE TABLE IF NOT EXISTS`
            // at every start) is not replicated: it made a log entry each time, which every
            // device applied as a schema change.
            let changed_schema = match started.schema_cookie_before {
                Some(before) => {
                    crate::store::schema_version(&self.conn).map_err(|e| Some(e.into()))? != before
                }
                None => true,
            };
            if let Some((sql, private)) = started.ddl.as_ref().filter(|_| changed_schema) {
                schema_refused = true;
                self.refuse_new_virtual_columns(&started.virtual_before)
                    .map_err(Some)?;
                self.after_schema_change(sql, *private, started.shapes_before)
                    .map_err(Some)?;
                schema_refused = false;
            }
            if started.wrap {
                self.flush().map_err(Some)?;
                self.propose_before_commit("COMMIT").map_err(Some)?;
                self.internal_sql("COMMIT").map_err(Some)?;
            }
            Ok(())
        });
        if result.is_err() {
            if let Some(r) = &self.repl {
                r.capture.statement_failed();
            }
        }
        let raft_entry_written = self.in_flight.borrow().is_some();
        let undo_all = started.wrap || raft_entry_written || schema_refused;
        if result.is_err() && undo_all && !self.conn.is_autocommit() {
            // (A failed COMMIT that left its transaction open: its Raft entry is voided, so
            // the transaction goes too.)
            let _ = self.internal_sql("ROLLBACK");
        }
        if result.is_ok() && started.word == "ROLLBACK" && !self.conn.is_autocommit() {
            // ROLLBACK TO: what an inner RELEASE recorded may be undone in the file; the
            // copies kept in memory for announcing the transaction can no longer be trusted,
            // nor can the capture's copies of the rows.
            self.rolled_back_within.set(true);
            if let Some(r) = &self.repl {
                r.capture.rolled_back_to();
            }
        }
        if started.word == "ROLLBACK" {
            // It may have undone a schema statement of this connection, or the capture
            // triggers installed since the savepoint.
            self.rolled_back();
        }
        let confirmed = self.after_statement(result.is_ok() && started.word != "ROLLBACK");
        match result {
            Err(Some(e)) => Err(e),
            _ => confirmed,
        }
    }

    /// A schema statement of a primary that gave a replicated table a VIRTUAL generated column
    /// is refused (and its transaction rolled back): the preupdate hook of the SQLite built here
    /// reads such a table's rows wrongly, so every later write to it would fail, on every node.
    fn refuse_new_virtual_columns(&self, before: &[String]) -> Result<()> {
        let now = crate::store::schema::replicated_with_virtual_columns(&self.conn)?;
        match now.iter().find(|t| !before.contains(t)) {
            Some(table) => Err(Error::NotPermitted(format!(
                "table `{table}` would have a VIRTUAL generated column, which octodb cannot \
                 replicate (SQLite 3.46's preupdate hook reads such rows wrongly): declare the \
                 column STORED when the table is made (ALTER TABLE ADD COLUMN cannot add a \
                 STORED one: make the table again with it). The statement's transaction was \
                 rolled back"
            ))),
            None => Ok(()),
        }
    }

    /// Why the engine's rules refused the last statement, when SQLite reported only "not
    /// authorized" (`SQLITE_AUTH`); taken once.
    pub fn take_denied_reason(&self) -> Option<String> {
        authz::lock(&self.authz).denied.take()
    }
}
