//! What the run's sessions share about reconnecting: the default time allowed for it and
//! the tally of reconnections, kept with the connection settings (the reconnecting itself is
//! `crate::reconnect`, above this module).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `--reconnect-timeout` by default: long enough for a server restart or a failover, short
/// enough that a run whose server is gone for good ends (and drops its slot) before the slot
/// has retained much WAL.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times each session of a run was opened again after a loss, by the session's
/// application name (`pg-ghost stream`, `pg-ghost apply`, ...), for the metrics. Every
/// [`ConnInfo`] derived from the run's shares one tally.
#[derive(Clone, Debug, Default)]
pub struct Reconnects(Arc<Mutex<BTreeMap<String, u64>>>);

impl Reconnects {
    pub(crate) fn count(&self, session: &str) {
        // A counter bump under the lock: a poisoned lock still holds good counts.
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(session.to_string()).or_default() += 1;
    }

    /// Every session reconnected so far and how often, by name.
    pub fn counts(&self) -> Vec<(String, u64)> {
        let counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
