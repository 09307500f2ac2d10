//! The dot commands: their arguments (words, or quoted with '...' or "..." as in sqlite3) and
//! what each one does to the shell.

use super::modes::Mode;
use super::{Flow, Shell};
use std::io::Write;

/// Every command, for `.help` and for completion.
pub const COMMANDS: &[&str] = &[
    ".backup",
    ".bail",
    ".databases",
    ".dump",
    ".exit",
    ".headers",
    ".help",
    ".import",
    ".indexes",
    ".mode",
    ".nodes",
    ".nullvalue",
    ".once",
    ".open",
    ".output",
    ".print",
    ".quit",
    ".read",
    ".schema",
    ".separator",
    ".status",
    ".sync",
    ".tables",
    ".timer",
];

pub const HELP: &str = "\
.backup FILE             a consistent copy of the database into the new FILE (never overwrites)
.bail on|off             stop at the first error (as -bail)
.databases               the names and files of the attached databases
.dump ?PATTERN ...?      the schema and rows as SQL, in one transaction; objects named LIKE
                         PATTERN only; octodb's own tables (_octo_*), their triggers and temp
                         objects are left out
.exit ?CODE? / .quit     leave the shell (.exit: with exit code CODE)
.headers on|off          show column names (list, csv, quote, tabs, column; grids always do)
.help                    this text
.import ?--csv? ?--skip N? FILE TABLE
                         rows of a CSV FILE into TABLE; a new TABLE is created from the header
                         row, into an existing one every row is data (--skip 1 drops a header)
.indexes ?TABLE?         names of the indexes (of tables named LIKE TABLE)
.mode MODE               box, column, csv, json, line, list, markdown, quote, table, tabs
.nodes                   the nodes this node knows (PRAGMA nodes)
.nullvalue TEXT          how NULL prints (default: nothing)
.once FILE|'|CMD'        the next command's output goes into FILE (or CMD's input)
.open FILE|URI           close this database and open FILE (a node's URI opens that node); if
                         it cannot be opened, the shell stays on this one and says so
.print TEXT ...          print the words of TEXT
.output ?FILE?           output into FILE from now on; with no FILE, back to the screen
.read FILE               run the SQL and dot commands of FILE
.schema ?PATTERN?        CREATE statements, of tables or objects named LIKE PATTERN only
.separator COL ?ROW?     the separators of list mode (default: | and newline)
.status                  this node's sync status (PRAGMA sync_status)
.sync ?SECONDS?          a device: wait until it is in sync with its primaries (caught up, its
                         own writes decided), at most SECONDS (default 10)
.tables ?PATTERN?        tables and views, of names LIKE PATTERN only
.timer on|off            print the run time of each statement
Any other input is SQL; a statement runs once it is complete (ends with ;).";

/// The words of a dot command line: whitespace-separated, or quoted.
pub fn split_args(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '\'' || c == '"' {
            chars.next();
            for d in chars.by_ref() {
                if d == c {
                    break;
                }
                word.push(d);
            }
        } else {
            while let Some(&d) = chars.peek() {
                if d.is_whitespace() {
                    break;
                }
                word.push(d);
                chars.next();
            }
        }
        out.push(word);
    }
    out
}

fn on_off(arg: Option<&str>) -> Option<bool> {
    match arg?.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Some(true),
        "off" | "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// C-style escapes in `.separator` and `.nullvalue` arguments (`\t`, `\n`, `\r`, `\\`).
fn unescape(s: &str) -> String {
    s.replace("\\t", "\t")
        .replace("\\n", "\n")
        .replace("\\r", "\r")
        .replace("\\\\", "\\")
}

impl Shell {
    pub(super) fn dot_command(&mut self, line: &str) -> Flow {
        let args = split_args(line);
        let cmd = args.first().map_or("", String::as_str);
        let arg = |i: usize| args.get(i).map(String::as_str);
        match cmd {
            ".quit" => return Flow::Quit,
            ".exit" => match arg(1).map(str::parse::<i32>) {
                None => return Flow::Quit,
                // As sqlite3: the code's low byte.
                Some(Ok(code)) => {
                    self.exit_code = Some(code.to_le_bytes()[0]);
                    return Flow::Quit;
                }
                Some(Err(_)) => self.report("usage: .exit ?CODE? (a number)"),
            },
            ".help" => self.say(HELP),
            ".status" => match self.conn.sync_status() {
                Ok(s) => {
                    let text = if self.json {
                        serde_json::to_string(&s)
                    } else {
                        serde_json::to_string_pretty(&s)
                    };
                    self.say(&text.unwrap_or_default());
                }
                Err(e) => self.report(e),
            },
            ".nodes" => self.run_sql("PRAGMA nodes;"),
            ".sync" => match arg(1)
                .map(super::sync_timeout)
                .unwrap_or(Ok(super::SYNC_WAIT))
            {
                Ok(timeout) => self.sync(timeout),
                Err(e) => self.report(format!("usage: .sync ?SECONDS? ({e})")),
            },
            ".tables" => self.tables(arg(1)),
            ".schema" => self.schema(arg(1)),
            ".mode" => match arg(1) {
                Some("tabs") => {
                    self.format.mode = Mode::List;
                    self.format.col_sep = "\t".into();
                    self.format.row_sep = "\n".into();
                }
                Some(name) => match Mode::parse(name) {
                    Some(mode) => self.set_mode(mode),
                    None => self.report(format!(
                        "unknown mode `{name}`: use one of {}, tabs",
                        Mode::NAMES.join(", ")
                    )),
                },
                None => self.say(&format!("current output mode: {:?}", self.format.mode)),
            },
            ".headers" | ".header" => match on_off(arg(1)) {
                Some(b) => {
                    self.format.headers = b;
                    self.headers_set = true;
                }
                None => self.report("usage: .headers on|off"),
            },
            ".timer" => match on_off(arg(1)) {
                Some(b) => self.timer = b,
                None => self.report("usage: .timer on|off"),
            },
            ".separator" => match arg(1) {
                Some(col) => {
                    self.format.col_sep = unescape(col);
                    if let Some(row) = arg(2) {
                        self.format.row_sep = unescape(row);
                    }
                }
                None => self.report("usage: .separator COL ?ROW?"),
            },
            ".nullvalue" => match arg(1) {
                Some(text) => self.format.null = unescape(text),
                None => self.report("usage: .nullvalue TEXT"),
            },
            ".output" | ".once" => self.redirect(cmd == ".once", arg(1)),
            ".print" => self.say(&args[1..].join(" ")),
            ".bail" => match arg(1) {
                Some("on") => self.bail = true,
                Some("off") => self.bail = false,
                _ => self.report("usage: .bail on|off"),
            },
            ".indexes" | ".indices" => self.indexes(arg(1)),
            ".read" => match arg(1) {
                Some(file) => self.read_file(file),
                None => self.report("usage: .read FILE"),
            },
            ".dump" => {
                let patterns: Vec<&str> = args[1..].iter().map(String::as_str).collect();
                let result = super::dump::dump(&self.conn, &patterns, &mut self.out);
                if let Err(e) = result {
                    self.report(format!("{e:#}"));
                }
            }
            ".backup" | ".save" => match (arg(1), arg(2)) {
                (Some(file), None) => {
                    let dest = std::path::Path::new(file);
                    match crate::backup::copy(&self.uri, dest) {
                        Ok(mark) => {
                            if let Some(note) = crate::backup::mark_note(&mark) {
                                eprintln!("note: {note}");
                            }
                        }
                        Err(e) => self.report(format!("{e:#}")),
                    }
                }
                _ => self.report("usage: .backup FILE (a new file)"),
            },
            ".import" => self.import(&args[1..]),
            ".open" => match &args[1..] {
                [target] if !target.starts_with('-') => self.open(target),
                _ => self.report("usage: .open FILE|URI (a node's URI opens that node)"),
            },
            ".databases" => self.databases(),
            _ => self.report(format!("unknown command `{cmd}`; .help lists the commands")),
        }
        let _ = self.out.flush();
        Flow::Continue
    }

    fn set_mode(&mut self, mode: Mode) {
        self.format.mode = mode;
        match mode {
            Mode::Csv => {
                self.format.col_sep = ",".into();
                self.format.row_sep = "\r\n".into();
            }
            Mode::List => {
                self.format.col_sep = "|".into();
                self.format.row_sep = "\n".into();
            }
            // As sqlite3: the column mode shows the names unless `.headers off` said not to.
            Mode::Column if !self.headers_set => self.format.headers = true,
            _ => {}
        }
    }

    /// `.output` / `.once`: a file, `stdout` (the screen again), or, as sqlite3, `|COMMAND`
    /// (the output goes into the command's standard input).
    fn redirect(&mut self, once: bool, file: Option<&str>) {
        let opened: std::io::Result<Box<dyn std::io::Write>> = match file {
            None | Some("stdout") if !once => {
                self.out = Box::new(std::io::stdout());
                self.once = false;
                return;
            }
            None => return self.report("usage: .once FILE (or |COMMAND)"),
            Some(target) => match target.strip_prefix('|') {
                Some(command) => PipeOut::spawn(command).map(|p| Box::new(p) as _),
                None => {
                    std::fs::File::create(target).map(|f| Box::new(std::io::BufWriter::new(f)) as _)
                }
            },
        };
        match opened {
            Ok(out) => {
                self.out = out;
                // The command that follows this one is the one whose output is caught.
                self.once = once;
                self.once_armed = false;
            }
            Err(e) => self.report(format!("cannot write to `{}`: {e}", file.unwrap_or(""))),
        }
    }

    fn tables(&mut self, pattern: Option<&str>) {
        let sql = "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') \
                   AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                   AND name NOT LIKE '\\_octo\\_%' ESCAPE '\\' AND name LIKE ?1 ORDER BY name";
        self.names_in_columns(sql, pattern);
    }

    /// `.indexes`: as sqlite3, the indexes of the tables named LIKE the pattern, octodb's own
    /// left out.
    fn indexes(&mut self, table: Option<&str>) {
        let sql = "SELECT name FROM sqlite_schema WHERE type = 'index' \
                   AND name NOT LIKE '\\_octo\\_%' ESCAPE '\\' \
                   AND tbl_name NOT LIKE '\\_octo\\_%' ESCAPE '\\' AND tbl_name LIKE ?1 \
                   ORDER BY name";
        self.names_in_columns(sql, table);
    }

    /// The names `sql` selects (its `?1` the LIKE pattern), laid out as sqlite3 lays out
    /// `.tables`.
    fn names_in_columns(&mut self, sql: &str, pattern: Option<&str>) {
        let rows = match self.conn.query(sql, [pattern.unwrap_or("%")]) {
            Ok(r) => r,
            Err(e) => return self.report(e),
        };
        let names: Vec<String> = rows
            .rows
            .iter()
            .map(|r| super::modes::plain(&r[0], ""))
            .collect();
        if names.is_empty() {
            return;
        }
        // As sqlite3: names padded to the longest, in columns down then across, 80 wide.
        let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        let cols = (80 / (w + 2)).max(1);
        let nrows = names.len().div_ceil(cols);
        let mut text = String::new();
        for i in 0..nrows {
            let line: Vec<String> = names
                .iter()
                .skip(i)
                .step_by(nrows)
                .map(|n| format!("{n:<w$}"))
                .collect();
            text.push_str(&line.join("  "));
            text.push('\n');
        }
        self.write_out(&text);
    }

    fn schema(&mut self, pattern: Option<&str>) {
        let sql = "SELECT type, name, sql FROM sqlite_schema WHERE sql NOT NULL \
                   AND name NOT LIKE '\\_octo\\_%' ESCAPE '\\' \
                   AND tbl_name NOT LIKE '\\_octo\\_%' ESCAPE '\\' \
                   AND (tbl_name LIKE ?1 OR name LIKE ?1) ORDER BY rowid";
        let rows = match self.conn.query(sql, [pattern.unwrap_or("%")]) {
            Ok(r) => r,
            Err(e) => return self.report(e),
        };
        let mut text = String::new();
        for r in &rows.rows {
            let kind = super::modes::plain(&r[0], "");
            let name = super::modes::plain(&r[1], "");
            let sql = super::modes::plain(&r[2], "");
            text.push_str(&super::dump::create_sql(&sql));
            // sqlite3 names a view's columns in a comment after its CREATE VIEW.
            if kind == "view" {
                if let Ok(cols) = self.conn.query(
                    "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
                    [name.as_str()],
                ) {
                    let cols: Vec<String> = cols
                        .rows
                        .iter()
                        .map(|c| view_col(&super::modes::plain(&c[0], "")))
                        .collect();
                    text.push_str(&format!("\n/* {}({}) */", view_col(&name), cols.join(",")));
                }
            }
            text.push_str(";\n");
        }
        self.write_out(&text);
    }

    /// `.open`: the shell goes on with the database (or node) `target` names; the one it
    /// leaves says what it would at the shell's end (rejected writes, writes left unsent).
    /// One that cannot be opened leaves the shell where it was, with an error (under -bail,
    /// the end), so that a script does not run on against the wrong database unawares.
    fn open(&mut self, target: &str) {
        let uri = crate::normalize_uri(target);
        match octodb::Connection::open(&uri) {
            Ok(conn) => {
                self.report_rejections();
                self.note_unsent();
                crate::progress::show_download(&conn);
                self.decisions = super::Decisions::of(&conn);
                self.conn = conn;
                self.uri = uri;
                self.names.refresh(&self.conn);
            }
            Err(e) => self.report(format!(
                "cannot open `{}`: {e}; the shell stays on `{}`",
                octodb::NodeConfig::redacted(&uri),
                octodb::NodeConfig::redacted(&self.uri)
            )),
        }
    }

    /// `.databases`: as sqlite3 prints them, `NAME: FILE r/w` (`r/o` on a read-only shell).
    fn databases(&mut self) {
        let listed = self
            .conn
            .query("PRAGMA database_list", [])
            .and_then(|rows| {
                rows.iter()
                    .map(|r| Ok((r.get::<String>(1)?, r.get::<String>(2)?)))
                    .collect::<octodb::Result<Vec<_>>>()
            });
        let read_only = self
            .conn
            .query_row("PRAGMA query_only", [], |r| r.get::<i64>(0))
            .is_ok_and(|q| q == 1);
        let mode = if read_only { "r/o" } else { "r/w" };
        match listed {
            Ok(list) => {
                for (name, file) in list {
                    self.say(&format!("{name}: {file} {mode}"));
                }
            }
            Err(e) => self.report(e),
        }
    }

    fn import(&mut self, args: &[String]) {
        let mut skip = 0;
        let mut csv = self.format.mode == Mode::Csv;
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--csv" => csv = true,
                "--skip" => match it.next().and_then(|n| n.parse().ok()) {
                    Some(n) => skip = n,
                    None => return self.report("usage: .import --skip N FILE TABLE"),
                },
                other if other.starts_with("--") => {
                    return self.report(format!("unknown .import option `{other}`"))
                }
                _ => rest.push(a.as_str()),
            }
        }
        let [file, table] = rest[..] else {
            return self.report("usage: .import ?--csv? ?--skip N? FILE TABLE");
        };
        if self.format.mode == Mode::Csv && self.format.row_sep == "\r\n" {
            // As sqlite3 (3.40): importing in csv mode sets the row separator, which input
            // and output share, to the input's newline: later csv output ends rows in "\n".
            self.format.row_sep = "\n".into();
        }
        let sep = if csv {
            ','
        } else {
            self.format.col_sep.chars().next().unwrap_or('|')
        };
        let imp = super::import::Import {
            file,
            table,
            skip,
            sep,
        };
        match super::import::run(&self.conn, &imp) {
            Ok(warnings) => {
                for w in warnings {
                    eprintln!("{w}");
                }
                self.names.refresh(&self.conn);
            }
            Err(e) => self.report(format!("{e:#}")),
        }
    }
}

/// A name in the view comment: quoted when it is not a plain word.
fn view_col(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.chars().next().is_some_and(|c| !c.is_ascii_digit())
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Output into a command's standard input (`.output |COMMAND`); dropped, the input ends and
/// the command is waited for, so its output comes before what the shell prints next.
struct PipeOut {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
}

impl PipeOut {
    fn spawn(command: &str) -> std::io::Result<PipeOut> {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        let input = child.stdin.take();
        Ok(PipeOut { child, input })
    }
}

impl std::io::Write for PipeOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.input {
            Some(input) => input.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.input.as_mut().map_or(Ok(()), |i| i.flush())
    }
}

impl Drop for PipeOut {
    fn drop(&mut self) {
        drop(self.input.take());
        let _ = self.child.wait();
    }
}
