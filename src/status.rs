//! Progress: a snapshot of the run, the ETA, and the one-line status in gh-ost's shape.
//!
//! Everything here is pure: the runner fills a [`Progress`] from its counters and prints
//! [`status_line`] every `--status-interval`; the socket's `sup` and the status hooks read
//! the same snapshot. The copy rate comes from a [`RateEstimator`] fed `(instant, rows)`
//! samples, so tests drive it with synthetic instants and never sleep.
//!
//! Rules the line follows: percentages are truncated, not rounded, so `100.0%` means done;
//! once the copy has finished the total shown is the rows actually copied (the estimate
//! comes from statistics and is rarely exact); the ETA is `due` once nothing is left to
//! copy and `N/A` whenever it cannot be computed honestly (no estimate, no rate yet, a
//! throttled copy making no progress).

use crate::lsn::Lsn;
use crate::phase::Phase;
use crate::throttle::Cause;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// Rows inserted into the ghost by the copy so far.
    pub rows_copied: u64,
    /// Rows expected to be copied; `None` when the statistics do not know (`reltuples < 0`).
    pub rows_estimated: Option<u64>,
    /// Copy rate over a sliding window, rows per second ([`RateEstimator::rate`]).
    pub copy_rate: Option<f64>,
    /// Changes applied from the stream.
    pub applied: u64,
    /// Changed keys received but not yet flushed to the ghost.
    pub backlog_keys: u64,
    /// Changed keys parked in the changelog until the ghost's key index exists (the copy
    /// writes a ghost without indexes), not written yet.
    pub parked_keys: u64,
    /// How far the applied position trails the stream (commit time of the last applied change).
    pub lag: Option<Duration>,
    /// How far the applied position trails the server's WAL, in bytes.
    pub lag_bytes: Option<u64>,
    /// Why the copy is throttled, in the throttler's words; `None` when it is not.
    pub throttle_reason: Option<String>,
    /// Which check that reason comes from (for machines); `None` when not throttled.
    pub throttle_cause: Option<Cause>,
    /// How long ago the server had written the WAL the apply has not yet acknowledged
    /// ([`StreamLagClock`]); `None` before the stream has said where the server's WAL ends.
    pub stream_lag: Option<Duration>,
    /// WAL retained by this run's slot at the throttler's last measurement, in bytes (in the
    /// revert window: by the reverse slot).
    pub slot_retained_wal: Option<u64>,
    /// In the revert window: the old table's size, kept for the window, in bytes.
    pub old_table_bytes: Option<u64>,
    /// How long the flush under way has waited for the standbys of a failover slot to have
    /// it; `None` when none waits.
    pub standby_wait: Option<Duration>,
    /// Since the run started.
    pub elapsed: Duration,
    /// Since the copy started (zero before it).
    pub copy_elapsed: Duration,
    /// The direct way: the step under way (or the last one, once all are done).
    pub direct_step: Option<StepOf>,
}

/// Step `number` (from 1) of `of`, of the direct way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOf {
    pub number: usize,
    pub of: usize,
}

/// When the copy will be done.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Eta {
    /// Cannot be told: no estimate, no rate, no progress, or not copying yet.
    Unknown,
    /// Nothing left to copy.
    Due,
    Remaining(Duration),
}

impl fmt::Display for Eta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Eta::Unknown => f.write_str("N/A"),
            Eta::Due => f.write_str("due"),
            Eta::Remaining(d) => f.write_str(&format_duration(*d)),
        }
    }
}

impl Progress {
    /// A snapshot with nothing counted yet.
    pub fn new(phase: Phase) -> Progress {
        Progress {
            phase,
            rows_copied: 0,
            rows_estimated: None,
            copy_rate: None,
            applied: 0,
            backlog_keys: 0,
            parked_keys: 0,
            lag: None,
            lag_bytes: None,
            throttle_reason: None,
            throttle_cause: None,
            stream_lag: None,
            slot_retained_wal: None,
            old_table_bytes: None,
            standby_wait: None,
            elapsed: Duration::ZERO,
            copy_elapsed: Duration::ZERO,
            direct_step: None,
        }
    }

    /// The total to show: the rows copied once the copy is over, otherwise the estimate,
    /// raised to the rows copied when the statistics were low.
    pub fn rows_total(&self) -> Option<u64> {
        if self.phase.copy_is_complete() {
            return Some(self.rows_copied);
        }
        self.rows_estimated.map(|est| est.max(self.rows_copied))
    }

    /// Percent copied, truncated to one decimal so that 100.0 only shows when done.
    pub fn percent(&self) -> Option<f64> {
        let total = self.rows_total()?;
        if total == 0 {
            return Some(100.0);
        }
        let tenths = self.rows_copied.saturating_mul(1000) / total;
        Some(tenths as f64 / 10.0)
    }

    pub fn eta(&self) -> Eta {
        if self.phase.copy_is_complete() {
            return Eta::Due;
        }
        if self.phase != Phase::Copy {
            return Eta::Unknown;
        }
        let Some(total) = self.rows_total() else { return Eta::Unknown };
        let remaining = total - self.rows_copied;
        if remaining == 0 {
            return Eta::Due;
        }
        match self.copy_rate {
            Some(rate) if rate.is_finite() && rate > 0.0 => {
                // Whole seconds, rounded up: an ETA must not say 0s while rows remain.
                match Duration::try_from_secs_f64((remaining as f64 / rate).ceil()) {
                    Ok(d) => Eta::Remaining(d),
                    Err(_) => Eta::Unknown,
                }
            }
            _ => Eta::Unknown,
        }
    }

    /// `copying`, or `throttled, <reason>` while throttled.
    pub fn state(&self) -> String {
        match &self.throttle_reason {
            Some(reason) => format!("throttled, {reason}"),
            None => self.phase.to_string(),
        }
    }
}

/// `Copy: 1,234,567/10,000,000 12.3%; Applied: 45,678; Backlog: 120 keys; Lag: 0.3s;
/// State: copying; ETA: 9m12s`
///
/// The direct way copies nothing: `Direct: step 2/4; Elapsed: 3s; State: changing it directly`.
pub fn status_line(p: &Progress) -> String {
    if let Some(step) = p.direct_step {
        return format!("Direct: step {}/{}; Elapsed: {}; State: {}", step.number, step.of, format_duration(p.elapsed), p.state());
    }
    format!(
        "Copy: {}; Applied: {}{}; Backlog: {} keys; Lag: {}{}; State: {}; ETA: {}",
        copy_part(p),
        thousands(p.applied),
        parked_part(p.parked_keys),
        thousands(p.backlog_keys),
        lag_part(p.lag, p.lag_bytes),
        standby_part(p.standby_wait),
        p.state(),
        p.eta()
    )
}

/// `; Standbys: waited 12s` once a flush has waited a second for the standbys of a failover
/// slot; nothing for the usual waits of a millisecond or two.
fn standby_part(wait: Option<Duration>) -> String {
    match wait {
        Some(d) if d >= Duration::from_secs(1) => format!("; Standbys: waited {}", format_duration(d)),
        _ => String::new(),
    }
}

/// `; Parked: 120 keys` while keys wait for the ghost's key index; nothing otherwise.
fn parked_part(parked: u64) -> String {
    match parked {
        0 => String::new(),
        n => format!("; Parked: {} keys", thousands(n)),
    }
}

fn copy_part(p: &Progress) -> String {
    match (p.rows_total(), p.percent()) {
        (Some(total), Some(pct)) => format!("{}/{} {pct:.1}%", thousands(p.rows_copied), thousands(total)),
        _ => format!("{}/N/A", thousands(p.rows_copied)),
    }
}

fn lag_part(lag: Option<Duration>, bytes: Option<u64>) -> String {
    let time = match lag {
        Some(d) => format!("{:.1}s", d.as_secs_f64()),
        None => "N/A".to_string(),
    };
    match bytes {
        Some(b) => format!("{time} ({})", human_bytes(b)),
        None => time,
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `552s` → `9m12s`; hours when needed (`2h05m00s`). Seconds only, for people.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, sec) => format!("{h}h{min:02}m{sec:02}s"),
    }
}

/// Bytes as `pg_size_pretty` would show them, powers of 1024, one decimal: `1.5MB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut value = b as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Rows per second over the last `window`, from cumulative `(instant, rows)` samples.
///
/// The oldest sample kept is the last one at or before the window's start, so the rate
/// spans the whole window once there is that much history, and a pause (throttling)
/// shows as a falling rate rather than vanishing from view.
#[derive(Clone, Debug)]
pub struct RateEstimator {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl RateEstimator {
    pub fn new(window: Duration) -> RateEstimator {
        RateEstimator { window, samples: VecDeque::new() }
    }

    /// Records the cumulative row count at `at`. A sample older than the last is ignored
    /// (instants are monotonic; this only guards misuse); a count lower than the last
    /// means the counter restarted, and the history before it no longer applies.
    pub fn record(&mut self, at: Instant, rows: u64) {
        if let Some(&(last_at, last_rows)) = self.samples.back() {
            if at < last_at {
                return;
            }
            if rows < last_rows {
                self.samples.clear();
            }
        }
        self.samples.push_back((at, rows));
        if let Some(start) = at.checked_sub(self.window) {
            while self.samples.len() > 2 && self.samples[1].0 <= start {
                self.samples.pop_front();
            }
        }
    }

    /// `None` until two samples at different instants exist.
    pub fn rate(&self) -> Option<f64> {
        let (first_at, first_rows) = *self.samples.front()?;
        let (last_at, last_rows) = *self.samples.back()?;
        let span = last_at.duration_since(first_at);
        if span.is_zero() {
            return None;
        }
        Some((last_rows - first_rows) as f64 / span.as_secs_f64())
    }
}

/// How far behind the stream the apply is, in time, from `(instant, server WAL end)`
/// samples: the age of the oldest sample whose WAL end lies beyond the acknowledged
/// position. The first unacknowledged byte was written no later than that sample, so the
/// figure is a lower bound with the sampling's resolution (the status refresh, 1 s), and
/// it is zero once the apply has acknowledged everything the stream had reported.
///
/// Samples the acknowledged position has passed are dropped; at [`Self::MAX_SAMPLES`] the
/// newest sample is replaced instead of added, which keeps the bound a lower bound.
#[derive(Clone, Debug, Default)]
pub struct StreamLagClock {
    samples: VecDeque<(Instant, Lsn)>,
}

impl StreamLagClock {
    /// A day of samples at one a second.
    pub const MAX_SAMPLES: usize = 86_400;

    pub fn new() -> StreamLagClock {
        StreamLagClock::default()
    }

    /// Records that the server's WAL ended at `wal_end` at `at`, and returns the lag of the
    /// position `acked`; `None` while the stream has reported no WAL end.
    pub fn update(&mut self, at: Instant, wal_end: Lsn, acked: Lsn) -> Option<Duration> {
        if wal_end != Lsn::ZERO && self.samples.back().is_none_or(|&(_, last)| wal_end > last) {
            if self.samples.len() >= Self::MAX_SAMPLES {
                self.samples.pop_back();
            }
            self.samples.push_back((at, wal_end));
        }
        while self.samples.front().is_some_and(|&(_, end)| end <= acked) {
            self.samples.pop_front();
        }
        if wal_end == Lsn::ZERO {
            return None;
        }
        Some(self.samples.front().map_or(Duration::ZERO, |&(since, _)| at.saturating_duration_since(since)))
    }
}

#[cfg(test)]
mod tests;
