//! What the console remembers in memory: the actions taken (for the page and the log) and
//! the log position over the last minutes (for the chart).

use super::Console;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Actions the page lists.
const ACTIONS_KEPT: usize = 100;
/// Samples of the log position: one a second, ten minutes.
const SAMPLES_KEPT: usize = 600;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// An action taken through the console.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    pub at: f64,
    pub client: String,
    pub what: String,
    pub ok: bool,
}

/// The log position at a time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub at: f64,
    pub seq: u64,
}

#[derive(Default)]
pub struct Journal {
    actions: Mutex<VecDeque<ActionRecord>>,
    samples: Mutex<VecDeque<Sample>>,
}

impl Journal {
    /// Record (and log) an action by `client`.
    pub fn action(&self, client: std::net::SocketAddr, what: String, ok: bool) {
        let at = crate::node::unix_now();
        tracing::info!(%client, ok, "admin console action: {what}");
        let mut a = self.actions.lock().unwrap_or_else(|p| p.into_inner());
        if a.len() == ACTIONS_KEPT {
            a.pop_front();
        }
        a.push_back(ActionRecord {
            at,
            client: client.to_string(),
            what,
            ok,
        });
    }

    pub fn actions(&self) -> Vec<ActionRecord> {
        let a = self.actions.lock().unwrap_or_else(|p| p.into_inner());
        a.iter().rev().cloned().collect()
    }

    pub fn samples(&self) -> Vec<Sample> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.iter().copied().collect()
    }

    fn push(&self, sample: Sample) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() == SAMPLES_KEPT {
            s.pop_front();
        }
        s.push_back(sample);
    }
}

/// Note the log position every second, for the chart of commits per second.
pub async fn sample(console: Arc<Console>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    // Ends with the node: it holds the node's state, which must not outlive it.
    let mut stop = console.shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let seq = *console.shared.feed.borrow();
        console.journal.push(Sample {
            at: crate::node::unix_now(),
            seq,
        });
    }
}
