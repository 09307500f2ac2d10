//! The admin console and `/metrics` a primary serves when its URI says `admin=HOST:PORT`.
//!
//! One axum listener on the node's network runtime: a static page (`page.html`), its JSON
//! API and server-sent events, and the Prometheus text. Everything needs the admin token
//! (see `auth`); actions go through the same code as `PRAGMA authorize_*`.

pub mod auth;
mod events;
mod listener;
pub mod metrics;
mod routes;

use crate::node::Shared;
use crate::uri::AdminConfig;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "the admin console would listen on {0}, beyond this machine, in plain HTTP: bind it to \
         127.0.0.1 (admin=127.0.0.1:PORT), or add admin_insecure=1 to the URI to accept that \
         (then put it behind a TLS proxy or a firewall)"
    )]
    NotLoopback(SocketAddr),
    #[error("the admin console cannot listen on {addr}: {source}; choose another admin=HOST:PORT")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the console's handlers share.
pub(crate) struct Console {
    pub shared: Arc<Shared>,
    pub token: String,
    pub sessions: auth::Sessions,
    pub journal: events::Journal,
}

/// Refuse an address beyond loopback unless the operator said so: the console is served in
/// plain HTTP (no TLS here), and its token and actions would cross the network in clear.
pub(crate) fn check_address(cfg: &AdminConfig) -> Result<(), AdminError> {
    match cfg.addr.ip().is_loopback() || cfg.insecure {
        true => Ok(()),
        false => Err(AdminError::NotLoopback(cfg.addr)),
    }
}

/// Bind the console's listener and serve it until the node shuts down: the bound address
/// (the real port for port 0) and the serving task.
pub(crate) async fn start(
    shared: Arc<Shared>,
    cfg: AdminConfig,
    token: String,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AdminError> {
    check_address(&cfg)?;
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| AdminError::Bind {
            addr: cfg.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AdminError::Bind {
        addr: cfg.addr,
        source,
    })?;
    let console = Arc::new(Console {
        shared: shared.clone(),
        token,
        sessions: auth::Sessions::default(),
        journal: events::Journal::default(),
    });
    let sampler = tokio::spawn(events::sample(console.clone()));
    let app = routes::router(console).into_make_service_with_connect_info::<listener::ClientAddr>();
    let listener = listener::Bounded::new(listener);
    let mut stop = shared.shutdown.subscribe();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await;
        sampler.abort();
        if let Err(e) = served {
            tracing::warn!("the admin console stopped: {e}");
        }
    });
    tracing::info!("admin console on http://{addr}/ (metrics at /metrics)");
    Ok((addr, task))
}
