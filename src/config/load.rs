//! `--max-load` and `--critical-load`: `name=threshold,...` over metrics pg-ghost reads
//! from the server.
//!
//! Only known metric names are accepted, so a typo fails at start instead of silently
//! never throttling. A limit is reached when the value is at or above its threshold
//! (gh-ost's rule), hence thresholds start at 1. The same parser serves the socket's
//! `max-load=` and `critical-load=`, and `Display` writes the text it reads back.

use super::units::{format_bytes, parse_bytes};
use crate::error::{Error, Result};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadMetric {
    /// Backends of the database in state `active`, pg-ghost's own included.
    ActiveSessions,
    /// Backends waiting for a lock.
    WaitingSessions,
    /// WAL retained by the server's other replication slots, in bytes.
    ReplicationSlotLagBytes,
    /// WAL written per second, measured between two readings.
    WalBytesPerSec,
}

impl LoadMetric {
    pub const ALL: [LoadMetric; 4] = [
        LoadMetric::ActiveSessions,
        LoadMetric::WaitingSessions,
        LoadMetric::ReplicationSlotLagBytes,
        LoadMetric::WalBytesPerSec,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LoadMetric::ActiveSessions => "active_sessions",
            LoadMetric::WaitingSessions => "waiting_sessions",
            LoadMetric::ReplicationSlotLagBytes => "replication_slot_lag_bytes",
            LoadMetric::WalBytesPerSec => "wal_bytes_per_sec",
        }
    }

    pub fn from_name(name: &str) -> Option<LoadMetric> {
        LoadMetric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Byte metrics take size units in their threshold (`1GB`).
    pub fn is_bytes(self) -> bool {
        matches!(self, LoadMetric::ReplicationSlotLagBytes | LoadMetric::WalBytesPerSec)
    }

    fn format_value(self, value: u64) -> String {
        if self.is_bytes() {
            format_bytes(value)
        } else {
            value.to_string()
        }
    }
}

impl fmt::Display for LoadMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadLimit {
    pub metric: LoadMetric,
    pub threshold: u64,
}

impl LoadLimit {
    /// gh-ost's rule: the limit is reached at the threshold, not only above it.
    pub fn is_reached(&self, value: u64) -> bool {
        value >= self.threshold
    }
}

impl fmt::Display for LoadLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.metric, self.metric.format_value(self.threshold))
    }
}

/// A set of limits, in the order given (the first reached is the one reported), at most
/// one per metric. Empty means no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadLimits {
    limits: Vec<LoadLimit>,
}

impl LoadLimits {
    /// Reads `name=threshold,...` given to `flag`; empty text means no limits.
    pub fn parse(flag: &str, text: &str) -> Result<LoadLimits> {
        let mut limits: Vec<LoadLimit> = Vec::new();
        if text.trim().is_empty() {
            return Ok(LoadLimits { limits });
        }
        for entry in text.split(',') {
            let limit = parse_entry(flag, entry.trim())?;
            if limits.iter().any(|l| l.metric == limit.metric) {
                return Err(Error::config(format!("--{flag} {text:?}: {} is given twice", limit.metric)));
            }
            limits.push(limit);
        }
        Ok(LoadLimits { limits })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &LoadLimit> {
        self.limits.iter()
    }

    /// The threshold set for `metric`, if any.
    pub fn get(&self, metric: LoadMetric) -> Option<u64> {
        self.limits.iter().find(|l| l.metric == metric).map(|l| l.threshold)
    }
}

impl fmt::Display for LoadLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, limit) in self.limits.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{limit}")?;
        }
        Ok(())
    }
}

fn parse_entry(flag: &str, entry: &str) -> Result<LoadLimit> {
    let bad = |why: String| Error::config(format!("--{flag} {entry:?}: {why}"));
    let (name, value) =
        entry.split_once('=').ok_or_else(|| bad("expected name=threshold, e.g. active_sessions=40".to_string()))?;
    let (name, value) = (name.trim(), value.trim());
    let metric = LoadMetric::from_name(name).ok_or_else(|| {
        let known: Vec<_> = LoadMetric::ALL.iter().map(|m| m.name()).collect();
        bad(format!("unknown metric {name:?}; known metrics: {}", known.join(", ")))
    })?;
    let threshold = if metric.is_bytes() {
        parse_bytes(flag, value)?
    } else {
        value.parse::<u64>().map_err(|_| bad(format!("the threshold {value:?} is not a whole number")))?
    };
    if threshold == 0 {
        return Err(bad("the threshold must be at least 1: a limit of 0 is always reached".to_string()));
    }
    Ok(LoadLimit { metric, threshold })
}

#[cfg(test)]
mod tests {
    use super::*;
    use LoadMetric::*;

    fn limits(text: &str) -> Vec<(LoadMetric, u64)> {
        LoadLimits::parse("max-load", text).unwrap().iter().map(|l| (l.metric, l.threshold)).collect()
    }

    #[test]
    fn reads_every_metric_in_order() {
        assert_eq!(limits(""), []);
        assert_eq!(limits("  "), []);
        assert_eq!(limits("active_sessions=40"), [(ActiveSessions, 40)]);
        assert_eq!(
            limits("waiting_sessions=5, replication_slot_lag_bytes=1GB ,wal_bytes_per_sec=64MB,active_sessions=3"),
            [(WaitingSessions, 5), (ReplicationSlotLagBytes, 1 << 30), (WalBytesPerSec, 64 << 20), (ActiveSessions, 3)]
        );
        assert_eq!(limits("replication_slot_lag_bytes=1000"), [(ReplicationSlotLagBytes, 1000)]);
    }

    #[test]
    fn bad_specs_are_config_errors_that_name_the_flag() {
        for (text, why) in [
            ("active_sessions", "expected name=threshold"),
            ("load=5", "unknown metric \"load\"; known metrics: active_sessions, waiting_sessions"),
            ("Active_Sessions=5", "unknown metric"),
            ("active_sessions=abc", "not a whole number"),
            ("active_sessions=-1", "not a whole number"),
            ("active_sessions=4.5", "not a whole number"),
            ("active_sessions=10GB", "not a whole number"),
            ("active_sessions=0", "at least 1"),
            ("wal_bytes_per_sec=0MB", "at least 1"),
            ("wal_bytes_per_sec=lots", "expected a number of bytes"),
            ("active_sessions=4,active_sessions=5", "active_sessions is given twice"),
            ("active_sessions=4,", "expected name=threshold"),
            (",active_sessions=4", "expected name=threshold"),
        ] {
            let e = LoadLimits::parse("critical-load", text).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            let msg = e.to_string();
            assert!(msg.starts_with("--critical-load "), "{msg}");
            assert!(msg.contains(why), "{text:?}: {msg}");
        }
    }

    #[test]
    fn display_reads_back() {
        for text in
            ["", "active_sessions=40", "waiting_sessions=2,wal_bytes_per_sec=64MB", "replication_slot_lag_bytes=1000"]
        {
            let parsed = LoadLimits::parse("max-load", text).unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(LoadLimits::parse("max-load", &parsed.to_string()).unwrap(), parsed);
        }
    }

    #[test]
    fn a_limit_is_reached_at_its_threshold() {
        let l = LoadLimit { metric: ActiveSessions, threshold: 40 };
        assert!(!l.is_reached(39));
        assert!(l.is_reached(40));
        assert!(l.is_reached(41));
        let parsed = LoadLimits::parse("max-load", "waiting_sessions=2").unwrap();
        assert_eq!(parsed.get(WaitingSessions), Some(2));
        assert_eq!(parsed.get(ActiveSessions), None);
    }
}
