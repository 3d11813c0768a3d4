//! The collectors: one tick's [`Inputs`] read from the primary, the standbys and the flag
//! files.
//!
//! Invariants: every query is cheap (catalog views, one row) and bounded by a timeout, so a
//! tick cannot hang; a failure is kept as the reason a value is unknown, never raised, so
//! the throttler keeps running and fails closed. pg-ghost's own sessions (application
//! names starting with `pg-ghost`) are not counted as load: the copy would otherwise
//! throttle itself on and off. The throttle query runs in a READ ONLY transaction with a
//! `statement_timeout`, since a function it calls might write or hang.

use super::inputs::{Inputs, Load, Override, Reading};
use super::bounded::{connect_within, within};
use super::lag::{PrimaryClock, ReplicaProbes};
use crate::config::Tunables;
use crate::conn::ConnInfo;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::replication::slot;
use crate::sql::QualifiedName;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Bounds the collector's own queries on the primary.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// `statement_timeout` of the DBA's throttle query.
pub const THROTTLE_QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// The WAL rate is averaged over about this long: one tick alone is too noisy.
const WAL_RATE_WINDOW: Duration = Duration::from_secs(1);

/// Application names of pg-ghost's own sessions start with this.
pub(crate) const OWN_APPLICATION_PREFIX: &str = "pg-ghost";

/// The load metrics and the primary's clock, read in one round trip.
const SAMPLE_SQL: &str = "
SELECT s.active, s.waiting,
       (SELECT COALESCE(max(pg_catalog.pg_current_wal_lsn() - COALESCE(confirmed_flush_lsn, restart_lsn)), 0)::int8
          FROM pg_catalog.pg_replication_slots WHERE slot_name <> $1),
       pg_catalog.pg_current_wal_lsn()::text,
       (EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()) * 1000000)::int8
  FROM (SELECT count(*) FILTER (WHERE state = 'active')::int8 AS active,
               count(*) FILTER (WHERE wait_event_type = 'Lock')::int8 AS waiting
          FROM pg_catalog.pg_stat_activity
         WHERE datname = pg_catalog.current_database()
           AND backend_type = 'client backend'
           AND pid <> pg_catalog.pg_backend_pid()
           AND application_name NOT LIKE $2 || '%') s";

struct Sample {
    active: u64,
    waiting: u64,
    other_slots_lag: u64,
    wal: Lsn,
    clock: PrimaryClock,
}

pub(crate) struct Collector {
    conn: ConnInfo,
    slot: String,
    flag_files: Vec<PathBuf>,
    client: Option<Client>,
    wal_rate: WalRate,
    /// None without a changelog table (before one is created): there is no heartbeat to
    /// read back on the standbys, and their lag is read from `pg_stat_replication`.
    replicas: Option<ReplicaProbes>,
}

impl Collector {
    pub fn new(conn: &ConnInfo, changelog: Option<QualifiedName>, slot: String, flag_files: Vec<PathBuf>) -> Collector {
        Collector {
            conn: conn.with_application_name("pg-ghost throttle"),
            slot,
            flag_files,
            client: None,
            wal_rate: WalRate::new(WAL_RATE_WINDOW),
            replicas: changelog.map(|c| ReplicaProbes::new(conn.clone(), c)),
        }
    }

    /// One tick's inputs. While hibernating only the flag files and the slot's WAL are
    /// read: the server is under critical load and is left alone.
    pub async fn collect(
        &mut self,
        tunables: &Tunables,
        forced: Override,
        cut_over_locked: bool,
        hibernating: Option<String>,
    ) -> Inputs {
        let flag_files = self.present_flag_files().await;
        let primary = self.ensure_primary().await;
        let retained_wal = match &primary {
            Ok(()) => self.retained_wal().await,
            Err(why) => Err(why.clone()),
        };
        let mut inputs = Inputs {
            lags: Vec::new(),
            load: Load::unknown("not collected while hibernating"),
            throttle_query: None,
            flag_files,
            retained_wal,
            forced,
            cut_over_locked,
            hibernating,
        };
        if inputs.hibernating.is_some() {
            return inputs;
        }
        let sample = match &primary {
            Ok(()) => self.sample().await,
            Err(why) => Err(why.clone()),
        };
        inputs.load = self.load(&sample);
        inputs.lags = self.lags(tunables, sample.as_ref().map(|s| s.clock).map_err(Clone::clone)).await;
        // A throttle query that reads the table would queue behind the cut-over's lock.
        if let (Some(query), false) = (&tunables.throttle_query, cut_over_locked) {
            inputs.throttle_query = Some(match &primary {
                Ok(()) => self.throttle_query(query).await,
                Err(why) => Err(why.clone()),
            });
        }
        inputs
    }

    /// The flag files that exist. One that cannot be checked counts as present: fail closed.
    async fn present_flag_files(&self) -> Vec<PathBuf> {
        let mut present = Vec::new();
        for path in &self.flag_files {
            if tokio::fs::try_exists(path).await.unwrap_or(true) {
                present.push(path.clone());
            }
        }
        present
    }

    /// Connects to the primary when there is no live session; `Err(why)` otherwise.
    async fn ensure_primary(&mut self) -> Reading<()> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.client = None;
        let connected = async {
            let client = connect_within(&self.conn).await?;
            let timeout = format!("SET statement_timeout = {}", QUERY_TIMEOUT.as_millis());
            within(QUERY_TIMEOUT, "setting statement_timeout", async {
                client.batch_execute(&timeout).await.map_err(Error::from)
            })
            .await?;
            Ok::<_, Error>(client)
        };
        match connected.await {
            Ok(client) => {
                self.client = Some(client);
                Ok(())
            }
            Err(e) => Err(format!("primary unreachable: {e}")),
        }
    }

    fn client(&self) -> Reading<&Client> {
        self.client.as_ref().ok_or_else(|| "primary unreachable".to_string())
    }

    /// Forgets a session that broke, so the next tick reconnects.
    fn failed(&mut self, e: Error) -> String {
        if self.client.as_ref().is_some_and(Client::is_closed) || e.kind() == ErrorKind::Connection {
            self.client = None;
        }
        e.to_string()
    }

    async fn retained_wal(&mut self) -> Reading<u64> {
        let client = self.client()?;
        let read = within(QUERY_TIMEOUT, "measuring retained WAL", slot::retained_wal_bytes(client, &self.slot)).await;
        // A slot that does not exist (yet, or any more) retains nothing.
        read.map(|b| b.unwrap_or(0)).map_err(|e| self.failed(e))
    }

    async fn sample(&mut self) -> Reading<Sample> {
        let client = self.client()?;
        let row = within(QUERY_TIMEOUT, "reading the load", async {
            client.query_one(SAMPLE_SQL, &[&self.slot, &OWN_APPLICATION_PREFIX]).await.context("reading the load")
        })
        .await;
        let taken = Instant::now();
        let row = row.map_err(|e| self.failed(e))?;
        let read = || -> Result<Sample> {
            let wal: String = row.try_get(3)?;
            Ok(Sample {
                active: row.try_get::<_, i64>(0)?.max(0) as u64,
                waiting: row.try_get::<_, i64>(1)?.max(0) as u64,
                other_slots_lag: row.try_get::<_, i64>(2)?.max(0) as u64,
                wal: wal.parse().map_err(|e| Error::protocol(format!("pg_current_wal_lsn(): {e}")))?,
                clock: PrimaryClock { micros: row.try_get(4)?, taken },
            })
        };
        read().map_err(|e| e.to_string())
    }

    fn load(&mut self, sample: &Reading<Sample>) -> Load {
        match sample {
            Ok(s) => Load {
                active_sessions: Ok(s.active),
                waiting_sessions: Ok(s.waiting),
                replication_slot_lag_bytes: Ok(s.other_slots_lag),
                wal_bytes_per_sec: self.wal_rate.add(s.clock.micros, s.wal),
            },
            Err(why) => Load::unknown(why),
        }
    }

    async fn lags(&mut self, tunables: &Tunables, clock: Reading<PrimaryClock>) -> Vec<super::inputs::ReplicaLag> {
        if tunables.max_lag.is_none() {
            // Lag is not a limit: hold no connections to the standbys.
            if let Some(r) = self.replicas.as_mut() {
                r.forget();
            }
            return Vec::new();
        }
        match self.replicas.as_mut() {
            Some(replicas) if !tunables.throttle_control_replicas.is_empty() => {
                replicas.measure(&tunables.throttle_control_replicas, clock).await
            }
            other => {
                if let Some(r) = other {
                    r.forget();
                }
                match self.client() {
                    Ok(client) => super::lag::standby_lags(client).await,
                    Err(why) => super::lag::standbys_unknown(&why),
                }
            }
        }
    }

    async fn throttle_query(&mut self, query: &str) -> Reading<f64> {
        let Some(client) = self.client.as_mut() else { return Err("primary unreachable".into()) };
        let ran =
            within(THROTTLE_QUERY_TIMEOUT + QUERY_TIMEOUT, "the throttle query", run_throttle_query(client, query))
                .await;
        match ran {
            Ok(text) => query_value(text.as_deref()),
            Err(e) => Err(self.failed(e)),
        }
    }
}

/// Runs the query read-only, with a `statement_timeout`; `Ok(None)` for a NULL.
async fn run_throttle_query(client: &mut Client, query: &str) -> Result<Option<String>> {
    let tx = client.build_transaction().read_only(true).start().await?;
    tx.batch_execute(&format!("SET LOCAL statement_timeout = {}", THROTTLE_QUERY_TIMEOUT.as_millis())).await?;
    let rows = tx.query(throttle_query_sql(query).as_str(), &[]).await?;
    tx.commit().await?;
    let row = rows.first().ok_or_else(|| Error::new(ErrorKind::Sql, "returned no rows"))?;
    Ok(row.try_get(0)?)
}

/// The DBA's SELECT wrapped to yield its first column of its first row as text, whatever
/// its type (integer, numeric, boolean). A trailing `;` is dropped and the closing
/// parenthesis goes on its own line, so a trailing `-- comment` cannot swallow it.
pub fn throttle_query_sql(query: &str) -> String {
    let mut q = query.trim();
    while let Some(rest) = q.strip_suffix(';') {
        q = rest.trim_end();
    }
    format!("SELECT t.v::text FROM (\n{q}\n) AS t(v) LIMIT 1")
}

/// Reads the throttle query's value: a number (positive throttles) or a boolean. Anything
/// else is an error, which throttles: a query that says nothing usable must not let the
/// copy run unchecked.
pub fn query_value(text: Option<&str>) -> Reading<f64> {
    let Some(text) = text else { return Err("returned NULL".into()) };
    match text.trim() {
        "t" | "true" => return Ok(1.0),
        "f" | "false" => return Ok(0.0),
        _ => {}
    }
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_nan() => Err("returned NaN".into()),
        Ok(n) => Ok(n),
        Err(_) => {
            let shown: String = text.chars().take(40).collect();
            Err(format!("returned {shown:?}, not a number"))
        }
    }
}

/// WAL bytes per second from successive readings of `pg_current_wal_lsn()`, stamped with
/// the primary's clock, averaged over about `window`.
#[derive(Debug)]
pub struct WalRate {
    window: Duration,
    /// (primary clock in µs, LSN), oldest first.
    samples: VecDeque<(i64, Lsn)>,
}

/// Readings closer together than this give no rate yet: too noisy.
const MIN_SPAN_MICROS: i64 = 100_000;

impl WalRate {
    pub fn new(window: Duration) -> WalRate {
        WalRate { window, samples: VecDeque::new() }
    }

    /// Adds a reading and returns the rate over the window.
    pub fn add(&mut self, micros: i64, lsn: Lsn) -> Reading<u64> {
        if let Some(&(t, l)) = self.samples.back() {
            // A clock or an LSN going backwards (failover, clock step): start over.
            if micros <= t || lsn < l {
                self.samples.clear();
            }
        }
        self.samples.push_back((micros, lsn));
        let window = self.window.as_micros() as i64;
        // Keep the newest reading at least a window old as the base.
        while self.samples.len() > 2 && micros - self.samples[1].0 >= window {
            self.samples.pop_front();
        }
        let (t0, l0) = self.samples[0];
        let span = micros - t0;
        if span < MIN_SPAN_MICROS {
            return Err("not measured yet".into());
        }
        Ok((lsn.bytes_since(l0) as u128 * 1_000_000 / span as u128) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_query_is_wrapped_whole() {
        assert_eq!(throttle_query_sql("SELECT 1"), "SELECT t.v::text FROM (\nSELECT 1\n) AS t(v) LIMIT 1");
        assert_eq!(throttle_query_sql("  SELECT 1 ; ;\n"), "SELECT t.v::text FROM (\nSELECT 1\n) AS t(v) LIMIT 1");
        assert_eq!(
            throttle_query_sql("SELECT count(*) > 3 FROM jobs -- busy?"),
            "SELECT t.v::text FROM (\nSELECT count(*) > 3 FROM jobs -- busy?\n) AS t(v) LIMIT 1"
        );
    }

    #[test]
    fn throttle_query_values() {
        for (text, want) in [
            (Some("1"), Ok(1.0)),
            (Some("0"), Ok(0.0)),
            (Some("-2"), Ok(-2.0)),
            (Some("0.25"), Ok(0.25)),
            (Some(" 3 "), Ok(3.0)),
            (Some("t"), Ok(1.0)),
            (Some("f"), Ok(0.0)),
            (Some("12345678901234"), Ok(12345678901234.0)),
            (None, Err("returned NULL".to_string())),
            (Some("NaN"), Err("returned NaN".to_string())),
            (Some("busy"), Err("returned \"busy\", not a number".to_string())),
        ] {
            assert_eq!(query_value(text), want, "{text:?}");
        }
    }

    #[test]
    fn wal_rate_needs_a_span_then_averages_over_the_window() {
        let mut r = WalRate::new(Duration::from_secs(1));
        assert!(r.add(0, Lsn(1000)).is_err());
        assert!(r.add(50_000, Lsn(2000)).is_err(), "50ms is too short");
        assert_eq!(r.add(200_000, Lsn(1000 + 200_000)), Ok(1_000_000));
        assert_eq!(r.add(1_000_000, Lsn(1000 + 1_000_000)), Ok(1_000_000));
        // The base moves forward: only the last window counts.
        assert_eq!(r.add(2_000_000, Lsn(1000 + 1_000_000)), Ok(0));
        assert_eq!(r.add(2_500_000, Lsn(1000 + 1_500_000)), Ok(333_333));
    }

    #[test]
    fn wal_rate_starts_over_when_time_or_lsn_go_back() {
        let mut r = WalRate::new(Duration::from_secs(1));
        assert!(r.add(1_000_000, Lsn(5000)).is_err());
        assert_eq!(r.add(1_500_000, Lsn(10_000)), Ok(10_000));
        assert!(r.add(1_400_000, Lsn(11_000)).is_err(), "clock stepped back");
        assert!(r.add(1_600_000, Lsn(100)).is_err(), "LSN went back");
        assert_eq!(r.add(1_700_000, Lsn(1100)), Ok(10_000));
    }
}
