//! A statement that must take a lock, run so that it never stalls the table for long: while
//! it waits, the sessions in its way are named once, and terminated when `--cut-over-kill-
//! blockers-after` is due. Used by the cut-over's LOCK and by the direct way's steps.

use super::blockers::{blockers_of, BlockerKiller};
use super::sessions::Sessions;
use crate::error::{Error, ErrorKind, Result};
use std::time::Duration;

/// Runs `sql` on `sessions.client`, whose `lock_timeout`/`statement_timeout` the caller set to
/// `wait`. A lock timeout or a statement cancelled by the timeout comes back as
/// `ErrorKind::LockTimeout`, retryable.
pub(crate) async fn run(sessions: &Sessions, sql: &str, wait: Duration, attempt: u32, mut killer: Option<&mut BlockerKiller>, what: &str) -> Result<()> {
    let statement = sessions.client.batch_execute(sql);
    tokio::pin!(statement);
    let report_after = tokio::time::sleep(wait.mul_f64(0.8));
    tokio::pin!(report_after);
    let mut reported = false;
    // Transactions that held their lock when the statement queued and end by themselves
    // within the grace are not blockers worth killing: they would be short writes.
    let grace = kill_grace(wait);
    let first_check = killer.as_ref().map(|k| k.due().max(tokio::time::Instant::now() + grace));
    let kill_check = tokio::time::sleep_until(first_check.unwrap_or_else(tokio::time::Instant::now));
    tokio::pin!(kill_check);
    let done = loop {
        tokio::select! {
            r = &mut statement => break r,
            _ = &mut report_after, if !reported => {
                reported = true;
                report_blockers(sessions, attempt, what).await;
            }
            _ = &mut kill_check, if killer.is_some() => {
                if let Some(k) = killer.as_deref_mut() {
                    k.terminate_blockers(&sessions.monitor, sessions.pid, attempt).await;
                }
                kill_check.as_mut().reset(tokio::time::Instant::now() + grace);
            }
        }
    };
    done.map_err(|e| {
        let canceled = e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED);
        let e = Error::from(e);
        match e.kind() == ErrorKind::LockTimeout || canceled {
            true => Error::new(ErrorKind::LockTimeout, format!("{what}: could not get the lock within {wait:?}")),
            false => e,
        }
    })
}

async fn report_blockers(sessions: &Sessions, attempt: u32, what: &str) {
    if let Ok(list) = blockers_of(&sessions.monitor, sessions.pid).await {
        for b in &list {
            tracing::warn!(attempt, blocker_pid = b.pid, kind = b.kind(), user = %b.user, application = %b.application, state = %b.state, transaction_age = %b.transaction_age, query = %b.query, "{what} is waiting for this session");
        }
    }
}

/// How long a statement waits before its blockers may be terminated, and between two looks
/// at them: half the wait, at most 200 ms. Whatever still blocks after that is not a write
/// about to commit.
fn kill_grace(wait: Duration) -> Duration {
    (wait / 2).min(Duration::from_millis(200))
}
