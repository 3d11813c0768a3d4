//! The fleet's loop: starts targets as the [`Scheduler`] allows, inside the window and
//! after the interval, collects how each ended, records it in the registry, fires the
//! per-target hook and logs the fleet's progress. A signal stops new starts; the targets
//! running then stop as a `run` does on a signal (each watches the same signals).

use super::config::FleetConfig;
use super::job;
use super::notify;
use super::probe::Probed;
use super::report::{Status, TargetReport};
use super::schedule::{Next, Scheduler};
use super::state;
use super::window::{hhmm, Clock};
use crate::error::Result;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::Client;

pub struct Fleet<'a> {
    pub cfg: Arc<FleetConfig>,
    pub fleet_id: String,
    pub targets: Vec<Arc<Probed>>,
    /// Where the state is written; `None` with a targets file and no registry.
    pub registry: Option<&'a Client>,
    pub clock: Option<Clock>,
}

impl Fleet<'_> {
    /// Runs the targets of `order` (indexes into `targets`); returns every target's report
    /// by index (`None`: never started) and why the fleet stopped, if it did.
    pub async fn run(&self, order: Vec<usize>) -> Result<(Vec<Option<TargetReport>>, Option<String>)> {
        let servers = self.targets.iter().map(|t| t.server.clone()).collect();
        let total = order.len();
        let mut sched = Scheduler::new(self.cfg.limits, servers, order);
        let mut reports: Vec<Option<TargetReport>> = vec![None; self.targets.len()];
        let mut running: JoinSet<(usize, TargetReport)> = JoinSet::new();
        let mut not_before = Instant::now();
        let mut waiting_logged = false;
        let (mut ended, mut failed) = (0usize, 0usize);
        loop {
            if sched.can_start() {
                let wait = self.gate(not_before, &mut waiting_logged).await?;
                if wait.is_zero() {
                    if let Next::Start(i) = sched.decide() {
                        self.start(i, &mut running, &mut sched).await;
                    }
                    continue;
                }
                tokio::select! {
                    Some(joined) = running.join_next(), if !running.is_empty() => {
                        self.ended(joined, &mut sched, &mut reports, &mut ended, &mut failed, total).await;
                        not_before = Instant::now() + self.cfg.interval;
                    }
                    () = tokio::time::sleep(wait) => {}
                    s = crate::signals::shutdown_requested(), if sched.stopped().is_none() => stop_on_signal(&mut sched, s),
                }
                continue;
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some(joined) = running.join_next() => {
                    self.ended(joined, &mut sched, &mut reports, &mut ended, &mut failed, total).await;
                    not_before = Instant::now() + self.cfg.interval;
                }
                s = crate::signals::shutdown_requested(), if sched.stopped().is_none() => stop_on_signal(&mut sched, s),
            }
        }
        Ok((reports, sched.stopped().map(str::to_string)))
    }

    /// How long to wait before a target may start: the interval, then the window.
    async fn gate(&self, not_before: Instant, logged: &mut bool) -> Result<Duration> {
        let interval = not_before.saturating_duration_since(Instant::now());
        if !interval.is_zero() {
            return Ok(interval);
        }
        let (Some(window), Some(clock)) = (&self.cfg.window, &self.clock) else { return Ok(Duration::ZERO) };
        let now = clock.now().await?;
        let until = window.until_open(now);
        if until.is_zero() {
            if *logged {
                tracing::info!(window = %window, "the maintenance window is open: starting targets again");
            }
            *logged = false;
            return Ok(Duration::ZERO);
        }
        if !*logged {
            tracing::info!(
                window = %window,
                timezone = %self.cfg.timezone,
                now = %hhmm(now),
                "outside the maintenance window: no target starts until {} {} (in {}m); running targets finish",
                hhmm(window.start),
                self.cfg.timezone,
                until.as_secs().div_ceil(60)
            );
            *logged = true;
        }
        Ok(clock.recheck(until))
    }

    async fn start(&self, i: usize, running: &mut JoinSet<(usize, TargetReport)>, sched: &mut Scheduler) {
        let t = self.targets[i].clone();
        if let Some(client) = self.registry {
            if let Err(e) = state::target_started(client, &self.fleet_id, &t.target.name).await {
                tracing::error!(error = %e.chain(), "cannot record the fleet's state in the registry; no more targets start");
                sched.stop(format!("the registry could not be written: {e}"));
            }
        }
        let cfg = self.cfg.clone();
        running.spawn(async move { (i, job::run(&cfg, &t).await) });
    }

    async fn ended(
        &self,
        joined: std::result::Result<(usize, TargetReport), tokio::task::JoinError>,
        sched: &mut Scheduler,
        reports: &mut [Option<TargetReport>],
        ended: &mut usize,
        failed: &mut usize,
        total: usize,
    ) {
        let (i, report) = match joined {
            Ok(r) => r,
            Err(e) => {
                // A target's task panicked: the fleet cannot tell which; stop starting others.
                tracing::error!(error = %e, "a target's task ended abnormally; no more targets start");
                sched.stop(format!("a target's task ended abnormally: {e}"));
                return;
            }
        };
        let ok = report.status != Status::Failed;
        sched.ended(i, ok);
        *ended += 1;
        *failed += usize::from(!ok);
        if let Some(client) = self.registry {
            if let Err(e) = state::target_ended(client, &self.fleet_id, &report).await {
                tracing::error!(error = %e.chain(), "cannot record the fleet's state in the registry; no more targets start");
                sched.stop(format!("the registry could not be written: {e}"));
            }
        }
        notify::target_hook(self.cfg.hooks.as_ref(), &self.fleet_id, &report).await;
        tracing::info!(
            fleet = %self.fleet_id,
            done = *ended,
            of = total,
            failed = *failed,
            running = sched.running(),
            stopped = sched.stopped().unwrap_or(""),
            "fleet progress"
        );
        reports[i] = Some(report);
    }
}

fn stop_on_signal(sched: &mut Scheduler, s: Result<crate::signals::Shutdown>) {
    let why = match s {
        Ok(s) => format!("stopped by {}", s.signal),
        Err(e) => format!("signal handling failed: {e}"),
    };
    tracing::warn!(reason = %why, "no more targets start; the running ones stop");
    sched.stop(why);
}
