//! `pg-ghost history`: the recorded runs, newest first, as a table for people or as JSON.

use super::{resolve_name, sql, StepRecord};
use crate::config::{HistoryConfig, HistoryFormat};
use crate::error::{Context, Error, Result};
use crate::phase::Phase;
use serde::Serialize;
use std::time::Duration;
use tokio_postgres::Row;

/// One run, as `--format json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    pub run_id: String,
    pub database: String,
    pub schema: Option<String>,
    pub table: String,
    pub alter: String,
    pub fingerprint: Option<String>,
    pub strategy: String,
    pub version: String,
    pub host: String,
    pub os_user: String,
    pub role: String,
    pub pid: i32,
    pub execute: bool,
    pub started_at: String,
    pub updated_at: String,
    /// None while the run goes on, and for ever when it was killed.
    pub ended_at: Option<String>,
    /// From the start to the end (or to the last update).
    pub seconds: f64,
    /// The phase reached; for a failure, the phase it failed in.
    pub phase: String,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub rows_copied: i64,
    /// Phase name → seconds, in run order.
    pub phase_seconds: PhaseSeconds,
    pub cut_over_attempts: Option<i32>,
    pub lock_held_ms: Option<f64>,
    pub resumes: i32,
    /// The direct way's steps, in order (empty for the ghost way).
    pub steps: Vec<StepRecord>,
}

/// Reads the history and renders it; what to print on stdout.
pub async fn show(cfg: &HistoryConfig) -> Result<String> {
    let conn = cfg.conn.clone().resolve().await?;
    let client = conn.with_application_name("pg-ghost history").connect().await?;
    let table = resolve_name(&client, &cfg.history_table).await?;
    let exists: bool =
        client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.sql()]).await.context("looking for the history table")?.try_get(0)?;
    let entries = if exists {
        let filter: Option<Vec<String>> = match &cfg.table {
            Some(t) => Some(match client.query_one("SELECT parse_ident($1)", &[t]).await {
                Ok(row) => row.try_get(0)?,
                Err(e) => return Err(Error::config(format!("--table {t:?} is not a table name: {}", Error::from(e).message()))),
            }),
            None => None,
        };
        let rows = client.query(&sql::select(&table), &[&filter, &cfg.limit]).await.with_context(|| format!("reading {table}"))?;
        rows.iter().map(entry).collect::<Result<Vec<_>>>()?
    } else {
        tracing::info!(history = %table, "no history: the table does not exist (no run has recorded itself in it yet)");
        Vec::new()
    };
    Ok(match cfg.format {
        HistoryFormat::Text => render_text(&entries),
        HistoryFormat::Json => render_json(&entries)?,
    })
}

fn entry(row: &Row) -> Result<Entry> {
    let seconds: String = row.try_get("phase_seconds")?;
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&seconds).unwrap_or_default();
    Ok(Entry {
        run_id: row.try_get("run_id")?,
        database: row.try_get("database")?,
        schema: row.try_get("schema_name")?,
        table: row.try_get("table_name")?,
        alter: row.try_get("alter_clauses")?,
        fingerprint: row.try_get("fingerprint")?,
        strategy: row.try_get("strategy")?,
        version: row.try_get("version")?,
        host: row.try_get("client_host")?,
        os_user: row.try_get("client_user")?,
        role: row.try_get("role")?,
        pid: row.try_get("pid")?,
        execute: row.try_get("execute")?,
        started_at: row.try_get("started_at")?,
        updated_at: row.try_get("updated_at")?,
        ended_at: row.try_get("ended_at")?,
        seconds: row.try_get::<_, Option<f64>>("seconds")?.unwrap_or(0.0),
        phase: row.try_get("phase")?,
        outcome: row.try_get("outcome")?,
        error: row.try_get("error")?,
        error_kind: row.try_get("error_kind")?,
        rows_copied: row.try_get("rows_copied")?,
        phase_seconds: in_run_order(parsed),
        cut_over_attempts: row.try_get("cut_over_attempts")?,
        lock_held_ms: row.try_get("lock_held_ms")?,
        resumes: row.try_get("resumes")?,
        // A row written by a pg-ghost that knew no steps has none.
        steps: row
            .try_get::<_, Option<String>>("steps")?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
    })
}

/// Phase durations in the order a run walks the phases (names a later version may add come
/// last), written as one JSON object in that order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseSeconds(pub Vec<(String, serde_json::Value)>);

impl Serialize for PhaseSeconds {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn in_run_order(mut map: serde_json::Map<String, serde_json::Value>) -> PhaseSeconds {
    let mut ordered = Vec::new();
    for phase in Phase::ALL {
        if let Some(v) = map.remove(phase.name()) {
            ordered.push((phase.name().to_string(), v));
        }
    }
    ordered.extend(map);
    PhaseSeconds(ordered)
}

/// A JSON array, one object per run, newest first.
pub fn render_json(entries: &[Entry]) -> Result<String> {
    let mut text = serde_json::to_string_pretty(entries).map_err(|e| Error::internal(format!("cannot encode the history: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// A table for people: one line per run, then its error (and a resume) indented below.
pub fn render_text(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no runs recorded\n".to_string();
    }
    let header = ["RUN ID", "STARTED (UTC)", "TABLE", "OUTCOME", "PHASE", "TOOK", "ROWS", "CUT-OVER", "ALTER"];
    let lines: Vec<[String; 9]> = entries
        .iter()
        .map(|e| {
            [
                e.run_id.clone(),
                e.started_at.replacen('T', " ", 1).chars().take(19).collect(),
                match &e.schema {
                    Some(s) => format!("{s}.{}", e.table),
                    None => e.table.clone(),
                },
                e.outcome.clone().unwrap_or_else(|| "unfinished".into()),
                e.phase.clone(),
                crate::status::format_duration(Duration::from_secs_f64(e.seconds.max(0.0))),
                e.rows_copied.to_string(),
                cut_over(e),
                e.alter.split_whitespace().collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = row_text(&header.map(String::from), &widths);
    for (line, e) in lines.iter().zip(entries) {
        out.push_str(&row_text(line, &widths));
        if e.resumes > 0 {
            out.push_str(&format!("  resumed {} time{}\n", e.resumes, if e.resumes == 1 { "" } else { "s" }));
        }
        if e.ended_at.is_none() {
            out.push_str(&format!("  no end recorded: running, or killed (pid {} on {}, last update {})\n", e.pid, e.host, e.updated_at));
        }
        for (i, step) in e.steps.iter().enumerate() {
            out.push_str(&step_text(i + 1, e.steps.len(), step));
        }
        if let Some(error) = &e.error {
            out.push_str(&format!("  error: {}\n", error.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
    }
    out
}

/// `  step 2/4 done in 0.012s (1 try; validate, SHARE UPDATE EXCLUSIVE on "public"."t"): ALTER TABLE ...`
fn step_text(n: usize, of: usize, s: &StepRecord) -> String {
    let took = s.seconds.map(|secs| format!(" in {secs:.3}s")).unwrap_or_default();
    let tries = match s.attempts {
        0 => String::new(),
        1 => "1 try; ".to_string(),
        n => format!("{n} tries; "),
    };
    let sql = s.sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut line = format!("  step {n}/{of} {}{took} ({tries}{}, {}): {sql}\n", s.outcome, s.kind, s.lock);
    if let Some(error) = &s.error {
        line.push_str(&format!("    {}\n", error.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    line
}

/// One line: every cell but the last padded to its column's width.
fn row_text(cells: &[String], widths: &[usize]) -> String {
    let mut row = String::new();
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            row.push_str(cell);
        } else {
            row.push_str(&format!("{cell:<w$}  ", w = *w));
        }
    }
    let mut line = row.trim_end().to_string();
    line.push('\n');
    line
}

fn cut_over(e: &Entry) -> String {
    match (e.cut_over_attempts, e.lock_held_ms) {
        (None, _) => "-".into(),
        (Some(n), None) => format!("{n} tr{}", if n == 1 { "y" } else { "ies" }),
        (Some(n), Some(ms)) => format!("{n} tr{}, lock {ms:.0}ms", if n == 1 { "y" } else { "ies" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(outcome: Option<&str>) -> Entry {
        Entry {
            run_id: "0123456789abcdef".into(),
            database: "app".into(),
            schema: Some("public".into()),
            table: "orders".into(),
            alter: "ALTER COLUMN n\n TYPE bigint".into(),
            fingerprint: Some("a1b2c3d4e5f60718".into()),
            strategy: "ghost".into(),
            version: "0.1.0".into(),
            host: "db-admin-1".into(),
            os_user: "dba".into(),
            role: "ghost".into(),
            pid: 4242,
            execute: true,
            started_at: "2025-06-12T10:15:00.123Z".into(),
            updated_at: "2025-06-12T10:16:02.456Z".into(),
            ended_at: outcome.map(|_| "2025-06-12T10:16:02.456Z".into()),
            seconds: 62.333,
            phase: if outcome == Some("success") { "done" } else { "copy" }.into(),
            outcome: outcome.map(String::from),
            error: None,
            error_kind: None,
            rows_copied: 100_000,
            phase_seconds: PhaseSeconds::default(),
            cut_over_attempts: None,
            lock_held_ms: None,
            resumes: 0,
            steps: Vec::new(),
        }
    }

    #[test]
    fn text_lines_up_columns_and_notes_below() {
        let mut ok = entry(Some("success"));
        ok.cut_over_attempts = Some(2);
        ok.lock_held_ms = Some(14.6);
        ok.resumes = 1;
        let mut failed = entry(Some("failed"));
        failed.error = Some("could not create unique index\nDETAIL: key (n)=(1)".into());
        let killed = entry(None);
        let text = render_text(&[ok, failed, killed]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("RUN ID            STARTED (UTC)        TABLE          OUTCOME"), "{text}");
        assert!(lines[1].contains("2025-06-12 10:15:00  public.orders  success") && lines[1].contains("1m02s"), "{text}");
        assert!(lines[1].contains("2 tries, lock 15ms") && lines[1].ends_with("ALTER COLUMN n TYPE bigint"), "{text}");
        assert_eq!(lines[2], "  resumed 1 time");
        assert_eq!(lines[4], "  error: could not create unique index DETAIL: key (n)=(1)");
        assert!(lines[5].contains("unfinished") && lines[5].contains(" copy "), "{text}");
        assert!(lines[6].contains("no end recorded") && lines[6].contains("pid 4242 on db-admin-1"), "{text}");
        let column = lines[0].find("OUTCOME").unwrap();
        assert!(lines[1..].iter().filter(|l| !l.starts_with("  ")).all(|l| l[column..].starts_with(|c: char| c.is_ascii_lowercase())), "{text}");
    }

    #[test]
    fn a_direct_run_lists_its_steps_under_it() {
        let mut e = entry(Some("failed"));
        e.strategy = "direct".into();
        let step = |sql: &str, kind: &str, outcome: &str, attempts: u32, seconds: Option<f64>, error: Option<&str>| StepRecord {
            sql: sql.into(),
            kind: kind.into(),
            lock: "ACCESS EXCLUSIVE on \"public\".\"orders\"".into(),
            outcome: outcome.into(),
            attempts,
            seconds,
            error: error.map(String::from),
        };
        e.steps = vec![
            step("ALTER TABLE orders ADD CONSTRAINT c CHECK (n > 0) NOT VALID", "locked", "done", 3, Some(1.25), None),
            step("ALTER TABLE orders\n VALIDATE CONSTRAINT c", "validate", "failed", 1, Some(0.5), Some("check constraint \"c\" is violated by some row")),
            step("ALTER TABLE orders ADD COLUMN x int", "locked", "pending", 0, None, None),
        ];
        e.error = Some("step 2 of 3: violated".into());
        let text = render_text(&[e.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "  step 1/3 done in 1.250s (3 tries; locked, ACCESS EXCLUSIVE on \"public\".\"orders\"): ALTER TABLE orders ADD CONSTRAINT c CHECK (n > 0) NOT VALID", "{text}");
        assert_eq!(lines[3], "  step 2/3 failed in 0.500s (1 try; validate, ACCESS EXCLUSIVE on \"public\".\"orders\"): ALTER TABLE orders VALIDATE CONSTRAINT c", "{text}");
        assert_eq!(lines[4], "    check constraint \"c\" is violated by some row", "{text}");
        assert_eq!(lines[5], "  step 3/3 pending (locked, ACCESS EXCLUSIVE on \"public\".\"orders\"): ALTER TABLE orders ADD COLUMN x int", "{text}");
        assert_eq!(lines[6], "  error: step 2 of 3: violated", "{text}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&[e]).unwrap()).unwrap();
        assert_eq!(json[0]["steps"][1]["outcome"], "failed");
        assert_eq!(json[0]["steps"][0]["attempts"], 3);
        assert_eq!(json[0]["steps"][2]["seconds"], serde_json::Value::Null);
    }

    #[test]
    fn empty_history_says_so() {
        assert_eq!(render_text(&[]), "no runs recorded\n");
        assert_eq!(render_json(&[]).unwrap(), "[]\n");
    }

    #[test]
    fn json_has_every_field_and_phases_in_run_order() {
        let mut e = entry(Some("dry-run"));
        e.phase_seconds = in_run_order(serde_json::from_str(r#"{"copy": 2.5, "cleanup": 0.1, "inspect": 0.2, "future-phase": 1}"#).unwrap());
        let text = render_json(&[e]).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let obj = &json[0];
        assert_eq!(obj["outcome"], "dry-run");
        assert_eq!(obj["ended_at"], "2025-06-12T10:16:02.456Z");
        assert_eq!(obj["error"], serde_json::Value::Null);
        assert_eq!(obj["phase_seconds"]["copy"], 2.5);
        let at = |k: &str| text.find(&format!("\"{k}\": ")).unwrap_or_else(|| panic!("{k} missing:\n{text}"));
        assert!(at("inspect") < at("copy") && at("copy") < at("cleanup") && at("cleanup") < at("future-phase"), "{text}");
    }
}
