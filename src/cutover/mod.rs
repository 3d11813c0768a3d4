//! The cut-over: one transaction that swaps the ghost in for the original.
//!
//! Pause the flusher (its reads of the original would queue behind our lock); take ACCESS
//! EXCLUSIVE on the original, and every lock the swap's statements will ask for (see
//! [`also_locked`]), in one wait bounded by a short `lock_timeout` (a waiting LOCK stalls every
//! later query on the table, so try often and briefly; and no statement after it may wait for a
//! lock, or an application session could be chosen as a deadlock victim); emit a sentinel through the stream from a
//! second connection and read the stream up to it, which yields every change committed
//! before the lock; flush those keys inside the locked transaction; carry sequences over,
//! rename, commit. Any failure rolls back: the original is untouched and the keys go back
//! to the flusher. A lock timeout is retried after a back-off, naming who held the lock.
//! With `--cut-over-kill-blockers-after`, once the attempts have gone on that long, a waiting
//! LOCK terminates the sessions in its way. A session lost to `pg_terminate_backend` is
//! replaced before the next attempt.

pub(crate) mod also_locked;
pub(crate) mod autovacuum;
mod blockers;
pub(crate) mod sessions;
pub(crate) mod waiting;
pub mod swap;
pub mod swap_back;

pub use blockers::{blockers_of, Blocker};

use crate::apply::{FlushSql, Key, WriterHandle};
use crate::conn::ConnInfo;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::Ghost;
use crate::schema::TableInfo;
use crate::sql::QualifiedName;
pub(crate) use blockers::BlockerKiller;
use sessions::Sessions;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// The prefix of pg-ghost's logical messages in the stream.
pub const MESSAGE_PREFIX: &str = "pg-ghost";

/// How long past the sentinel's wait the cut-over's transaction may sit idle before the
/// server ends it: only a lost connection leaves it idle for more than a round trip.
const IDLE_PAST_SENTINEL: Duration = Duration::from_secs(5);

pub struct CutOver<'a> {
    pub conn: &'a ConnInfo,
    pub orig: &'a TableInfo,
    pub ghost: &'a Ghost,
    pub old_table: &'a str,
    pub writer: &'a WriterHandle,
    pub flush: &'a FlushSql,
    pub lock_timeout: Duration,
    pub retries: u32,
    /// `--cut-over-kill-blockers-after`: once the cut-over has been trying this long, the
    /// sessions a waiting LOCK is blocked by are terminated.
    pub kill_blockers_after: Option<Duration>,
    /// Set when the run must stop (panic flag, signal): checked between attempts.
    pub abort: watch::Receiver<Option<String>>,
    /// `--test-on-replica`: swap and swap straight back in the same transaction.
    pub swap_back: bool,
    /// Counted as the attempts go, for the metrics.
    pub tally: &'a CutOverTally,
    /// Materialized views built on the ghost, which take the originals' places in the swap.
    pub materialized: &'a [crate::dependents::materialized::Built],
    /// What the swap does for the revert window (`--revertible-for`).
    pub window: Window<'a>,
    /// The stream leaves out changes written under replication origins (the copy's own): the
    /// swap is refused if an origin other than pg-ghost's exists.
    pub origins_left_out: bool,
}

/// The swap's part in the revert window.
#[derive(Clone, Copy, Debug)]
pub enum Window<'a> {
    /// No revert window.
    None,
    /// The forward swap of a run with a revert window: inside its transaction, the names of
    /// both tables are recorded in the changelog (key [`crate::checkpoint::REVERT_NAMES`])
    /// before the renames, and `marker` is emitted as a transactional logical message after
    /// them, its position recorded in the changelog (key [`crate::checkpoint::REVERT_MARKER_LSN`]).
    /// The reverse stream drops every transaction that committed up to it and the one carrying
    /// it: those are pg-ghost's own writes to the ghost; every later one is the application's.
    Open { changelog: &'a QualifiedName, marker: &'a str },
    /// The revert: `orig` is the new table, `ghost` the old one (fed by the reverse stream);
    /// instead of swapping, every name recorded at the forward swap is put back, and the
    /// changelog's state set to [`crate::checkpoint::STATE_REVERTED`] in the same transaction.
    /// The dependents of the new table move back to the old one (`reverse_publication`, the
    /// reverse stream's, is not one of them).
    Revert { recorded: &'a str, changelog: &'a QualifiedName, reverse_publication: &'a str },
}

/// The cut-over's attempts as they are made, and the lock times of the one that committed.
#[derive(Debug, Default)]
pub struct CutOverTally {
    attempts: AtomicU64,
    /// `(lock_wait, lock_held)` of the committed attempt.
    committed: Mutex<Option<(Duration, Duration)>>,
}

impl CutOverTally {
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// How long the committed attempt waited for its locks and held them; `None` before.
    pub fn lock_times(&self) -> Option<(Duration, Duration)> {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committed(&self, report: &CutOverReport) {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some((report.lock_wait, report.lock_held));
    }
}

#[derive(Clone, Debug)]
pub struct CutOverReport {
    pub attempts: u32,
    /// From the moment the lock was granted to the commit.
    pub lock_held: Duration,
    /// Waiting for the lock in the successful attempt.
    pub lock_wait: Duration,
    pub final_keys: usize,
    /// Foreign keys moved `NOT VALID`, to validate now that the swap has committed.
    pub validations: Vec<crate::dependents::Validation>,
    pub dependents: usize,
    /// Publications that now list the new table.
    pub publications: Vec<String>,
}

impl CutOver<'_> {
    pub async fn run(&self) -> Result<CutOverReport> {
        let mut sessions = Sessions::open(self.conn).await?;
        let backoff = crate::error::Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(5), attempts: u32::MAX };
        // Measured from the first attempt, so the back-off between attempts counts too.
        let mut killer = self.kill_blockers_after.map(|after| BlockerKiller::new(tokio::time::Instant::now() + after));
        let mut lost_session = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.check_abort()?;
            self.tally.attempts.fetch_add(1, Ordering::Relaxed);
            match self.try_once(&mut sessions, lost_session, attempt, killer.as_mut()).await {
                Ok(report) => {
                    self.tally.committed(&report);
                    return Ok(report);
                }
                Err(e) => {
                    if !e.is_retryable() || attempt >= self.retries {
                        let e = match sessions.autovacuum.wraparound().first() {
                            Some(w) if e.kind() == ErrorKind::LockTimeout => e.context(autovacuum::wraparound_advice(&w.table)),
                            _ => e,
                        };
                        return Err(e.context(format!("cut-over attempt {attempt}")));
                    }
                    lost_session = e.kind() == ErrorKind::Connection;
                    let delay = backoff.delay(attempt);
                    tracing::warn!(attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "cut-over attempt failed; retrying");
                    self.sleep_unless_aborted(delay).await?;
                }
            }
        }
    }

    /// One attempt with the flusher paused; after a lost connection the lost session is
    /// replaced first (that failing fails the attempt, to be retried like any other), and its
    /// backend ended if it is still there: lost with the network, it would hold the lock on
    /// the tables, idle in its transaction, until the server found its client gone.
    async fn try_once(
        &self,
        sessions: &mut Sessions,
        lost_session: bool,
        attempt: u32,
        killer: Option<&mut BlockerKiller>,
    ) -> Result<CutOverReport> {
        if lost_session {
            if let Some(lost) = sessions.replace_lost(self.conn).await? {
                lost.end(&sessions.monitor).await?;
            }
        }
        self.writer.pause().await?;
        let result = self.attempt(sessions, attempt, killer).await;
        if result.is_err() {
            self.writer.resume().await?;
        }
        result
    }

    /// Whether the cut-over's transaction `t`, whose COMMIT lost its answer with the
    /// connection, committed: asked on a new session (opened again for up to
    /// `--reconnect-timeout`, again when lost meanwhile), once its backend has finished it or,
    /// idle in it, been ended. Then the swap is checked in the catalog: the ghost carries the
    /// original's name exactly when it committed. Where the answer cannot be had, the error
    /// says so and is not one to retry: an attempt tried again over a swap that went through
    /// would fail on the ghost's name, and the cleanup would take the original for untouched.
    async fn commit_went_through(&self, t: &crate::reconnect::Committing) -> Result<bool> {
        let unknown = |e: Error| {
            Error::new(
                ErrorKind::Internal,
                format!(
                    "the cut-over's COMMIT was sent and its answer lost, and whether it went through cannot be learned ({}): \
                     look at which table carries the name {} before anything else (`pg-ghost run --resume` tells)",
                    e.message(),
                    self.orig.name
                ),
            )
        };
        let conn = self.conn.with_application_name("pg-ghost cut-over");
        let (client, committed) = crate::reconnect::ask_committed(&conn, t, "asking whether the cut-over's COMMIT went through").await.map_err(unknown)?;
        let now: Option<u32> = client
            .query_one("SELECT to_regclass($1)::oid", &[&self.orig.name.sql()])
            .await
            .map_err(|e| unknown(e.into()))?
            .try_get(0)?;
        // A swap and back (`--test-on-replica`) leaves the names as they were.
        let swapped = if self.swap_back { committed } else { now == Some(self.ghost.oid) };
        if committed != swapped {
            return Err(unknown(Error::internal(format!(
                "the transaction {} ended as {}, but {} is {}the ghost",
                t.xid,
                if committed { "committed" } else { "rolled back" },
                self.orig.name,
                if swapped { "" } else { "not " }
            ))));
        }
        Ok(committed)
    }

    fn check_abort(&self) -> Result<()> {
        crate::abort::check(&self.abort)
    }

    async fn sleep_unless_aborted(&self, delay: Duration) -> Result<()> {
        crate::abort::sleep_unless_aborted(&self.abort, delay).await
    }

    async fn attempt(&self, sessions: &Sessions, attempt: u32, killer: Option<&mut BlockerKiller>) -> Result<CutOverReport> {
        let client = &sessions.client;
        client.batch_execute("BEGIN").await.context("starting the cut-over transaction")?;
        let mut locked_at = None;
        let result = self.locked_swap(sessions, attempt, killer, &mut locked_at).await;
        match result {
            Ok((report, _)) => Ok(report),
            Err((e, keys)) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if let Some(at) = locked_at {
                    // Writers waited all this time too: a failed attempt's stall is reported.
                    tracing::warn!(attempt, lock_held_ms = at.elapsed().as_millis() as u64, "cut-over attempt rolled back after holding the lock");
                }
                // The attempt's own error says what happened (a COMMIT in doubt, say); a
                // requeue fails only with the apply loop gone, which stops the run anyway.
                if !keys.is_empty() {
                    if let Err(gone) = self.writer.requeue(keys).await {
                        tracing::debug!(error = %gone, "the keys of the failed attempt could not be given back");
                    }
                }
                Err(e)
            }
        }
    }

    /// Takes ACCESS EXCLUSIVE on both tables, and every lock the swap's statements will ask for
    /// (see [`also_locked`]), waiting at most `lock_timeout` in all. While it waits, the
    /// blockers are reported once, and terminated when the killer is due.
    /// Returns what it locked besides the tables, to be checked once the lock is held.
    async fn lock_tables(&self, sessions: &Sessions, attempt: u32, killer: Option<&mut BlockerKiller>) -> Result<Vec<also_locked::AlsoLocked>> {
        let mut tables = vec![self.orig.name.sql(), self.ghost.name.sql()];
        if !self.swap_back {
            tables.extend(swap::referencing_tables(&sessions.client, self.orig.oid).await?.iter().map(QualifiedName::sql));
        }
        let others = also_locked::read(&sessions.client, self.orig.oid, &self.readees()).await?;
        tables.extend(others.iter().filter(|o| o.is_table()).map(|o| o.name.sql()));
        // Views are read before the tables they read, so they are taken before the tables; a
        // sequence is used after its table (an INSERT holds the table when its default calls
        // nextval()), so sequences are taken after the tables. Taken the other way round, such
        // a reader or an INSERT waiting on pg-ghost while holding what pg-ghost waits for
        // closes a deadlock, which the cut-over loses (an attempt failed) but should not meet.
        let renames = |sequences: bool| -> Vec<String> {
            others.iter().filter(|o| (o.kind == "S") == sequences).filter_map(also_locked::AlsoLocked::rename_sql).flatten().collect()
        };
        let (renamed, sequences) = (renames(false), renames(true));
        let several = tables.len() + self.materialized.len() + renamed.len() + sequences.len() > 2;
        let wait = lock_wait_limit(self.lock_timeout, sessions.deadlock_timeout, several);
        if wait < self.lock_timeout && attempt == 1 {
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                deadlock_timeout_ms = sessions.deadlock_timeout.as_millis() as u64,
                "the cut-over waits for its locks less than --cut-over-lock-timeout: under half the server's deadlock_timeout, so that a write waiting behind it is never chosen as a deadlock victim"
            );
        }
        let mut killer = killer;
        self.clear_autovacuum(sessions, &tables, wait, attempt, killer.as_deref_mut()).await?;
        // lock_timeout bounds each table's wait; the statement timeout bounds them together.
        sessions
            .client
            .batch_execute(&format!("SET LOCAL statement_timeout = '{}ms'", wait.as_millis().max(1)))
            .await
            .context("bounding the cut-over lock wait")?;
        // Materialized views and views first, the sequences last, in the same statement.
        let mut lock_sql: Vec<String> = self.materialized.iter().flat_map(|m| m.view.lock_sql()).collect();
        lock_sql.extend(renamed);
        lock_sql.push(format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", tables.join(", ")));
        lock_sql.extend(sequences);
        let sql = match sessions.plpgsql {
            true => also_locked::one_statement(&lock_sql),
            false => lock_sql.join(";\n"),
        };
        // The session's statement_timeout comes back in the same message, a round trip less
        // under the lock: each statement of a simple query has its own timeout (PostgreSQL 13+).
        let sql = format!("{sql};\nSET LOCAL statement_timeout = {}", crate::sql::literal(&sessions.statement_timeout));
        waiting::run(sessions, &sql, wait, attempt, killer, "cut-over lock")
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::LockTimeout if !self.materialized.is_empty() => {
                    let views: Vec<String> = self.materialized.iter().map(|m| m.view.name.to_string()).collect();
                    Error::new(
                        ErrorKind::LockTimeout,
                        format!("could not lock {} and the materialized views that read it ({}) within {wait:?}", self.orig.name, views.join(", ")),
                    )
                }
                ErrorKind::LockTimeout => Error::new(ErrorKind::LockTimeout, format!("could not lock {} within {wait:?}", self.orig.name)),
                _ => e.context("locking the tables"),
            })?;
        Ok(others)
    }

    /// The relations whose views and rules the swap replaces: the table and the materialized
    /// views rebuilt on it.
    fn readees(&self) -> Vec<u32> {
        let mut oids = vec![self.orig.oid];
        oids.extend(self.materialized.iter().map(|m| m.view.oid));
        oids
    }

    /// Under the lock: a view, rule or sequence made while the LOCK waited was not locked with
    /// the tables, and the swap would wait for it holding them. The attempt is tried again.
    async fn check_also_locked(&self, client: &Client, locked: &[also_locked::AlsoLocked]) -> Result<()> {
        let now = also_locked::read(client, self.orig.oid, &self.readees()).await?;
        let new: Vec<String> = now.iter().filter(|o| !locked.contains(o)).map(|o| o.name.to_string()).collect();
        match new.is_empty() {
            true => Ok(()),
            false => Err(Error::new(
                ErrorKind::Busy,
                format!("{} appeared while the cut-over waited for its lock, which did not take them; trying again", new.join(", ")),
            )),
        }
    }

    /// Before the LOCK: autovacuum workers holding a lock on the tables are cancelled, left to
    /// an early deadlock check, or waited for past `deadlock_timeout` (see [`autovacuum`]).
    async fn clear_autovacuum(&self, sessions: &Sessions, tables: &[String], wait: Duration, attempt: u32, killer: Option<&mut BlockerKiller>) -> Result<()> {
        let policy = &sessions.autovacuum;
        if policy.may_lower_deadlock_timeout {
            let lowered = autovacuum::lowered_deadlock_timeout(wait, sessions.deadlock_timeout);
            sessions
                .client
                .batch_execute(&format!("SET LOCAL deadlock_timeout = '{}ms'", lowered.as_millis()))
                .await
                .context("lowering the cut-over session's deadlock_timeout")?;
        }
        let workers = match autovacuum::workers_on(&sessions.monitor, tables).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "could not look for autovacuum workers on the tables to lock");
                Vec::new()
            }
        };
        let Some(table) = policy.before_lock(&sessions.monitor, &workers, attempt).await else { return Ok(()) };
        let long = autovacuum::extended_wait(self.lock_timeout, sessions.deadlock_timeout);
        let ms = long.as_millis().max(1);
        sessions
            .client
            .batch_execute(&format!("SET LOCAL lock_timeout = '{ms}ms'; SET LOCAL statement_timeout = '{ms}ms'"))
            .await
            .context("extending the lock wait past deadlock_timeout")?;
        let lock_sql = format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE");
        waiting::run(sessions, &lock_sql, long, attempt, killer, "cut-over lock (autovacuum in the way)").await.map_err(|e| match e.kind() {
            ErrorKind::LockTimeout => Error::new(ErrorKind::LockTimeout, format!("could not lock {table} within {long:?}, past deadlock_timeout, with an autovacuum worker in the way")),
            _ => e.context("locking the table autovacuum held"),
        })?;
        tracing::info!(attempt, table = %table, "the table autovacuum held is locked; locking the rest");
        let timeout_ms = self.lock_timeout.as_millis().max(1);
        sessions.client.batch_execute(&format!("SET LOCAL lock_timeout = '{timeout_ms}ms'")).await.context("restoring lock_timeout")
    }

    /// A DDL on the original that no later change announced on the stream is caught here,
    /// under the lock, before anything is swapped.
    async fn check_definition_unchanged(&self, client: &Client) -> Result<()> {
        let shape = |cols: &[crate::schema::Column]| cols.iter().map(|c| (c.name.clone(), c.type_sql.clone())).collect::<Vec<_>>();
        let tree = async {
            match self.ghost.partitions.as_ref().filter(|t| !t.converted) {
                Some(_) => crate::ghost::partitions::PartitionTree::read(client, self.orig.oid).await,
                None => Ok(None),
            }
        };
        let (now, tree_now) = tokio::try_join!(biased; crate::inspect::columns(client, self.orig.oid), tree)?;
        if shape(&now) != shape(&self.orig.columns) {
            return Err(Error::new(
                ErrorKind::SchemaChanged,
                format!("the definition of {} changed during the run; the cut-over is abandoned and the original is untouched", self.orig.name),
            ));
        }
        // A converted table's tree is the ghost's own: the original has none to compare.
        if let Some(tree) = self.ghost.partitions.as_ref().filter(|t| !t.converted) {
            crate::ghost::partitions::check_unchanged(&self.orig.name, tree, tree_now.as_ref())?;
        }
        Ok(())
    }

    async fn locked_swap(
        &self,
        sessions: &Sessions,
        attempt: u32,
        killer: Option<&mut BlockerKiller>,
        held_since: &mut Option<Instant>,
    ) -> std::result::Result<(CutOverReport, ()), (Error, Vec<Key>)> {
        let fail = |e: Error| (e, Vec::new());
        let (client, monitor) = (&sessions.client, &sessions.monitor);
        let timeout_ms = self.lock_timeout.as_millis().max(1);
        // The sentinel's emit and delivery (bounded together by `sentinel_limit`) are the
        // longest the transaction sits idle; should the connection go (the network, not the
        // server), the server ends the transaction and lets go of the tables soon after that,
        // not when it finds its client gone.
        let sentinel_limit = (self.lock_timeout * 3).max(Duration::from_secs(2));
        let idle_ms = (sentinel_limit + IDLE_PAST_SENTINEL).as_millis();
        client
            .batch_execute(&format!("SET LOCAL lock_timeout = '{timeout_ms}ms'; SET LOCAL idle_in_transaction_session_timeout = '{idle_ms}ms'"))
            .await
            .map_err(|e| fail(e.into()))?;
        let wait_started = Instant::now();
        let also_locked = self.lock_tables(sessions, attempt, killer).await.map_err(fail)?;
        let lock_wait = wait_started.elapsed();
        let locked_at = Instant::now();
        *held_since = Some(locked_at);
        tracing::info!(attempt, wait_ms = lock_wait.as_millis() as u64, "cut-over lock acquired");
        // Both checks' queries go out together: every round trip here holds up writers.
        tokio::try_join!(biased; self.check_definition_unchanged(client), self.check_also_locked(client, &also_locked)).map_err(fail)?;

        let sentinel = format!("cut-over {} {}", std::process::id(), attempt);
        let drain = self.writer.expect_sentinel(&sentinel).await.map_err(fail)?;
        // The emit and the stream's delivery of it, bounded together: the locking session sits
        // idle all that time (see `idle_ms`).
        let limit = sentinel_limit;
        let delivered = async {
            monitor
                .query_typed("SELECT pg_logical_emit_message(true, $1, $2)", &[(&MESSAGE_PREFIX, Type::TEXT), (&sentinel, Type::TEXT)])
                .await
                .map_err(|e| Error::from(e).context("emitting the cut-over sentinel"))?;
            drain.await.map_err(|_| crate::apply::writer::loop_gone("before the sentinel arrived"))
        };
        let keys = match tokio::time::timeout(limit, delivered).await {
            Ok(Ok(keys)) => keys,
            Ok(Err(e)) => return Err(fail(e)),
            Err(_) => {
                return Err(fail(Error::new(
                    ErrorKind::LockTimeout,
                    format!("the cut-over sentinel was not emitted and delivered by the stream within {limit:?} while the table was locked"),
                )))
            }
        };
        let final_keys = keys.len();
        let work = async {
            if self.origins_left_out {
                crate::replication::origins::refuse_if_foreign(client).await?;
            }
            for batch in keys.chunks(20_000) {
                self.flush.run(client, batch).await?;
            }
            let swapped = if self.swap_back {
                swap_back::swap_and_back(client, self.orig, self.ghost, self.old_table).await?;
                swap::Swapped::default()
            } else if let Window::Revert { recorded, changelog, reverse_publication } = self.window {
                // The reverse mapping carries (new column, old column).
                let pairs = &self.ghost.mapping.carried;
                let carried: Vec<(String, String)> = pairs.iter().map(|(n, o)| (o.clone(), n.clone())).collect();
                let tables = crate::dependents::back::Tables {
                    name: &self.orig.name,
                    new_oid: self.orig.oid,
                    new_columns: &self.orig.columns,
                    old: &self.ghost.name,
                    old_oid: self.ghost.oid,
                    carried: pairs,
                };
                let back = crate::dependents::back::read(client, &tables, reverse_publication, Some(self.materialized)).await?;
                let statements = swap_back::revert(client, recorded, &self.ghost.name, &self.orig.name, &carried, &back).await?;
                crate::checkpoint::record(client, &crate::checkpoint::upsert_sql(changelog), crate::checkpoint::STATE, crate::checkpoint::STATE_REVERTED)
                    .await
                    .context("recording the revert with it")?;
                tracing::info!(attempt, statements = statements.len(), dependents = back.count, "swap-back statements ran under the lock");
                swap::Swapped { statements, validations: back.validations, dependents: back.count, ..Default::default() }
            } else {
                if let Window::Open { changelog, .. } = self.window {
                    let names = swap_back::record_names(client, self.orig.oid, self.ghost.oid).await?;
                    crate::checkpoint::record(client, &crate::checkpoint::upsert_sql(changelog), crate::checkpoint::REVERT_NAMES, &names)
                        .await
                        .context("recording the names before the swap, for the revert window")?;
                }
                let swap_started = Instant::now();
                let mut swapped = swap::swap(client, self.orig, self.ghost, self.old_table, Some(self.materialized)).await?;
                if let Window::Open { .. } = self.window {
                    let old = self.orig.name.sibling(self.old_table.to_string());
                    swapped.statements.extend(crate::dependents::back::quiet_old_table(client, self.orig.oid, &old).await?);
                }
                tracing::info!(
                    attempt,
                    dependents = swapped.dependents,
                    dependents_read_ms = swapped.dependents_read.as_secs_f64() * 1000.0,
                    swap_ms = swap_started.elapsed().as_secs_f64() * 1000.0,
                    statements = swapped.statements.len(),
                    "swap statements ran under the lock"
                );
                if let Window::Open { marker, changelog } = self.window {
                    // The marker's position is recorded with the swap: the reverse stream drops
                    // every transaction that committed up to it (see `ChangeExtractor::skipping_through`).
                    let sql = format!(
                        "INSERT INTO {} (key, value) SELECT $1, pg_logical_emit_message(true, $2, $3)::text
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = clock_timestamp()",
                        changelog.sql()
                    );
                    client
                        .execute(sql.as_str(), &[&crate::checkpoint::REVERT_MARKER_LSN, &MESSAGE_PREFIX, &marker])
                        .await
                        .context("marking the swap in the stream, for the revert window")?;
                }
                swapped
            };
            crate::fault::crash_point("cut-over-before-commit");
            crate::fault::freeze_point("cut-over-freeze-before-commit");
            let committing = crate::reconnect::committing(client).await?;
            let commit = if crate::fault::reply_lost("cut-over-commit-unsent") {
                Err(Error::new(ErrorKind::Connection, "fault injection: the connection was lost before the COMMIT reached the server"))
            } else {
                match client.batch_execute("COMMIT").await {
                    Ok(()) if crate::fault::reply_lost("cut-over-commit") => Err(Error::new(ErrorKind::Connection, "fault injection: the answer to the COMMIT was lost")),
                    other => other.map_err(Error::from),
                }
            };
            if let Err(e) = commit {
                let e = e.context("committing the cut-over");
                let Some(t) = committing.filter(|_| e.kind().is_lost_connection()) else { return Err(e) };
                // Taken for a failed attempt, a swap that went through would be tried again.
                if !self.commit_went_through(&t).await? {
                    return Err(Error::new(ErrorKind::Connection, "the cut-over's COMMIT was lost with its connection and did not go through"));
                }
                tracing::warn!(attempt, xid = t.xid, "the answer to the cut-over's COMMIT was lost with its connection, but the COMMIT went through");
            }
            crate::fault::crash_point("cut-over-after-commit");
            Ok::<_, Error>(swapped)
        };
        let swapped = match work.await {
            Ok(s) => s,
            Err(e) => return Err((e, keys)),
        };
        let lock_held = locked_at.elapsed();
        tracing::info!(attempt, lock_held_ms = lock_held.as_millis() as u64, final_keys, dependents = swapped.dependents, "cut-over committed");
        let report = CutOverReport { attempts: attempt, lock_held, lock_wait, final_keys, validations: swapped.validations, dependents: swapped.dependents, publications: swapped.publications };
        Ok((report, ()))
    }
}

/// How long the cut-over's LOCK may wait in all. When it locks relations the application uses
/// together (the referencing tables of moved foreign keys, views, sequences), a session can
/// hold one of them and wait behind the LOCK for another: a deadlock. PostgreSQL looks for one `deadlock_timeout`
/// after a session starts waiting and aborts whoever looks first; every write caught in such a
/// cycle started waiting after the LOCK did, so a LOCK that gives up within half of
/// `deadlock_timeout` (margin for a loaded server) is always gone before any write looks.
/// A lone table cannot be in such a cycle (nobody else touches the ghost).
pub(crate) fn lock_wait_limit(lock_timeout: Duration, deadlock_timeout: Duration, several_tables: bool) -> Duration {
    if several_tables {
        lock_timeout.min(deadlock_timeout / 2).max(Duration::from_millis(1))
    } else {
        lock_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_wait_stays_under_half_the_deadlock_timeout_only_with_several_tables() {
        let ms = Duration::from_millis;
        assert_eq!(lock_wait_limit(ms(1000), ms(1000), true), ms(500));
        assert_eq!(lock_wait_limit(ms(200), ms(1000), true), ms(200));
        assert_eq!(lock_wait_limit(ms(1000), ms(1000), false), ms(1000));
        assert_eq!(lock_wait_limit(ms(1000), ms(1), true), ms(1));
    }
}
