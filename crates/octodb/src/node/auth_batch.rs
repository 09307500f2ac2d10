//! Primary: requests to join and the backend's decisions, recorded many to a commit. During a
//! sign-up storm (an app's launch, a primary's restart with requests waiting) each request is
//! two commits (the request, then the decision); alone they bounded sign-ups to what the disk
//! syncs per second.

use super::members::{self, Admission};
use super::shared_rows::{self, Touched};
use super::writer::Job;
use super::Shared;
use crate::error::{Error, Result};
use crate::store::exec;
use rusqlite::Connection;

/// Requests and decisions taken from the writer's queue at once, at most.
pub(super) const MAX_BATCH: usize = 256;

/// Whether `job` can join a batch of authorization records.
pub(super) fn is_auth_record(job: &Job) -> bool {
    matches!(
        job,
        Job::AuthRecord { .. } | Job::AuthDecide { .. } | Job::Presence { .. }
    )
}

enum Done {
    Recorded,
    Decided(Admission),
}

/// Records `jobs` (requests and decisions, in order) in one commit, each in its own savepoint
/// so that one failing does not undo the others; answers each once the commit is durable.
pub(super) fn run(conn: &Connection, shared: &Shared, jobs: Vec<Job>) {
    let mut outcomes: Vec<Result<Done>> = Vec::with_capacity(jobs.len());
    let touched: Vec<Touched> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::AuthRecord { pubkey, .. }
            | Job::AuthDecide { pubkey, .. }
            | Job::Presence { pubkey, .. } => Some(Touched::Key(pubkey.clone())),
            _ => None,
        })
        .collect();
    let committed = shared_rows::write_txn(conn, shared, &touched, |c| {
        for job in &jobs {
            exec(c, "SAVEPOINT auth_record")?;
            let outcome = record(c, shared, job);
            if outcome.is_err() {
                exec(c, "ROLLBACK TO auth_record")?;
            }
            exec(c, "RELEASE auth_record")?;
            outcomes.push(outcome);
        }
        Ok(())
    });
    // A failed commit fails every job, also those it did not reach.
    let failed = committed.err().map(|e| e.to_string());
    let mut outcomes = outcomes.into_iter();
    for job in jobs {
        let outcome = match (&failed, outcomes.next()) {
            (None, Some(outcome)) => outcome,
            (failed, _) => Err(Error::io(
                "committing authorization records",
                std::io::Error::other(failed.clone().unwrap_or_default()),
            )),
        };
        match (job, outcome) {
            (Job::AuthRecord { reply, .. } | Job::Presence { reply, .. }, outcome) => {
                let _ = reply.send(outcome.map(|_| ()));
            }
            (Job::AuthDecide { pubkey, reply, .. }, Ok(Done::Decided(admission))) => {
                if matches!(admission, Admission::Rejected(_)) {
                    shared.approval_withdrawn(&pubkey);
                }
                let _ = shared.auth_decided.send((pubkey, admission.clone()));
                let _ = reply.send(Ok(admission));
            }
            (Job::AuthDecide { reply, .. }, Err(e)) => {
                let _ = reply.send(Err(e));
            }
            (Job::AuthDecide { reply, .. }, Ok(Done::Recorded)) => {
                let _ = reply.send(Err(Error::rule("a decision was recorded as a request")));
            }
            _ => {}
        }
    }
}

fn record(c: &Connection, shared: &Shared, job: &Job) -> Result<Done> {
    match job {
        Job::AuthRecord {
            pubkey,
            address,
            info,
            action,
            data,
            ..
        } => {
            shared.approved.forget(pubkey);
            members::record_request(c, pubkey, address, info, *action, data.as_deref())
                .map(|()| Done::Recorded)
        }
        Job::AuthDecide {
            pubkey,
            decision,
            known,
            ..
        } => {
            shared.approved.forget(pubkey);
            members::decide(c, pubkey, decision, *known).map(Done::Decided)
        }
        Job::Presence {
            pubkey,
            address,
            info,
            ..
        } => members::record_presence(c, pubkey, address, info).map(|()| Done::Recorded),
        _ => Err(Error::rule("not an authorization record")),
    }
}
