//! The console's listener. Each connection is a file descriptor of the primary's, which its
//! devices need too: a client that opened connections and sent nothing (or a request header a
//! byte at a time) held them for ever, and 20,000 of them kept new devices out. So the
//! console holds at most [`MAX_CONNECTIONS`] at once (more wait in the kernel's queue) and
//! closes one on which nothing was read or written for [`IDLE_LIMIT`]. A live page's event
//! stream writes a keep-alive every 15 s, so it stays.

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections the console serves at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection with nothing read or written for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// A TCP listener that keeps to [`MAX_CONNECTIONS`] and [`IDLE_LIMIT`].
pub struct Bounded {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle_limit: Duration,
}

impl Bounded {
    pub fn new(inner: TcpListener) -> Bounded {
        Bounded::with_limits(inner, MAX_CONNECTIONS, IDLE_LIMIT)
    }

    fn with_limits(inner: TcpListener, connections: usize, idle_limit: Duration) -> Bounded {
        Bounded {
            inner,
            slots: Arc::new(Semaphore::new(connections)),
            idle_limit,
        }
    }
}

impl Listener for Bounded {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            // A slot first: beyond the limit, clients wait to be accepted.
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                // The semaphore is never closed; were it, accept nothing more.
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => return (Guarded::new(stream, slot, self.idle_limit), addr),
                Err(e) => {
                    // Out of descriptors, most likely: try again shortly rather than spin.
                    tracing::warn!("the admin console cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The client's address, for the handlers (`ConnectInfo<ClientAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, Bounded>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, Bounded>) -> ClientAddr {
        ClientAddr(*stream.remote_addr())
    }
}

/// A connection that holds its slot while open and fails its next read or write once idle.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle_limit: Duration,
    idle: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, idle_limit: Duration) -> Guarded {
        Guarded {
            stream,
            _slot: slot,
            idle_limit,
            idle: Box::pin(tokio::time::sleep(idle_limit)),
        }
    }

    /// Progress was made: the idle time starts again.
    fn active(&mut self) {
        let next = Instant::now() + self.idle_limit;
        self.idle.as_mut().reset(next);
    }

    /// Nothing could be done now: fail once idle too long, else wait (woken by the timer too).
    fn idle_check<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the admin console closes connections idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                me.active();
                Poll::Ready(r)
            }
            Poll::Pending => me.idle_check(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                me.active();
                Poll::Ready(r)
            }
            Poll::Pending => me.idle_check(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn an_idle_connection_is_closed_and_frees_its_slot() {
        runtime().block_on(async {
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = tcp.local_addr().unwrap();
            let mut listener = Bounded::with_limits(tcp, 1, Duration::from_millis(200));
            // A client that sends half a request and then nothing.
            let mut slow = TcpStream::connect(addr).await.unwrap();
            slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let (mut served, _) = listener.accept().await;
            let mut buf = [0u8; 64];
            assert!(
                served.read(&mut buf).await.unwrap() > 0,
                "what it sent is read"
            );
            let err = served.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            // The only slot was taken: the next client is accepted once the first goes.
            let _next = TcpStream::connect(addr).await.unwrap();
            let waiting = tokio::time::timeout(Duration::from_millis(50), listener.accept());
            assert!(waiting.await.is_err(), "no slot while the first is open");
            drop(served);
            let (mut next, _) = listener.accept().await;
            drop(slow);
            let _ = next.write_all(b"ok").await;
        });
    }
}
