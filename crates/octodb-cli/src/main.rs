//! `octodb`: a SQL shell on a node, a headless node (`serve`) and a demo of nodes syncing.

mod backup;
mod convert;
mod demo;
mod demo_cluster;
mod output;
mod progress;
mod serve;
mod shell;
mod tasks;

/// octodb's threads hand rows to one another all the time (app thread, network tasks, the
/// writer), so much memory is freed on another thread than the one that allocated it; glibc's
/// allocator then contends on its arena locks (14% of all CPU in the streaming benchmark).
/// mimalloc frees across threads without a lock. Built without transparent huge pages
/// (`no_thp`), which otherwise cost an idle device ~15 MB of RSS. See BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::process::ExitCode;

/// SQL shell on an octodb node, like the sqlite3 shell.
#[derive(Parser, Debug)]
#[command(
    name = "octodb",
    version,
    about = "SQL shell on an octodb node (a replicated SQLite database)",
    after_help = "Other commands:\n  octodb serve URI   run a node headless until SIGINT/SIGTERM\n  octodb backup URI FILE   a consistent copy of a node's file, while it runs\n  octodb restore-cluster URI   every primary lost: a primary's restored copy starts a new cluster\n  octodb mark-restored URI   a primary restored from a file system snapshot rejoins its cluster safely (alone: keeps the ids of devices approved after the snapshot)\n  octodb encrypt PLAIN_FILE 'file:NEW?cipher=sqlcipher&key=...'   an encrypted copy\n  octodb decrypt 'file:FILE?cipher=sqlcipher&key=...' NEW_PLAIN_FILE   a plain copy\n  octodb tasks URI   the signed task queue's tasks: state, progress, attempts, reasons\n  octodb demo        a primary and two devices syncing on loopback\n\n\
                  URI examples:\n  file:app.db?node=primary&bind=tcp://0.0.0.0:1234\n  file:dev.db?node=secondary&connect=tcp://host:1234\n\n\
                  Logs go to standard error; set OCTODB_LOG (e.g. info, debug, octodb=trace)."
)]
pub struct ShellArgs {
    /// Print the rows of every statement as one line: a JSON array of row objects.
    #[arg(long)]
    json: bool,
    /// A device: before running anything, wait until it is in sync with its primaries
    /// (caught up, its pending writes decided), at most SECONDS (default 10), and fail if it
    /// is not; before exiting, wait the same for the writes made here.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true,
          default_missing_value = "10", value_parser = parse_sync_wait)]
    sync: Option<std::time::Duration>,
    /// The database: a file URI (SPEC §2) or a plain file path.
    uri: String,
    /// SQL or dot commands to run instead of reading standard input; each argument is run in
    /// turn, as the sqlite3 shell runs its arguments (the first error ends the shell).
    sql: Vec<String>,
    /// The commands sqlite3's options stand for (`shell::sqlite3_options`), run first.
    #[arg(skip)]
    preamble: Vec<String>,
    /// sqlite3's `-bail`: the first error ends the shell.
    #[arg(skip)]
    bail: bool,
}

/// Run a node headless until SIGINT or SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "octodb serve")]
pub struct ServeArgs {
    /// The node's URI, e.g. file:app.db?node=primary&bind=tcp://0.0.0.0:1234
    uri: String,
    /// Serve the admin console and /metrics on ADDR (a primary's), e.g. 127.0.0.1:8080;
    /// the same as admin=ADDR in the URI.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Allow --admin beyond loopback in plain HTTP (admin_insecure=1).
    #[arg(long, requires = "admin")]
    admin_insecure: bool,
}

/// A consistent copy of a node's database file, taken while the node runs.
#[derive(Parser, Debug)]
#[command(name = "octodb backup")]
pub struct BackupArgs {
    /// The node's URI (or its file's path).
    uri: String,
    /// The new file to write the copy into.
    dest: std::path::PathBuf,
}

/// Disaster recovery, every primary of a cluster lost: the primary's file (a backup put back in
/// place) becomes the first and only member of a new cluster. Run with the node stopped.
#[derive(Parser, Debug)]
#[command(name = "octodb restore-cluster")]
pub struct RestoreClusterArgs {
    /// The primary's URI (or its file's path), with its key if the file is encrypted.
    uri: String,
}

/// A primary's file restored from a copy `octodb backup` did not make (a file system snapshot,
/// a copy of its files): marked so that it rejoins its cluster as a new member, or, for a
/// primary alone, so that it keeps the ids of the devices approved after the copy for them.
#[derive(Parser, Debug)]
#[command(name = "octodb mark-restored")]
pub struct MarkRestoredArgs {
    /// The primary's URI (or its file's path), with its key if the file is encrypted.
    uri: String,
}

/// A copy of a database file with encryption at rest added (`encrypt`) or taken off (`decrypt`).
#[derive(Parser, Debug)]
pub struct ConvertArgs {
    /// The file to copy: a path (plain) or a URI with its key (encrypted).
    source: String,
    /// The new file: a URI with its key (encrypted) or a path (plain). Never overwritten.
    target: String,
}

/// The signed task queue's tasks in a node's file: state, progress, attempts, reasons.
#[derive(Parser, Debug)]
#[command(name = "octodb tasks")]
pub struct TasksArgs {
    /// Print the tasks as one line of JSON.
    #[arg(long)]
    json: bool,
    /// The node's URI (or its file's path); read beside the running node.
    uri: String,
}

/// A primary and two devices on loopback, showing schema and rows flowing.
#[derive(Parser, Debug)]
#[command(name = "octodb demo")]
pub struct DemoArgs {
    /// Keep the demo's database files in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Three primaries as a Raft cluster instead, each a process: the leader is killed and the
    /// device goes on.
    #[arg(long)]
    cluster: bool,
}

fn init_logging() {
    // openraft reports each unreachable member of a cluster every half second while one is
    // down; octodb says what matters of it itself (OCTODB_LOG=warn,openraft=warn shows it).
    let filter = tracing_subscriber::EnvFilter::try_from_env("OCTODB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off"));
    // Colours only for a terminal: a log file or journal would hold the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("serve") => serve::run(ServeArgs::parse_from(&args[1..])),
        Some("demo") => demo::run(DemoArgs::parse_from(&args[1..])),
        // (Not in the help: the body of `demo --cluster`'s primary processes.)
        Some(demo_cluster::PRIMARY_COMMAND) => demo_cluster::primary_process(args.get(2)),
        Some("tasks") => tasks::run(TasksArgs::parse_from(&args[1..])),
        Some("backup") => backup::run(BackupArgs::parse_from(&args[1..])),
        Some("restore-cluster") => {
            backup::restore_cluster(RestoreClusterArgs::parse_from(&args[1..]))
        }
        Some("mark-restored") => backup::mark_restored(MarkRestoredArgs::parse_from(&args[1..])),
        Some("encrypt") => convert::run(
            convert::Direction::Encrypt,
            ConvertArgs::parse_from(&args[1..]),
        ),
        Some("decrypt") => convert::run(
            convert::Direction::Decrypt,
            ConvertArgs::parse_from(&args[1..]),
        ),
        // `octodb help` (sqlite3 would open a file named `help`): the help, unless that file
        // exists.
        Some("help") if args.len() == 2 && !std::path::Path::new("help").exists() => {
            <ShellArgs as clap::CommandFactory>::command()
                .print_long_help()
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        _ => shell_with_sqlite3_options(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", output::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn parse_sync_wait(text: &str) -> Result<std::time::Duration, String> {
    shell::sync_timeout(text)
}

/// The shell, its command line read as sqlite3 reads its own (`-header`, `-csv`, ...) too.
fn shell_with_sqlite3_options(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let options = shell::sqlite3_options::translate(args).map_err(anyhow::Error::msg)?;
    let mut shell_args = ShellArgs::parse_from(options.args);
    shell_args.preamble = options.preamble;
    shell_args.bail = options.bail;
    if options.readonly {
        shell_args.uri = read_only(&normalize_uri(&shell_args.uri));
    }
    shell::run(shell_args)
}

/// `uri` opened read-only (`mode=ro`).
fn read_only(uri: &str) -> String {
    match uri.contains('?') {
        true => format!("{uri}&mode=ro"),
        false => format!("{uri}?mode=ro"),
    }
}

/// Accept a plain path as a URI for a local database, like sqlite3 does. The characters a URI
/// reads otherwise (`%` escapes, `?` parameters, `#` a fragment) are escaped: a plain path
/// names the file it spells (`sales#2024.db` opened `sales`).
pub fn normalize_uri(uri: &str) -> String {
    if uri.starts_with("file:") {
        return uri.to_string();
    }
    let mut escaped = String::with_capacity(uri.len() + 5);
    escaped.push_str("file:");
    for c in uri.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '?' => escaped.push_str("%3f"),
            '#' => escaped.push_str("%23"),
            c => escaped.push(c),
        }
    }
    escaped
}
