//! The control socket's command language, parsed without I/O.
//!
//! One line is one command, in gh-ost's syntax so that runbooks carry over:
//! `name`, `name=value` (set a tunable), `name=?` (read it), and for `throttle`,
//! `no-throttle`, `unpostpone` and `panic` an optional table name, given as `panic orders`
//! or gh-ost's `panic=orders`. gh-ost's aliases are accepted (`pause`, `resume`,
//! `cut-over`, `info`, ...). Command names are case-insensitive; values are kept as typed.
//!
//! Invariants: [`parse`] never panics and answers every malformed line with a one-line
//! reason; the tunables it accepts are exactly [`TUNABLE_NAMES`], whose values are
//! validated later by [`crate::config::Tunables::set`] (the same rules as the flags).
//! [`TableGuard`] decides whether a table named in a command is the migrated one.

use crate::config::TUNABLE_NAMES;
use crate::sql::{ident, QualifiedName};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    /// The detailed, multi-line report.
    Status,
    /// The one-line status.
    Sup,
    /// The slot's confirmed position and the server's current WAL position.
    Coordinates,
    /// `name=value`: change a tunable. `name` is one of [`TUNABLE_NAMES`].
    Set {
        name: &'static str,
        value: String,
    },
    /// `name=?`: read a tunable.
    Get {
        name: &'static str,
    },
    /// Force throttling until `no-throttle`.
    Throttle {
        table: Option<String>,
    },
    /// End forced throttling; other reasons to throttle still apply.
    NoThrottle {
        table: Option<String>,
    },
    /// Stop waiting at the postpone flag and cut over.
    Unpostpone {
        table: Option<String>,
    },
    /// Abort the run at once, as the panic flag file does.
    Panic {
        table: Option<String>,
    },
    /// In the revert window: swap the old table back, as `pg-ghost revert` does.
    Revert {
        table: Option<String>,
    },
    /// In the revert window: end it now, as `pg-ghost finalize` does.
    Finalize {
        table: Option<String>,
    },
}

impl Command {
    /// Only reads: it changes nothing in the run (worth less than an info line in the log,
    /// as monitoring may send `sup` every second).
    pub fn is_read(&self) -> bool {
        matches!(self, Command::Help | Command::Status | Command::Sup | Command::Coordinates | Command::Get { .. })
    }

    /// The table the command names, for the commands that may name one.
    pub fn table(&self) -> Option<&str> {
        match self {
            Command::Throttle { table }
            | Command::NoThrottle { table }
            | Command::Unpostpone { table }
            | Command::Panic { table }
            | Command::Revert { table }
            | Command::Finalize { table } => table.as_deref(),
            _ => None,
        }
    }
}

/// How the argument was attached: `name=arg` or `name arg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Bare,
    Assign,
    Word,
}

/// Reads one command line. The error is one line, meant to be sent back as is.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("empty command; send `help` for the list".into());
    }
    // Control characters would garble the one-line answers, the log and the hooks'
    // environment; no command needs them.
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("the command contains control characters".into());
    }
    let (name, form, arg) = split(line);
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        "help" | "status" | "info" | "sup" => no_argument(&name, form).map(|()| match name.as_str() {
            "help" => Command::Help,
            "sup" => Command::Sup,
            _ => Command::Status,
        }),
        "coordinates" => match (form, arg) {
            (Form::Bare, _) | (Form::Assign, "?") => Ok(Command::Coordinates),
            _ => Err("coordinates are read-only; send `coordinates`".into()),
        },
        "throttle" | "pause" | "suspend" => Ok(Command::Throttle { table: table_arg(arg) }),
        "no-throttle" | "unthrottle" | "resume" | "continue" => Ok(Command::NoThrottle { table: table_arg(arg) }),
        "unpostpone" | "no-postpone" | "cut-over" => Ok(Command::Unpostpone { table: table_arg(arg) }),
        "panic" => Ok(Command::Panic { table: table_arg(arg) }),
        "revert" => Ok(Command::Revert { table: table_arg(arg) }),
        "finalize" => Ok(Command::Finalize { table: table_arg(arg) }),
        _ => match TUNABLE_NAMES.iter().find(|t| **t == name) {
            Some(tunable) => tunable_command(tunable, form, arg),
            None => Err(format!("unknown command {name:?}; send `help` for the list")),
        },
    }
}

/// Splits `name=arg`, `name = arg` and `name arg`; the name ends at the first `=` or blank.
fn split(line: &str) -> (&str, Form, &str) {
    let end = line.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    let rest = rest.trim_start();
    if let Some(value) = rest.strip_prefix('=') {
        (name, Form::Assign, value.trim())
    } else if rest.is_empty() {
        (name, Form::Bare, "")
    } else {
        (name, Form::Word, rest)
    }
}

fn no_argument(name: &str, form: Form) -> Result<(), String> {
    match form {
        Form::Bare => Ok(()),
        _ => Err(format!("`{name}` takes no argument")),
    }
}

fn table_arg(arg: &str) -> Option<String> {
    Some(arg.to_string()).filter(|a| !a.is_empty())
}

fn tunable_command(name: &'static str, form: Form, arg: &str) -> Result<Command, String> {
    match form {
        Form::Assign if arg == "?" => Ok(Command::Get { name }),
        Form::Assign => Ok(Command::Set { name, value: unquote(arg).to_string() }),
        _ => Err(format!("send `{name}=<value>` to change it, `{name}=?` to read it")),
    }
}

/// Drops one pair of matching quotes around a value: gh-ost unquotes values, so runbooks
/// send `throttle-query="SELECT ..."`. No tunable's value can itself start and end with
/// the same quote (a query starts with a keyword), so nothing meaningful is lost.
fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

/// The spellings under which a command may name the migrated table.
///
/// A command that names a table is a DBA making sure the right run gets it (several
/// migrations may run on one host). Names are compared as text, never parsed: accepted are
/// `--table` as given, the bare name and `schema.name`, each plain or quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableGuard {
    accepted: Vec<String>,
    shown: String,
}

impl TableGuard {
    /// `given` is `--table` as typed; `resolved` is what inspection found it to be.
    pub fn new(given: &str, resolved: &QualifiedName) -> TableGuard {
        let mut accepted: Vec<String> = Vec::new();
        for spelling in [
            given.trim().to_string(),
            resolved.name.clone(),
            ident(&resolved.name),
            format!("{}.{}", resolved.schema, resolved.name),
            resolved.sql(),
        ] {
            if !accepted.contains(&spelling) {
                accepted.push(spelling);
            }
        }
        TableGuard { accepted, shown: resolved.sql() }
    }

    /// `Ok` when `named` is absent or names the migrated table; otherwise the refusal.
    pub fn check(&self, command: &str, named: Option<&str>) -> Result<(), String> {
        match named {
            None => Ok(()),
            Some(name) if self.accepted.iter().any(|a| a == name) => Ok(()),
            Some(name) => Err(format!("refused: `{command}` names table {name:?}, but this run migrates {}; nothing done", self.shown)),
        }
    }

    /// The migrated table, quoted.
    pub fn table(&self) -> &str {
        &self.shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(t: Option<&str>) -> Option<String> {
        t.map(str::to_string)
    }

    #[test]
    fn parses_every_command() {
        let set = |name, value: &str| Command::Set { name, value: value.to_string() };
        for (line, want) in [
            ("help", Command::Help),
            ("status", Command::Status),
            ("info", Command::Status),
            ("sup", Command::Sup),
            ("coordinates", Command::Coordinates),
            ("coordinates=?", Command::Coordinates),
            ("chunk-size=500", set("chunk-size", "500")),
            ("nice-ratio=0.5", set("nice-ratio", "0.5")),
            ("max-lag-millis=2000", set("max-lag-millis", "2000")),
            ("max-load=active_sessions=40,waiting_sessions=5", set("max-load", "active_sessions=40,waiting_sessions=5")),
            ("critical-load=active_sessions=200", set("critical-load", "active_sessions=200")),
            ("throttle-query=SELECT 1 WHERE x = 2", set("throttle-query", "SELECT 1 WHERE x = 2")),
            ("throttle-query=", set("throttle-query", "")),
            ("throttle-control-replicas=r1:5433,r2", set("throttle-control-replicas", "r1:5433,r2")),
            ("throttle", Command::Throttle { table: None }),
            ("pause", Command::Throttle { table: None }),
            ("suspend", Command::Throttle { table: None }),
            ("no-throttle", Command::NoThrottle { table: None }),
            ("unthrottle", Command::NoThrottle { table: None }),
            ("resume", Command::NoThrottle { table: None }),
            ("continue", Command::NoThrottle { table: None }),
            ("unpostpone", Command::Unpostpone { table: None }),
            ("no-postpone", Command::Unpostpone { table: None }),
            ("cut-over", Command::Unpostpone { table: None }),
            ("panic", Command::Panic { table: None }),
            ("revert", Command::Revert { table: None }),
            ("finalize", Command::Finalize { table: None }),
        ] {
            assert_eq!(parse(line), Ok(want), "{line}");
        }
    }

    #[test]
    fn tells_reads_from_changes() {
        for line in ["help", "status", "sup", "coordinates", "max-load=?"] {
            assert!(parse(line).unwrap().is_read(), "{line}");
        }
        for line in ["chunk-size=5", "throttle", "no-throttle", "unpostpone", "panic"] {
            assert!(!parse(line).unwrap().is_read(), "{line}");
        }
    }

    #[test]
    fn reads_every_tunable_with_a_question_mark() {
        for name in TUNABLE_NAMES {
            assert_eq!(parse(&format!("{name}=?")), Ok(Command::Get { name }), "{name}");
            assert_eq!(parse(&format!("{name} = ?")), Ok(Command::Get { name }), "{name}");
        }
    }

    #[test]
    fn tolerates_blanks_case_and_line_ends() {
        for (line, want) in [
            ("  status \r\n", Command::Status),
            ("STATUS", Command::Status),
            ("Chunk-Size=100", Command::Set { name: "chunk-size", value: "100".into() }),
            ("chunk-size = 100 ", Command::Set { name: "chunk-size", value: "100".into() }),
            ("chunk-size\t=\t100", Command::Set { name: "chunk-size", value: "100".into() }),
            ("throttle\torders", Command::Throttle { table: table(Some("orders")) }),
        ] {
            assert_eq!(parse(line), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn takes_an_optional_table_either_way() {
        for (line, want) in [
            ("throttle orders", Command::Throttle { table: table(Some("orders")) }),
            ("throttle=orders", Command::Throttle { table: table(Some("orders")) }),
            ("no-throttle public.orders", Command::NoThrottle { table: table(Some("public.orders")) }),
            ("unpostpone=orders", Command::Unpostpone { table: table(Some("orders")) }),
            ("panic \"Sales Dept\".\"Order Items\"", Command::Panic { table: table(Some("\"Sales Dept\".\"Order Items\"")) }),
            ("panic=", Command::Panic { table: None }),
        ] {
            let got = parse(line);
            assert_eq!(got, Ok(want.clone()), "{line}");
            assert_eq!(got.map(|c| c.table().map(str::to_string)), Ok(want.table().map(str::to_string)));
        }
    }

    #[test]
    fn unquotes_values_as_gh_ost_does() {
        for (line, value) in [
            ("throttle-query=\"SELECT 1\"", "SELECT 1"),
            ("throttle-query='SELECT 1'", "SELECT 1"),
            ("max-load=\"active_sessions=3\"", "active_sessions=3"),
            ("throttle-query=\"", "\""),
            ("throttle-query=\"SELECT 1'", "\"SELECT 1'"),
        ] {
            let Ok(Command::Set { value: got, .. }) = parse(line) else { panic!("{line}: not a set") };
            assert_eq!(got, value, "{line}");
        }
    }

    #[test]
    fn malformed_lines_get_one_line_errors() {
        for (line, why) in [
            ("", "empty command"),
            ("   \n", "empty command"),
            ("=5", "unknown command \"\""),
            ("frobnicate", "unknown command \"frobnicate\""),
            ("chunk_size=5", "unknown command \"chunk_size\""),
            ("lock-timeout=1s", "unknown command"),
            ("chunk-size", "send `chunk-size=<value>`"),
            ("chunk-size 500", "send `chunk-size=<value>`"),
            ("status now", "takes no argument"),
            ("help=?", "takes no argument"),
            ("sup=1", "takes no argument"),
            ("coordinates=0/0", "read-only"),
            ("coordinates now", "read-only"),
            ("status\0", "control characters"),
            ("throttle-query=SELECT 1\u{1b}[2J", "control characters"),
            ("chunk-size=1\nchunk-size=2", "control characters"),
        ] {
            let err = parse(line).expect_err(line);
            assert!(err.contains(why), "{line:?}: {err}");
            assert!(!err.contains('\n'), "{line:?}: {err}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        let long = "x".repeat(10_000);
        for line in ["=", "==", "?", "=?", "é=é", "chunk-size==", "throttle ==", "\u{feff}status", "panic\t\t=\t", &long] {
            let _ = parse(line);
        }
        // Every prefix of a valid command, cut on character boundaries.
        let line = "max-load=active_sessions=40 \"é\"";
        for (i, _) in line.char_indices() {
            let _ = parse(&line[..i]);
        }
    }

    #[test]
    fn guard_accepts_the_migrated_table_in_any_usual_spelling() {
        let guard = TableGuard::new("orders", &QualifiedName::new("public", "orders"));
        for name in ["orders", "\"orders\"", "public.orders", "\"public\".\"orders\""] {
            assert_eq!(guard.check("panic", Some(name)), Ok(()), "{name}");
        }
        assert_eq!(guard.check("panic", None), Ok(()));
        for name in ["order", "Orders", "other.orders", "public.orders2", " orders"] {
            let err = guard.check("panic", Some(name)).expect_err(name);
            assert!(err.starts_with("refused: `panic` names table"), "{err}");
            assert!(err.contains("\"public\".\"orders\""), "{err}");
        }
    }

    #[test]
    fn guard_keeps_quoted_and_mixed_case_names_exact() {
        let given = r#""Sales Dept"."Order ""Items""""#;
        let guard = TableGuard::new(given, &QualifiedName::new("Sales Dept", "Order \"Items\""));
        for name in [given, "Order \"Items\"", r#""Order ""Items""""#, "Sales Dept.Order \"Items\""] {
            assert_eq!(guard.check("throttle", Some(name)), Ok(()), "{name}");
        }
        for name in ["order \"items\"", "Order Items", "\"Sales Dept\".Order"] {
            assert!(guard.check("throttle", Some(name)).is_err(), "{name}");
        }
        assert_eq!(guard.table(), r#""Sales Dept"."Order ""Items""""#);
    }

    #[test]
    fn guard_accepts_the_table_as_given_on_the_command_line() {
        // An unqualified --table found through search_path in another schema.
        let guard = TableGuard::new(" Orders ", &QualifiedName::new("app", "orders"));
        for name in ["Orders", "orders", "app.orders"] {
            assert_eq!(guard.check("unpostpone", Some(name)), Ok(()), "{name}");
        }
        assert!(guard.check("unpostpone", Some("public.orders")).is_err());
    }
}
