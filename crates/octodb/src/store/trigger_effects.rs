//! A primary applying a device's transaction runs the schema's triggers: the backend's rules
//! may refuse the transaction, change its rows, or write other rows. Everything they write to
//! replicated tables must reach the log with the transaction, or the primary would hold rows
//! no device ever hears of. So while the schema has triggers, the engine's connection captures
//! every row change as an app's connection does (the same hook and TEMP triggers: rows that
//! triggers insert also get ids in the primary's range), and the log takes the captured changes.
//! Without triggers, the transaction's own rows, read back, are all it wrote: no capture cost.

use super::capture::{Capture, Identity};
use crate::changes::ChangeSet;
use crate::error::{Error, Result};
use crate::uri::Role;
use rusqlite::Connection;
use std::sync::Arc;

pub struct TriggerEffects {
    capture: Capture,
    /// The schema version the capture was set up (or found unneeded) for.
    checked_for: Option<i64>,
    active: bool,
}

impl TriggerEffects {
    /// On the primary engine's connection, before any transaction: registers the capture's
    /// functions and its (TEMP) mark table, which are inert until the capture is installed.
    pub fn new(conn: &Connection, identity: Arc<Identity>) -> Result<TriggerEffects> {
        let capture = Capture::new(identity);
        capture.register_functions(conn)?;
        Ok(TriggerEffects {
            capture,
            checked_for: None,
            active: false,
        })
    }

    /// Inside the write transaction, before applying devices' transactions: install or drop
    /// the capture for the schema as it now stands. True when it captures.
    pub fn prepare(&mut self, conn: &Connection) -> Result<bool> {
        let version = super::schema_version(conn)?;
        if self.checked_for == Some(version) {
            return Ok(self.active);
        }
        let has_triggers: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'trigger')",
            )?
            .query_row([], |r| r.get(0))?;
        if has_triggers {
            self.capture.install(conn, Role::Primary)?;
        } else if self.active {
            self.capture.uninstall(conn)?;
        }
        self.active = has_triggers;
        self.checked_for = Some(version);
        Ok(has_triggers)
    }

    /// A device's transaction is about to be applied: nothing captured before belongs to it.
    pub fn begin(&self) {
        self.capture.forget();
        self.capture.begin_statement();
    }

    /// Everything the transaction applied since [`TriggerEffects::begin`] changed in
    /// replicated tables, as the log records a primary's changes; or why they cannot be
    /// captured (a rule of the capture: the same for this transaction on every try, so the
    /// transaction is rejected with it rather than the batch failing again and again).
    pub fn take(&self, conn: &Connection) -> Result<std::result::Result<ChangeSet, String>> {
        match self.capture.take(conn) {
            Ok(captured) => Ok(Ok(crate::log::primary_changes(captured))),
            Err(Error::Rule(reason)) => Ok(Err(reason)),
            Err(e) => Err(e),
        }
    }

    /// The transaction was rejected and rolled back.
    pub fn forget(&self) {
        self.capture.forget();
    }

    /// The write transaction failed and rolled back, and with it whatever [`prepare`] did to
    /// the TEMP triggers (TEMP schema is transactional): check again next time, and drop any
    /// triggers left if the schema has none.
    ///
    /// [`prepare`]: TriggerEffects::prepare
    pub fn rolled_back(&mut self) {
        self.capture.forget();
        self.checked_for = None;
        self.active = true;
    }
}
