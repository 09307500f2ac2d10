//! What the driver recognizes in an app's statement before SQLite runs it: the PRAGMAs
//! and ALTERs a replicated or encrypted node refuses, and the keys an app gives.

use crate::api::sql_text;

/// `ALTER TABLE t RENAME [COLUMN] row_owner ...` or `ALTER TABLE t DROP [COLUMN] row_owner`.
pub(super) fn alters_row_owner(sql: &str) -> bool {
    let words: Vec<String> = sql_text::words(sql).collect();
    words.iter().enumerate().any(|(i, w)| {
        (w == "DROP" || w == "RENAME")
            && words[i + 1..]
                .iter()
                .find(|w| *w != "COLUMN")
                .is_some_and(|w| w == "ROW_OWNER")
    })
}

/// The schema named (None: none) and the value of `PRAGMA [schema.]name = value` (or
/// `name(value)`); None when `sql` sets no such pragma.
fn pragma_assignment(sql: &str, name: &str) -> Option<(Option<String>, String)> {
    let words: Vec<String> = sql_text::words(sql).collect();
    let at = words.iter().take(3).position(|w| w == name)?;
    let value = words.get(at + 1)?.clone();
    Some(((at == 2).then(|| words[1].clone()), value))
}

/// `PRAGMA [schema.]synchronous = X` with X anything but FULL or EXTRA (SQLite reads any
/// other word as OFF or NORMAL).
pub(super) fn lowers_synchronous(sql: &str) -> bool {
    pragma_assignment(sql, "SYNCHRONOUS")
        .is_some_and(|(_, v)| !matches!(v.as_str(), "FULL" | "EXTRA" | "2" | "3"))
}

/// `PRAGMA [schema.]temp_store = FILE` (or 1): temporary tables, indexes and sorts in files,
/// which SQLCipher does not encrypt.
pub(super) fn spills_temp_to_files(sql: &str) -> bool {
    pragma_assignment(sql, "TEMP_STORE").is_some_and(|(_, v)| {
        let v = v.trim_matches(|c| c == '\'' || c == '"');
        v.eq_ignore_ascii_case("FILE") || v == "1"
    })
}

/// `PRAGMA [schema.]rekey = ...` (or `hexrekey`), in any spelling SQLite takes (a schema name,
/// quotes, comments).
pub(super) fn names_rekey(sql: &str) -> bool {
    pragma_assignment(sql, "REKEY").is_some() || pragma_assignment(sql, "HEXREKEY").is_some()
}

/// `PRAGMA [schema.]key = ...` (or `hexkey`): the app gives a local connection its file's key.
pub(super) fn gives_a_key(sql: &str) -> bool {
    pragma_assignment(sql, "KEY").is_some() || pragma_assignment(sql, "HEXKEY").is_some()
}

/// `PRAGMA [schema.]writable_schema = ON` (or any value but off): the schema written as rows
/// of `sqlite_schema`, which no statement the engine sees does.
pub(super) fn writes_the_schema(sql: &str) -> bool {
    pragma_assignment(sql, "WRITABLE_SCHEMA").is_some_and(|(_, v)| {
        let v = v.trim_matches(|c| c == '\'' || c == '"');
        !(v.eq_ignore_ascii_case("OFF")
            || v.eq_ignore_ascii_case("FALSE")
            || v.eq_ignore_ascii_case("NO")
            || v == "0")
    })
}

/// `ATTACH ... KEY ...`: the app brings in an encrypted file, whose temporary data shares the
/// connection's temp store.
pub(super) fn attaches_with_key(sql: &str) -> bool {
    let mut words = sql_text::words(sql);
    words.next().is_some_and(|w| w == "ATTACH") && words.any(|w| w == "KEY")
}

/// `PRAGMA [main.]journal_mode = X` with X anything but WAL (an attached or temp database's
/// journal is the app's own affair).
pub(super) fn leaves_wal(sql: &str) -> bool {
    pragma_assignment(sql, "JOURNAL_MODE")
        .is_some_and(|(schema, v)| schema.is_none_or(|s| s == "MAIN") && v != "WAL")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rule` says yes to each of `yes` and no to each of `no`.
    fn recognizes(rule: fn(&str) -> bool, yes: &[&str], no: &[&str]) {
        for sql in yes {
            assert!(rule(sql), "{sql}");
        }
        for sql in no {
            assert!(!rule(sql), "{sql}");
        }
    }

    #[test]
    fn temp_files_and_keys_are_recognized() {
        recognizes(
            spills_temp_to_files,
            &[
                "PRAGMA temp_store = FILE",
                "pragma temp_store=1",
                "PRAGMA main.temp_store = 'file'",
            ],
            &[
                "PRAGMA temp_store",
                "PRAGMA temp_store = MEMORY",
                "PRAGMA temp_store=2",
                "PRAGMA temp_store = DEFAULT",
            ],
        );
        recognizes(
            writes_the_schema,
            &[
                "PRAGMA writable_schema = ON",
                "pragma main.writable_schema=1",
                "PRAGMA writable_schema = 'reset'",
            ],
            &["PRAGMA writable_schema", "PRAGMA writable_schema = OFF"],
        );
        recognizes(
            attaches_with_key,
            &[
                "ATTACH DATABASE 'b.db' AS b KEY 'secret'",
                "attach 'b.db' as b key x'00'",
            ],
            &["ATTACH 'b.db' AS b", "SELECT key FROM t"],
        );
        recognizes(
            gives_a_key,
            &["PRAGMA key = 'secret'", "pragma hexkey='00ff'"],
            &["PRAGMA rekey = 'x'"],
        );
        recognizes(
            names_rekey,
            &[
                "PRAGMA rekey = 'x'",
                "PRAGMA main.rekey='x'",
                "PRAGMA \"rekey\"='x'",
                "PRAGMA/**/hexrekey='00'",
            ],
            &["PRAGMA key = 'x'"],
        );
    }

    #[test]
    fn lowering_synchronous_is_recognized() {
        recognizes(
            lowers_synchronous,
            &[
                "PRAGMA synchronous=NORMAL",
                "pragma main.synchronous = off",
                "PRAGMA synchronous(1)",
                "PRAGMA synchronous = 'normal'",
                "PRAGMA synchronous = yes",
            ],
            &[
                "PRAGMA synchronous",
                "PRAGMA synchronous=FULL",
                "PRAGMA main.synchronous = extra",
                "PRAGMA synchronous(2)",
                "PRAGMA journal_mode=WAL",
            ],
        );
    }

    #[test]
    fn leaving_wal_is_recognized() {
        recognizes(
            leaves_wal,
            &[
                "PRAGMA journal_mode=DELETE",
                "pragma main.journal_mode = 'truncate'",
                "PRAGMA journal_mode(memory)",
            ],
            &[
                "PRAGMA journal_mode",
                "PRAGMA journal_mode=WAL",
                "PRAGMA main.journal_mode = wal",
                "PRAGMA temp.journal_mode = memory",
                "PRAGMA aux.journal_mode = delete",
                "PRAGMA synchronous=OFF",
            ],
        );
    }

    #[test]
    fn row_owner_rename_or_drop_is_recognized() {
        recognizes(
            alters_row_owner,
            &[
                "ALTER TABLE t DROP COLUMN row_owner",
                "alter table t drop \"row_owner\"",
                "ALTER TABLE t RENAME COLUMN row_owner TO x",
                "ALTER TABLE t RENAME row_owner TO x",
            ],
            &[
                "ALTER TABLE t RENAME TO row_owner_x",
                "ALTER TABLE t ADD COLUMN row_owner",
                "ALTER TABLE t DROP COLUMN x",
            ],
        );
    }
}
