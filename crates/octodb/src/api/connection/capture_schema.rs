//! Keeping a connection's capture (its hook's table layouts and its rule triggers) in step with
//! the schema: the engine may change the schema under the app (from the primaries), the app may
//! change it on a primary, and a rollback takes back TEMP triggers installed inside it.

use super::Connection;
use crate::error::Result;

impl Connection {
    /// Before `ALTER TABLE ... DROP COLUMN`: SQLite checks every trigger on the table once the
    /// column is gone, this connection's TEMP ones too, and the rule triggers name `row_owner`,
    /// so dropping it would fail. They go, and come back for the new schema after the statement
    /// (or at the next statement, if it failed).
    pub(crate) fn capture_off_for_drop_column(&self) -> Result<()> {
        self.internal(|| crate::store::schema::drop_triggers(&self.conn))?;
        self.schema_version.set(-1);
        self.schema_fixed.set(false);
        Ok(())
    }

    /// Install the capture again when the schema changed (here or from the network).
    pub(super) fn refresh_schema(&self) -> Result<()> {
        let Some(r) = &self.repl else { return Ok(()) };
        if self.schema_fixed.get() {
            return Ok(());
        }
        let mut version = self.read_schema_version()?;
        // Reading the version started the open transaction's read snapshot, if one is open.
        self.schema_fixed.set(!self.conn.is_autocommit());
        while version != self.schema_version.get() {
            self.internal(|| r.capture.install(&self.conn, r.role))?;
            // Installing TEMP triggers does not change the main schema_version.
            self.schema_version.set(version);
            if !self.conn.is_autocommit() {
                self.installed_in_txn.set(true);
                break;
            }
            // Outside a transaction the engine may have changed the schema meanwhile.
            version = self.read_schema_version()?;
        }
        Ok(())
    }

    /// A rollback (of the transaction, or to a savepoint) may have taken back the capture's triggers
    /// installed inside it: have the next statement install them again.
    pub(crate) fn rolled_back(&self) {
        if self.installed_in_txn.replace(false) {
            self.schema_version.set(-1);
        }
        self.schema_fixed.set(false);
    }

    fn read_schema_version(&self) -> Result<i64> {
        self.internal(|| {
            Ok(self
                .conn
                .prepare_cached("PRAGMA schema_version")?
                .query_row([], |row| row.get(0))?)
        })
    }
}
