//! Cutting a primary's log (`_octo_log`), which otherwise grows for ever. The newest
//! `log_keep=` entries stay (a million by default); once the log holds a tenth more, the older
//! ones go, a chunk per write transaction. A device whose position is older than what is left
//! downloads again, keeping its pending work: the same path as a device ahead of a restored
//! primary (`primary::judge_position`). In a cluster the Raft log is purged first (after a
//! snapshot), since its entries name log positions; a primary that falls behind the purge
//! then installs that snapshot.

use crate::error::Result;
use rusqlite::Connection;

/// Entries deleted per write transaction, so that a cut never holds the file for long.
const CUT_CHUNK: u64 = 20_000;

/// The first sequence number the log holds entries from (1 if it was never cut). Cuts take
/// the oldest entries only, and a snapshot a follower installs holds its leader's log from
/// its start: what is left is always one unbroken run, from its oldest entry on.
pub fn start(conn: &Connection) -> Result<u64> {
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM _octo_log")?
        .query_row([], |r| r.get(0))?;
    Ok(oldest.map_or(1, |s| s.max(1) as u64))
}

/// Where to cut a log that holds entries `start..=last` and keeps `keep`: entries below the
/// returned position go. None until it holds a tenth more than it keeps, so that cuts come
/// in chunks, not at every commit.
pub fn due(start: u64, last: u64, keep: u64) -> Option<u64> {
    let held = (last + 1).saturating_sub(start);
    (held > keep.saturating_add(keep / 10)).then(|| last + 1 - keep)
}

/// Deletes the entries below `below`, at most a chunk of them; returns the log's new start
/// (cut again while it is below `below`). Inside a write transaction.
pub fn cut(conn: &Connection, below: u64) -> Result<u64> {
    let start = start(conn)?;
    let upto = below.min(start.saturating_add(CUT_CHUNK));
    if upto <= start {
        return Ok(start);
    }
    conn.prepare_cached("DELETE FROM _octo_log WHERE seq < ?1")?
        .execute([upto as i64])?;
    Ok(upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_cut_once_it_holds_a_tenth_more_than_it_keeps() {
        assert_eq!(due(1, 1000, 1000), None);
        assert_eq!(due(1, 1100, 1000), None);
        assert_eq!(due(1, 1101, 1000), Some(102));
        assert_eq!(due(102, 1200, 1000), None);
    }

    #[test]
    fn cutting_deletes_the_older_entries_a_chunk_at_a_time() {
        let conn = Connection::open_in_memory().unwrap();
        crate::store::init_internal_schema(&conn).unwrap();
        for _ in 0..30_010 {
            conn.execute(
                "INSERT INTO _octo_log(origin_node, origin_txn, body) VALUES (1, 0, x'00')",
                [],
            )
            .unwrap();
        }
        assert_eq!(start(&conn).unwrap(), 1);
        assert_eq!(cut(&conn, 30_001).unwrap(), 20_001);
        assert_eq!(cut(&conn, 30_001).unwrap(), 30_001);
        assert_eq!(cut(&conn, 30_001).unwrap(), 30_001);
        let (first, n): (i64, i64) = conn
            .query_row("SELECT min(seq), count(*) FROM _octo_log", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((first, n), (30_001, 10));
        // New entries go on after the last: the sequence never goes back.
        conn.execute(
            "INSERT INTO _octo_log(origin_node, origin_txn, body) VALUES (1, 0, x'00')",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 30_011);
    }
}
