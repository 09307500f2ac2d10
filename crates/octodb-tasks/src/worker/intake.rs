//! The intake: follows the change feed to note which node inserted each task's row and when
//! its submitter acknowledged the final state; housekeeping (expiry, retention, old nonces).

use super::*;

/// The intake's notes, written down together once a tick (one commit for many tasks rather
/// than one each); the origins are read from here meanwhile.
#[derive(Default)]
pub(super) struct IntakeBuffer {
    pub(super) origins: HashMap<i64, u32>,
    pub(super) notes: Vec<Note>,
    /// The feed position everything up to which is noted here or in the file.
    pub(super) up_to: u64,
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
    while !shared.stopping() {
        conn.wait_feed(position, shared.config.tick);
        match take_in(&conn, shared, position) {
            Ok((next, touched)) => {
                position = next;
                if touched {
                    shared.wake.bump();
                }
            }
            // Away for longer than the log keeps: what was cut is not read (tasks inserted
            // then have no known origin, and are not run: `claim::examine`).
            Err(octodb::Error::LogCompacted { start, .. }) => {
                tracing::warn!(
                    from = position,
                    to = start - 1,
                    "task intake: the log was compacted past its position; it reads on from its start"
                );
                position = start - 1;
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

/// Entries the intake may read past without writing its position down: after a restart it
/// reads them again, harmlessly. (Writing it at every read would cost a commit for each.)
pub(super) const POSITION_SLACK: u64 = 10_000;

/// What the intake writes for one task change.
pub(super) enum Note {
    Origin { task: i64, node: u32, seq: u64 },
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
    let mut fresh: HashMap<i64, u32> = HashMap::new();
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
            fresh.insert(task, change.origin_node);
            notes.push(Note::Origin {
                task,
                node: change.origin_node,
                seq: change.seq,
            });
        }
        let seen_final = matches!(change.get("final_seen"), Some(v) if *v != Value::Null);
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
                Note::Origin { task, node, seq } => conn.execute(
                    "INSERT OR IGNORE INTO private_octo_task_origins(task_id, origin_node, seq) \
                     VALUES (?1, ?2, ?3)",
                    (task, i64::from(node), seq as i64),
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

/// Refuse expired tasks, delete ended ones past their retention, forget expired nonces.
pub(super) fn housekeeping(
    conn: &Connection,
    config: &WorkerConfig,
) -> Result<bool, octodb::Error> {
    let now = now_ms();
    let expired = conn.execute(
        "UPDATE octo_tasks SET state = 'refused', reason = 'expired', ended_at_ms = ?1, \
         error_message = 'not started before its expiry' \
         WHERE (state IS NULL OR state = 'queued') AND not_after_ms < ?1",
        [now],
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
