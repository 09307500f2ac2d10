//! Claiming: the waiting tasks examined in priority order (signature, signer, policy,
//! expiry, nonce), refused or cancelled when they must be, claimed with a lease otherwise.

use super::*;

/// Clock difference tolerated between a submitter and the primary judging its record.
pub(super) const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Attempts a task may lose to dying workers (lease ran out) beyond its retries, so a task
/// that kills its worker every time does not run for ever.
pub(super) const LOST_ATTEMPTS_ALLOWED: i64 = 2;

/// A task claimed by this worker.
pub(super) struct Job {
    pub(super) id: i64,
    pub(super) attempt: i64,
    pub(super) lease_id: String,
    pub(super) task_type: String,
    pub(super) args: String,
    pub(super) submitter: PublicKey,
    pub(super) nonce: Vec<u8>,
    /// The node that signed it, as checked at this claim.
    pub(super) signer: Signer,
}

/// This primary, as a signer of its own tasks.
pub(super) struct Me {
    pub(super) node_id: u32,
    public_key: String,
}

impl Me {
    pub(super) fn of(conn: &Connection) -> Me {
        Me {
            node_id: conn.sync_status().map(|s| s.node_id).unwrap_or(0),
            public_key: conn.public_key(),
        }
    }
}

/// A waiting task's row, as read for examination.
pub(super) struct Candidate {
    pub(super) id: i64,
    pub(super) values: Vec<Value>,
    pub(super) attempts: i64,
    pub(super) origin: Option<Origin>,
}

pub(super) const CANDIDATE_SQL: &str = "
SELECT t.id, t.task_type, t.args, t.priority, t.not_before_ms, t.not_after_ms, t.submitter,
       t.nonce, t.created_at_ms, t.signature, t.cancel_signature, coalesce(t.attempts, 0),
       o.origin_node
FROM octo_tasks t LEFT JOIN private_octo_task_origins o ON o.task_id = t.id
WHERE (t.state IS NULL OR t.state = 'queued' OR (t.state = 'running' AND t.lease_until_ms < ?1))
  AND (t.next_try_ms IS NULL OR t.next_try_ms <= ?1)
  AND (t.not_before_ms IS NULL OR t.not_before_ms <= ?1 OR t.cancel_signature IS NOT NULL)
  AND t.task_type IN (SELECT value FROM json_each(?2))
ORDER BY t.priority DESC, t.id
LIMIT ?3";

/// Waiting tasks of types no worker here runs, with a cancel request: a waiting task is
/// cancelled whether or not any worker runs its type (one of a misspelt type would otherwise
/// wait until its expiry). Read apart from the candidates, so that such rows never take
/// their places.
const UNRUN_CANCELS_SQL: &str = "
SELECT t.id, t.task_type, t.args, t.priority, t.not_before_ms, t.not_after_ms, t.submitter,
       t.nonce, t.created_at_ms, t.signature, t.cancel_signature, coalesce(t.attempts, 0),
       o.origin_node
FROM octo_tasks t LEFT JOIN private_octo_task_origins o ON o.task_id = t.id
WHERE (t.state IS NULL OR t.state = 'queued') AND t.cancel_signature IS NOT NULL
  AND t.task_type NOT IN (SELECT value FROM json_each(?1))
ORDER BY t.id
LIMIT 16";

/// Ends the waiting tasks of [`UNRUN_CANCELS_SQL`] whose cancel request is their submitter's;
/// a request with a bad signature is dropped (it would be ignored by the workers of its type).
fn cancel_unrun(shared: &Shared, conn: &Connection, now: i64) -> Result<(), octodb::Error> {
    let rows = conn.query(UNRUN_CANCELS_SQL, [shared.registry.types_json()])?;
    for row in rows.iter() {
        let c = candidate_of(shared, &row)?;
        let Some(Origin::Node(_)) = c.origin else {
            continue;
        };
        let Ok((record, _, Some(cancel))) = record_of(&c) else {
            continue;
        };
        if verify_cancel(&record.submitter, c.id, &record.nonce, &cancel) {
            end(conn, &c, "cancelled", None, None, now)?;
        } else {
            tracing::warn!(
                task = c.id,
                "dropping a cancel request with a bad signature"
            );
            conn.execute(
                "UPDATE octo_tasks SET cancel_signature = NULL WHERE id = ?1",
                [c.id],
            )?;
        }
    }
    Ok(())
}

/// A candidate task from a row of [`CANDIDATE_SQL`] (or [`UNRUN_CANCELS_SQL`]).
fn candidate_of(shared: &Shared, row: &octodb::Row<'_>) -> Result<Candidate, octodb::Error> {
    let id: i64 = row.get(0)?;
    let origin = row.get::<Option<i64>>(12)?.map(Origin::from_stored);
    Ok(Candidate {
        id,
        values: row.values().to_vec(),
        attempts: row.get(11)?,
        origin: origin.or_else(|| shared.intake().origins.get(&id).copied()),
    })
}

/// Examine the waiting tasks in priority order; refuse or cancel those that must be, and
/// claim the first that may run. One write transaction, so two workers never claim one task.
pub(super) fn claim(
    shared: &Shared,
    conn: &Connection,
    me: &Me,
    outcomes: &[Outcome],
    wanted: usize,
) -> Result<Vec<Job>, octodb::Error> {
    conn.execute("BEGIN IMMEDIATE", [])?;
    // The clock is read once the write lock is held: read before, a long wait for the lock
    // would give a lease that has already run out when it is written.
    let now = now_ms();
    let claimed = (|| -> Result<Vec<Job>, octodb::Error> {
        for o in outcomes {
            o.write(conn)?;
        }
        cancel_unrun(shared, conn, now)?;
        let mut jobs = Vec::new();
        if wanted == 0 {
            return Ok(jobs);
        }
        // Where the feed stood before the rows are read: an intake that has read that far
        // has noted the inserts of every row read below but the newest.
        let feed = conn.feed_position();
        let rows = conn.query(
            CANDIDATE_SQL,
            (now, shared.registry.types_json(), (wanted + 16) as i64),
        )?;
        if rows.is_empty() {
            return Ok(jobs);
        }
        let nodes = conn.nodes()?;
        for row in rows.iter() {
            let candidate = candidate_of(shared, &row)?;
            if candidate.origin.is_none() && shared.intake().up_to < feed {
                // The intake is still reading the feed (at start, or behind): claiming the
                // tasks after this one would pass over its priority. It wakes us when done.
                break;
            }
            if let Some(job) = examine(shared, conn, me, &nodes, &candidate, now)? {
                jobs.push(job);
                if jobs.len() == wanted {
                    break;
                }
            }
        }
        Ok(jobs)
    })();
    match claimed {
        Ok(jobs) => {
            conn.execute("COMMIT", [])?;
            Ok(jobs)
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK", []);
            Err(e)
        }
    }
}

/// Why a task may not run: one of the reasons the issue names, and the detail.
pub(super) struct Refusal {
    pub(super) reason: &'static str,
    pub(super) detail: String,
}

pub(super) fn refusal(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// The signed record of a candidate row; any value of the wrong type is a bad record.
/// A row's signed record, its signature and its cancel request (if any).
pub(super) type StoredRecord = (TaskRecord, Vec<u8>, Option<Vec<u8>>);

pub(super) fn record_of(c: &Candidate) -> Result<StoredRecord, Refusal> {
    let bad = |what: &str| refusal("bad signature", format!("the stored {what} is malformed"));
    let text = |i: usize, what: &str| match &c.values[i] {
        Value::Text(s) => Ok(s.clone()),
        _ => Err(bad(what)),
    };
    let int = |i: usize, what: &str| match &c.values[i] {
        Value::Integer(n) => Ok(*n),
        _ => Err(bad(what)),
    };
    let blob = |i: usize, what: &str| match &c.values[i] {
        Value::Blob(b) => Ok(b.clone()),
        _ => Err(bad(what)),
    };
    let submitter = PublicKey::from_hex(&text(6, "submitter key")?).map_err(|e| {
        refusal(
            "bad signature",
            format!("the submitter key is not valid: {e}"),
        )
    })?;
    let nonce: [u8; 16] = blob(7, "nonce")?
        .try_into()
        .map_err(|_| bad("nonce (not 16 bytes)"))?;
    let not_before_ms = match &c.values[4] {
        Value::Null => None,
        Value::Integer(n) => Some(*n),
        _ => return Err(bad("not-before time")),
    };
    let cancel = match &c.values[10] {
        Value::Blob(b) => Some(b.clone()),
        _ => None,
    };
    Ok((
        TaskRecord {
            task_type: text(1, "task type")?,
            args: text(2, "arguments")?,
            priority: int(3, "priority")?,
            not_before_ms,
            not_after_ms: int(5, "expiry")?,
            submitter,
            nonce,
            created_at_ms: int(8, "creation time")?,
        },
        blob(9, "signature")?,
        cancel,
    ))
}

/// Checks everything but the nonce: signature, signer (the inserting node, approved, allowed
/// by the policy), expiry judged by this primary's clock.
pub(super) fn check(
    policy: &Policy,
    me: &Me,
    nodes: &[octodb::NodeRecord],
    record: &TaskRecord,
    signature: &[u8],
    origin: u32,
    now: i64,
) -> Result<Signer, Refusal> {
    record
        .verify(signature)
        .map_err(|e| refusal("bad signature", e.to_string()))?;
    let signer_hex = record.submitter.to_hex();
    let inserter = if origin == me.node_id {
        Some(me.public_key.clone())
    } else {
        nodes
            .iter()
            .find(|n| n.node_id == origin)
            .map(|n| n.public_key.to_lowercase())
    };
    if inserter.as_deref() != Some(signer_hex.as_str()) {
        return Err(refusal(
            "signer not allowed",
            format!("the row was inserted by node {origin}, not by the node that signed it"),
        ));
    }
    let signer = if signer_hex == me.public_key {
        Signer {
            public_key: signer_hex,
            node_id: me.node_id,
            node_type: "primary".into(),
            user_id: None,
        }
    } else {
        let Some(node) = nodes
            .iter()
            .find(|n| n.public_key.eq_ignore_ascii_case(&signer_hex))
            .filter(|n| n.auth_state == "approved")
        else {
            return Err(refusal(
                "signer not allowed",
                "the signer is not an approved node",
            ));
        };
        Signer {
            public_key: signer_hex,
            node_id: node.node_id,
            node_type: node.node_type.clone(),
            user_id: node.user_id,
        }
    };
    if !policy.allows(&signer, &record.task_type) {
        return Err(refusal(
            "signer not allowed",
            format!(
                "the policy does not let this node submit `{}`",
                record.task_type
            ),
        ));
    }
    if record.not_after_ms < now {
        // Both clocks' readings: a task that arrives already expired is most often one
        // whose submitter's clock is behind (a phone set hours back: the walkthrough read only
        // "not started before its expiry", which blamed the queue).
        return Err(refusal(
            "expired",
            format!(
                "not started before its expiry: it expired {} ago by this primary's clock, and \
                 its creation time, set by its submitter's clock, is {} before this primary's \
                 now; if it was submitted just now, the submitting node's clock is behind",
                minutes_and_seconds(now - record.not_after_ms),
                minutes_and_seconds(now - record.created_at_ms),
            ),
        ));
    }
    let cap = crate::client::MAX_EXPIRY.as_millis() as i64;
    if record.not_after_ms > now + cap + CLOCK_SKEW_MS {
        return Err(refusal("expired", "its expiry lies beyond the 7-day cap"));
    }
    if record.created_at_ms > now + CLOCK_SKEW_MS {
        return Err(refusal(
            "expired",
            "created in the future (clock skew beyond 5 minutes)",
        ));
    }
    Ok(signer)
}

/// A span of milliseconds for people: `2 h 5 min`, `3 min 20 s`, `12 s`.
fn minutes_and_seconds(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec} s"),
        (0, min, sec) => format!("{min} min {sec} s"),
        (h, min, _) => format!("{h} h {min} min"),
    }
}

/// Decide about one candidate inside the claim transaction: `Some(job)` when claimed.
pub(super) fn examine(
    shared: &Shared,
    conn: &Connection,
    me: &Me,
    nodes: &[octodb::NodeRecord],
    c: &Candidate,
    now: i64,
) -> Result<Option<Job>, octodb::Error> {
    if shared.active().contains_key(&c.id) {
        // Running here, its lease late to be renewed (a starved keeper): not another attempt.
        return Ok(None);
    }
    let origin = match c.origin {
        Some(Origin::Node(node)) => Ok(node),
        Some(Origin::CutFromLog) => Err(refusal(
            "signer not allowed",
            "the log entry that inserted it was compacted (log_keep=) before the workers read \
             it, so the node that inserted it cannot be checked: submit the task again",
        )),
        // Its insert is newer than the feed position read before the rows: the intake notes
        // it and wakes us.
        None => return Ok(None),
    };
    let checked = origin.and_then(|origin| {
        let (record, signature, cancel) = record_of(c)?;
        let signer = check(&shared.policy, me, nodes, &record, &signature, origin, now)?;
        Ok((record, cancel, signer))
    });
    let (record, cancel, signer) = match checked {
        Ok(ok) => ok,
        // A task that has run before (a retry, or a takeover after a lost lease) whose expiry
        // passed meanwhile: it was not refused, it ran; it fails, saying why.
        Err(r) if r.reason == "expired" && c.attempts > 0 => {
            tracing::warn!(
                task = c.id,
                attempts = c.attempts,
                "task expired before its next attempt"
            );
            fail_expired(conn, c, now)?;
            return Ok(None);
        }
        Err(r) => {
            tracing::warn!(task = c.id, reason = r.reason, detail = %r.detail, "task refused");
            end(conn, c, "refused", Some(r.reason), Some(&r.detail), now)?;
            return Ok(None);
        }
    };
    if let Some(cancel) = cancel {
        if verify_cancel(&record.submitter, c.id, &record.nonce, &cancel) {
            end(conn, c, "cancelled", None, None, now)?;
            return Ok(None);
        }
        tracing::warn!(
            task = c.id,
            "ignoring a cancel request with a bad signature"
        );
    }
    // The nonce: the first task to show it owns it until its expiry. Its row is owned by
    // user 0, which no device has (0 asks the engine for a new user, it is never given):
    // the row replicates among the primaries only. ('*' would do for a `private_` table by
    // the SPEC, but the engine streams '*' rows of private tables to devices too, which skip
    // them: reported.)
    let first_use = conn.execute(
        "INSERT INTO private_octo_task_nonces(nonce, task_id, expires_ms, row_owner) \
         VALUES (?1, ?2, ?3, 0) ON CONFLICT(nonce) DO NOTHING",
        (record.nonce.to_vec(), c.id, record.not_after_ms),
    )? == 1;
    let owner: i64 = conn.query_row(
        "SELECT task_id FROM private_octo_task_nonces WHERE nonce = ?1",
        [record.nonce.to_vec()],
        |r| r.get(0),
    )?;
    // A task's first attempt is claimed in the transaction that records its nonce: a row
    // that never ran whose nonce is known already is a copy, even under the same id (the
    // row deleted, then inserted again).
    if owner != c.id || (!first_use && c.attempts == 0) {
        tracing::warn!(
            task = c.id,
            first = owner,
            "task refused: its nonce was used before"
        );
        end(
            conn,
            c,
            "refused",
            Some("replayed"),
            Some(&format!("its nonce was first used by task {owner}")),
            now,
        )?;
        return Ok(None);
    }
    let options = shared
        .registry
        .handlers
        .get(&record.task_type)
        .map(|(_, o)| o.clone())
        .unwrap_or_default();
    if c.attempts > i64::from(options.max_retries) + LOST_ATTEMPTS_ALLOWED {
        conn.execute(
            "UPDATE octo_tasks SET state = 'failed', error_type = 'WorkerLost', \
             error_message = 'its workers stopped without finishing it, attempt after attempt', \
             ended_at_ms = ?1, lease_id = NULL WHERE id = ?2 AND coalesce(attempts, 0) = ?3",
            (now, c.id, c.attempts),
        )?;
        return Ok(None);
    }
    let lease_id = {
        let mut b = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    };
    let attempt = c.attempts + 1;
    let claimed = conn.execute(
        "UPDATE octo_tasks SET state = 'running', attempts = ?1, lease_id = ?2, \
         lease_until_ms = ?3, worker = ?4, started_at_ms = coalesce(started_at_ms, ?5), \
         next_try_ms = NULL WHERE id = ?6 AND coalesce(attempts, 0) = ?7",
        (
            attempt,
            lease_id.as_str(),
            now + shared.config.lease.as_millis() as i64,
            shared.config.name.as_str(),
            now,
            c.id,
            c.attempts,
        ),
    )?;
    if claimed == 0 {
        return Ok(None);
    }
    Ok(Some(Job {
        id: c.id,
        attempt,
        lease_id,
        task_type: record.task_type,
        args: record.args,
        submitter: record.submitter,
        nonce: record.nonce.to_vec(),
        signer,
    }))
}

/// End a waiting task without running it.
/// The error type of a task whose expiry passed before its next attempt could start.
pub(super) const EXPIRED_ERROR: &str = "TaskExpired";

/// End a task that already ran as failed: its expiry passed before its next attempt.
fn fail_expired(conn: &Connection, c: &Candidate, now: i64) -> Result<(), octodb::Error> {
    conn.execute(
        "UPDATE octo_tasks SET state = 'failed', error_type = ?1, error_message = ?2, \
         ended_at_ms = ?3, lease_id = NULL WHERE id = ?4 AND coalesce(attempts, 0) = ?5",
        (
            EXPIRED_ERROR,
            format!(
                "its expiry passed before attempt {} could start",
                c.attempts + 1
            ),
            now,
            c.id,
            c.attempts,
        ),
    )?;
    Ok(())
}

pub(super) fn end(
    conn: &Connection,
    c: &Candidate,
    state: &str,
    reason: Option<&str>,
    detail: Option<&str>,
    now: i64,
) -> Result<(), octodb::Error> {
    conn.execute(
        "UPDATE octo_tasks SET state = ?1, reason = ?2, error_message = ?3, ended_at_ms = ?4, \
         lease_id = NULL WHERE id = ?5 AND coalesce(attempts, 0) = ?6",
        (state, reason, detail, now, c.id, c.attempts),
    )?;
    Ok(())
}
