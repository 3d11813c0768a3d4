//! Data checks before the copy: the clauses of the ALTER that existing rows can break
//! (`UNIQUE`/`PRIMARY KEY`, `FOREIGN KEY`, `SET NOT NULL`, `CHECK`, a type change or its
//! `USING`), tried against the original's rows before anything is created, so a DBA learns
//! in seconds what the copy or an index build would otherwise find after hours.
//!
//! [`clauses::read`] learns the checks from the trial ghost (the ALTER applied to an empty
//! ghost in a transaction that is rolled back); [`run`] scans the original for rows that
//! break them and returns the first few of each. Invariants:
//! - Read-only: one session with `default_transaction_read_only`, every statement a SELECT.
//! - Row checks (casts, NOT NULL, CHECK, FOREIGN KEY) read the original in keyset chunks on
//!   its key, sized like the copy's chunks (`--chunk-size`, adapting to `--chunk-time`),
//!   each chunk after the throttle's gate opens and followed by the `--nice-ratio` rest.
//!   Each chunk is its own statement: no snapshot is held across chunks.
//! - A chunk whose evaluation fails (a cast that cannot convert a value, a CHECK dividing
//!   by zero) is narrowed by bisecting its keys down to the rows that fail, each reported
//!   with the server's message. Only data errors (SQLSTATE classes 22 and 23) narrow;
//!   anything else ends the check as an error.
//! - Duplicates cannot be found chunk by chunk on the original's key (two rows sharing a
//!   value may be far apart in key order). They are looked for with one `GROUP BY` over the
//!   whole table after the gate opens: the same work an index build does (a sort or a hash
//!   that spills to disk), and since the casts are checked first it cannot fail half-way.
//! - Checks run in order, casts first (every other check computes the new types), and the
//!   first clause with offending rows ends the scan: the run is refused with it.

pub mod clauses;
mod scan;
mod sql;

pub use clauses::{After, Before};
pub use scan::{run, Limits};

use crate::error::Error;
use crate::keysql::KeyCols;
use crate::schema::TableInfo;
use crate::sql::{ident, literal, QualifiedName};

/// One ghost column, computed from the original's row as the copy computes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shaped {
    /// The ghost's name for it.
    pub name: String,
    /// SQL over the original's columns.
    pub expr: String,
}

/// Where `INSERT`'s assignment cast refuses what `CAST` would cut to fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// `varchar(n)`, `char(n)`: at most `max` characters once trailing spaces are cut.
    Chars { unbounded: &'static str, max: i32 },
    /// `bit(n)`: exactly n bits.
    BitsExactly(i32),
    /// `varbit(n)`: at most n bits.
    BitsAtMost(i32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A type change: `expr` (the column, or its `USING`) must convert to `target`.
    Cast { column: String, expr: String, target: String, length: Option<Length> },
    NotNull { column: String },
    /// A CHECK's expression, over the ghost's column names.
    Check { expr: String },
    /// A UNIQUE constraint, primary key or unique index: expressions over the ghost's
    /// columns, and the partial index's predicate.
    Unique { exprs: Vec<String>, predicate: Option<String>, nulls_distinct: bool },
    ForeignKey { columns: Vec<String>, referenced: QualifiedName, referenced_columns: Vec<String>, match_full: bool },
}

impl Kind {
    /// The order checks run in.
    fn rank(&self) -> u8 {
        match self {
            Kind::Cast { .. } => 0,
            Kind::NotNull { .. } => 1,
            Kind::Check { .. } => 2,
            Kind::ForeignKey { .. } => 3,
            Kind::Unique { .. } => 4,
        }
    }

    /// What an offending row (or value) is called: one, and several.
    fn noun(&self) -> (&'static str, &'static str) {
        match self {
            Kind::Cast { .. } => ("row that fails the type change", "rows that fail the type change"),
            Kind::NotNull { .. } => ("NULL", "NULLs"),
            Kind::Check { .. } => ("row that violates it", "rows that violate it"),
            Kind::ForeignKey { .. } => ("orphan row (no referenced row)", "orphan rows (no referenced row)"),
            Kind::Unique { .. } => ("duplicate value", "duplicate values"),
        }
    }
}

/// One clause to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The clause as PostgreSQL prints it: `CHECK ((n > 0))`, `UNIQUE (email)`, ...
    pub clause: String,
    /// The constraint's or index's name, as the original will know it.
    pub constraint: Option<String>,
    pub kind: Kind,
    /// The ghost columns the check reads.
    pub columns: Vec<Shaped>,
}

/// The checks an ALTER calls for, and the clauses that cannot be checked before the copy.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    pub checks: Vec<Check>,
    /// Why a clause is left to the copy or the index build, one line each.
    pub unchecked: Vec<String>,
}

/// One offending row, or for a duplicate, one value and the rows sharing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The rows' keys (as text, in key order).
    pub keys: Vec<Vec<String>>,
    /// The offending values, one per label of the finding.
    pub values: Vec<Option<String>>,
    /// For a duplicate: how many rows share the value.
    pub rows: Option<i64>,
    /// The server's message when computing the row failed.
    pub error: Option<String>,
}

/// A clause that existing rows break.
#[derive(Clone, Debug)]
pub struct Finding {
    pub check: Check,
    /// Names of the values in each violation, as SQL (quoted column names, expressions).
    pub labels: Vec<String>,
    /// The first offending rows, at most `--data-check-limit`, in key (or value) order.
    pub violations: Vec<Violation>,
    /// A query that lists them all.
    pub query: String,
}

/// The original's name and key, as the checks need them.
pub struct Original<'a> {
    pub name: &'a QualifiedName,
    pub key: KeyCols,
}

impl<'a> Original<'a> {
    pub fn of(table: &'a TableInfo) -> Original<'a> {
        Original { name: &table.name, key: KeyCols { names: table.key.columns.clone(), types: table.key.types.clone() } }
    }
}

/// The refusal for a clause the rows break: the clause, the first offending keys and
/// values, and the query that lists them all.
pub fn refusal(table: &QualifiedName, key: &[String], finding: &Finding, limit: usize) -> Error {
    let check = &finding.check;
    let named = check.constraint.as_ref().map(|c| format!(" (constraint {})", ident(c))).unwrap_or_default();
    let shown = finding.violations.len();
    let count = if shown >= limit { format!("at least {shown}") } else { shown.to_string() };
    let rows: Vec<String> = finding.violations.iter().map(|v| describe(key, &finding.labels, v)).collect();
    Error::refused(format!(
        "data check: existing rows of {table} break {}{named}: {count} {} found, first {shown}: {}. Nothing was created. \
         List them all with: {} (or run with --skip-data-checks to let the copy find them)",
        check.clause,
        if shown == 1 { check.kind.noun().0 } else { check.kind.noun().1 },
        rows.join("; "),
        finding.query
    ))
}

fn describe(key: &[String], labels: &[String], v: &Violation) -> String {
    let keys: Vec<String> = v.keys.iter().map(|k| key_text(key, k)).collect();
    let values: Vec<String> = labels
        .iter()
        .zip(&v.values)
        .map(|(l, value)| format!("{l}={}", value.as_deref().map(literal).unwrap_or_else(|| "NULL".into())))
        .collect();
    let mut out = match v.rows {
        Some(n) => format!("{} on {n} rows, keys {}", values.join(", "), keys.join(", ")),
        None if values.is_empty() => format!("key {}", keys.join(", ")),
        None => format!("key {}: {}", keys.join(", "), values.join(", ")),
    };
    if let Some(e) = &v.error {
        out.push_str(&format!(" ({e})"));
    }
    out
}

/// `id=5`, or `(tenant, id)=(1, 5)`.
fn key_text(key: &[String], values: &[String]) -> String {
    let vals: Vec<String> = values.iter().map(|v| literal(v)).collect();
    match key {
        [one] => format!("{}={}", ident(one), vals.join("")),
        _ => format!("({})=({})", key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", "), vals.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_clause_the_keys_and_the_query() {
        let check = Check {
            clause: "UNIQUE (email)".into(),
            constraint: Some("users_email_key".into()),
            kind: Kind::Unique { exprs: vec!["email".into()], predicate: None, nulls_distinct: true },
            columns: Vec::new(),
        };
        let finding = Finding {
            check,
            labels: vec!["\"email\"".into()],
            violations: vec![Violation {
                keys: vec![vec!["1".into()], vec!["7".into()]],
                values: vec![Some("a@x".into())],
                rows: Some(2),
                error: None,
            }],
            query: "SELECT 1".into(),
        };
        let e = refusal(&QualifiedName::new("public", "users"), &["id".into()], &finding, 10);
        let text = e.to_string();
        assert!(text.contains("break UNIQUE (email) (constraint \"users_email_key\"): 1 duplicate value found"), "{text}");
        assert!(text.contains("\"email\"='a@x' on 2 rows, keys \"id\"='1', \"id\"='7'"), "{text}");
        assert!(text.contains("List them all with: SELECT 1"), "{text}");
        assert_eq!(e.kind(), crate::error::ErrorKind::Refused);
        let cast = Violation { keys: vec![vec!["3".into(), "x y".into()]], values: vec![Some("abc".into())], rows: None, error: Some("invalid input".into()) };
        assert_eq!(
            describe(&["a".into(), "b c".into()], &["\"v\"".into()], &cast),
            "key (\"a\", \"b c\")=('3', 'x y'): \"v\"='abc' (invalid input)"
        );
    }
}
