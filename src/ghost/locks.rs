//! The locks building the ghost takes on other tables: taken first, all at once, with a
//! bounded wait.
//!
//! Building the ghost adds the original's foreign keys to it (SHARE ROW EXCLUSIVE on each
//! table they reference) and drops them again for the copy (ACCESS EXCLUSIVE on each), one
//! referenced table after the other; the ALTER may add or drop foreign keys of its own.
//! Taken that way, the transaction holds one referenced table while it waits for the next,
//! and a write that holds the next one (its CHECK read it) and then checks a foreign key
//! against the first waits behind it: a deadlock. PostgreSQL looks for a deadlock once per
//! wait, `deadlock_timeout` after that wait began, and aborts whoever finds it. pg-ghost's wait
//! began first; when the write closes the cycle later, pg-ghost's one check has already found
//! nothing, and the write's check aborts the write. Seen on DAViCal's `dav_binding`.
//!
//! So every table a foreign key of the tree references is locked in one `LOCK TABLE ... IN
//! ACCESS EXCLUSIVE MODE` (the strongest mode building asks for), before the first statement
//! that touches one, with the whole wait under half of `deadlock_timeout` when it names
//! several tables (see [`crate::cutover::lock_wait_limit`]); after it no statement waits for a
//! lock on them. While it waits, the transaction holds only ACCESS SHARE on the original and
//! its own new ghost, which no write waits for. A LOCK that times out rolls the transaction
//! back, and building starts again after a back-off.

use crate::error::{Context, Error, ErrorKind, Result};
use crate::sql::{ident, QualifiedName};
use std::time::Duration;
use tokio_postgres::GenericClient;

/// How long building the ghost may wait for the tables its foreign keys reference, and how
/// often it tries (the cut-over's `--cut-over-lock-timeout` and `--cut-over-retries`).
#[derive(Clone, Copy, Debug)]
pub struct LockWait {
    pub lock_timeout: Duration,
    pub retries: u32,
}

impl Default for LockWait {
    /// The defaults of `--cut-over-lock-timeout` and `--cut-over-retries`.
    fn default() -> Self {
        LockWait { lock_timeout: Duration::from_secs(1), retries: 60 }
    }
}

impl From<&crate::config::CutOverConfig> for LockWait {
    /// The cut-over's short waits, for the same reasons.
    fn from(c: &crate::config::CutOverConfig) -> Self {
        LockWait { lock_timeout: c.lock_timeout, retries: c.retries }
    }
}

/// The tables other than the tree's own that the foreign keys of the original or of its
/// partitions reference, or those the ALTER adds do.
pub(super) struct Referenced {
    /// Sorted by schema and name.
    pub tables: Vec<QualifiedName>,
}

pub(super) async fn referenced_tables(tx: &impl GenericClient, orig_oid: u32, orig: &QualifiedName, alter: &str) -> Result<Referenced> {
    let mut names: Vec<String> = Vec::new();
    if !alter.trim().is_empty() {
        for clause in crate::plan::clauses::split(alter, orig)? {
            names.extend(clause.references.iter().map(|r| match r.schema.is_empty() {
                true => ident(&r.name),
                false => r.sql(),
            }));
        }
    }
    let rows = tx
        .query(
            "WITH tree AS (SELECT $1::oid AS relid UNION SELECT relid FROM pg_partition_tree($1::oid::regclass)),
                  referenced AS (
                    SELECT con.confrelid AS relid FROM pg_constraint con
                     WHERE con.contype = 'f' AND con.conparentid = 0 AND con.conrelid IN (SELECT relid FROM tree)
                    UNION
                    SELECT to_regclass(name)::oid FROM unnest($2::text[]) AS name)
             SELECT n.nspname::text, c.relname::text
               FROM referenced r JOIN pg_class c ON c.oid = r.relid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE r.relid NOT IN (SELECT relid FROM tree)
              ORDER BY 1, 2",
            &[&orig_oid, &names],
        )
        .await
        .context("reading the tables the foreign keys reference")?;
    let mut referenced = Referenced { tables: Vec::new() };
    for r in &rows {
        referenced.tables.push(QualifiedName::new(r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?));
    }
    Ok(referenced)
}

/// Locks `tables` in ACCESS EXCLUSIVE mode in one statement, waiting at most `lock_timeout`
/// in all (under half the server's `deadlock_timeout` for several tables); a wait that runs
/// out is `ErrorKind::LockTimeout`. The session's own timeouts are restored afterwards.
pub(super) async fn lock(tx: &impl GenericClient, tables: &[QualifiedName], lock_timeout: Duration) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let row = tx
        .query_one(
            "SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout'),
                    current_setting('lock_timeout'), current_setting('statement_timeout')",
            &[],
        )
        .await
        .context("reading the session's timeouts")?;
    let deadlock_ms: i64 = row.try_get(0)?;
    let (lock_before, statement_before): (String, String) = (row.try_get(1)?, row.try_get(2)?);
    let deadlock_timeout = Duration::from_millis(deadlock_ms.max(1) as u64);
    let wait = crate::cutover::lock_wait_limit(lock_timeout, deadlock_timeout, tables.len() > 1);
    let ms = wait.as_millis().max(1);
    let list: Vec<String> = tables.iter().map(QualifiedName::sql).collect();
    let sql = format!(
        "SET LOCAL lock_timeout = '{ms}ms'; SET LOCAL statement_timeout = '{ms}ms'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        list.join(", ")
    );
    if let Err(e) = tx.batch_execute(&sql).await {
        let canceled = e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED);
        let e = Error::from(e);
        return Err(match e.kind() == ErrorKind::LockTimeout || canceled {
            true => Error::new(
                ErrorKind::LockTimeout,
                format!("could not lock the tables the foreign keys reference ({}) within {wait:?}", list.join(", ")),
            ),
            false => e.context("locking the tables the foreign keys reference"),
        });
    }
    let restore = format!(
        "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}",
        crate::sql::literal(&lock_before),
        crate::sql::literal(&statement_before)
    );
    tx.batch_execute(&restore).await.context("restoring the session's timeouts")
}

/// After a failed attempt at building: a lock timeout with attempts left waits its back-off
/// and returns Ok (try again); anything else is returned.
pub(crate) async fn again(e: Error, attempt: u32, wait: &LockWait, what: &str) -> Result<()> {
    if e.kind() != ErrorKind::LockTimeout || attempt >= wait.retries {
        return Err(e);
    }
    let backoff = crate::error::Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(5), attempts: u32::MAX };
    let delay = backoff.delay(attempt);
    tracing::warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "{what}: retrying");
    tokio::time::sleep(delay).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_a_lock_timeout_with_attempts_left_is_tried_again() {
        let wait = LockWait { lock_timeout: Duration::from_millis(500), retries: 3 };
        let timeout = || Error::new(ErrorKind::LockTimeout, "could not lock");
        assert!(again(timeout(), 1, &wait, "building").await.is_ok());
        assert!(again(timeout(), 2, &wait, "building").await.is_ok());
        assert_eq!(again(timeout(), 3, &wait, "building").await.map_err(|e| e.kind()), Err(ErrorKind::LockTimeout));
        let refused = Error::refused("no");
        assert_eq!(again(refused, 1, &wait, "building").await.map_err(|e| e.kind()), Err(ErrorKind::Refused));
    }

    #[test]
    fn the_wait_is_the_cut_overs() {
        let c = crate::config::CutOverConfig {
            lock_timeout: Duration::from_millis(300),
            retries: 7,
            kill_blockers_after: None,
            ok_to_drop_table: false,
            timestamp_old_table: false,
            postpone_flag_file: None,
        };
        let w = LockWait::from(&c);
        assert_eq!((w.lock_timeout, w.retries), (Duration::from_millis(300), 7));
    }
}
