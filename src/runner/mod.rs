//! The run, as a linear script over phases: inspect → prepare → stream → copy → build
//! indexes → catch up → postpone → cut-over → cleanup.
//!
//! The runner owns every task and connection it starts. Each phase runs under a guard that
//! stops it when the run is aborted (panic flag, signal) or a background task (stream,
//! apply) fails. Cleanup runs on every exit path: the slot and the publication are always
//! dropped (a forgotten slot retains WAL until the disk fills); the ghost is dropped after a
//! dry run and kept for inspection after a failure.
//!
//! Every run records itself in the history of runs ([`crate::history`]) as it goes: the
//! phases it enters, the rows copied, the cut-over's attempts and lock time, how it ended.

mod cleanup;
mod controls;
mod dropping;
mod replica;
mod replication;
mod resume;
mod status;
mod watchers;
pub(crate) mod window;

pub use cleanup::cleanup;
pub use replica::ReplicaReport;
pub use window::{request as window_request, Request as WindowRequest};

use crate::alter;
use crate::config::Config;
use crate::copy::{copy_table, CopyJob, CopyProgress, GateState};
use crate::cutover::{CutOver, MESSAGE_PREFIX};
use crate::datacheck;
use crate::dependents::{self, materialized};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::{self, Ghost};
use crate::checkpoint;
use crate::checksum::{self, ChecksumJob};
use crate::history::{self, History};
use crate::hooks::HookEvent;
use futures_util::future::BoxFuture;
use crate::inspect::{self, PreflightOptions};
use crate::lsn::Lsn;
use crate::metrics::{self, MetricsServer};
use crate::names::Names;
use crate::phase::Phase;
use crate::reconnect::{self, Outage};
use crate::schema::TableInfo;
use crate::replication::slot;
use crate::sql::QualifiedName;
use crate::throttle::{forward_gate, ThrottleJob, Throttler};
use controls::Controls;
use replication::{Background, Replication};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::Client;

/// How a successful run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The swap committed.
    CutOver,
    /// Without `--execute`: everything but the swap checked out and was cleaned up.
    DryRunComplete,
    /// `--test-on-replica`: swapped and swapped back, both tables compared and left.
    ReplicaTested(ReplicaReport),
    /// The direct way: the table itself changed, step by step, without a copy.
    Direct { steps: usize, attempts: u32 },
    /// `--revertible-for`: the swap committed, then `pg-ghost revert` swapped the original
    /// back, with every write made in the window.
    Reverted,
}

/// The way a run takes, with what each needs to go on. Made once per run: the size of its
/// variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Way {
    Direct { table: inspect::Described, steps: Vec<crate::plan::Step> },
    Ghost { info: TableInfo, found: Option<resume::Found> },
}

/// The way chosen from the plan, before the checks.
enum Choice {
    Direct(Vec<crate::plan::Step>),
    /// With why, when `auto` chose it because a clause rewrites the table.
    Ghost(Option<String>),
}

/// Keys still pending below which the stream counts as caught up for the cut-over.
const CAUGHT_UP_KEYS: usize = 1_000;

/// What [`Run::wait_for_apply`] waits for, once the stream has passed a marker.
#[derive(Clone, Copy)]
enum CatchUp {
    /// The backlog is under [`CAUGHT_UP_KEYS`].
    SmallBacklog,
    /// Every change up to the marker is written to the ghost.
    Applied,
}

/// Where the row copy starts.
enum CopyFrom {
    /// From the start, into the empty ghost this run created.
    Fresh,
    /// A resumed run's copy: after this key (None: from the start), a partition after its
    /// own watermark, into a ghost that may hold some of the rows already.
    After(Option<crate::copy::Bound>, BTreeMap<String, crate::copy::Bound>),
    /// A resumed run's copy into a ghost that has no index on its key yet: the rows past the
    /// watermark (None: all; a partition's, its own) were removed, so it goes on as a fresh
    /// copy from there.
    FreshAfter(Option<crate::copy::Bound>, BTreeMap<String, crate::copy::Bound>),
    /// Nowhere: a resumed run whose copy had finished.
    Done,
}

/// What this run has created so far, so cleanup removes exactly that.
#[derive(Default)]
struct Created {
    changelog: bool,
    ghost: bool,
    publication: bool,
    slot: bool,
    /// The revert window's publication and slot (`Names::reverse`).
    reverse: bool,
}

struct Run {
    cfg: Config,
    client: Client,
    phase: watch::Sender<Phase>,
    abort: watch::Receiver<Option<String>>,
    abort_tx: Arc<watch::Sender<Option<String>>>,
    controls: Controls,
    created: Created,
    names: Option<Names>,
    /// The name the original took at the cut-over, once it committed.
    old_table: Option<String>,
    /// Counted as the checksum and the cut-over go, for the metrics.
    checksum_progress: Arc<checksum::ChecksumProgress>,
    cut_over_tally: Arc<crate::cutover::CutOverTally>,
    /// What the trial ghost says the existing rows must pass (not on a resumed run).
    data_checks: Option<datacheck::Checks>,
    history: History,
    /// Materialized views built on the ghost for the cut-over.
    materialized: Vec<materialized::Built>,
    /// The marker the swap emits for the revert window (`--revertible-for`).
    window_marker: Option<String>,
    /// Keep the old table whatever `--ok-to-drop-table` says (the revert turned impossible).
    keep_old_table: bool,
    /// The partitions the copy and the checksum walk one by one, once found.
    walks: Option<Vec<Arc<crate::copy::Part>>>,
}

/// A run on behalf of `migrate` or `fleet`, which may be the second attempt at the change
/// after the first was killed: an earlier run that left its changelog table is resumed (its
/// copy and slot taken up, as `--resume` does) rather than refused for what it left.
pub async fn run_or_resume(cfg: Config) -> Result<Outcome> {
    let client = main_conn(&cfg).connect().await?;
    let table = inspect::resolve_table(&client, &cfg.table).await?;
    let oid: Option<u32> = client.query_one("SELECT to_regclass($1)::oid", &[&table.sql()]).await?.try_get(0)?;
    let left = match oid {
        Some(oid) => client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&Names::for_table(&table, oid).changelog.sql()]).await?.try_get(0)?,
        None => false,
    };
    drop(client);
    if left {
        tracing::info!(table = %table, "an earlier run of this change was cut short: resuming it");
    }
    run(Config { resume: left, ..cfg }).await
}

pub async fn run(cfg: Config) -> Result<Outcome> {
    // Bound first: an address that cannot be used stops the run before it connects.
    let mut metrics = cfg.metrics_listen.map(MetricsServer::bind).transpose()?;
    // Every session of the run goes to the one server chosen here (`host=a,b`).
    let cfg = Config { conn: cfg.conn.resolve().await?, ..cfg };
    let controls = Controls::new(&cfg)?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Inspect);
    let (abort_tx, abort_rx) = watch::channel(None);
    let abort_tx = Arc::new(abort_tx);
    let checksum_progress = Arc::<checksum::ChecksumProgress>::default();
    let cut_over_tally = Arc::<crate::cutover::CutOverTally>::default();
    if let Some(server) = metrics.as_mut() {
        server.serve(metrics::Sources {
            phase: phase_tx.subscribe(),
            progress: controls.progress.subscribe(),
            checksum: checksum_progress.clone(),
            cut_over: cut_over_tally.clone(),
            reconnects: cfg.conn.reconnects.clone(),
        })?;
    }
    let watchers = watchers::spawn(cfg.panic_flag_file.clone(), abort_tx.clone());
    controls.fire(HookEvent::Startup).await?;
    let client = main_conn(&cfg).connect().await?;
    let history = History::open(&cfg).await?;
    let mut run = Run {
        cfg,
        client,
        phase: phase_tx,
        abort: abort_rx,
        abort_tx,
        controls,
        created: Created::default(),
        names: None,
        old_table: None,
        checksum_progress,
        cut_over_tally,
        data_checks: None,
        history,
        materialized: Vec::new(),
        window_marker: None,
        keep_old_table: false,
        walks: None,
    };
    let mut background = None;
    let result = run.phases(&mut background, phase_rx).await;
    run.phase.send_replace(Phase::Cleanup);
    run.history.enter(Phase::Cleanup);
    let cleaned = match &result {
        Err(e) if e.kind() == ErrorKind::FailedOver => run.leave_for_resume(background).await,
        _ => run.cleanup(background, result.is_ok()).await,
    };
    watchers.abort();
    // Before the final hook, so that the hook finds the run's end in the history.
    let ended = match (&result, &cleaned) {
        (Err(e), _) => Err((e, false)),
        (Ok(_), Err(e)) => Err((e, true)),
        (Ok(outcome), Ok(())) => Ok(history_outcome(outcome)),
    };
    match ended {
        Ok(outcome) => run.history.finish(Ok(outcome), false).await,
        Err((e, in_cleanup)) => run.history.finish(Err(e), in_cleanup).await,
    }
    run.phase.send_replace(if result.is_ok() { Phase::Done } else { Phase::Failed });
    let final_hook = match &result {
        Ok(_) => run.controls.fire(HookEvent::Success).await,
        Err(e) => {
            run.controls.update_env(|env| env.with_error(e.to_string()));
            run.controls.fire(HookEvent::Failure).await
        }
    };
    if let Err(e) = final_hook {
        // A failing hook at the end must not hide how the run ended.
        tracing::warn!(error = %e, "the final hook failed");
    }
    run.controls.shutdown().await;
    // Served to the end, the final hooks included, so the last scrape sees how it ended.
    drop(metrics);
    let outcome = result?;
    cleaned?;
    Ok(outcome)
}

impl Run {
    /// The way this run takes, from what PostgreSQL does for each clause (`pg-ghost plan`),
    /// before any check that only one way needs: the direct way when `--strategy` allows it
    /// and no clause rewrites the table; else the ghost way, with why when `auto` chose it.
    async fn choose(&self, table: &QualifiedName, partitioned: bool) -> Result<Choice> {
        use crate::cli::StrategyArg;
        // A resumed run continues a ghost; --test-on-replica tests a swap; a revert window
        // needs the ghost (the direct way leaves no old table to go back to).
        if self.cfg.strategy == StrategyArg::Ghost || self.cfg.test_on_replica.is_some() || self.cfg.resume || self.cfg.revertible_for.is_some() {
            return Ok(Choice::Ghost(None));
        }
        // A conversion into a partitioned table makes a new table: only a ghost can.
        if self.cfg.conversion.is_some() {
            if self.cfg.strategy == StrategyArg::Direct {
                return Err(Error::refused("--strategy direct: --partition-by makes a new, partitioned table, which pg-ghost does through a ghost only; use --strategy ghost or auto"));
            }
            return Ok(Choice::Ghost(Some(format!("--partition-by converts {table} into a partitioned table, which pg-ghost does through a ghost table"))));
        }
        // The direct way's steps (CREATE INDEX CONCURRENTLY, foreign keys added NOT VALID)
        // do not all exist for a partitioned table: it is changed through a ghost.
        if partitioned {
            if self.cfg.strategy == StrategyArg::Direct {
                return Err(Error::refused(format!(
                    "--strategy direct: {table} is a partitioned table, which pg-ghost changes through a ghost only; use --strategy ghost or auto"
                )));
            }
            return Ok(Choice::Ghost(Some(format!("{table} is a partitioned table, which pg-ghost changes through a ghost table"))));
        }
        match crate::plan::direct_steps(&self.client, table, &self.cfg.alter).await? {
            Ok(steps) => {
                tracing::info!(steps = steps.len(), "no clause rewrites the table: changing it directly, without a copy");
                Ok(Choice::Direct(steps))
            }
            Err(rewriting) if self.cfg.strategy == StrategyArg::Direct => Err(Error::refused(format!(
                "--strategy direct: clause {} rewrites the table, which would hold ACCESS EXCLUSIVE (no reads, no writes) for the whole rewrite; \
                 use --strategy ghost or auto (see pg-ghost plan)",
                list(&rewriting)
            ))),
            Err(rewriting) => Ok(Choice::Ghost(Some(format!(
                "clause {} rewrites the table, so pg-ghost copies it into a ghost table (--strategy auto), and that needs what follows",
                list(&rewriting)
            )))),
        }
    }

    /// The direct way, once its checks passed: the data checks (when the table has a key to
    /// read it by), the validated hook, then the steps.
    async fn direct_phases(&mut self, table: inspect::Described, steps: Vec<crate::plan::Step>) -> Result<Outcome> {
        let names = Names::for_table(&table.name, table.oid);
        self.names = Some(names.clone());
        self.controls.update_env(|env| env.resolved_in_place(&table.name).with_strategy(history::STRATEGY_DIRECT));
        self.controls.serve(&self.cfg, &table.name, &names, false, self.phase.subscribe(), self.abort_tx.clone())?;
        if let Ok(info) = &table.keyed {
            self.check_data(info, &names).await?;
        }
        // From here the snapshot counts steps, not rows.
        self.controls.progress.send_modify(|p| p.direct_step = Some(crate::status::StepOf { number: 1, of: steps.len() }));
        self.fire(HookEvent::Validated, None).await?;
        self.run_direct(&table, &steps).await
    }

    /// The steps, under the run's throttle and with a status of their own (socket, status
    /// line, `on-status` hooks); each recorded in the history as it starts and ends.
    async fn run_direct(&mut self, info: &inspect::Described, steps: &[crate::plan::Step]) -> Result<Outcome> {
        self.enter(Phase::Direct);
        self.history.steps(steps.iter().map(step_record).collect());
        let names = Names::for_table(&info.name, info.oid);
        let (throttler, gate, forward) = self.throttle_before_the_stream(&names).await?;
        // Before the first step starts (postponed, say), the next one is step 1.
        let (step_tx, step_rx) = watch::channel(Some(crate::status::StepOf { number: 1, of: steps.len() }));
        let status = status::spawn_direct(
            status::DirectSources { phase: self.phase.subscribe(), step: step_rx, throttle: throttler.decision.clone() },
            self.status_outputs(),
        );
        self.controls.refreshing = true;
        let result = self.make_direct_change(info, steps, gate, &step_tx).await;
        status.abort();
        self.controls.refreshing = false;
        forward.abort();
        throttler.stop().await;
        result
    }

    async fn make_direct_change(
        &mut self,
        info: &inspect::Described,
        steps: &[crate::plan::Step],
        gate: watch::Receiver<GateState>,
        step_tx: &watch::Sender<Option<crate::status::StepOf>>,
    ) -> Result<Outcome> {
        let dry_run = !self.cfg.execute;
        if !dry_run {
            // The first step makes the change visible: it is this way's cut-over, and the
            // postpone flag holds it as it holds the swap.
            if let Some(flag) = self.cfg.cut_over.postpone_flag_file.clone().filter(|f| f.exists()) {
                self.enter(Phase::Postponed);
                tracing::info!(flag = %flag.display(), "the change is postponed while the flag file exists (or until `unpostpone`)");
                self.fire(HookEvent::BeginPostponed, None).await?;
                let unpostpone = self.controls.unpostpone.clone();
                guard(wait_while_postponed(flag, unpostpone), &mut self.abort.clone(), None).await?;
                self.enter(Phase::Direct);
            }
            self.fire(HookEvent::BeforeCutOver, None).await?;
        }
        let direct = crate::direct::Direct {
            conn: &self.cfg.conn,
            table: &info.name,
            steps,
            lock_timeout: self.cfg.cut_over.lock_timeout,
            retries: self.cfg.cut_over.retries,
            kill_blockers_after: self.cfg.cut_over.kill_blockers_after,
            abort: self.abort.clone(),
            dry_run,
            gate,
        };
        let history = &self.history;
        let of = steps.len();
        let report_step = |i: usize, state: crate::direct::StepState| {
            use crate::direct::StepState;
            if matches!(state, StepState::Running) {
                step_tx.send_replace(Some(crate::status::StepOf { number: i + 1, of }));
            }
            history.step(i, |r| match state {
                StepState::Running => r.outcome = history::StepRecord::RUNNING.into(),
                StepState::Done { attempts, elapsed } => {
                    r.outcome = if dry_run { history::StepRecord::DRY_RUN } else { history::StepRecord::DONE }.into();
                    r.attempts = attempts;
                    r.seconds = Some(elapsed.as_secs_f64());
                }
                StepState::Failed { attempts, elapsed, error } => {
                    r.outcome = history::StepRecord::FAILED.into();
                    r.attempts = attempts;
                    r.seconds = Some(elapsed.as_secs_f64());
                    r.error = Some(error);
                }
            });
        };
        let report = direct.run(&report_step).await?;
        if !dry_run {
            self.warn_publications(&info.name).await;
        }
        Ok(match dry_run {
            true => {
                tracing::info!(steps = report.steps, "dry run: every step's locks were taken and released; nothing changed");
                Outcome::DryRunComplete
            }
            false => Outcome::Direct { steps: report.steps, attempts: report.attempts },
        })
    }

    /// Logical replication does not carry DDL: after a direct change, as after the swap, the
    /// DBA is told which publications send the table's rows in their new shape.
    async fn warn_publications(&self, table: &QualifiedName) {
        let found = self
            .client
            .query("SELECT pubname::text FROM pg_publication_tables WHERE schemaname = $1 AND tablename = $2 ORDER BY 1", &[&table.schema, &table.name])
            .await;
        let publications: Vec<String> = match found {
            Ok(rows) => rows.iter().filter_map(|r| r.try_get(0).ok()).collect(),
            Err(e) => {
                tracing::debug!(error = %Error::from(e), "could not read the publications of the table");
                return;
            }
        };
        for publication in publications {
            tracing::warn!(
                publication = %publication,
                table = %table,
                "the publication sends the table's rows in their new shape; logical replication does not carry DDL: each subscriber \
                 must have the new shape of {table} before rows of that shape arrive (apply the same ALTER there first when it adds \
                 columns the subscriber must receive)"
            );
        }
    }

    fn enter(&self, phase: Phase) {
        tracing::info!(phase = phase.name(), "phase");
        self.phase.send_replace(phase);
        self.history.enter(phase);
    }

    async fn phases(&mut self, background: &mut Option<Background>, phase_rx: watch::Receiver<Phase>) -> Result<Outcome> {
        self.enter(Phase::Inspect);
        let (info, found) = match self.inspect().await? {
            Way::Direct { table, steps } => return self.direct_phases(table, steps).await,
            Way::Ghost { info, found } => (info, found),
        };
        let resumed = match found {
            None => None,
            Some(resume::Found::Continue(r)) => Some(r),
            Some(resume::Found::SwapCommitted { names, .. }) => {
                if self.cfg.revertible_for.is_some() && window::was_open(&self.client, &names).await? {
                    self.controls.update_env(|env| env.resolved(&info.name, &names));
                    self.controls.serve(&self.cfg, &info.name, &names, false, self.phase.subscribe(), self.abort_tx.clone())?;
                    return self.resume_window(&info, names, background).await;
                }
                return Ok(self.finish_committed_swap(&info, names));
            }
        };
        let names = Names::for_table(&info.name, info.oid);
        self.names = Some(names.clone());
        self.controls.update_env(|env| env.resolved(&info.name, &names).with_strategy(history::STRATEGY_GHOST));
        self.controls.serve(&self.cfg, &info.name, &names, true, self.phase.subscribe(), self.abort_tx.clone())?;
        if resumed.is_none() {
            self.check_data(&info, &names).await?;
        }
        self.fire(HookEvent::Validated, None).await?;
        let estimated = u64::try_from(info.estimated_rows).ok().filter(|n| *n > 0);
        self.controls.progress.send_modify(|p| p.rows_estimated = estimated);
        self.fire(HookEvent::RowCountComplete, None).await?;

        self.enter(Phase::Prepare);
        let (ghost, copy) = match resumed {
            Some(r) => {
                // The earlier run's objects are this run's now: cleanup treats them alike.
                self.created = Created { changelog: true, ghost: true, publication: true, slot: true, reverse: false };
                let copy = if r.copy_done { CopyFrom::Done } else { CopyFrom::After(r.copy_after, r.copy_after_parts) };
                (r.ghost, copy)
            }
            None => (self.prepare(&info, &names).await?, CopyFrom::Fresh),
        };
        if self.cfg.revertible_for.is_some() {
            // Refused before the copy: a change with no way back.
            let new_columns = inspect::columns(&self.client, ghost.oid).await?;
            ghost.mapping.reverse(&info.columns, &new_columns)?;
        }

        self.enter(Phase::Stream);
        if !self.created.publication {
            replication::create_publication(&self.client, &names, &info).await?;
            self.created.publication = true;
        }
        if !self.created.slot {
            let created_slot = replication::create_slot(&self.cfg.conn, &self.client, &names, self.cfg.failover_slot);
            guard(created_slot, &mut self.abort.clone(), None).await?;
            self.created.slot = true;
        } else if self.cfg.failover_slot {
            replication::make_failover(&self.cfg.conn, &self.client, &names.slot).await?;
        }
        let park = !ghost::has_key_index(&self.client, &ghost).await?;
        let copy = match copy {
            CopyFrom::After(after, parts) if park => {
                let removed = self.clear_past_watermarks(&info, &ghost, after.as_ref(), &parts).await?;
                tracing::info!(rows = removed, "the ghost has no key index yet: its rows past the watermark were removed, the copy goes on from there as a fresh one");
                CopyFrom::FreshAfter(after, parts)
            }
            other => other,
        };
        let fresh_copy = matches!(copy, CopyFrom::Fresh | CopyFrom::FreshAfter(..));
        let origin_none = match crate::replication::origins::may_filter_own_writes(&self.client).await? {
            Ok(()) => {
                tracing::info!("the copy's writes are left out of the stream's decoding (replication origins, PostgreSQL 16+)");
                true
            }
            Err(Some(why)) => {
                tracing::info!(reason = %why, "the stream decodes the copy's writes too");
                false
            }
            Err(None) => false,
        };
        let (repl, bg) = Replication::start(&self.cfg.conn, &names, &info, &ghost, fresh_copy, park, origin_none).await?;
        let bg = background.insert(bg);

        let throttler = Throttler::spawn(ThrottleJob {
            conn: self.cfg.conn.clone(),
            changelog: Some(names.changelog.clone()),
            slot: names.slot.clone(),
            cfg: self.cfg.throttle.clone(),
            tunables: self.controls.tunables.clone(),
            overrides: self.controls.overrides.clone(),
            cut_over_locked: self.controls.cut_over_locked.subscribe(),
        });
        let decision = throttler.decision.clone();
        bg.watch_throttler(throttler.task);
        let (gate_tx, gate) = watch::channel(GateState::Open);
        self.controls.spawn_task(tokio::spawn(forward_gate(decision.clone(), gate_tx)));

        let progress = CopyProgress::new(self.cfg.tunables.chunk_size);
        self.controls.follow_tunables(progress.clone());
        self.history.follow_copy(progress.clone());
        let status = status::spawn(
            status::Sources {
                phase: phase_rx,
                copy: progress.clone(),
                apply: repl.writer.stats.clone(),
                stream: repl.positions.clone(),
                throttle: decision,
                estimated_rows: info.estimated_rows,
                standbys: repl.standbys.clone(),
            },
            self.status_outputs(),
        );
        self.controls.refreshing = true;
        let result = self.stream_and_swap(&info, &names, &ghost, copy, &repl, bg, progress, gate).await;
        status.abort();
        self.controls.refreshing = false;
        match (result, self.cfg.revertible_for, self.window_marker.clone()) {
            (Ok(Outcome::CutOver), Some(length), Some(marker)) => self.revert_window(&info, &names, &ghost, background, length, &marker).await,
            (result, _, _) => result,
        }
    }

    /// Where the status goes, for the ghost way's status task and the direct way's alike.
    fn status_outputs(&self) -> status::Outputs {
        status::Outputs {
            progress: self.controls.progress.clone(),
            refresh: self.controls.refresh.clone(),
            log_every: self.cfg.status_interval,
            hooks: self.controls.hooks.clone(),
            env: self.controls.env.clone(),
            hooks_every: self.cfg.hooks.status_interval,
        }
    }

    /// Fires a hook under the guard, so that an abort does not wait for a hanging hook.
    async fn fire(&self, event: HookEvent, bg: Option<&mut Background>) -> Result<()> {
        guard(self.controls.fire(event), &mut self.abort.clone(), bg).await
    }

    /// Reads the table, decides the way from the plan, then runs the checks of that way
    /// only: the ghost way needs a key, logical WAL, a slot, a walsender and more; the direct
    /// way changes the table in place and needs none of them.
    async fn inspect(&mut self) -> Result<Way> {
        let name = inspect::resolve_table(&self.client, &self.cfg.table).await?;
        self.history.resolved(&name);
        let described = inspect::describe(&self.client, &name, self.cfg.key.as_deref()).await?;
        let names = Names::for_table(&described.name, described.oid);
        if let Some(c) = &self.cfg.conversion {
            if described.partitioned {
                return Err(inspect::conversion::already_partitioned(&described.name, &c.partition_by));
            }
        }
        // The ALTER is read before anything is created, so a malformed one changes nothing.
        let planned = match &self.cfg.conversion {
            Some(_) if self.cfg.alter.trim().is_empty() => alter::AlterPlan::none(),
            _ => alter::plan(&self.cfg.alter, &names.ghost, &HashMap::new())?,
        };
        if let (Some(_), Some(column)) = (self.cfg.revertible_for, planned.using.keys().min()) {
            return Err(Error::refused(format!(
                "--revertible-for: the ALTER rewrites column {} with USING, which has no way back; revert windows take type changes without USING only",
                crate::sql::ident(column)
            )));
        }
        // What both ways need, before the plan reads the table.
        let server = inspect::preflight_shared(&self.client, &described.name, described.oid, &described.owner).await?;
        let why_ghost = match self.choose(&described.name, described.partitioned).await? {
            Choice::Direct(steps) => {
                // Recorded as soon as chosen, so that a refusal from here on says which way.
                self.history.strategy(history::STRATEGY_DIRECT);
                self.inspect_direct(&described, &names, &server).await?;
                if self.cfg.failover_slot {
                    tracing::info!("--failover-slot: the direct way streams nothing, so it makes no slot");
                }
                return Ok(Way::Direct { table: described, steps });
            }
            Choice::Ghost(why) => why,
        };
        // What only the ghost way needs, refused with why it is the ghost way.
        let ghost_needs = |e: Error| match (&why_ghost, e.kind()) {
            (Some(why), ErrorKind::Refused) => e.context(why.clone()),
            _ => e,
        };
        let info = described.keyed.map_err(ghost_needs)?;
        // Killed after a revert's swap back committed: the table is the original again, and
        // there is nothing to resume (the change is what the DBA went back from).
        if self.cfg.resume && window::was_reverted(&self.client, &names).await? {
            return Err(Error::refused(format!(
                "the earlier run on {} was reverted (its swap back committed): there is nothing to resume; `pg-ghost cleanup --table {}` removes what it left",
                info.name, info.name
            )));
        }
        let found = match self.cfg.resume {
            true => Some(resume::load(&self.client, &self.cfg, &info).await?),
            false => None,
        };
        if let Some(found) = &found {
            self.history.resumed(found.run_id());
        }
        if matches!(found, Some(resume::Found::SwapCommitted { .. })) {
            return Ok(Way::Ghost { info, found });
        }
        let mut options = PreflightOptions::new(&names, self.cfg.initially_drop_ghost_table);
        options.resuming = self.cfg.resume;
        let server = inspect::preflight(&self.client, &info, &options).await.map_err(ghost_needs)?;
        if let (Some(c), false) = (&self.cfg.conversion, self.cfg.resume) {
            inspect::conversion::check(&self.client, &info, c).await?;
            let partitions: Vec<String> = c.partitions.iter().map(|p| p.final_name(&info.name).to_string()).collect();
            tracing::info!(
                table = %info.name,
                partition_by = %c.partition_by,
                partitions = partitions.len(),
                names = %partitions.join(", "),
                "converting into a partitioned table"
            );
        }
        if !self.cfg.resume {
            self.check_dependents(&info, &names, server.is_superuser).await?;
        }
        replica::preflight(&self.client, &info, self.cfg.test_on_replica.as_ref()).await?;
        // On a resume, before it takes over the earlier run's objects (a refusal later would
        // clean them up): a slot made without the flag is altered in the stream phase, where
        // the flag could have been given to a fresh run. One that has it stays as it is, on a
        // promoted standby too, whose synchronized_standby_slots may name nobody yet.
        if self.cfg.failover_slot && !(self.cfg.resume && crate::replication::failover::is_failover(&self.client, &names.slot).await?) {
            crate::replication::failover::check_possible(&self.client).await?;
        }
        tracing::info!(
            table = %info.name,
            oid = info.oid,
            estimated_rows = info.estimated_rows,
            key = %info.key.columns.join(", "),
            server = %server.server_version,
            "inspected"
        );
        Ok(Way::Ghost { info, found })
    }

    /// The direct way needs no check beyond the shared ones; when the table has a key to read
    /// it by, the trial of the ALTER on an empty clone tells which clauses the existing rows
    /// could break (for the data checks). The dependents are not refused here: nothing moves to
    /// another table, they stay on this one as after a plain ALTER TABLE.
    async fn inspect_direct(&mut self, table: &inspect::Described, names: &Names, server: &inspect::ServerInfo) -> Result<()> {
        match &table.keyed {
            Ok(info) => match ghost::trial_with_dependents(&mut self.client, info, names, &self.cfg.alter, None, &ghost::LockWait::from(&self.cfg.cut_over)).await {
                Ok((_, trial)) => self.data_checks = Some(trial.data_checks),
                // What the copy would refuse is no obstacle here; the validation steps check the rows.
                Err(e) if e.kind() == ErrorKind::Refused => {
                    tracing::info!(reason = %e, "the rows are not checked before the change: the validation steps check them");
                }
                // The trial is an empty table made (and rolled back) next to the original: a role
                // without CREATE on the schema cannot make it, and needs it for nothing else here.
                Err(e) if e.kind() == ErrorKind::Privilege => {
                    tracing::warn!(
                        error = %e,
                        "the rows are not checked before the change (that needs CREATE on the table's schema, for an empty trial table that is rolled back): the validation steps check them"
                    );
                }
                Err(e) => return Err(e),
            },
            Err(no_key) => {
                tracing::info!(
                    reason = %no_key.message(),
                    "the table has no key to read it by in chunks: the rows are not checked before the change; the validation steps check them"
                );
            }
        }
        tracing::info!(table = %table.name, oid = table.oid, estimated_rows = table.estimated_rows, server = %server.server_version, "inspected");
        Ok(())
    }

    /// The objects that depend on the table, against what the ALTER does to a trial ghost
    /// that is rolled back: everything that cannot follow the table is refused here, before
    /// anything is created.
    async fn check_dependents(&mut self, info: &TableInfo, names: &Names, superuser: bool) -> Result<()> {
        let (deps, trial) = ghost::trial_with_dependents(&mut self.client, info, names, &self.cfg.alter, self.cfg.conversion.as_ref(), &ghost::LockWait::from(&self.cfg.cut_over)).await?;
        let changes = trial.changes;
        self.data_checks = Some(trial.data_checks);
        let bypass_rls: bool = self
            .client
            .query_one("SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user", &[])
            .await
            .context("reading the role's BYPASSRLS")?
            .try_get(0)?;
        let role = dependents::RoleRights { superuser, bypass_rls };
        let refusals = dependents::refusals(&deps, &info.name, &changes, role);
        if !refusals.is_empty() {
            return Err(Error::refused(refusals.join("; ")));
        }
        if self.cfg.revertible_for.is_some() {
            window::refuse_lossy_write_back(&self.client, info, &changes.dropped).await?;
            window::refuse_identity_always(info)?;
        }
        if deps.count() > 0 {
            tracing::info!(
                table = %info.name,
                views = deps.views.len(),
                foreign_keys = deps.foreign_keys.len(),
                triggers = deps.triggers.len(),
                rules = deps.rules.len() + deps.foreign_rules.len(),
                policies = deps.policies.len(),
                publications = deps.publications.len(),
                functions = deps.functions.len(),
                partitions = deps.partitions.len(),
                "objects that depend on the table will move to the new table in the swap"
            );
        }
        Ok(())
    }

    /// Scans the original for rows that break the ALTER's clauses, before anything is
    /// created; refuses the run with the first offending rows of the first clause they break.
    /// Throttled like the copy (flag files, load, throttle query, replica lag read from
    /// `pg_stat_replication`: there is no changelog table for a heartbeat yet).
    async fn check_data(&mut self, info: &TableInfo, names: &Names) -> Result<()> {
        let Some(found) = self.data_checks.take() else { return Ok(()) };
        for note in &found.unchecked {
            tracing::info!(clause = %note, "not checked beforehand: the copy, the index build or the validation step will tell");
        }
        if found.checks.is_empty() {
            return Ok(());
        }
        if self.cfg.data_checks.skip {
            tracing::warn!(
                clauses = found.checks.len(),
                "--skip-data-checks: the rows are not checked against the ALTER's clauses beforehand; the copy, the index builds or the validation steps will stop the run if they break one"
            );
            return Ok(());
        }
        let (throttler, gate, forward) = self.throttle_before_the_stream(names).await?;
        let tunables = self.controls.tunables.borrow().clone();
        let limits = datacheck::Limits {
            report: self.cfg.data_checks.limit,
            chunk_size: tunables.chunk_size,
            chunk_time: self.cfg.copy.chunk_time,
            nice_ratio: tunables.nice_ratio,
            log_every: self.cfg.status_interval,
        };
        let original = datacheck::Original::of(info);
        tracing::info!(clauses = found.checks.len(), table = %info.name, "checking the existing rows against the ALTER's clauses");
        let started = std::time::Instant::now();
        let checked = datacheck::run(&self.cfg.conn, &original, &found.checks, &limits, gate);
        let result = guard(checked, &mut self.abort.clone(), None).await;
        forward.abort();
        throttler.stop().await;
        match result? {
            Some(finding) => Err(datacheck::refusal(&info.name, &info.key.columns, &finding, limits.report)),
            None => {
                tracing::info!(clauses = found.checks.len(), secs = started.elapsed().as_secs_f64(), "data checks passed");
                Ok(())
            }
        }
    }

    /// A throttler for work that reads the whole table before any changelog exists (data
    /// checks, the direct way's validations): flag files, load, throttle query, replica lag
    /// from `pg_stat_replication`. Returns once it has decided, so that a flag file present
    /// from the start holds even the first read.
    async fn throttle_before_the_stream(&mut self, names: &Names) -> Result<(crate::throttle::ThrottleHandle, watch::Receiver<GateState>, tokio::task::JoinHandle<()>)> {
        let throttler = Throttler::spawn(ThrottleJob {
            conn: self.cfg.conn.clone(),
            changelog: None,
            slot: names.slot.clone(),
            cfg: self.cfg.throttle.clone(),
            tunables: self.controls.tunables.clone(),
            overrides: self.controls.overrides.clone(),
            cut_over_locked: self.controls.cut_over_locked.subscribe(),
        });
        let mut first = throttler.decision.clone();
        let decided = async move { first.changed().await.map_err(|_| Error::new(ErrorKind::Aborted, "the throttler stopped")) };
        if let Err(e) = guard(decided, &mut self.abort.clone(), None).await {
            throttler.stop().await;
            return Err(e);
        }
        let (gate_tx, gate) = watch::channel(GateState::Open);
        let forward = tokio::spawn(forward_gate(throttler.decision.clone(), gate_tx));
        Ok((throttler, gate, forward))
    }

    /// The earlier run's swap committed before it could clean up: only that is left to do.
    fn finish_committed_swap(&mut self, info: &TableInfo, names: Names) -> Outcome {
        tracing::info!(
            table = %info.name,
            "resuming the earlier run: its cut-over had committed, {} has the new definition; removing its slot, publication and changelog",
            info.name
        );
        // A revert window the earlier run had open ends here: its reverse slot and publication
        // go too (dropping what is not there is a no-op). Both tables stay.
        tracing::info!(slot = %names.reverse, "a revert window the earlier run had open ends: its reverse slot is dropped, the new table keeps the name");
        self.names = Some(names);
        self.created = Created { changelog: true, ghost: false, publication: true, slot: true, reverse: true };
        Outcome::CutOver
    }

    async fn prepare(&mut self, info: &TableInfo, names: &Names) -> Result<Ghost> {
        if self.cfg.initially_drop_ghost_table {
            let wait = ghost::LockWait::from(&self.cfg.cut_over);
            drop_ghost(&self.client, &names.ghost, &wait).await.context("dropping the ghost table of an earlier run")?;
        }
        self.client
            .batch_execute(&format!(
                "CREATE TABLE {} (key text PRIMARY KEY, value text NOT NULL, updated_at timestamptz NOT NULL DEFAULT clock_timestamp())",
                names.changelog.sql()
            ))
            .await
            .context("creating the changelog table")?;
        self.created.changelog = true;
        self.record_state(names, "prepare").await;
        if let Some(run_id) = self.history.run_id() {
            self.record_value(names, checkpoint::RUN_ID, &run_id).await;
        }
        let ghost = ghost::create_with_conversion(&mut self.client, info, &names.ghost, &self.cfg.alter, self.cfg.conversion.as_ref(), &ghost::LockWait::from(&self.cfg.cut_over)).await?;
        self.created.ghost = true;
        let plan = checkpoint::Plan::new(
            alter::canonical(&self.cfg.alter)?,
            info.oid,
            checkpoint::shape(&self.client, info.oid).await?,
            checkpoint::shape(&self.client, ghost.oid).await?,
            ghost.clone(),
        );
        checkpoint::write_plan(&self.client, &names.changelog, &plan).await?;
        if !ghost.alter.rewrites {
            tracing::info!("this ALTER changes only the catalog: a plain ALTER TABLE would be instant; pg-ghost proceeds as asked");
        }
        Ok(ghost)
    }

    /// Opens the main session again when it was lost (terminated, or the server restarted).
    /// An empty query tells: a session terminated a moment ago may not be seen closed yet.
    async fn ensure_session(&mut self) -> Result<()> {
        let Err(e) = self.client.batch_execute("").await.map_err(Error::from) else { return Ok(()) };
        if !e.kind().is_lost_connection() {
            return Err(e);
        }
        self.client = reconnect::connect_again(&main_conn(&self.cfg), &mut Outage::new(), e, "the main session, idle").await?;
        Ok(())
    }

    /// A working main session for the cleanup: the slot must go whenever the server can be
    /// reached, so a new session is tried even with reconnecting off.
    async fn session_for_cleanup(&mut self) -> Result<()> {
        match self.ensure_session().await {
            Err(e) if e.kind().is_lost_connection() && self.cfg.conn.reconnect_timeout.is_zero() => {
                self.client = main_conn(&self.cfg).connect().await?;
                Ok(())
            }
            other => other,
        }
    }

    /// Records the run's state in the changelog table, for DBAs and for a resume.
    async fn record_state(&mut self, names: &Names, state: &str) {
        self.record_value(names, checkpoint::STATE, state).await;
    }

    /// Sets one row of the changelog table (best effort: a resume checks what it finds).
    async fn record_value(&mut self, names: &Names, key: &str, value: &str) {
        if let Err(e) = self.ensure_session().await {
            tracing::debug!(error = %e, key, "no session to record a changelog value with");
        }
        let sql = checkpoint::upsert_sql(&names.changelog);
        if let Err(e) = checkpoint::record(&self.client, &sql, key, value).await {
            tracing::debug!(error = %e, key, "could not record a value in the changelog table");
        }
    }

    async fn stream_and_swap(
        &mut self,
        info: &TableInfo,
        names: &Names,
        ghost: &Ghost,
        copy: CopyFrom,
        repl: &Replication,
        bg: &mut Background,
        progress: Arc<crate::copy::CopyProgress>,
        gate: watch::Receiver<GateState>,
    ) -> Result<Outcome> {
        self.fire(HookEvent::BeforeRowCopy, Some(&mut *bg)).await?;
        self.enter(Phase::Copy);
        let copy_secs = match copy {
            CopyFrom::Done => {
                tracing::info!("the earlier run had copied every row: the copy is skipped");
                0.0
            }
            CopyFrom::Fresh => self.copy_rows(info, names, ghost, (None, BTreeMap::new()), true, repl, bg, &progress, gate).await?,
            CopyFrom::FreshAfter(after, parts) => self.copy_rows(info, names, ghost, (after, parts), true, repl, bg, &progress, gate).await?,
            CopyFrom::After(after, parts) => self.copy_rows(info, names, ghost, (after, parts), false, repl, bg, &progress, gate).await?,
        };
        self.fire(HookEvent::RowCopyComplete, Some(&mut *bg)).await?;

        self.enter(Phase::BuildIndexes);
        self.record_state(names, "build-indexes").await;
        self.ensure_session().await?;
        if ghost.key_index.is_some() {
            self.write_parked_keys(ghost, repl, bg).await?;
        }
        repl.flush.delete_first();
        let wait = ghost::LockWait::from(&self.cfg.cut_over);
        guard(ghost::rebuild_deferred_beside(&self.client, &main_conn(&self.cfg), ghost, &wait), &mut self.abort.clone(), Some(&mut *bg)).await?;
        // The builds open their sessions again when lost, the main one included.
        self.ensure_session().await?;
        repl.flush.choose_strategy(&self.client, ghost.oid, &ghost.mapping.key_ghost).await?;

        self.enter(Phase::CatchUp);
        guard(self.catch_up(repl), &mut self.abort.clone(), Some(&mut *bg)).await?;
        // The new table must have statistics the moment it carries the name, and its
        // visibility map set so that index-only scans work from the start. Autovacuum is off
        // on the ghost (its worker would block the cut-over): pg-ghost vacuums it itself, on
        // a session of its own beside the checksum, whose reads, repairs and the flusher's
        // writes do not conflict with VACUUM's SHARE UPDATE EXCLUSIVE on the ghost.
        let conn = self.cfg.conn.clone();
        let vacuum = vacuum_ghost(&conn, &ghost.name);
        if self.cfg.skip_checksum {
            tracing::warn!("--skip-checksum: the ghost is not compared with the original before the swap");
            guard(vacuum, &mut self.abort.clone(), Some(&mut *bg)).await?;
        } else {
            self.record_state(names, "checksum").await;
            let mut job = ChecksumJob::new(self.cfg.conn.clone(), info.name.clone(), ghost.name.clone(), ghost.mapping.clone());
            job.workers = self.cfg.checksum_workers;
            job.progress = self.checksum_progress.clone();
            job.parts = self.partition_walks(info, ghost).await?;
            let catch_up = || -> BoxFuture<'_, Result<()>> { Box::pin(self.applied_up_to_now(repl)) };
            let both = async { tokio::try_join!(checksum::verify(&job, &repl.inflight, catch_up), vacuum) };
            let (report, ()) = guard(both, &mut self.abort.clone(), Some(&mut *bg)).await?;
            tracing::info!(
                ranges = report.ranges,
                rows = report.rows,
                repaired_ranges = report.repaired_ranges,
                secs = report.elapsed.as_secs_f64(),
                copy_secs = copy_secs,
                "checksum clean: the ghost holds the original's rows with the ALTER applied"
            );
        }

        if let Some(flag) = self.cfg.cut_over.postpone_flag_file.clone() {
            if flag.exists() {
                self.enter(Phase::Postponed);
                self.record_state(names, "postponed").await;
                tracing::info!(flag = %flag.display(), "cut-over postponed while the flag file exists (or until `unpostpone`)");
                self.fire(HookEvent::BeginPostponed, Some(&mut *bg)).await?;
                let unpostpone = self.controls.unpostpone.clone();
                guard(wait_while_postponed(flag, unpostpone), &mut self.abort.clone(), Some(&mut *bg)).await?;
                guard(self.catch_up(repl), &mut self.abort.clone(), Some(&mut *bg)).await?;
            }
        }

        if let Some(test) = self.cfg.test_on_replica.clone().filter(|t| t.swap) {
            return self.test_on_replica(&test, info, names, ghost, repl, bg).await;
        }
        if !self.cfg.execute || self.cfg.test_on_replica.is_some() {
            tracing::info!("dry run: the ghost is complete and current; no cut-over without --execute");
            return Ok(Outcome::DryRunComplete);
        }

        self.fire(HookEvent::BeforeCutOver, Some(&mut *bg)).await?;
        self.enter(Phase::CutOver);
        self.record_state(names, "cut-over").await;
        if self.build_materialized_views(info, ghost, bg).await? {
            guard(self.catch_up(repl), &mut self.abort.clone(), Some(&mut *bg)).await?;
        }
        let old_table = self.old_table_name(info).await?;
        self.controls.update_env(|mut env| {
            env.old_table = Some(old_table.clone());
            env
        });
        if self.cfg.revertible_for.is_some() {
            let mut abort = self.abort.clone();
            let marker = guard(self.open_window(names, info, ghost), &mut abort, Some(&mut *bg)).await?;
            self.window_marker = Some(marker);
        }
        let mut cut_over = self.cut_over(info, ghost, &old_table, repl, false);
        if let Some(marker) = &self.window_marker {
            cut_over.window = crate::cutover::Window::Open { changelog: &names.changelog, marker };
        }
        self.controls.cut_over_locked.send_replace(true);
        let report = guard(cut_over.run(), &mut self.abort.clone(), Some(&mut *bg)).await;
        self.controls.cut_over_locked.send_replace(false);
        self.history.cut_over(u32::try_from(self.cut_over_tally.attempts()).unwrap_or(u32::MAX), report.as_ref().ok().map(|r| r.lock_held));
        let report = report?;
        self.old_table = Some(old_table.clone());
        tracing::info!(
            attempts = report.attempts,
            lock_wait_ms = report.lock_wait.as_millis() as u64,
            lock_held_ms = report.lock_held.as_millis() as u64,
            final_keys = report.final_keys,
            old_table = %old_table,
            "cut-over complete: {} now has the new definition",
            info.name
        );
        for publication in &report.publications {
            tracing::warn!(
                publication = %publication,
                table = %info.name,
                "the publication now lists the new table (membership moved in the swap); logical replication does not carry DDL: \
                 each subscriber must have the new shape of {} before rows of that shape arrive (apply the same ALTER there first \
                 when it adds columns the subscriber must receive)",
                info.name
            );
        }
        self.ensure_session().await?;
        dependents::validate(&self.client, &report.validations, self.cfg.cut_over.lock_timeout, self.cfg.cut_over.retries).await?;
        Ok(Outcome::CutOver)
    }

    /// Builds the key's index the copy went without, then writes the keys parked meanwhile
    /// (before the other indexes exist, so that writing them maintains one index only).
    async fn write_parked_keys(&mut self, ghost: &Ghost, repl: &Replication, bg: &mut Background) -> Result<()> {
        crate::fault::crash_point("before-key-index");
        guard(ghost::build_key_index(&self.client, Some(&main_conn(&self.cfg)), ghost), &mut self.abort.clone(), Some(&mut *bg)).await?;
        self.ensure_session().await?;
        repl.flush.choose_strategy(&self.client, ghost.oid, &ghost.mapping.key_ghost).await?;
        if let Some(parking) = repl.flush.parking() {
            parking.stop();
        }
        let started = std::time::Instant::now();
        let parked = guard(repl.writer.unpark(), &mut self.abort.clone(), Some(&mut *bg)).await?;
        tracing::info!(keys = parked, secs = started.elapsed().as_secs_f64(), "keys changed during the copy written to the ghost");
        Ok(())
    }

    /// Materialized views that read the table are built again on the ghost as late as can be
    /// (their rows are the ghost's as of now), before the lock; true when there were any.
    async fn build_materialized_views(&mut self, info: &TableInfo, ghost: &Ghost, bg: &mut Background) -> Result<bool> {
        self.ensure_session().await?;
        let views = materialized::read_recipes(&mut self.client, info.oid).await?;
        if views.is_empty() {
            return Ok(false);
        }
        tracing::info!(
            count = views.len(),
            "building the materialized views that read the table on the new table (nothing is locked but the new views)"
        );
        let build = materialized::build(&self.client, &views, &info.name, info.oid, &ghost.name);
        self.materialized = guard(build, &mut self.abort.clone(), Some(&mut *bg)).await?;
        Ok(true)
    }

    /// Copies the rows (after `after`, when resuming; `fresh` into the empty ghost of this
    /// run); returns the time it took.
    #[allow(clippy::too_many_arguments)]
    async fn copy_rows(
        &mut self,
        info: &TableInfo,
        names: &Names,
        ghost: &Ghost,
        (after, after_parts): (Option<crate::copy::Bound>, BTreeMap<String, crate::copy::Bound>),
        fresh: bool,
        repl: &Replication,
        bg: &mut Background,
        progress: &Arc<CopyProgress>,
        gate: watch::Receiver<GateState>,
    ) -> Result<f64> {
        self.record_state(names, "copy").await;
        if let Some(key) = &after {
            tracing::info!(after = %key.join(", "), "the copy continues after the earlier run's watermark");
        }
        if !after_parts.is_empty() {
            tracing::info!(partitions = after_parts.len(), "the copy of partitions continues after the earlier run's watermarks");
        }
        let parts = self.partition_walks(info, ghost).await?;
        let job = CopyJob {
            conn: self.cfg.conn.clone(),
            orig: info.name.clone(),
            ghost: ghost.name.clone(),
            mapping: ghost.mapping.clone(),
            workers: self.cfg.copy.workers,
            chunk_time: self.cfg.copy.chunk_time,
            changelog: Some(names.changelog.clone()),
            resume_after: after,
            fresh,
            parts,
            resume_parts: after_parts,
            origins: repl.origin_none.then(|| names.slot.clone()),
        };
        let started = std::time::Instant::now();
        guard(copy_table(job, repl.inflight.clone(), progress.clone(), gate), &mut self.abort.clone(), Some(bg)).await?;
        let copy_secs = started.elapsed().as_secs_f64();
        tracing::info!(rows = progress.rows.load(Ordering::Relaxed), secs = copy_secs, "row copy complete");
        Ok(copy_secs)
    }

    /// Removes the rows a resumed copy will write again into a ghost with no key index: those
    /// past the watermark, or, for a copy partition by partition, those of each leaf past its
    /// own or, without one, past the whole table's (as the copy takes them up: see
    /// `crate::copy::CopyJob::resume_parts`). Returns how many went.
    async fn clear_past_watermarks(
        &mut self,
        info: &TableInfo,
        ghost: &Ghost,
        after: Option<&crate::copy::Bound>,
        parts: &BTreeMap<String, crate::copy::Bound>,
    ) -> Result<u64> {
        let walks = self.partition_walks(info, ghost).await?;
        if walks.is_empty() {
            return checksum::clear_after(&self.client, &info.name, &ghost.name, &ghost.mapping, after).await;
        }
        let mut removed = 0;
        for part in walks {
            let mark = parts.get(&checkpoint::part_watermark_key(&part.orig)).or(after);
            removed += checksum::clear_after(&self.client, &part.orig, &part.ghost, &ghost.mapping, mark).await?;
        }
        Ok(removed)
    }

    /// The leaves a partitioned original is copied by, one by one (see `crate::copy::partition_walks`);
    /// none for a plain table, or when its partitions cannot be told apart by key. Found once
    /// a run: the clearing before a resumed copy, the copy and the checksum must walk alike
    /// (the tree cannot change unseen: the cut-over checks it under its lock).
    async fn partition_walks(&mut self, info: &TableInfo, ghost: &Ghost) -> Result<Vec<Arc<crate::copy::Part>>> {
        if let Some(walks) = &self.walks {
            return Ok(walks.clone());
        }
        let Some(tree) = &ghost.partitions else { return Ok(Vec::new()) };
        self.ensure_session().await?;
        let walks = match crate::copy::partition_walks(&self.client, info.oid, tree, &ghost.mapping.key_source).await? {
            Ok(parts) => parts,
            Err(why) => {
                if !tree.converted {
                    tracing::info!(reason = %why, "copying by ranges of the key through the partitioned table, not partition by partition");
                }
                Vec::new()
            }
        };
        self.walks = Some(walks.clone());
        Ok(walks)
    }

    /// The cut-over as the flags describe it; `swap_back` for `--test-on-replica`.
    fn cut_over<'a>(&'a self, info: &'a TableInfo, ghost: &'a Ghost, old_table: &'a str, repl: &'a Replication, swap_back: bool) -> CutOver<'a> {
        CutOver {
            conn: &self.cfg.conn,
            orig: info,
            ghost,
            old_table,
            writer: &repl.writer,
            flush: &repl.flush,
            lock_timeout: self.cfg.cut_over.lock_timeout,
            retries: self.cfg.cut_over.retries,
            kill_blockers_after: self.cfg.cut_over.kill_blockers_after,
            abort: self.abort.clone(),
            swap_back,
            tally: &self.cut_over_tally,
            materialized: &self.materialized,
            window: crate::cutover::Window::None,
            origins_left_out: repl.origin_none,
        }
    }

    /// Waits until the stream has delivered everything committed up to now and the apply
    /// backlog is small, so the cut-over's sentinel arrives at once.
    async fn catch_up(&self, repl: &Replication) -> Result<()> {
        self.wait_for_apply(repl, CatchUp::SmallBacklog).await
    }

    /// Waits until every change committed up to now is written to the ghost: what a
    /// checksum re-check needs to tell lag from a real difference.
    async fn applied_up_to_now(&self, repl: &Replication) -> Result<()> {
        self.wait_for_apply(repl, CatchUp::Applied).await
    }

    async fn wait_for_apply(&self, repl: &Replication, until: CatchUp) -> Result<()> {
        let marker: String = format!("catch-up {}", std::process::id());
        // Called while the run is borrowed (checksum): a lost main session is replaced for
        // this marker only, and for good at the next `ensure_session`.
        let target = match emit_marker(&self.client, &marker).await {
            Err(e) if e.kind().is_lost_connection() => {
                let what = "the catch-up marker (emitted again)";
                emit_marker(&reconnect::connect_again(&main_conn(&self.cfg), &mut Outage::new(), e, what).await?, &marker).await?
            }
            other => other?,
        };
        let mut stats = repl.writer.stats.clone();
        stats
            .wait_for(|s| match until {
                CatchUp::SmallBacklog => s.received >= target && s.backlog_keys < CAUGHT_UP_KEYS,
                // Acknowledged only once a ghost transaction covering it has committed; or
                // everything received is written and nothing is being written (a quiet
                // stream acknowledges only at the walsender's next keepalive).
                CatchUp::Applied => s.acked >= target || (s.received >= target && s.backlog_keys == 0 && !s.flushing),
            })
            .await
            .map_err(|_| crate::apply::writer::loop_gone("while catching up"))?;
        Ok(())
    }

    async fn old_table_name(&mut self, info: &TableInfo) -> Result<String> {
        self.ensure_session().await?;
        let names = Names::for_table(&info.name, info.oid);
        if !self.cfg.cut_over.timestamp_old_table {
            return Ok(names.old.name);
        }
        let stamp: String = self.client.query_one("SELECT to_char(now(), 'YYYYMMDDHH24MISS')", &[]).await?.try_get(0)?;
        Ok(crate::sql::fit_ident(&format!("_{}_{stamp}_del", info.name.name)))
    }

    /// After a failover: what the run made stays, on whichever server has it, for `--resume`
    /// against the new primary (a cleanup through a session of this one would drop the slot
    /// that server may still need).
    async fn leave_for_resume(&mut self, background: Option<Background>) -> Result<()> {
        if let Some(bg) = background {
            if let Err(e) = bg.stop_keeping_slot().await {
                tracing::debug!(error = %e, "stopping the stream after a failover");
            }
        }
        if let Some(names) = &self.names {
            tracing::warn!(
                ghost = %names.ghost,
                slot = %names.slot,
                changelog = %names.changelog,
                "left for `pg-ghost run --resume` against the new primary (or `pg-ghost cleanup`)"
            );
        }
        Ok(())
    }

    async fn cleanup(&mut self, background: Option<Background>, succeeded: bool) -> Result<()> {
        let Some(names) = self.names.clone() else { return Ok(()) };
        if let Some(bg) = background {
            if let Err(e) = bg.shutdown().await {
                tracing::debug!(error = %e, "stopping the stream cleanly failed; dropping the slot over SQL");
            }
        }
        // A session terminated a moment ago can still answer the check and fail the drop
        // after it: the drops are repeated on a new session (each is idempotent).
        let mut failed = Vec::new();
        for _ in 0..3 {
            if let Err(e) = self.session_for_cleanup().await {
                tracing::error!(error = %e, "cleanup failed: no session to drop the slot and the publication with; run `pg-ghost cleanup`");
                return Err(e.context("cleaning up"));
            }
            failed = self.drop_objects(&names).await;
            if !failed.iter().any(|(_, e)| e.kind().is_lost_connection()) {
                break;
            }
        }
        if !succeeded && self.created.ghost && self.keeps_ghost() && self.old_table.is_none() {
            tracing::warn!(
                ghost = %names.ghost,
                "the ghost table is kept for inspection; the original is untouched. Remove it with `pg-ghost cleanup` or DROP TABLE {}",
                names.ghost.sql()
            );
        }
        let mut first_error = None;
        for (what, e) in failed {
            tracing::error!(object = what, error = %e, "cleanup failed: run `pg-ghost cleanup` to retry");
            first_error.get_or_insert(e.context(format!("dropping the {what}")));
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Drops what this run created and must not leave; returns what could not be dropped.
    async fn drop_objects(&self, names: &Names) -> Vec<(&'static str, Error)> {
        let backoff = crate::error::Backoff::default();
        let mut failed = Vec::new();
        let mut note = |what: &'static str, result: Result<()>| {
            if let Err(e) = result {
                failed.push((what, e));
            }
        };
        if self.created.slot {
            note("slot", slot::drop_slot(&self.client, &names.slot, &backoff).await.map(|_| ()));
        }
        if self.created.reverse {
            note("reverse slot", slot::drop_slot(&self.client, &names.reverse, &backoff).await.map(|_| ()));
            note("reverse publication", slot::drop_publication(&self.client, &names.reverse).await);
        }
        if self.created.publication {
            note("publication", slot::drop_publication(&self.client, &names.publication).await);
        }
        if self.created.changelog {
            note("changelog table", drop_table(&self.client, &names.changelog).await);
        }
        if self.created.ghost && self.old_table.is_none() && !self.keeps_ghost() {
            note("ghost table", drop_ghost(&self.client, &names.ghost, &ghost::LockWait::from(&self.cfg.cut_over)).await);
        }
        if let (Some(old), true) = (&self.old_table, self.cfg.cut_over.ok_to_drop_table && !self.keep_old_table) {
            let wait = ghost::LockWait::from(&self.cfg.cut_over);
            note("old table", dropping::drop_table(&self.client, &names.old.sibling(old.clone()), &wait).await);
        }
        failed
    }
}

/// How the history of runs names a run that ended well.
fn history_outcome(outcome: &Outcome) -> history::Outcome {
    match outcome {
        Outcome::CutOver => history::Outcome::Success,
        Outcome::DryRunComplete => history::Outcome::DryRun,
        Outcome::ReplicaTested(_) => history::Outcome::ReplicaTest,
        Outcome::Direct { .. } => history::Outcome::Success,
        Outcome::Reverted => history::Outcome::Reverted,
    }
}

/// A step of the direct way as the history first records it: pending.
fn step_record(step: &crate::plan::Step) -> history::StepRecord {
    use crate::plan::StepKind;
    let kind = match step.kind {
        StepKind::Locked => "locked",
        StepKind::Validate => "validate",
        StepKind::ConcurrentIndex { .. } => "concurrent-index",
    };
    let lock = step.locks.iter().map(|(table, mode)| format!("{} on {table}", crate::plan::lock_mode_sql(mode))).collect::<Vec<_>>().join(", ");
    history::StepRecord::pending(step.sql.clone(), kind.into(), lock)
}

/// `1, 3`: clause numbers for a message.
fn list(numbers: &[usize]) -> String {
    numbers.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
}

/// The main session's settings: markers, state, index builds, cleanup.
fn main_conn(cfg: &Config) -> crate::conn::ConnInfo {
    cfg.conn.with_application_name("pg-ghost")
}

/// Emits a catch-up marker into the stream; returns its LSN.
async fn emit_marker(client: &Client, marker: &str) -> Result<Lsn> {
    let lsn: String = client
        .query_one("SELECT pg_logical_emit_message(true, $1, $2)::text", &[&MESSAGE_PREFIX, &marker])
        .await
        .context("emitting the catch-up marker")?
        .try_get(0)?;
    lsn.parse().map_err(|e| Error::protocol(format!("{e}")))
}

/// Runs `fut` until it ends, the run is aborted, or a background task fails.
///
/// When `fut` fails only because the apply loop went away (a handle on it sees that, and
/// can see it before the loop's task has finished: "the apply loop stopped while ..."), the
/// loop's own error, which says why, is the one returned. Any other error of `fut` is its own
/// (a cut-over whose COMMIT is in doubt says which table to look at, whatever else fails).
async fn guard<T>(
    fut: impl Future<Output = Result<T>>,
    abort: &mut watch::Receiver<Option<String>>,
    mut background: Option<&mut Background>,
) -> Result<T> {
    if let Some(why) = abort.borrow().clone() {
        return Err(Error::new(ErrorKind::Aborted, why));
    }
    let failed = async {
        match background.as_deref_mut() {
            Some(bg) => bg.failed().await,
            None => std::future::pending().await,
        }
    };
    let own_error = tokio::select! {
        biased;
        why = aborted(abort) => return Err(Error::new(ErrorKind::Aborted, why)),
        e = failed => return Err(e),
        r = fut => match r {
            Ok(v) => return Ok(v),
            Err(e) => e,
        },
    };
    match background {
        Some(bg) if crate::apply::writer::is_loop_gone(&own_error) => match tokio::time::timeout(Duration::from_secs(2), bg.failed()).await {
            Ok(cause) => Err(cause),
            Err(_) => Err(own_error),
        },
        _ => Err(own_error),
    }
}

/// Resolves with the abort reason once there is one.
pub(crate) async fn aborted(abort: &mut watch::Receiver<Option<String>>) -> String {
    // The reason is copied out before any other await: the borrow of the watch is a lock
    // guard, and holding it across an await would make the run's future not `Send` (the
    // fleet runs several runs as spawned tasks).
    let why = abort.wait_for(Option::is_some).await.map(|why| why.clone().unwrap_or_default());
    match why {
        Ok(why) => why,
        Err(_) => std::future::pending().await,
    }
}

/// `VACUUM` runs outside a transaction block: a single statement of its own.
/// `VACUUM (ANALYZE)` of the ghost on a session of its own.
async fn vacuum_ghost(conn: &crate::conn::ConnInfo, ghost: &QualifiedName) -> Result<()> {
    let conn = conn.with_application_name("pg-ghost vacuum");
    let client = conn.connect().await?;
    let started = std::time::Instant::now();
    tracing::info!(ghost = %ghost, "vacuuming and analyzing the ghost (SHARE UPDATE EXCLUSIVE on the ghost only; the original is not locked)");
    // On a lost connection, vacuumed again once the lost VACUUM has ended: cheap if it went
    // through (the visibility map lets the second skip every page).
    ghost::BuildSession::new(&client, Some(&conn)).execute(&format!("VACUUM (ANALYZE) {}", ghost.sql()), &format!("vacuuming and analyzing {ghost}")).await?;
    tracing::info!(ghost = %ghost, secs = started.elapsed().as_secs_f64(), "ghost vacuumed and analyzed");
    Ok(())
}

/// The ghost goes with the materialized views built on it.
pub(crate) async fn drop_ghost(client: &Client, ghost: &QualifiedName, wait: &ghost::LockWait) -> Result<()> {
    materialized::drop_leftovers(client, ghost).await?;
    dropping::drop_table(client, ghost, wait).await
}

async fn drop_table(client: &Client, table: &QualifiedName) -> Result<()> {
    client.batch_execute(&format!("DROP TABLE IF EXISTS {}", table.sql())).await.map_err(Error::from)
}

/// Waits while the postpone flag file exists, or until `unpostpone` comes through the socket.
async fn wait_while_postponed(path: std::path::PathBuf, unpostpone: Arc<tokio::sync::Notify>) -> Result<()> {
    let removed = async {
        while tokio::fs::try_exists(&path).await.unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = removed => tracing::info!(flag = %path.display(), "postpone flag removed: proceeding to the cut-over"),
        _ = unpostpone.notified() => tracing::info!("unpostpone: proceeding to the cut-over"),
    }
    Ok(())
}
