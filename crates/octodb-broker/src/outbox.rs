//! One client session's outgoing frames, written in the order they were queued.
//!
//! Invalidations are queued by whoever announces them and written by the session's writing
//! task. A reply is queued by the thread that handled its request, which then writes the
//! queue itself when nobody else is writing: a call's reply goes out without waking another
//! thread (the single caller's round trip is made of such wake-ups). Whoever writes holds the
//! writer and takes frames from the front of the queue until it is empty, so frames leave in
//! queue order whichever thread writes them, and a reply still follows every invalidation
//! queued before it.

use octodb::net::{NetError, SecureWriter};
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Vec<u8>>>,
    writer: tokio::sync::Mutex<SecureWriter>,
    /// Rung when frames wait that nobody is writing.
    wake: Notify,
    /// Invalidations beyond this many waiting frames end the session (a client that falls
    /// this far behind reconnects and drops its cache, so it misses nothing).
    capacity: usize,
}

/// The queue is full: the client is too far behind.
pub(crate) struct Full;

impl Outbox {
    pub(crate) fn new(writer: SecureWriter, capacity: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            writer: tokio::sync::Mutex::new(writer),
            wake: Notify::new(),
            capacity,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an announcement for the writing task; never blocks.
    pub(crate) fn push(&self, frame: Vec<u8>) -> Result<(), Full> {
        {
            let mut queue = self.queue();
            if queue.len() >= self.capacity {
                return Err(Full);
            }
            queue.push_back(frame);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// From a thread outside the runtime (a request's handler): queues `frames` and writes
    /// everything waiting now if nobody is writing, else leaves it to the writer (told to
    /// look again, so that frames queued while it finished are not left behind). Replies are
    /// not bounded by `capacity`: a client has few requests in flight.
    pub(crate) fn send_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        frames: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<(), NetError> {
        self.queue().extend(frames);
        match self.writer.try_lock() {
            Ok(mut writer) => runtime.block_on(self.write_waiting(&mut writer)),
            Err(_) => {
                self.wake.notify_one();
                Ok(())
            }
        }
    }

    /// The session's writing task: writes what waits whenever it is rung, until writing fails.
    pub(crate) async fn run_writer(&self) -> Result<(), NetError> {
        loop {
            self.wake.notified().await;
            let mut writer = self.writer.lock().await;
            self.write_waiting(&mut writer).await?;
        }
    }

    async fn write_waiting(&self, writer: &mut SecureWriter) -> Result<(), NetError> {
        loop {
            let next = self.queue().pop_front();
            match next {
                Some(frame) => writer.send(&frame).await?,
                None => return writer.flush().await,
            }
        }
    }
}
