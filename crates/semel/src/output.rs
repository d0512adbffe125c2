//! What `semel` prints and how it ends: its exit codes, tables for people
//! (scripts take `--json`), and a reader that goes away early (`| head`),
//! which ends a command quietly, as it ends `ls`.

use std::process::ExitCode;

use serde_json::Value as Json;

/// Writes a line to standard output. A failed write (the reader closed the
/// pipe) returns from the function through `?`; `main` then ends quietly.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}

/// Like [`outln!`], without the newline.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($t)*)?
    }};
}

pub(crate) use {out, outln};

/// How `semel` ends. The operator guide lists these codes ("Exit codes");
/// a test holds the list and this enum together, so a new way of ending is
/// a new variant, documented, not a number picked where it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked; `semel health`: the broker serves.
    Done,
    /// The command could not do its work (configuration, files, the
    /// connection); the message on stderr says why. `semel health`: the
    /// broker is not serving or cannot be reached (Docker's unhealthy).
    Failed,
    /// The command line is wrong (unknown option, missing value); nothing was done.
    Usage,
    /// The broker answered with an error: a refusal or a failure, with its
    /// reason code (`--json` gives the code, reason, message and request id).
    Refused,
    /// An integrity failure: `semel audit verify` found the log or the
    /// export altered (an entry missing, altered, reordered, forked, a
    /// query column that disagrees with its entry), or `semel serve` /
    /// `semel demo` refused to start on a log that does not prove itself.
    /// Never an operational error (those are [`Exit::Failed`]).
    NotVerified,
}

impl Exit {
    /// Every exit code, in order.
    pub const ALL: [Exit; 5] = [
        Exit::Done,
        Exit::Failed,
        Exit::Usage,
        Exit::Refused,
        Exit::NotVerified,
    ];

    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Failed => 1,
            // clap's own code for usage errors.
            Exit::Usage => 2,
            Exit::Refused => 3,
            Exit::NotVerified => 4,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// Whether `e` comes from writing to a reader that went away.
pub fn is_closed_output(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A value as a table cell: text as is, lists joined, a missing value `-`.
pub fn cell(v: &Json) -> String {
    match v {
        Json::Null => "-".into(),
        Json::String(s) if s.is_empty() => "-".into(),
        Json::String(s) => s.clone(),
        Json::Bool(true) => "yes".into(),
        Json::Bool(false) => "no".into(),
        Json::Number(n) => n.to_string(),
        Json::Array(items) if items.is_empty() => "-".into(),
        Json::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        // A field definition reads as name:type.
        Json::Object(m) => match (m.get("name"), m.get("type")) {
            (Some(Json::String(n)), Some(Json::String(t))) => format!("{n}:{t}"),
            (Some(Json::String(n)), _) => n.clone(),
            _ => v.to_string(),
        },
    }
}

/// Rows of `items` under the given columns, aligned; `--json` has every field.
pub fn table(items: &[Json], columns: &[&str]) -> String {
    if items.is_empty() {
        return "(none)\n".into();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(&item[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(&c);
            } else {
                let pad = widths[i] - c.chars().count();
                s.push_str(&c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(columns.iter().map(|c| c.to_uppercase()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// One object, a field per line; lists of objects one item per line. Every
/// field is shown.
pub fn record(v: &Json) -> String {
    let Json::Object(m) = v else {
        return format!("{}\n", cell(v));
    };
    let width = m.keys().map(String::len).max().unwrap_or(0);
    let mut out = String::new();
    for (k, val) in m {
        match val {
            Json::Array(items) if items.iter().any(Json::is_object) => {
                out.push_str(&format!("{k}\n"));
                for item in items {
                    let line = match item {
                        Json::Object(fields) => fields
                            .iter()
                            .map(|(k, v)| format!("{k}={}", cell(v)))
                            .collect::<Vec<_>>()
                            .join("  "),
                        other => cell(other),
                    };
                    out.push_str(&format!("  - {line}\n"));
                }
            }
            other => out.push_str(&format!("{k:width$}  {}\n", cell(other))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_show_what_is_missing() {
        let t = table(
            &[
                json!({"kbo": "0123456749", "name": "CPAS", "roles": ["consumer", "auditor"]}),
                json!({"kbo": "1", "name": "", "roles": []}),
            ],
            &["kbo", "name", "roles"],
        );
        assert_eq!(
            t,
            "KBO         NAME  ROLES\n0123456749  CPAS  consumer, auditor\n1           -     -\n"
        );
        assert_eq!(table(&[], &["kbo"]), "(none)\n");
    }

    #[test]
    fn a_record_shows_every_field() {
        let r = record(&json!({
            "name": "x.y",
            "fields": [{"name": "age", "type": "int", "description": "years"}],
            "keeps_history": false,
        }));
        assert!(
            r.contains("  - description=years  name=age  type=int"),
            "{r}"
        );
        assert!(r.contains("keeps_history  no"), "{r}");
    }

    #[test]
    fn exit_codes_are_distinct() {
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.dedup();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_exit_codes_are_the_documented_ones() {
        let guide = include_str!("../../../docs/operator-guide.md");
        let section = guide
            .split("## The command line: output and exit codes")
            .nth(1)
            .expect("the operator guide has the exit codes section");
        let documented: Vec<u8> = section
            .lines()
            .skip_while(|l| !l.starts_with("| code |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_start_matches('|')
                    .split('|')
                    .next()
                    .and_then(|c| c.trim().parse().ok())
                    .expect("a code")
            })
            .collect();
        let code: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(documented, code);
    }
}
