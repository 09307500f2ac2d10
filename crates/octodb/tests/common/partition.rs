//! A network the tests can partition: a proxy in front of each primary, at the address the
//! other primaries reach it at (its `advertise=`). Each connection it accepts is traced to
//! the primary process that opened it (the connecting socket's owner, found in `/proc`), so
//! that a partition cuts exactly the paths between primaries on different sides, in both
//! directions. A cut connection is silent, as a partitioned network is: its bytes are
//! dropped, no FIN, no reset; and it stays cut once the partition heals (the primaries find
//! out by their own timeouts and connect again). Connections from anything but a primary (a
//! device, the test) always pass.
//!
//! Linux only (`/proc/net/tcp`, `/proc/PID/fd`), loopback IPv4 only.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which primary is on which side: `sides[i]` for primary `i`; None: no partition.
#[derive(Default)]
struct Net {
    /// Each primary's own listening address, and process.
    upstreams: Vec<String>,
    pids: Vec<Option<u32>>,
    sides: Option<Vec<u8>>,
}

impl Net {
    /// Whether bytes from primary `from` (None: not a primary) may reach primary `to`.
    fn passes(&self, from: Option<usize>, to: usize) -> bool {
        match (&self.sides, from) {
            (Some(sides), Some(from)) => sides[from] == sides[to],
            _ => true,
        }
    }
}

pub struct Partitions {
    /// Each primary's proxy address (`host:port`), in the primaries' order.
    pub addrs: Vec<String>,
    net: Arc<Mutex<Net>>,
    _rt: tokio::runtime::Runtime,
}

impl Partitions {
    /// A proxy for each of `n` primaries, which pass to them once they are named
    /// ([`Partitions::set_upstreams`]).
    pub fn start(n: usize) -> Arc<Partitions> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let net = Arc::new(Mutex::new(Net {
            upstreams: vec![String::new(); n],
            pids: vec![None; n],
            sides: None,
        }));
        let mut addrs = Vec::new();
        for to in 0..n {
            let listener = rt
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .expect("proxy listens");
            let local = listener.local_addr().expect("proxy address");
            addrs.push(local.to_string());
            let net = net.clone();
            rt.spawn(async move {
                while let Ok((client, peer)) = listener.accept().await {
                    let (upstream, pids) = {
                        let net = net.lock().unwrap();
                        (net.upstreams[to].clone(), net.pids.clone())
                    };
                    let from = primary_of(peer.port(), local.port(), &pids);
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let link = Link {
                        net: net.clone(),
                        from,
                        to,
                    };
                    tokio::spawn(link.clone().pump(cr, sw));
                    tokio::spawn(link.pump(sr, cw));
                }
            });
        }
        Arc::new(Partitions {
            addrs,
            net,
            _rt: rt,
        })
    }

    /// The primaries listen at `upstreams` (`host:port`, in order).
    pub fn set_upstreams(&self, upstreams: &[String]) {
        self.net.lock().unwrap().upstreams = upstreams.to_vec();
    }

    /// Primary `i` runs as process `pid` (again after each restart).
    pub fn set_pid(&self, i: usize, pid: u32) {
        self.net.lock().unwrap().pids[i] = Some(pid);
    }

    /// Primary `i` alone on one side, every other primary on the other.
    pub fn isolate(&self, i: usize) {
        let mut net = self.net.lock().unwrap();
        let sides = (0..net.pids.len()).map(|j| u8::from(j == i)).collect();
        net.sides = Some(sides);
    }

    /// Every primary reaches every other again (over new connections).
    pub fn heal(&self) {
        self.net.lock().unwrap().sides = None;
    }
}

/// Which of the primaries (`pids`) owns the socket connected from loopback port `port` to
/// loopback port `to_port`: None for any other process.
fn primary_of(port: u16, to_port: u16, pids: &[Option<u32>]) -> Option<usize> {
    let inode = socket_inode(port, to_port)?;
    let wanted = format!("socket:[{inode}]");
    pids.iter().position(|pid| {
        let Some(pid) = pid else { return false };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted))
    })
}

/// The inode of the IPv4 socket from 127.0.0.1:`port` to 127.0.0.1:`to_port`.
fn socket_inode(port: u16, to_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (local, remote) = (
        format!("0100007F:{port:04X}"),
        format!("0100007F:{to_port:04X}"),
    );
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields.get(9).map(|s| s.to_string()))
            .flatten()
    })
}

#[derive(Clone)]
struct Link {
    net: Arc<Mutex<Net>>,
    from: Option<usize>,
    to: usize,
}

impl Link {
    async fn pump(
        self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut cut = false;
        loop {
            let n = match from.read(&mut buf).await {
                // A cut path carries no FIN either: the other side keeps waiting.
                Ok(0) | Err(_) if cut => std::future::pending().await,
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            cut = cut || !self.net.lock().unwrap().passes(self.from, self.to);
            if cut {
                continue;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}
