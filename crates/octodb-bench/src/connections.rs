//! Connections: one primary (its own process) holding many authenticated idle device
//! connections from client processes on several 127.0.0.x source addresses; memory growth per
//! connection, and over rounds of reconnection the handshakes per second and the primary's CPU
//! per handshake.

use crate::baseline::{INSERT, ITEMS};
use crate::cluster::{approve, bench_dir, payload};
use crate::procs::{self, Proc};
use crate::report::{human, percentile, Better, Figure};
use crate::rounds::{median, ROUNDS};
use anyhow::{anyhow, bail, Context, Result};
use octodb::auth::Action;
use octodb::crypto::NodeKeys;
use octodb::net::{AuthAsk, HandshakeOptions, Message, Resumption, SecureStream};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Issue 23's handshake lines: the reconnect rate, and the primary's CPU per handshake.
const HANDSHAKES_PER_S: f64 = 6_000.0;
const HANDSHAKE_CPU_US: f64 = 150.0;

/// Client processes; each holds its share of the connections.
const CLIENT_PROCS: usize = 2;
/// Source addresses per client process (ephemeral ports run out near 28,000 per address).
const IPS_PER_PROC: usize = 2;
/// Handshakes each client process keeps in flight.
const IN_FLIGHT: usize = 256;
/// Sign-ups in flight per process: below the primary's limit of waiting requests.
const SIGNUPS_IN_FLIGHT: usize = 64;
/// Single-row commits the backend makes while every device is connected, one per
/// [`BACKEND_PACE`] (back to back, the sessions' wake-ups would merge and hide their cost).
const BACKEND_COMMITS: usize = 200;
const BACKEND_PACE: std::time::Duration = std::time::Duration::from_millis(5);
/// The user whose rows the backend writes then: no device here belongs to it.
const NOBODYS_USER: i64 = 1 << 40;
/// How long the primary's CPU is measured while every device only sends heartbeats (which
/// the primary answers): a bit more than one heartbeat interval.
const IDLE_MEASURED: std::time::Duration = std::time::Duration::from_secs(22);

pub fn run(connections: usize) -> Result<Vec<Figure>> {
    let dir = tempfile::Builder::new()
        .prefix("octodb-bench-conn")
        .tempdir_in(bench_dir()?)?;
    let mut primary = Proc::spawn(
        "primary",
        &[
            "_conn-primary".into(),
            dir.path().join("primary.db").display().to_string(),
        ],
    )?;
    let words = primary.expect("listening")?;
    let (addr, seq) = match words.as_slice() {
        [a, s] => (a.clone(), s.clone()),
        _ => bail!("primary said {words:?}"),
    };
    let rss_before = procs::rss_kib(primary.pid())?;

    let per_proc = connections.div_ceil(CLIENT_PROCS);
    let mut clients = Vec::new();
    for p in 0..CLIENT_PROCS {
        let count = per_proc.min(connections - p * per_proc);
        let ips: Vec<String> = (0..IPS_PER_PROC)
            .map(|i| format!("127.0.0.{}", 2 + p * IPS_PER_PROC + i))
            .collect();
        clients.push(Proc::spawn(
            "clients",
            &[
                "_conn-clients".into(),
                addr.clone(),
                count.to_string(),
                ips.join(","),
                seq.clone(),
            ],
        )?);
    }
    // Phase 1, not measured: every client key signs up once and is approved.
    let started = Instant::now();
    for c in &mut clients {
        c.send("signup")?;
    }
    for c in &mut clients {
        c.expect("done")?;
    }
    let signup_secs = started.elapsed().as_secs_f64();
    // The sign-up sessions must be gone (their sockets closed) before all reconnect at once:
    // together they would pass the machine's limit of open files.
    sessions_settle(&mut primary, |held| held == 0)?;
    // Phase 2: all reconnect at once, recognized by their keys, and stay connected; memory is
    // measured after the first of these rounds, the others close and reconnect all again (the
    // handshake lines are judged on the rounds' median).
    // The first round takes the full handshake (a device whose primary restarted, or that
    // never had a ticket), the others resume with the devices' session tickets.
    let mut handshakes = Vec::with_capacity(ROUNDS);
    let mut rss_after = 0;
    let mut full = None;
    for round in 0..=ROUNDS {
        if round > 0 {
            for c in &mut clients {
                c.send("close")?;
            }
            for c in &mut clients {
                c.expect("done")?;
            }
            let held = sessions_settle(&mut primary, |held| held == 0)?;
            if held > 0 {
                bail!("{held} sessions still open after the clients closed theirs");
            }
        }
        let how = if round == 0 {
            "connect-full"
        } else {
            "connect"
        };
        let round_figures = reconnect_all(&mut primary, &mut clients, connections, how)?;
        if round == 0 {
            rss_after = procs::rss_kib(primary.pid())?;
            full = Some(round_figures);
        } else {
            handshakes.push(round_figures);
        }
    }
    let full = full.context("the full handshake's round")?;
    // Phase 3: the backend writes rows for a user none of these devices belongs to, while they
    // are all connected: what the primary spends per commit on devices that see nothing of it.
    let cpu_before = procs::cpu_seconds(primary.pid())?;
    primary.send(&format!("write {BACKEND_COMMITS}"))?;
    let wrote = primary.expect("wrote")?;
    let cpu_ms = (procs::cpu_seconds(primary.pid())? - cpu_before) * 1e3;
    let commit_p50_ms: f64 = wrote
        .first()
        .and_then(|w| w.parse().ok())
        .context("commit time")?;
    // Phase 4: nothing but heartbeats (each device's after 20 s of silence, and the primary's
    // answer): what idle devices cost their primary.
    let cpu_before = procs::cpu_seconds(primary.pid())?;
    let idle_started = Instant::now();
    std::thread::sleep(IDLE_MEASURED);
    let idle_cpu =
        (procs::cpu_seconds(primary.pid())? - cpu_before) / idle_started.elapsed().as_secs_f64();
    let still_held = sessions_settle(&mut primary, |_| true)?;
    for c in clients {
        c.finish()?;
    }
    primary.finish()?;
    if still_held < connections {
        bail!("only {still_held} of {connections} idle sessions survived the heartbeat phase");
    }

    let per_conn_kb = (rss_after.saturating_sub(rss_before)) as f64 * 1.024 / connections as f64;
    let (rate, rate_spread) = median(&of(&handshakes, |h| h.rate), "hs/s")?;
    let (cpu_us, cpu_spread) = median(&of(&handshakes, |h| h.cpu_us), "us")?;
    let clients_ran = format!(
        "clients in {CLIENT_PROCS} processes of their own (not the primary's), on the same {} cores",
        std::thread::available_parallelism().map_or("unknown".into(), |n| n.to_string())
    );
    let note = format!(
        "{connections} connections held; primary RSS {:.0} MB -> {:.0} MB; sign-up phase {signup_secs:.1} s\n\
         with all connected, the backend's {BACKEND_COMMITS} single-row commits of rows none of them sees, one per {BACKEND_PACE:?}: p50 {commit_p50_ms:.2} ms each, primary CPU {:.2} ms per commit",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        cpu_ms / BACKEND_COMMITS as f64
    );
    Ok(vec![
        Figure {
            scenario: "connections",
            metric: format!("primary memory growth per idle connection ({connections})"),
            octodb: per_conn_kb,
            unit: "KB",
            sqlite: None,
            sqlite_setup: "-".into(),
            better: Better::Lower,
            target: "<= 16 KB".into(),
            met: per_conn_kb <= 16.0,
            spread: None,
            notes: note,
        },
        Figure {
            scenario: "connections",
            metric: format!("primary CPU while {connections} devices idle (heartbeats only)"),
            octodb: idle_cpu * 100.0,
            unit: "% of a core",
            sqlite: None,
            sqlite_setup: "-".into(),
            better: Better::Lower,
            target: "<= 5%".into(),
            met: idle_cpu <= 0.05,
            spread: None,
            notes: format!(
                "measured over {IDLE_MEASURED:?}: each device's heartbeat after {:?} of silence, and the primary's answer",
                octodb::uri::DEFAULT_HEARTBEAT
            ),
        },
        Figure {
            scenario: "connections",
            metric: "handshakes/s (reconnect of approved devices, resumed)".into(),
            octodb: rate,
            unit: "hs/s",
            sqlite: None,
            sqlite_setup: "-".into(),
            better: Better::Higher,
            target: format!(">= {}/s", human(HANDSHAKES_PER_S)),
            met: rate >= HANDSHAKES_PER_S,
            spread: Some(rate_spread),
            notes: format!(
                "each device offers the session ticket its sign-up got (resumed handshake, \
                 Noise NNpsk0); the full handshake (XX, no ticket) in the same run: {:.0} hs/s; {clients_ran}",
                full.rate
            ),
        },
        Figure {
            scenario: "connections",
            metric: "primary CPU per handshake (reconnect of approved devices, resumed)".into(),
            octodb: cpu_us,
            unit: "us",
            sqlite: None,
            sqlite_setup: "-".into(),
            better: Better::Lower,
            target: format!("<= {HANDSHAKE_CPU_US} us"),
            met: cpu_us <= HANDSHAKE_CPU_US,
            spread: Some(cpu_spread),
            notes: format!(
                "the primary process's CPU over the reconnect, its admission (Hello, Welcome) and \
                 the next ticket included; the full handshake in the same run: {:.0} us; {clients_ran}",
                full.cpu_us
            ),
        },
    ])
}

/// One round of reconnection: how fast, and what it cost the primary.
struct Handshakes {
    rate: f64,
    /// The primary process's CPU per connection, in microseconds.
    cpu_us: f64,
}

fn of(rounds: &[Handshakes], f: fn(&Handshakes) -> f64) -> Vec<f64> {
    rounds.iter().map(f).collect()
}

/// Every client reconnects at once (`how`: `connect`, resumed with its ticket, or
/// `connect-full`), recognized by its key, and stays connected.
fn reconnect_all(
    primary: &mut Proc,
    clients: &mut [Proc],
    connections: usize,
    how: &str,
) -> Result<Handshakes> {
    let cpu_before = procs::cpu_seconds(primary.pid())?;
    let started = Instant::now();
    for c in clients.iter_mut() {
        c.send(how)?;
    }
    for c in clients.iter_mut() {
        c.expect("done")?;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // A session is counted just after its Welcome is sent: let the last ones settle.
    let held = sessions_settle(primary, |held| held >= connections)?;
    let cpu = procs::cpu_seconds(primary.pid())? - cpu_before;
    if held < connections {
        bail!("the primary holds {held} sessions, expected {connections}");
    }
    Ok(Handshakes {
        rate: connections as f64 / connect_secs,
        cpu_us: cpu * 1e6 / connections as f64,
    })
}

/// Ask the primary for its session count until `done` holds for it (at most 30 s).
fn sessions_settle(primary: &mut Proc, done: impl Fn(usize) -> bool) -> Result<usize> {
    let settle = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        primary.send("count")?;
        let held: usize = primary
            .expect("sessions")?
            .first()
            .and_then(|w| w.parse().ok())
            .context("session count")?;
        if done(held) || Instant::now() > settle {
            return Ok(held);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Child: the primary, answering `count` with the number of device sessions it holds, `rows`
/// with the number of rows devices gave it, and `write N` with the p50 of N paced commits.
pub fn primary_proc(path: &str, followers: usize) -> Result<()> {
    let uri = format!("file:{path}?node=primary&bind=tcp://0.0.0.0:0&auth=user");
    let p = octodb::Connection::open(&uri)?;
    p.set_auth_callback(Action::UserSignup, approve)?;
    p.set_auth_callback(Action::UserLogin, approve)?;
    p.execute_batch(ITEMS)?;
    let port = p.bound_addrs().first().context("not listening")?.port();
    let _followers = join_followers(&p, path, port, followers)?;
    let seq = p.sync_status()?.last_seq;
    procs::say(&format!("listening 127.0.0.1:{port} {seq}"));
    for cmd in procs::commands() {
        if cmd == "count" {
            procs::say(&format!("sessions {}", p.sync_status()?.peers.len()));
        } else if cmd == "undecided" {
            // Diagnostics: approved devices none of whose transactions is in the log.
            let rows: Option<String> = p.query_row(
                "SELECT group_concat(node_id || ':' || last_txn || ':' || auth_state || ':'
                                     || coalesce(user_id, -1), ' ')
                 FROM _octo_nodes n
                 WHERE node_type = 'secondary' AND node_id > 0
                   AND NOT EXISTS (SELECT 1 FROM _octo_log l WHERE l.origin_node = n.node_id)",
                [],
                |r| r.get(0),
            )?;
            procs::say(&format!("undecided {}", rows.unwrap_or_default()));
        } else if cmd == "rows" {
            let n: i64 = p.query_row(
                "SELECT count(*) FROM items WHERE row_owner IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            procs::say(&format!("rows {n}"));
        } else if let Some(n) = cmd.strip_prefix("write ") {
            let n: usize = n.parse().context("write: a number of commits")?;
            let mut ms = Vec::with_capacity(n);
            for i in 0..n {
                let started = Instant::now();
                p.execute(
                    INSERT,
                    rusqlite::params![i as i64, payload(i as u64, 64), NOBODYS_USER],
                )?;
                ms.push(started.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(BACKEND_PACE.saturating_sub(started.elapsed()));
            }
            ms.sort_by(f64::total_cmp);
            procs::say(&format!("wrote {:.3}", percentile(&ms, 50.0)));
        }
    }
    Ok(())
}

/// `n` primaries joining the cluster of `leader` (listening on `port`), approved by it, each on
/// a file beside `path`: open until the returned connections are dropped.
fn join_followers(
    leader: &octodb::Connection,
    path: &str,
    port: u16,
    n: usize,
) -> Result<Vec<octodb::Connection>> {
    let mut followers = Vec::with_capacity(n);
    for i in 1..=n {
        let uri = format!(
            "file:{path}.follower{i}?node=primary&bind=tcp://127.0.0.1:0&connect=tcp://127.0.0.1:{port}"
        );
        let f = octodb::Connection::open(&uri)?;
        leader.execute_batch(&format!(
            "PRAGMA preauthorize_node='{}:primary'",
            f.public_key()
        ))?;
        followers.push(f);
        // One at a time: while the voters change, the leader gives up a change of its nodes
        // (the next approval) with "try again" (README: a cluster's membership changes).
        leader
            .wait_for(std::time::Duration::from_secs(60), |s| {
                s.cluster
                    .as_ref()
                    .is_some_and(|c| c.settled_voters() == Some(i + 1))
            })
            .with_context(|| format!("follower {i} joins the cluster"))?;
    }
    Ok(followers)
}

/// Child: `count` device identities connecting from `ips`, driven by `signup` (which keeps
/// each device's session ticket), `connect` (resumed with it), `connect-full` (the full
/// handshake, as a device the primary has no ticket for) and `close` (of the connections the
/// last connect made).
pub fn clients_proc(addr: &str, count: usize, ips: &str, last_seq: u64) -> Result<()> {
    let addr: SocketAddr = addr.parse()?;
    let ips: Vec<Ipv4Addr> = ips.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let devices: Arc<Vec<Device>> = Arc::new(
        (0..count)
            .map(|_| Device {
                keys: NodeKeys::generate(),
                ticket: Default::default(),
            })
            .collect(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut held: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    for cmd in procs::commands() {
        let how = match cmd.as_str() {
            "signup" => How::SignUp,
            "connect" => How::Resume,
            "connect-full" => How::Full,
            "close" => {
                // Dropping a task's stream closes its socket.
                for task in held.drain(..) {
                    task.abort();
                }
                procs::say("done");
                continue;
            }
            _ => continue,
        };
        let streams = rt.block_on(connect_all(addr, &ips, devices.clone(), how, last_seq))?;
        if how != How::SignUp {
            held = streams
                .into_iter()
                .map(|s| rt.spawn(stay_connected(s)))
                .collect();
        }
        procs::say("done");
    }
    for task in held {
        task.abort();
    }
    Ok(())
}

/// What an idle device does with its connection: a heartbeat after every interval in which
/// it sent nothing, and whatever the primary sends (its answers) read and dropped.
async fn stay_connected(s: SecureStream) {
    let (mut rd, mut wr) = s.into_split();
    let beat = Message::Heartbeat.encode();
    let mut last_sent = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = rd.recv() => if r.is_err() { return },
            () = tokio::time::sleep_until(last_sent + octodb::uri::DEFAULT_HEARTBEAT) => {
                if wr.send(&beat).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
            }
        }
    }
}

/// A device of the client processes: its key, and the session ticket its sign-up got.
struct Device {
    keys: NodeKeys,
    ticket: std::sync::Mutex<Option<Resumption>>,
}

/// How the client processes connect.
#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    /// Sign up, keep the session ticket, close.
    SignUp,
    /// Reconnect, resumed with the ticket.
    Resume,
    /// Reconnect with the full handshake.
    Full,
}

async fn connect_all(
    addr: SocketAddr,
    ips: &[Ipv4Addr],
    devices: Arc<Vec<Device>>,
    how: How,
    last_seq: u64,
) -> Result<Vec<SecureStream>> {
    let signup = how == How::SignUp;
    // One set of options for all: like devices that stay up and reconnect (after a network
    // loss or a restart of the primary), each remembers the primary's proven identity.
    let opts = Arc::new(HandshakeOptions::default());
    let gate = Arc::new(Semaphore::new(if signup {
        SIGNUPS_IN_FLIGHT
    } else {
        IN_FLIGHT
    }));
    let mut tasks = Vec::with_capacity(devices.len());
    for i in 0..devices.len() {
        let permit = gate.clone().acquire_owned().await?;
        let devices = devices.clone();
        let opts = opts.clone();
        let ip = ips[i % ips.len()];
        tasks.push(tokio::spawn(async move {
            let r = connect_one(addr, ip, &devices[i], &opts, how, last_seq).await;
            drop(permit);
            // A signed-up device is done: close it now, or all would be open at once.
            r.map(|s| (!signup).then_some(s))
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.extend(t.await??);
    }
    Ok(out)
}

async fn connect_one(
    addr: SocketAddr,
    ip: Ipv4Addr,
    device: &Device,
    opts: &HandshakeOptions,
    how: How,
    last_seq: u64,
) -> Result<SecureStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    defer_port_choice(&sock)?;
    sock.bind(SocketAddr::new(ip.into(), 0))?;
    let tcp = sock.connect(addr).await?;
    let ticket = match how {
        How::Resume => device.ticket.lock().map_err(|_| anyhow!("lock"))?.clone(),
        How::SignUp | How::Full => None,
    };
    let mut s = match &ticket {
        Some(ticket) => SecureStream::resume(tcp, &device.keys, opts, ticket).await?,
        None => SecureStream::connect(tcp, &device.keys, opts).await?,
    };
    if how == How::Resume && !s.resumed() {
        bail!("the primary did not take a session ticket it issued");
    }
    let signup = how == How::SignUp;
    hello(&mut s, signup, last_seq).await?;
    if signup {
        let ticket = session_ticket(&mut s).await?;
        *device.ticket.lock().map_err(|_| anyhow!("lock"))? = Some(ticket);
    }
    Ok(s)
}

/// The session ticket a primary hands a device after its Welcome.
async fn session_ticket(s: &mut SecureStream) -> Result<Resumption> {
    let primary = s.peer().public_key;
    loop {
        match Message::decode(&s.recv().await?)? {
            Message::SessionTicket {
                ticket,
                secret,
                lifetime_s,
            } => return Ok(Resumption::received(ticket, secret, primary, lifetime_s)),
            Message::LogHistory { .. } | Message::PrimaryMembers { .. } => continue,
            other => bail!("expected a session ticket, got {}", other.kind()),
        }
    }
}

/// What a primary's Welcome tells a device.
pub struct Welcomed {
    pub node_id: u32,
    pub user_id: i64,
    pub last_decided_txn: u64,
}

/// A device's first message on `s` (signing up, or a returning device standing at
/// `last_seq`), then the primary's messages until its Welcome.
pub async fn hello(s: &mut SecureStream, signup: bool, last_seq: u64) -> Result<Welcomed> {
    let hello = Message::Hello {
        role: octodb::Role::Secondary,
        last_seq: if signup { 0 } else { last_seq },
        // As a device says: it sends heartbeats after this long in silence.
        info: format!(
            r#"{{"heartbeat_s":{}}}"#,
            octodb::uri::DEFAULT_HEARTBEAT.as_secs()
        ),
        auth: signup.then(|| AuthAsk {
            action: Action::UserSignup,
            data: "bench".into(),
        }),
    };
    s.send(&hello.encode()).await?;
    s.flush().await?;
    loop {
        match Message::decode(&s.recv().await?)? {
            Message::Welcome {
                node_id,
                user_id,
                last_decided_txn,
                ..
            } => {
                return Ok(Welcomed {
                    node_id,
                    user_id,
                    last_decided_txn,
                })
            }
            Message::AuthPending => continue,
            Message::Refused { reason } => bail!("refused: {reason}"),
            other => bail!("expected Welcome, got {}", other.kind()),
        }
    }
}

/// Lets the kernel pick the source port at `connect` (by the whole address pair) instead of
/// at `bind` (by port alone): with tens of thousands of sockets bound on a few addresses, and
/// as many left in TIME_WAIT by an earlier phase or run, `bind` searched the port range for a
/// free port at every connection, and the clients, on the primary's cores, slowed down
/// run after run. Devices do not bind; only this harness, to use several source addresses.
fn defer_port_choice(sock: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the open socket `sock` owns for this whole call; the option
    // value points at a live c_int and the length passed is exactly its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Child: the CPU cost of one handshake, both sides in this process on one thread, over
/// loopback: what bounds the handshake rate when clients share the primary's cores.
pub fn handshake_cost(count: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server_keys = NodeKeys::generate();
        let server_opts = HandshakeOptions {
            tickets: Some(Arc::new(
                octodb::net::TicketKeys::generate().map_err(|_| anyhow!("random source"))?,
            )),
            ..Default::default()
        };
        let client_keys: Vec<NodeKeys> = (0..count).map(|_| NodeKeys::generate()).collect();
        let tickets = client_keys
            .iter()
            .map(|keys| {
                let sealer = server_opts.tickets.as_ref().context("ticket keys")?;
                let (ticket, secret) = sealer
                    .issue(&keys.public_key())
                    .map_err(|_| anyhow!("random source"))?;
                Ok(Resumption::received(
                    ticket,
                    secret,
                    server_keys.public_key(),
                    3600,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let client_opts = HandshakeOptions::default();
        let run = |label: &'static str, resume: bool| {
            let listener = &listener;
            let (server_keys, server_opts, client_opts) =
                (&server_keys, &server_opts, &client_opts);
            let (client_keys, tickets) = (&client_keys, &tickets);
            async move {
                let started = Instant::now();
                for (keys, ticket) in client_keys.iter().zip(tickets) {
                    let (accepted, connected) = tokio::join!(
                        async {
                            let (tcp, _) = listener.accept().await?;
                            SecureStream::accept(tcp, server_keys, server_opts)
                                .await
                                .map_err(anyhow::Error::from)
                        },
                        async {
                            let tcp = tokio::net::TcpStream::connect(addr).await?;
                            let stream = match resume {
                                true => SecureStream::resume(tcp, keys, client_opts, ticket).await,
                                false => SecureStream::connect(tcp, keys, client_opts).await,
                            };
                            stream.map_err(anyhow::Error::from)
                        }
                    );
                    accepted?;
                    connected?;
                }
                let us = started.elapsed().as_secs_f64() * 1e6 / count as f64;
                procs::say(&format!(
                    "{label}: {us:.0} us per handshake (both sides, one core)"
                ));
                Ok::<(), anyhow::Error>(())
            }
        };
        run("first contact", false).await?;
        run("returning devices", false).await?;
        run("returning devices with a session ticket", true).await?;
        Ok(())
    })
}
