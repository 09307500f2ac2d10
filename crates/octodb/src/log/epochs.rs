//! The identity of the primaries' log, so that a device can tell that its primary is behind
//! it: a primary restored from an older copy of its file (or a whole cluster restored) has
//! a log that ends before what its devices already applied, or goes on from there with
//! entries the devices never saw under sequence numbers they believe they have.
//!
//! Each time a primary starts leading its cluster (a cluster of one: each time it opens), it
//! starts a new epoch: a random id, in an entry of the primaries' log (no device receives
//! it), kept here with that entry's sequence number. A restored copy starts a new epoch at its own end, so
//! a position taken from the lost future (the same sequence number in an older epoch, or an
//! epoch the copy never had) no longer matches. A device keeps the epochs it was told and
//! names, when it connects, the epoch of its position; the primary judges that position with
//! [`judge`].

use crate::error::Result;
use rusqlite::{params, Connection};

/// Epochs kept: a device whose position is older than the oldest of them downloads again
/// (each one is a leadership change or a primary's restart).
pub const KEPT: i64 = 1000;

/// One epoch: its id and the sequence number of its first log entry (its marker).
pub type Epoch = (u64, u64);

/// Records epoch `id`, which begins with the log entry `first` (its marker), in the write
/// transaction that appends that entry.
pub fn begin(c: &Connection, id: u64, first: u64) -> Result<()> {
    c.prepare_cached("INSERT INTO _octo_epochs(id, first_seq) VALUES (?1, ?2)")?
        .execute(params![id as i64, first as i64])?;
    c.prepare_cached(
        "DELETE FROM _octo_epochs WHERE rowid <= (SELECT max(rowid) FROM _octo_epochs) - ?1",
    )?
    .execute([KEPT])?;
    Ok(())
}

/// Every epoch kept, oldest first.
pub fn history(c: &Connection) -> Result<Vec<Epoch>> {
    let mut stmt = c.prepare_cached("SELECT id, first_seq FROM _octo_epochs ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The epoch that log position `seq` belongs to in `history`.
pub fn at(history: &[Epoch], seq: u64) -> Option<u64> {
    history
        .iter()
        .rev()
        .find(|(_, first)| *first <= seq)
        .map(|(id, _)| *id)
}

/// The part of `history` a device at `epoch` needs from now on: its own epoch and those
/// after it (all of them when it names none or one not here).
pub fn from(history: &[Epoch], epoch: Option<u64>) -> Vec<Epoch> {
    let start = epoch
        .and_then(|e| history.iter().position(|(id, _)| *id == e))
        .unwrap_or(0);
    history[start..].to_vec()
}

/// Devices: the meta key of the epochs the primaries told, as JSON `[[id, first], ...]`.
const DEVICE_KEY: &str = "log_epochs";

/// Devices: the epochs kept in the file (none when never told, or unreadable).
pub fn load(c: &Connection) -> Result<Vec<Epoch>> {
    let text: Option<String> = crate::store::meta_get(c, DEVICE_KEY)?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// Devices: keep what the primaries told (`told`, oldest first) with what was kept before:
/// the epochs before the first one told stay, unless `replace` (after a primary was found
/// behind, its history is the only one).
pub fn keep(c: &Connection, told: &[Epoch], replace: bool) -> Result<()> {
    let mut kept = if replace { Vec::new() } else { load(c)? };
    if let Some(&(_, first)) = told.first() {
        kept.retain(|(id, f)| *f < first && !told.iter().any(|(t, _)| t == id));
    }
    kept.extend_from_slice(told);
    let excess = kept.len().saturating_sub(KEPT as usize);
    kept.drain(..excess);
    let json = serde_json::to_string(&kept)
        .map_err(|e| crate::Error::rule(format!("octodb: log epochs not stored: {e}")))?;
    crate::store::meta_set(c, DEVICE_KEY, json)
}

/// Whether a device that applied the log up to `seq`, in epoch `epoch` (None: it does not
/// know, an older device), can go on from there with a primary whose log ends at `last` with
/// these epochs. Returns why not: the primary is behind the device.
pub fn judge(history: &[Epoch], last: u64, seq: u64, epoch: Option<u64>) -> Option<String> {
    if seq == 0 {
        return None; // it downloads anyway
    }
    if seq > last {
        return Some(format!(
            "this device applied the primaries' log up to position {seq}, but this primary's \
             log ends at {last}: the primary was restored from an older copy, or lost data"
        ));
    }
    let (Some(epoch), Some(&(oldest, _))) = (epoch, history.first()) else {
        return None; // nothing to compare: the position alone is all there is
    };
    let Some(i) = history.iter().position(|(id, _)| *id == epoch) else {
        if oldest != epoch && history.len() as i64 >= KEPT {
            return Some(format!(
                "this device's position ({seq}) is older than the oldest log epoch this \
                 primary keeps: it downloads again"
            ));
        }
        return Some(format!(
            "this device's position ({seq}) belongs to a history of the log this primary \
             does not have: the primary was restored from an older copy"
        ));
    };
    let next_first = history.get(i + 1).map(|(_, first)| *first);
    match next_first {
        Some(next) if seq >= next => Some(format!(
            "this device applied the primaries' log up to position {seq}, but this primary's \
             log went another way from position {next}: the primary was restored from an \
             older copy"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_within_its_epoch_goes_on() {
        let h = [(7, 1), (8, 50)];
        assert_eq!(judge(&h, 80, 30, Some(7)), None);
        assert_eq!(judge(&h, 80, 49, Some(7)), None);
        assert_eq!(judge(&h, 80, 80, Some(8)), None);
        assert_eq!(
            judge(&h, 80, 80, None),
            None,
            "an older device: position only"
        );
        assert_eq!(
            judge(&[], 80, 80, Some(3)),
            None,
            "a log with no epochs yet"
        );
        assert_eq!(
            judge(&h, 80, 0, Some(99)),
            None,
            "an empty device downloads"
        );
    }

    #[test]
    fn a_device_past_the_log_or_on_another_history_is_ahead() {
        let h = [(7, 1), (9, 40)];
        assert!(judge(&h, 80, 81, Some(9)).is_some(), "past the end");
        // A restored copy began epoch 9 at 40; the device saw 45 under the lost epoch 7.
        assert!(judge(&h, 80, 45, Some(7)).is_some());
        // The device's epoch 8 was in the lost future.
        assert!(judge(&h, 80, 45, Some(8)).is_some());
    }

    #[test]
    fn a_device_finds_the_epoch_of_its_position() {
        let h = [(7, 1), (9, 40)];
        assert_eq!(at(&h, 39), Some(7));
        assert_eq!(at(&h, 40), Some(9));
        assert_eq!(at(&[], 5), None);
        assert_eq!(from(&h, Some(9)), vec![(9, 40)]);
        assert_eq!(from(&h, Some(5)), h.to_vec());
        assert_eq!(from(&h, None), h.to_vec());
    }
}
