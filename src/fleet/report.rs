//! The fleet's report: totals, then one line per target (status, versions before and
//! after, time, error). Printed as a table, written as JSON (`--report FILE`), and sent to
//! `--notify-webhook` as a body Slack-compatible incoming webhooks accept (`text`, with
//! the report itself under `report` for tools).

use serde::Serialize;
use std::fmt::Write as _;

/// How one target ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Not started yet (a fleet still running, or killed).
    Pending,
    Running,
    Succeeded,
    /// Nothing to do: already at the target version, or done by an earlier run of this fleet.
    Skipped,
    Failed,
    /// The fleet stopped (canary, --max-failures, a signal) before it started this target.
    NotStarted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::NotStarted => "not-started",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [Status::Pending, Status::Running, Status::Succeeded, Status::Skipped, Status::Failed, Status::NotStarted].into_iter().find(|s| s.as_str() == text)
    }

    /// Done: a resumed fleet does not run it again.
    pub fn is_done(self) -> bool {
        matches!(self, Status::Succeeded | Status::Skipped)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetReport {
    pub name: String,
    pub server: String,
    pub size_bytes: i64,
    pub status: Status,
    /// The highest applied migration version (`migrate`), before and after.
    pub version_before: Option<String>,
    pub version_after: Option<String>,
    pub seconds: Option<f64>,
    pub error: Option<String>,
    /// Why a target was skipped without being reached (done by an earlier run of the fleet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub fleet_id: String,
    /// What ran on each target: `migrate --dir ...` or `ALTER TABLE ...`.
    pub job: String,
    pub targets: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub not_started: usize,
    /// Why the fleet stopped starting targets, if it did.
    pub stopped: Option<String>,
    pub seconds: f64,
    /// In the order they ran.
    pub results: Vec<TargetReport>,
}

impl Report {
    pub fn new(fleet_id: String, job: String, results: Vec<TargetReport>, stopped: Option<String>, seconds: f64) -> Report {
        let count = |s: Status| results.iter().filter(|r| r.status == s).count();
        Report {
            fleet_id,
            job,
            targets: results.len(),
            succeeded: count(Status::Succeeded),
            failed: count(Status::Failed),
            skipped: count(Status::Skipped),
            not_started: count(Status::NotStarted) + count(Status::Pending),
            stopped,
            seconds,
            results,
        }
    }

    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.not_started == 0 && self.stopped.is_none()
    }

    /// One line of totals.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "fleet {}: {} targets, {} succeeded, {} failed, {} skipped, {} not started, in {:.1}s",
            self.fleet_id, self.targets, self.succeeded, self.failed, self.skipped, self.not_started, self.seconds
        );
        if let Some(why) = &self.stopped {
            let _ = write!(s, "; stopped: {why}");
        }
        s
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("{}\njob: {}\n", self.summary(), self.job);
        let w = self.results.iter().map(|r| r.name.len()).max().unwrap_or(4).max(6);
        let _ = writeln!(out, "{:<w$}  {:<11}  {:>10}  {:<8}  {:<8}  {:>8}  error", "target", "status", "size", "before", "after", "seconds");
        for r in &self.results {
            let line = format!(
                "{:<w$}  {:<11}  {:>10}  {:<8}  {:<8}  {:>8}  {}",
                r.name,
                r.status.as_str(),
                pretty_bytes(r.size_bytes),
                r.version_before.as_deref().unwrap_or("-"),
                r.version_after.as_deref().unwrap_or("-"),
                r.seconds.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into()),
                r.error.as_deref().or(r.note.as_deref()).map(flat).unwrap_or_default()
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the report: {e}\"}}"))
    }

    /// The webhook's body: `text` is what a chat shows; the failures are named in it.
    pub fn webhook_body(&self) -> String {
        let mut text = self.summary();
        for r in self.results.iter().filter(|r| r.status == Status::Failed) {
            let _ = write!(text, "\n- {} failed: {}", r.name, r.error.as_deref().map(flat).unwrap_or_default());
        }
        serde_json::json!({ "text": text, "report": self }).to_string()
    }
}

/// A size as `pg_size_pretty` shows it: `8168 kB`, `31 MB`.
pub fn pretty_bytes(bytes: i64) -> String {
    let mut value = bytes.max(0);
    for unit in ["bytes", "kB", "MB", "GB"] {
        if value < 10 * 1024 {
            return format!("{value} {unit}");
        }
        value = (value + 512) / 1024;
    }
    format!("{value} TB")
}

/// The error on one line, whole: in a report the error is what the DBA came for.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, status: Status, error: Option<&str>) -> TargetReport {
        TargetReport { name: name.into(), server: "s".into(), size_bytes: 8192, status, version_before: None, version_after: Some("2".into()), seconds: Some(1.0), error: error.map(Into::into), note: None }
    }

    #[test]
    fn sizes_as_pg_size_pretty() {
        assert_eq!(pretty_bytes(8191), "8191 bytes");
        assert_eq!(pretty_bytes(8_364_547), "8169 kB");
        assert_eq!(pretty_bytes(32 * 1024 * 1024), "32 MB");
        assert_eq!(pretty_bytes(-1), "0 bytes");
    }

    #[test]
    fn totals_and_the_failures_named() {
        let r = Report::new(
            "f1".into(),
            "migrate".into(),
            vec![target("a", Status::Succeeded, None), target("b", Status::Failed, Some("boom")), target("c", Status::NotStarted, None), target("d", Status::Skipped, None)],
            Some("a canary target failed".into()),
            3.0,
        );
        assert_eq!((r.targets, r.succeeded, r.failed, r.skipped, r.not_started), (4, 1, 1, 1, 1));
        assert!(!r.is_success());
        let text = r.to_text();
        assert!(text.contains("stopped: a canary target failed"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("b ") && l.contains("failed") && l.ends_with("boom")), "{text}");
        let body: serde_json::Value = serde_json::from_str(&r.webhook_body()).unwrap();
        assert!(body["text"].as_str().unwrap().contains("- b failed: boom"));
        assert_eq!(body["report"]["results"][2]["status"], "not-started");
    }
}
