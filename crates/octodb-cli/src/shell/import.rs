//! `.import [--csv] [--skip N] FILE TABLE`: rows of a CSV file into a table, with the sqlite3
//! shell's rules: a table that does not exist is created from the header row (every column
//! TEXT); into an existing table every row is data (use `--skip 1` to drop a header). Short
//! rows are filled with NULL and long ones cut, each with a warning. The rows go in one
//! transaction, so on a node they reach devices as one commit.

use super::dump::quote_ident;
use octodb::Connection;

/// One CSV record per item: RFC 4180 quoting (a field in double quotes may hold the
/// separator, newlines and `""`), `sep` between fields, CRLF or LF between records.
pub fn parse_csv(text: &str, sep: char) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    let mut started = false;
    while let Some(c) = chars.next() {
        started = true;
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && field.is_empty() {
            in_quotes = true;
        } else if c == sep {
            record.push(std::mem::take(&mut field));
        } else if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            record.push(std::mem::take(&mut field));
            records.push(std::mem::take(&mut record));
            started = false;
        } else {
            field.push(c);
        }
    }
    if started {
        record.push(field);
        records.push(record);
    }
    records
}

pub struct Import<'a> {
    pub file: &'a str,
    pub table: &'a str,
    pub skip: usize,
    pub sep: char,
}

/// Run the import; returns the warnings to print (sqlite3 prints them on standard error).
pub fn run(conn: &Connection, imp: &Import) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(imp.file)
        .with_context(|| format!("cannot open \"{}\" to read it", imp.file))?;
    let mut records = parse_csv(&text, imp.sep).into_iter().skip(imp.skip);
    let mut warnings = Vec::new();
    let q = quote_ident(imp.table);
    let exists = !conn
        .query(
            "SELECT 1 FROM sqlite_schema WHERE type IN ('table', 'view') AND name = ?1",
            [imp.table],
        )?
        .is_empty();
    let tx_started = conn.is_autocommit();
    if tx_started {
        // IMMEDIATE: on a node the engine writes the file too; a transaction that read
        // before its first write would fail as busy if the engine committed in between.
        conn.execute_batch("BEGIN IMMEDIATE")?;
    }
    let result = (|| -> anyhow::Result<()> {
        if !exists {
            let header = records
                .next()
                .with_context(|| format!("{}: empty file", imp.file))?;
            let cols: Vec<String> = header
                .iter()
                .map(|h| format!("\"{}\" TEXT", h.replace('"', "\"\"")))
                .collect();
            conn.execute_batch(&format!(
                "CREATE TABLE \"{}\"(\n{});",
                imp.table.replace('"', "\"\""),
                cols.join(", ")
            ))?;
        }
        let ncols = conn
            .query(&format!("SELECT * FROM {q} LIMIT 0"), [])?
            .columns
            .len();
        let marks = vec!["?"; ncols].join(",");
        let insert = format!("INSERT INTO {q} VALUES({marks})");
        let mut stmt = conn.prepare(&insert)?;
        for (i, mut rec) in records.enumerate() {
            let line = i + 1 + imp.skip + usize::from(!exists);
            if rec.len() == 1 && rec[0].is_empty() {
                continue;
            }
            if rec.len() < ncols {
                warnings.push(format!(
                    "{}:{line}: expected {ncols} columns but found {} - filling the rest with NULL",
                    imp.file,
                    rec.len()
                ));
            } else if rec.len() > ncols {
                warnings.push(format!(
                    "{}:{line}: expected {ncols} columns but found {} - extras ignored",
                    imp.file,
                    rec.len()
                ));
                rec.truncate(ncols);
            }
            let mut vals: Vec<Option<String>> = rec.into_iter().map(Some).collect();
            vals.resize(ncols, None);
            stmt.execute(rusqlite::params_from_iter(vals))
                .with_context(|| format!("{}:{line}: INSERT failed", imp.file))?;
        }
        Ok(())
    })();
    if tx_started {
        match &result {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(_) => {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
    }
    result.map(|()| warnings)
}

#[cfg(test)]
mod tests {
    use super::parse_csv;

    #[test]
    fn csv_quotes_separators_and_newlines() {
        let r = parse_csv("a,b\r\n\"x,\"\"y\"\"\",\"two\nlines\"\n3,\n", ',');
        assert_eq!(r[0], ["a", "b"]);
        assert_eq!(r[1], ["x,\"y\"", "two\nlines"]);
        assert_eq!(r[2], ["3", ""]);
        assert_eq!(r.len(), 3);
    }
}
