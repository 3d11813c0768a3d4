//! Replica lag, read two ways.
//!
//! With `--throttle-control-replicas`: each standby is asked for the heartbeat row it has
//! replayed (see [`super::heartbeat`]), and the lag is the primary's clock now minus the
//! primary's clock when it wrote that heartbeat. Both ends are the primary's clock, so
//! clock skew between the hosts does not enter; "now" is the primary's clock read at this
//! tick plus the local monotonic time since. The reading includes up to one heartbeat
//! interval of age even on a standby that is current, which is why the heartbeat interval
//! must stay below `--max-lag-millis`.
//!
//! Without a list: `replay_lag` of the physical standbys in `pg_stat_replication` (none:
//! no lag constraint). The heartbeat keeps WAL flowing, so `replay_lag` does not fall back
//! to NULL on an idle server.
//!
//! A standby that cannot be reached, has not replayed the heartbeat yet, or cannot be read
//! is unmeasured (`Err(why)`), which throttles.

use super::bounded::{connect_within, within};
use super::inputs::{Reading, ReplicaLag};
use crate::config::replica_conn;
use crate::conn::{ConnInfo, Endpoint};
use crate::error::{Context, Error, Result};
use crate::sql::QualifiedName;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Bounds one standby's query, so a stuck standby reads as unmeasured within a tick or so.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed connection attempt, wait this long before the next: an unreachable
/// host should not cost a connection timeout on every tick.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The primary's clock (µs since the epoch) as read at local instant `taken`.
#[derive(Clone, Copy, Debug)]
pub struct PrimaryClock {
    pub micros: i64,
    pub taken: Instant,
}

impl PrimaryClock {
    /// The primary's clock now, carried forward on the local monotonic clock.
    pub fn now_micros(&self) -> i64 {
        self.micros.saturating_add(self.taken.elapsed().as_micros() as i64)
    }
}

/// Lag from a heartbeat written at `heartbeat_micros` (primary clock); never negative.
pub fn heartbeat_lag(now_micros: i64, heartbeat_micros: i64) -> Duration {
    Duration::from_micros(now_micros.saturating_sub(heartbeat_micros).max(0) as u64)
}

/// The newest heartbeat a standby has replayed, in µs of the primary's clock.
fn heartbeat_sql(changelog: &QualifiedName) -> String {
    format!("SELECT (EXTRACT(EPOCH FROM updated_at) * 1000000)::int8 FROM {} WHERE key = 'heartbeat'", changelog.sql())
}

/// One connection per standby in `--throttle-control-replicas`, kept across ticks.
pub(crate) struct ReplicaProbes {
    primary: ConnInfo,
    sql: String,
    probes: Vec<Probe>,
}

struct Probe {
    endpoint: Endpoint,
    client: Option<Client>,
    /// No new connection attempt before this; with the error of the last one.
    backoff: Option<(Instant, String)>,
}

impl ReplicaProbes {
    pub fn new(primary: ConnInfo, changelog: QualifiedName) -> ReplicaProbes {
        ReplicaProbes {
            primary: primary.with_application_name("pg-ghost throttle"),
            sql: heartbeat_sql(&changelog),
            probes: Vec::new(),
        }
    }

    /// Closes every standby connection.
    pub fn forget(&mut self) {
        self.probes.clear();
    }

    /// The lag of each standby in `endpoints`, in that order, measured concurrently. The
    /// list may have changed since the last tick (the socket's `throttle-control-replicas=`).
    pub async fn measure(&mut self, endpoints: &[Endpoint], clock: Reading<PrimaryClock>) -> Vec<ReplicaLag> {
        self.reconcile(endpoints);
        let (primary, sql) = (&self.primary, self.sql.as_str());
        let reads = self.probes.iter_mut().map(|p| p.measure(primary, sql, clock.clone()));
        futures_util::future::join_all(reads).await
    }

    /// Keeps the probes of the endpoints still listed, in the list's order.
    fn reconcile(&mut self, endpoints: &[Endpoint]) {
        let mut old = std::mem::take(&mut self.probes);
        for endpoint in endpoints {
            let probe = match old.iter().position(|p| &p.endpoint == endpoint) {
                Some(i) => old.swap_remove(i),
                None => Probe { endpoint: endpoint.clone(), client: None, backoff: None },
            };
            self.probes.push(probe);
        }
    }
}

impl Probe {
    async fn measure(&mut self, primary: &ConnInfo, sql: &str, clock: Reading<PrimaryClock>) -> ReplicaLag {
        let name = self.endpoint.describe();
        let lag = match self.heartbeat(primary, sql).await {
            Ok(Some(heartbeat)) => match clock {
                Ok(clock) => Ok(heartbeat_lag(clock.now_micros(), heartbeat)),
                Err(why) => Err(format!("the primary's clock cannot be read: {why}")),
            },
            Ok(None) => Err("no heartbeat replayed yet".to_string()),
            Err(why) => Err(why),
        };
        ReplicaLag { name, lag }
    }

    /// The heartbeat the standby has replayed; `Ok(None)` when it has none yet.
    async fn heartbeat(&mut self, primary: &ConnInfo, sql: &str) -> Reading<Option<i64>> {
        let client = self.connected(primary).await?;
        let read = within(REPLICA_TIMEOUT, "reading the heartbeat", async {
            let row = client.query_opt(sql, &[]).await.context("reading the heartbeat")?;
            row.map(|r| r.try_get::<_, i64>(0)).transpose().map_err(Error::from)
        })
        .await;
        match read {
            Ok(v) => Ok(v),
            // The changelog table is created on the primary after the throttler may start.
            Err(e) if e.sqlstate() == Some("42P01") => Ok(None),
            Err(e) => {
                // A stuck or broken session is replaced on the next tick.
                self.client = None;
                Err(e.to_string())
            }
        }
    }

    async fn connected(&mut self, primary: &ConnInfo) -> Reading<&Client> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            if let Some((until, why)) = &self.backoff {
                if Instant::now() < *until {
                    return Err(why.clone());
                }
            }
            match connect_within(&replica_conn(primary, &self.endpoint)).await {
                Ok(c) => {
                    self.client = Some(c);
                    self.backoff = None;
                }
                Err(e) => {
                    let why = e.to_string();
                    self.backoff = Some((Instant::now() + RECONNECT_AFTER, why.clone()));
                    return Err(why);
                }
            }
        }
        self.client.as_ref().ok_or_else(|| "not connected".to_string())
    }
}

/// `replay_lag` of each physical standby (walsenders not attached to a database), named
/// `application_name@address`. A NULL `replay_lag` means caught up and idle. A NULL
/// `state` means our role may not see the details (it needs `pg_read_all_stats`): that is
/// unmeasured, not zero.
const STANDBYS_SQL: &str = "
SELECT COALESCE(NULLIF(r.application_name, ''), 'standby')
         || COALESCE('@' || host(r.client_addr), ' (pid ' || r.pid || ')'),
       r.state IS NOT NULL,
       COALESCE(EXTRACT(EPOCH FROM r.replay_lag), 0)::float8
  FROM pg_catalog.pg_stat_replication r
  JOIN pg_catalog.pg_stat_activity a ON a.pid = r.pid
 WHERE a.datname IS NULL
 ORDER BY 1";

pub(crate) async fn standby_lags(client: &Client) -> Vec<ReplicaLag> {
    let read = within(REPLICA_TIMEOUT, "reading pg_stat_replication", async {
        let rows = client.query(STANDBYS_SQL, &[]).await.context("reading pg_stat_replication")?;
        rows.iter()
            .map(|r| -> Result<ReplicaLag> {
                let name: String = r.try_get(0)?;
                let visible: bool = r.try_get(1)?;
                let secs: f64 = r.try_get(2)?;
                let lag = if visible {
                    Ok(Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX))
                } else {
                    Err("pg_stat_replication hides its lag from this role (grant pg_read_all_stats)".to_string())
                };
                Ok(ReplicaLag { name, lag })
            })
            .collect::<Result<Vec<_>>>()
    })
    .await;
    read.unwrap_or_else(|e| standbys_unknown(&e.to_string()))
}

/// One unmeasured entry standing for all standbys, when `pg_stat_replication` cannot be read.
pub(crate) fn standbys_unknown(why: &str) -> Vec<ReplicaLag> {
    vec![ReplicaLag { name: "the standbys (pg_stat_replication)".into(), lag: Err(why.to_string()) }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_primary_clock_now_minus_heartbeat() {
        assert_eq!(heartbeat_lag(10_000_000, 7_700_000), Duration::from_millis(2300));
        assert_eq!(heartbeat_lag(10_000_000, 10_000_000), Duration::ZERO);
        // A heartbeat stamped after "now" (rounding between two readings) is no lag.
        assert_eq!(heartbeat_lag(10_000_000, 10_000_500), Duration::ZERO);
    }

    #[test]
    fn primary_clock_moves_with_local_time() {
        let taken = Instant::now() - Duration::from_millis(500);
        let clock = PrimaryClock { micros: 1_000_000, taken };
        let now = clock.now_micros();
        assert!((1_500_000..1_600_000).contains(&now), "{now}");
    }

    #[test]
    fn heartbeat_query_quotes_the_changelog() {
        let sql = heartbeat_sql(&QualifiedName::new("app", "_Orders_ghc"));
        assert_eq!(
            sql,
            "SELECT (EXTRACT(EPOCH FROM updated_at) * 1000000)::int8 FROM \"app\".\"_Orders_ghc\" WHERE key = 'heartbeat'"
        );
    }

    #[test]
    fn probes_follow_the_list() {
        let conn = ConnInfo::parse_with_env("host=p user=u dbname=d", |_| None).unwrap();
        let mut probes = ReplicaProbes::new(conn, QualifiedName::new("public", "_t_ghc"));
        let ep = |p| Endpoint::Tcp { host: "r".into(), port: p };
        probes.reconcile(&[ep(1), ep(2), ep(3)]);
        probes.probes[1].backoff = Some((Instant::now(), "marked".into()));
        probes.reconcile(&[ep(3), ep(2)]);
        let ports: Vec<_> = probes.probes.iter().map(|p| p.endpoint.describe()).collect();
        assert_eq!(ports, ["r:3", "r:2"]);
        assert!(probes.probes[1].backoff.is_some(), "a kept probe keeps its state");
        probes.forget();
        assert!(probes.probes.is_empty());
    }
}
