//! Throttling: slow the copy down while replicas lag, the server is busy, the DBA asks,
//! or this run's slot holds too much WAL; stop the run at a critical limit.
//!
//! Split by role: the collectors (`collect`, `lag`) read the servers and the flag
//! files into [`Inputs`]; [`decide`] is a pure function of those inputs and the [`Limits`];
//! the [`Throttler`] task runs both every [`TICK`], publishes the [`Decision`] on a `watch`
//! and logs each change of state once. A [`heartbeat`] row written on the primary and read
//! back on the standbys measures their replay lag.
//!
//! Invariants: only the copy is throttled (through [`gate_state`]); the applier never is,
//! or the slot's backlog would grow while throttled. Nothing throttles or aborts while the
//! cut-over holds its locks. What cannot be measured throttles (fail closed) and the reason
//! says so; only measured values at a critical limit abort.

mod bounded;
mod collect;
mod decide;
pub mod heartbeat;
pub mod human;
mod inputs;
mod lag;
mod throttler;

pub use collect::{query_value, throttle_query_sql, WalRate};
pub use decide::{decide, Cause, Decision, Limits, Reason};
pub use inputs::{Inputs, Load, Override, Reading, ReplicaLag};
pub use throttler::{ThrottleHandle, ThrottleJob, Throttler, TICK};

use crate::copy::GateState;
use std::time::Duration;
use tokio::sync::watch;

/// What the copy gate should say for this decision: abort first, then throttle.
pub fn gate_state(decision: &Decision) -> GateState {
    if let Some(why) = &decision.abort {
        GateState::Abort(why.clone())
    } else if decision.throttled {
        GateState::Throttled(decision.reason.clone().unwrap_or_else(|| "throttled".into()))
    } else {
        GateState::Open
    }
}

/// Keeps the copy gate in step with the decisions until the throttler stops. The gate is
/// only written when its state changes, so copy workers waiting on it do not wake up for
/// every new lag reading.
pub async fn forward_gate(mut decisions: watch::Receiver<Decision>, gate: watch::Sender<GateState>) {
    loop {
        let next = gate_state(&decisions.borrow_and_update());
        gate.send_if_modified(|g| {
            let changed = *g != next;
            *g = next;
            changed
        });
        if decisions.changed().await.is_err() {
            return;
        }
    }
}

/// `--nice-ratio`: how long to rest after a chunk that took `took`. A ratio that is not a
/// finite positive number rests not at all; the rest is capped at an hour so a wild ratio
/// cannot stall the run without a trace.
pub fn nice_pause(took: Duration, ratio: f64) -> Duration {
    if !(ratio.is_finite() && ratio > 0.0) {
        return Duration::ZERO;
    }
    let secs = (took.as_secs_f64() * ratio).min(3600.0);
    Duration::from_secs_f64(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttled(reason: &str) -> Decision {
        Decision { throttled: true, reason: Some(reason.into()), ..Decision::open() }
    }

    #[test]
    fn gate_follows_the_decision() {
        assert_eq!(gate_state(&Decision::open()), GateState::Open);
        assert_eq!(
            gate_state(&throttled("lag 2.3s > 1.5s on r1")),
            GateState::Throttled("lag 2.3s > 1.5s on r1".into())
        );
        let abort = Decision { abort: Some("critical-load active_sessions=9 >= 5".into()), ..throttled("x") };
        assert_eq!(gate_state(&abort), GateState::Abort("critical-load active_sessions=9 >= 5".into()));
        // A lag reading alone does not hold the copy.
        assert_eq!(gate_state(&Decision { lag: Some(Duration::from_secs(9)), ..Decision::open() }), GateState::Open);
    }

    #[test]
    fn nice_pause_is_a_fraction_of_the_chunk() {
        let s = Duration::from_secs;
        assert_eq!(nice_pause(s(2), 0.0), Duration::ZERO);
        assert_eq!(nice_pause(s(2), 0.5), s(1));
        assert_eq!(nice_pause(s(2), 1.5), s(3));
        assert_eq!(nice_pause(s(2), f64::NAN), Duration::ZERO);
        assert_eq!(nice_pause(s(2), -1.0), Duration::ZERO);
        assert_eq!(nice_pause(s(2), f64::INFINITY), Duration::ZERO);
        assert_eq!(nice_pause(s(10), 1e9), s(3600));
    }

    #[tokio::test]
    async fn forwarded_gate_changes_only_with_the_state() {
        let (dtx, drx) = watch::channel(Decision::open());
        let (gtx, mut grx) = watch::channel(GateState::Open);
        let task = tokio::spawn(forward_gate(drx, gtx));
        dtx.send_replace(throttled("commanded by user"));
        grx.changed().await.unwrap();
        assert_eq!(*grx.borrow_and_update(), GateState::Throttled("commanded by user".into()));
        // New lag readings alone leave the gate as it is.
        dtx.send_replace(Decision { lag: Some(Duration::from_millis(5)), ..throttled("commanded by user") });
        dtx.send_replace(Decision::open());
        grx.changed().await.unwrap();
        assert_eq!(*grx.borrow_and_update(), GateState::Open);
        drop(dtx);
        task.await.unwrap();
        assert!(grx.changed().await.is_err(), "the gate closes with the throttler");
    }
}
