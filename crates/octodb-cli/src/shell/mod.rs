//! The SQL shell, with the sqlite3 shell's habits: interactive with history and completion on
//! a terminal; otherwise it reads standard input (or the SQL argument) line by line, dot
//! commands and SQL alike, and executes each statement as soon as it has arrived complete, so
//! it can be driven by a pipe or a script as sqlite3 is.

mod complete;
mod dot;
mod dump;
mod import;
mod modes;
pub mod sqlite3_options;

use crate::output::one_line;
use crate::ShellArgs;
use octodb::api::sql_text;
use octodb::Connection;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How deep `.read` may nest (a file that reads itself stops here).
const MAX_READ_DEPTH: usize = 16;

/// How long `--sync` and `.sync` wait for a device to be in sync when not told.
pub(crate) const SYNC_WAIT: Duration = Duration::from_secs(10);

/// A wait given in seconds (`--sync=SECONDS`, `.sync SECONDS`).
pub(crate) fn sync_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{text}` is not a number of seconds of 0 or more"))
}

pub struct Shell {
    conn: Connection,
    uri: String,
    json: bool,
    errors: usize,
    format: modes::Format,
    /// Whether `.headers` was given, which `.mode column` then respects.
    headers_set: bool,
    timer: bool,
    out: Box<dyn Write>,
    /// `.once`: the output goes back to the screen after the next command...
    once: bool,
    /// ...which is the one after `.once` itself.
    once_armed: bool,
    read_depth: usize,
    names: complete::Names,
    /// A device's events since the shell began, read at each sync to report the writes the
    /// primaries rejected.
    decisions: Option<Decisions>,
    /// `-bail` (and SQL given as arguments, as sqlite3 runs them): the first error ends the
    /// shell, so that no statement after a failed one runs.
    bail: bool,
    /// Set once an error ended the shell under `bail`.
    bailed: bool,
    /// `.exit N`: the exit code asked for.
    exit_code: Option<u8>,
}

/// What a device's shell hears of the primaries' decisions on its writes.
struct Decisions {
    events: tokio::sync::broadcast::Receiver<octodb::Event>,
    /// Unix time when the shell began listening.
    since: f64,
    /// The transactions this session committed: a rejection of one of them is an error; of
    /// an earlier session's write, heard now, a note.
    mine: std::collections::HashSet<u64>,
}

impl Decisions {
    /// A device's decisions, heard from now on (none on a primary or a local database).
    fn of(conn: &Connection) -> Option<Decisions> {
        (conn.role() == Some(octodb::Role::Secondary)).then(|| Decisions {
            events: conn.subscribe(),
            since: unix_now(),
            mine: Default::default(),
        })
    }
}

pub fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let uri = crate::normalize_uri(&args.uri);
    let conn = Connection::open(&uri)?;
    crate::progress::show_download(&conn);
    let decisions = Decisions::of(&conn);
    let mut sh = Shell {
        conn,
        uri,
        json: args.json,
        errors: 0,
        format: modes::Format::default(),
        headers_set: false,
        timer: false,
        out: Box::new(std::io::stdout()),
        once: false,
        once_armed: false,
        read_depth: 0,
        names: complete::Names::default(),
        decisions,
        bail: args.bail || !args.sql.is_empty(),
        bailed: false,
        exit_code: None,
    };
    let interactive = args.sql.is_empty() && std::io::stdin().is_terminal();
    // `--sync`: the statements see what the primaries hold, or none runs; and the shell ends
    // once its writes are decided, or says that they wait in the outbox.
    if let Some(timeout) = args.sync {
        let synced = sh.conn.sync_status().is_ok_and(|s| s.synced);
        if !synced && std::io::stderr().is_terminal() {
            eprintln!("waiting up to {timeout:?} for this device to sync with its primaries...");
        }
        if let Err(e) = sh.conn.wait_until_synced(timeout) {
            sh.report(e);
            return Ok(ExitCode::FAILURE);
        }
    }
    // sqlite3's options (`-header`, `-csv`, `-cmd ...`) as the commands they stand for.
    for command in &args.preamble {
        if let Flow::Quit = sh.script(&mut command.as_bytes()) {
            return Ok(sh.exit_code());
        }
    }
    if !args.sql.is_empty() {
        // As sqlite3: each argument is read as a script, dot commands included.
        for sql in &args.sql {
            if let Flow::Quit = sh.script(&mut sql.as_bytes()) {
                break;
            }
        }
    } else if interactive {
        sh.interactive()?;
    } else {
        sh.script(&mut std::io::stdin().lock());
    }
    if let Some(timeout) = args.sync {
        sh.sync(timeout);
    } else {
        sh.note_unsent();
    }
    let _ = sh.out.flush();
    if let Some(code) = sh.exit_code {
        return Ok(ExitCode::from(code));
    }
    Ok(if sh.errors > 0 && !interactive {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What the reader should do after a line.
pub(crate) enum Flow {
    Continue,
    Quit,
}

impl Shell {
    fn report(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        self.bailed |= self.bail;
        eprintln!("Error: {}", one_line(&e.to_string()));
    }

    /// The exit code of a shell ended early (`.exit N`, or an error under `-bail`).
    fn exit_code(&self) -> ExitCode {
        match self.exit_code {
            Some(code) => ExitCode::from(code),
            None if self.errors > 0 => ExitCode::FAILURE,
            None => ExitCode::SUCCESS,
        }
    }

    /// Without `--sync`, a device's shell ends without waiting: it says what it leaves unsent
    /// (kept in its file, sent when it next runs connected), so a script is not misled.
    fn note_unsent(&self) {
        if self.conn.role() != Some(octodb::Role::Secondary) {
            return;
        }
        let status = self.conn.sync_status().ok();
        // A sign-up or login is kept in memory only until the device reaches a primary: a
        // one-shot shell ended before it did, and the request went with it, in silence (the
        // suspended-devices walkthrough).
        if status
            .as_ref()
            .is_some_and(|s| s.auth_state.as_deref() == Some("requested"))
        {
            eprintln!(
                "note: this device's sign-up or login request was not sent: the shell ended \
                 before the device reached a primary, and the request is not kept. Run it \
                 again with --sync (or followed by .sync) to wait for the backend's answer"
            );
        }
        let unsent = status.map_or(0, |s| s.outbox_len);
        if unsent > 0 {
            eprintln!(
                "note: {unsent} transaction{} of this device not sent yet: kept in its file and \
                 sent when it next runs connected to a primary (--sync waits for them)",
                if unsent == 1 { "" } else { "s" }
            );
        }
    }

    /// `.sync`: wait until this device is in sync with its primaries, or say why it is not.
    /// A write the primaries rejected is reported as an error (it was taken back here).
    fn sync(&mut self, timeout: Duration) {
        let synced = self.conn.wait_until_synced(timeout);
        self.report_rejections();
        if let Err(e) = synced {
            self.report(e);
        }
    }

    /// The rejections heard since the last report: each with its reason, or, when too many
    /// events came to keep them all, the last one the status holds.
    fn report_rejections(&mut self) {
        let Some(d) = &mut self.decisions else { return };
        let mut rejected = Vec::new();
        let mut missed = false;
        loop {
            match octodb::next_event(&mut d.events, Duration::ZERO) {
                octodb::Next::Event(octodb::Event::TransactionRejected { txn_id, reason }) => {
                    rejected.push((txn_id, reason))
                }
                octodb::Next::Event(_) => {}
                octodb::Next::Missed(_) => missed = true,
                octodb::Next::Timeout | octodb::Next::Closed => break,
            }
        }
        if missed {
            let since = d.since;
            let last = self.conn.sync_status().ok().and_then(|s| s.last_rejected);
            if let Some(r) =
                last.filter(|r| r.at >= since && !rejected.iter().any(|(t, _)| *t == r.txn_id))
            {
                rejected.push((
                    r.txn_id,
                    format!("{} (and maybe others: see .status)", r.reason),
                ));
            }
        }
        let (own, earlier): (Vec<_>, Vec<_>) = rejected
            .into_iter()
            .partition(|(txn_id, _)| d.mine.contains(txn_id));
        for (txn_id, reason) in earlier {
            eprintln!(
                "note: the primaries rejected this device's transaction {txn_id}, written before \
                 this session, which is taken back here: {}",
                one_line(&reason)
            );
        }
        for (txn_id, reason) in own {
            self.report(format!(
                "the primaries rejected this device's transaction {txn_id}, which is taken back \
                 here: {reason}"
            ));
        }
    }

    fn write_out(&mut self, text: &str) {
        if let Err(e) = self.out.write_all(text.as_bytes()) {
            self.report(format!("cannot write the output: {e}"));
        }
    }

    fn say(&mut self, text: &str) {
        self.write_out(&format!("{text}\n"));
    }

    /// Run every statement of `sql`, printing results; errors are reported and skipped.
    fn run_sql(&mut self, sql: &str) {
        let mut schema_changed = false;
        for stmt in sql_text::split_statements(sql) {
            if self.bailed {
                break;
            }
            let started = Instant::now();
            let cpu = cpu_times();
            // As sqlite3: a parameter nothing bound is NULL.
            let unbound = self.conn.prepare(stmt).map_or(0, |s| s.parameter_count());
            let nulls = std::iter::repeat_n(rusqlite::types::Null, unbound);
            let result = self.conn.query(stmt, rusqlite::params_from_iter(nulls));
            let elapsed = started.elapsed();
            if let (Some(d), Some(txn)) = (&mut self.decisions, self.conn.last_txn_id()) {
                d.mine.insert(txn);
            }
            match result {
                Ok(rows) => {
                    let printed = if self.json {
                        if rows.columns.is_empty() {
                            Ok(())
                        } else {
                            writeln!(self.out, "{}", rows.to_json_text())
                                .and_then(|()| self.out.flush())
                        }
                    } else {
                        modes::print(&mut self.out, &rows, &self.format)
                    };
                    if let Err(e) = printed {
                        self.report(format!("cannot write the output: {e}"));
                    }
                }
                Err(e) => {
                    let hint = self.not_a_database_hint(&e);
                    self.report(format!("{e}{hint}"))
                }
            }
            if self.timer {
                let (user, sys) = match (cpu, cpu_times()) {
                    (Some(a), Some(b)) => (b.0 - a.0, b.1 - a.1),
                    _ => (0.0, 0.0),
                };
                let line = format!(
                    "Run Time: real {:.3} user {user:.6} sys {sys:.6}",
                    elapsed.as_secs_f64()
                );
                self.say(&line);
            }
            let first = sql_text::first_word(stmt);
            schema_changed |= matches!(first.as_str(), "CREATE" | "DROP" | "ALTER");
        }
        if schema_changed {
            self.names.refresh(&self.conn);
        }
    }

    /// What SQLite's "file is not a database" may mean on a file opened without a key.
    fn not_a_database_hint(&self, e: &octodb::Error) -> &'static str {
        let not_a_database = matches!(
            e,
            octodb::Error::Sqlite(err)
                if err.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase)
        );
        if not_a_database && !self.uri.contains("cipher=") {
            " (if it is encrypted, open it with its key: file:PATH?cipher=sqlcipher&key=...)"
        } else {
            ""
        }
    }

    /// Feed one line of input; runs the buffered SQL once it forms complete statements.
    fn feed(&mut self, buffer: &mut String, line: &str) -> Flow {
        let flow = if sql_text::is_blank(buffer) && line.trim_start().starts_with('.') {
            buffer.clear();
            let flow = self.dot_command(line.trim());
            self.after_command();
            flow
        } else {
            buffer.push_str(line);
            buffer.push('\n');
            // Only a line with a `;` can complete a statement: checking the whole buffer after
            // every line made a long statement quadratic (25,000 lines took 7 s).
            if line.contains(';') && sql_text::is_complete(buffer) {
                let sql = std::mem::take(buffer);
                self.run_sql(&sql);
                self.after_command();
            }
            Flow::Continue
        };
        let _ = self.out.flush();
        match self.bailed {
            true => Flow::Quit,
            false => flow,
        }
    }

    /// `.once` sends one command's output to its file: the command after `.once`.
    fn after_command(&mut self) {
        if self.once {
            if self.once_armed {
                let _ = self.out.flush();
                self.out = Box::new(std::io::stdout());
                self.once = false;
                self.once_armed = false;
            } else {
                self.once_armed = true;
            }
        }
    }

    /// Statements and dot commands, line by line, as sqlite3 reads a script.
    fn script(&mut self, input: &mut dyn BufRead) -> Flow {
        let mut buffer = String::new();
        for line in input.lines() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    self.report(format!("cannot read the input: {e}"));
                    return Flow::Continue;
                }
            };
            if let Flow::Quit = self.feed(&mut buffer, &line) {
                return Flow::Quit;
            }
        }
        if !sql_text::is_blank(&buffer) {
            // An unfinished statement at the end: let SQLite say what is wrong with it.
            self.run_sql(&buffer);
        }
        match self.bailed {
            true => Flow::Quit,
            false => Flow::Continue,
        }
    }

    fn read_file(&mut self, path: &str) {
        if self.read_depth >= MAX_READ_DEPTH {
            return self.report(format!(".read nested more than {MAX_READ_DEPTH} deep"));
        }
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => return self.report(format!("cannot open \"{path}\": {e}")),
        };
        self.read_depth += 1;
        // A `.quit` inside the file ends that file only.
        let _ = self.script(&mut std::io::BufReader::new(file));
        self.read_depth -= 1;
    }

    fn interactive(&mut self) -> anyhow::Result<()> {
        use rustyline::error::ReadlineError;
        let mut editor: rustyline::Editor<
            complete::ShellHelper,
            rustyline::history::DefaultHistory,
        > = rustyline::Editor::new()?;
        self.names.refresh(&self.conn);
        editor.set_helper(Some(complete::ShellHelper {
            names: self.names.clone(),
        }));
        let history =
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".octodb_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        interrupt_on_ctrl_c(self.conn.interrupt_handle());
        let status = self.conn.sync_status()?;
        let what = match status.node_type.as_str() {
            "local" => "a plain local database".to_string(),
            kind => format!("{kind} node {}", status.node_id),
        };
        println!(
            "octodb {} — {what}; .help for help",
            env!("CARGO_PKG_VERSION")
        );
        let mut buffer = String::new();
        let mut typed = HeldHistory::default();
        loop {
            let prompt = if sql_text::is_blank(&buffer) {
                "octodb> "
            } else {
                "   ...> "
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    typed.line(&line);
                    let flow = self.feed(&mut buffer, &line);
                    if sql_text::is_blank(&buffer) {
                        for entry in typed.statement_ended() {
                            let _ = editor.add_history_entry(entry.as_str());
                        }
                    }
                    if let Flow::Quit = flow {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    buffer.clear();
                    typed.statement_dropped();
                }
                Err(ReadlineError::Eof) => {
                    // As sqlite3: an unfinished statement at the end still runs.
                    if !sql_text::is_blank(&buffer) {
                        let sql = std::mem::take(&mut buffer);
                        self.run_sql(&sql);
                    }
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        Ok(())
    }
}

/// Interactive: Ctrl-C stops the running statement (it fails with "interrupted") and the
/// shell goes on, as sqlite3's does. (While a line is read, the terminal is raw and Ctrl-C
/// reaches the line editor instead, which drops the line.) Without this the signal was
/// ignored and a runaway query could only be killed.
fn interrupt_on_ctrl_c(handle: rusqlite::InterruptHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let spawned = std::thread::Builder::new()
        .name("octodb-shell-ctrl-c".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut interrupts) = signal(SignalKind::interrupt()) else {
                    return;
                };
                while interrupts.recv().await.is_some() {
                    handle.interrupt();
                }
            });
        });
    if let Err(e) = spawned {
        tracing::debug!("no Ctrl-C handler for the shell: {e}");
    }
}

/// This process's user and system CPU seconds, for `.timer` (Linux's /proc; elsewhere the
/// timer shows real time only).
fn cpu_times() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = 100.0; // USER_HZ, 100 on every Linux
    let user: f64 = fields.get(11)?.parse().ok()?;
    let sys: f64 = fields.get(12)?.parse().ok()?;
    Some((user / ticks, sys / ticks))
}

/// The lines of the statement being typed, held back from the history until it ends: only a
/// whole statement tells whether it names a key (`PRAGMA` on one line, `rekey='...'` on the
/// next).
#[derive(Default)]
struct HeldHistory(Vec<String>);

impl HeldHistory {
    fn line(&mut self, line: &str) {
        if !line.trim().is_empty() {
            self.0.push(line.to_string());
        }
    }

    /// The lines of the statement that just ended, for the history; none if it may hold a
    /// secret.
    fn statement_ended(&mut self) -> Vec<String> {
        let lines = std::mem::take(&mut self.0);
        if names_a_secret(&lines.join("\n")) {
            Vec::new()
        } else {
            lines
        }
    }

    fn statement_dropped(&mut self) {
        self.0.clear();
    }
}

/// A statement or dot command that may hold a secret: a key (`PRAGMA rekey='...'`, `ATTACH
/// ... KEY '...'`, a URI's `key=` or `hexkey=`) or the admin console's token (`admin_token=`,
/// `PRAGMA admin_token`): kept out of the shell's history file, which is plain text (the ops
/// walkthrough found `.open` lines with `key=` and `admin_token=` there). `PRIMARY KEY` and
/// `tokenize=` stay in it; a `PRAGMA` or `ATTACH` naming a key anywhere is left out whole.
fn names_a_secret(statement: &str) -> bool {
    let lower = statement.to_ascii_lowercase();
    let keyed = |word: &str| lower.contains(word) && lower.contains("key");
    // (`rekey`, `hexkey` and the rest alone: what is left of a statement Ctrl-C cut short.)
    [
        "key=",
        "rekey",
        "hexkey",
        "keyenv",
        "keyfile",
        "token=",
        "admin_token",
        "cipher",
    ]
    .iter()
    .any(|secret| lower.contains(secret))
        || keyed("pragma")
        || keyed("attach")
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::HeldHistory;

    #[test]
    fn a_key_typed_over_several_lines_stays_out_of_the_history() {
        let mut history = HeldHistory::default();
        history.line("SELECT 1;");
        assert_eq!(history.statement_ended(), vec!["SELECT 1;"]);
        history.line("PRAGMA");
        history.line("  rekey='TWO-LINE-SECRET';");
        assert!(history.statement_ended().is_empty());
        history.line("PRAGMA rekey='one line';");
        assert!(history.statement_ended().is_empty());
        history.line("SELECT *");
        history.line("FROM t;");
        assert_eq!(history.statement_ended(), vec!["SELECT *", "FROM t;"]);
        // A network key or the console's token in a URI, or the token's PRAGMA.
        // A table's keys and a full-text tokenizer are no secrets.
        for plain in [
            "CREATE TABLE t(id INTEGER PRIMARY KEY, p REFERENCES q, FOREIGN KEY(p) REFERENCES q);",
            "CREATE VIRTUAL TABLE f USING fts5(body, tokenize='porter');",
        ] {
            history.line(plain);
            assert_eq!(history.statement_ended(), vec![plain]);
        }
        for secret in [
            ".open file:d.db?node=secondary&connect=tcp://h:1&key=NETSECRET",
            ".open file:p.db?node=primary&bind=tcp://h:1&admin=h:2&admin_token=TOKEN",
            "PRAGMA admin_token='TOKEN';",
        ] {
            history.line(secret);
            assert!(history.statement_ended().is_empty(), "{secret}");
        }
    }

    #[test]
    fn an_interrupted_statement_leaves_nothing_behind() {
        let mut history = HeldHistory::default();
        history.line("SELECT");
        history.statement_dropped();
        history.line("SELECT 2;");
        assert_eq!(history.statement_ended(), vec!["SELECT 2;"]);
        // The rest of a PRAGMA that Ctrl-C cut short still names a key.
        history.line("PRAGMA");
        history.statement_dropped();
        history.line("  hexrekey='00ff';");
        assert!(history.statement_ended().is_empty());
    }
}
