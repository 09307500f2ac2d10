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
//! A schema statement of the primaries adding a constraint (a UNIQUE index) that pending rows
//! break is met the same way: every row with pending work shows the primaries' version while
//! the statement runs ([`show_primaries_versions`]); so is a row of theirs that another rule
//! of the file (an app's trigger, a CHECK) refuses while the pending work is in place.
//!
//! Rows only this device has (row_owner NULL) never step aside: the app's own data is not
//! removed on its behalf, and the sync stops, saying which row to change.

use super::rebase::RowKey;
use crate::error::Result;
use crate::store::apply::{delete_row, write_row, Tables};
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

/// Writes every row with pending work here as the primaries have it (its base; taken out of its
/// table if they do not have it), and returns those rows: they are to be rebuilt from that and
/// their work. All are taken out first, so that no row's base clashes with another's work.
pub fn show_primaries_versions(conn: &Connection, tables: &mut Tables) -> Result<Vec<RowKey>> {
    let rows = super::outbox::rows_with_base(conn)?;
    let mut bases = Vec::with_capacity(rows.len());
    for (tbl, rid) in &rows {
        let Some(t) = tables.get(conn, tbl)? else {
            continue;
        };
        delete_row(conn, &t, *rid)?;
        if let Some(image) = super::outbox::base_of(conn, tbl, *rid)?.and_then(|b| b.image) {
            bases.push((t, *rid, image));
        }
    }
    for (t, rid, image) in bases {
        write_row(conn, &t, &image.columns, rid, &image.values)?;
    }
    Ok(rows)
}
