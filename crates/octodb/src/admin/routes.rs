//! The console's HTTP routes: the page, login, the JSON state and its live stream, actions
//! and `/metrics`.

use super::auth::{self, Caller};
use super::listener::ClientAddr;
use super::Console;
use crate::auth::Decision;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
/// The live stream sends the state at least this often, and at most four times a second.
const STREAM_EVERY: Duration = Duration::from_secs(1);
const STREAM_GAP: Duration = Duration::from_millis(250);

type Shared = State<Arc<Console>>;

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/api/state", get(state))
        .route("/api/events", get(stream))
        .route("/api/authorize", post(authorize))
        .route("/api/remove_primary", post(remove_primary))
        .route("/metrics", get(metrics))
        .with_state(console)
}

/// The answer to a request without the token.
fn unauthorized(
    c: &Console,
    client: std::net::SocketAddr,
    headers: &HeaderMap,
    path: &str,
) -> Response {
    journal_wrong_bearer(c, client, headers, path);
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"octodb\"")],
        "401: the admin token is required: log in on the console's page, or send \
         Authorization: Bearer TOKEN\n",
    )
        .into_response()
}

/// A request that sent a wrong bearer token (a script with a stale token, or someone guessing)
/// is journaled; one that sent none is a browser before its login, and is not.
fn journal_wrong_bearer(
    c: &Console,
    client: std::net::SocketAddr,
    headers: &HeaderMap,
    path: &str,
) {
    if headers.contains_key(header::AUTHORIZATION) {
        c.journal
            .action(client, format!("{path} with a wrong bearer token"), false);
    }
}

fn session_cookie(id: &str) -> String {
    format!("{}={id}; HttpOnly; SameSite=Strict; Path=/", auth::COOKIE)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The page for a logged-in browser; `?token=` logs in and drops the token from the address.
async fn page(
    State(c): Shared,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    if let Some(t) = q.token {
        if !auth::same_secret(&t, &c.token) {
            c.journal
                .action(client, "login with a wrong token (?token=)".into(), false);
            return (StatusCode::UNAUTHORIZED, Html(LOGIN)).into_response();
        }
        let (id, _) = c.sessions.open();
        return (
            [(header::SET_COOKIE, session_cookie(&id))],
            Redirect::to("/"),
        )
            .into_response();
    }
    match auth::caller(&headers, &c.token, &c.sessions) {
        Some(Caller::Browser { csrf, .. }) => Html(PAGE.replace("{{CSRF}}", &csrf)).into_response(),
        // A script with the bearer token has no session to act from: it uses the API.
        Some(Caller::Bearer) => Html(PAGE.replace("{{CSRF}}", "")).into_response(),
        None => {
            journal_wrong_bearer(&c, client, &headers, "/");
            (StatusCode::UNAUTHORIZED, Html(LOGIN)).into_response()
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(c): Shared,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    if !auth::same_secret(f.token.trim(), &c.token) {
        c.journal
            .action(client, "login with a wrong token".into(), false);
        return (StatusCode::UNAUTHORIZED, Html(LOGIN)).into_response();
    }
    let (id, _) = c.sessions.open();
    c.journal.action(client, "logged in".into(), true);
    (
        [(header::SET_COOKIE, session_cookie(&id))],
        Redirect::to("/"),
    )
        .into_response()
}

/// Ends a browser's session and clears its cookie. A request without the session's CSRF
/// header is refused (403), not answered as if the session had ended.
async fn logout(State(c): Shared, headers: HeaderMap) -> Response {
    let Some(caller @ Caller::Browser { .. }) = auth::caller(&headers, &c.token, &c.sessions)
    else {
        return Redirect::to("/").into_response();
    };
    if let Err(e) = auth::check_csrf(&headers, &caller) {
        return (StatusCode::FORBIDDEN, e.to_string()).into_response();
    }
    if let Caller::Browser { session, .. } = &caller {
        c.sessions.close(session);
    }
    let cleared = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::COOKIE
    );
    ([(header::SET_COOKIE, cleared)], Redirect::to("/")).into_response()
}

/// A user and how many devices they have.
#[derive(Serialize)]
struct UserRow {
    user_id: i64,
    devices: usize,
    online: usize,
}

/// A key waiting for a decision, with what it asked: the operator decides on it.
#[derive(Serialize)]
struct WaitingRow {
    /// Its `node_type` is what it asks to be: "primary" for a primary joining the cluster.
    #[serde(flatten)]
    node: crate::node::NodeRecord,
    /// `user_signup`, `user_login` or `new_node`; None for a key that only presented itself.
    asks: Option<String>,
    /// What the app passed (secrets masked, see [`masked`]).
    data: Option<serde_json::Value>,
}

/// A request's data as the console shows it: the values of fields whose name says they are
/// secret (`password`, `secret`, `token`, `key`...) are masked, long text is cut.
fn masked(data: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    const SECRET: [&str; 5] = ["pass", "secret", "token", "key", "pin"];
    match data {
        J::Object(fields) => J::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    let k_low = k.to_ascii_lowercase();
                    let shown = match SECRET.iter().any(|s| k_low.contains(s)) {
                        true => J::String("***".into()),
                        false => masked(v),
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        J::Array(items) => J::Array(items.iter().map(masked).collect()),
        J::String(t) if t.chars().count() > 200 => {
            J::String(format!("{}...", t.chars().take(200).collect::<String>()))
        }
        other => other.clone(),
    }
}

/// What the key asked, from its stored request (`{"action": ..., "data": ...}`); data that is
/// JSON text is shown as JSON.
fn asked(request: Option<&String>) -> (Option<String>, Option<serde_json::Value>) {
    let Some(r) = request.and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()) else {
        return (None, None);
    };
    let action = r["action"].as_str().map(str::to_string);
    let data = match &r["data"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(t) => Some(
            serde_json::from_str::<serde_json::Value>(t)
                .unwrap_or_else(|_| serde_json::Value::String(t.clone())),
        ),
        other => Some(other.clone()),
    };
    (action, data.as_ref().map(masked))
}

/// Everything the page shows, in one JSON object.
#[derive(Serialize)]
struct ConsoleState {
    node: crate::node::SyncStatus,
    devices: Vec<crate::node::NodeRecord>,
    waiting: Vec<WaitingRow>,
    users: Vec<UserRow>,
    samples: Vec<super::events::Sample>,
    rejections: Vec<super::metrics::RecentRejection>,
    actions: Vec<super::events::ActionRecord>,
    auth_requests_waiting: usize,
    /// The signed task queue's tasks by state (empty without `octodb-tasks`' table).
    tasks: Vec<TaskCount>,
    /// Service channels (the object broker's among them).
    services: Vec<crate::node::channels::ServiceFigures>,
}

#[derive(Serialize)]
struct TaskCount {
    state: String,
    count: i64,
}

/// The task queue's figures, read from its table when this primary has one (`octodb-tasks`
/// keeps its tasks in `octo_tasks`; a submitted task not examined yet has no state).
fn task_counts(shared: &crate::node::Shared) -> crate::error::Result<Vec<TaskCount>> {
    shared.read_blocking(|c| {
        let exists: bool = c.query_row(
            "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'octo_tasks')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = c.prepare(
            "SELECT coalesce(state, 'queued'), count(*) FROM octo_tasks GROUP BY 1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TaskCount {
                state: r.get(0)?,
                count: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

fn snapshot(c: &Console) -> crate::error::Result<ConsoleState> {
    let shared = &c.shared;
    let node = crate::node::sync_status_of(shared)?;
    let nodes = crate::node::nodes_of(shared)?;
    let requests = shared.read_blocking(crate::node::members::requests_of_waiting)?;
    let waiting = nodes
        .iter()
        .filter(|n| n.auth_state == "pending" || n.auth_state == "required")
        .map(|n| {
            let asked_here = requests.get(&n.public_key).cloned().unwrap_or_default();
            let (asks, data) = asked(asked_here.request.as_ref());
            let mut node = n.clone();
            if asked_here.as_primary {
                node.node_type = "primary".into();
            }
            WaitingRow { node, asks, data }
        })
        .collect();
    // The other primaries are in the cluster's table, not among the devices.
    let devices: Vec<_> = nodes
        .into_iter()
        .filter(|n| n.auth_state == "approved" && n.node_type != "primary")
        .collect();
    let auth_requests_waiting = shared.read_blocking(crate::node::members::pending_requests)?;
    let mut users: std::collections::BTreeMap<i64, UserRow> = Default::default();
    for d in devices.iter().filter(|d| d.node_type == "secondary") {
        let Some(user_id) = d.user_id else { continue };
        let row = users.entry(user_id).or_insert(UserRow {
            user_id,
            devices: 0,
            online: 0,
        });
        row.devices += 1;
        row.online += usize::from(d.connected);
    }
    Ok(ConsoleState {
        node,
        devices,
        waiting,
        users: users.into_values().collect(),
        samples: c.journal.samples(),
        rejections: shared.metrics.recent_rejections(),
        actions: c.journal.actions(),
        auth_requests_waiting,
        tasks: task_counts(shared)?,
        services: shared.services.figures(),
    })
}

/// The state as JSON, read off the async threads (it reads the file).
async fn state_json(c: Arc<Console>) -> Result<String, String> {
    let done = tokio::task::spawn_blocking(move || {
        snapshot(&c).map_err(|e| e.to_string()).and_then(|s| {
            serde_json::to_string(&s).map_err(|e| format!("cannot encode the state: {e}"))
        })
    })
    .await;
    done.map_err(|e| format!("the state's reader failed: {e}"))?
}

async fn state(
    State(c): Shared,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    if auth::caller(&headers, &c.token, &c.sessions).is_none() {
        return unauthorized(&c, client, &headers, "/api/state");
    }
    match state_json(c).await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// The state, pushed as server-sent events: each second, and soon after the log moves.
async fn stream(
    State(c): Shared,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    if auth::caller(&headers, &c.token, &c.sessions).is_none() {
        return unauthorized(&c, client, &headers, "/api/events");
    }
    let feed = c.shared.feed.subscribe();
    let events = futures_util::stream::unfold((c, feed, true), |(c, mut feed, first)| async move {
        if !first {
            tokio::time::sleep(STREAM_GAP).await;
            let _ = tokio::time::timeout(STREAM_EVERY, feed.changed()).await;
        }
        // The stream ends with the node: an open page must not keep the node's state alive.
        if c.shared.is_shutting_down() {
            return None;
        }
        let event = match state_json(c.clone()).await {
            Ok(json) => Event::default().event("state").data(json),
            Err(e) => Event::default().event("problem").data(e),
        };
        Some((Ok::<_, std::convert::Infallible>(event), (c, feed, false)))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// An approval or a rejection, as the page's buttons send it.
#[derive(Deserialize)]
pub struct AuthorizeRequest {
    pub pubkey: String,
    /// "new_user", "existing_user", "reject", or for a primary's join "primary".
    pub decision: String,
    pub user_id: Option<i64>,
}

/// The `PRAGMA authorize_*` that does what `r` asks: the console calls the same parser and
/// the same decision code as the PRAGMA.
fn as_pragma(r: &AuthorizeRequest) -> Result<(&'static str, String), String> {
    let key = r.pubkey.trim();
    match (r.decision.as_str(), r.user_id) {
        ("new_user", _) => Ok(("authorize_user", format!("{key}:0"))),
        ("existing_user", Some(id)) if id > 0 => Ok(("authorize_user", format!("{key}:{id}"))),
        ("existing_user", _) => Err("give the existing user's id (a number above 0)".into()),
        ("reject", _) => Ok(("authorize_user", format!("{key}:-1"))),
        ("primary", _) | ("secondary", _) => {
            Ok(("authorize_node", format!("{key}:{}", r.decision)))
        }
        (other, _) => Err(format!(
            "`{other}` is not a decision: new_user, existing_user, reject, primary or secondary"
        )),
    }
}

async fn authorize(
    State(c): Shared,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Json(r): Json<AuthorizeRequest>,
) -> Response {
    let Some(caller) = auth::caller(&headers, &c.token, &c.sessions) else {
        return unauthorized(&c, client, &headers, "/api/authorize");
    };
    if let Err(e) = auth::check_csrf(&headers, &caller) {
        c.journal
            .action(client, format!("refused {}: {e}", r.decision), false);
        return (StatusCode::FORBIDDEN, e.to_string()).into_response();
    }
    let (pragma, value) = match as_pragma(&r) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let what = format!("PRAGMA {pragma}='{value}'");
    let shared = c.shared.clone();
    run_action(&c, client, what, move || {
        let (key, decision): (String, Decision) =
            crate::auth::parse_authorize(pragma, Some(&value))?;
        crate::node::authorize(&shared, key, decision, false)
    })
    .await
}

/// Runs a console action (the PRAGMA `what` names) on a worker thread, journals it, and
/// answers with its outcome.
async fn run_action(
    c: &Console,
    client: SocketAddr,
    what: String,
    action: impl FnOnce() -> crate::error::Result<()> + Send + 'static,
) -> Response {
    let done = tokio::task::spawn_blocking(action)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    c.journal.action(client, what.clone(), done.is_ok());
    match done {
        Ok(()) => (StatusCode::OK, format!("done: {what}\n")).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{what} failed: {e}\n")).into_response(),
    }
}

#[derive(Deserialize)]
pub struct RemovePrimaryRequest {
    pub node_id: u64,
}

/// `PRAGMA remove_primary` from the console: on the leader, a primary served by `octodb serve`
/// (whose file no other process may open) is operated from here.
async fn remove_primary(
    State(c): Shared,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Json(r): Json<RemovePrimaryRequest>,
) -> Response {
    let Some(caller) = auth::caller(&headers, &c.token, &c.sessions) else {
        return unauthorized(&c, client, &headers, "/api/remove_primary");
    };
    let what = format!("PRAGMA remove_primary={}", r.node_id);
    if let Err(e) = auth::check_csrf(&headers, &caller) {
        c.journal
            .action(client, format!("refused {what}: {e}"), false);
        return (StatusCode::FORBIDDEN, e.to_string()).into_response();
    }
    let shared = c.shared.clone();
    run_action(&c, client, what, move || {
        crate::node::remove_primary(&shared, r.node_id)
    })
    .await
}

async fn metrics(
    State(c): Shared,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Response {
    if auth::caller(&headers, &c.token, &c.sessions).is_none() {
        return unauthorized(&c, client, &headers, "/metrics");
    }
    let shared = &c.shared;
    // From the file, as PRAGMA sync_status reads it: the feed moves only once the cluster
    // has committed a batch, a moment after the file.
    let log_seq = match shared.read(crate::log::last_seq).await {
        Ok(seq) => seq,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    // The requests the console lists as waiting: a device that asked and went away still
    // waits for its decision.
    let auth_waiting = match shared.read(crate::node::members::pending_requests).await {
        Ok(n) => n,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let (sessions, live_error) = {
        let live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        (live.sessions.len(), live.sync_error.clone())
    };
    let path = shared.path();
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let now = super::metrics::Snapshot {
        log_seq,
        devices_connected: sessions,
        auth_waiting,
        file_bytes: size(path) + size(std::path::Path::new(&wal)),
        in_error: crate::node::sync_error_of(shared, live_error).is_some(),
        raft: shared.cluster.get().map(|p| {
            let s = crate::node::cluster_status_of(p);
            super::metrics::RaftFigures {
                term: s.term,
                last_log_index: s.last_log_index.unwrap_or(0),
                applied_index: s.applied_index.unwrap_or(0),
                leader: s.role == "leader",
                quorum_lost: s.quorum_silence_ms.is_some(),
            }
        }),
    };
    match shared.metrics.encode(&now) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
