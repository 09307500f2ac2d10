//! The signed task queue of octodb (SPEC §9).
//!
//! A task is a row of the replicated table `octo_tasks`, inserted by the submitting node with
//! a record signed by that node's own key ([`record`]). The row reaches the primaries by the
//! ordinary sync; workers there ([`worker`]) check the signature, the signer, the nonce and
//! the expiry, claim the task with a lease, run the handler registered for its type and write
//! progress and the outcome back, fenced by (attempt, lease id). The row flows back to the
//! submitter's devices by its `row_owner`, where [`Task::join`] waits for it.
//!
//! ```no_run
//! # fn demo(conn: octodb::Connection) -> Result<(), octodb_tasks::TaskError> {
//! use octodb_tasks::{TaskQueue, SubmitOptions};
//! let queue = TaskQueue::new(conn);
//! let task = queue.start("add", serde_json::json!([1, 2]), SubmitOptions::default())?;
//! let sum = task.join(Some(std::time::Duration::from_secs(10)), |p| {
//!     println!("{:?} of {:?}", p.progress, p.total)
//! })?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod policy;
pub mod record;
pub mod schema;
pub mod worker;

pub use client::{Progress, State, SubmitOptions, Task, TaskInfo, TaskQueue};
pub use policy::{Policy, Signer};
pub use worker::{
    Handler, HandlerError, Registry, TaskContext, TypeOptions, WorkerConfig, Workers,
};

/// Why a task did not give a result, or why the queue could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Db(#[from] octodb::Error),
    /// The handler failed; its error's type name and message are kept.
    #[error("{type_name}: {message}")]
    Failed { type_name: String, message: String },
    /// A worker refused to run the task (bad signature, signer not allowed, replayed, expired).
    #[error("task refused: {reason}")]
    Refused { reason: String },
    #[error("task cancelled")]
    Cancelled,
    /// `join` waited for its whole timeout.
    #[error("the task did not end within {0:?}; join again to keep waiting, or cancel it")]
    Timeout(std::time::Duration),
    #[error("task {0} does not exist (deleted after its retention, or never submitted here)")]
    NotFound(i64),
    #[error("{0}")]
    Usage(String),
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
