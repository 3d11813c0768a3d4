//! The periodic status line, in gh-ost's shape, from the counters the workers publish.

use crate::apply::pump::StreamPositions;
use crate::apply::ApplyStats;
use crate::copy::CopyProgress;
use crate::phase::Phase;
use crate::status::{status_line, Progress, RateEstimator};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub fn spawn(
    interval: Duration,
    phase: watch::Receiver<Phase>,
    copy: Arc<CopyProgress>,
    apply: watch::Receiver<ApplyStats>,
    stream: Arc<StreamPositions>,
    estimated_rows: i64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut rate = RateEstimator::new(Duration::from_secs(30));
        let mut copy_started: Option<Instant> = None;
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let current = *phase.borrow();
            if current == Phase::Copy && copy_started.is_none() {
                copy_started = Some(now);
            }
            let rows = copy.rows.load(Ordering::Relaxed);
            rate.record(now, rows);
            let stats = apply.borrow().clone();
            let mut p = Progress::new(current);
            p.rows_copied = rows;
            p.rows_estimated = u64::try_from(estimated_rows).ok().filter(|n| *n > 0);
            p.copy_rate = rate.rate();
            p.applied = stats.applied_keys;
            p.backlog_keys = stats.backlog_keys as u64;
            p.lag_bytes = Some(stream.server_wal_end().bytes_since(stats.acked));
            p.elapsed = now.duration_since(started);
            p.copy_elapsed = copy_started.map(|s| now.duration_since(s)).unwrap_or_default();
            tracing::info!(
                phase = current.name(),
                rows_copied = rows,
                applied = stats.applied_keys,
                backlog = stats.backlog_keys,
                "{}",
                status_line(&p)
            );
        }
    })
}
