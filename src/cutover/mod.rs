//! The cut-over: one transaction that swaps the ghost in for the original.
//!
//! Pause the flusher (its reads of the original would queue behind our lock); take ACCESS
//! EXCLUSIVE on the original with a short `lock_timeout` (a waiting LOCK stalls every later
//! query on the table, so try often and briefly); emit a sentinel through the stream from a
//! second connection and read the stream up to it, which yields every change committed
//! before the lock; flush those keys inside the locked transaction; carry sequences over,
//! rename, commit. Any failure rolls back: the original is untouched and the keys go back
//! to the flusher. A lock timeout is retried after a back-off, naming who held the lock.

mod blockers;
pub mod swap;
pub mod swap_back;

pub use blockers::{blockers_of, Blocker};

use crate::apply::{FlushSql, Key, WriterHandle};
use crate::conn::ConnInfo;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::Ghost;
use crate::schema::TableInfo;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::Client;

/// The prefix of pg-ghost's logical messages in the stream.
pub const MESSAGE_PREFIX: &str = "pg-ghost";

pub struct CutOver<'a> {
    pub conn: &'a ConnInfo,
    pub orig: &'a TableInfo,
    pub ghost: &'a Ghost,
    pub old_table: &'a str,
    pub writer: &'a WriterHandle,
    pub flush: &'a FlushSql,
    pub lock_timeout: Duration,
    pub retries: u32,
    /// Set when the run must stop (panic flag, signal): checked between attempts.
    pub abort: watch::Receiver<Option<String>>,
    /// `--test-on-replica`: swap and swap straight back in the same transaction.
    pub swap_back: bool,
}

#[derive(Clone, Debug)]
pub struct CutOverReport {
    pub attempts: u32,
    /// From the moment the lock was granted to the commit.
    pub lock_held: Duration,
    /// Waiting for the lock in the successful attempt.
    pub lock_wait: Duration,
    pub final_keys: usize,
}

impl CutOver<'_> {
    pub async fn run(&self) -> Result<CutOverReport> {
        let client = self.conn.with_application_name("pg-ghost cut-over").connect().await?;
        let monitor = self.conn.with_application_name("pg-ghost monitor").connect().await?;
        monitor.batch_execute("SET synchronous_commit = on").await?;
        let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await?.try_get(0)?;
        let backoff = crate::error::Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(5), attempts: u32::MAX };
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.check_abort()?;
            self.writer.pause().await?;
            let result = self.attempt(&client, &monitor, pid, attempt).await;
            match result {
                Ok(report) => return Ok(report),
                Err(e) => {
                    self.writer.resume().await?;
                    if !e.is_retryable() || attempt > self.retries {
                        return Err(e.context(format!("cut-over attempt {attempt}")));
                    }
                    let delay = backoff.delay(attempt);
                    tracing::warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "cut-over attempt failed; retrying");
                    self.sleep_unless_aborted(delay).await?;
                }
            }
        }
    }

    fn check_abort(&self) -> Result<()> {
        match self.abort.borrow().as_ref() {
            Some(why) => Err(Error::new(ErrorKind::Aborted, why.clone())),
            None => Ok(()),
        }
    }

    async fn sleep_unless_aborted(&self, delay: Duration) -> Result<()> {
        let mut abort = self.abort.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = abort.wait_for(|a| a.is_some()) => self.check_abort(),
        }
    }

    async fn attempt(&self, client: &Client, monitor: &Client, pid: i32, attempt: u32) -> Result<CutOverReport> {
        client.batch_execute("BEGIN").await.context("starting the cut-over transaction")?;
        let mut locked_at = None;
        let result = self.locked_swap(client, monitor, pid, attempt, &mut locked_at).await;
        match result {
            Ok((report, _)) => Ok(report),
            Err((e, keys)) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if let Some(at) = locked_at {
                    // Writers waited all this time too: a failed attempt's stall is reported.
                    tracing::warn!(attempt, lock_held_ms = at.elapsed().as_millis() as u64, "cut-over attempt rolled back after holding the lock");
                }
                if !keys.is_empty() {
                    self.writer.requeue(keys).await?;
                }
                Err(e)
            }
        }
    }

    /// A DDL on the original that no later change announced on the stream is caught here,
    /// under the lock, before anything is swapped.
    async fn check_definition_unchanged(&self, client: &Client) -> Result<()> {
        let shape = |cols: &[crate::schema::Column]| cols.iter().map(|c| (c.name.clone(), c.type_sql.clone())).collect::<Vec<_>>();
        let now = crate::inspect::columns(client, self.orig.oid).await?;
        if shape(&now) != shape(&self.orig.columns) {
            return Err(Error::new(
                ErrorKind::SchemaChanged,
                format!("the definition of {} changed during the run; the cut-over is abandoned and the original is untouched", self.orig.name),
            ));
        }
        Ok(())
    }

    async fn locked_swap(
        &self,
        client: &Client,
        monitor: &Client,
        pid: i32,
        attempt: u32,
        held_since: &mut Option<Instant>,
    ) -> std::result::Result<(CutOverReport, ()), (Error, Vec<Key>)> {
        let fail = |e: Error| (e, Vec::new());
        let timeout_ms = self.lock_timeout.as_millis().max(1);
        client
            .batch_execute(&format!("SET LOCAL lock_timeout = '{timeout_ms}ms'"))
            .await
            .map_err(|e| fail(e.into()))?;
        let lock_sql = format!("LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE", self.orig.name.sql(), self.ghost.name.sql());
        let wait_started = Instant::now();
        let lock = client.batch_execute(&lock_sql);
        tokio::pin!(lock);
        let report_after = tokio::time::sleep(self.lock_timeout.mul_f64(0.8));
        tokio::pin!(report_after);
        let mut reported = false;
        let locked = loop {
            tokio::select! {
                r = &mut lock => break r,
                _ = &mut report_after, if !reported => {
                    reported = true;
                    if let Ok(list) = blockers_of(monitor, pid).await {
                        for b in &list {
                            tracing::warn!(attempt, blocker_pid = b.pid, state = %b.state, transaction_age = %b.transaction_age, query = %b.query, "cut-over lock is waiting for this session");
                        }
                    }
                }
            }
        };
        if let Err(e) = locked {
            let e = Error::from(e);
            return Err(fail(if e.kind() == ErrorKind::LockTimeout {
                Error::new(ErrorKind::LockTimeout, format!("could not lock {} within {:?}", self.orig.name, self.lock_timeout))
            } else {
                e.context("locking the tables")
            }));
        }
        let lock_wait = wait_started.elapsed();
        let locked_at = Instant::now();
        *held_since = Some(locked_at);
        tracing::info!(attempt, wait_ms = lock_wait.as_millis() as u64, "cut-over lock acquired");
        self.check_definition_unchanged(client).await.map_err(fail)?;

        let sentinel = format!("cut-over {} {}", std::process::id(), attempt);
        let drain = self.writer.expect_sentinel(&sentinel).await.map_err(fail)?;
        monitor
            .execute("SELECT pg_logical_emit_message(true, $1, $2)", &[&MESSAGE_PREFIX, &sentinel])
            .await
            .map_err(|e| fail(Error::from(e).context("emitting the cut-over sentinel")))?;
        let limit = (self.lock_timeout * 3).max(Duration::from_secs(2));
        let keys = match tokio::time::timeout(limit, drain).await {
            Ok(Ok(keys)) => keys,
            Ok(Err(_)) => return Err(fail(Error::internal("the apply loop stopped before the sentinel arrived"))),
            Err(_) => {
                return Err(fail(Error::new(
                    ErrorKind::LockTimeout,
                    format!("the stream did not deliver the cut-over sentinel within {limit:?} while the table was locked"),
                )))
            }
        };
        let final_keys = keys.len();
        let work = async {
            for batch in keys.chunks(20_000) {
                self.flush.run(client, batch).await?;
            }
            if self.swap_back {
                swap_back::swap_and_back(client, self.orig, self.ghost, self.old_table).await?;
            } else {
                swap::swap(client, self.orig, self.ghost, self.old_table).await?;
            }
            client.batch_execute("COMMIT").await.context("committing the cut-over")?;
            Ok::<_, Error>(())
        };
        if let Err(e) = work.await {
            return Err((e, keys));
        }
        let lock_held = locked_at.elapsed();
        tracing::info!(attempt, lock_held_ms = lock_held.as_millis() as u64, final_keys, "cut-over committed");
        Ok((CutOverReport { attempts: attempt, lock_held, lock_wait, final_keys }, ()))
    }
}
