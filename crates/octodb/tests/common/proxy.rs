//! A TCP proxy the tests control, between nodes on loopback. It passes bytes; or swallows them
//! as a NAT or mobile network that silently stops passing a connection's packets does (the
//! connections stay open, nothing arrives; connections that were swallowed stay cut when it
//! passes again, as a lost NAT entry stays lost, while new ones pass); or resets every open
//! connection; or slows every read down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Swallow,
}

/// The mode, which generation of connections may pass (those accepted since the last switch
/// to passing), and how long each read is held back.
struct State {
    mode: Mode,
    generation: u64,
    delay: Duration,
    /// Each connection is closed once this many bytes passed it towards the client.
    cut_after: Option<usize>,
    /// The same, towards the server (a device's uploads).
    cut_upstream_after: Option<usize>,
}

pub struct Proxy {
    pub addr: String,
    state: Arc<Mutex<State>>,
    resets: tokio::sync::watch::Sender<u64>,
    /// Sides of connections that closed (read an end from a peer).
    ended: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Pass,
            generation: 0,
            delay: Duration::ZERO,
            cut_after: None,
            cut_upstream_after: None,
        }));
        let resets = tokio::sync::watch::channel(0u64).0;
        let ended = Arc::new(AtomicUsize::new(0));
        let (upstream, shared, reset_tx) = (upstream.to_string(), state.clone(), resets.clone());
        let ends = ended.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let generation = shared.lock().unwrap().generation;
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let link = Link {
                    state: shared.clone(),
                    generation,
                    ended: ends.clone(),
                };
                tokio::spawn(link.clone().pump(cr, sw, reset_tx.subscribe(), false));
                tokio::spawn(link.pump(sr, cw, reset_tx.subscribe(), true));
            }
        });
        Proxy {
            addr,
            state,
            resets,
            ended,
            _rt: rt,
        }
    }

    /// How many sides of connections have closed so far (a peer closed its socket).
    pub fn sides_closed(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    /// From now on, every connection's bytes are dropped in both directions.
    pub fn swallow(&self) {
        self.state.lock().unwrap().mode = Mode::Swallow;
    }

    /// New connections pass again; the ones open until now stay cut.
    pub fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.mode = Mode::Pass;
        state.generation += 1;
    }

    /// Every connection open now is reset (new ones are made as usual).
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Each read is held back this long before it is passed on (zero: at once).
    pub fn slow(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// From now on, each connection closes once `bytes` passed it towards the client (a link
    /// that drops every few megabytes).
    pub fn cut_after(&self, bytes: usize) {
        self.state.lock().unwrap().cut_after = Some(bytes);
    }

    /// From now on, each connection closes once `bytes` passed it towards the server (a
    /// device's upload over a link that drops every few megabytes).
    pub fn cut_upstream_after(&self, bytes: usize) {
        self.state.lock().unwrap().cut_upstream_after = Some(bytes);
    }
}

#[derive(Clone)]
struct Link {
    state: Arc<Mutex<State>>,
    generation: u64,
    ended: Arc<AtomicUsize>,
}

impl Link {
    /// Whether bytes pass now, and after what delay.
    fn passes(&self) -> Option<Duration> {
        let s = self.state.lock().unwrap();
        (s.mode == Mode::Pass && s.generation == self.generation).then_some(s.delay)
    }

    async fn pump(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut resets: tokio::sync::watch::Receiver<u64>,
        to_client: bool,
    ) {
        resets.mark_unchanged();
        let mut buf = vec![0u8; 64 * 1024];
        let mut passed = 0usize;
        loop {
            let read = tokio::select! {
                r = from.read(&mut buf) => r,
                // Both halves are dropped: the connection closes under the peers' feet.
                _ = resets.changed() => return,
            };
            if matches!(read, Ok(0) | Err(_)) {
                self.ended.fetch_add(1, Ordering::SeqCst);
            }
            let n = match read {
                Ok(0) | Err(_) if self.passes().is_some() => return,
                // A cut path carries no FIN or reset either: the other side keeps waiting.
                Ok(0) | Err(_) => {
                    let _ = resets.changed().await;
                    return;
                }
                Ok(n) => n,
            };
            let Some(delay) = self.passes() else { continue };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let cut_after = {
                let s = self.state.lock().unwrap();
                if to_client {
                    s.cut_after
                } else {
                    s.cut_upstream_after
                }
            };
            let n = match cut_after {
                Some(limit) => n.min(limit.saturating_sub(passed)),
                None => n,
            };
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
            passed += n;
            if cut_after.is_some_and(|limit| passed >= limit) {
                // The halves are dropped: the client reads the end of the connection.
                return;
            }
        }
    }
}
