//! The shell's sqlite3 habits, checked against Debian's `sqlite3` binary: the same commands on
//! two copies of one plain database file must print the same bytes (where octodb means them
//! to: `.dump` adds one comment line saying what it leaves out). Without `sqlite3` on the
//! machine the comparisons are skipped with a printed reason; CI installs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn octodb() -> Command {
    Command::new(env!("CARGO_BIN_EXE_octodb"))
}

fn sqlite3_present() -> bool {
    let ok = Command::new("sqlite3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED the comparison with sqlite3: no `sqlite3` binary (apt-get install sqlite3)"
        );
    }
    ok
}

/// Run `cmd` with `script` on standard input; its stdout, stderr.
fn run(mut cmd: Command, script: &str) -> (String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the shell");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    let out = child.wait_with_output().expect("the shell's output");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain SQLite file with a few kinds of values, and a copy of it for each shell.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let plain = dir.join("sqlite3.db");
    let c = rusqlite::Connection::open(&plain).expect("create the fixture");
    c.execute_batch(
        "CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c REAL, d BLOB);
         INSERT INTO t VALUES (1, 'x,y', 1.0, x'414243'), (2, 'he said \"hi\"', NULL, NULL),
           (3, 'multi
line', 1e20, 'é'), (4, 'it''s', -2.5, ''), (5, '', 0.5, 42);
         CREATE TABLE \"odd name\"(k, v);
         INSERT INTO \"odd name\" VALUES ('a b', 2.25), (NULL, 100000000000000.0);
         CREATE INDEX t_b ON t(b);
         CREATE VIEW v AS SELECT a, b AS \"b b\" FROM t WHERE a < 3;
         CREATE TABLE log(n);
         CREATE TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.a); END;
         CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT, s);
         INSERT INTO seq(s) VALUES ('one'), ('two');",
    )
    .expect("fill the fixture");
    drop(c);
    let copy = dir.join("octodb.db");
    std::fs::copy(&plain, &copy).expect("copy the fixture");
    (plain, copy)
}

fn compare(script: &str, filter: impl Fn(&str) -> String) {
    if !sqlite3_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (plain, copy) = fixture(dir.path());
    let mut s = Command::new("sqlite3");
    s.arg(&plain);
    let mut o = octodb();
    o.arg(&copy);
    let (want, want_err) = run(s, script);
    let (got, got_err) = run(o, script);
    assert!(want_err.is_empty(), "sqlite3 complained: {want_err}");
    assert!(got_err.is_empty(), "octodb complained: {got_err}");
    let got = filter(&got);
    if want != got {
        for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
            if w != g {
                panic!("line {}: sqlite3 printed\n{w:?}\noctodb printed\n{g:?}\n\nwhole sqlite3 output:\n{want}\nwhole octodb output:\n{got}", i + 1);
            }
        }
        panic!("different lengths:\nsqlite3:\n{want}\noctodb:\n{got}");
    }
}

const QUERIES: &str = "SELECT * FROM t ORDER BY a;\nSELECT k, v, 1 AS one FROM \"odd name\";\n";

#[test]
fn every_output_mode_prints_what_sqlite3_prints() {
    let mut script = String::new();
    for mode in [
        "list", "csv", "json", "table", "box", "line", "quote", "column", "markdown", "tabs",
    ] {
        for headers in ["off", "on"] {
            script += &format!(".headers {headers}\n.mode {mode}\n{QUERIES}");
        }
    }
    script += ".mode list\n.headers on\n.separator ; ~\n.nullvalue (null)\n";
    script += QUERIES;
    script += ".separator |\n.nullvalue ''\nSELECT 1, 'a';\n";
    compare(&script, |s| s.to_string());
}

/// The ops walkthrough's differences: csv output after an `.import` (sqlite3 then ends rows in
/// a newline), a parameter nothing bound (NULL in sqlite3), `.databases`.
#[test]
fn csv_after_import_unbound_parameters_and_databases_as_sqlite3() {
    if !sqlite3_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "id,name\n1,ann\n").expect("write the CSV");
    let script = format!(
        ".mode csv\nSELECT 1, 'before';\n.import {} people\nSELECT * FROM people;\n\
         .mode list\nSELECT @p, :q, ?1, 'after';\n.databases\n",
        csv.display()
    );
    compare(&script, |s| {
        // Each shell's own file in `.databases`.
        s.replace("octodb.db r/w", "sqlite3.db r/w")
    });
}

#[test]
fn schema_tables_and_dump_print_what_sqlite3_prints() {
    let script = ".schema\n.schema t%\n.schema odd%\n.tables\n.tables %o%\n.dump\n.dump t\n\
                  .indexes\n.indexes t\n.indexes nothing\n.print done with  the schema\n";
    compare(script, |s| {
        // octodb's one extra line: what .dump leaves out.
        s.lines()
            .filter(|l| !l.starts_with("-- octodb:"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
}

#[test]
fn import_creates_the_table_from_the_header_as_sqlite3_does() {
    if !sqlite3_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("in.csv");
    std::fs::write(
        &csv,
        "name,\"note, quoted\"\r\nann,\"said \"\"hi\"\"\"\nbob,\"two\nlines\"\ncy,\n",
    )
    .expect("write the CSV");
    let script = format!(
        ".import --csv {0} people\n.import --csv --skip 1 {0} people\n.schema people\n\
         .mode csv\n.headers on\nSELECT * FROM people;\nSELECT count(*) FROM people;\n",
        csv.display()
    );
    compare(&script, |s| s.to_string());
}

#[test]
fn read_output_once_timer_and_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("local.db");
    let sql_file = dir.path().join("script.sql");
    // A trigger's body holds `;` that do not end it; comments hold quotes that do not open one.
    std::fs::write(
        &sql_file,
        "CREATE TABLE a(x); -- it's a comment\nCREATE TABLE b(y);\n\
         CREATE TRIGGER ab AFTER INSERT ON a BEGIN\n  INSERT INTO b VALUES (new.x);\n  INSERT INTO b VALUES (new.x * 10);\nEND;\n\
         /* 'not a string */ INSERT INTO a VALUES (1);\n.mode csv\n",
    )
    .expect("write the script");
    let out_file = dir.path().join("out.txt");
    let once_file = dir.path().join("once.txt");
    let backup = dir.path().join("copy.db");
    let script = format!(
        ".read {}\n.output {}\nSELECT y FROM b ORDER BY y;\n.output\n.once {}\nSELECT 'once';\n\
         SELECT 'screen';\n.timer on\nSELECT 7;\n.timer off\n.backup {}\n",
        sql_file.display(),
        out_file.display(),
        once_file.display(),
        backup.display()
    );
    let mut cmd = octodb();
    cmd.arg(&db);
    let (out, err) = run(cmd, &script);
    assert!(err.is_empty(), "errors: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "screen");
    assert_eq!(lines[1], "7");
    assert!(lines[2].starts_with("Run Time: real "), "{out}");
    assert_eq!(
        std::fs::read_to_string(&out_file).expect("the .output file"),
        "1\r\n10\r\n"
    );
    assert_eq!(
        std::fs::read_to_string(&once_file).expect("the .once file"),
        "once\r\n"
    );
    let copy = rusqlite::Connection::open(&backup).expect("open the backup");
    let n: i64 = copy
        .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
        .expect("count in the backup");
    assert_eq!(n, 2);
    // The backup never overwrites: a second one into the same file is an error, said so.
    let mut cmd = octodb();
    cmd.arg(&db);
    let (_, err) = run(cmd, &format!(".backup {}\n", backup.display()));
    assert!(err.contains("exists already"), "{err}");
}

#[test]
fn sql_arguments_run_as_scripts_with_dot_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("args.db");
    let out = octodb()
        .arg(&db)
        .args([
            "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);",
            ".mode json",
            "SELECT x FROM t;",
        ])
        .output()
        .expect("run octodb");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[{\"x\":1},\n{\"x\":2}]\n"
    );
}

/// SQL given as arguments stops at the first error, as sqlite3's does: nothing after a failed
/// statement runs (here the COMMIT of a DELETE).
#[test]
fn sql_arguments_stop_at_the_first_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bail.db");
    let setup = octodb()
        .arg(&db)
        .arg("CREATE TABLE t(a); INSERT INTO t VALUES (1), (2), (3);")
        .output()
        .expect("run octodb");
    assert!(setup.status.success());
    let out = octodb()
        .arg(&db)
        .args(["BEGIN; DELETE FROM t; SELEC; COMMIT;", "SELECT 'not run';"])
        .output()
        .expect("run octodb");
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not run"));
    let (count, _) = run(octodb_on(&db), "SELECT count(*) FROM t;");
    assert_eq!(count, "3\n", "the DELETE was not committed");
    // `.bail on` in the script does too.
    let (out, _) = run(octodb_on(&db), ".bail on\nSELEC;\nSELECT 'after';\n");
    assert_eq!(out, "");
    // `-bail` does the same for a script; without it the script goes on, as sqlite3's does.
    let mut bail = octodb();
    bail.arg("-bail").arg(&db);
    let (out, _) = run(bail, "SELEC;\nSELECT 'after';\n");
    assert_eq!(out, "");
    let (out, _) = run(octodb_on(&db), "SELEC;\nSELECT 'after';\n");
    assert_eq!(out, "after\n");
}

/// `.dump` of what made a dump fail to load (and the whole load with it, one transaction):
/// generated columns, an FTS5 table and its shadow tables, a table named after a keyword, a
/// text holding a NUL. The dump loads into a new file, which then holds the same values.
#[test]
fn a_dump_of_generated_columns_fts5_keyword_names_and_nul_text_loads_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("odd.db");
    rusqlite::Connection::open(&db)
        .expect("create")
        .execute_batch(
            "CREATE TABLE g(a, b GENERATED ALWAYS AS (a * 2) STORED);
             INSERT INTO g(a) VALUES (5);
             CREATE TABLE \"except\"(x); INSERT INTO \"except\" VALUES (1);
             CREATE VIRTUAL TABLE f USING fts5(body); INSERT INTO f VALUES ('hello world');
             CREATE TABLE n(v); INSERT INTO n VALUES (char(0) || 'a');",
        )
        .expect("fill");
    let (dump, err) = run(octodb_on(&db), ".dump\n");
    assert_eq!(err, "");
    let copy = dir.path().join("copy.db");
    let (_, err) = run(octodb_on(&copy), &dump);
    assert_eq!(err, "", "the dump loads: {dump}");
    let (out, _) = run(
        octodb_on(&copy),
        "SELECT a, b FROM g; SELECT x FROM \"except\"; \
         SELECT body FROM f WHERE f MATCH 'hello'; SELECT hex(v) FROM n;",
    );
    assert_eq!(out, "5|10\n1\nhello world\n0061\n");
}

/// `.once '|COMMAND'` sends the next command's output into COMMAND, and `.output stdout`
/// brings it back to the screen, as in sqlite3 (both made files of those names).
#[test]
fn output_into_a_command_and_back_to_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("pipe.db");
    let mut cmd = octodb_on(&db);
    cmd.current_dir(dir.path());
    let (out, err) = run(
        cmd,
        ".once '|tr a-z A-Z'\nSELECT 'abc';\nSELECT 'def';\n.output stdout\nSELECT 'ghi';\n",
    );
    assert_eq!(err, "");
    assert_eq!(out, "ABC\ndef\nghi\n");
    assert!(!dir.path().join("stdout").exists());
    assert!(!dir.path().join("|tr a-z A-Z").exists());
}

/// `.open` goes on with another database; one that cannot be opened is an error, and the shell
/// stays where it was (the ops walkthrough: `.open` was unknown, and a script ran on against
/// the first database).
#[test]
fn open_switches_databases_and_a_failed_one_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    for (db, table) in [(&a, "in_a"), (&b, "in_b")] {
        let made = octodb_on(db)
            .arg(format!("CREATE TABLE {table}(v);"))
            .output()
            .expect("run octodb");
        assert!(made.status.success(), "{made:?}");
    }
    let script = format!(
        ".tables\n.open {}\n.tables\n.open '{}'\n.tables\n",
        b.display(),
        dir.path().join("no such dir/c.db").display()
    );
    let mut cmd = octodb_on(&a);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the shell");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in_a\nin_b\nin_b\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open") && err.contains("stays on"),
        "{err}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a script with a failed .open fails"
    );
}

fn octodb_on(db: &Path) -> Command {
    let mut cmd = octodb();
    cmd.arg(db);
    cmd
}

/// sqlite3's own options, typed out of habit, do what they do there; `.exit N` exits with N;
/// a plain file name holding `#`, `?` or `%` names that file (as a URI it named another).
#[test]
fn sqlite3_options_exit_codes_and_odd_file_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("sales#2024 100%.db");
    let made = octodb()
        .arg(&db)
        .arg("CREATE TABLE s(x, y); INSERT INTO s VALUES (42, 'a b');")
        .output()
        .expect("run octodb");
    assert!(made.status.success(), "{made:?}");
    assert!(db.exists(), "the file is the one named");
    let out = octodb()
        .args(["-header", "-csv", "-cmd", ".nullvalue NIL"])
        .arg(&db)
        .arg("SELECT x, y, NULL AS z FROM s;")
        .output()
        .expect("run octodb");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "x,y,z\n42,\"a b\",NIL\n",
        "sqlite3's -csv ends rows in a newline (its .mode csv in CRLF)"
    );
    let out = octodb()
        .args(["-readonly"])
        .arg(&db)
        .arg("INSERT INTO s VALUES (1, 2);")
        .output()
        .expect("run octodb");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("readonly"),
        "{out:?}"
    );
    let mut exit = octodb_on(&db);
    exit.stdin(Stdio::piped());
    let mut child = exit.spawn().expect("start the shell");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"SELECT 1;\n.exit 3\n")
        .expect("write");
    let status = child.wait_with_output().expect("wait").status;
    assert_eq!(status.code(), Some(3));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn on_a_primary_dump_leaves_octodb_out_and_import_reaches_a_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let uri = format!(
        "file:{}?node=primary&bind=tcp://127.0.0.1:{port}",
        dir.path().join("p.db").display()
    );
    let csv = dir.path().join("todos.csv");
    std::fs::write(
        &csv,
        "id,title,row_owner\n1,milk,*\n2,eggs,*\n3,\"bread, brown\",*\n",
    )
    .expect("write the CSV");
    let mut shell = octodb()
        .arg(&uri)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the shell on a primary");
    let mut stdin = shell.stdin.take().expect("stdin");
    writeln!(
        stdin,
        "CREATE TABLE todos(id INTEGER PRIMARY KEY, title TEXT, row_owner);\n\
         .import --csv --skip 1 {} todos",
        csv.display()
    )
    .expect("write to the shell");

    let device = octodb::Connection::open(&format!(
        "file:{}?node=secondary&connect=tcp://127.0.0.1:{port}",
        dir.path().join("d.db").display()
    ))
    .expect("open a device");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = device
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'todos'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        if n == 1 {
            let rows: i64 = device
                .query_row("SELECT count(*) FROM todos", [], |r| r.get(0))
                .expect("count");
            if rows == 3 {
                break;
            }
        }
        if Instant::now() >= end {
            let status = device.sync_status();
            let _ = shell.kill();
            let out = shell.wait_with_output().expect("the shell's output");
            panic!(
                "the imported rows never reached the device: {status:?}\nshell stdout: {}\nshell stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let title: String = device
        .query_row("SELECT title FROM todos WHERE id = 3", [], |r| r.get(0))
        .expect("row 3");
    assert_eq!(title, "bread, brown");

    writeln!(stdin, ".dump\n.tables\n.quit").expect("write to the shell");
    drop(stdin);
    let out = shell.wait_with_output().expect("the shell's output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("_octo_") && !l.starts_with("-- octodb:")),
        "octodb's own tables in:\n{text}"
    );
    assert!(
        text.contains("-- octodb: its own tables (_octo_*)"),
        "{text}"
    );
    assert!(
        text.contains("INSERT INTO todos VALUES(3,'bread, brown','*');"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("todos"), "{text}");

    // The device's file dumped as a plain file restores into any SQLite: without the
    // row_owner default only an octodb device can evaluate.
    drop(device);
    let (dump, err) = run(octodb_on(&dir.path().join("d.db")), ".dump todos\n");
    assert!(dump.contains("CREATE TABLE todos"), "{dump}{err}");
    assert!(!dump.contains("this_user"), "{dump}");
}
