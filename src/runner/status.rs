//! The progress snapshot, refreshed every second for the control socket, written as a
//! status line in gh-ost's shape every `--status-interval`, and handed to the `on-status`
//! hooks every `--hooks-status-interval`: for the ghost way from the copy and the stream
//! ([`spawn`]), for the direct way from its steps ([`spawn_direct`]).

use crate::apply::pump::StreamPositions;
use crate::apply::ApplyStats;
use crate::copy::CopyProgress;
use crate::hooks::{HookEnv, HookEvent, Hooks};
use crate::phase::Phase;
use crate::replication::failover::StandbyWait;
use crate::status::{status_line, Progress, RateEstimator, StepOf, StreamLagClock};
use crate::throttle::Decision;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Sources {
    pub phase: watch::Receiver<Phase>,
    pub copy: Arc<CopyProgress>,
    pub apply: watch::Receiver<ApplyStats>,
    pub stream: Arc<StreamPositions>,
    pub throttle: watch::Receiver<Decision>,
    pub estimated_rows: i64,
    /// What the apply's flushes wait for (a failover slot).
    pub standbys: Option<StandbyWait>,
}

pub struct Outputs {
    pub progress: watch::Sender<Progress>,
    /// A snapshot is taken at once when this is notified.
    pub refresh: Arc<tokio::sync::Notify>,
    pub log_every: Duration,
    pub hooks: Arc<dyn Hooks>,
    pub env: Arc<Mutex<HookEnv>>,
    pub hooks_every: Duration,
}

const REFRESH: Duration = Duration::from_secs(1);

pub fn spawn(src: Sources, out: Outputs) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut rate = RateEstimator::new(Duration::from_secs(30));
        let mut clock = StreamLagClock::new();
        let mut copy_started: Option<Instant> = None;
        let mut last_log = Instant::now();
        let mut last_hook = Instant::now();
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = out.refresh.notified() => {}
            }
            let now = Instant::now();
            let phase = *src.phase.borrow();
            if phase == Phase::Copy && copy_started.is_none() {
                copy_started = Some(now);
            }
            let p = snapshot(&src, &mut rate, &mut clock, now, started, copy_started);
            out.progress.send_replace(p.clone());
            if now.duration_since(last_log) >= out.log_every {
                last_log = now;
                tracing::info!(phase = phase.name(), rows_copied = p.rows_copied, applied = p.applied, backlog = p.backlog_keys, "{}", status_line(&p));
            }
            if now.duration_since(last_hook) >= out.hooks_every {
                last_hook = now;
                let env = out.env.lock().unwrap_or_else(|e| e.into_inner()).clone().with_progress(&p).with_status(status_line(&p));
                if let Err(e) = out.hooks.fire(HookEvent::Status, &env).await {
                    tracing::warn!(error = %e, "on-status hook failed");
                }
            }
        }
    })
}

/// What the direct way's status reads: no copy, no stream; the step under way.
pub struct DirectSources {
    pub phase: watch::Receiver<Phase>,
    pub step: watch::Receiver<Option<StepOf>>,
    pub throttle: watch::Receiver<Decision>,
}

/// The direct way's status task: the same outputs as [`spawn`] (socket snapshot every
/// second, status line every `--status-interval`, `on-status` hooks every
/// `--hooks-status-interval`), from the step under way and the throttle's decision.
pub fn spawn_direct(src: DirectSources, out: Outputs) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut last_hook = Instant::now();
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = out.refresh.notified() => {}
            }
            let now = Instant::now();
            let decision = src.throttle.borrow().clone();
            let mut p = Progress::new(*src.phase.borrow());
            p.direct_step = *src.step.borrow();
            p.throttle_cause = decision.cause().filter(|_| decision.throttled);
            p.throttle_reason = decision.reason.filter(|_| decision.throttled);
            p.elapsed = now.duration_since(started);
            out.progress.send_replace(p.clone());
            if now.duration_since(last_log) >= out.log_every {
                last_log = now;
                tracing::info!(phase = p.phase.name(), "{}", status_line(&p));
            }
            if now.duration_since(last_hook) >= out.hooks_every {
                last_hook = now;
                let env = out.env.lock().unwrap_or_else(|e| e.into_inner()).clone().with_progress(&p).with_status(status_line(&p));
                if let Err(e) = out.hooks.fire(HookEvent::Status, &env).await {
                    tracing::warn!(error = %e, "on-status hook failed");
                }
            }
        }
    })
}

fn snapshot(
    src: &Sources,
    rate: &mut RateEstimator,
    clock: &mut StreamLagClock,
    now: Instant,
    started: Instant,
    copy_started: Option<Instant>,
) -> Progress {
    let rows = src.copy.rows.load(Ordering::Relaxed);
    rate.record(now, rows);
    let stats = src.apply.borrow().clone();
    let decision = src.throttle.borrow().clone();
    let mut p = Progress::new(*src.phase.borrow());
    p.rows_copied = rows;
    p.rows_estimated = u64::try_from(src.estimated_rows).ok().filter(|n| *n > 0);
    p.copy_rate = rate.rate();
    p.applied = stats.applied_keys;
    p.backlog_keys = stats.backlog_keys as u64;
    p.parked_keys = stats.parked_waiting();
    p.lag = decision.lag;
    let wal_end = src.stream.server_wal_end();
    p.lag_bytes = Some(wal_end.bytes_since(stats.acked));
    p.stream_lag = clock.update(now, wal_end, stats.acked);
    p.slot_retained_wal = decision.retained_wal;
    p.standby_wait = src.standbys.as_ref().and_then(StandbyWait::waiting);
    p.throttle_cause = decision.cause().filter(|_| decision.throttled);
    p.throttle_reason = decision.reason.filter(|_| decision.throttled);
    p.elapsed = now.duration_since(started);
    p.copy_elapsed = copy_started.map(|s| now.duration_since(s)).unwrap_or_default();
    p
}
