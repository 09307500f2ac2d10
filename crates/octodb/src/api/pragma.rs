//! The PRAGMAs octodb answers itself, before SQLite sees them.

use crate::error::{Error, Result};

/// A parsed `PRAGMA name [= value]` / `PRAGMA name(value)` of ours.
#[derive(Debug, Clone, PartialEq)]
pub struct Pragma {
    pub name: String,
    pub value: Option<String>,
}

/// Names the engine handles; any other PRAGMA goes to SQLite.
const OURS: &[&str] = &[
    "sync_status",
    "nodes",
    "user_signup",
    "user_login",
    "authorize_user",
    "authorize_node",
    "preauthorize_user",
    "preauthorize_node",
    "authorizer_service",
    "remove_primary",
    "rekey",
    "hexrekey",
    "admin_address",
    "admin_token",
    "new_identity",
    "txn_status",
    "pending_txns",
];

/// The PRAGMAs that change an encrypted file's key: a node's connections take turns for them;
/// on a plain local database they are SQLCipher's own.
pub const REKEY: &[&str] = &["rekey", "hexrekey"];

/// Parse `sql` as one of our PRAGMAs; None when it is something else.
pub fn parse(sql: &str) -> Result<Option<Pragma>> {
    let s = super::sql_text::strip_leading(sql);
    let Some(rest) = strip_keyword(s, "PRAGMA") else {
        return Ok(None);
    };
    let rest = rest.trim_start();
    let name_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let name = rest[..name_len].to_ascii_lowercase();
    if !OURS.contains(&name.as_str()) {
        return Ok(None);
    }
    let rest = rest[name_len..].trim().trim_end_matches(';').trim();
    let bad = |reason: &str| Error::Pragma {
        name: name.clone(),
        reason: reason.to_string(),
    };
    let value = if rest.is_empty() {
        None
    } else if let Some(v) = rest.strip_prefix('=') {
        Some(parse_value(v.trim()).ok_or_else(|| bad("the value must be one quoted string ('...' or \"...\", a quote inside doubled) or a plain word"))?)
    } else if let Some(v) = rest.strip_prefix('(').and_then(|v| v.strip_suffix(')')) {
        Some(
            parse_value(v.trim())
                .ok_or_else(|| bad("the value must be one quoted string or a plain word"))?,
        )
    } else {
        return Err(bad("expected `= value` after the name"));
    };
    Ok(Some(Pragma { name, value }))
}

fn strip_keyword<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    let head = s.get(..kw.len())?;
    let rest = &s[kw.len()..];
    (head.eq_ignore_ascii_case(kw) && rest.starts_with(|c: char| c.is_whitespace())).then_some(rest)
}

/// A quoted string (quote doubled inside) or a bare word/number.
fn parse_value(v: &str) -> Option<String> {
    let mut chars = v.chars();
    match chars.next()? {
        q @ ('\'' | '"') => {
            let inner = v.get(1..v.len().checked_sub(1)?)?;
            if !v.ends_with(q) || v.len() < 2 {
                return None;
            }
            let doubled: String = [q, q].iter().collect();
            // A lone quote inside means the string ended early: refuse rather than guess.
            if inner.replace(&doubled, "").contains(q) {
                return None;
            }
            Some(inner.replace(&doubled, &q.to_string()))
        }
        _ if v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:+".contains(c)) =>
        {
            Some(v.to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ours_and_ignores_others() {
        assert_eq!(
            parse("PRAGMA sync_status").ok().flatten().map(|p| p.name),
            Some("sync_status".into())
        );
        assert_eq!(parse("pragma journal_mode=WAL").ok().flatten(), None);
        let p = parse("PRAGMA user_login='{\"a\": \"it''s\"}'")
            .ok()
            .flatten();
        assert_eq!(p.and_then(|p| p.value), Some("{\"a\": \"it's\"}".into()));
        let p = parse("PRAGMA authorize_user=\"ab:12\";").ok().flatten();
        assert_eq!(p.and_then(|p| p.value), Some("ab:12".into()));
        assert!(parse("PRAGMA user_login='unterminated").is_err());
        assert!(parse("PRAGMA user_login='a'b'").is_err());
    }
}
