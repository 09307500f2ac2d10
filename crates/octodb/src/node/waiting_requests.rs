//! Requests that wait for the backend, decided by any primary whose process registered
//! callbacks (issue "Cluster", item 5). A request is recorded once, by the primary the node
//! reached (the leader), and reaches every primary with the authorization state. A primary
//! with a callback for its action asks it once; a follower sends the answer to the leader,
//! the leader records it, only while the request still waits: the first decision stands, and
//! it reaches every primary through the log. So requests carry over when leadership moves,
//! and where no process has callbacks they wait for `PRAGMA authorize_*` as before.

use super::members::Known;
use super::writer::{ask, Job};
use super::Shared;
use crate::auth::{self, Action, AuthRequest, Decision};
use crate::error::Result;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a primary with callbacks looks for requests to decide.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// How long a follower waits for its leader to record a decision.
const RECORD_WAIT_MAX: Duration = Duration::from_secs(10);

/// A request as the authorization state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Waiting {
    pubkey: String,
    /// As stored (`{"action": ..., "data": ...}`): a new request of the same key differs.
    request: String,
    info: String,
}

/// Keys whose request this process's session is putting to its callback right now (the
/// leader's live path, `admission::admit`): not asked twice.
#[derive(Default)]
pub(crate) struct Asking(std::sync::Mutex<HashSet<String>>);

impl Asking {
    /// Marks `key` as being asked until the returned guard drops.
    pub(super) fn begin<'a>(&'a self, key: &str) -> AskingGuard<'a> {
        self.lock().insert(key.to_string());
        AskingGuard {
            asking: self,
            key: key.to_string(),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.lock().contains(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) struct AskingGuard<'a> {
    asking: &'a Asking,
    key: String,
}

impl Drop for AskingGuard<'_> {
    fn drop(&mut self) {
        self.asking.lock().remove(&self.key);
    }
}

/// Runs for the life of a primary: decides waiting requests with this process's callbacks.
pub(super) async fn decide_with_callbacks(shared: Weak<Shared>) {
    // Requests put to the callback, with its answer while it is not recorded yet (the leader
    // was unreachable, an election was under way): recorded again, not asked again.
    let mut asked: HashMap<Waiting, Option<Decision>> = HashMap::new();
    let Some(mut stop) = shared.upgrade().map(|s| s.shutdown.subscribe()) else {
        return;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stop.changed() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !has_callbacks(&shared) || shared.cluster.get().is_none() {
            continue;
        }
        let waiting = match shared.read(read_waiting).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("cannot read the waiting requests: {e}");
                continue;
            }
        };
        asked.retain(|a, _| waiting.contains(a));
        for w in waiting {
            if shared.asking.contains(&w.pubkey) {
                continue;
            }
            let decision = match asked.get(&w) {
                Some(None) => continue, // answered, and recorded or left to a PRAGMA
                Some(Some(unrecorded)) => unrecorded.clone(),
                None => match ask_callback(&shared, &w).await {
                    Some(d) => d,
                    None => continue,
                },
            };
            if decision == Decision::Pending {
                asked.insert(w, None);
                continue;
            }
            match record(&shared, w.pubkey.clone(), decision.clone()).await {
                Ok(()) => {
                    asked.insert(w, None);
                }
                Err(e) => {
                    // Said once; retried quietly at every look.
                    match asked.contains_key(&w) {
                        false => tracing::info!(
                            "a decision on a waiting request is not recorded yet (tried again \
                             shortly): {e}"
                        ),
                        true => tracing::debug!("a decision is not recorded yet: {e}"),
                    }
                    asked.insert(w, Some(decision));
                }
            }
        }
    }
}

fn has_callbacks(shared: &Shared) -> bool {
    [Action::UserSignup, Action::UserLogin, Action::NewNode]
        .into_iter()
        .any(|a| shared.callbacks.get(a).is_some())
}

/// The requests waiting now (keys never approved hold negative ids: a search, not a scan).
fn read_waiting(c: &rusqlite::Connection) -> Result<Vec<Waiting>> {
    let mut stmt = c.prepare_cached(
        "SELECT pubkey, request, coalesce(info, '') FROM _octo_nodes
         WHERE node_id < 0 AND auth_state = 'pending' AND request IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Waiting {
            pubkey: r.get(0)?,
            request: r.get(1)?,
            info: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `w` put to this process's callback for its action; None without one.
async fn ask_callback(shared: &Shared, w: &Waiting) -> Option<Decision> {
    let stored: serde_json::Value = serde_json::from_str(&w.request).unwrap_or_default();
    let action = stored["action"].as_str().and_then(Action::from_name)?;
    let callback = shared.callbacks.get(action)?;
    let request = AuthRequest {
        action,
        data: stored["data"].as_str().map(str::to_string),
        pubkey: w.pubkey.clone(),
        node_info: w.info.clone(),
    };
    Some(
        tokio::task::spawn_blocking(move || auth::call(&callback, &request))
            .await
            .unwrap_or_else(|_| Decision::Reject("the backend failed to decide (error)".into())),
    )
}

/// Records `decision` on `pubkey` while its request waits: here when this primary leads,
/// else at the leader.
pub(super) async fn record(shared: &Arc<Shared>, pubkey: String, decision: Decision) -> Result<()> {
    let Some(proposer) = shared.cluster.get() else {
        return Err(crate::Error::rule("this primary is not in its cluster yet"));
    };
    if shared.cluster_view.borrow().leading {
        return ask(shared, |reply| Job::AuthDecide {
            pubkey,
            decision,
            known: Known::Pending,
            reply,
        })
        .await
        .map(drop);
    }
    use crate::cluster::forward::{DecisionScope, ForwardedDecision};
    let forwarded = ForwardedDecision {
        pubkey,
        decision,
        scope: DecisionScope::Pending,
    };
    proposer.forward_decision(forwarded, RECORD_WAIT_MAX).await
}
