//! A row from the primaries that clashes, on a UNIQUE column, with a row this device changed
//! and has not had decided yet: two devices of one user inserted the same unique value, and
//! the primaries kept the first (the other's transaction is rejected, "first insert wins").
//!
//! The primaries' row is written, and this device's pending row steps aside: it leaves the
//! table while its transaction waits for the primaries' decision, its work kept in the outbox.
//! The rejection then takes it back as any other; were it accepted (the other row gone
//! meanwhile), it comes back with the decision. Before this, the device could write nothing
//! more from the primaries: its pending row blocked the primaries' one for good, and the
//! rejection that would have removed it came after it in the log.
//!
//! Rows only this device has (row_owner NULL) never step aside: the app's own data is not
//! removed on its behalf, and the sync stops, saying which row to change.

use crate::error::Result;
use crate::store::apply::delete_row;
use crate::store::schema::TableLayout;
use crate::store::unique_holders::holders;
use crate::value::Value;
use rusqlite::Connection;

/// Takes out of `t` the rows with pending work here (a base in `_octo_base`) that hold one of
/// the unique values of `values` (the primaries' row `rowid`, in `columns`' order). Returns
/// their row ids.
pub fn step_aside(
    conn: &Connection,
    t: &TableLayout,
    columns: &[String],
    rowid: i64,
    values: &[Value],
) -> Result<Vec<i64>> {
    let mut aside = Vec::new();
    for rid in holders(conn, t, columns, rowid, values)? {
        if !super::rebase::has_base(conn, &t.name, rid)? {
            continue;
        }
        tracing::warn!(
            table = %t.name,
            row = rid,
            clashes_with = rowid,
            "a row this device changed holds a unique value the primaries gave another row \
             first: it leaves the table until the primaries decide its transaction (most \
             likely a rejection)"
        );
        delete_row(conn, t, rid)?;
        aside.push(rid);
    }
    Ok(aside)
}
