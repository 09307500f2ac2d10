//! Starting a node: its file locked and prepared, its keys and identity, its writer, its
//! cluster (primaries) and its network.

use super::*;

impl Node {
    /// Open the node for `cfg`: lock the file, prepare it, start the engine and the network.
    pub(super) fn start(cfg: NodeConfig) -> Result<Node> {
        let lock = ProcessLock::acquire(&cfg.path)?;
        store::file_mode::keep_private(&cfg.path)?;
        let conn = store::open_connection(&cfg.path, cfg.file_key())?;
        store::init_internal_schema(&conn)?;
        store::write_txn(&conn, crate::log::outbox::upgrade)?;
        if cfg.role == Some(Role::Secondary) {
            // This connection becomes the device's writer, which only writes what the primaries
            // sent (and its position). Without an fsync per commit, a power loss can lose the
            // newest of those commits but never reorder them (the WAL is a log, and the app's
            // own commits, FULL, sync everything before them); whatever is lost is sent again
            // from the older position on the next connection. A crash of the process loses
            // nothing at all.
            conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        }
        let keys = load_or_create_keys(&conn, &cfg)?;
        let admin = match (&cfg.admin, cfg.role) {
            (Some(a), Some(Role::Primary)) => {
                crate::admin::check_address(a)?;
                let (token, source) =
                    crate::admin::auth::load_or_create_token(&conn, a.token.as_ref())?;
                Some((a.clone(), token, source))
            }
            _ => None,
        };
        // A new primary with `connect=` joins the cluster there; one whose file already
        // belongs to a cluster (or a primary alone) starts its Raft node at once.
        // A primary whose file diverged from its cluster's rejoins it as a new member.
        let rejoins = match cfg.role {
            Some(Role::Primary) => !crate::cluster::rejoin::prepare(&conn)?.is_empty(),
            _ => false,
        };
        let joins = cfg.role == Some(Role::Primary)
            && (!cfg.connect.is_empty() || rejoins)
            && !crate::cluster::is_formed(&conn)?;
        // A file `restore-cluster` made the first member of a new cluster forms it: joining
        // another through `connect=` (its old cluster's members, typically, from the URI it
        // always had) would throw the restore away, or join a cluster that still runs.
        if joins && !rejoins && crate::cluster::rejoin::starts_new_cluster(&conn)? {
            return Err(Error::rule(format!(
                "`{}` was made the first member of a new cluster (octodb restore-cluster): open \
                 it without connect=, so that it forms that cluster; other primaries join it \
                 with connect= naming it",
                cfg.path.display()
            )));
        }
        let identity = Arc::new(load_identity(&conn, &cfg)?);
        register_identity_functions(&conn, &identity)?;
        let start_seq = match cfg.role {
            Some(Role::Primary) => crate::log::last_seq(&conn)?,
            _ => meta_i64(&conn, "last_seq")? as u64,
        };
        let (jobs_tx, jobs_rx) = mpsc::channel(1024);
        let (announcements, batches) = mpsc::unbounded_channel();
        let (fresh_tx, fresh_rx) = mpsc::channel(FRESH_TXNS);
        // A key kept in the file is the network's, whatever the URI says: a node decrypted or
        // encrypted by `octodb encrypt`/`decrypt` stays on the network its peers know.
        let network_key = match cfg.file_key() {
            Some(file_key) => crate::store::at_rest::network_key(&conn, file_key)?,
            None => match crate::store::at_rest::kept_network_key(&conn)? {
                Some(kept) => kept,
                None => cfg.key.as_ref().map(crate::crypto::plain_network_key),
            },
        };
        let primary_key = match meta_get::<String>(&conn, PRIMARY_KEY)? {
            Some(hex) => Some(crate::crypto::PublicKey::from_hex(&hex).map_err(|e| {
                Error::rule(format!(
                    "octodb: the primary's key kept in this file is damaged ({e}); open a fresh device file"
                ))
            })?),
            None => None,
        };
        let known_primaries = secondary::known_primaries_in(&conn)?;
        let admitters = crate::cluster::network::BeforeMembership::admitters(&conn)?;
        let shared = Arc::new(Shared {
            keys,
            identity,
            jobs: jobs_tx,
            feed: watch::channel(start_seq).0,
            recent: Default::default(),
            audiences: Default::default(),
            outbox_changed: Notify::new(),
            fresh_txns: fresh_tx,
            fresh_txns_rx: tokio::sync::Mutex::new(fresh_rx),
            sent_txn_max: Default::default(),
            events: broadcast::channel(1024).0,
            live: Mutex::new(status::Live::default()),
            shutdown: watch::channel(false).0,
            admitters,
            handshake: HandshakeOptions {
                network_key,
                tickets: match cfg.role {
                    Some(Role::Primary) => Some(Arc::new(crate::net::TicketKeys::generate().map_err(
                        |_| Error::rule("octodb: the system's random source failed; cannot make session ticket keys"),
                    )?)),
                    _ => None,
                },
                ..HandshakeOptions::default()
            },
            bound: Mutex::new(Vec::new()),
            readers: Mutex::new(Vec::new()),
            file_key: Arc::new(crate::store::at_rest::CurrentKey::new(
                cfg.file_key().cloned(),
            )),
            read_turns: tokio::sync::Semaphore::new(READERS),
            approved: Default::default(),
            callbacks: Default::default(),
            auth_decided: broadcast::channel(256).0,
            waiting: Default::default(),
            connected_keys: Default::default(),
            unwritten: watch::channel(Unwritten::default()).0,
            copied_files: watch::channel(HashMap::new()).0,
            auth_changed: Notify::new(),
            service: Mutex::new(None),
            write_turns: Default::default(),
            primary_key: Mutex::new(primary_key),
            cluster: OnceLock::new(),
            cluster_view: watch::channel(Default::default()).0,
            epoch_marks: watch::channel(0).0,
            epoch_settled: Default::default(),
            known_primaries: Mutex::new(known_primaries),
            joins,
            session_tickets: Default::default(),
            announcements,
            services: Default::default(),
            metrics: Default::default(),
            admin_addr: OnceLock::new(),
            forwarded: Default::default(),
            asking: Default::default(),
            cfg,
        });

        let writer = match shared.cfg.role {
            Some(role) => Some(writer::spawn(shared.clone(), conn, jobs_rx, role)?),
            None => None,
        };
        let node = Node {
            shared: shared.clone(),
            writer: Mutex::new(writer),
            tasks: Mutex::new(Vec::new()),
            _lock: lock,
            stopped: registry::Stopped::default(),
        };
        let tasks = match shared.cfg.role {
            Some(Role::Primary) => {
                let mut tasks = primary::start(shared.clone())?;
                tasks.push(runtime().spawn(cluster_member::announce(shared.clone(), batches)));
                tasks.push(runtime().spawn(compaction::keep_log_bounded(shared.clone())));
                tasks.push(runtime().spawn(waiting_requests::decide_with_callbacks(
                    Arc::downgrade(&shared),
                )));
                if joins {
                    tasks.push(runtime().spawn(join::join(shared.clone())));
                } else {
                    let proposer = on_runtime(cluster_member::start(&shared))??;
                    cluster_member::joined(&shared, proposer);
                    epoch::await_first_marker_alone(&shared);
                }
                tasks
            }
            Some(Role::Secondary) => vec![runtime().spawn(secondary::run(shared.clone()))],
            None => Vec::new(),
        };
        *node.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        if let Some((cfg, token, source)) = admin {
            let (addr, task) =
                on_runtime(crate::admin::start(shared.clone(), cfg, token.clone()))??;
            node.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(task);
            let _ = shared.admin_addr.set(addr);
            use crate::admin::auth::TokenSource;
            match source {
                TokenSource::Created => {
                    // Shown this once; PRAGMA admin_token shows it again to whoever holds the
                    // file.
                    eprintln!(
                        "octodb: admin console at http://{addr}/ ; its token (kept in the \
                         node's file): {token}"
                    );
                    tracing::info!("admin console token created and kept in the node's file");
                }
                TokenSource::Given => eprintln!(
                    "octodb: admin console at http://{addr}/ (its token is the one this start \
                     was given: admin_token=, admin_token_env= or admin_token_file=)"
                ),
                TokenSource::Kept => eprintln!(
                    "octodb: admin console at http://{addr}/ (its token was printed at the \
                     node's first start with admin=; PRAGMA admin_token shows it to an app of \
                     the node; admin_token_file=PATH sets one of your choosing)"
                ),
            }
        }
        Ok(node)
    }
}

fn load_or_create_keys(conn: &Connection, cfg: &NodeConfig) -> Result<NodeKeys> {
    if let Some(bytes) = meta_get::<Vec<u8>>(conn, "node_keys")? {
        return NodeKeys::from_bytes(&bytes).map_err(|e| store::corrupt(&cfg.path, e.to_string()));
    }
    let keys = NodeKeys::generate();
    meta_set(conn, "node_keys", keys.to_bytes())?;
    Ok(keys)
}

fn load_identity(conn: &Connection, cfg: &NodeConfig) -> Result<Identity> {
    let stored: Option<String> = meta_get(conn, "node_type")?;
    if let (Some(stored), Some(role)) = (&stored, cfg.role) {
        if stored != role.as_str() {
            return Err(Error::rule(format!(
                "database `{}` belongs to a {stored} node; open it with node={stored} or use another file",
                cfg.path.display()
            )));
        }
    }
    let next_seq = meta_i64(conn, store::ROW_SEQ_KEY)? + 1;
    let next_txn = crate::log::outbox::last_txn_id(conn)? + 1;
    match cfg.role {
        Some(Role::Primary) => {
            meta_set(conn, "node_type", "primary")?;
            // The first primary of a cluster is node 1; the others get theirs when they join.
            let node_id = match meta_i64(conn, "node_id")? {
                id if id > 0 => id as u32,
                _ => 1,
            };
            Ok(Identity::new(cfg.role, node_id, 0, next_seq, next_txn))
        }
        Some(Role::Secondary) => {
            meta_set(conn, "node_type", "secondary")?;
            let node_id = meta_i64(conn, "node_id")? as u32;
            let user_id = meta_i64(conn, "user_id")?;
            let unsent_from = crate::log::outbox::note_run_start(conn, next_txn)?;
            Ok(
                Identity::new(cfg.role, node_id, user_id, next_seq, next_txn)
                    .with_unsent_txn_from(unsent_from),
            )
        }
        None => Ok(Identity::new(None, 0, 0, next_seq, next_txn)),
    }
}
