//! The encrypted chunk stream of a [`super::SecureStream`] once its handshake is done.
//!
//! Each message travels as chunks `[len u16 BE][ciphertext]` whose plaintext is
//! `[flags][data]` (flags bit 0 = last chunk of the message). Nonces are implicit counters, so
//! a dropped, replayed or reordered chunk fails to decrypt.
//!
//! Memory: a primary holds tens of thousands of mostly idle connections, so buffers are taken
//! only while data moves and given back when a connection goes quiet. An idle connection holds
//! no buffer at all: it waits for readability before it needs one.

use super::transport::NetError;
use snow::StatelessTransportState;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Largest Noise message (and so largest chunk ciphertext).
pub(super) const NOISE_MAX: usize = 65535;
pub(super) const TAG_LEN: usize = 16;
/// Application bytes per chunk: a full Noise message minus the tag and the flags byte.
const CHUNK_DATA: usize = NOISE_MAX - TAG_LEN - 1;
const FLAG_LAST: u8 = 1;
/// Bytes asked of the socket per read when nothing bigger is known to be coming.
const READ_SIZE: usize = 16 * 1024;
/// Encrypted bytes gathered before they are written out even without a flush.
const WRITE_BATCH: usize = 256 * 1024;
/// Buffers this small are kept between messages; larger ones are given back when idle.
const KEEP: usize = 512;

/// When bytes last moved on a connection, in either direction: shared by its two halves, so
/// that a long upload (nothing to read meanwhile) does not count as silence.
#[derive(Debug)]
pub(super) struct Progress {
    since: std::time::Instant,
    /// Milliseconds after `since`.
    last: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub(super) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            since: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago bytes last moved.
    fn quiet_for(&self) -> std::time::Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.since
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }
}

fn noise_error(e: snow::Error) -> NetError {
    NetError::Noise(e.to_string())
}

/// The receiving half of a secure connection.
pub struct SecureReader {
    inner: OwnedReadHalf,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    pub(super) max_message: usize,
    /// Bytes read from the socket; `buf[start..]` is not consumed yet.
    buf: Vec<u8>,
    start: usize,
    /// The message being reassembled.
    message: Vec<u8>,
    /// Skipping the rest of a message already refused as too large.
    discarding: bool,
    /// Set after a fatal error: the chunk stream can no longer be trusted.
    failed: Option<String>,
    /// With heartbeats: how long no byte may move (either way) before the connection counts
    /// as dead. Bytes, not messages: a large message on a slow link keeps it alive.
    idle_timeout: Option<std::time::Duration>,
    progress: Arc<Progress>,
}

impl SecureReader {
    /// Sets the largest message this reader takes from now on; returns the one it had.
    pub fn limit_message_size(&mut self, max: usize) -> usize {
        std::mem::replace(&mut self.max_message, max)
    }

    pub(super) fn new(
        inner: OwnedReadHalf,
        t: Arc<StatelessTransportState>,
        max: usize,
        progress: Arc<Progress>,
    ) -> Self {
        SecureReader {
            inner,
            transport: t,
            nonce: 0,
            max_message: max,
            buf: Vec::new(),
            start: 0,
            message: Vec::new(),
            discarding: false,
            failed: None,
            idle_timeout: None,
            progress,
        }
    }

    /// Whether the peer has already closed the connection (its end of stream is waiting to
    /// be read), seen without reading: a connection kept between requests whose peer went
    /// away is not worth sending on, and a request sent on it could not be told apart from
    /// one the peer received before it went.
    pub fn peer_closed(&self) -> bool {
        if self.start < self.buf.len() {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        matches!(
            self.inner.as_ref().poll_peek(&mut cx, &mut probe),
            std::task::Poll::Ready(Ok(0)) | std::task::Poll::Ready(Err(_))
        )
    }

    /// From now on, a silence of `after` (no byte received or sent) fails `recv` with
    /// [`NetError::Dead`]; `None` waits forever (a peer that sends no heartbeats).
    pub fn set_idle_timeout(&mut self, after: Option<std::time::Duration>) {
        self.idle_timeout = after;
    }

    /// Receives one whole message; `Err(NetError::Closed)` on a clean end of stream.
    ///
    /// Cancel-safe: if the future is dropped (e.g. in `tokio::select!`), partial data is kept
    /// and the next call continues. After [`NetError::TooLarge`] the rest of that message is
    /// skipped and the connection stays usable; after other errors every call fails.
    pub async fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        if let Some(reason) = &self.failed {
            return Err(NetError::Malformed(format!(
                "connection unusable after an earlier error: {reason}"
            )));
        }
        let result = self.recv_inner(false).await;
        if let Err(e) = &result {
            if !matches!(e, NetError::TooLarge { .. } | NetError::Closed) {
                self.failed = Some(e.to_string());
            }
        }
        result
    }

    /// After [`NetError::TooLarge`]: reads and drops the rest of that message, and nothing
    /// after it (a refusal sent meanwhile then reaches the peer, not a reset of the
    /// connection that unread data would cause at its close).
    pub async fn skip_rest_of_refused(&mut self) -> Result<(), NetError> {
        if !self.discarding {
            return Ok(());
        }
        self.recv_inner(true).await.map(drop)
    }

    /// With `skip_only`, returns (an empty message) once the message being skipped is.
    async fn recv_inner(&mut self, skip_only: bool) -> Result<Vec<u8>, NetError> {
        loop {
            let len = self.next_chunk_len().await?;
            let from = self.start + 2;
            self.start = from + len;
            let plain_len = len - TAG_LEN;
            let at = self.message.len();
            let fits = !self.discarding && at + plain_len - 1 <= self.max_message;
            let (flags, size) = if fits {
                if at + plain_len > self.message.capacity() {
                    // Grow geometrically, but never beyond the limit.
                    let want =
                        (self.message.capacity() * 2).clamp(at + plain_len, self.max_message + 1);
                    self.message.reserve_exact(want - at);
                }
                // Decrypt straight into the message, then drop the flags byte before the data.
                self.message.resize(at + plain_len, 0);
                let mut message = std::mem::take(&mut self.message);
                let decrypted = self.decrypt(from, len, &mut message[at..]);
                self.message = message;
                let n = decrypted?;
                let flags = self.message[at];
                self.message.copy_within(at + 1..at + n, at);
                self.message.truncate(at + n - 1);
                (flags, at + n - 1)
            } else {
                // Decrypted all the same, to keep the nonces in step with the sender.
                let mut scratch = vec![0u8; plain_len];
                let n = self.decrypt(from, len, &mut scratch)?;
                (scratch[0], at + n - 1)
            };
            if flags & !FLAG_LAST != 0 {
                return Err(NetError::Malformed(format!(
                    "invalid chunk flags {flags}: the peer speaks another protocol version"
                )));
            }
            let last = flags & FLAG_LAST != 0;
            if self.discarding {
                self.discarding = !last;
                if skip_only && last {
                    return Ok(Vec::new());
                }
                continue;
            }
            if !fits {
                self.message = Vec::new();
                self.discarding = !last;
                self.give_back_if_idle();
                return Err(NetError::TooLarge {
                    size,
                    max: self.max_message,
                });
            }
            if last {
                self.give_back_if_idle();
                return Ok(std::mem::take(&mut self.message));
            }
        }
    }

    fn decrypt(&mut self, from: usize, len: usize, out: &mut [u8]) -> Result<usize, NetError> {
        let n = self
            .transport
            .read_message(self.nonce, &self.buf[from..from + len], out)
            .map_err(|e| {
                NetError::Noise(format!(
                    "a chunk failed to decrypt ({e}): data was corrupted, replayed or \
                     reordered in transit"
                ))
            })?;
        self.nonce += 1; // cannot overflow: snow refuses the last nonce value
        if n == 0 {
            return Err(NetError::Malformed("chunk without its flags byte".into()));
        }
        Ok(n)
    }

    /// Waits until a whole chunk is buffered at `self.start`; returns its ciphertext length.
    async fn next_chunk_len(&mut self) -> Result<usize, NetError> {
        loop {
            let have = self.buf.len() - self.start;
            if have >= 2 {
                let len = usize::from(u16::from_be_bytes([
                    self.buf[self.start],
                    self.buf[self.start + 1],
                ]));
                if len <= TAG_LEN {
                    return Err(NetError::Malformed(format!(
                        "chunk of {len} bytes is shorter than its authentication tag"
                    )));
                }
                if have >= 2 + len {
                    return Ok(len);
                }
                self.fill(2 + len - have).await?;
            } else {
                self.fill(2 - have).await?;
            }
        }
    }

    /// Reads at least one more byte (asking for `want` or more) into the buffer. Cancel-safe:
    /// it waits for readability with no buffer held, then reads without waiting.
    async fn fill(&mut self, want: usize) -> Result<(), NetError> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.buf.len() + want > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        loop {
            self.wait_readable().await?;
            self.buf.reserve(want.max(READ_SIZE));
            match self.inner.try_read_buf(&mut self.buf) {
                Ok(0) => {
                    let clean =
                        self.buf.len() == self.start && self.message.is_empty() && !self.discarding;
                    return Err(if clean {
                        NetError::Closed
                    } else {
                        NetError::Io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "peer closed the connection in the middle of a message",
                        ))
                    });
                }
                Ok(_) => {
                    self.progress.touch();
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Until the socket is readable; with an idle timeout, fails once no byte has moved either
    /// way for that long.
    async fn wait_readable(&mut self) -> Result<(), NetError> {
        let Some(after) = self.idle_timeout else {
            return Ok(self.inner.readable().await?);
        };
        loop {
            let left = after.saturating_sub(self.progress.quiet_for());
            if left.is_zero() {
                return Err(NetError::Dead(after));
            }
            if let Ok(ready) = tokio::time::timeout(left, self.inner.readable()).await {
                return Ok(ready?);
            }
        }
    }

    /// Between messages with nothing buffered, hold no large buffer.
    fn give_back_if_idle(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP {
                self.buf = Vec::new();
            }
        }
    }
}

/// The sending half of a secure connection.
pub struct SecureWriter {
    inner: OwnedWriteHalf,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    /// One chunk's plaintext, `[flags][data]`.
    plain: Vec<u8>,
    /// Encrypted chunks not yet written; `out[written..]` is still to go.
    out: Vec<u8>,
    written: usize,
    /// True while a `send` is in progress; still true afterwards if it was cancelled midway,
    /// in which case the peer holds a partial chunk and the stream cannot continue.
    sending: bool,
    progress: Arc<Progress>,
}

impl SecureWriter {
    pub(super) fn new(
        inner: OwnedWriteHalf,
        transport: Arc<StatelessTransportState>,
        progress: Arc<Progress>,
    ) -> Self {
        SecureWriter {
            inner,
            transport,
            nonce: 0,
            plain: Vec::new(),
            out: Vec::new(),
            written: 0,
            sending: false,
            progress,
        }
    }

    /// Queues one message (any size; the receiver enforces its own `max_message`). Data is
    /// buffered: call [`SecureWriter::flush`] to send it. Not cancel-safe: if the future is
    /// dropped midway, later sends fail and the connection must be dropped.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), NetError> {
        if self.sending {
            return Err(NetError::Malformed(
                "an earlier send failed or was interrupted; the connection must be re-established"
                    .into(),
            ));
        }
        self.sending = true;
        let count = msg.len().div_ceil(CHUNK_DATA).max(1);
        for (i, data) in msg
            .chunks(CHUNK_DATA)
            .chain(msg.is_empty().then_some(msg))
            .enumerate()
        {
            let flags = if i + 1 == count { FLAG_LAST } else { 0 };
            self.plain.clear();
            self.plain.push(flags);
            self.plain.extend_from_slice(data);
            let at = self.out.len();
            self.out.resize(at + 2 + self.plain.len() + TAG_LEN, 0);
            let n = self
                .transport
                .write_message(self.nonce, &self.plain, &mut self.out[at + 2..])
                .map_err(noise_error)?;
            self.nonce += 1; // cannot overflow: snow refuses the last nonce value
            self.out.truncate(at + 2 + n);
            self.out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
            if self.out.len() - self.written >= WRITE_BATCH {
                self.write_out().await?;
            }
        }
        if self.plain.capacity() > KEEP {
            self.plain = Vec::new();
        }
        self.sending = false;
        Ok(())
    }

    /// Sends everything queued by [`SecureWriter::send`].
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.write_out().await?;
        Ok(self.inner.flush().await?)
    }

    /// Writes the queued chunks; cancel-safe (progress is kept in `written`).
    async fn write_out(&mut self) -> Result<(), NetError> {
        while self.written < self.out.len() {
            let n = match self.inner.try_write(&self.out[self.written..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.inner.writable().await?;
                    // The send buffer had filled and has room again: the peer acknowledged
                    // bytes, so the path works (a write that just lands in the buffer proves
                    // nothing: a dead path takes those too).
                    self.progress.touch();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(NetError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > KEEP {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Flushes and closes the sending direction; the peer's `recv` then returns `Closed`.
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        self.write_out().await?;
        Ok(self.inner.shutdown().await?)
    }
}
