//! Small helpers on SQL text: splitting a script into statements and reading leading keywords.

/// Whether `sql` ends with a complete statement (SQLite's own judgement, which knows that the
/// `;` inside a CREATE TRIGGER body does not end it).
pub fn is_complete(sql: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(sql) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; sqlite3_complete
    // only reads it and keeps no pointer to it.
    unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
}

/// Split a script into complete statements (each keeps its `;`); a trailing incomplete part is
/// returned as the last item so that SQLite reports its syntax error.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in sql.bytes().enumerate() {
        if b == b';' && is_complete(&sql[start..=i]) {
            let s = &sql[start..=i];
            if !is_blank(s) {
                out.push(s);
            }
            start = i + 1;
        }
    }
    let rest = &sql[start..];
    if !is_blank(rest) {
        out.push(rest);
    }
    out
}

/// True when `s` holds nothing but whitespace, comments and semicolons.
pub fn is_blank(mut s: &str) -> bool {
    loop {
        s = strip_leading(s);
        match s.strip_prefix(';') {
            Some(rest) => s = rest,
            None => return s.is_empty(),
        }
    }
}

/// `s` without leading whitespace and comments.
pub fn strip_leading(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.find("*/").map_or("", |i| &rest[i + 2..]);
        } else {
            return s;
        }
    }
}

/// The leading words of a statement, upper-cased (identifiers and keywords only).
pub fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    strip_leading(s)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase())
}

pub fn first_word(s: &str) -> String {
    strip_leading(s)
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_scripts_and_keeps_trigger_bodies_whole() {
        let s = "CREATE TABLE t(a); -- c\nCREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END; SELECT ';'";
        let parts = split_statements(s);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(parts[1].contains("SELECT 2; END;"));
        assert_eq!(parts[2].trim(), "SELECT ';'");
        assert!(split_statements("  ;; -- nothing\n").is_empty());
        assert_eq!(first_word("/* x */ commit;"), "COMMIT");
    }
}
