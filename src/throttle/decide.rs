//! The throttle decision: a pure function of the collected [`Inputs`] and the [`Limits`].
//!
//! Every check that applies contributes a [`Reason`]; the reasons are listed in a fixed
//! priority order and the first one is *the* reason shown in the status line and the log.
//! The order, highest first:
//!
//! 1. critical retained WAL (abort: the disk must never fill),
//! 2. critical load (abort, or hibernate when `--critical-load-hibernate-seconds` is set),
//! 3. hibernating (after a critical load),
//! 4. commanded by user (`throttle` on the socket),
//! 5. throttle flag files, in the order given,
//! 6. retained WAL of this run's slot,
//! 7. replica lag, replicas in the order given,
//! 8. max-load, metrics in the order given,
//! 9. throttle-query.
//!
//! Invariants: while the cut-over holds its locks nothing throttles or aborts (a throttle
//! there would stall every session queued on the table). Unmeasured values throttle (fail
//! closed) but never abort: an abort needs a measured value at or over a critical limit.

use super::human;
use super::inputs::{Inputs, Override, ReplicaLag};
use crate::config::{LoadLimits, LoadMetric, ThrottleConfig, Tunables};
use std::time::Duration;

/// The limits in force for one decision: the hot tunables of the moment and the fixed
/// throttle configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// `None`: lag is not checked.
    pub max_lag: Option<Duration>,
    pub max_load: LoadLimits,
    pub critical_load: LoadLimits,
    /// `None`: a critical load aborts.
    pub critical_load_hibernate: Option<Duration>,
    pub max_retained_wal: Option<u64>,
    pub critical_retained_wal: Option<u64>,
}

impl Limits {
    pub fn new(tunables: &Tunables, cfg: &ThrottleConfig) -> Limits {
        Limits {
            max_lag: tunables.max_lag,
            max_load: tunables.max_load.clone(),
            critical_load: tunables.critical_load.clone(),
            critical_load_hibernate: cfg.critical_load_hibernate,
            max_retained_wal: cfg.max_retained_wal,
            critical_retained_wal: cfg.critical_retained_wal,
        }
    }
}

/// Which check a reason comes from, in priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    CriticalRetainedWal,
    CriticalLoad,
    Hibernating,
    User,
    FlagFile,
    RetainedWal,
    Lag,
    MaxLoad,
    ThrottleQuery,
}

impl Cause {
    /// Every cause, in priority order.
    pub const ALL: [Cause; 9] = [
        Cause::CriticalRetainedWal,
        Cause::CriticalLoad,
        Cause::Hibernating,
        Cause::User,
        Cause::FlagFile,
        Cause::RetainedWal,
        Cause::Lag,
        Cause::MaxLoad,
        Cause::ThrottleQuery,
    ];

    /// A stable machine name (metrics labels): lower case, `-` between words.
    pub fn name(self) -> &'static str {
        match self {
            Cause::CriticalRetainedWal => "critical-retained-wal",
            Cause::CriticalLoad => "critical-load",
            Cause::Hibernating => "hibernating",
            Cause::User => "user",
            Cause::FlagFile => "flag-file",
            Cause::RetainedWal => "retained-wal",
            Cause::Lag => "lag",
            Cause::MaxLoad => "max-load",
            Cause::ThrottleQuery => "throttle-query",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub cause: Cause,
    /// gh-ost-like and readable: `lag 2.3s > 1.5s on replica1`.
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Hold the copy before its next chunk.
    pub throttled: bool,
    /// The first of `reasons`: what the status line, the socket and the log show.
    pub reason: Option<String>,
    /// Every reason that applies, highest priority first.
    pub reasons: Vec<Reason>,
    /// A critical limit was reached: the run must stop, with this reason.
    pub abort: Option<String>,
    /// A critical load was reached and hibernation is configured: pause (copy and
    /// throttler queries) for `Limits::critical_load_hibernate`, then check again.
    pub hibernate: bool,
    /// The largest replica lag measured, for the status line and hooks.
    pub lag: Option<Duration>,
    /// WAL retained by this run's slot at the last measurement, in bytes, for the metrics;
    /// `None` when it could not be measured. Set by the throttler, not by [`decide`].
    pub retained_wal: Option<u64>,
}

impl Decision {
    /// Nothing holds the copy.
    pub fn open() -> Decision {
        Decision::default()
    }

    /// The first reason's cause.
    pub fn cause(&self) -> Option<Cause> {
        self.reasons.first().map(|r| r.cause)
    }
}

pub fn decide(inputs: &Inputs, limits: &Limits) -> Decision {
    let lag = largest_lag(inputs);
    if inputs.cut_over_locked {
        return Decision { lag, ..Decision::open() };
    }
    let mut reasons = Vec::new();
    reasons.extend(critical_retained_wal(inputs, limits));
    if inputs.hibernating.is_none() {
        reasons.extend(critical_load(inputs, limits));
    }
    if let Some(why) = &inputs.hibernating {
        reasons.push(reason(Cause::Hibernating, why.clone()));
    }
    if inputs.forced == Override::ForceThrottle {
        reasons.push(reason(Cause::User, "commanded by user".into()));
    }
    reasons.extend(
        inputs.flag_files.iter().map(|f| reason(Cause::FlagFile, format!("throttle flag file {} exists", f.display()))),
    );
    reasons.extend(retained_wal(inputs, limits));
    if inputs.hibernating.is_none() {
        reasons.extend(replica_lag(inputs, limits));
        reasons.extend(max_load(inputs, limits));
        reasons.extend(throttle_query(inputs));
    }
    finish(reasons, limits, lag)
}

/// Turns the reasons into the decision: what aborts, what hibernates, what throttles.
fn finish(reasons: Vec<Reason>, limits: &Limits, lag: Option<Duration>) -> Decision {
    let first = |cause| reasons.iter().find(|r| r.cause == cause).map(|r| r.text.clone());
    let critical_wal = first(Cause::CriticalRetainedWal);
    let critical_load = first(Cause::CriticalLoad);
    // Hibernation replaces the abort for load only; retained WAL keeps growing while
    // hibernating, so it aborts regardless.
    let hibernate = critical_wal.is_none() && critical_load.is_some() && limits.critical_load_hibernate.is_some();
    let abort = critical_wal.or(if hibernate { None } else { critical_load });
    Decision {
        throttled: !reasons.is_empty(),
        reason: reasons.first().map(|r| r.text.clone()),
        reasons,
        abort,
        hibernate,
        lag,
        retained_wal: None,
    }
}

fn reason(cause: Cause, text: String) -> Reason {
    Reason { cause, text }
}

fn largest_lag(inputs: &Inputs) -> Option<Duration> {
    inputs.lags.iter().filter_map(|r| r.lag.as_ref().ok()).max().copied()
}

fn critical_retained_wal(inputs: &Inputs, limits: &Limits) -> Option<Reason> {
    let critical = limits.critical_retained_wal?;
    let held = *inputs.retained_wal.as_ref().ok()?;
    (held >= critical).then(|| {
        reason(
            Cause::CriticalRetainedWal,
            format!("critical retained WAL {} >= {}", human::bytes(held), human::bytes(critical)),
        )
    })
}

fn retained_wal(inputs: &Inputs, limits: &Limits) -> Option<Reason> {
    let max = limits.max_retained_wal?;
    match &inputs.retained_wal {
        Ok(held) if *held > max => {
            Some(reason(Cause::RetainedWal, format!("retained WAL {} > {}", human::bytes(*held), human::bytes(max))))
        }
        Ok(_) => None,
        Err(why) => Some(reason(Cause::RetainedWal, format!("retained WAL cannot be measured: {why}"))),
    }
}

fn replica_lag(inputs: &Inputs, limits: &Limits) -> Vec<Reason> {
    let Some(max) = limits.max_lag else { return Vec::new() };
    let over = |r: &ReplicaLag| match &r.lag {
        Ok(lag) if *lag > max => {
            Some(format!("lag {} > {} on {}", human::duration(*lag), human::duration(max), r.name))
        }
        Ok(_) => None,
        Err(why) => Some(format!("lag on {} cannot be measured: {why}", r.name)),
    };
    inputs.lags.iter().filter_map(over).map(|text| reason(Cause::Lag, text)).collect()
}

fn max_load(inputs: &Inputs, limits: &Limits) -> Vec<Reason> {
    let check = |limit: &crate::config::LoadLimit| match inputs.load.get(limit.metric) {
        Ok(value) if limit.is_reached(*value) => Some(format!(
            "max-load {}={} >= {}",
            limit.metric,
            metric_value(limit.metric, *value),
            metric_value(limit.metric, limit.threshold)
        )),
        Ok(_) => None,
        Err(why) => Some(format!("max-load {} cannot be measured: {why}", limit.metric)),
    };
    limits.max_load.iter().filter_map(check).map(|text| reason(Cause::MaxLoad, text)).collect()
}

/// Only measured values count: an abort on a metric we failed to read would stop a healthy
/// run. The first limit reached, in the order given, is reported.
fn critical_load(inputs: &Inputs, limits: &Limits) -> Option<Reason> {
    limits.critical_load.iter().find_map(|limit| {
        let value = *inputs.load.get(limit.metric).as_ref().ok()?;
        limit.is_reached(value).then(|| {
            reason(
                Cause::CriticalLoad,
                format!(
                    "critical-load {}={} >= {}",
                    limit.metric,
                    metric_value(limit.metric, value),
                    metric_value(limit.metric, limit.threshold)
                ),
            )
        })
    })
}

fn throttle_query(inputs: &Inputs) -> Option<Reason> {
    let text = match inputs.throttle_query.as_ref()? {
        Ok(n) if *n > 0.0 => format!("throttle-query returned {n}"),
        Ok(_) => return None,
        Err(why) => format!("throttle-query failed: {why}"),
    };
    Some(reason(Cause::ThrottleQuery, text))
}

fn metric_value(metric: LoadMetric, value: u64) -> String {
    match metric {
        LoadMetric::ReplicationSlotLagBytes => human::bytes(value),
        LoadMetric::WalBytesPerSec => format!("{}/s", human::bytes(value)),
        LoadMetric::ActiveSessions | LoadMetric::WaitingSessions => value.to_string(),
    }
}

#[cfg(test)]
mod tests;
