//! Who may use the console: the admin token, the browser sessions it opens, and the checks
//! that keep other sites from acting through a logged-in browser.

use axum::http::{header, HeaderMap};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Mutex;

/// The meta key of the token the node made at its first start with a console.
pub const TOKEN_KEY: &str = "admin_token";
/// The session cookie's name.
pub const COOKIE: &str = "octodb_admin";
/// The header the page sends its CSRF token in; other sites cannot set it without CORS.
pub const CSRF_HEADER: &str = "x-octodb-csrf";
/// Browser sessions kept at once; the oldest goes first (a login is cheap to redo).
const MAX_SESSIONS: usize = 256;

/// 32 random bytes, hex: a token, a session id or a CSRF token.
pub fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Compare secrets without stopping at the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the console's token came from: what the node's start line says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The operator's (`admin_token=`, `admin_token_env=`, `admin_token_file=`).
    Given,
    /// Kept in the node's file since an earlier start.
    Kept,
    /// Made now and kept in the file: printed this once.
    Created,
}

/// The token from the operator (URI), else the one kept in the file, else a new one kept
/// there now.
pub fn load_or_create_token(
    conn: &rusqlite::Connection,
    given: Option<&crate::uri::AdminToken>,
) -> crate::error::Result<(String, TokenSource)> {
    if let Some(t) = given {
        return Ok((t.0.clone(), TokenSource::Given));
    }
    if let Some(t) = crate::store::meta_get::<String>(conn, TOKEN_KEY)? {
        return Ok((t, TokenSource::Kept));
    }
    let t = random_hex();
    crate::store::meta_set(conn, TOKEN_KEY, t.clone())?;
    Ok((t, TokenSource::Created))
}

/// Logged-in browsers: session id → CSRF token.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<(HashMap<String, String>, std::collections::VecDeque<String>)>,
}

impl Sessions {
    /// A new session: (session id, CSRF token).
    pub fn open(&self) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut s = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if s.1.len() >= MAX_SESSIONS {
            if let Some(old) = s.1.pop_front() {
                s.0.remove(&old);
            }
        }
        s.0.insert(id.clone(), csrf.clone());
        s.1.push_back(id.clone());
        (id, csrf)
    }

    /// The CSRF token of session `id`, if it is one.
    pub fn csrf(&self, id: &str) -> Option<String> {
        self.by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(id)
            .cloned()
    }

    pub fn close(&self, id: &str) {
        let mut s = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        s.0.remove(id);
        s.1.retain(|x| x != id);
    }
}

/// How a request proved it may be served.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// `Authorization: Bearer TOKEN`: a script; browsers never add it by themselves.
    Bearer,
    /// A logged-in browser, with its session's CSRF token.
    Browser { session: String, csrf: String },
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Who calls, or None (401).
pub fn caller(headers: &HeaderMap, token: &str, sessions: &Sessions) -> Option<Caller> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110).
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        })
        .map(|(_, token)| token);
    if let Some(b) = bearer {
        return same_secret(b.trim(), token).then_some(Caller::Bearer);
    }
    let session = cookie(headers, COOKIE)?;
    let csrf = sessions.csrf(&session)?;
    Some(Caller::Browser { session, csrf })
}

/// Why a state-changing request from a browser is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CsrfError {
    #[error(
        "cross-site request refused: Sec-Fetch-Site is `{0}`; act from the console's own page"
    )]
    CrossSite(String),
    #[error("cross-site request refused: Origin `{0}` is not this console's; act from the console's own page")]
    Origin(String),
    #[error("missing or wrong {CSRF_HEADER} header; reload the console's page and try again")]
    Token,
}

/// A browser's POST must come from the console's page: the browser says it is same-origin
/// (Sec-Fetch-Site, or Origin against Host) and the page's CSRF token is in the header.
pub fn check_csrf(headers: &HeaderMap, caller: &Caller) -> Result<(), CsrfError> {
    let Caller::Browser { csrf, .. } = caller else {
        return Ok(());
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some(site) = text("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(CsrfError::CrossSite(site));
        }
    }
    if let (Some(origin), Some(host)) = (text("origin"), text("host")) {
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or(&origin);
        if bare != host {
            return Err(CsrfError::Origin(origin));
        }
    }
    match text(CSRF_HEADER) {
        Some(given) if same_secret(&given, csrf) => Ok(()),
        _ => Err(CsrfError::Token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn browser() -> Caller {
        Caller::Browser {
            session: "s".into(),
            csrf: "c".into(),
        }
    }

    #[test]
    fn a_cross_site_post_is_refused_even_with_the_token() {
        let mut h = HeaderMap::new();
        h.insert(CSRF_HEADER, HeaderValue::from_static("c"));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(matches!(
            check_csrf(&h, &browser()),
            Err(CsrfError::CrossSite(_))
        ));
        let mut h = HeaderMap::new();
        h.insert(CSRF_HEADER, HeaderValue::from_static("c"));
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        assert!(matches!(
            check_csrf(&h, &browser()),
            Err(CsrfError::Origin(_))
        ));
        let mut h = HeaderMap::new();
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:8080"));
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(check_csrf(&h, &browser()), Err(CsrfError::Token));
        h.insert(CSRF_HEADER, HeaderValue::from_static("c"));
        assert_eq!(check_csrf(&h, &browser()), Ok(()));
        assert_eq!(check_csrf(&HeaderMap::new(), &Caller::Bearer), Ok(()));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
