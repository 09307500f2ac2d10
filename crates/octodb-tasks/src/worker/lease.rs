//! The lease keeper: renews the leases of the tasks running in this process.

use super::*;

pub(super) fn keeper(shared: &Shared) {
    let Some(conn) = open(shared) else { return };
    let every = (shared.config.lease / 3).max(Duration::from_millis(50));
    while !shared.stopping() {
        shared.wake.sleep(every, &shared.stopping);
        let running: Vec<(i64, i64, String, Arc<AtomicBool>)> = shared
            .active()
            .iter()
            .map(|(id, a)| (*id, a.attempt, a.lease_id.clone(), a.lost.clone()))
            .collect();
        if running.is_empty() || !leads(&conn) {
            continue;
        }
        let until = now_ms() + shared.config.lease.as_millis() as i64;
        for (id, attempt, lease_id, lost) in running {
            let renewed = conn.execute(
                "UPDATE octo_tasks SET lease_until_ms = ?1 \
                 WHERE id = ?2 AND attempts = ?3 AND lease_id = ?4 AND state = 'running'",
                (until, id, attempt, lease_id.as_str()),
            );
            match renewed {
                // Zero rows also when the task ended here since the list was taken.
                Ok(0)
                    if shared
                        .active()
                        .get(&id)
                        .is_some_and(|a| a.lease_id == lease_id) =>
                {
                    tracing::warn!(
                        task = id,
                        attempt,
                        "lease lost: the task was taken over or deleted"
                    );
                    lost.store(true, Ordering::Release);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(task = id, "cannot renew the lease: {e}"),
            }
        }
    }
}
