//! The sqlite3 shell's own options (`-header`, `-csv`, `-cmd SQL`, `-bail`, ...), which its
//! users type out of habit: each becomes the dot command it stands for, run before anything
//! else. Without this, clap read `-header` as `-h eader` and printed the help instead of
//! running the SQL, with success as the exit code.

/// What the sqlite3 options on a command line stand for.
#[derive(Debug, Default, PartialEq)]
pub struct Sqlite3Options {
    /// The command line without them, for clap.
    pub args: Vec<String>,
    /// Dot commands and SQL to run first, in order.
    pub preamble: Vec<String>,
    /// `-bail`: stop at the first error.
    pub bail: bool,
    /// `-readonly`: open the database read-only.
    pub readonly: bool,
}

/// Output modes sqlite3 takes as options of their own (`-csv` is `.mode csv`).
const MODES: &[&str] = &[
    "box", "column", "csv", "html", "json", "line", "list", "markdown", "quote", "table", "tabs",
    "ascii",
];

/// Options that need no action here (`-batch`: the shell reads a pipe as a batch already).
const IGNORED: &[&str] = &["batch", "interactive", "no-rowid-in-view", "safe"];

/// Splits sqlite3's options out of `args` (the whole command line). A single-dash word that
/// is none of them is left to clap, which refuses it.
pub fn translate(args: Vec<String>) -> Result<Sqlite3Options, String> {
    let mut out = Sqlite3Options::default();
    let mut words = args.into_iter();
    // The program's name.
    out.args.extend(words.next());
    while let Some(word) = words.next() {
        let Some(name) = word.strip_prefix('-').filter(|n| !n.starts_with('-')) else {
            out.args.push(word);
            continue;
        };
        let mut value = |option: &str| {
            words
                .next()
                .ok_or_else(|| format!("sqlite3's option -{option} needs a value"))
        };
        match name {
            "header" | "headers" => out.preamble.push(".headers on".into()),
            "noheader" => out.preamble.push(".headers off".into()),
            mode if MODES.contains(&mode) => {
                out.preamble.push(format!(".mode {mode}"));
                if mode == "csv" {
                    // sqlite3's -csv keeps its rows ending in a newline, where `.mode csv`
                    // ends them in CRLF.
                    out.preamble.push(".separator , \\n".into());
                }
            }
            "separator" => out
                .preamble
                .push(format!(".separator {}", quoted(&value(name)?))),
            "nullvalue" => out
                .preamble
                .push(format!(".nullvalue {}", quoted(&value(name)?))),
            "cmd" => out.preamble.push(value(name)?),
            "init" => out
                .preamble
                .push(format!(".read {}", quoted(&value(name)?))),
            "bail" => out.bail = true,
            "readonly" => out.readonly = true,
            "version" => out.args.push("--version".into()),
            "help" => out.args.push("--help".into()),
            ignored if IGNORED.contains(&ignored) => {}
            _ => out.args.push(word),
        }
    }
    Ok(out)
}

/// An argument for a dot command, quoted so that spaces in it stay one argument (the dot
/// commands' quotes have no escapes: a value holding both kinds of quote cannot be given).
fn quoted(text: &str) -> String {
    match text.contains('\'') {
        true => format!("\"{text}\""),
        false => format!("'{text}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn sqlite3_options_become_their_dot_commands() {
        let t = translate(line(&[
            "octodb",
            "-header",
            "-csv",
            "-separator",
            "|",
            "-cmd",
            "PRAGMA x",
            "-bail",
            "-batch",
            "db",
            "SELECT 1",
        ]))
        .unwrap();
        assert_eq!(t.args, line(&["octodb", "db", "SELECT 1"]));
        assert_eq!(
            t.preamble,
            line(&[
                ".headers on",
                ".mode csv",
                ".separator , \\n",
                ".separator '|'",
                "PRAGMA x"
            ])
        );
        assert!(t.bail && !t.readonly);
    }

    #[test]
    fn long_options_and_unknown_ones_are_left_to_clap() {
        let t = translate(line(&["octodb", "--json", "-zap", "db"])).unwrap();
        assert_eq!(t.args, line(&["octodb", "--json", "-zap", "db"]));
        let missing = translate(line(&["octodb", "db", "-cmd"])).unwrap_err();
        assert!(missing.contains("-cmd"), "{missing}");
    }
}
