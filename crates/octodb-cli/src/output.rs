//! Small text helpers: one-line error messages and the demo's aligned tables (the shell's
//! output modes are in shell/modes.rs).

use octodb::{Rows, Value};

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its causes on one line, each cause once: a message that already ends with its
/// cause's text (as `thiserror`'s "...: {source}" do) is not followed by it again.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = one_line(&cause.to_string());
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// A small aligned table, for the demo.
pub fn table(rows: &Rows) -> String {
    let mut widths: Vec<usize> = rows.columns.iter().map(|c| c.len()).collect();
    let cells: Vec<Vec<String>> = rows
        .rows
        .iter()
        .map(|r| r.iter().map(text).collect())
        .collect();
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |vals: &[String]| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut s = format!("    {}\n", fmt(&rows.columns));
    s += &format!(
        "    {}\n",
        fmt(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>())
    );
    for r in &cells {
        s += &format!("    {}\n", fmt(r));
    }
    if cells.is_empty() {
        s += "    (no rows)\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(io).context("binding: Address already in use");
        assert_eq!(error_line(&e), "binding: Address already in use");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_line(&e), "outer: inner");
    }
}
