//! Who holds the lock the cut-over waits for: read from a second connection while the
//! `LOCK TABLE` waits, so the report names the sessions that were actually in the way.
//!
//! With `--cut-over-kill-blockers-after`, [`BlockerKiller`] terminates them once the cut-over
//! has been trying for that long.

use crate::error::{Error, ErrorKind, Result};
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Client;

/// Sessions whose `application_name` starts with this are pg-ghost's own.
const OWN_APPLICATION_PREFIX: &str = "pg-ghost";

/// How long `pg_terminate_backend` waits for a blocker to exit, so that the log says
/// "terminated" only of sessions that are gone.
const TERMINATE_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub pid: i32,
    /// With `pid`, tells a session apart from a later one that got the same pid.
    pub backend_start: String,
    pub user: String,
    pub application: String,
    /// `client backend`, `autovacuum worker`, ...
    pub backend_type: String,
    pub state: String,
    pub transaction_age: String,
    pub query: String,
    /// An autovacuum worker running to prevent transaction ID wraparound, which PostgreSQL
    /// never cancels.
    pub wraparound: bool,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({}, transaction open {}): {}", self.pid, self.state, self.transaction_age, self.query)
    }
}

impl Blocker {
    fn is_own(&self) -> bool {
        self.application.starts_with(OWN_APPLICATION_PREFIX)
    }

    /// Without pg_read_all_stats another role's backend type reads as NULL: such a session
    /// counts as a client, and terminating it is left to the server's privilege check.
    fn is_client(&self) -> bool {
        self.backend_type.is_empty() || self.backend_type == "client backend"
    }

    /// How the blocker reads in a report: what kind of session it is when it is not a client.
    pub fn kind(&self) -> &'static str {
        match (self.backend_type.as_str(), self.wraparound) {
            ("autovacuum worker", true) => "anti-wraparound autovacuum (PostgreSQL never cancels it)",
            ("autovacuum worker", false) => "autovacuum",
            _ if self.is_client() => "client",
            _ => "background process",
        }
    }
}

pub async fn blockers_of(monitor: &Client, pid: i32) -> Result<Vec<Blocker>> {
    let rows = monitor
        .query(
            "SELECT a.pid, coalesce(a.backend_start::text, ''), coalesce(a.usename::text, ''), coalesce(a.application_name, ''),
                    coalesce(a.backend_type, ''), coalesce(a.state, ''),
                    coalesce(date_trunc('second', now() - a.xact_start)::text, 'none'),
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200),
                    coalesce(a.backend_type = 'autovacuum worker' AND a.query LIKE '%(to prevent wraparound)', false)
               FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids($1)) ORDER BY a.xact_start",
            &[&pid],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Blocker {
                pid: r.try_get(0)?,
                backend_start: r.try_get(1)?,
                user: r.try_get(2)?,
                application: r.try_get(3)?,
                backend_type: r.try_get(4)?,
                state: r.try_get(5)?,
                transaction_age: r.try_get(6)?,
                query: r.try_get(7)?,
                wraparound: r.try_get(8)?,
            })
        })
        .collect()
}

/// Terminates the sessions the cut-over's LOCK waits for, once the cut-over has been trying
/// for `--cut-over-kill-blockers-after`.
///
/// Spared, each reported once: pg-ghost's own sessions (killing them would break the run
/// itself), backends that are not client sessions (autovacuum, walsenders, background
/// workers: not what a DBA means by a blocker), and sessions the role may not terminate.
pub struct BlockerKiller {
    due: Instant,
    /// Sessions (pid, backend start) already terminated or spared.
    handled: HashSet<(i32, String)>,
}

impl BlockerKiller {
    pub fn new(due: Instant) -> BlockerKiller {
        BlockerKiller { due, handled: HashSet::new() }
    }

    pub fn due(&self) -> Instant {
        self.due
    }

    /// Terminates what blocks the waiting session `pid`; returns how many were terminated.
    /// Nothing here fails the attempt: at worst the LOCK times out and is retried.
    pub async fn terminate_blockers(&mut self, monitor: &Client, pid: i32, attempt: u32) -> usize {
        let list = match blockers_of(monitor, pid).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "could not list the sessions blocking the cut-over lock; none terminated");
                return 0;
            }
        };
        let mut terminated = 0;
        for b in list {
            if !self.handled.insert((b.pid, b.backend_start.clone())) {
                continue;
            }
            if let Some(why) = spare_reason(&b) {
                tracing::warn!(attempt, blocker_pid = b.pid, application = %b.application, backend_type = %b.backend_type, "not terminating a session that blocks the cut-over lock: {why}");
                continue;
            }
            if self.terminate(monitor, &b, attempt).await {
                terminated += 1;
            }
        }
        terminated
    }

    async fn terminate(&self, monitor: &Client, b: &Blocker, attempt: u32) -> bool {
        match terminate_backend(monitor, b.pid).await {
            Ok(true) => {
                tracing::warn!(
                    attempt,
                    blocker_pid = b.pid,
                    user = %b.user,
                    application = %b.application,
                    state = %b.state,
                    transaction_age = %b.transaction_age,
                    query = %b.query,
                    "terminated a session that blocked the cut-over lock (--cut-over-kill-blockers-after)"
                );
                true
            }
            Ok(false) => {
                tracing::warn!(
                    attempt,
                    blocker_pid = b.pid,
                    wait_ms = TERMINATE_WAIT.as_millis() as u64,
                    "asked a session that blocks the cut-over lock to terminate; it had not exited when the wait ended"
                );
                false
            }
            Err(e) if e.kind() == ErrorKind::Privilege => {
                tracing::warn!(
                    attempt,
                    blocker_pid = b.pid,
                    user = %b.user,
                    error = %e,
                    "cannot terminate a session that blocks the cut-over lock: the role needs pg_signal_backend, membership in the blocker's role, or superuser for a superuser's session; the cut-over keeps retrying without terminating it"
                );
                false
            }
            Err(e) => {
                tracing::warn!(attempt, blocker_pid = b.pid, error = %e, "terminating a session that blocks the cut-over lock failed");
                false
            }
        }
    }
}

/// Why a blocker must not be terminated, if it must not.
fn spare_reason(b: &Blocker) -> Option<&'static str> {
    if b.is_own() {
        Some("it is one of pg-ghost's own sessions")
    } else if b.wraparound {
        Some("it is an anti-wraparound autovacuum: terminated, it would start again at once with its work lost; the cut-over keeps retrying until it finishes")
    } else if !b.is_client() {
        Some("it is not a client session")
    } else {
        None
    }
}

/// `pg_terminate_backend` waiting up to [`TERMINATE_WAIT`] for the session to exit: true once
/// it has exited.
async fn terminate_backend(monitor: &Client, pid: i32) -> Result<bool> {
    let wait_ms = TERMINATE_WAIT.as_millis() as i64;
    let row = monitor.query_one("SELECT pg_terminate_backend($1, $2)", &[&pid, &wait_ms]).await.map_err(Error::from)?;
    Ok(row.try_get(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(application: &str, backend_type: &str) -> Blocker {
        Blocker {
            pid: 7,
            backend_start: "2024-01-01 00:00:00+00".into(),
            user: "app".into(),
            application: application.into(),
            backend_type: backend_type.into(),
            state: "idle in transaction".into(),
            transaction_age: "00:00:05".into(),
            query: "SELECT 1".into(),
            wraparound: false,
        }
    }

    #[test]
    fn spares_own_sessions_and_non_client_backends() {
        assert_eq!(spare_reason(&blocker("psql", "client backend")), None);
        assert_eq!(spare_reason(&blocker("", "client backend")), None);
        assert!(spare_reason(&blocker("pg-ghost", "client backend")).is_some());
        assert!(spare_reason(&blocker("pg-ghost apply", "client backend")).is_some());
        assert!(spare_reason(&blocker("", "autovacuum worker")).is_some());
        assert_eq!(spare_reason(&blocker("", "")), None, "a backend whose type the role may not see");
        let wraparound = Blocker { wraparound: true, ..blocker("", "autovacuum worker") };
        assert!(spare_reason(&wraparound).is_some_and(|r| r.contains("anti-wraparound")));
        assert!(wraparound.kind().contains("never cancels"));
        assert_eq!(blocker("", "autovacuum worker").kind(), "autovacuum");
    }
}
