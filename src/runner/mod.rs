//! The run, as a linear script over phases: inspect → prepare → stream → copy → build
//! indexes → catch up → postpone → cut-over → cleanup.
//!
//! The runner owns every task and connection it starts. Each phase runs under a guard that
//! stops it when the run is aborted (panic flag, signal) or a background task (stream,
//! apply) fails. Cleanup runs on every exit path: the slot and the publication are always
//! dropped (a forgotten slot retains WAL until the disk fills); the ghost is dropped after a
//! dry run and kept for inspection after a failure.

mod cleanup;
mod replication;
mod status;
mod watchers;

pub use cleanup::cleanup;

use crate::alter;
use crate::config::Config;
use crate::copy::{copy_table, CopyJob, CopyProgress, GateState};
use crate::cutover::{CutOver, MESSAGE_PREFIX};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::{self, Ghost};
use crate::inspect::{self, PreflightOptions};
use crate::lsn::Lsn;
use crate::names::Names;
use crate::phase::Phase;
use crate::schema::TableInfo;
use crate::replication::slot;
use crate::sql::QualifiedName;
use replication::{Background, Replication};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_postgres::Client;

/// How a successful run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The swap committed.
    CutOver,
    /// Without `--execute`: everything but the swap checked out and was cleaned up.
    DryRunComplete,
}

/// Keys still pending below which the stream counts as caught up for the cut-over.
const CAUGHT_UP_KEYS: usize = 1_000;

/// What this run has created so far, so cleanup removes exactly that.
#[derive(Default)]
struct Created {
    changelog: bool,
    ghost: bool,
    publication: bool,
    slot: bool,
}

struct Run {
    cfg: Config,
    client: Client,
    phase: watch::Sender<Phase>,
    abort: watch::Receiver<Option<String>>,
    created: Created,
    names: Option<Names>,
    cut_over: bool,
}

/// Flags that are accepted by the command line but whose feature this version lacks: a DBA
/// must not believe a safety net is there when it is not.
fn refuse_unavailable(cfg: &Config) -> Result<()> {
    let unavailable = [
        (cfg.resume, "--resume"),
        (cfg.test_on_replica.is_some(), "--test-on-replica"),
        (cfg.cut_over.kill_blockers_after.is_some(), "--cut-over-kill-blockers-after"),
    ];
    match unavailable.iter().find(|(given, _)| *given) {
        Some((_, flag)) => Err(Error::config(format!("{flag} is not available in this version of pg-ghost"))),
        None => Ok(()),
    }
}

pub async fn run(cfg: Config) -> Result<Outcome> {
    refuse_unavailable(&cfg)?;
    let client = cfg.conn.with_application_name("pg-ghost").connect().await?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Inspect);
    let (abort_tx, abort_rx) = watch::channel(None);
    let watchers = watchers::spawn(cfg.panic_flag_file.clone(), abort_tx);
    let mut run = Run { cfg, client, phase: phase_tx, abort: abort_rx, created: Created::default(), names: None, cut_over: false };
    let mut background = None;
    let result = run.phases(&mut background, phase_rx).await;
    run.phase.send_replace(Phase::Cleanup);
    let cleaned = run.cleanup(background, result.is_ok()).await;
    watchers.abort();
    run.phase.send_replace(if result.is_ok() { Phase::Done } else { Phase::Failed });
    let outcome = result?;
    cleaned?;
    Ok(outcome)
}

impl Run {
    fn enter(&self, phase: Phase) {
        tracing::info!(phase = phase.name(), "phase");
        self.phase.send_replace(phase);
    }

    async fn phases(&mut self, background: &mut Option<Background>, phase_rx: watch::Receiver<Phase>) -> Result<Outcome> {
        self.enter(Phase::Inspect);
        let info = self.inspect().await?;
        let names = Names::for_table(&info.name, info.oid);
        self.names = Some(names.clone());

        self.enter(Phase::Prepare);
        let ghost = self.prepare(&info, &names).await?;

        self.enter(Phase::Stream);
        replication::create_publication(&self.client, &names, &info).await?;
        self.created.publication = true;
        let created_slot = replication::create_slot(&self.cfg.conn, &self.client, &names);
        guard(created_slot, &mut self.abort.clone(), None).await?;
        self.created.slot = true;
        let (repl, bg) = Replication::start(&self.cfg.conn, &names, &info, &ghost).await?;
        let bg = background.insert(bg);

        let progress = CopyProgress::new(self.cfg.tunables.chunk_size);
        let status = status::spawn(
            self.cfg.status_interval,
            phase_rx,
            progress.clone(),
            repl.writer.stats.clone(),
            repl.positions.clone(),
            info.estimated_rows,
        );
        let result = self.stream_and_swap(&info, &names, &ghost, &repl, bg, progress).await;
        status.abort();
        result
    }

    async fn inspect(&mut self) -> Result<TableInfo> {
        let name = inspect::resolve_table(&self.client, &self.cfg.table).await?;
        let info = inspect::table_info(&self.client, &name, self.cfg.key.as_deref()).await?;
        let names = Names::for_table(&info.name, info.oid);
        // The ALTER is read before anything is created, so a malformed one changes nothing.
        alter::plan(&self.cfg.alter, &names.ghost, &HashMap::new())?;
        let options = PreflightOptions::new(&names, self.cfg.initially_drop_ghost_table);
        let server = inspect::preflight(&self.client, &info, &options).await?;
        tracing::info!(
            table = %info.name,
            oid = info.oid,
            estimated_rows = info.estimated_rows,
            key = %info.key.columns.join(", "),
            server = %server.server_version,
            "inspected"
        );
        Ok(info)
    }

    async fn prepare(&mut self, info: &TableInfo, names: &Names) -> Result<Ghost> {
        if self.cfg.initially_drop_ghost_table {
            self.client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", names.ghost.sql()))
                .await
                .context("dropping the ghost table of an earlier run")?;
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
        let ghost = ghost::create(&mut self.client, info, &names.ghost, &self.cfg.alter).await?;
        self.created.ghost = true;
        if !ghost.alter.rewrites {
            tracing::info!("this ALTER changes only the catalog: a plain ALTER TABLE would be instant; pg-ghost proceeds as asked");
        }
        Ok(ghost)
    }

    /// Records the run's state in the changelog table, for DBAs and for a resume.
    async fn record_state(&self, names: &Names, state: &str) {
        let sql = format!(
            "INSERT INTO {} (key, value) VALUES ('state', $1) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = clock_timestamp()",
            names.changelog.sql()
        );
        if let Err(e) = self.client.execute(&sql, &[&state]).await {
            tracing::debug!(error = %e, "could not record the state in the changelog table");
        }
    }

    async fn stream_and_swap(
        &mut self,
        info: &TableInfo,
        names: &Names,
        ghost: &Ghost,
        repl: &Replication,
        bg: &mut Background,
        progress: Arc<crate::copy::CopyProgress>,
    ) -> Result<Outcome> {
        self.enter(Phase::Copy);
        self.record_state(names, "copy").await;
        let (gate_tx, gate) = watch::channel(GateState::Open);
        let job = CopyJob {
            conn: self.cfg.conn.clone(),
            orig: info.name.clone(),
            ghost: ghost.name.clone(),
            mapping: ghost.mapping.clone(),
            workers: self.cfg.copy.workers,
            chunk_time: self.cfg.copy.chunk_time,
            changelog: Some(names.changelog.clone()),
        };
        let started = std::time::Instant::now();
        let copied = guard(copy_table(job, repl.inflight.clone(), progress.clone(), gate), &mut self.abort.clone(), Some(&mut *bg)).await;
        if let Err(e) = copied {
            gate_tx.send_replace(GateState::Abort(e.to_string()));
            return Err(e);
        }
        tracing::info!(rows = progress.rows.load(Ordering::Relaxed), secs = started.elapsed().as_secs_f64(), "row copy complete");

        self.enter(Phase::BuildIndexes);
        self.record_state(names, "build-indexes").await;
        guard(ghost::rebuild_deferred(&self.client, ghost), &mut self.abort.clone(), Some(&mut *bg)).await?;

        self.enter(Phase::CatchUp);
        guard(self.catch_up(repl), &mut self.abort.clone(), Some(&mut *bg)).await?;

        if let Some(flag) = self.cfg.cut_over.postpone_flag_file.clone() {
            if flag.exists() {
                self.enter(Phase::Postponed);
                self.record_state(names, "postponed").await;
                tracing::info!(flag = %flag.display(), "cut-over postponed while the flag file exists");
                guard(wait_while_exists(flag), &mut self.abort.clone(), Some(&mut *bg)).await?;
                guard(self.catch_up(repl), &mut self.abort.clone(), Some(&mut *bg)).await?;
            }
        }

        if !self.cfg.execute {
            tracing::info!("dry run: the ghost is complete and current; no cut-over without --execute");
            return Ok(Outcome::DryRunComplete);
        }

        self.enter(Phase::CutOver);
        self.record_state(names, "cut-over").await;
        let old_table = self.old_table_name(names).await?;
        let cut_over = CutOver {
            conn: &self.cfg.conn,
            orig: info,
            ghost,
            old_table: &old_table,
            writer: &repl.writer,
            flush: &repl.flush,
            lock_timeout: self.cfg.cut_over.lock_timeout,
            retries: self.cfg.cut_over.retries,
            abort: self.abort.clone(),
        };
        let report = guard(cut_over.run(), &mut self.abort.clone(), Some(&mut *bg)).await?;
        self.cut_over = true;
        tracing::info!(
            attempts = report.attempts,
            lock_wait_ms = report.lock_wait.as_millis() as u64,
            lock_held_ms = report.lock_held.as_millis() as u64,
            final_keys = report.final_keys,
            old_table = %old_table,
            "cut-over complete: {} now has the new definition",
            info.name
        );
        Ok(Outcome::CutOver)
    }

    /// Waits until the stream has delivered everything committed up to now and the apply
    /// backlog is small, so the cut-over's sentinel arrives at once.
    async fn catch_up(&self, repl: &Replication) -> Result<()> {
        let marker: String = format!("catch-up {}", std::process::id());
        let lsn: String = self
            .client
            .query_one("SELECT pg_logical_emit_message(true, $1, $2)::text", &[&MESSAGE_PREFIX, &marker])
            .await
            .context("emitting the catch-up marker")?
            .try_get(0)?;
        let target: Lsn = lsn.parse().map_err(|e| Error::protocol(format!("{e}")))?;
        let mut stats = repl.writer.stats.clone();
        stats
            .wait_for(|s| s.received >= target && s.backlog_keys < CAUGHT_UP_KEYS)
            .await
            .map_err(|_| Error::internal("the apply loop stopped while catching up"))?;
        Ok(())
    }

    async fn old_table_name(&self, names: &Names) -> Result<String> {
        if !self.cfg.cut_over.timestamp_old_table {
            return Ok(names.old.name.clone());
        }
        let stamp: String = self.client.query_one("SELECT to_char(now(), 'YYYYMMDDHH24MISS')", &[]).await?.try_get(0)?;
        let orig = names.ghost.name.trim_start_matches('_').trim_end_matches("_gho").to_string();
        Ok(crate::sql::fit_ident(&format!("_{orig}_{stamp}_del")))
    }

    async fn cleanup(&mut self, background: Option<Background>, succeeded: bool) -> Result<()> {
        let Some(names) = self.names.clone() else { return Ok(()) };
        let mut first_error = None;
        if let Some(bg) = background {
            if let Err(e) = bg.shutdown().await {
                tracing::debug!(error = %e, "stopping the stream cleanly failed; dropping the slot over SQL");
            }
        }
        let backoff = crate::error::Backoff::default();
        let mut note = |what: &str, result: Result<()>| {
            if let Err(e) = result {
                tracing::error!(object = what, error = %e, "cleanup failed: run `pg-ghost cleanup` to retry");
                first_error.get_or_insert(e.context(format!("dropping the {what}")));
            }
        };
        if self.created.slot {
            note("slot", slot::drop_slot(&self.client, &names.slot, &backoff).await.map(|_| ()));
        }
        if self.created.publication {
            note("publication", slot::drop_publication(&self.client, &names.publication).await);
        }
        if self.created.changelog {
            note("changelog table", drop_table(&self.client, &names.changelog).await);
        }
        if self.created.ghost && !self.cut_over && !self.cfg.execute {
            note("ghost table", drop_table(&self.client, &names.ghost).await);
        }
        if self.cut_over && self.cfg.cut_over.ok_to_drop_table {
            // The old table's name was chosen at cut-over; with a timestamp it is only in the log.
            if !self.cfg.cut_over.timestamp_old_table {
                note("old table", drop_table(&self.client, &names.old).await);
            }
        } else if !succeeded && self.created.ghost && self.cfg.execute {
            tracing::warn!(
                ghost = %names.ghost,
                "the ghost table is kept for inspection; the original is untouched. Remove it with `pg-ghost cleanup` or DROP TABLE {}",
                names.ghost.sql()
            );
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Runs `fut` until it ends, the run is aborted, or a background task fails.
async fn guard<T>(
    fut: impl Future<Output = Result<T>>,
    abort: &mut watch::Receiver<Option<String>>,
    background: Option<&mut Background>,
) -> Result<T> {
    if let Some(why) = abort.borrow().clone() {
        return Err(Error::new(ErrorKind::Aborted, why));
    }
    let failed = async {
        match background {
            Some(bg) => bg.failed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        why = aborted(abort) => Err(Error::new(ErrorKind::Aborted, why)),
        e = failed => Err(e),
        r = fut => r,
    }
}

/// Resolves with the abort reason once there is one.
pub(crate) async fn aborted(abort: &mut watch::Receiver<Option<String>>) -> String {
    match abort.wait_for(Option::is_some).await {
        Ok(why) => why.clone().unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

async fn drop_table(client: &Client, table: &QualifiedName) -> Result<()> {
    client.batch_execute(&format!("DROP TABLE IF EXISTS {}", table.sql())).await.map_err(Error::from)
}

async fn wait_while_exists(path: std::path::PathBuf) -> Result<()> {
    while tokio::fs::try_exists(&path).await.unwrap_or(false) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!(flag = %path.display(), "postpone flag removed: proceeding to the cut-over");
    Ok(())
}
