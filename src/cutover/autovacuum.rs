//! Autovacuum workers in the cut-over's way.
//!
//! A worker vacuuming or analyzing a table holds SHARE UPDATE EXCLUSIVE on it, which the
//! cut-over's ACCESS EXCLUSIVE waits for. PostgreSQL cancels an ordinary worker that blocks
//! another session's lock request once that session has waited `deadlock_timeout` (its own
//! setting: the waiting session runs the check). With a lock timeout no longer than that
//! (pg-ghost's default is the server's default, 1 s) every attempt gives up just when the
//! way would have cleared, and on a large table autovacuum runs for hours. So, before each
//! attempt's LOCK, the monitor looks for autovacuum workers holding a lock on the tables the
//! LOCK names, and:
//!
//! - an ordinary worker is cancelled at once when the role may (a superuser; from PostgreSQL
//!   18 also a member of `pg_signal_autovacuum_worker`): autovacuum runs the table again
//!   later, nothing is lost but its progress;
//! - otherwise, when the role may lower `deadlock_timeout` for its own session (superuser,
//!   or `GRANT SET ON PARAMETER deadlock_timeout`), each attempt sets it to a fifth of its
//!   wait, so PostgreSQL cancels a worker early in the wait, also one that starts after the
//!   look;
//! - otherwise the attempt locks the worker's table alone first and waits for it past the
//!   session's `deadlock_timeout`, so PostgreSQL cancels the worker itself (see
//!   [`extended_wait`] for why that cannot make an application write a deadlock victim);
//! - an anti-wraparound worker ("to prevent wraparound") is never cancelled by PostgreSQL,
//!   and pg-ghost leaves it alone too: cancelled, it would start again at once with its work
//!   lost. It is named, with what the DBA can do, in the log and in the final error.

use crate::error::{ErrorKind, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio_postgres::Client;

/// An autovacuum worker holding a lock on a table the cut-over locks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Worker {
    pub pid: i32,
    /// The locked table, as the LOCK names it (`QualifiedName::sql`).
    pub table: String,
    /// Runs to prevent transaction ID wraparound: PostgreSQL never cancels it.
    pub wraparound: bool,
    /// `autovacuum: VACUUM ANALYZE public.orders`, when the role may read it.
    pub query: String,
}

/// What pg-ghost may do about workers, learnt as the attempts go.
#[derive(Debug)]
pub(crate) struct Policy {
    /// False once `pg_cancel_backend` on a worker was refused for privilege.
    may_cancel: AtomicBool,
    /// Whether the cut-over session may `SET deadlock_timeout`.
    pub may_lower_deadlock_timeout: bool,
    /// The anti-wraparound workers seen before the latest attempt, for the final error.
    wraparound: Mutex<Vec<Worker>>,
}

impl Policy {
    pub fn new(may_lower_deadlock_timeout: bool) -> Policy {
        Policy { may_cancel: AtomicBool::new(true), may_lower_deadlock_timeout, wraparound: Mutex::new(Vec::new()) }
    }

    /// The anti-wraparound workers seen before the latest attempt.
    pub fn wraparound(&self) -> Vec<Worker> {
        self.wraparound.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Deals with the workers before an attempt's LOCK; returns the table whose ordinary
    /// worker neither pg-ghost nor an early deadlock check will cancel, whose lock must then
    /// be waited for past `deadlock_timeout`.
    pub async fn before_lock(&self, monitor: &Client, workers: &[Worker], attempt: u32) -> Option<String> {
        let (wraparound, ordinary): (Vec<&Worker>, Vec<&Worker>) = workers.iter().partition(|w| w.wraparound);
        *self.wraparound.lock().unwrap_or_else(|p| p.into_inner()) = wraparound.iter().map(|w| (*w).clone()).collect();
        for w in &wraparound {
            tracing::warn!(attempt, autovacuum_pid = w.pid, table = %w.table, query = %w.query, "{}", wraparound_advice(&w.table));
        }
        let mut left = None;
        for w in ordinary {
            if self.may_cancel.load(Ordering::Relaxed) {
                match cancel(monitor, w.pid).await {
                    Ok(true) => {
                        tracing::warn!(attempt, autovacuum_pid = w.pid, table = %w.table, query = %w.query, "cancelled an autovacuum worker holding a lock the cut-over needs; autovacuum runs the table again later");
                        continue;
                    }
                    Ok(false) => continue, // gone already
                    Err(e) if e.kind() == ErrorKind::Privilege => {
                        self.may_cancel.store(false, Ordering::Relaxed);
                        tracing::info!(attempt, autovacuum_pid = w.pid, "the role may not cancel autovacuum workers (only superusers may, and from PostgreSQL 18 members of pg_signal_autovacuum_worker); the cut-over lets PostgreSQL cancel them instead");
                    }
                    Err(e) => tracing::warn!(attempt, autovacuum_pid = w.pid, error = %e, "cancelling an autovacuum worker that blocks the cut-over failed"),
                }
            }
            if self.may_lower_deadlock_timeout {
                tracing::info!(attempt, autovacuum_pid = w.pid, table = %w.table, "an autovacuum worker holds a lock the cut-over needs; PostgreSQL cancels it early in the wait (the cut-over session's deadlock_timeout is lowered)");
            } else if left.is_none() {
                tracing::info!(attempt, autovacuum_pid = w.pid, table = %w.table, "an autovacuum worker holds a lock the cut-over needs; this attempt waits for that table past deadlock_timeout, when PostgreSQL cancels the worker");
                left = Some(w.table.clone());
            }
        }
        left
    }
}

/// What the log and the final error say of an anti-wraparound autovacuum in the way.
pub(crate) fn wraparound_advice(table: &str) -> String {
    format!(
        "an anti-wraparound autovacuum of {table} holds a lock the cut-over needs: PostgreSQL never cancels it, and pg-ghost does not (cancelled or terminated, even with --cut-over-kill-blockers-after, it would start again at once with its work lost). \
         Let it finish (pg_stat_progress_vacuum shows how far it is): keep the cut-over postponed (--postpone-cut-over-flag-file) or give it more --cut-over-retries, or run pg-ghost again afterwards"
    )
}

/// Autovacuum workers holding a lock on any of `tables` (as `QualifiedName::sql` names them).
pub(crate) async fn workers_on(monitor: &Client, tables: &[String]) -> Result<Vec<Worker>> {
    let rows = monitor
        .query(
            "SELECT DISTINCT ON (a.pid) a.pid, t.name, coalesce(a.query, '') LIKE '%(to prevent wraparound)',
                    left(coalesce(a.query, ''), 200)
               FROM unnest($1::text[]) AS t(name)
               JOIN pg_locks l ON l.locktype = 'relation' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                              AND l.relation = t.name::regclass
               JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE a.backend_type = 'autovacuum worker'
              ORDER BY a.pid",
            &[&tables],
        )
        .await?;
    rows.iter()
        .map(|r| Ok(Worker { pid: r.try_get(0)?, table: r.try_get(1)?, wraparound: r.try_get(2)?, query: r.try_get(3)? }))
        .collect()
}

/// `pg_cancel_backend`: false when the worker was gone.
async fn cancel(monitor: &Client, pid: i32) -> Result<bool> {
    Ok(monitor.query_one("SELECT pg_cancel_backend($1)", &[&pid]).await?.try_get(0)?)
}

/// The cut-over session's `deadlock_timeout` for an attempt that waits `wait`: a fifth of it,
/// so that PostgreSQL's check (which cancels a blocking autovacuum worker) runs early in the
/// wait; never above the server's. Lowering it on the cut-over session alone changes nothing
/// for the application's sessions, and a real deadlock found earlier makes the LOCK, not a
/// write, its victim.
pub(crate) fn lowered_deadlock_timeout(wait: Duration, deadlock_timeout: Duration) -> Duration {
    (wait / 5).clamp(Duration::from_millis(10), deadlock_timeout.max(Duration::from_millis(10)))
}

/// How long an attempt waits for the lock of a table an autovacuum worker holds, when the
/// worker is left to PostgreSQL: past the session's `deadlock_timeout`, when PostgreSQL
/// cancels it, plus the lock timeout for the worker to go.
///
/// That table is locked alone, in a statement of its own, first in the transaction: while it
/// waits, the cut-over holds no lock an application session could wait for, so it can be in
/// no deadlock cycle, however long it waits. The other tables are locked after it, within the
/// usual limit ([`super::lock_wait_limit`]): a write that waits behind a lock the cut-over
/// holds started waiting after that first statement ended, so the rule that keeps writes from
/// being chosen as deadlock victims holds as before.
pub(crate) fn extended_wait(lock_timeout: Duration, deadlock_timeout: Duration) -> Duration {
    deadlock_timeout + lock_timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_lowered_deadlock_timeout_is_a_fifth_of_the_wait_within_bounds() {
        assert_eq!(lowered_deadlock_timeout(ms(1000), ms(1000)), ms(200));
        assert_eq!(lowered_deadlock_timeout(ms(20), ms(1000)), ms(10));
        assert_eq!(lowered_deadlock_timeout(ms(60_000), ms(1000)), ms(1000));
    }

    #[test]
    fn the_extended_wait_goes_past_the_deadlock_timeout() {
        assert!(extended_wait(ms(1000), ms(1000)) > ms(1000));
        assert!(extended_wait(ms(100), ms(5000)) > ms(5000));
    }

    #[test]
    fn the_advice_names_the_table_and_what_to_do() {
        let a = wraparound_advice("public.orders");
        assert!(a.contains("public.orders") && a.contains("never cancels") && a.contains("--postpone-cut-over-flag-file"));
    }
}
