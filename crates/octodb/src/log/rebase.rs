//! A device applying what the primaries send: rows nobody here is changing are written as they
//! come; rows with pending local work get the primaries' version as their base, and the pending
//! work is replayed on top. Accepted and rejected transactions leave the outbox here.

use super::digest::{self, TxnDigest};
use super::outbox::{self, RowImage};
use super::predict::Predictions;
use super::{EntryBody, LogEntry};
use crate::changes::{column_bit, ChangeSet, Op};
use crate::error::Result;
use crate::store::apply::{delete_row, write_row, HeldInserts, RowSql, Tables};
use crate::store::unique_holders::{self, is_constraint, is_unique_violation};
use crate::store::{renames, schema};
use crate::value::Value;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    pub accepted: Vec<u64>,
    pub rejected: Vec<(u64, String)>,
    pub rows: usize,
    pub last_seq: u64,
    pub schema_changed: bool,
}

pub(super) type RowKey = (String, i64);

/// What tells the decisions about this device's own transactions from decisions about a
/// copy's: two copies of one device file (a phone's backup restored onto a second phone while
/// the first goes on) hand out the same transaction ids for different work, and taking the
/// other copy's decision for its own would lose this copy's work without a word.
#[derive(Debug, Default)]
pub struct OwnWork {
    /// The digest of each decided transaction as the deciding primary received it, by id
    /// (protocol 8, `Message::OwnDigests`; none from older primaries, taken on trust).
    pub digests: HashMap<u64, TxnDigest>,
    /// The next transaction id this file hands out: no decision about it or a later id can be
    /// about this file's work.
    pub next_txn: u64,
}

impl OwnWork {
    /// Checks that the decision of transaction `txn`, whose pending work here was `ours`
    /// (empty: none was pending), is about that work.
    fn check(&self, txn: u64, ours: &ChangeSet) -> Result<()> {
        if txn >= self.next_txn {
            return Err(crate::Error::CopiedFile { txn });
        }
        match self.digests.get(&txn) {
            Some(decided) if !ours.is_empty() && digest::of(ours) != *decided => {
                Err(crate::Error::CopiedFile { txn })
            }
            _ => Ok(()),
        }
    }
}

/// Apply `entries` in order. Runs inside the caller's write transaction.
pub fn apply_entries(
    conn: &Connection,
    tables: &mut Tables,
    my_node: u32,
    own: &OwnWork,
    entries: &[LogEntry],
) -> Result<Applied> {
    let mut applied = Applied::default();
    let mut touched: BTreeSet<RowKey> = BTreeSet::new();
    let mut predictions = Predictions::default();
    let mut inserts = HeldInserts::new(conn);
    let mut kept_local = super::local_rows::KeptLocal::default();
    // Base rows are made only by this device's own commits, which wait for this transaction.
    let any_base: bool = conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM _octo_base)")?
        .query_row([], |r| r.get(0))?;
    for e in entries {
        applied.last_seq = applied.last_seq.max(e.seq);
        match &e.body {
            EntryBody::Changes(cs) => {
                let ours = if e.origin_node == my_node && e.origin_txn != 0 {
                    // Accepted: from here on the transaction is the primaries' history, no
                    // longer pending work to replay over what they send.
                    let ours = outbox::remove(conn, e.origin_txn)?;
                    own.check(e.origin_txn, &ours)?;
                    if !ours.is_empty() {
                        outbox::accepted::keep(conn, e.origin_txn, &ours)?;
                    }
                    applied.accepted.push(e.origin_txn);
                    predictions.accepted(&ours, cs);
                    Some(ours)
                } else {
                    None
                };
                let kept_as_sent = ours
                    .as_ref()
                    .is_some_and(|ours| same_rows_after(ours, cs))
                    .then_some(e.origin_txn as i64);
                // (Not after a schema statement of this batch: it may have dropped those rows
                // here, a table or a column, before the primaries applied the transaction.)
                if let Some(txn) = kept_as_sent.filter(|_| any_base && !applied.schema_changed) {
                    if settle_all_as_sent(conn, cs, txn)? {
                        for (tbl, rid) in cs.ops.iter().filter_map(|op| cs.row_of(op)) {
                            // (Rows an earlier entry of the batch touched are settled too.)
                            if !touched.is_empty() {
                                touched.remove(&(tbl.to_string(), rid));
                            }
                            applied.rows += 1;
                        }
                        continue;
                    }
                }
                // The rows of an accepted transaction are rebuilt from their base and the
                // pending work that remains, unless settled below.
                if let Some(ours) = &ours {
                    touched.extend(outbox::rows_of(ours).map(|(tbl, rid)| (tbl.to_string(), rid)));
                }
                let mut ctx = ChangeSetApply {
                    tables: &mut *tables,
                    inserts: &mut inserts,
                    any_base,
                    statements: HashMap::new(),
                    kept_as_sent,
                    ours: ours.as_ref(),
                    predictions: &mut predictions,
                    predicted: HashSet::new(),
                    kept_local: &mut kept_local,
                };
                for (i, op) in cs.ops.iter().enumerate() {
                    let later = &cs.ops[i + 1..];
                    apply_op(conn, &mut ctx, (cs, op, later), &mut touched, &mut applied)?;
                }
            }
            EntryBody::Rejected { reason } if e.origin_node == my_node => {
                applied.rejected.push((e.origin_txn, reason.clone()));
            }
            // (Epoch markers never reach devices.)
            EntryBody::Rejected { .. } | EntryBody::Epoch { .. } => {}
        }
    }
    super::local_rows::put_back(conn, kept_local)?;
    for (txn, _) in &applied.rejected {
        let taken_back = leave_outbox(conn, *txn, &mut touched)?;
        own.check(*txn, &taken_back)?;
        predictions.spoil_rows_of(&taken_back);
    }
    let mut replay = Replay {
        pending: PendingCache::default(),
        touched: touched.into_iter().collect(),
        aside: HashSet::new(),
    };
    for i in 0..replay.touched.len() {
        let (tbl, rid) = replay.touched[i].clone();
        // (A row stepped aside for a row replayed before it is rewritten, never assumed.)
        let stepped_aside = replay.aside.contains(&replay.touched[i]);
        if stepped_aside || !predictions.settle_if_predicted(conn, &tbl, rid)? {
            replay_row(conn, tables, &mut replay, i)?;
        }
    }
    if !applied.accepted.is_empty() || !applied.rejected.is_empty() {
        super::schema_moves::forget_renames_if_done(conn)?;
    }
    Ok(applied)
}

/// The rows rebuilt from their base and pending work at the end of a batch.
struct Replay {
    pending: PendingCache,
    /// In order: each row's turn comes once.
    touched: Vec<RowKey>,
    /// Rows taken out of their table for a row before them: rows trading unique values (a
    /// swap taken back) are rebuilt one at a time.
    aside: HashSet<RowKey>,
}

/// Remove transaction `txn` from the outbox and return it; the rows it changed are added to
/// `touched`, to be rebuilt from their base and the pending work that remains.
fn leave_outbox(conn: &Connection, txn: u64, touched: &mut BTreeSet<RowKey>) -> Result<ChangeSet> {
    let changes = outbox::remove(conn, txn)?;
    for (tbl, rid) in outbox::rows_of(&changes) {
        touched.insert((super::schema_moves::table_now(conn, tbl)?, rid));
    }
    Ok(changes)
}

/// What applying one change set needs besides the connection.
struct ChangeSetApply<'a, 'c> {
    tables: &'a mut Tables,
    inserts: &'a mut HeldInserts<'c>,
    /// Whether any row has pending local work (else no row needs the base check).
    any_base: bool,
    /// Statements per table header of the change set, looked up at its first row.
    statements: HashMap<u32, std::sync::Arc<RowSql>>,
    /// This device's own transaction, when the change set is what the primaries made of it.
    ours: Option<&'a ChangeSet>,
    /// That transaction's id, when the primaries left every row of it as the device sent it.
    kept_as_sent: Option<i64>,
    predictions: &'a mut Predictions,
    /// Rows whose base prediction this change set already advanced.
    predicted: HashSet<RowKey>,
    /// Local rows of the tables the batch's schema statements dropped, until its end.
    kept_local: &'a mut super::local_rows::KeptLocal,
}

/// Applies `op` of `cs`, before the ops `later` of the same transaction.
fn apply_op(
    conn: &Connection,
    ctx: &mut ChangeSetApply<'_, '_>,
    (cs, op, later): (&ChangeSet, &Op, &[Op]),
    touched: &mut BTreeSet<RowKey>,
    applied: &mut Applied,
) -> Result<()> {
    let Some((table, rowid, values)) = op.row() else {
        if let Op::Ddl { sql, .. } = op {
            apply_ddl(conn, ctx, sql)?;
            ctx.inserts.schema_changed();
            applied.schema_changed = true;
            if ctx.any_base {
                // A dropped table or column (or a table rebuilt under its name) may have taken
                // rows of pending work with it: each such row is rebuilt from its base and that
                // work at the end of the batch, as the primaries will see it.
                touched.extend(outbox::rows_with_base(conn)?);
            }
        }
        return Ok(());
    };
    let Some(h) = cs.header(table) else {
        return Ok(());
    };
    applied.rows += 1;
    // A row whose pending work has all been accepted (typically: this device's own
    // transaction coming back in the log) simply becomes what the primaries say it is.
    // Rows only the transaction the primaries kept as sent had changed since they last said
    // what it was: the row here is that base with those changes, as it is there.
    let as_sent = match ctx.kept_as_sent {
        Some(txn) if ctx.any_base => drop_base_of_only(conn, &h.name, rowid, txn)?,
        _ => false,
    };
    let settled = as_sent || (ctx.any_base && outbox::drop_base_if_settled(conn, &h.name, rowid)?);
    if settled {
        touched.remove(&(h.name.clone(), rowid));
        if as_sent && values.is_some() && !applied.schema_changed {
            return Ok(());
        }
    } else if ctx.any_base && has_base(conn, &h.name, rowid)? {
        match ctx.ours {
            // Once per row of the transaction, though the primaries may have changed it twice.
            Some(ours) if ctx.predicted.insert((h.name.clone(), rowid)) => {
                let key = (h.name.clone(), rowid);
                ctx.predictions.before_base_update(conn, key, ours)?;
            }
            Some(_) => {}
            None => ctx.predictions.spoil(&h.name, rowid),
        }
        let image = values.map(|v| {
            RowImage {
                columns: h.columns.clone(),
                values: v.to_vec(),
            }
            .encode()
        });
        conn.prepare_cached("UPDATE _octo_base SET row = ?3 WHERE tbl = ?1 AND rid = ?2")?
            .execute(params![h.name, rowid, image])?;
        touched.insert((h.name.clone(), rowid));
        return Ok(());
    }
    let Some(t) = ctx.tables.get(conn, &h.name)? else {
        tracing::warn!(table = %h.name, "change for a table this device does not have; skipped");
        return Ok(());
    };
    let sql = ctx
        .statements
        .entry(table)
        .or_insert_with(|| ctx.tables.statements(&t, &h.columns));
    let write = |ctx: &mut ChangeSetApply<'_, '_>, sql: &std::sync::Arc<RowSql>| match values {
        // A settled row is usually already as the primaries have it: write only a difference.
        Some(values) if settled => sql.make_equal(conn, rowid, values),
        // Rows from the primaries are usually new here: try the insert first.
        Some(values) => ctx
            .inserts
            .insert_or_update_keeping_local(sql, rowid, values),
        None => delete_row(conn, &t, rowid),
    };
    let sql = sql.clone();
    match (write(ctx, &sql), values) {
        (Err(e), Some(values)) if is_unique_violation(&e) => {
            // Another row holds one of its unique values: one the same transaction rewrites
            // later (rows that traded values), or one of this device's pending work.
            let for_later =
                unique_holders::aside_for_later(conn, &t, &h.columns, rowid, values, (cs, later))?;
            let pending = match ctx.any_base {
                true => super::unique_clash::step_aside(conn, &t, &h.columns, rowid, values)?,
                false => Vec::new(),
            };
            if !for_later && pending.is_empty() {
                return Err(refused_here(e, &h.name, rowid));
            }
            touched.extend(pending.into_iter().map(|rid| (h.name.clone(), rid)));
            write(ctx, &sql).map_err(|e| refused_here(e, &h.name, rowid))
        }
        (Err(e), _) if ctx.any_base && is_constraint(&e) => {
            // A rule of this file refuses the primaries' row while this device's pending work
            // is in place (an app's trigger counting a group's rows, a CHECK over another
            // table): the pending rows show the primaries' versions, as for a schema
            // statement's new constraint, and are rebuilt from their work at the end of the
            // batch, where work that still breaks the rule waits for the primaries' decision.
            // (The sync stopped here for good: that decision came later in the log.)
            tracing::warn!(
                table = %h.name,
                row = rowid,
                "a row from the primaries breaks a rule of this file ({e}) while this device's \
                 pending work is in place: it is written with that work as the primaries have it"
            );
            for key in super::unique_clash::show_primaries_versions(conn, ctx.tables)? {
                ctx.predictions.spoil(&key.0, key.1);
                touched.insert(key);
            }
            write(ctx, &sql).map_err(|e| refused_here(e, &h.name, rowid))
        }
        (written, _) => written.map_err(|e| refused_here(e, &h.name, rowid)),
    }
}

/// One of the primaries' schema statements. One adding a constraint that this device's pending
/// work breaks (a UNIQUE index over values its pending rows share with others) runs with those
/// rows as the primaries have them; they are rebuilt from that and their work at the end of
/// the batch, where work that still clashes waits for the primaries' decision.
fn apply_ddl(conn: &Connection, ctx: &mut ChangeSetApply<'_, '_>, sql: &str) -> Result<()> {
    let roots = match ctx.any_base {
        true => Some(super::schema_moves::before(conn)?),
        false => None,
    };
    super::local_rows::set_aside_before_drop(conn, sql, ctx.kept_local, || {
        schema::run_primaries_ddl(conn, sql)
    })?;
    // (Recorded so that pending work written under old names is replayed under the new ones.)
    renames::recording(conn, sql, || run_ddl(conn, ctx, sql))?;
    ctx.tables.schema_changed();
    if let Some(roots) = roots {
        for (tbl, rid) in super::schema_moves::after(conn, ctx.tables, roots)? {
            ctx.predictions.spoil(&tbl, rid);
        }
    }
    Ok(())
}

fn run_ddl(conn: &Connection, ctx: &mut ChangeSetApply<'_, '_>, sql: &str) -> Result<()> {
    match schema::run_primaries_ddl(conn, sql) {
        Err(e)
            if ctx.any_base
                && e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
        {
            tracing::warn!(
                "a schema statement of the primaries adds a constraint that this device's \
                 pending work breaks: it runs with those rows as the primaries have them, and \
                 the work that still clashes after it waits aside for their decision"
            );
            for (tbl, rid) in super::unique_clash::show_primaries_versions(conn, ctx.tables)? {
                ctx.predictions.spoil(&tbl, rid);
            }
            schema::apply_primaries_ddl(conn, sql)
        }
        ran => ran.map_err(|e| schema::ddl_refused(conn, sql, e)),
    }
}

/// A row from the primaries that this file refuses (a constraint of its own rows): the sync
/// stops here until the app resolves it, so the message names the row and what to do.
fn refused_here(e: crate::Error, table: &str, rowid: i64) -> crate::Error {
    match &e {
        crate::Error::Sqlite(se)
            if se.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
        {
            crate::Error::rule(format!(
                "row {rowid} of `{table}` from the primaries cannot be written here ({se}): a \
                 row only this device has (row_owner NULL) holds one of its unique values, or a \
                 trigger or constraint of this file refuses it; change or delete that row and \
                 sync resumes"
            ))
        }
        _ => e,
    }
}

/// Settles every row of `cs`, this device's transaction `txn` kept as sent, when `txn` alone
/// had changed each of them since the primaries last said what it was: their bases are deleted
/// by ranges of row ids, and nothing else is to do (see [`apply_op`]). Returns false, having
/// deleted nothing, when a table's rows are too scattered for ranges; false too when some row
/// had other pending work (its base stays, the bases deleted are gone, and [`apply_op`] then
/// takes each row in turn, writing those as the primaries have them, which they already are).
fn settle_all_as_sent(conn: &Connection, cs: &ChangeSet, txn: i64) -> Result<bool> {
    let mut rows: HashMap<&str, Vec<i64>> = HashMap::new();
    for (tbl, rid) in cs.ops.iter().filter_map(|op| cs.row_of(op)) {
        rows.entry(tbl).or_default().push(rid);
    }
    let mut ranges = Vec::with_capacity(rows.len());
    let mut expected = 0;
    for (tbl, mut rids) in rows {
        rids.sort_unstable();
        rids.dedup();
        let (Some(&first), Some(&last)) = (rids.first(), rids.last()) else {
            continue;
        };
        // A range may also hold rows of other transactions: those are read, not deleted.
        if last.saturating_sub(first) >= 4 * rids.len() as i64 {
            return Ok(false);
        }
        expected += rids.len();
        ranges.push((tbl, first, last));
    }
    let mut delete = conn.prepare_cached(
        "DELETE FROM _octo_base
         WHERE tbl = ?1 AND rid BETWEEN ?2 AND ?3 AND first_txn = ?4 AND last_txn = ?4",
    )?;
    let mut deleted = 0;
    for (tbl, first, last) in ranges {
        deleted += delete.execute(params![tbl, first, last, txn])?;
    }
    Ok(deleted == expected)
}

/// Deletes the base of a row that only transaction `txn` (which has left the outbox) changed;
/// returns whether it did.
fn drop_base_of_only(conn: &Connection, tbl: &str, rid: i64, txn: i64) -> Result<bool> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM _octo_base
             WHERE tbl = ?1 AND rid = ?2 AND first_txn = ?3 AND last_txn = ?3",
        )?
        .execute(params![tbl, rid, txn])?;
    Ok(deleted > 0)
}

/// Whether `theirs` leaves every row as `ours` does, op by op: the primaries applied the
/// device's transaction as it was sent (no trigger, conflict or rule of theirs changed it).
fn same_rows_after(ours: &ChangeSet, theirs: &ChangeSet) -> bool {
    ours.ops.len() == theirs.ops.len()
        && ours.ops.iter().zip(&theirs.ops).all(|(a, b)| {
            match (row_after(ours, a), row_after(theirs, b)) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        })
}

/// What `op` of `cs` leaves: the table's name and columns, the row id, and the row's values
/// (None when it deleted the row); None for a schema statement.
#[allow(clippy::type_complexity)]
fn row_after<'a>(
    cs: &'a ChangeSet,
    op: &'a Op,
) -> Option<(&'a str, &'a [String], i64, Option<&'a [Value]>)> {
    let (table, rowid, values) = op.row()?;
    let h = cs.header(table)?;
    Some((h.name.as_str(), h.columns.as_slice(), rowid, values))
}

pub(crate) fn has_base(conn: &Connection, tbl: &str, rid: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM _octo_base WHERE tbl = ?1 AND rid = ?2")?
        .query_row(params![tbl, rid], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Pending transactions decoded once per batch: a transaction of many rows is looked at once
/// per row it touched.
#[derive(Default)]
struct PendingCache(HashMap<u64, ChangeSet>);

impl PendingCache {
    /// Transaction `txn`, under the names the tables have now (work written before the
    /// primaries renamed a table or column it names).
    fn get(&mut self, conn: &Connection, tables: &mut Tables, txn: u64) -> Result<&ChangeSet> {
        Ok(match self.0.entry(txn) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let cs = outbox::pending_changes(conn, txn)?;
                e.insert(renames::under_current_names(conn, tables, &cs)?.unwrap_or(cs))
            }
        })
    }
}

/// Make the live row = its base with the remaining pending changes replayed on top.
fn replay_row(
    conn: &Connection,
    tables: &mut Tables,
    replay: &mut Replay,
    at: usize,
) -> Result<()> {
    let (tbl, rid) = (replay.touched[at].0.as_str(), replay.touched[at].1);
    let pending = &mut replay.pending;
    let Some(base) = outbox::base_of(conn, tbl, rid)? else {
        return Ok(());
    };
    let mut state = base.image;
    if let (Some(img), Some(t)) = (&mut state, tables.get(conn, tbl)?) {
        if let Some(columns) = renames::columns_under_current_names(conn, &t, &img.columns)? {
            img.columns = columns;
        }
    }
    let range = match (base.first, base.last) {
        (Some(f), Some(l)) => outbox::txns_in(conn, f as u64, l as u64)?,
        _ => Vec::new(),
    };
    let mut first_remaining = None;
    for txn in range {
        let cs = pending.get(conn, tables, txn)?;
        for op in &cs.ops {
            if cs.row_of(op) == Some((tbl, rid)) {
                first_remaining.get_or_insert(txn);
                state = fold(state, cs, op);
            }
        }
    }
    // Narrow the range to what is still pending, so the row settles when that is accepted.
    let first_remaining = first_remaining.map(|f| f as i64);
    if first_remaining.is_none() || first_remaining != base.first {
        outbox::narrow_base(conn, tbl, rid, first_remaining)?;
    }
    let Some(t) = tables.get(conn, tbl)? else {
        return Ok(());
    };
    let write = |state: &Option<RowImage>| match state {
        Some(img) => write_row(conn, &t, &img.columns, rid, &img.values),
        None => delete_row(conn, &t, rid),
    };
    let mut replayed = write(&state);
    if let (Err(e), Some(img)) = (&replayed, &state) {
        // Rows rebuilt after this one, with work pending, that hold its unique values (rows
        // that traded them, as a swap taken back): they step aside until their turn.
        if is_unique_violation(e) {
            let mut any = false;
            for holder in unique_holders::holders(conn, &t, &img.columns, rid, &img.values)? {
                let key = (tbl.to_string(), holder);
                let later = replay.touched[at + 1..].binary_search(&key).is_ok();
                if later && has_base(conn, tbl, holder)? {
                    delete_row(conn, &t, holder)?;
                    replay.aside.insert(key);
                    any = true;
                }
            }
            if any {
                replayed = write(&state);
            }
        }
    }
    match replayed {
        // The work clashes with what the primaries hold (a unique value they gave another row
        // first): until they decide it, the row shows their version, or is left out if they
        // do not have it (`unique_clash`). The work stays in the outbox.
        Err(e) if is_constraint(&e) => {
            tracing::warn!(
                table = tbl,
                row = rid,
                "this device's pending change clashes with the primaries' rows ({e}): the row \
                 shows their version until they decide the change"
            );
            let shown = match base_image(conn, tbl, rid)? {
                Some(img) => write_row(conn, &t, &img.columns, rid, &img.values),
                None => delete_row(conn, &t, rid),
            };
            shown.map_err(|e| refused_here(e, tbl, rid))
        }
        other => other,
    }
}

/// The primaries' version of a row with pending work here (None: they do not have it).
fn base_image(conn: &Connection, tbl: &str, rid: i64) -> Result<Option<RowImage>> {
    Ok(outbox::base_of(conn, tbl, rid)?.and_then(|b| b.image))
}

/// One pending change replayed over a row state.
pub(super) fn fold(state: Option<RowImage>, cs: &ChangeSet, op: &Op) -> Option<RowImage> {
    match op {
        Op::Insert { table, values, .. } | Op::Upsert { table, values, .. } => {
            cs.header(*table).map(|h| RowImage {
                columns: h.columns.clone(),
                values: values.clone(),
            })
        }
        Op::Update {
            table,
            changed,
            values,
            ..
        } => {
            let (mut img, h) = (state?, cs.header(*table)?);
            for (i, col) in h.columns.iter().enumerate() {
                if changed & column_bit(i) == 0 {
                    continue;
                }
                let v = values.get(i).cloned().unwrap_or(crate::value::Value::Null);
                match img.columns.iter().position(|c| c == col) {
                    Some(j) => img.values[j] = v,
                    None => {
                        img.columns.push(col.clone());
                        img.values.push(v);
                    }
                }
            }
            Some(img)
        }
        Op::Delete { .. } => None,
        Op::Ddl { .. } => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(body: &str) -> ChangeSet {
        let mut cs = ChangeSet::default();
        let t = cs.table_index("notes", &["body".to_string()]);
        cs.ops.push(Op::Insert {
            table: t,
            rowid: 1,
            values: vec![Value::Text(body.into())],
        });
        cs
    }

    fn copied(r: Result<()>) -> Option<u64> {
        match r {
            Err(crate::Error::CopiedFile { txn }) => Some(txn),
            _ => None,
        }
    }

    #[test]
    fn a_decision_about_a_copys_work_is_not_taken_for_this_files() {
        let own = OwnWork {
            digests: [
                (5, digest::of(&work("mine"))),
                (6, digest::of(&work("theirs"))),
            ]
            .into_iter()
            .collect(),
            next_txn: 8,
        };
        assert!(own.check(5, &work("mine")).is_ok());
        assert_eq!(copied(own.check(6, &work("mine"))), Some(6));
        // Nothing pending under the id: nothing of this file's to lose.
        assert!(own.check(6, &ChangeSet::default()).is_ok());
        // No digest (an older primary, a follower's entry): taken on trust.
        assert!(own.check(7, &work("mine")).is_ok());
        // An id this file has not handed out yet was sent by another copy.
        assert_eq!(copied(own.check(8, &ChangeSet::default())), Some(8));
    }
}
