//! Completion on a terminal: dot commands at the start of a line, SQL keywords, and the
//! database's table and column names. The names are read from `sqlite_schema` and
//! `pragma_table_info` once and again after each statement that changes the schema.

use octodb::Connection;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};
use std::sync::{Arc, Mutex};

const KEYWORDS: &[&str] = &[
    "SELECT", "FROM", "WHERE", "INSERT", "INTO", "VALUES", "UPDATE", "SET", "DELETE", "CREATE",
    "TABLE", "INDEX", "VIEW", "TRIGGER", "DROP", "ALTER", "ORDER", "GROUP", "BY", "LIMIT", "JOIN",
    "LEFT", "ON", "AND", "OR", "NOT", "NULL", "PRAGMA", "BEGIN", "COMMIT", "ROLLBACK", "PRIMARY",
    "KEY", "INTEGER", "TEXT", "REAL", "BLOB", "DISTINCT", "COUNT", "HAVING",
];

/// The names completion offers, shared with the shell, which refreshes them after DDL.
#[derive(Clone, Default)]
pub struct Names(Arc<Mutex<Vec<String>>>);

impl Names {
    pub fn refresh(&self, conn: &Connection) {
        let sql = "SELECT DISTINCT name FROM (SELECT name FROM sqlite_schema \
                   WHERE type IN ('table', 'view') AND name NOT LIKE '\\_octo\\_%' ESCAPE '\\' \
                   UNION ALL SELECT p.name FROM sqlite_schema AS s, pragma_table_info(s.name) AS p \
                   WHERE s.type IN ('table', 'view') AND s.name NOT LIKE '\\_octo\\_%' ESCAPE '\\') \
                   ORDER BY name";
        let names = match conn.query(sql, []) {
            Ok(rows) => rows
                .rows
                .iter()
                .filter_map(|r| match r.first() {
                    Some(octodb::Value::Text(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            // Completion is a convenience: without names it still offers keywords.
            Err(_) => Vec::new(),
        };
        if let Ok(mut n) = self.0.lock() {
            *n = names;
        }
    }
}

pub struct ShellHelper {
    pub names: Names,
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map_or(0, |i| {
                i + before[i..].chars().next().map_or(1, char::len_utf8)
            });
        let word = &before[start..];
        let pair = |s: &str| Pair {
            display: s.to_string(),
            replacement: s.to_string(),
        };
        if start == 0 && word.starts_with('.') {
            let cmds = super::dot::COMMANDS
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| pair(c))
                .collect();
            return Ok((0, cmds));
        }
        if before.starts_with(".mode ") {
            let modes = super::modes::Mode::NAMES
                .iter()
                .chain(&["tabs"])
                .filter(|m| m.starts_with(word))
                .map(|m| pair(m))
                .collect();
            return Ok((start, modes));
        }
        // After `table.`, complete the column part only.
        let (offset, stem) = match word.rfind('.') {
            Some(i) => (start + i + 1, &word[i + 1..]),
            None => (start, word),
        };
        if stem.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let lower = stem.to_lowercase();
        let mut out: Vec<Pair> = Vec::new();
        if let Ok(names) = self.names.0.lock() {
            out.extend(
                names
                    .iter()
                    .filter(|n| n.to_lowercase().starts_with(&lower))
                    .map(|n| pair(n)),
            );
        }
        let upper = stem.chars().next().is_some_and(char::is_uppercase);
        out.extend(
            KEYWORDS
                .iter()
                .filter(|k| k.to_lowercase().starts_with(&lower))
                .map(|k| {
                    pair(&if upper {
                        k.to_string()
                    } else {
                        k.to_lowercase()
                    })
                }),
        );
        Ok((offset, out))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl Helper for ShellHelper {}
