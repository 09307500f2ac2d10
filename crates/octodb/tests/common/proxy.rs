//! A TCP proxy the tests control, between nodes on loopback: it passes bytes, or swallows
//! them as a NAT or mobile network that silently stops passing a connection's packets does
//! (the connections stay open, nothing arrives). Connections that were swallowed stay cut when
//! it passes again, as a lost NAT entry stays lost; new ones pass.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Swallow,
}

/// The mode, and which generation of connections may pass (those accepted since the last
/// switch to passing).
struct State {
    mode: Mode,
    generation: u64,
}

pub struct Proxy {
    pub addr: String,
    state: Arc<Mutex<State>>,
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
        }));
        let (upstream, shared) = (upstream.to_string(), state.clone());
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let generation = shared.lock().unwrap().generation;
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, shared.clone(), generation));
                tokio::spawn(pump(sr, cw, shared.clone(), generation));
            }
        });
        Proxy {
            addr,
            state,
            _rt: rt,
        }
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
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    generation: u64,
) {
    let passes = || {
        let s = state.lock().unwrap();
        s.mode == Mode::Pass && s.generation == generation
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) if passes() => return,
            // A cut path carries no FIN or reset either: the other side keeps waiting.
            Ok(0) | Err(_) => return std::future::pending::<()>().await,
            Ok(n) => n,
        };
        if passes() && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
