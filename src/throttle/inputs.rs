//! What the collectors gathered in one tick: the only thing [`super::decide`] looks at.
//!
//! A value that could not be read is kept as the reason it could not (`Err(why)`), never
//! as a default: an unmeasured replica or metric throttles (fail closed) and the DBA
//! reads why in the reason.

use crate::config::LoadMetric;
use std::path::PathBuf;
use std::time::Duration;

/// A measured value, or why it could not be measured.
pub type Reading<T> = std::result::Result<T, String>;

/// Forced throttling from the control socket: `throttle` sets it, `no-throttle` clears it.
/// `no-throttle` only ends what `throttle` started, as in gh-ost: other reasons still apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Override {
    #[default]
    None,
    ForceThrottle,
}

/// The replay lag of one standby.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaLag {
    /// How the DBA knows it: `host:port` from `--throttle-control-replicas`, or the
    /// standby's `application_name` from `pg_stat_replication`.
    pub name: String,
    pub lag: Reading<Duration>,
}

/// The `--max-load`/`--critical-load` metrics, as read on the primary.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub active_sessions: Reading<u64>,
    pub waiting_sessions: Reading<u64>,
    /// The largest WAL lag of the server's other slots, in bytes (0 without other slots).
    pub replication_slot_lag_bytes: Reading<u64>,
    pub wal_bytes_per_sec: Reading<u64>,
}

impl Load {
    /// Every metric unmeasured for the same reason (e.g. the primary query failed).
    pub fn unknown(why: &str) -> Load {
        Load {
            active_sessions: Err(why.to_string()),
            waiting_sessions: Err(why.to_string()),
            replication_slot_lag_bytes: Err(why.to_string()),
            wal_bytes_per_sec: Err(why.to_string()),
        }
    }

    pub fn get(&self, metric: LoadMetric) -> &Reading<u64> {
        match metric {
            LoadMetric::ActiveSessions => &self.active_sessions,
            LoadMetric::WaitingSessions => &self.waiting_sessions,
            LoadMetric::ReplicationSlotLagBytes => &self.replication_slot_lag_bytes,
            LoadMetric::WalBytesPerSec => &self.wal_bytes_per_sec,
        }
    }
}

/// Everything one decision is made from.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// One entry per standby measured; empty when lag is not checked or there are none.
    pub lags: Vec<ReplicaLag>,
    pub load: Load,
    /// `None`: no `--throttle-query`. The number it returned (booleans read as 0/1), or
    /// why it failed (an error throttles).
    pub throttle_query: Option<Reading<f64>>,
    /// The throttle flag files that exist now.
    pub flag_files: Vec<PathBuf>,
    /// WAL retained by this run's slot, in bytes (0 when the slot does not exist).
    pub retained_wal: Reading<u64>,
    pub forced: Override,
    /// The cut-over holds its locks: nothing may throttle or abort it then.
    pub cut_over_locked: bool,
    /// `Some(reason)` while hibernating after a critical load: the load, lag and
    /// throttle-query checks are not run (nor their values collected) until it ends.
    pub hibernating: Option<String>,
}

impl Inputs {
    /// Inputs under which nothing throttles: no replicas, no load, no query, no flags.
    pub fn quiet() -> Inputs {
        Inputs {
            lags: Vec::new(),
            load: Load {
                active_sessions: Ok(0),
                waiting_sessions: Ok(0),
                replication_slot_lag_bytes: Ok(0),
                wal_bytes_per_sec: Ok(0),
            },
            throttle_query: None,
            flag_files: Vec::new(),
            retained_wal: Ok(0),
            forced: Override::None,
            cut_over_locked: false,
            hibernating: None,
        }
    }
}
