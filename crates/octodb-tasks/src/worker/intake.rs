//! The intake: follows the change feed to note which node inserted each task's row and when
//! its submitter acknowledged the final state; housekeeping (expiry, retention, old nonces).

use super::*;

/// The intake's notes, written down together once a tick (one commit for many tasks rather
/// than one each); the origins are read from here meanwhile.
#[derive(Default)]
pub(super) struct IntakeBuffer {
    pub(super) origins: HashMap<i64, Origin>,
    pub(super) notes: Vec<Note>,
    /// The feed position everything up to which is noted here or in the file.
    pub(super) up_to: u64,
    /// Task types no worker here runs that a new task had, already said in the log.
    pub(super) unrun_types_said: HashSet<String>,
}

pub(super) fn intake(shared: &Shared, conn: Connection) {
    let mut position: u64 = conn
        .query_row(
            "SELECT position FROM private_octo_task_intake WHERE id = 1",
            [],
            |r| r.get::<i64>(0),
        )
        .map(|p| p.max(0) as u64)
        .unwrap_or(0);
    let mut stored = position;
    shared.intake().up_to = position;
    let mut last_housekeeping: Option<Instant> = None;
    let mut before_cut: Option<BeforeCut> = None;
    while !shared.stopping() {
        conn.wait_feed(position, shared.config.tick);
        match take_in(&conn, shared, position) {
            Ok((next, touched)) => {
                position = next;
                if touched {
                    shared.wake.bump();
                }
                if let Some(cut) = before_cut.take_if(|cut| position >= cut.last_seq) {
                    match note_cut_inserts(&conn, shared, cut) {
                        Ok(0) => {}
                        Ok(_) => shared.wake.bump(),
                        Err(e) => tracing::warn!("task intake cannot note the tasks whose insert was cut from the log: {e}"),
                    }
                }
            }
            // Away for longer than the log keeps: what was cut is not read. Tasks inserted
            // then can never have their inserting node checked; they are found (once the
            // intake has read what remains) and refused rather than left waiting.
            Err(octodb::Error::LogCompacted { start, .. }) => {
                tracing::warn!(
                    from = position,
                    to = start - 1,
                    "task intake: the log was compacted past its position; it reads on from its start"
                );
                match tasks_before_cut(&conn) {
                    Ok(cut) => before_cut = Some(cut),
                    Err(e) => tracing::warn!(
                        "task intake cannot list the tasks waiting across the cut: {e}"
                    ),
                }
                position = start - 1;
                shared.intake().up_to = position;
            }
            // Past the feed's end (a file restored from an older copy under a position kept
            // elsewhere): the entries after the end were lost, and new ones take their
            // numbers, so it reads on from the end.
            Err(octodb::Error::FeedAhead { after, end }) => {
                tracing::warn!(
                    from = after,
                    to = end,
                    "task intake: its position is past the change feed's end; it reads on from the end"
                );
                position = end;
                shared.intake().up_to = position;
            }
            Err(e) => tracing::warn!("task intake cannot read the change feed: {e}"),
        }
        let tick_due = last_housekeeping.is_none_or(|at| at.elapsed() >= shared.config.tick);
        let flush_due = tick_due || shared.intake().notes.len() >= FLUSH_NOTES;
        // A follower writes nothing: what it read stays in memory until it leads.
        let leading = flush_due && leads(&conn);
        if leading {
            if let Err(e) = write_down(&conn, shared, &mut stored) {
                tracing::debug!("the task intake cannot write its notes now: {e}");
            }
        }
        if tick_due {
            last_housekeeping = Some(Instant::now());
            let cleaned = if leading {
                housekeeping(&conn, &shared.config)
            } else {
                Ok(false)
            };
            match cleaned {
                Ok(true) => shared.wake.bump(),
                Ok(false) => {}
                Err(e) => tracing::debug!("task housekeeping skipped: {e}"),
            }
            // Timed events (leases out, retries due) need no feed change to be seen.
            shared.wake.bump();
        }
    }
    if let Err(e) = write_down(&conn, shared, &mut stored) {
        tracing::debug!("the task intake cannot write its notes: {e}");
    }
}

/// A new task of a type no worker registered here waits (until a worker of another primary
/// takes it, or its expiry): said once per type, so that a misspelt or forgotten type is not
/// silent.
fn say_if_unrun(shared: &Shared, task: i64, task_type: &str) {
    if shared.registry.runs(task_type) {
        return;
    }
    let mut buffer = shared.intake();
    if buffer.unrun_types_said.len() >= MAX_UNRUN_TYPES_SAID
        || !buffer.unrun_types_said.insert(task_type.to_string())
    {
        return;
    }
    tracing::warn!(
        task,
        task_type,
        registered = %shared.registry.type_list(),
        "a task of a type no worker on this primary runs: it waits until a worker that \
         registered the type claims it, or until it expires. Register a handler for the type, \
         or check its spelling (said once per type)"
    );
}

/// Unrun task types said at most (types come from the network).
const MAX_UNRUN_TYPES_SAID: usize = 256;

/// Entries the intake may read past without writing its position down: after a restart it
/// reads them again, harmlessly. (Writing it at every read would cost a commit for each.)
pub(super) const POSITION_SLACK: u64 = 10_000;

/// Who inserted a task's row, as the intake learnt it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    Node(u32),
    /// Its insert was compacted out of the log before the intake read it: nobody can tell
    /// which node inserted it, so it may not run (`claim::examine` refuses it).
    CutFromLog,
}

impl Origin {
    /// Node ids are never negative: -1 stands for [`Origin::CutFromLog`] in the table.
    const CUT_FROM_LOG: i64 = -1;

    pub(super) fn stored(self) -> i64 {
        match self {
            Origin::Node(node) => i64::from(node),
            Origin::CutFromLog => Self::CUT_FROM_LOG,
        }
    }

    pub(super) fn from_stored(value: i64) -> Origin {
        u32::try_from(value).map_or(Origin::CutFromLog, Origin::Node)
    }
}

/// What the intake writes for one task change.
pub(super) enum Note {
    Origin { task: i64, origin: Origin, seq: u64 },
    Acknowledged { task: i64 },
    Forget { task: i64 },
}

/// Notes past which the intake writes down before its tick.
pub(super) const FLUSH_NOTES: usize = 1024;

/// Read the feed after `position`: note each task row's inserting node and the submitter's
/// acknowledgements (in memory, see [`write_down`]). Returns the new position and whether any
/// task changed.
pub(super) fn take_in(
    conn: &Connection,
    shared: &Shared,
    position: u64,
) -> Result<(u64, bool), octodb::Error> {
    let batch = conn.changes_after(position, 512)?;
    if batch.up_to == position {
        return Ok((position, false));
    }
    let mut touched = false;
    let mut notes = Vec::new();
    let mut fresh: HashMap<i64, Origin> = HashMap::new();
    for change in batch
        .changes
        .iter()
        .filter(|c| c.table.eq_ignore_ascii_case(TASKS_TABLE))
    {
        touched = true;
        let task = change.rowid;
        if change.kind == ChangeKind::Delete {
            fresh.remove(&task);
            notes.push(Note::Forget { task });
            continue;
        }
        let buffered = fresh.contains_key(&task) || shared.intake().origins.contains_key(&task);
        let acked = if buffered {
            None
        } else {
            let known = conn.query(
                "SELECT acked_ms FROM private_octo_task_origins WHERE task_id = ?1",
                [task],
            )?;
            let acked = known.iter().next().map(|r| r.values()[0] != Value::Null);
            acked
        };
        if !buffered && acked.is_none() {
            // The first upsert of a row in the log is its insert.
            if let Some(Value::Text(task_type)) = change.get("task_type") {
                say_if_unrun(shared, task, task_type);
            }
            let origin = Origin::Node(change.origin_node);
            fresh.insert(task, origin);
            notes.push(Note::Origin {
                task,
                origin,
                seq: change.seq,
            });
        }
        if let Some(Value::Blob(cancel)) = change.get("cancel_signature") {
            flag_cancel(shared, task, cancel);
        }
        // Only an acknowledgement of this end starts the retention: `final_seen` holds the
        // end's time as the submitter saw it (`ended_at_ms` is set when, and only when, a task
        // ends; a value written earlier, at the insert say, acknowledges nothing).
        let seen_final = matches!(
            (change.get("final_seen"), change.get(END_COLUMN)),
            (Some(Value::Integer(seen)), Some(Value::Integer(end))) if seen == end
        );
        if seen_final && acked != Some(true) {
            notes.push(Note::Acknowledged { task });
        }
    }
    let mut buffer = shared.intake();
    for note in &notes {
        if let Note::Forget { task } = note {
            buffer.origins.remove(task);
        }
    }
    buffer.origins.extend(fresh);
    buffer.notes.extend(notes);
    buffer.up_to = batch.up_to;
    Ok((batch.up_to, touched))
}

/// A cancel request seen in the feed for a task running here: checked against the
/// submitter's key and raised for its handler's next report.
fn flag_cancel(shared: &Shared, task: i64, cancel: &[u8]) {
    let active = shared.active();
    // Every later write of the row carries the request again: checked once.
    let Some(run) = active
        .get(&task)
        .filter(|run| !run.cancelled.load(Ordering::Acquire))
    else {
        return;
    };
    if verify_cancel(&run.submitter, task, &run.nonce, cancel) {
        run.cancelled.store(true, Ordering::Release);
    } else {
        // (The claim warns of it; each progress write carries it again.)
        tracing::debug!(task, "ignoring a cancel request with a bad signature");
    }
}

/// Write the intake's notes and position down, in one transaction; nothing when there is
/// nothing new and the stored position lags by less than [`POSITION_SLACK`].
pub(super) fn write_down(
    conn: &Connection,
    shared: &Shared,
    stored: &mut u64,
) -> Result<(), octodb::Error> {
    let (notes, up_to) = {
        let mut buffer = shared.intake();
        if buffer.notes.is_empty() && buffer.up_to < stored.saturating_add(POSITION_SLACK) {
            return Ok(());
        }
        (std::mem::take(&mut buffer.notes), buffer.up_to)
    };
    let now = now_ms();
    let written = (|| -> Result<(), octodb::Error> {
        conn.execute("BEGIN IMMEDIATE", [])?;
        for note in &notes {
            match *note {
                Note::Origin { task, origin, seq } => conn.execute(
                    "INSERT OR IGNORE INTO private_octo_task_origins(task_id, origin_node, seq) \
                     VALUES (?1, ?2, ?3)",
                    (task, origin.stored(), seq as i64),
                )?,
                Note::Acknowledged { task } => conn.execute(
                    "UPDATE private_octo_task_origins SET acked_ms = ?1 \
                     WHERE task_id = ?2 AND acked_ms IS NULL",
                    (now, task),
                )?,
                Note::Forget { task } => conn.execute(
                    "DELETE FROM private_octo_task_origins WHERE task_id = ?1",
                    [task],
                )?,
            };
        }
        conn.execute(
            "INSERT OR REPLACE INTO private_octo_task_intake(id, position) VALUES (1, ?1)",
            [up_to as i64],
        )?;
        conn.execute("COMMIT", [])?;
        Ok(())
    })();
    let mut buffer = shared.intake();
    match written {
        Ok(()) => {
            for note in &notes {
                if let Note::Origin { task, .. } = note {
                    buffer.origins.remove(task);
                }
            }
            *stored = up_to;
            Ok(())
        }
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute("ROLLBACK", []);
            }
            // Keep them, in order, for the next try.
            let later = std::mem::replace(&mut buffer.notes, notes);
            buffer.notes.extend(later);
            Err(e)
        }
    }
}

/// The tasks in the table when the intake found the log cut past its position, and the log's
/// last entry then (read in one snapshot, so every one of those inserts is at or before it).
pub(super) struct BeforeCut {
    tasks: Vec<i64>,
    last_seq: u64,
}

fn tasks_before_cut(conn: &Connection) -> Result<BeforeCut, octodb::Error> {
    conn.execute("BEGIN", [])?;
    let read = (|| -> Result<BeforeCut, octodb::Error> {
        let rows = conn.query(
            "SELECT id FROM octo_tasks WHERE state IS NULL OR state IN ('queued', 'running')",
            [],
        )?;
        let tasks = rows
            .iter()
            .map(|r| r.get::<i64>(0))
            .collect::<Result<_, _>>()?;
        // The engine's log, read-only: the newest position whose rows this snapshot holds.
        let last_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM _octo_log", [], |r| {
                r.get(0)
            })?;
        Ok(BeforeCut {
            tasks,
            last_seq: last_seq.max(0) as u64,
        })
    })();
    let _ = conn.execute("COMMIT", []);
    read
}

/// Once the intake has read up to `cut.last_seq`: the listed tasks whose insert it did not
/// meet were inserted in the part of the log that was cut. Notes them so (the claim refuses
/// them with the reason) and returns how many.
fn note_cut_inserts(
    conn: &Connection,
    shared: &Shared,
    cut: BeforeCut,
) -> Result<usize, octodb::Error> {
    let mut orphans = Vec::new();
    for task in cut.tasks {
        if shared.intake().origins.contains_key(&task) {
            continue;
        }
        // Its origin noted (the table), or the task gone since: not an orphan.
        let settled: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM private_octo_task_origins WHERE task_id = ?1) \
                 OR NOT EXISTS (SELECT 1 FROM octo_tasks WHERE id = ?1)",
            [task],
            |r| r.get(0),
        )?;
        if !settled {
            orphans.push(task);
        }
    }
    if !orphans.is_empty() {
        tracing::warn!(
            tasks = ?orphans,
            "tasks inserted in the part of the log compacted before the workers read it: \
             their inserting node cannot be checked, so they are refused"
        );
    }
    let mut buffer = shared.intake();
    for &task in &orphans {
        buffer.origins.insert(task, Origin::CutFromLog);
        buffer.notes.push(Note::Origin {
            task,
            origin: Origin::CutFromLog,
            seq: 0,
        });
    }
    Ok(orphans.len())
}

/// Refuse expired tasks, delete ended ones past their retention, forget expired nonces.
pub(super) fn housekeeping(
    conn: &Connection,
    config: &WorkerConfig,
) -> Result<bool, octodb::Error> {
    let now = now_ms();
    // Never started: refused. Waiting for a retry (it ran before): failed.
    let expired = conn.execute(
        "UPDATE octo_tasks SET state = 'refused', reason = 'expired', ended_at_ms = ?1, \
         error_message = 'not started before its expiry (if it was submitted just now, the \
         submitting node''s clock is behind)' \
         WHERE (state IS NULL OR state = 'queued') AND coalesce(attempts, 0) = 0 \
           AND not_after_ms < ?1",
        [now],
    )? + conn.execute(
        "UPDATE octo_tasks SET state = 'failed', error_type = ?2, ended_at_ms = ?1, \
         error_message = 'its expiry passed before attempt ' || (attempts + 1) || ' could start' \
         WHERE state = 'queued' AND attempts > 0 AND not_after_ms < ?1",
        (now, EXPIRED_ERROR),
    )?;
    let retention = config.retention.as_millis() as i64;
    let cap = config.retention_cap.as_millis() as i64;
    let deleted = conn.execute(
        "DELETE FROM octo_tasks WHERE state IN ('done', 'failed', 'cancelled', 'refused') AND (
             ended_at_ms < ?1 - ?3
             OR id IN (SELECT task_id FROM private_octo_task_origins
                       WHERE acked_ms IS NOT NULL AND acked_ms <= ?1 - ?2)
             OR (row_owner = 0 AND ended_at_ms <= ?1 - ?2))",
        (now, retention, cap),
    )?;
    conn.execute(
        "DELETE FROM private_octo_task_nonces WHERE expires_ms < ?1",
        [now],
    )?;
    if deleted > 0 {
        tracing::debug!(deleted, "tasks deleted after their retention");
    }
    Ok(expired > 0)
}
