//! Waiting for a node's events from synchronous code (an application thread, the Python
//! module), with a deadline, without an async runtime of one's own.

use crate::node::Event;
use std::time::Duration;
use tokio::sync::broadcast::{error::RecvError, Receiver};

/// What waiting for the next event gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Event(Event),
    /// Nothing happened within the timeout.
    Timeout,
    /// The receiver fell behind and `n` events were dropped: re-read `sync_status()`.
    Missed(u64),
    /// The node stopped; no event will come.
    Closed,
}

/// Wait up to `timeout` for the next event of `events` (from `Connection::subscribe`).
/// It blocks its thread (from async code, call it in `spawn_blocking`, or await `subscribe()`).
pub fn next_event(events: &mut Receiver<Event>, timeout: Duration) -> Next {
    crate::node::block_on(async {
        match tokio::time::timeout(timeout, events.recv()).await {
            Err(_) => Next::Timeout,
            Ok(Ok(e)) => Next::Event(e),
            Ok(Err(RecvError::Lagged(n))) => Next::Missed(n),
            Ok(Err(RecvError::Closed)) => Next::Closed,
        }
    })
}
