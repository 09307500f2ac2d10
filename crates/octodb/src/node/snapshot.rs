//! A primary reading the initial download of a device: the schema, then the rows its user may
//! see, all in one read transaction so that they match the log position sent with them.
//! Messages are encoded here, on the blocking thread that reads, straight from SQLite's values.

use crate::error::{Error, Result};
use crate::log;
use crate::net::message::SnapshotRowsEncoder;
use crate::net::Message;
use crate::store::schema::{self, ident, TableLayout};
use crate::value::WireValueRef;
use rusqlite::Connection;
use serde::ser::{Error as _, SerializeSeq};
use serde::Serialize;
use tokio::sync::mpsc;

/// Rows per message.
const CHUNK_ROWS: usize = 4000;

/// When the download's row count (for the device's progress) is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Total {
    /// In `SnapshotBegin`, counted before the first row (devices before protocol 11).
    First,
    /// Later, in `SnapshotTotal`, counted by [`count`] beside the reading: `SnapshotBegin`
    /// says 0.
    Later,
}

/// A device's download, as its protocol takes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Download {
    /// The device's user: the rows it may see.
    pub user: i64,
    pub total: Total,
    /// It takes the primaries' renames first (`Message::Renames`, protocol 13).
    pub renames: bool,
}

/// Read download `of` into `out` (encoded messages), all but its `SnapshotEnd`. Returns the
/// log position it stands at.
pub(super) fn read(c: &Connection, of: Download, out: &mpsc::Sender<Vec<u8>>) -> Result<u64> {
    scanning(c, |c| read_in_txn(c, of, out))
}

/// How many rows a download for `user` holds now (its own read: the download's may stand a
/// commit or two apart, which a progress figure can bear).
pub(super) fn count(c: &Connection, user: i64) -> Result<u64> {
    scanning(c, |c| {
        let tables = download_tables(c)?;
        count_rows(c, &tables, user)
    })
}

/// `f` in a read transaction through a memory map: a download scans the whole
/// file, and a map reads it faster than a read() per page (1M rows: 0.72 -> 0.63 s). Only
/// here: a map on every connection made each commit slower (the map is redone as the file
/// grows), which showed in the latency figure.
fn scanning<T>(c: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    c.execute_batch(&format!("PRAGMA mmap_size={SCAN_MMAP_BYTES}; BEGIN"))?;
    let result = f(c);
    let _ = c.execute_batch("COMMIT; PRAGMA mmap_size=0");
    result
}

/// The most of the file a download maps at once (address space, not memory).
const SCAN_MMAP_BYTES: u64 = 1 << 30;

fn read_in_txn(c: &Connection, of: Download, out: &mpsc::Sender<Vec<u8>>) -> Result<u64> {
    let Download {
        user,
        total,
        renames,
    } = of;
    let send = |bytes: Vec<u8>| out.blocking_send(bytes).map_err(|_| Error::Closed);
    let seq = log::last_seq(c)?;
    let statements: Vec<String> = c
        .prepare(&format!(
            "SELECT sql FROM sqlite_master WHERE {}
             ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid",
            schema::DEVICE_SCHEMA
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let tables = download_tables(c)?;
    let visible = rusqlite::params![user, user.to_string()];
    let total_rows = match total {
        Total::First => count_rows(c, &tables, user)?,
        Total::Later => 0,
    };
    if renames {
        let renames = crate::store::renames::all(c)?;
        send(Message::Renames { renames }.encode())?;
    }
    send(
        Message::SnapshotBegin {
            seq,
            schema: statements,
            total_rows,
        }
        .encode(),
    )?;
    for t in &tables {
        let cols: Vec<String> = t.columns.iter().map(|c| ident(c)).collect();
        let mut stmt = c.prepare(&format!(
            "SELECT rowid, {} FROM {} WHERE {}",
            cols.join(", "),
            ident(&t.name),
            visibility(t)
        ))?;
        let n = t.columns.len();
        let mut rows = stmt.query(visible)?;
        let mut chunk = SnapshotRowsEncoder::new(&t.name, &t.columns);
        while let Some(r) = rows.next()? {
            chunk.push(r.get::<_, i64>(0)?, &RowValues(r, n))?;
            if chunk.rows() == CHUNK_ROWS {
                let full =
                    std::mem::replace(&mut chunk, SnapshotRowsEncoder::new(&t.name, &t.columns));
                send(full.finish()?)?;
            }
        }
        if chunk.rows() > 0 {
            send(chunk.finish()?)?;
        }
    }
    // (`SnapshotEnd` is the caller's to send: a count made beside the reading goes first.)
    Ok(seq)
}

/// The tables a download carries.
fn download_tables(c: &Connection) -> Result<Vec<TableLayout>> {
    Ok(schema::user_tables(c)?
        .into_iter()
        .filter(|t| t.is_replicated() && !schema::is_private(&t.name) && !t.without_rowid)
        .collect())
}

/// The rows of `tables` a device of `user` may see.
fn count_rows(c: &Connection, tables: &[TableLayout], user: i64) -> Result<u64> {
    let mut total = 0u64;
    for t in tables {
        let n: i64 = c.query_row(
            &format!(
                "SELECT count(*) FROM {} WHERE {}",
                ident(&t.name),
                visibility(t)
            ),
            rusqlite::params![user, user.to_string()],
            |r| r.get(0),
        )?;
        total += n as u64;
    }
    Ok(total)
}

/// The rows of `t` a device of the user bound as ?1 (and as text, ?2) may see: as
/// `Owner::of_ref` reads an owner, so that a download sends what streaming sends (SQLite's `=`
/// would also match a float 1.0, which streaming leaves on the primaries).
fn visibility(t: &TableLayout) -> String {
    let ow = ident(&t.columns[t.owner.unwrap_or(0)]);
    format!("{ow} = '*' OR ({ow} = ?1 AND typeof({ow}) = 'integer') OR {ow} = ?2")
}

/// Columns 1..=n of a query row, serialized as a sequence of values without copying them.
struct RowValues<'a, 'r>(&'a rusqlite::Row<'r>, usize);

impl Serialize for RowValues<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.1))?;
        for i in 1..=self.1 {
            let v = self.0.get_ref(i).map_err(S::Error::custom)?;
            seq.serialize_element(&WireValueRef(v))?;
        }
        seq.end()
    }
}
