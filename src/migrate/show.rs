//! What `migrate --status` and `migrate --plan` print: built as data first, then rendered
//! as text for people or JSON for tools (`--format json`), so both say the same.

use super::files::{MigrationFile, Phase, Version};
use super::statements::{one_line, Action, Body};
use super::table::Row;
use crate::error::{Error, Result};
use crate::plan::Format;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// One version as `--status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusRow {
    pub version: String,
    pub description: String,
    pub phase: Option<String>,
    /// `applied`, `pending`, `running` or `failed`.
    pub state: String,
    pub applied_at: Option<String>,
    pub duration: Option<String>,
    pub applied_by: Option<String>,
    /// An applied file whose bytes changed since (the next `migrate` stops on it).
    pub checksum_changed: bool,
    pub statements_done: Option<i32>,
    pub statements_total: Option<i32>,
    pub error: Option<String>,
    /// Recorded as applied, but its file is no longer in the directory.
    pub file_missing: bool,
    /// Pending, but older than the newest applied version: it needs `--out-of-order`.
    pub out_of_order: bool,
}

/// Applied, failed and pending versions, and applied ones whose file is gone.
pub fn status_rows(files: &[MigrationFile], rows: &HashMap<String, Row>) -> Vec<StatusRow> {
    let newest_applied = files.iter().filter(|f| rows.get(&f.version.to_string()).is_some_and(Row::is_applied)).map(|f| &f.version).max();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for f in files {
        let version = f.version.to_string();
        seen.insert(version.clone());
        let base = StatusRow {
            version: version.clone(),
            description: f.description.clone(),
            phase: f.phase.map(|p| Phase::as_str(p).to_string()),
            state: "pending".into(),
            applied_at: None,
            duration: None,
            applied_by: None,
            checksum_changed: false,
            statements_done: None,
            statements_total: None,
            error: None,
            file_missing: false,
            out_of_order: false,
        };
        out.push(match rows.get(&version) {
            None => StatusRow { out_of_order: newest_applied.is_some_and(|n| f.version < *n), ..base },
            Some(r) => StatusRow {
                state: r.status.clone(),
                applied_at: r.applied_at.clone(),
                duration: Some(r.duration.clone()),
                applied_by: Some(r.applied_by.clone()),
                checksum_changed: r.is_applied() && r.checksum != f.checksum,
                statements_done: Some(r.statements_done),
                statements_total: Some(r.statements_total),
                error: r.error.clone(),
                out_of_order: !r.is_applied() && newest_applied.is_some_and(|n| f.version < *n),
                ..base
            },
        });
    }
    let mut gone: Vec<&Row> = rows.values().filter(|r| !seen.contains(&r.version)).collect();
    gone.sort_by_key(|r| Version::parse(&r.version));
    for r in gone {
        out.push(StatusRow {
            version: r.version.clone(),
            description: r.description.clone(),
            phase: r.phase.clone(),
            state: r.status.clone(),
            applied_at: r.applied_at.clone(),
            duration: Some(r.duration.clone()),
            applied_by: Some(r.applied_by.clone()),
            checksum_changed: false,
            statements_done: Some(r.statements_done),
            statements_total: Some(r.statements_total),
            error: r.error.clone(),
            file_missing: true,
            out_of_order: false,
        });
    }
    out
}

pub fn render_status(rows: &[StatusRow], format: Format) -> Result<String> {
    match format {
        Format::Json => to_json(&rows),
        Format::Text => Ok(status_text(rows)),
    }
}

fn status_text(rows: &[StatusRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<10} {:<9} {:<9} {:<25} {:<12} description", "version", "phase", "state", "applied at", "duration");
    for r in rows {
        let mut extra = String::new();
        match r.state.as_str() {
            "applied" => {
                let _ = write!(extra, "  by {}", r.applied_by.as_deref().unwrap_or(""));
                if r.checksum_changed {
                    extra.push_str("  CHECKSUM CHANGED");
                }
            }
            "pending" => {}
            _ => {
                let _ = write!(
                    extra,
                    "  at statement {} of {}: {}",
                    r.statements_done.unwrap_or(0) + 1,
                    r.statements_total.unwrap_or(0),
                    one_line(r.error.as_deref().unwrap_or(""))
                );
            }
        }
        if r.out_of_order {
            extra.push_str("  (older than the newest applied version: runs only with --out-of-order)");
        }
        if r.file_missing {
            extra.push_str("  (file missing)");
        }
        let _ = writeln!(
            out,
            "V{:<9} {:<9} {:<9} {:<25} {:<12} {}{extra}",
            r.version,
            r.phase.as_deref().unwrap_or("-"),
            r.state,
            r.applied_at.as_deref().unwrap_or(""),
            if r.state == "pending" { "" } else { r.duration.as_deref().unwrap_or("") },
            r.description
        );
    }
    out
}

/// One pending file as `--plan` shows it.
#[derive(Debug, Serialize)]
pub struct PlannedFile {
    pub file: String,
    pub version: String,
    pub phase: Option<String>,
    /// A transaction block runs as written, in one go: its statement count; no steps.
    pub transaction_statements: Option<usize>,
    pub statements: Vec<PlannedStatement>,
}

#[derive(Debug, Serialize)]
pub struct PlannedStatement {
    pub number: usize,
    pub text: String,
    pub how: String,
    /// What runs, when it is not the text as written (an index built CONCURRENTLY).
    pub runs: Option<String>,
    /// Done by an earlier attempt that failed later: skipped.
    pub done: bool,
    /// What `pg-ghost plan` says of an online change.
    pub plan: Option<serde_json::Value>,
    /// Why `plan` could not say it now (an earlier pending statement may create the table).
    pub plan_error: Option<String>,
    #[serde(skip)]
    pub plan_text: Option<String>,
}

impl PlannedFile {
    pub fn new(f: &MigrationFile, body: &Body, start: usize) -> PlannedFile {
        let statements = match body {
            Body::Transaction { .. } => Vec::new(),
            Body::Steps(steps) => steps
                .iter()
                .enumerate()
                .map(|(i, s)| PlannedStatement {
                    number: i + 1,
                    text: one_line(&s.text),
                    how: s.action.how().to_string(),
                    runs: (s.action.sql() != s.text).then(|| one_line(&s.action.sql())),
                    done: i < start,
                    plan: None,
                    plan_error: None,
                    plan_text: None,
                })
                .collect(),
        };
        PlannedFile {
            file: f.name(),
            version: f.version.to_string(),
            phase: f.phase.map(|p| p.as_str().to_string()),
            transaction_statements: match body {
                Body::Transaction { statements, .. } => Some(*statements),
                Body::Steps(_) => None,
            },
            statements,
        }
    }
}

/// Asks `plan` about an online statement; a failure is kept, not raised.
pub async fn plan_online(conn: &crate::conn::ConnInfo, action: &Action, s: &mut PlannedStatement) {
    let Action::Online { table, clauses } = action else { return };
    let config = crate::plan::PlanConfig { conn: conn.clone(), table: table.clone(), alter: clauses.clone(), conversion: None, key: None, format: Format::Text, check_data: None };
    match crate::plan::plan(&config).await {
        Ok(p) => {
            s.plan_text = crate::plan::render(&p, Format::Text).ok();
            s.plan = serde_json::to_value(&p).ok();
        }
        Err(e) => s.plan_error = Some(e.chain()),
    }
}

pub fn render_plan(files: &[PlannedFile], format: Format) -> Result<String> {
    if format == Format::Json {
        return to_json(&files);
    }
    let mut out = String::new();
    if files.is_empty() {
        out.push_str(super::NOTHING_TO_APPLY);
    }
    for f in files {
        let phase = f.phase.as_ref().map(|p| format!(" [{p}]")).unwrap_or_default();
        let _ = writeln!(out, "{}{phase}", f.file);
        if let Some(n) = f.transaction_statements {
            let _ = writeln!(out, "  a transaction block of {n} statements, run as written in one go, under a short lock_timeout with retries");
        }
        for s in &f.statements {
            let done = if s.done { " (done by an earlier attempt, skipped)" } else { "" };
            let _ = writeln!(out, "  {}. {}{done}\n     how: {}", s.number, s.text, s.how);
            if let Some(runs) = &s.runs {
                let _ = writeln!(out, "     runs: {runs}");
            }
            if let Some(text) = &s.plan_text {
                out.push_str(&indent(text, "     "));
            }
            if let Some(e) = &s.plan_error {
                let _ = writeln!(out, "     plan: cannot estimate it now ({e}); an earlier pending statement may create what it names");
            }
        }
    }
    Ok(out)
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map(|mut s| {
        s.push('\n');
        s
    })
    .map_err(|e| Error::internal(format!("cannot write JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(version: &str) -> MigrationFile {
        MigrationFile { version: Version::parse(version).unwrap(), description: "x".into(), path: PathBuf::from(format!("V{version}__x.sql")), phase: None, text: String::new(), checksum: "c".into() }
    }

    fn row(version: &str, status: &str, checksum: &str) -> (String, Row) {
        let row = Row {
            version: version.into(),
            description: "x".into(),
            phase: None,
            checksum: checksum.into(),
            status: status.into(),
            statements_done: 1,
            statements_total: 2,
            done_checksum: None,
            applied_at: Some("2026-01-01 00:00:00 UTC".into()),
            duration: "00:00:01".into(),
            applied_by: "me".into(),
            run_ids: vec![],
            error: (status == "failed").then(|| "boom".to_string()),
        };
        (version.into(), row)
    }

    #[test]
    fn status_marks_pending_files_older_than_the_newest_applied() {
        let files = [file("1"), file("2"), file("3"), file("4")];
        let rows: HashMap<String, Row> = [row("1", "applied", "c"), row("3", "applied", "changed"), row("9", "applied", "c")].into_iter().collect();
        let s = status_rows(&files, &rows);
        let brief: Vec<(String, String, bool, bool, bool)> = s.iter().map(|r| (r.version.clone(), r.state.clone(), r.out_of_order, r.checksum_changed, r.file_missing)).collect();
        assert_eq!(
            brief,
            [
                ("1".into(), "applied".into(), false, false, false),
                ("2".into(), "pending".into(), true, false, false),
                ("3".into(), "applied".into(), false, true, false),
                ("4".into(), "pending".into(), false, false, false),
                ("9".into(), "applied".into(), false, false, true),
            ]
        );
        let text = render_status(&s, Format::Text).unwrap();
        assert!(text.lines().any(|l| l.starts_with("V2 ") && l.contains("--out-of-order")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("V3 ") && l.contains("CHECKSUM CHANGED")), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_status(&s, Format::Json).unwrap()).unwrap();
        assert_eq!(json[1]["out_of_order"], true);
        assert_eq!(json[4]["file_missing"], true);
    }
}
