//! Client of an external authorization service (`PRAGMA authorizer_service="tcp://host:port"`).
//!
//! Protocol (docs/authorizer-service.md): UTF-8 JSON messages, each framed by a 4-byte
//! big-endian length. The primary announces itself with `{"leader":true}`, then sends each
//! request; the service answers each by public key, in any order, whenever it likes.

use super::{Action, AuthRequest, Decision};
use crate::error::{Error, Result};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Largest message accepted from the service.
pub const MAX_FRAME: usize = 1024 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A connection that lasted this long was a working one: the next reconnection starts again
/// from the shortest back-off.
const STEADY_CONNECTION: Duration = Duration::from_secs(5);

/// Runs the statements of an answer on the primary's database: `execute` (returns the last
/// inserted row id) or `find` (returns the first column of the first row), for the node of the
/// public key given first (whose id replaces `@node_id` in the SQL).
pub type Executor = std::sync::Arc<ExecuteFn>;
pub type ExecuteFn = dyn Fn(&str, &[String], Option<&str>) -> Result<Option<i64>> + Send + Sync;

/// An answer for the engine, and where it says whether it applied it.
pub type Decided = (Answer, oneshot::Sender<bool>);

/// What the service decided on a key, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub pubkey: String,
    pub decision: Decision,
}

/// `tcp://host:port` as the service's address (`host:port`), or what is wrong with it.
pub fn address(value: &str) -> std::result::Result<String, String> {
    let rest = value
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("`{value}` must start with tcp://"))?;
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(rest.to_string())
        }
        _ => Err(format!("`{value}` is not tcp://host:port")),
    }
}

/// Read one frame as JSON; None at a clean end of stream.
pub async fn read_frame(s: &mut (impl AsyncReadExt + Unpin)) -> Result<Option<Json>> {
    match read_raw_frame(s).await? {
        Some(body) => parse_json(&body).map(Some),
        None => Ok(None),
    }
}

/// One frame's JSON. A frame that is not JSON is the service's bug, and the next frame is
/// still readable: the caller logs it and goes on.
fn parse_json(body: &[u8]) -> Result<Json> {
    serde_json::from_slice(body)
        .map_err(|e| Error::rule(format!("the authorization service sent invalid JSON: {e}")))
}

/// Read one frame's bytes; None at a clean end of stream. A frame over [`MAX_FRAME`] ends the
/// connection: what follows it cannot be told apart from its body.
async fn read_raw_frame(s: &mut (impl AsyncReadExt + Unpin)) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::io("reading from the authorization service", e)),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(Error::rule(format!(
            "the authorization service announced a message of {n} bytes; the limit is \
             {MAX_FRAME}"
        )));
    }
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| Error::io("reading from the authorization service", e))?;
    Ok(Some(buf))
}

pub async fn write_frame(s: &mut (impl AsyncWriteExt + Unpin), msg: &Json) -> Result<()> {
    let body = msg.to_string().into_bytes();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    s.write_all(&frame)
        .await
        .map_err(|e| Error::io("writing to the authorization service", e))
}

/// The JSON request for the service: data that is JSON is embedded as JSON.
pub fn request_json(r: &AuthRequest) -> Json {
    let data = match (&r.action, &r.data) {
        (Action::NewNode, _) => serde_json::from_str(&r.node_info).unwrap_or(Json::Null),
        (_, Some(d)) => serde_json::from_str(d).unwrap_or_else(|_| Json::String(d.clone())),
        (_, None) => Json::Null,
    };
    serde_json::json!({ "action": r.action.as_str(), "data": data, "pubkey": r.pubkey, "node_info": r.node_info })
}

/// `msg` for a log line: at most a few hundred characters of it.
fn brief(msg: &Json) -> String {
    let text = msg.to_string();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Turn an answer into a decision, running its `execute` / `find` with `exec`.
/// Errors name what was wrong, so the service's author can fix it.
pub fn parse_answer(msg: &Json, exec: &ExecuteFn) -> Result<Answer> {
    let bad = |what: &str| {
        Error::rule(format!(
            "authorization service answer {}: {what}",
            brief(msg)
        ))
    };
    let pubkey = msg
        .get("pubkey")
        .and_then(Json::as_str)
        .filter(|k| crate::crypto::PublicKey::from_hex(k).is_ok())
        .ok_or_else(|| bad("`pubkey` must be the request's public key (64 hex digits)"))?
        .to_ascii_lowercase();
    if let Some(t) = msg.get("node_type") {
        let decision = match t.as_str() {
            Some(t @ ("primary" | "secondary")) => Decision::from_node_answer(t),
            _ => match t.as_i64() {
                Some(-1) => Decision::Reject("not authorized".into()),
                _ => return Err(bad("`node_type` must be \"primary\", \"secondary\" or -1")),
            },
        };
        return Ok(Answer { pubkey, decision });
    }
    let execute: Vec<String> = match msg.get("execute") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`execute` must be a list of SQL strings"))?,
        Some(_) => return Err(bad("`execute` must be a list of SQL strings")),
    };
    let find = match msg.get("find") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.as_str()),
        Some(_) => return Err(bad("`find` must be one SELECT statement")),
    };
    let mut user_id = match msg.get("user_id") {
        None => None,
        Some(v) => Some(v.as_i64().filter(|u| *u >= -1).ok_or_else(|| {
            bad("`user_id` must be N > 0 (that user), 0 (a new one) or -1 (reject)")
        })?),
    };
    if user_id.is_none_or(|u| u >= 0) && (!execute.is_empty() || find.is_some()) {
        match exec(&pubkey, &execute, find)? {
            Some(u) if user_id.is_none_or(|x| x == 0) => user_id = Some(u),
            Some(_) => {}
            None if find.is_some() => {
                return Ok(Answer {
                    pubkey,
                    decision: Decision::Reject("user not found".into()),
                })
            }
            None => {}
        }
    }
    let decision = match user_id {
        Some(u) if u >= 0 => Decision::User(u),
        Some(_) => Decision::Reject("not authorized".into()),
        None => {
            return Err(bad(
                "give `user_id` (or `node_type`), or `execute` / `find` to obtain it",
            ))
        }
    };
    Ok(Answer { pubkey, decision })
}

/// The connection to the service, kept up for as long as the node runs. Requests come in on
/// `requests`; answers go out through `decided`. Unanswered requests are sent again after a
/// reconnection, except those the backend decided some other way meanwhile (the keys on
/// `settled`, with whatever the engine says of them).
pub async fn run<S: Clone>(
    addr: String,
    mut requests: mpsc::Receiver<AuthRequest>,
    exec: Executor,
    decided: mpsc::Sender<Decided>,
    mut settled: broadcast::Receiver<(String, S)>,
) {
    let mut waiting: HashMap<String, AuthRequest> = HashMap::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        match TcpStream::connect(&addr).await {
            Ok(stream) => {
                tracing::info!(%addr, "connected to the authorization service");
                let began = tokio::time::Instant::now();
                let links = Links {
                    requests: &mut requests,
                    settled: &mut settled,
                    decided: &decided,
                };
                match serve(stream, links, &mut waiting, &exec).await {
                    Ok(()) => return, // the node is gone
                    Err(e) => tracing::warn!(%addr, "authorization service connection ended: {e}"),
                }
                // A service that ends every connection at once (it sends what the primary
                // cannot read) is not called again at once either.
                if began.elapsed() > STEADY_CONNECTION {
                    backoff = MIN_BACKOFF;
                }
            }
            Err(e) => tracing::debug!(%addr, "cannot reach the authorization service: {e}"),
        }
        // Keep taking requests while disconnected, so none is lost.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                r = requests.recv() => match r {
                    Some(r) => { waiting.insert(r.pubkey.clone(), r); }
                    None => return,
                },
                s = settled.recv() => if !forget_settled(s, &mut waiting) {
                    return;
                },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Where requests come from and decisions go, for one connection to the service.
struct Links<'a, S> {
    requests: &'a mut mpsc::Receiver<AuthRequest>,
    settled: &'a mut broadcast::Receiver<(String, S)>,
    decided: &'a mpsc::Sender<Decided>,
}

/// A key the backend decided is no longer the service's to answer. Returns false once the
/// node is gone.
fn forget_settled<S>(
    settled: std::result::Result<(String, S), broadcast::error::RecvError>,
    waiting: &mut HashMap<String, AuthRequest>,
) -> bool {
    match settled {
        Ok((key, _)) => {
            waiting.remove(&key);
            true
        }
        // Missed ones are sent again at the next connection; the engine ignores answers to them.
        Err(broadcast::error::RecvError::Lagged(_)) => true,
        Err(broadcast::error::RecvError::Closed) => false,
    }
}

async fn serve<S: Clone>(
    stream: TcpStream,
    links: Links<'_, S>,
    waiting: &mut HashMap<String, AuthRequest>,
    exec: &Executor,
) -> Result<()> {
    let Links {
        requests,
        settled,
        decided,
    } = links;
    let (mut rd, mut wr) = stream.into_split();
    write_frame(&mut wr, &serde_json::json!({ "leader": true })).await?;
    // Decided while disconnected: not sent again.
    loop {
        match settled.try_recv() {
            Ok((key, _)) => {
                waiting.remove(&key);
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    for r in waiting.values() {
        write_frame(&mut wr, &request_json(r)).await?;
    }
    let (answers_tx, mut answers) = mpsc::channel::<Result<Option<Vec<u8>>>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_raw_frame(&mut rd).await;
            let end = !matches!(frame, Ok(Some(_)));
            if answers_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let result = async {
        loop {
            tokio::select! {
                r = requests.recv() => {
                    let Some(r) = r else { return Ok(()) };
                    write_frame(&mut wr, &request_json(&r)).await?;
                    waiting.insert(r.pubkey.clone(), r);
                }
                s = settled.recv() => if !forget_settled(s, waiting) {
                    return Ok(());
                },
                a = answers.recv() => {
                    let msg = match a {
                        Some(Ok(Some(body))) => match parse_json(&body) {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::warn!("{e}: ignored");
                                continue;
                            }
                        },
                        Some(Err(e)) => return Err(e),
                        _ => return Err(Error::rule("the service closed the connection")),
                    };
                    // Only an answer to a request put to it and not answered yet: one for
                    // another key runs none of its SQL and decides nothing.
                    let asked = msg
                        .get("pubkey")
                        .and_then(Json::as_str)
                        .is_some_and(|k| waiting.contains_key(&k.to_ascii_lowercase()));
                    if !asked {
                        tracing::warn!(
                            "authorization service answer {}: no request of that `pubkey` waits \
                             for this service's answer (never asked, or answered already): \
                             ignored",
                            brief(&msg)
                        );
                        continue;
                    }
                    let exec = exec.clone();
                    let parsed = tokio::task::spawn_blocking(move || parse_answer(&msg, &*exec))
                        .await
                        .map_err(|_| Error::rule("the answer handler failed"))?;
                    match parsed {
                        Ok(answer) => {
                            let key = answer.pubkey.clone();
                            let (taken, applied) = oneshot::channel();
                            if decided.send((answer, taken)).await.is_err() {
                                return Ok(());
                            }
                            // One the engine refused (a sign-up naming an existing user) still
                            // waits for a better answer.
                            if applied.await.unwrap_or(false) {
                                waiting.remove(&key);
                            }
                        }
                        // A bad answer is the service's bug: log it, keep the connection.
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
            }
        }
    }
    .await;
    reader.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_sql(_: &str, _: &[String], _: Option<&str>) -> Result<Option<i64>> {
        Ok(None)
    }

    #[test]
    fn answers_parse_and_garbage_is_refused() {
        let k = crate::crypto::NodeKeys::generate().public_key().to_hex();
        let ok = |j: Json| parse_answer(&j, &no_sql).map(|a| a.decision);
        assert_eq!(
            ok(serde_json::json!({"pubkey": k, "user_id": 3})).unwrap(),
            Decision::User(3)
        );
        assert!(matches!(
            ok(serde_json::json!({"pubkey": k, "user_id": -1})).unwrap(),
            Decision::Reject(_)
        ));
        assert_eq!(
            ok(serde_json::json!({"pubkey": k, "node_type": "secondary"})).unwrap(),
            Decision::Node(crate::uri::Role::Secondary)
        );
        let via_sql = |_: &str, _: &[String], _: Option<&str>| Ok(Some(41));
        let a = parse_answer(
            &serde_json::json!({"pubkey": k, "execute": ["INSERT ..."]}),
            &via_sql,
        )
        .unwrap();
        assert_eq!(a.decision, Decision::User(41));
        for bad in [
            serde_json::json!({"user_id": 1}),
            serde_json::json!({"pubkey": "zz", "user_id": 1}),
            serde_json::json!({"pubkey": k}),
            serde_json::json!({"pubkey": k, "user_id": "one"}),
            serde_json::json!({"pubkey": k, "user_id": -2}),
            serde_json::json!({"pubkey": k, "node_type": "boss"}),
            serde_json::json!({"pubkey": k, "execute": "not a list"}),
            serde_json::json!({"pubkey": k, "find": 7}),
            serde_json::json!([1, 2]),
        ] {
            assert!(parse_answer(&bad, &no_sql).is_err(), "{bad}");
        }
    }
}
