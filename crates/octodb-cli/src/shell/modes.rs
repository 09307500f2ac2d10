//! The output modes of the shell, printed as the sqlite3 shell (3.40, Debian's) prints them:
//! the same separators, quoting, number formats and box drawing, so scripts and eyes that know
//! sqlite3 read octodb's output alike.

use octodb::{Rows, Value};
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    List,
    Csv,
    Json,
    Table,
    Box,
    Line,
    Quote,
    Column,
    Markdown,
}

impl Mode {
    pub const NAMES: &'static [&'static str] = &[
        "box", "column", "csv", "json", "line", "list", "markdown", "quote", "table",
    ];

    pub fn parse(name: &str) -> Option<Mode> {
        Some(match name {
            "list" => Mode::List,
            "csv" => Mode::Csv,
            "json" => Mode::Json,
            "table" => Mode::Table,
            "box" => Mode::Box,
            "line" => Mode::Line,
            "quote" => Mode::Quote,
            "column" => Mode::Column,
            "markdown" => Mode::Markdown,
            _ => return None,
        })
    }

    /// Modes drawn as a grid always show the column names, as in sqlite3.
    fn always_headers(self) -> bool {
        matches!(self, Mode::Table | Mode::Box | Mode::Markdown)
    }
}

/// What `.mode`, `.headers`, `.separator` and `.nullvalue` set.
pub struct Format {
    pub mode: Mode,
    pub headers: bool,
    pub col_sep: String,
    pub row_sep: String,
    pub null: String,
}

impl Default for Format {
    fn default() -> Self {
        Format {
            mode: Mode::List,
            headers: false,
            col_sep: "|".into(),
            row_sep: "\n".into(),
            null: String::new(),
        }
    }
}

/// A real as C's `%!.Ng` prints it (sqlite3's shell uses N=15 for display and 20 for `.dump`,
/// `quote` and `json`): N significant digits, trailing zeros dropped but always a `.0` or an
/// exponent, so that a real reads back as a real.
pub fn real(f: f64, digits: usize) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Inf".into() } else { "-Inf".into() };
    }
    if f == 0.0 {
        return "0.0".into();
    }
    let sci = format!("{:.*e}", digits - 1, f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -4 || exp >= digits as i32 {
        let m = trim_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        let decimals = (digits as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{f:.decimals$}"))
    }
}

fn trim_zeros(s: &str) -> String {
    if !s.contains('.') {
        return format!("{s}.0");
    }
    let t = s.trim_end_matches('0');
    if t.ends_with('.') {
        format!("{t}0")
    } else {
        t.to_string()
    }
}

fn blob_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(3 + 2 * b.len());
    s.push_str("X'");
    for byte in b {
        s.push_str(&format!("{byte:02x}"));
    }
    s.push('\'');
    s
}

/// A value as plain text (list, line, column and the grids).
pub fn plain(v: &Value, null: &str) -> String {
    match v {
        Value::Null => null.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => real(*f, 15),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// A value as an SQL literal (quote mode and `.dump`).
pub fn sql_literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) if f.is_infinite() => if *f > 0.0 { "1e999" } else { "-1e999" }.into(),
        Value::Real(f) => real(*f, 20),
        Value::Text(s) => quote_text(s),
        Value::Blob(b) => blob_hex(b),
    }
}

pub fn quote_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn csv_field(s: &str, sep: &str, quoted_always: bool) -> String {
    let needs = quoted_always
        || s.is_empty()
        || s.contains(sep)
        || s.bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b == b'"' || b == b'\'');
    if needs {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_value(v: &Value, f: &Format) -> String {
    match v {
        Value::Null => f.null.clone(),
        Value::Integer(_) | Value::Real(_) => plain(v, &f.null),
        Value::Text(s) => csv_field(s, &f.col_sep, false),
        Value::Blob(b) => csv_field(&String::from_utf8_lossy(b), &f.col_sep, false),
    }
}

pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => real(*f, 20),
        Value::Text(s) => json_string(s),
        Value::Blob(b) => json_string(&String::from_utf8_lossy(b)),
    }
}

/// Print the rows of one statement in `f`'s mode. A statement without rows prints nothing
/// (sqlite3 prints no header for an empty result either).
pub fn print(out: &mut dyn Write, rows: &Rows, f: &Format) -> std::io::Result<()> {
    if rows.rows.is_empty() {
        return Ok(());
    }
    match f.mode {
        Mode::List | Mode::Csv | Mode::Quote => separated(out, rows, f)?,
        Mode::Json => {
            for (i, r) in rows.rows.iter().enumerate() {
                let fields: Vec<String> = rows
                    .columns
                    .iter()
                    .zip(r)
                    .map(|(c, v)| format!("{}:{}", json_string(c), json_value(v)))
                    .collect();
                let open = if i == 0 { "[" } else { ",\n" };
                write!(out, "{open}{{{}}}", fields.join(","))?;
            }
            writeln!(out, "]")?;
        }
        Mode::Line => {
            // sqlite3 right-aligns the names in at least 5 characters.
            let width = rows
                .columns
                .iter()
                .map(|c| width(c))
                .max()
                .unwrap_or(0)
                .max(5);
            for (i, r) in rows.rows.iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                for (c, v) in rows.columns.iter().zip(r) {
                    let pad = " ".repeat(width.saturating_sub(self::width(c)));
                    writeln!(out, "{pad}{c} = {}", plain(v, &f.null))?;
                }
            }
        }
        Mode::Table | Mode::Box | Mode::Markdown | Mode::Column => grid(out, rows, f)?,
    }
    out.flush()
}

fn separated(out: &mut dyn Write, rows: &Rows, f: &Format) -> std::io::Result<()> {
    let (sep, row_sep) = match f.mode {
        Mode::Quote => (",", "\n"),
        _ => (f.col_sep.as_str(), f.row_sep.as_str()),
    };
    if f.headers {
        let names: Vec<String> = rows
            .columns
            .iter()
            .map(|c| match f.mode {
                Mode::Csv => csv_field(c, sep, false),
                Mode::Quote => quote_text(c),
                _ => c.clone(),
            })
            .collect();
        write!(out, "{}{row_sep}", names.join(sep))?;
    }
    for r in &rows.rows {
        let cells: Vec<String> = r
            .iter()
            .map(|v| match f.mode {
                Mode::Csv => csv_value(v, f),
                Mode::Quote => sql_literal(v),
                _ => plain(v, &f.null),
            })
            .collect();
        write!(out, "{}{row_sep}", cells.join(sep))?;
    }
    Ok(())
}

/// Display width in characters (what the sqlite3 shell counts for its UTF-8 text).
fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad_left(s: &str, w: usize) -> String {
    format!("{s}{}", " ".repeat(w.saturating_sub(width(s))))
}

fn center(s: &str, w: usize) -> String {
    let room = w.saturating_sub(width(s));
    let left = room / 2;
    format!("{}{s}{}", " ".repeat(left), " ".repeat(room - left))
}

/// The grid modes: cells split on newlines into several lines, column widths from the
/// widest line. Rows are separated by a rule only when some cell spans lines (as sqlite3).
fn grid(out: &mut dyn Write, rows: &Rows, f: &Format) -> std::io::Result<()> {
    let cells: Vec<Vec<Vec<String>>> = rows
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| plain(v, &f.null).split('\n').map(String::from).collect())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = rows.columns.iter().map(|c| width(c)).collect();
    for r in &cells {
        for (w, lines) in widths.iter_mut().zip(r) {
            for l in lines {
                *w = (*w).max(width(l));
            }
        }
    }
    let multi = cells.iter().flatten().any(|lines| lines.len() > 1);
    let headers = f.headers || f.mode.always_headers();
    // (left edge, between cells, right edge) of a content line, and the rules.
    let (l, m, r) = match f.mode {
        Mode::Box => ("│ ", " │ ", " │"),
        Mode::Column => ("", "  ", ""),
        _ => ("| ", " | ", " |"),
    };
    let rule = |left: &str, mid: &str, right: &str, fill: &str| -> String {
        let parts: Vec<String> = widths.iter().map(|w| fill.repeat(w + 2)).collect();
        format!("{left}{}{right}", parts.join(mid))
    };
    let line = |vals: Vec<String>| format!("{l}{}{r}", vals.join(m));
    let (top, sep, bottom) = match f.mode {
        Mode::Box => (
            Some(rule("┌", "┬", "┐", "─")),
            rule("├", "┼", "┤", "─"),
            Some(rule("└", "┴", "┘", "─")),
        ),
        Mode::Table => {
            let t = rule("+", "+", "+", "-");
            (Some(t.clone()), t.clone(), Some(t))
        }
        Mode::Markdown => (None, rule("|", "|", "|", "-"), None),
        _ => (None, String::new(), None),
    };
    if let Some(t) = &top {
        writeln!(out, "{t}")?;
    }
    if headers {
        if f.mode == Mode::Column {
            let names: Vec<String> = rows
                .columns
                .iter()
                .zip(&widths)
                .map(|(c, w)| pad_left(c, *w))
                .collect();
            writeln!(out, "{}", line(names))?;
            let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            writeln!(out, "{}", line(dashes))?;
        } else {
            let names: Vec<String> = rows
                .columns
                .iter()
                .zip(&widths)
                .map(|(c, w)| center(c, *w))
                .collect();
            writeln!(out, "{}", line(names))?;
            writeln!(out, "{sep}")?;
        }
    }
    for (i, row) in cells.iter().enumerate() {
        if i > 0 && multi {
            match f.mode {
                Mode::Column => writeln!(out)?,
                Mode::Markdown => {}
                _ => writeln!(out, "{sep}")?,
            }
        }
        let height = row.iter().map(Vec::len).max().unwrap_or(1);
        for k in 0..height {
            let vals: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(lines, w)| pad_left(lines.get(k).map_or("", String::as_str), *w))
                .collect();
            writeln!(out, "{}", line(vals))?;
        }
    }
    if let Some(b) = &bottom {
        writeln!(out, "{b}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::real;

    #[test]
    fn reals_print_as_c_g_format_with_a_bang() {
        assert_eq!(real(1.0, 15), "1.0");
        assert_eq!(real(1e20, 15), "1.0e+20");
        assert_eq!(real(1e15, 15), "1.0e+15");
        assert_eq!(real(1e14, 15), "100000000000000.0");
        assert_eq!(real(1e-5, 15), "1.0e-05");
        assert_eq!(real(0.1, 20), "0.10000000000000000555");
        // Exact decimal rounding; sqlite3 prints ...817e-05 from its long double arithmetic.
        assert_eq!(real(1e-5, 20), "1.0000000000000000818e-05");
        assert_eq!(real(1e15, 20), "1000000000000000.0");
        assert_eq!(real(1234.5678901234567, 15), "1234.56789012346");
        assert_eq!(real(123.456, 15), "123.456");
        assert_eq!(real(-2.5, 15), "-2.5");
    }
}
