//! The fleet's loop: starts targets as the [`Scheduler`] allows, unless paused, inside the
//! window and after the interval; collects how each ended, records it in the registry,
//! fires the per-target hook and publishes the fleet's progress. A signal (or `panic`)
//! stops new starts; the targets running then stop as a `run` does on a signal (each
//! watches the same signals).

use super::config::FleetConfig;
use super::job;
use super::notify;
use super::probe::Probed;
use super::progress::FleetProgress;
use super::report::{Status, TargetReport};
use super::schedule::{Next, Scheduler};
use super::state;
use super::window::{hhmm, Clock};
use crate::error::Result;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
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
    pub progress: watch::Sender<FleetProgress>,
    /// `pause` / `resume` from the control socket.
    pub paused: watch::Receiver<bool>,
}

/// Whether a target may start now.
enum Gate {
    Open,
    /// Not before this long (the interval, or the next look at the clock).
    Wait(Duration),
    /// Until `resume` (looking at the window again after this long).
    Paused(Duration),
}

type Joined = std::result::Result<(usize, TargetReport), tokio::task::JoinError>;

impl Fleet<'_> {
    /// Runs the targets of `order` (indexes into `targets`); returns every target's report
    /// by index (`None`: never started) and why the fleet stopped, if it did.
    pub async fn run(&mut self, order: Vec<usize>) -> (Vec<Option<TargetReport>>, Option<String>) {
        let servers = self.targets.iter().map(|t| t.server.clone()).collect();
        self.progress.send_modify(|p| p.total = order.len());
        let mut sched = Scheduler::new(self.cfg.limits, servers, order);
        let mut reports: Vec<Option<TargetReport>> = vec![None; self.targets.len()];
        let mut running: JoinSet<(usize, TargetReport)> = JoinSet::new();
        let mut not_before = Instant::now();
        loop {
            if sched.can_start() {
                let gate = match self.gate(not_before).await {
                    Ok(gate) => gate,
                    Err(e) => {
                        // Never return with targets running: dropping their tasks would skip
                        // their cleanup (a slot left behind). Stop starting, let them end.
                        tracing::error!(error = %e.chain(), "cannot tell whether a target may start; no more targets start");
                        self.stop(&mut sched, format!("cannot read the time of day for --window: {e}"));
                        continue;
                    }
                };
                if let Gate::Open = gate {
                    if let Next::Start(i) = sched.decide() {
                        self.start(i, &mut running, &mut sched).await;
                    }
                    continue;
                }
                let (wait, paused) = match gate {
                    Gate::Wait(d) => (d, false),
                    Gate::Paused(d) => (d, true),
                    Gate::Open => (Duration::ZERO, false),
                };
                let mut resumed = self.paused.clone();
                tokio::select! {
                    Some(joined) = running.join_next(), if !running.is_empty() => {
                        self.ended(joined, &mut sched, &mut reports).await;
                        not_before = Instant::now() + self.cfg.interval;
                    }
                    () = tokio::time::sleep(wait) => {}
                    _ = resumed.wait_for(|p| !*p), if paused => {}
                    s = crate::signals::shutdown_requested(), if sched.stopped().is_none() => self.stop_on_signal(&mut sched, s),
                }
                continue;
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some(joined) = running.join_next() => {
                    self.ended(joined, &mut sched, &mut reports).await;
                    not_before = Instant::now() + self.cfg.interval;
                }
                s = crate::signals::shutdown_requested(), if sched.stopped().is_none() => self.stop_on_signal(&mut sched, s),
            }
        }
        (reports, sched.stopped().map(str::to_string))
    }

    /// Whether a target may start now: not while paused, not before the interval has
    /// passed, not outside the window. The window is looked at even while paused, so that
    /// the progress (and `status`, and the metrics) say whether it is open.
    async fn gate(&self, not_before: Instant) -> Result<Gate> {
        let paused = *self.paused.borrow();
        self.progress.send_if_modified(|p| std::mem::replace(&mut p.paused, paused) != paused);
        let until_window = self.until_window().await?;
        let recheck = |until: Duration| self.clock.as_ref().map_or(until, |c| c.recheck(until));
        if paused {
            // Woken by `resume`; meanwhile the window is looked at again now and then.
            return Ok(Gate::Paused(recheck(Duration::from_secs(3600))));
        }
        let interval = not_before.saturating_duration_since(Instant::now());
        if !interval.is_zero() {
            return Ok(Gate::Wait(interval));
        }
        match until_window.is_zero() {
            true => Ok(Gate::Open),
            false => Ok(Gate::Wait(recheck(until_window))),
        }
    }

    /// How long until the window opens (zero: open, or no window); logs and publishes the
    /// wait when it starts and ends.
    async fn until_window(&self) -> Result<Duration> {
        let (Some(window), Some(clock)) = (&self.cfg.window, &self.clock) else { return Ok(Duration::ZERO) };
        let now = clock.now().await?;
        let until = window.until_open(now);
        if until.is_zero() {
            if self.progress.borrow().waiting.is_some() {
                tracing::info!(window = %window, "the maintenance window is open: starting targets again");
                self.progress.send_modify(|p| p.waiting = None);
            }
            return Ok(Duration::ZERO);
        }
        if self.progress.borrow().waiting.is_none() {
            let resumes = format!("{} {}", hhmm(window.start), self.cfg.timezone);
            tracing::info!(
                window = %window,
                timezone = %self.cfg.timezone,
                now = %hhmm(now),
                "outside the maintenance window: no target starts until {resumes} (in {}m); running targets finish",
                until.as_secs().div_ceil(60)
            );
            self.progress.send_modify(|p| p.waiting = Some(format!("outside the window {window}; targets start again at {resumes}")));
        }
        Ok(until)
    }

    async fn start(&self, i: usize, running: &mut JoinSet<(usize, TargetReport)>, sched: &mut Scheduler) {
        let t = self.targets[i].clone();
        if let Some(client) = self.registry {
            if let Err(e) = state::target_started(client, &self.fleet_id, &t.target.name).await {
                tracing::error!(error = %e.chain(), "cannot record the fleet's state in the registry; no more targets start");
                self.stop(sched, format!("the registry could not be written: {e}"));
            }
        }
        self.progress.send_modify(|p| p.running.push(t.target.name.clone()));
        let cfg = self.cfg.clone();
        running.spawn(async move { (i, job::run(&cfg, &t).await) });
    }

    async fn ended(&self, joined: Joined, sched: &mut Scheduler, reports: &mut [Option<TargetReport>]) {
        let (i, report) = match joined {
            Ok(r) => r,
            Err(e) => {
                // A target's task panicked: the fleet cannot tell which; stop starting others.
                tracing::error!(error = %e, "a target's task ended abnormally; no more targets start");
                self.stop(sched, format!("a target's task ended abnormally: {e}"));
                return;
            }
        };
        sched.ended(i, report.status != Status::Failed);
        if let Some(client) = self.registry {
            if let Err(e) = state::target_ended(client, &self.fleet_id, &report).await {
                tracing::error!(error = %e.chain(), "cannot record the fleet's state in the registry; no more targets start");
                self.stop(sched, format!("the registry could not be written: {e}"));
            }
        }
        let stopped = sched.stopped().map(str::to_string);
        self.progress.send_modify(|p| {
            p.running.retain(|n| *n != report.name);
            match report.status {
                Status::Failed => p.failed += 1,
                Status::Skipped => p.skipped += 1,
                _ => p.succeeded += 1,
            }
            p.stopped = stopped;
        });
        notify::target_hook(self.cfg.hooks.as_ref(), &self.fleet_id, &report).await;
        tracing::info!("{}", self.progress.borrow().line());
        reports[i] = Some(report);
    }

    fn stop(&self, sched: &mut Scheduler, why: String) {
        sched.stop(why);
        let stopped = sched.stopped().map(str::to_string);
        self.progress.send_modify(|p| p.stopped = stopped);
    }

    fn stop_on_signal(&self, sched: &mut Scheduler, s: Result<crate::signals::Shutdown>) {
        let why = match s {
            Ok(s) => format!("{} received", s.signal),
            Err(e) => format!("signal handling failed: {e}"),
        };
        tracing::warn!(reason = %why, "no more targets start; the running ones stop");
        self.stop(sched, why);
    }
}
