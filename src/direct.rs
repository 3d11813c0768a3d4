//! The direct way: a change that rewrites nothing is made on the table itself, step by step
//! (see `plan::steps`). A step that takes a lock that blocks writes waits at most the
//! cut-over's lock timeout (its statement, lock wait and all, is bounded by it, so writers
//! queue behind it no longer), names who is in its way, is retried after a back-off, and
//! with `--cut-over-kill-blockers-after` terminates them, exactly as the cut-over's LOCK.
//! Validations run under SHARE UPDATE EXCLUSIVE, which lets writes go on; an index is built
//! `CONCURRENTLY`, and one a failure leaves invalid is dropped; both wait while the run is
//! throttled, as the copy does. A validation that fails (or is aborted) drops the constraint
//! its clause added `NOT VALID` just before. An abort cancels the statement under way. A dry run takes
//! each step's locks and releases them, changing nothing.

use crate::concurrent_index;
use crate::conn::ConnInfo;
use crate::copy::GateState;
use crate::cutover::sessions::{LostStatement, Sessions};
use crate::cutover::{autovacuum, waiting, BlockerKiller};
use crate::error::{Backoff, Context, Error, ErrorKind, Result};
use crate::plan::{Step, StepKind};
use crate::sql::{ident, QualifiedName, MAX_IDENT_BYTES};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a locked step's transaction may sit idle between two of its statements before
/// the server ends it: only a lost connection leaves it idle for more than a round trip.
const IDLE_IN_LOCKED_STEP: Duration = Duration::from_secs(5);

pub struct Direct<'a> {
    pub conn: &'a ConnInfo,
    pub table: &'a QualifiedName,
    pub steps: &'a [Step],
    pub lock_timeout: Duration,
    pub retries: u32,
    pub kill_blockers_after: Option<Duration>,
    pub abort: watch::Receiver<Option<String>>,
    pub dry_run: bool,
    /// The run's throttle: a step that reads the whole table starts only while it is open.
    pub gate: watch::Receiver<GateState>,
}

/// Where a step is, as it goes: for the history of runs and the status.
#[derive(Clone, Debug)]
pub enum StepState {
    /// Its first attempt begins.
    Running,
    /// Done (in a dry run: its locks taken and released).
    Done { attempts: u32, elapsed: Duration },
    /// Given up: the run fails with `error`.
    Failed { attempts: u32, elapsed: Duration, error: String },
}

#[derive(Clone, Debug, Default)]
pub struct DirectReport {
    pub steps: usize,
    /// Attempts over all steps (one per step when nothing was in the way).
    pub attempts: u32,
}

impl Direct<'_> {
    /// Runs the steps in order; `report` hears of each (by its index) as it starts and ends.
    pub async fn run(&self, report_step: &(dyn Fn(usize, StepState) + Sync)) -> Result<DirectReport> {
        let mut sessions = Sessions::open(self.conn).await?;
        check_new_names(&sessions.client, self.table, self.steps).await?;
        let backoff = Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(5), attempts: u32::MAX };
        let mut killer = self.kill_blockers_after.map(|after| BlockerKiller::new(tokio::time::Instant::now() + after));
        let mut report = DirectReport::default();
        for (i, step) in self.steps.iter().enumerate() {
            self.check_abort()?;
            if step.kind != StepKind::Locked && !self.dry_run {
                self.wait_while_throttled().await?;
            }
            let started = Instant::now();
            report_step(i, StepState::Running);
            let mut attempt = 0;
            loop {
                attempt += 1;
                report.attempts += 1;
                match self.attempt_unless_aborted(&sessions, step, attempt, killer.as_mut()).await {
                    Ok(()) => break,
                    Err(e) if e.is_retryable() && attempt < self.retries => {
                        let delay = backoff.delay(attempt);
                        tracing::warn!(step = i + 1, attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "direct step failed; retrying");
                        let replaced = match e.kind() {
                            ErrorKind::Connection => self.after_lost(&mut sessions, step).await,
                            _ => Ok(()),
                        };
                        let waited = match replaced {
                            Ok(()) => self.sleep_unless_aborted(delay).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = waited {
                            let error = format!("{e}{}", self.undo(&mut sessions, step, &backoff).await);
                            report_step(i, StepState::Failed { attempts: attempt, elapsed: started.elapsed(), error });
                            return Err(e);
                        }
                    }
                    Err(e) => {
                        let error = format!("{e}{}", self.undo(&mut sessions, step, &backoff).await);
                        report_step(i, StepState::Failed { attempts: attempt, elapsed: started.elapsed(), error });
                        return Err(e.context(format!("step {} of {} ({})", i + 1, self.steps.len(), step.sql)));
                    }
                }
            }
            report_step(i, StepState::Done { attempts: attempt, elapsed: started.elapsed() });
            tracing::info!(step = i + 1, of = self.steps.len(), attempt, secs = started.elapsed().as_secs_f64(), dry_run = self.dry_run, sql = %step.sql, "direct step done");
            report.steps += 1;
        }
        Ok(report)
    }

    /// After `step` failed for good: runs its undo (a constraint added `NOT VALID` by the step
    /// before, which would not validate, is dropped again), under the same short lock and
    /// retries as any step, even when the run is aborted. Returns what to add to the step's
    /// error: what was undone, or the statement the DBA must run by hand.
    async fn undo(&self, sessions: &mut Sessions, step: &Step, backoff: &Backoff) -> String {
        let Some(sql) = step.undo.clone().filter(|_| !self.dry_run) else { return String::new() };
        let undo = Step { sql: sql.clone(), kind: StepKind::Locked, locks: vec![(self.table.sql(), "AccessExclusiveLock".into())], undo: None, creates: None };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_step(sessions, &undo, attempt, None).await {
                Ok(()) => {
                    tracing::info!(sql = %sql, "the failed step's clause was undone: nothing of it is left");
                    return format!("; undone: {sql}");
                }
                Err(e) if e.is_retryable() && attempt < self.retries.max(3) => {
                    if e.kind() == ErrorKind::Connection {
                        if let Err(e) = self.after_lost(sessions, &undo).await {
                            tracing::error!(sql = %sql, error = %e, "could not undo the failed step's clause; run it by hand");
                            return format!("; not undone, run by hand: {sql}");
                        }
                    }
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
                Err(e) => {
                    tracing::error!(sql = %sql, error = %e, "could not undo the failed step's clause; run it by hand");
                    return format!("; not undone, run by hand: {sql}");
                }
            }
        }
    }

    /// After `step` lost its session: opens it again, and deals with the lost session's
    /// backend if it goes on (lost with the network, the server does not know yet). An index
    /// build is waited for (it carries on to its end, and what it built is looked at by the
    /// next attempt: kept when valid); any other step's transaction can never commit, and would
    /// hold its locks (writers queue behind an ACCESS EXCLUSIVE one) until the server found its
    /// client gone: its backend is ended.
    async fn after_lost(&self, sessions: &mut Sessions, step: &Step) -> Result<()> {
        let what = match &step.kind {
            StepKind::ConcurrentIndex { index } => Some(format!("the build of index {index}")),
            _ => None,
        };
        let statement = match &what {
            Some(what) => LostStatement::OnItsOwn { what },
            None => LostStatement::InTransaction,
        };
        sessions.replace_after_loss(self.conn, statement).await
    }

    /// One attempt at a step; an abort (panic flag or command, signal, critical load) while
    /// its statement runs (a validation or an index build can read for hours) cancels the
    /// statement, and the step cleans up as after any failure: rolled back, no invalid index
    /// left. A step that got to commit before the cancel arrived counts as done; the run
    /// stops before the next one.
    async fn attempt_unless_aborted(&self, sessions: &Sessions, step: &Step, attempt: u32, killer: Option<&mut BlockerKiller>) -> Result<()> {
        let attempt_fut = self.try_step(sessions, step, attempt, killer);
        tokio::pin!(attempt_fut);
        let mut abort = self.abort.clone();
        tokio::select! {
            biased;
            r = &mut attempt_fut => r,
            why = crate::runner::aborted(&mut abort) => {
                tracing::warn!(reason = %why, sql = %step.sql, "aborting: cancelling the step's statement");
                if let Err(e) = sessions.monitor.query_one("SELECT pg_cancel_backend($1)", &[&sessions.pid]).await {
                    tracing::warn!(error = %Error::from(e), "could not cancel the step's statement; waiting for it to end");
                }
                match attempt_fut.await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Error::new(ErrorKind::Aborted, why)),
                }
            }
        }
    }

    /// An autovacuum worker on the step's table, as at the cut-over: cancelled where the role
    /// may; else the wait goes past `deadlock_timeout`, when PostgreSQL cancels it, but only for
    /// a step that locks one table (with two, a write could hold one and wait behind the step
    /// for the other: see `lock_wait_limit`). Anti-wraparound workers are named, never cancelled.
    async fn wait_with_autovacuum(&self, sessions: &Sessions, step: &Step, wait: Duration, attempt: u32) -> Duration {
        let tables: Vec<String> = step.locks.iter().map(|(t, _)| t.clone()).collect();
        let workers = match autovacuum::workers_on(&sessions.monitor, &tables).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "could not look for autovacuum workers on the step's tables");
                return wait;
            }
        };
        match sessions.autovacuum.before_lock(&sessions.monitor, &workers, attempt).await {
            Some(_) if step.locks.len() == 1 => autovacuum::extended_wait(self.lock_timeout, sessions.deadlock_timeout).max(wait),
            _ => wait,
        }
    }

    /// Commits a locked step. A COMMIT whose answer is lost with the connection may have gone
    /// through: how its transaction ended is asked on a new session, and a step that committed
    /// is done (tried again, its ALTER would fail on what it made, and the failure be undone).
    async fn commit_step(&self, c: &tokio_postgres::Client) -> Result<()> {
        let committing = crate::reconnect::committing(c).await?;
        let e = match c.batch_execute("COMMIT").await {
            Ok(()) if crate::fault::reply_lost("direct-commit") => Error::new(ErrorKind::Connection, "fault injection: the answer to the step's COMMIT was lost"),
            Ok(()) => return Ok(()),
            Err(e) => Error::from(e).context("committing the step"),
        };
        let Some(t) = committing.filter(|_| e.kind().is_lost_connection()) else { return Err(e) };
        let (_, committed) = crate::reconnect::ask_committed(self.conn, &t, "asking whether the step's COMMIT went through").await?;
        if !committed {
            return Err(e);
        }
        tracing::warn!(xid = t.xid, "the answer to the step's COMMIT was lost with its connection, but the COMMIT went through");
        Ok(())
    }

    async fn try_step(&self, sessions: &Sessions, step: &Step, attempt: u32, killer: Option<&mut BlockerKiller>) -> Result<()> {
        let several = step.locks.len() > 1;
        let wait = crate::cutover::lock_wait_limit(self.lock_timeout, sessions.deadlock_timeout, several);
        let wait = match self.dry_run {
            true => wait,
            false => self.wait_with_autovacuum(sessions, step, wait, attempt).await,
        };
        let lock_timeout = self.lock_timeout.max(wait);
        // Where the role may, PostgreSQL is asked to cancel an autovacuum worker in the way
        // early in the wait, as at the cut-over (in the step's transaction only).
        let early = match sessions.autovacuum.may_lower_deadlock_timeout {
            true => format!("; SET LOCAL deadlock_timeout = '{}ms'", autovacuum::lowered_deadlock_timeout(wait, sessions.deadlock_timeout).as_millis().max(1)),
            false => String::new(),
        };
        let c = &sessions.client;
        let ms = |d: Duration| d.as_millis().max(1);
        match (&step.kind, self.dry_run) {
            (_, true) => {
                let locks: Vec<String> = step.locks.iter().map(|(table, mode)| format!("LOCK TABLE {table} IN {} MODE", crate::plan::lock_mode_sql(mode))).collect();
                c.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'", ms(self.lock_timeout), ms(wait))).await?;
                let r = waiting::run(sessions, &locks.join(";\n"), wait, attempt, killer, "direct step (dry run)").await;
                let _ = c.batch_execute("ROLLBACK").await;
                r
            }
            (StepKind::Locked, false) => {
                // The statement timeout bounds the lock wait and the (catalog-only) work together:
                // writers queue behind it for no longer.
                // Should the connection go between the statement and its COMMIT, the server ends
                // the transaction, and its lock, soon after, not when it finds the client gone.
                let idle = IDLE_IN_LOCKED_STEP;
                c.batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'; SET LOCAL idle_in_transaction_session_timeout = '{}ms'{early}",
                    ms(lock_timeout),
                    ms(wait),
                    ms(idle)
                ))
                .await?;
                match waiting::run(sessions, &step.sql, wait, attempt, killer, "direct step").await {
                    Ok(()) => {
                        crate::fault::freeze_point("direct-freeze-before-commit");
                        self.commit_step(c).await
                    }
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        Err(e)
                    }
                }
            }
            (StepKind::Validate, false) => {
                // Only the wait for SHARE UPDATE EXCLUSIVE is bounded; the scan takes what it takes.
                c.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{}ms'{early}", ms(lock_timeout))).await?;
                match waiting::run(sessions, &step.sql, lock_timeout, attempt, killer, "validation").await {
                    Ok(()) => self.commit_step(c).await,
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        Err(e)
                    }
                }
            }
            (StepKind::ConcurrentIndex { index }, false) => {
                // The name was free before the first step (`check_new_names`): an index of that
                // name on the table is what an earlier attempt of this step left, its session
                // lost (and waited for, `after_lost`). Valid, it is built; invalid, built again.
                let table = self.table.sql();
                if concurrent_index::valid(c, &table, index).await? == Some(true) {
                    tracing::warn!(index = %index, "the index an attempt whose session was lost was building is built and valid: kept");
                    return Ok(());
                }
                concurrent_index::drop_if_invalid(c, &table, index).await?;
                // CONCURRENTLY cannot run in a transaction: the session's own setting bounds the wait.
                c.batch_execute(&format!("SET lock_timeout = '{}ms'", ms(lock_timeout))).await?;
                let built = waiting::run(sessions, &step.sql, lock_timeout, attempt, killer, "index build").await;
                let reset = c.batch_execute("RESET lock_timeout").await;
                match built {
                    // Its session is gone, and may go on building: the next attempt looks.
                    Err(e) if e.kind().is_lost_connection() => Err(e),
                    Err(e) => {
                        // A failed CONCURRENTLY leaves an invalid index behind: never keep it.
                        if let Err(drop) = concurrent_index::drop_if_invalid(c, &table, index).await {
                            tracing::error!(index = %index, error = %drop, "could not drop the invalid index the failed build left; drop it by hand");
                        }
                        Err(e)
                    }
                    Ok(()) => reset.map_err(Error::from),
                }
            }
        }
    }

    fn check_abort(&self) -> Result<()> {
        crate::abort::check(&self.abort)
    }

    async fn sleep_unless_aborted(&self, delay: Duration) -> Result<()> {
        crate::abort::sleep_unless_aborted(&self.abort, delay).await
    }

    async fn wait_while_throttled(&self) -> Result<()> {
        let mut gate = self.gate.clone();
        let mut said = false;
        loop {
            let state = gate.borrow_and_update().clone();
            match state {
                GateState::Open => return Ok(()),
                GateState::Abort(why) => return Err(Error::new(ErrorKind::Aborted, why)),
                GateState::Throttled(why) => {
                    if !said {
                        tracing::info!(reason = %why, "throttled: the next step reads the whole table and waits");
                        said = true;
                    }
                    let mut abort = self.abort.clone();
                    tokio::select! {
                        changed = gate.changed() => if changed.is_err() {
                            return Err(Error::new(ErrorKind::Aborted, "the throttler stopped"));
                        },
                        _ = abort.wait_for(|a| a.is_some()) => return self.check_abort(),
                    }
                }
            }
        }
    }
}

/// Refuses, before anything is changed, a step that would create an index or a constraint
/// under a name that is taken, or one longer than PostgreSQL keeps. The plan numbers a name
/// PostgreSQL chooses as PostgreSQL would (`crate::plan`'s names); what is left is a name the
/// DBA gave that is in use (a plain ALTER fails on it too), one taken since the plan, and one
/// PostgreSQL would cut its own way. (Taken, the step would fail or PostgreSQL pick another
/// name, and the clean-up after a failure, an invalid index dropped or a constraint's undo,
/// would hit the object that holds the name.)
async fn check_new_names(client: &tokio_postgres::Client, table: &QualifiedName, steps: &[Step]) -> Result<()> {
    for new in steps.iter().filter_map(|s| s.creates.as_ref()) {
        let what = if new.index { "index" } else { "constraint" };
        let advice = "name it in the ALTER (`ADD CONSTRAINT <name> ...`)";
        if new.name.len() > MAX_IDENT_BYTES || new.cut {
            return Err(Error::refused(format!(
                "the {what} the ALTER adds would get a name PostgreSQL cuts to {MAX_IDENT_BYTES} bytes, its own way on the table ({} on a trial): {advice}",
                ident(&new.name)
            )));
        }
        let holder: Option<String> = client
            .query_opt(
                "SELECT format('%s %s', CASE c.relkind WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                                                    WHEN 'm' THEN 'materialized view' ELSE 'table' END, c.oid::regclass)
                   FROM pg_catalog.pg_class c
                  WHERE $3 AND c.relname = $2 AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = $1::text::regclass)
                 UNION ALL
                 SELECT format('constraint %I of %s', conname, conrelid::regclass) FROM pg_catalog.pg_constraint
                  WHERE conrelid = $1::text::regclass AND conname = $2
                 LIMIT 1",
                &[&table.sql(), &new.name, &new.index],
            )
            .await
            .context("looking for the names the direct steps give")?
            .map(|r| r.try_get(0))
            .transpose()?;
        if let Some(holder) = holder {
            return Err(Error::refused(format!("the {what} the ALTER adds would be named {}, which {holder} already has: {advice}", ident(&new.name))));
        }
    }
    Ok(())
}
