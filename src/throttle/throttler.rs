//! The throttler task: every [`TICK`], collect, decide, publish; write the heartbeat
//! alongside.
//!
//! Invariants: a decision is published on every change and a change of state is logged
//! once (`throttled: <reason>` / `throttle lifted`), not every tick. Tunables are read
//! afresh every tick, so a socket change applies at the next one. On a critical limit the
//! decision carrying the abort is published first (the copy gate turns to `Abort`), then
//! the task ends with [`ErrorKind::Aborted`]. With `--critical-load-hibernate-seconds`, a
//! critical load hibernates instead: the copy is held and the server is not queried
//! (except for this run's slot), and afterwards the load is checked again, hibernating
//! again while it stays critical, as gh-ost does.

use super::collect::Collector;
use super::decide::{decide, Cause, Decision, Limits};
use super::heartbeat;
use super::human;
use super::inputs::Override;
use crate::config::{ThrottleConfig, Tunables};
use crate::conn::ConnInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::sql::QualifiedName;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the inputs are collected and the decision made. The checks are a handful of
/// one-row queries; a copy chunk waits at most this long after a reason clears.
pub const TICK: Duration = Duration::from_millis(200);

/// What the throttler needs, all of it owned.
pub struct ThrottleJob {
    /// The primary.
    pub conn: ConnInfo,
    /// The changelog table: the heartbeat is written there and read back on the standbys.
    /// None before it exists (the data checks): no heartbeat is written, and the standbys'
    /// lag is read from `pg_stat_replication` even with `--throttle-control-replicas`.
    pub changelog: Option<QualifiedName>,
    /// This run's slot, whose retained WAL is limited (and excluded from the other slots'
    /// lag).
    pub slot: String,
    pub cfg: ThrottleConfig,
    pub tunables: watch::Receiver<Tunables>,
    /// `throttle` / `no-throttle` from the control socket.
    pub overrides: watch::Receiver<Override>,
    /// `true` while the cut-over holds its locks.
    pub cut_over_locked: watch::Receiver<bool>,
}

pub struct ThrottleHandle {
    /// Changes with the first decision, whatever it is, then with every change.
    pub decision: watch::Receiver<Decision>,
    /// Ends with `Err(ErrorKind::Aborted)` at a critical limit, `Ok` when nobody listens
    /// to the decision any more; otherwise runs until aborted.
    pub task: JoinHandle<Result<()>>,
}

impl ThrottleHandle {
    /// Stops the throttler and its heartbeat.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

pub struct Throttler;

impl Throttler {
    pub fn spawn(job: ThrottleJob) -> ThrottleHandle {
        let (tx, decision) = watch::channel(Decision::open());
        let task = tokio::spawn(run(job, tx));
        ThrottleHandle { decision, task }
    }
}

async fn run(job: ThrottleJob, tx: watch::Sender<Decision>) -> Result<()> {
    let Some(changelog) = job.changelog.clone() else { return decide_loop(job, tx).await };
    let beats = heartbeat::run(job.conn.clone(), changelog, job.cfg.heartbeat_interval);
    tokio::select! {
        r = decide_loop(job, tx) => r,
        never = beats => match never {},
    }
}

async fn decide_loop(mut job: ThrottleJob, tx: watch::Sender<Decision>) -> Result<()> {
    let flag_files = job.cfg.flag_file.iter().chain(&job.cfg.additional_flag_file).cloned().collect();
    let mut collector = Collector::new(&job.conn, job.changelog.clone(), job.slot.clone(), flag_files);
    let mut states = StateLog::default();
    let mut hibernation: Option<Hibernation> = None;
    let mut first = true;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.is_closed() {
            return Ok(());
        }
        let tunables = job.tunables.borrow_and_update().clone();
        let limits = Limits::new(&tunables, &job.cfg);
        if hibernation.as_ref().is_some_and(|h| h.until <= Instant::now()) {
            hibernation = None;
            tracing::info!("hibernation over: checking the load again");
        }
        let forced = *job.overrides.borrow_and_update();
        let locked = *job.cut_over_locked.borrow_and_update();
        let hibernating = hibernation.as_ref().map(Hibernation::describe);
        let inputs = collector.collect(&tunables, forced, locked, hibernating).await;
        let mut decision = decide(&inputs, &limits);
        decision.retained_wal = inputs.retained_wal.as_ref().ok().copied();
        if let (true, Some(pause)) = (decision.hibernate, limits.critical_load_hibernate) {
            hibernation = Some(Hibernation::start(pause, &decision));
        }
        if let Some(line) = states.change(&decision) {
            tracing::info!(reason = decision.reason.as_deref().unwrap_or(""), "{line}");
        }
        let abort = decision.abort.clone();
        if first {
            // The first decision is always announced, so a reader can wait for it.
            first = false;
            tx.send_replace(decision);
        } else {
            publish(&tx, decision);
        }
        if let Some(why) = abort {
            tracing::error!(reason = %why, "critical limit reached: aborting the run");
            return Err(Error::new(ErrorKind::Aborted, why));
        }
    }
}

/// Publishes only a changed decision, so readers wake up for news only.
fn publish(tx: &watch::Sender<Decision>, decision: Decision) {
    tx.send_if_modified(|current| {
        let changed = *current != decision;
        if changed {
            *current = decision;
        }
        changed
    });
}

struct Hibernation {
    until: Instant,
    after: String,
}

impl Hibernation {
    fn start(pause: Duration, decision: &Decision) -> Hibernation {
        let after = decision.reason.clone().unwrap_or_else(|| "critical-load".into());
        tracing::error!(reason = %after, seconds = pause.as_secs_f64(), "critical load: hibernating");
        Hibernation { until: Instant::now() + pause, after }
    }

    fn describe(&self) -> String {
        let left = self.until.saturating_duration_since(Instant::now());
        format!("hibernating after {} ({} left)", self.after, human::duration(left))
    }
}

/// Remembers the state last logged, so each change is logged once. A new reason of the
/// same kind (another lag figure, another replica) is not a change worth a line.
#[derive(Default)]
struct StateLog {
    last: Option<Cause>,
}

impl StateLog {
    /// The line to log for `decision`, when its state differs from the last one logged.
    fn change(&mut self, decision: &Decision) -> Option<String> {
        let now = decision.cause();
        if now == self.last {
            return None;
        }
        self.last = now;
        Some(match &decision.reason {
            Some(reason) => format!("throttled: {reason}"),
            None => "throttle lifted".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::decide::Reason;

    fn throttled(cause: Cause, text: &str) -> Decision {
        Decision {
            throttled: true,
            reason: Some(text.into()),
            reasons: vec![Reason { cause, text: text.into() }],
            ..Decision::open()
        }
    }

    #[test]
    fn each_change_of_state_is_logged_once() {
        let mut log = StateLog::default();
        let steps = [
            (Decision::open(), None),
            (throttled(Cause::Lag, "lag 2.3s > 1.5s on r1"), Some("throttled: lag 2.3s > 1.5s on r1")),
            (throttled(Cause::Lag, "lag 2.5s > 1.5s on r1"), None),
            (throttled(Cause::User, "commanded by user"), Some("throttled: commanded by user")),
            (Decision::open(), Some("throttle lifted")),
            (Decision { lag: Some(Duration::from_millis(3)), ..Decision::open() }, None),
        ];
        for (i, (decision, want)) in steps.into_iter().enumerate() {
            assert_eq!(log.change(&decision).as_deref(), want, "step {i}");
        }
    }

    #[tokio::test]
    async fn only_changed_decisions_are_published() {
        let (tx, mut rx) = watch::channel(Decision::open());
        publish(&tx, Decision::open());
        assert!(!rx.has_changed().unwrap());
        publish(&tx, throttled(Cause::User, "commanded by user"));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        publish(&tx, throttled(Cause::User, "commanded by user"));
        assert!(!rx.has_changed().unwrap());
    }
}
