//! The SQL shell: interactive with history on a terminal; otherwise it reads standard input and
//! executes each statement as soon as it has arrived complete, so it can be driven by a pipe.

use crate::output::{one_line, print_rows};
use crate::ShellArgs;
use octodb::api::sql_text;
use octodb::Connection;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

const HELP: &str = "\
.status          this node's sync status (PRAGMA sync_status)
.nodes           the nodes this node knows (PRAGMA nodes)
.tables          user tables
.schema [TABLE]  CREATE statements
.help            this text
.quit / .exit    leave the shell
Any other input is SQL; a statement runs once it is complete (ends with ;).";

struct Shell {
    conn: Connection,
    json: bool,
    errors: usize,
}

pub fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let conn = Connection::open(&crate::normalize_uri(&args.uri))?;
    crate::progress::show_download(&conn);
    let mut sh = Shell {
        conn,
        json: args.json,
        errors: 0,
    };
    let interactive = args.sql.is_none() && std::io::stdin().is_terminal();
    match args.sql {
        Some(sql) => sh.run_sql(&sql),
        None if interactive => sh.interactive()?,
        None => sh.piped()?,
    }
    Ok(if sh.errors > 0 && !interactive {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What the reader should do after a line.
enum Flow {
    Continue,
    Quit,
}

impl Shell {
    fn report(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        eprintln!("Error: {}", one_line(&e.to_string()));
    }

    /// Run every statement of `sql`, printing results; errors are reported and skipped.
    fn run_sql(&mut self, sql: &str) {
        for stmt in sql_text::split_statements(sql) {
            match self.conn.query(stmt, []) {
                Ok(rows) => {
                    let returns_rows = !rows.columns.is_empty();
                    if let Err(e) = print_rows(
                        &mut std::io::stdout().lock(),
                        &rows,
                        self.json,
                        returns_rows,
                    ) {
                        self.report(format!("cannot write the output: {e}"));
                    }
                }
                Err(e) => self.report(e),
            }
        }
    }

    /// Feed one line of input; runs the buffered SQL once it forms complete statements.
    fn feed(&mut self, buffer: &mut String, line: &str) -> Flow {
        if sql_text::is_blank(buffer) && line.trim_start().starts_with('.') {
            buffer.clear();
            return self.dot_command(line.trim());
        }
        buffer.push_str(line);
        buffer.push('\n');
        if sql_text::is_complete(buffer) {
            let sql = std::mem::take(buffer);
            self.run_sql(&sql);
        }
        Flow::Continue
    }

    fn piped(&mut self) -> anyhow::Result<()> {
        let mut buffer = String::new();
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if let Flow::Quit = self.feed(&mut buffer, &line) {
                return Ok(());
            }
        }
        if !sql_text::is_blank(&buffer) {
            // An unfinished statement at the end: let SQLite say what is wrong with it.
            self.run_sql(&buffer);
        }
        Ok(())
    }

    fn interactive(&mut self) -> anyhow::Result<()> {
        use rustyline::error::ReadlineError;
        let mut editor = rustyline::DefaultEditor::new()?;
        let history =
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".octodb_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        let status = self.conn.sync_status()?;
        println!(
            "octodb {} — {} node {}; .help for help",
            env!("CARGO_PKG_VERSION"),
            status.node_type,
            status.node_id
        );
        let mut buffer = String::new();
        loop {
            let prompt = if sql_text::is_blank(&buffer) {
                "octodb> "
            } else {
                "   ...> "
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() && !names_a_key(&line) {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    if let Flow::Quit = self.feed(&mut buffer, &line) {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => buffer.clear(),
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        Ok(())
    }

    fn dot_command(&mut self, line: &str) -> Flow {
        let mut parts = line.split_whitespace();
        let cmd = parts.next().unwrap_or_default();
        let arg = parts.next();
        match cmd {
            ".quit" | ".exit" => return Flow::Quit,
            ".help" => println!("{HELP}"),
            ".status" => match self.conn.sync_status() {
                Ok(s) => {
                    let text = if self.json {
                        serde_json::to_string(&s)
                    } else {
                        serde_json::to_string_pretty(&s)
                    };
                    println!("{}", text.unwrap_or_default());
                }
                Err(e) => self.report(e),
            },
            ".nodes" => self.run_sql("PRAGMA nodes;"),
            ".tables" => self.run_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                 AND name NOT LIKE '\\_octo\\_%' ESCAPE '\\' ORDER BY name;",
            ),
            ".schema" => {
                let filter = arg.map_or(String::new(), |t| {
                    format!(" AND tbl_name = '{}'", t.replace('\'', "''"))
                });
                self.run_sql(&format!(
                    "SELECT sql || ';' FROM sqlite_master WHERE sql IS NOT NULL \
                     AND name NOT LIKE '\\_octo\\_%' ESCAPE '\\'{filter} ORDER BY rowid;"
                ));
            }
            _ => self.report(format!("unknown command `{cmd}`; .help lists the commands")),
        }
        let _ = std::io::stdout().flush();
        Flow::Continue
    }
}

/// A line that may hold a key (`PRAGMA rekey='...'`, `ATTACH ... KEY '...'`): kept out of the
/// shell's history file, which is plain text.
fn names_a_key(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    let keyed = |word: &str| lower.contains(word) && lower.contains("key");
    keyed("pragma") || keyed("attach") || lower.contains("sqlcipher")
}
