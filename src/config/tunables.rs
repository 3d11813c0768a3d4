//! The settings a DBA may change while a run is under way (the control socket's
//! `chunk-size=`, `nice-ratio=`, `max-lag-millis=`, ...).
//!
//! They live behind a `tokio::sync::watch` owned by the runner; readers take a snapshot
//! per decision, so a change applies from the next chunk on. [`Tunables::set`] validates
//! with the same functions as the command line, so the socket cannot set a value the
//! flags would refuse, and [`Tunables::get`] writes values back in the syntax `set` reads.

use super::load::LoadLimits;
use super::replicas::{format_replicas, parse_replicas};
use super::units::{parse_duration, Bare};
use crate::conn::Endpoint;
use crate::error::{Error, Result};
use pg_query::protobuf::node::Node as N;
use std::time::Duration;

/// The largest initial or set chunk: one chunk is one transaction, and a very long one
/// holds back vacuum and makes the stream carry a burst.
pub const MAX_CHUNK_SIZE: u64 = 1_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Tunables {
    /// Rows per copy chunk (the adaptive sizing starts here; a socket change resets it).
    pub chunk_size: u64,
    /// After each chunk, sleep this fraction of the time it took. 0 = no sleep.
    pub nice_ratio: f64,
    /// Throttle while replica lag exceeds this; `None`: lag is not checked. At start it is
    /// above the heartbeat interval; a change through the socket is not checked against it
    /// (a limit at or below the interval only throttles more).
    pub max_lag: Option<Duration>,
    /// Throttle while one of these is reached.
    pub max_load: LoadLimits,
    /// Abort (or hibernate) when one of these is reached.
    pub critical_load: LoadLimits,
    /// Throttle while this SELECT returns a positive number. Checked to be one plain
    /// SELECT; the collector should still run it in a read-only transaction, since a
    /// function it calls may write.
    pub throttle_query: Option<String>,
    /// Standbys to measure lag on; empty: `replay_lag` from `pg_stat_replication`.
    pub throttle_control_replicas: Vec<Endpoint>,
}

/// The names [`Tunables::set`] and [`Tunables::get`] accept: the flags' names.
pub const TUNABLE_NAMES: [&str; 7] = [
    "chunk-size",
    "nice-ratio",
    "max-lag-millis",
    "max-load",
    "critical-load",
    "throttle-query",
    "throttle-control-replicas",
];

impl Tunables {
    /// Changes one setting from its text form; on error nothing changes.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let v = value.trim();
        match name {
            "chunk-size" => self.chunk_size = chunk_size(name, parse_number(name, v)?)?,
            "nice-ratio" => self.nice_ratio = nice_ratio(name, parse_number(name, v)?)?,
            "max-lag-millis" => self.max_lag = max_lag(name, v)?,
            "max-load" => self.max_load = LoadLimits::parse(name, v)?,
            "critical-load" => self.critical_load = LoadLimits::parse(name, v)?,
            "throttle-query" => self.throttle_query = throttle_query(name, v)?,
            "throttle-control-replicas" => self.throttle_control_replicas = parse_replicas(name, v)?,
            _ => return Err(unknown(name)),
        }
        Ok(())
    }

    /// One setting in the text form [`Tunables::set`] reads.
    pub fn get(&self, name: &str) -> Result<String> {
        Ok(match name {
            "chunk-size" => self.chunk_size.to_string(),
            "nice-ratio" => self.nice_ratio.to_string(),
            "max-lag-millis" => self.max_lag.map_or(0, |d| d.as_millis()).to_string(),
            "max-load" => self.max_load.to_string(),
            "critical-load" => self.critical_load.to_string(),
            "throttle-query" => self.throttle_query.clone().unwrap_or_default(),
            "throttle-control-replicas" => format_replicas(&self.throttle_control_replicas),
            _ => return Err(unknown(name)),
        })
    }
}

fn unknown(name: &str) -> Error {
    Error::config(format!("{name:?} cannot be changed while running; these can: {}", TUNABLE_NAMES.join(", ")))
}

fn parse_number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T> {
    text.parse().map_err(|_| Error::config(format!("--{flag} {text:?}: not a number")))
}

/// At least one row, at most [`MAX_CHUNK_SIZE`].
pub fn chunk_size(flag: &str, rows: u64) -> Result<u64> {
    if (1..=MAX_CHUNK_SIZE).contains(&rows) {
        Ok(rows)
    } else {
        Err(Error::config(format!("--{flag} {rows}: give between 1 and {MAX_CHUNK_SIZE} rows")))
    }
}

/// A finite fraction, zero or more.
pub fn nice_ratio(flag: &str, ratio: f64) -> Result<f64> {
    if ratio.is_finite() && ratio >= 0.0 {
        Ok(ratio)
    } else {
        Err(Error::config(format!("--{flag} {ratio}: give a number of 0 or more (0.5 sleeps half a chunk's time)")))
    }
}

/// Bare numbers are milliseconds; 0 turns the check off.
pub fn max_lag(flag: &str, text: &str) -> Result<Option<Duration>> {
    let lag = parse_duration(flag, text, Bare::Millis)?;
    Ok(Some(lag).filter(|d| !d.is_zero()))
}

/// One plain SELECT, read with PostgreSQL's parser: no second statement, no `INTO`, no
/// data-modifying `WITH`, no row locks. Empty text means none.
pub fn throttle_query(flag: &str, text: &str) -> Result<Option<String>> {
    let query = text.trim();
    if query.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| Error::config(format!("--{flag} {query:?}: {why}"));
    let parsed =
        pg_query::parse(query, pg_query::ParserOptions::DEFAULT).map_err(|e| bad(format!("not valid SQL: {e}")))?;
    let select = match parsed.protobuf.stmts.as_slice() {
        [one] => match one.stmt.as_ref().and_then(|s| s.node.as_ref()) {
            Some(N::SelectStmt(select)) => select,
            _ => return Err(bad("must be a SELECT".into())),
        },
        _ => return Err(bad("must be exactly one statement".into())),
    };
    if select.into_clause.is_some() {
        return Err(bad("SELECT ... INTO creates a table; return a number instead".into()));
    }
    if !select.locking_clause.is_empty() {
        return Err(bad("must not lock rows (FOR UPDATE/SHARE)".into()));
    }
    // PostgreSQL allows data-modifying WITH only at the top level, so this is the one place
    // to look.
    let mut cte_queries = select.with_clause.iter().flat_map(|w| w.ctes.iter()).filter_map(|c| match c.node.as_ref() {
        Some(N::CommonTableExpr(cte)) => cte.ctequery.as_ref().and_then(|q| q.node.as_ref()),
        _ => None,
    });
    if cte_queries.any(|q| !matches!(q, N::SelectStmt(_))) {
        return Err(bad("must not modify data in a WITH clause".into()));
    }
    Ok(Some(query.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Tunables {
        Tunables {
            chunk_size: 10_000,
            nice_ratio: 0.0,
            max_lag: Some(Duration::from_millis(1500)),
            max_load: LoadLimits::default(),
            critical_load: LoadLimits::default(),
            throttle_query: None,
            throttle_control_replicas: Vec::new(),
        }
    }

    #[test]
    fn set_then_get_reads_back() {
        for (name, value, back) in [
            ("chunk-size", "500", "500"),
            ("nice-ratio", "0.25", "0.25"),
            ("max-lag-millis", "2000", "2000"),
            ("max-lag-millis", "2s", "2000"),
            ("max-lag-millis", "0", "0"),
            ("max-load", "active_sessions=40", "active_sessions=40"),
            ("critical-load", "wal_bytes_per_sec=1GB", "wal_bytes_per_sec=1GB"),
            ("throttle-query", "SELECT 1", "SELECT 1"),
            ("throttle-query", "", ""),
            ("throttle-control-replicas", "r1:5433,r2", "r1:5433,r2:5432"),
        ] {
            let mut t = defaults();
            t.set(name, value).unwrap();
            assert_eq!(t.get(name).unwrap(), back, "{name}={value}");
        }
    }

    #[test]
    fn bad_values_change_nothing() {
        for (name, value, why) in [
            ("chunk-size", "0", "between 1 and 1000000"),
            ("chunk-size", "2000000", "between 1 and"),
            ("chunk-size", "-5", "not a number"),
            ("chunk-size", "lots", "not a number"),
            ("nice-ratio", "-0.5", "0 or more"),
            ("nice-ratio", "NaN", "0 or more"),
            ("nice-ratio", "inf", "0 or more"),
            ("max-lag-millis", "soon", "expected a number"),
            ("max-load", "cpu=90", "unknown metric"),
            ("throttle-control-replicas", "r1:x", "not a port"),
            ("throttle-query", "DELETE FROM t", "must be a SELECT"),
            ("lock-timeout", "1s", "cannot be changed while running"),
        ] {
            let mut t = defaults();
            let e = t.set(name, value).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            assert!(e.to_string().contains(why), "{name}={value}: {e}");
            assert_eq!(t, defaults(), "{name}={value} changed something");
        }
        assert!(defaults().get("nope").is_err());
    }

    #[test]
    fn throttle_query_must_be_one_plain_select() {
        for ok in [
            "SELECT 1",
            "select count(*) > 100 from pg_stat_activity;",
            "WITH a AS (SELECT 1 AS n) SELECT n FROM a",
            "SELECT 1 UNION ALL SELECT 2",
        ] {
            assert_eq!(throttle_query("throttle-query", ok).unwrap().as_deref(), Some(ok), "{ok}");
        }
        for (bad, why) in [
            ("SELEC 1", "not valid SQL"),
            ("SELECT 1; SELECT 2", "exactly one statement"),
            ("UPDATE t SET a = 1", "must be a SELECT"),
            ("SELECT 1 INTO t", "INTO creates a table"),
            ("SELECT * FROM t FOR UPDATE", "must not lock rows"),
            ("WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d", "WITH clause"),
        ] {
            let msg = throttle_query("throttle-query", bad).unwrap_err().to_string();
            assert!(msg.starts_with("--throttle-query "), "{msg}");
            assert!(msg.contains(why), "{bad}: {msg}");
        }
        assert_eq!(throttle_query("throttle-query", "  ").unwrap(), None);
    }
}
