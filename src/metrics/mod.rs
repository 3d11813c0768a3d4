//! Metrics: the run's progress in the Prometheus text format (0.0.4), served on
//! `--metrics-listen ADDR:PORT` at `/metrics`.
//!
//! This module only reads. Each scrape takes a [`Snapshot`] of what the run already keeps
//! for itself: the phase the runner publishes, the progress snapshot behind the status line
//! (so a scrape and `sup` at the same moment say the same), the checksum's and the
//! cut-over's counts, and the reconnections by session. The text is written by the
//! `prometheus-client` crate's encoder; [`http`] answers the scrapes.
//!
//! Conventions: every name starts with `pg_ghost_`; counters end in `_total`; durations are
//! in seconds and sizes in bytes. The phase and the throttle cause are enums: one series per
//! value, 1 for the current one and 0 for the others, so that a series never vanishes and
//! `pg_ghost_phase{phase="copy"} == 1` selects a phase. A value that is not known (no
//! estimate, no rate yet, no replica measured) is left out rather than shown as 0.

mod http;

pub use http::{MetricsServer, Page};

use crate::checksum::ChecksumProgress;
use crate::cutover::CutOverTally;
use crate::phase::Phase;
use crate::conn::Reconnects;
use crate::status::Progress;
use crate::throttle::Cause;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Where a scrape reads from; each source belongs to the part of the run that fills it.
#[derive(Clone)]
pub struct Sources {
    pub phase: watch::Receiver<Phase>,
    pub progress: watch::Receiver<Progress>,
    pub checksum: Arc<ChecksumProgress>,
    pub cut_over: Arc<CutOverTally>,
    pub reconnects: Reconnects,
}

impl Sources {
    pub fn snapshot(&self) -> Snapshot {
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            phase: *self.phase.borrow(),
            progress: self.progress.borrow().clone(),
            checksum: ChecksumCounts {
                ranges: count(&self.checksum.ranges),
                rows: count(&self.checksum.rows),
                differing_ranges: count(&self.checksum.differing_ranges),
                repaired_ranges: count(&self.checksum.repaired_ranges),
            },
            cut_over_attempts: self.cut_over.attempts(),
            cut_over_locks: self.cut_over.lock_times(),
            reconnects: self.reconnects.counts(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChecksumCounts {
    pub ranges: u64,
    pub rows: u64,
    pub differing_ranges: u64,
    pub repaired_ranges: u64,
}

/// The values of one scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The runner's phase as of now (the progress snapshot's may be up to a second old).
    pub phase: Phase,
    pub progress: Progress,
    pub checksum: ChecksumCounts,
    pub cut_over_attempts: u64,
    /// `(lock_wait, lock_held)` of the attempt that committed.
    pub cut_over_locks: Option<(Duration, Duration)>,
    /// By application name.
    pub reconnects: Vec<(String, u64)>,
}

/// The snapshot as the Prometheus text format.
pub fn render(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("pg_ghost");
    registry.register_collector(Box::new(snapshot.clone()));
    let mut text = String::new();
    // Writing into a String cannot fail, and every value is encodable.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    text
}

/// The label value of a session: its application name without the `pg-ghost ` every one
/// starts with (`stream`, `apply`, `copy`, ...); the main session's `pg-ghost` is `main`.
fn session_label(application_name: &str) -> &str {
    match application_name {
        "pg-ghost" => "main",
        name => name.strip_prefix("pg-ghost ").unwrap_or(name),
    }
}

/// Writes one metric family at a time through the encoder.
struct Out<'a> {
    e: DescriptorEncoder<'a>,
}

impl Out<'_> {
    fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(&mut self, name: &str, help: &str, value: V) -> std::fmt::Result {
        ConstGauge::new(value).encode(self.e.encode_descriptor(name, help, None, MetricType::Gauge)?)
    }

    fn gauge_if<V: prometheus_client::encoding::EncodeGaugeValue>(&mut self, name: &str, help: &str, value: Option<V>) -> std::fmt::Result {
        match value {
            Some(v) => self.gauge(name, help, v),
            None => Ok(()),
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        ConstCounter::new(value).encode(self.e.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    /// One series per `(label value, value)`.
    fn family<'v, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        label: &str,
        series: impl IntoIterator<Item = (&'v str, M)>,
    ) -> std::fmt::Result {
        let mut m = self.e.encode_descriptor(name, help, None, kind)?;
        for (value, metric) in series {
            let labels = [(label, value)];
            metric.encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, e: DescriptorEncoder) -> std::fmt::Result {
        let p = &self.progress;
        let mut out = Out { e };
        let flag = |on: bool| ConstGauge::new(i64::from(on));
        out.family(
            "phase",
            "The run's phase: 1 for the current one, 0 for the others.",
            MetricType::Gauge,
            "phase",
            Phase::ALL.map(|phase| (phase.name(), flag(phase == self.phase))),
        )?;
        out.counter("rows_copied", "Rows the copy has inserted into the ghost table (the status line's Copy).", p.rows_copied)?;
        out.gauge_if(
            "rows_estimated",
            "Rows the copy expects in all, as the status line's total: the planner's estimate (raised to the rows copied), the rows copied once the copy is done.",
            p.rows_total(),
        )?;
        out.gauge_if("copy_rows_per_second", "Copy rate over the last 30 seconds.", p.copy_rate.filter(|r| r.is_finite()))?;
        out.counter(
            "applied_changes",
            "Changed keys from the stream written to the ghost table (the status line's Applied; a key changed twice between two flushes counts once).",
            p.applied,
        )?;
        out.gauge("apply_backlog_keys", "Changed keys received from the stream and not yet written to the ghost table.", p.backlog_keys)?;
        out.gauge(
            "apply_parked_keys",
            "Changed keys parked in the changelog table while the ghost has no key index (during the copy), not yet written to the ghost (the status line's Parked).",
            p.parked_keys,
        )?;
        out.gauge_if(
            "stream_lag_bytes",
            "WAL between the server's end of WAL, as the stream last reported it, and the position the apply has acknowledged (the status line's Lag, in bytes).",
            p.lag_bytes,
        )?;
        out.gauge_if(
            "stream_lag_seconds",
            "How long ago the server wrote the WAL the apply has not yet acknowledged (a lower bound, to the second).",
            p.stream_lag.map(|d| d.as_secs_f64()),
        )?;
        out.gauge_if(
            "replica_lag_seconds",
            "The largest replay lag of the replicas given with --throttle-control-replicas (the status line's Lag, in seconds).",
            p.lag.map(|d| d.as_secs_f64()),
        )?;
        out.gauge(
            "apply_standby_wait_seconds",
            "How long the flush under way has waited for the standbys of synchronized_standby_slots to have it before its changes are confirmed (a failover slot); 0 when none waits.",
            p.standby_wait.map_or(0.0, |d| d.as_secs_f64()),
        )?;
        out.gauge_if("slot_retained_wal_bytes", "WAL the run's replication slot retains on the server (in the revert window: the reverse slot).", p.slot_retained_wal)?;
        out.gauge_if("revert_window_old_table_bytes", "In the revert window: the size of the old table kept current for a revert.", p.old_table_bytes)?;
        out.gauge("throttled", "1 while the copy is throttled, 0 otherwise.", i64::from(p.throttle_reason.is_some()))?;
        out.family(
            "throttle_cause",
            "What throttles the copy: 1 for the check that gives the reason shown in the status line, 0 for the others.",
            MetricType::Gauge,
            "cause",
            Cause::ALL.map(|cause| (cause.name(), flag(p.throttle_cause == Some(cause)))),
        )?;
        let c = &self.checksum;
        out.counter("checksum_ranges", "Key ranges the checksum has compared.", c.ranges)?;
        out.counter("checksum_rows", "Rows of the original table the checksum has compared.", c.rows)?;
        out.counter("checksum_differing_ranges", "Key ranges that still differed after catching up, and were repaired.", c.differing_ranges)?;
        out.counter("checksum_repaired_ranges", "Key ranges re-copied and verified by the checksum.", c.repaired_ranges)?;
        out.counter("cutover_attempts", "Cut-over attempts made (each takes the locks, or fails to within the lock timeout).", self.cut_over_attempts)?;
        let (wait, held) = self.cut_over_locks.unzip();
        out.gauge_if("cutover_lock_wait_seconds", "How long the committed cut-over waited for its locks.", wait.map(|d| d.as_secs_f64()))?;
        out.gauge_if(
            "cutover_lock_held_seconds",
            "How long the committed cut-over held its locks (writes to the table waited this long).",
            held.map(|d| d.as_secs_f64()),
        )?;
        if !self.reconnects.is_empty() {
            out.family(
                "reconnects",
                "Connections opened again after a loss, by session (the application name after `pg-ghost `; `main` for the main one).",
                MetricType::Counter,
                "session",
                self.reconnects.iter().map(|(name, n)| (session_label(name), ConstCounter::new(*n))),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
