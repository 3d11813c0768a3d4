//! The texts the control socket answers with, built without I/O: `help` and the detailed
//! `status` report. (`sup` is [`crate::status::status_line`]; `coordinates` formats itself.)

use crate::config::{Tunables, TUNABLE_NAMES};
use crate::status::{format_duration, human_bytes, thousands, Progress};
use std::fmt::Write;

/// Every command, one per line, in the order a DBA reaches for them.
pub const HELP: &str = "\
commands (one per connection):
  status                            detailed progress, throttling and settings
  sup                               the one-line status
  coordinates                       the slot's confirmed position and the server's current WAL position
  chunk-size=<rows>                 rows per copy chunk (the adaptive sizing restarts from it)
  nice-ratio=<ratio>                after each chunk, sleep this fraction of its time (0: none, 1: doubles the copy time)
  max-lag-millis=<ms>               throttle while replica lag exceeds this (0: off)
  max-load=<metric=value,...>       throttle while a load metric reaches its threshold
  critical-load=<metric=value,...>  abort (or hibernate) when a load metric reaches its threshold
  throttle-query=<SELECT ...>       throttle while this query returns a positive number (empty: none)
  throttle-control-replicas=<host:port,...>  standbys whose lag is measured
  throttle [table]                  throttle the copy until no-throttle (changes keep being applied)
  no-throttle [table]               end the throttling asked for by `throttle`; other reasons still apply
  unpostpone [table]                stop postponing and cut over now
  panic [table]                     abort at once: the original table stays untouched, slot and publication are dropped
  revert [table]                    in the revert window (--revertible-for): swap the old table back, with every write
  finalize [table]                  in the revert window: end it now and keep the new table
  help                              this list
<name>=? reads a setting (e.g. max-load=?). A [table] must be the migrated table, or nothing is done.
";

/// The answer to `status`: what `sup` says, spelled out, plus the current settings.
pub fn status_report(table: &str, p: &Progress, tunables: &Tunables) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason only.
    let _ = writeln!(out, "table: {table}");
    let _ = writeln!(out, "phase: {} ({})", p.phase, p.phase.name());
    if let Some(step) = p.direct_step {
        // The direct way copies nothing: its steps are its progress.
        let _ = writeln!(out, "step: {} of {} (changing the table directly, no copy)", step.number, step.of);
        let _ = writeln!(out, "throttle: {}", p.throttle_reason.as_deref().map_or("not throttled".into(), one_line));
        let _ = writeln!(out, "elapsed: {}", format_duration(p.elapsed));
        settings(&mut out, tunables);
        return out;
    }
    let _ = writeln!(out, "copied: {}", copied(p));
    let _ = writeln!(out, "rate: {}", rate(p.copy_rate));
    let _ = writeln!(out, "eta: {}", p.eta());
    let _ = writeln!(out, "applied: {} changes; backlog: {} keys", thousands(p.applied), thousands(p.backlog_keys));
    if p.parked_keys > 0 {
        let _ = writeln!(out, "parked: {} keys (written once the ghost's key index exists)", thousands(p.parked_keys));
    }
    let _ = writeln!(out, "lag: {}", lag(p));
    let _ = writeln!(out, "throttle: {}", p.throttle_reason.as_deref().map_or("not throttled".into(), one_line));
    let _ = writeln!(out, "elapsed: {} (copy {})", format_duration(p.elapsed), format_duration(p.copy_elapsed));
    settings(&mut out, tunables);
    out
}

fn settings(out: &mut String, tunables: &Tunables) {
    let _ = writeln!(out, "settings:");
    for name in TUNABLE_NAMES {
        let value = tunables.get(name).unwrap_or_else(|e| format!("<{e}>"));
        let _ = writeln!(out, "  {name}={}", one_line(&value));
    }
}

fn copied(p: &Progress) -> String {
    match (p.rows_total(), p.percent()) {
        (Some(total), Some(pct)) => format!("{}/{} rows ({pct:.1}%)", thousands(p.rows_copied), thousands(total)),
        _ => format!("{} rows of an unknown total", thousands(p.rows_copied)),
    }
}

fn rate(rows_per_sec: Option<f64>) -> String {
    match rows_per_sec {
        Some(r) if r.is_finite() && r >= 0.0 => format!("{} rows/s", thousands(r.round() as u64)),
        _ => "N/A".into(),
    }
}

fn lag(p: &Progress) -> String {
    let time = p.lag.map_or("N/A".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
    match p.lag_bytes {
        Some(b) => format!("{time} behind the stream, {} of WAL not yet applied", human_bytes(b)),
        None => format!("{time} behind the stream"),
    }
}

/// Values may hold line breaks (a throttle query typed over several lines); the report
/// keeps one line per item.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadLimits;
    use crate::phase::Phase;
    use std::time::Duration;

    fn tunables() -> Tunables {
        Tunables {
            chunk_size: 2_000,
            nice_ratio: 0.5,
            max_lag: Some(Duration::from_millis(1500)),
            max_load: LoadLimits::parse("max-load", "active_sessions=40").unwrap(),
            critical_load: LoadLimits::default(),
            throttle_query: Some("SELECT 1\n  FROM t".into()),
            throttle_control_replicas: Vec::new(),
        }
    }

    #[test]
    fn status_report_spells_out_progress_and_settings() {
        let mut p = Progress::new(Phase::Copy);
        p.rows_copied = 1_234_567;
        p.rows_estimated = Some(10_000_000);
        p.copy_rate = Some(5_000.4);
        p.applied = 45_678;
        p.backlog_keys = 120;
        p.lag = Some(Duration::from_millis(300));
        p.lag_bytes = Some(1536);
        p.throttle_reason = Some("lag 2.3s > 1.5s on replica1".into());
        p.elapsed = Duration::from_secs(723);
        p.copy_elapsed = Duration::from_secs(600);
        let report = status_report("\"public\".\"orders\"", &p, &tunables());
        let want = "\
table: \"public\".\"orders\"
phase: copying (copy)
copied: 1,234,567/10,000,000 rows (12.3%)
rate: 5,000 rows/s
eta: 29m13s
applied: 45,678 changes; backlog: 120 keys
lag: 0.3s behind the stream, 1.5kB of WAL not yet applied
throttle: lag 2.3s > 1.5s on replica1
elapsed: 12m03s (copy 10m00s)
settings:
  chunk-size=2000
  nice-ratio=0.5
  max-lag-millis=1500
  max-load=active_sessions=40
  critical-load=
  throttle-query=SELECT 1 FROM t
  throttle-control-replicas=
";
        assert_eq!(report, want);
    }

    #[test]
    fn status_report_before_anything_is_known() {
        let report = status_report("t", &Progress::new(Phase::Inspect), &tunables());
        for line in [
            "phase: inspecting (inspect)",
            "copied: 0 rows of an unknown total",
            "rate: N/A",
            "eta: N/A",
            "lag: N/A behind the stream\n",
            "throttle: not throttled",
            "elapsed: 0s (copy 0s)",
        ] {
            assert!(report.contains(line), "{line:?} missing from:\n{report}");
        }
    }

    #[test]
    fn help_lists_every_command_and_tunable() {
        for cmd in ["status", "sup", "coordinates", "throttle [table]", "no-throttle [table]", "unpostpone", "panic", "help"] {
            assert!(HELP.contains(cmd), "{cmd}");
        }
        for name in TUNABLE_NAMES {
            assert!(HELP.contains(&format!("\n  {name}=")), "{name}");
        }
    }
}
