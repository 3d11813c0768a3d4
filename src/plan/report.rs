//! The plan in a DBA's words.

use super::{Cost, Plan, Strategy};
use crate::status::{format_duration, human_bytes, thousands};
use std::fmt::Write;
use std::time::Duration;

pub fn text(p: &Plan) -> String {
    let mut out = String::new();
    let s = &p.sizes;
    let _ = writeln!(
        out,
        "Table {}: {} rows, {} of rows, {} TOAST, {} of indexes\n",
        p.table,
        thousands(s.rows.max(0) as u64),
        human_bytes(s.heap_bytes.max(0) as u64),
        human_bytes(s.toast_bytes.max(0) as u64),
        human_bytes(s.index_bytes.max(0) as u64)
    );
    for (i, c) in p.clauses.iter().enumerate() {
        let _ = writeln!(out, "{}. {}", i + 1, c.statement);
        let _ = writeln!(out, "   PostgreSQL: {} ({})", c.action, c.source);
        if let Some(lock) = &c.observed.lock {
            let _ = writeln!(out, "   lock: {} on {} — {}", sql_lock(lock), p.table, blocks(lock));
        }
        for (table, lock) in &c.observed.other_locks {
            let _ = writeln!(out, "   lock: {} on {table} — {}", sql_lock(lock), blocks(lock));
        }
        match c.can_fail_on {
            Some(why) => {
                let _ = writeln!(out, "   can fail on existing rows: {why}");
            }
            None => {
                let _ = writeln!(out, "   cannot fail on existing rows");
            }
        }
        if let (false, Some(e)) = (c.observed.observed, &c.observed.error) {
            let _ = writeln!(out, "   (on a clone: {e})");
        }
    }
    if let Some(c) = &p.conversion {
        let _ = writeln!(out);
        super::conversion::text(&mut out, c);
    }
    match &p.data {
        None => {}
        Some(Ok(())) => {
            let _ = writeln!(out, "\nData: every row passes the clauses' checks");
        }
        Some(Err(refusal)) => {
            let _ = writeln!(out, "\nData: {refusal}");
        }
    }
    let way = match p.strategy {
        Strategy::Ghost => "ghost (copy into a ghost table fed by the change stream, then swap)",
        Strategy::Direct => "direct (no copy)",
    };
    let _ = writeln!(out, "\nStrategy: {way}\n  why: {}", p.why);
    if let Some(refused) = &p.refused {
        let _ = writeln!(out, "  pg-ghost run would refuse: {refused}");
    }
    let _ = writeln!(out);
    if p.rates.sample_rows > 0 {
        let _ = writeln!(
            out,
            "Estimates, from a sample of {} rows ({:.0} rows/s written without WAL, {}/s read); they move with caches and load:",
            thousands(p.rates.sample_rows as u64),
            p.rates.write_rows_per_sec,
            human_bytes(p.rates.read_bytes_per_sec as u64)
        );
    } else {
        let _ = writeln!(out, "Estimates (the table is empty):");
    }
    let _ = writeln!(out, "  {:<14} {:>10} {:>10} {:>11}  writes blocked", "", "time", "WAL", "extra disk");
    row(&mut out, "pg-ghost", &p.chosen);
    row(&mut out, if p.conversion.is_some() { "offline copy" } else { "ALTER TABLE" }, &p.plain_alter);
    if !p.steps.is_empty() {
        let _ = writeln!(out, "\nSteps of the direct way (each waits for its lock at most --cut-over-lock-timeout, then retries):");
        for (i, step) in p.steps.iter().enumerate() {
            let _ = writeln!(out, "  {}. {};", i + 1, step.sql);
        }
    }
    let _ = writeln!(out, "\nRun:");
    for line in &p.run {
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn row(out: &mut String, label: &str, c: &Cost) {
    let _ = writeln!(
        out,
        "  {label:<14} {:>10} {:>10} {:>11}  {}",
        format_duration(Duration::from_secs_f64(c.seconds.max(0.0))),
        human_bytes(c.wal_bytes.max(0) as u64),
        human_bytes(c.extra_disk_bytes.max(0) as u64),
        c.writes_blocked
    );
}

/// `AccessExclusiveLock` → `ACCESS EXCLUSIVE`.
pub fn sql_lock(mode: &str) -> String {
    let name = mode.strip_suffix("Lock").unwrap_or(mode);
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

fn blocks(mode: &str) -> &'static str {
    match mode {
        "AccessExclusiveLock" => "blocks reads and writes",
        "ExclusiveLock" | "ShareRowExclusiveLock" | "ShareLock" => "blocks writes, not reads",
        "ShareUpdateExclusiveLock" => "blocks neither reads nor writes (only other schema changes and VACUUM)",
        _ => "blocks no reads or writes",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_modes_read_as_in_sql() {
        assert_eq!(sql_lock("AccessExclusiveLock"), "ACCESS EXCLUSIVE");
        assert_eq!(sql_lock("ShareUpdateExclusiveLock"), "SHARE UPDATE EXCLUSIVE");
    }
}
