//! The revert window (`--revertible-for`): after the swap, the old table is kept current so
//! that `pg-ghost revert` can swap it back without losing a write.
//!
//! No write is lost across the swap, by construction rather than by timing:
//! - Before the cut-over, a second publication (FOR TABLE the ghost, which becomes the new
//!   table: membership follows the OID) and a second slot are created, publication first, so
//!   the slot's consistent point is before the swap and every transaction that commits after
//!   it is decoded with the publication in place.
//! - The swap's own transaction, under its ACCESS EXCLUSIVE lock, emits a transactional
//!   logical message (the marker) and records the marker's WAL position `M` in the changelog,
//!   both committing with the swap. The reverse stream drops every transaction whose commit
//!   ends at or before `M`, and the one that carries the marker (the swap's own, with its final
//!   flush into the ghost); it applies everything else
//!   ([`crate::apply::changes::ChangeExtractor::skipping_through`]). Why that is exact: a
//!   transaction that wrote the ghost before the swap finished before the swap got its lock,
//!   so its commit is before `M`; a transaction that writes the new table can only take its
//!   lock once the swap has committed, so its commit ends after the swap's, after `M`. A
//!   rolled-back attempt's marker and position are rolled back with it.
//!   (An LSN read after the swap's commit would not do: a write committed between the commit
//!   and the read would fall below it and be skipped.) The rule looks at each transaction
//!   alone, so a reverse stream resumed after a crash, from whatever position its slot had
//!   confirmed, drops and applies exactly the same transactions (`--resume`).
//! - The reverse apply is the forward one with the mapping reversed
//!   ([`crate::ghost::Mapping::reverse`]): changed keys re-read from the new table, written
//!   to the old one by upsert. Nothing runs in the application's transactions.
//!
//! The revert itself is the cut-over machinery with the roles swapped: the new table is
//! locked, a sentinel drains the reverse stream, the last keys are flushed under the lock, and
//! the names recorded inside the forward swap's transaction are put back
//! ([`crate::cutover::swap_back::revert`]). A value that cannot be written back (a bigint past
//! int's range) makes the revert impossible: the window ends at once, the new table stays,
//! and the old table is kept whatever `--ok-to-drop-table` says.
//!
//! `pg-ghost revert` and `pg-ghost finalize` reach the running pg-ghost through its changelog
//! table (key `window_request`); it answers in the same table (key `state`). The control
//! socket's `revert` and `finalize` do the same from inside.

use super::replication::{Background, Replication};
use super::{aborted, Outcome, Run};
use crate::checkpoint;
use crate::cutover::Window;
use crate::dependents::{back, materialized};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::Ghost;
use crate::hooks::HookEvent;
use crate::inspect;
use crate::names::Names;
use crate::replication::failover::StandbyWait;
use crate::phase::Phase;
use crate::replication::slot;
use crate::schema::TableInfo;
use crate::sql::QualifiedName;
use std::time::Duration;
use tokio_postgres::Client;

/// How often the running window looks for a request from `pg-ghost revert` / `finalize`.
const REQUEST_POLL: Duration = Duration::from_millis(250);

mod refusals;
mod request;
use refusals::refuse_unserved;
pub(super) use refusals::{refuse_identity_always, refuse_lossy_write_back};
pub use request::request;

/// What the DBA asked of the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Revert,
    Finalize,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Revert => "revert",
            Request::Finalize => "finalize",
        }
    }
}

/// `revert` (true) or `finalize` (false) from the control socket.
fn socket_request(asked: Option<bool>) -> Option<Request> {
    asked.map(|revert| if revert { Request::Revert } else { Request::Finalize })
}

/// What a window state row says, as `pg-ghost revert` / `finalize` read it.
pub const STATE_OPEN: &str = "revert-window";
pub const STATE_REVERTED: &str = checkpoint::STATE_REVERTED;
pub const STATE_FINALIZED: &str = "finalized";
pub const STATE_REVERT_FAILED: &str = "revert-failed";
pub const STATE_IMPOSSIBLE: &str = "revert-impossible";

/// A revert window, opened after the swap or found by `--resume`.
pub(super) struct Opened {
    /// The table's name, carried by the new table during the window.
    table: QualifiedName,
    original_oid: u32,
    original_columns: Vec<crate::schema::Column>,
    /// The old table: the original under its `_del` name.
    old: QualifiedName,
    /// The forward mapping and ALTER.
    mapping: crate::ghost::Mapping,
    alter: crate::alter::AlterPlan,
    marker: String,
    through: crate::lsn::Lsn,
    length: Duration,
}

/// How the window ended.
enum End {
    Finalize(&'static str),
    Reverted,
    Impossible(Error),
}

impl Run {
    /// Before the cut-over: refuses what the window cannot serve, then creates the reverse
    /// publication and slot. Returns the marker the swap must emit.
    pub(super) async fn open_window(&mut self, names: &Names, info: &TableInfo, ghost: &Ghost) -> Result<String> {
        // The reverse mapping must exist before anything is created.
        let new_columns = inspect::columns(&self.client, ghost.oid).await?;
        ghost.mapping.reverse(&info.columns, &new_columns)?;
        refuse_unserved(&self.client, info, ghost).await?;
        super::replication::create_reverse_publication(&self.client, &names.reverse, ghost).await?;
        self.created.reverse = true;
        let reverse_names = Names { slot: names.reverse.clone(), publication: names.reverse.clone(), ..names.clone() };
        // Synchronized to standbys like the run's own slot, whether this run or an earlier one
        // it resumed asked for it.
        let failover = self.cfg.failover_slot || crate::replication::failover::is_failover(&self.client, &names.slot).await?;
        let created = super::replication::create_slot(&self.cfg.conn, &self.client, &reverse_names, failover);
        super::guard(created, &mut self.abort.clone(), None).await?;
        let marker = format!("swap {} {}", std::process::id(), ghost.oid);
        self.record_value(names, checkpoint::REVERT_MARKER, &marker).await;
        self.record_value(names, checkpoint::REVERT_SLOT, &names.reverse).await;
        tracing::info!(slot = %names.reverse, "reverse stream ready: every write to the new table after the swap will be applied to the old one");
        Ok(marker)
    }

    /// After the swap committed: runs the window until it ends, and returns how the run ends.
    pub(super) async fn revert_window(
        &mut self,
        info: &TableInfo,
        names: &Names,
        ghost: &Ghost,
        background: &mut Option<Background>,
        length: Duration,
        marker: &str,
    ) -> Result<Outcome> {
        // The forward stream's work is done: its slot must not retain WAL during the window.
        if let Some(bg) = background.take() {
            if let Err(e) = bg.shutdown().await {
                tracing::debug!(error = %e, "stopping the forward stream cleanly failed; dropping its slot over SQL");
            }
        }
        self.ensure_session().await?;
        slot::drop_slot(&self.client, &names.slot, &crate::error::Backoff::default()).await?;
        self.created.slot = false;
        slot::drop_publication(&self.client, &names.publication).await?;
        self.created.publication = false;
        let ends = self.client.query_one("SELECT (now() + $1::text::interval)::text", &[&format!("{} seconds", length.as_secs_f64())]).await?;
        let ends: String = ends.try_get(0)?;
        self.record_value(names, checkpoint::WINDOW_ENDS, &ends).await;
        let old_name = self.old_table.clone().ok_or_else(|| Error::internal("the revert window opened before the swap committed"))?;
        let window = Opened {
            table: info.name.clone(),
            original_oid: info.oid,
            original_columns: info.columns.clone(),
            old: names.old.sibling(old_name),
            mapping: ghost.mapping.clone(),
            alter: ghost.alter.clone(),
            marker: marker.to_string(),
            through: self.recorded_lsn(names).await?,
            length,
        };
        self.serve(names, &window, background).await
    }

    /// `--resume --revertible-for` after a pg-ghost killed during its revert window: the
    /// window goes on with the reverse slot where it stood (its confirmed position), until the
    /// end the first run set. The gate drops the same transactions whatever the position.
    pub(super) async fn resume_window(&mut self, info: &TableInfo, names: Names, background: &mut Option<Background>) -> Result<Outcome> {
        let saved = checkpoint::read(&self.client, &names.changelog)
            .await?
            .and_then(|s| s.plan)
            .ok_or_else(|| Error::refused("the earlier run's plan is missing from its changelog table: its revert window cannot be resumed"))?;
        let reverse = read(&self.client, &names.changelog, checkpoint::REVERT_SLOT).await?;
        match reverse {
            Some(slot_name) if slot_name == names.reverse => {}
            _ => return Err(Error::refused(format!("the earlier run on {} had no revert window to resume (no reverse slot recorded)", info.name))),
        }
        match slot::slot_info(&self.client, &names.reverse).await? {
            None => return Err(Error::refused(format!("the revert window's slot {} is gone: the window cannot be resumed (`pg-ghost cleanup --table {}` removes what is left)", names.reverse, info.name))),
            Some(s) if s.active_pid.is_some() => return Err(Error::refused(format!("the revert window's slot {} is in use: is the earlier pg-ghost still running?", names.reverse))),
            Some(_) => {}
        }
        let marker = read(&self.client, &names.changelog, checkpoint::REVERT_MARKER)
            .await?
            .ok_or_else(|| Error::refused("the swap's marker is missing from the changelog table: the revert window cannot be resumed"))?;
        let row = self
            .client
            .query_one(
                "SELECT n.nspname::text, c.relname::text, greatest(0, extract(epoch FROM ($2::text::timestamptz - now())))::float8
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                &[&saved.table_oid, &read(&self.client, &names.changelog, checkpoint::WINDOW_ENDS).await?.unwrap_or_else(|| "-infinity".into())],
            )
            .await
            .context("finding the old table of the revert window")?;
        let old = QualifiedName::new(row.try_get::<_, String>(0)?, row.try_get::<_, String>(1)?);
        let left = Duration::from_secs_f64(row.try_get::<_, f64>(2)?);
        self.names = Some(names.clone());
        self.created = super::Created { changelog: true, reverse: true, ..Default::default() };
        self.old_table = Some(old.name.clone());
        tracing::info!(table = %info.name, old_table = %old, left_secs = left.as_secs(), "resuming the earlier run's revert window");
        let window = Opened {
            table: info.name.clone(),
            original_oid: saved.table_oid,
            original_columns: inspect::columns(&self.client, saved.table_oid).await?,
            old,
            mapping: saved.ghost.mapping.clone(),
            alter: saved.ghost.alter.clone(),
            marker,
            through: self.recorded_lsn(&names).await?,
            length: left,
        };
        self.serve(&names, &window, background).await
    }

    async fn recorded_lsn(&mut self, names: &Names) -> Result<crate::lsn::Lsn> {
        let text = read(&self.client, &names.changelog, checkpoint::REVERT_MARKER_LSN)
            .await?
            .ok_or_else(|| Error::internal("the swap's marker position is missing from the changelog table"))?;
        text.parse().map_err(|e| Error::internal(format!("the swap's marker position {text:?}: {e}")))
    }

    /// Runs the window until it ends (its length elapsed, a request, a failure); stops the
    /// reverse stream and drops its slot and publication.
    async fn serve(&mut self, names: &Names, w: &Opened, background: &mut Option<Background>) -> Result<Outcome> {
        self.enter(Phase::RevertWindow);
        let old = w.old.clone();
        let new = inspect::table_info(&self.client, &w.table, self.cfg.key.as_deref()).await?;
        let reverse = w.mapping.reverse(&w.original_columns, &new.columns)?;
        let target = Ghost {
            name: old.clone(),
            oid: w.original_oid,
            mapping: reverse.mapping.clone(),
            alter: w.alter.clone(),
            deferred: Vec::new(),
            key_index: None,
            temp_key_index: None,
            replica_identity_index: None,
            cluster_on: None,
            identity_always: Vec::new(),
            autovacuum: None,
            partitions: None,
            partition_autovacuum: Vec::new(),
        };
        let gate = (w.through, w.marker.as_str());
        let (repl, bg) = Replication::start_reverse(&self.cfg.conn, &names.reverse, &names.reverse, gate, &new, &target, &reverse.cast_back).await?;
        *background = Some(bg);
        self.record_state(names, STATE_OPEN).await;
        tracing::info!(
            table = %w.table,
            old_table = %old,
            left_secs = w.length.as_secs(),
            "revert window open: {} is kept current; `pg-ghost revert --table {}` swaps it back, `pg-ghost finalize` ends the window",
            old,
            w.table
        );
        let table = &w.table;
        let end = self.serve_window(names, &new, &target, &repl, background, w.length).await;
        let end = match end {
            Err(e) if e.kind() == ErrorKind::Aborted && stopped_by_signal() => return Err(self.leave_open(table, background, e).await),
            // A session found a promoted standby: the window is taken up there (`--resume`).
            Err(e) if e.kind() == ErrorKind::FailedOver => return Err(self.leave_open(table, background, e).await),
            other => other,
        };
        if end.is_err() {
            // The window failed: the old table may be all that is left of the old shape.
            self.keep_old_table = true;
        }
        // The reverse stream stops in every case; its slot goes with it.
        let stopped = match background.take() {
            Some(bg) => bg.shutdown().await.is_ok(),
            None => false,
        };
        self.ensure_session().await?;
        if !stopped {
            slot::drop_slot(&self.client, &names.reverse, &crate::error::Backoff::default()).await?;
        }
        slot::drop_publication(&self.client, &names.reverse).await?;
        self.created.reverse = false;
        match end? {
            End::Finalize(why) => {
                self.record_state(names, STATE_FINALIZED).await;
                tracing::info!(table = %table, "revert window ended ({why}): {table} keeps the new definition; the reverse slot is dropped");
                Ok(Outcome::CutOver)
            }
            End::Reverted => {
                self.record_state(names, STATE_REVERTED).await;
                // The table that carried the change is the one `--ok-to-drop-table` drops now.
                self.old_table = Some(names.ghost.name.clone());
                tracing::info!(table = %table, kept = %names.ghost, "reverted: {table} is the original again, with every write made during the window");
                Ok(Outcome::Reverted)
            }
            End::Impossible(e) => {
                // The old table is all that is left of the old shape: kept whatever the flags say.
                self.keep_old_table = true;
                self.record_state(names, &format!("{STATE_IMPOSSIBLE}: {}", e.message())).await;
                tracing::warn!(old_table = %old, "the revert window ended early; the old table is kept whatever --ok-to-drop-table says");
                Ok(Outcome::CutOver)
            }
        }
    }

    /// SIGINT or SIGTERM in the window (a restart, a deploy) does not end it: the reverse
    /// stream stops where it stands, and its slot, its publication and the changelog stay for
    /// `pg-ghost revert`, `finalize` or `run --resume` to take the window up (`pg-ghost
    /// cleanup` ends it). Dropping the slot would make the revert impossible for good, where
    /// keeping it costs WAL until then. The panic flag still ends the window at once.
    async fn leave_open(&mut self, table: &QualifiedName, background: &mut Option<Background>, e: Error) -> Error {
        self.keep_old_table = true;
        if let Some(bg) = background.take() {
            if let Err(stop) = bg.stop_keeping_slot().await {
                tracing::debug!(error = %stop, "stopping the reverse stream cleanly failed; its slot stays where it was confirmed");
            }
        }
        // The run's cleanup leaves what the window needs.
        self.created.reverse = false;
        self.created.changelog = false;
        tracing::warn!(
            table = %table,
            "the revert window is left open, its reverse slot retaining WAL: `pg-ghost revert --table {table}` or `pg-ghost finalize --table {table}` take it up, `pg-ghost cleanup --table {table}` ends it"
        );
        e.context(format!("the revert window on {table} is left open"))
    }

    /// Waits for the window's end: its length elapsed, a request, or a reverse apply that
    /// failed. A revert that fails (the lock not had in time) leaves the window open.
    async fn serve_window(
        &mut self,
        names: &Names,
        new: &TableInfo,
        target: &Ghost,
        repl: &Replication,
        background: &mut Option<Background>,
        length: Duration,
    ) -> Result<End> {
        let deadline = tokio::time::Instant::now() + length;
        let mut poll = tokio::time::interval(REQUEST_POLL);
        let mut report = tokio::time::interval(self.cfg.status_interval);
        let mut abort = self.abort.clone();
        let mut socket = self.controls.window.subscribe();
        socket.mark_unchanged();
        // A request left while no pg-ghost served the window comes before its end, even one
        // already past (`pg-ghost revert` taking the window up).
        let mut pending = self.take_request(names).await;
        loop {
            let bg = background.as_mut().ok_or_else(|| Error::internal("the reverse stream is not running"))?;
            let request = if let Some(r) = pending.take() { r } else { tokio::select! {
                biased;
                why = aborted(&mut abort) => return Err(Error::new(ErrorKind::Aborted, why).context("during the revert window (the new table keeps the name; the old table is kept)")),
                e = bg.failed() => {
                    if e.kind() != ErrorKind::RevertImpossible {
                        return Err(e.context("applying the new table's changes to the old one"));
                    }
                    self.revert_impossible(&e).await;
                    return Ok(End::Impossible(e));
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(End::Finalize("its time is up")),
                _ = report.tick() => {
                    let retained = self.window_status(names, target, repl, deadline).await;
                    if let (Some(limit), Some(retained)) = (self.cfg.throttle.critical_retained_wal, retained) {
                        if retained > limit {
                            let e = Error::new(ErrorKind::Aborted, format!(
                                "the reverse slot retains {retained} bytes of WAL, over --critical-retained-wal ({limit}): the revert window is given up so that the disk does not fill"
                            ));
                            tracing::error!(error = %e, "revert window abandoned; the new table keeps the name, the old table is kept");
                            return Ok(End::Impossible(e));
                        }
                    }
                    continue;
                }
                Ok(()) = socket.changed() => match socket_request(*socket.borrow_and_update()) {
                    Some(r) => r,
                    None => continue,
                },
                _ = poll.tick() => match self.take_request(names).await {
                    Some(r) => r,
                    None => continue,
                },
            } };
            tracing::info!(request = request.name(), "revert window request");
            match request {
                Request::Finalize => return Ok(End::Finalize("finalize")),
                Request::Revert => match self.swap_back(names, new, target, repl, background).await {
                    Ok(()) => return Ok(End::Reverted),
                    Err(e) if e.kind() == ErrorKind::RevertImpossible => {
                        self.drop_materialized_back(target).await;
                        self.revert_impossible(&e).await;
                        return Ok(End::Impossible(e));
                    }
                    // Materialized views built for the revert on the old table stay: the run
                    // that takes the window up drops them before it builds them again.
                    Err(e) if matches!(e.kind(), ErrorKind::Aborted | ErrorKind::Connection | ErrorKind::Internal | ErrorKind::FailedOver) => return Err(e),
                    Err(e) => {
                        self.drop_materialized_back(target).await;
                        tracing::error!(error = %e.chain(), "the revert failed; the new table keeps the name and the window stays open (try `pg-ghost revert` again)");
                        self.record_state(names, &format!("{STATE_REVERT_FAILED}: {}", e.message())).await;
                        self.enter(Phase::RevertWindow);
                    }
                },
            }
        }
    }

    /// The revert: catch up, then the cut-over machinery with the roles swapped.
    async fn swap_back(&mut self, names: &Names, new: &TableInfo, target: &Ghost, repl: &Replication, background: &mut Option<Background>) -> Result<()> {
        self.enter(Phase::Revert);
        let recorded = self
            .client
            .query_opt(&format!("SELECT value FROM {} WHERE key = $1", names.changelog.sql()), &[&checkpoint::REVERT_NAMES])
            .await
            .context("reading the names recorded at the swap")?
            .ok_or_else(|| Error::internal("the names recorded at the swap are missing from the changelog table"))?
            .try_get::<_, String>(0)?;
        // What cannot move back is refused before anything waits on a lock (and again under it).
        let tables = back::Tables {
            name: &new.name,
            new_oid: new.oid,
            new_columns: &new.columns,
            old: &target.name,
            old_oid: target.oid,
            carried: &target.mapping.carried,
        };
        back::read(&self.client, &tables, &names.reverse, None).await?;
        let bg = background.as_mut().ok_or_else(|| Error::internal("the reverse stream is not running"))?;
        self.build_materialized_back(new, target, bg).await?;
        super::guard(self.catch_up(repl), &mut self.abort.clone(), Some(&mut *bg)).await?;
        let mut cut_over = self.cut_over(new, target, &names.ghost.name, repl, false);
        cut_over.window = Window::Revert { recorded: &recorded, changelog: &names.changelog, reverse_publication: &names.reverse };
        self.controls.cut_over_locked.send_replace(true);
        let report = super::guard(cut_over.run(), &mut self.abort.clone(), Some(&mut *bg)).await;
        self.controls.cut_over_locked.send_replace(false);
        let report = report?;
        tracing::info!(
            attempts = report.attempts,
            lock_held_ms = report.lock_held.as_millis() as u64,
            final_keys = report.final_keys,
            dependents = report.dependents,
            "swap back committed"
        );
        // The swap back has committed: a key that fails to validate is named, the revert stands.
        if let Err(e) = crate::dependents::validate(&self.client, &report.validations, self.cfg.cut_over.lock_timeout, self.cfg.cut_over.retries).await {
            tracing::error!(error = %e.chain(), "reverted, but a foreign key moved back could not be validated");
        }
        Ok(())
    }

    /// Materialized views that read the new table are built again on the old one before the
    /// revert's lock, as the forward run builds them on the ghost; one the old table's columns
    /// cannot serve refuses the revert, naming it.
    async fn build_materialized_back(&mut self, new: &TableInfo, target: &Ghost, bg: &mut Background) -> Result<()> {
        self.materialized.clear();
        let views = materialized::read_recipes(&mut self.client, new.oid).await?;
        if views.is_empty() {
            return Ok(());
        }
        tracing::info!(count = views.len(), "building the materialized views that read the table on the old table");
        let build = materialized::build(&self.client, &views, &new.name, new.oid, &target.name);
        match super::guard(build, &mut self.abort.clone(), Some(bg)).await {
            Ok(built) => {
                self.materialized = built;
                Ok(())
            }
            Err(e) => {
                self.drop_materialized_back(target).await;
                Err(Error::refused(format!("a materialized view cannot be built again on the old table, so the revert is refused: {}", e.message())))
            }
        }
    }

    /// After a revert that did not commit: the views built for it on the old table go.
    async fn drop_materialized_back(&mut self, target: &Ghost) {
        self.materialized.clear();
        if let Err(e) = materialized::drop_leftovers(&self.client, &target.name).await {
            tracing::warn!(error = %e, old_table = %target.name, "could not drop the materialized views built on the old table for the revert");
        }
    }

    async fn revert_impossible(&mut self, e: &Error) {
        tracing::error!(
            error = %e.message(),
            "REVERT IMPOSSIBLE: the new table holds a row the old table cannot take; the revert window ends now, the new table keeps the name, the old table is kept as it is"
        );
        self.controls.update_env(|env| env.with_error(e.to_string()));
        if let Err(hook) = self.controls.fire(HookEvent::RevertImpossible).await {
            tracing::warn!(error = %hook, "the on-revert-impossible hook failed");
        }
    }

    /// Reads and clears the request `pg-ghost revert` / `finalize` left in the changelog.
    async fn take_request(&mut self, names: &Names) -> Option<Request> {
        let sql = format!("DELETE FROM {} WHERE key = $1 RETURNING value", names.changelog.sql());
        let row = match self.client.query_opt(&sql, &[&checkpoint::WINDOW_REQUEST]).await {
            Ok(row) => row?,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the window's requests");
                let _ = self.ensure_session().await;
                return None;
            }
        };
        match row.try_get::<_, String>(0).ok()?.as_str() {
            "revert" => Some(Request::Revert),
            "finalize" => Some(Request::Finalize),
            other => {
                tracing::warn!(request = other, "unknown revert window request ignored");
                None
            }
        }
    }

    /// The status line of the window: what it costs (WAL the reverse slot retains, the old
    /// table's size) and how far the reverse apply is.
    async fn window_status(&self, names: &Names, target: &Ghost, repl: &Replication, deadline: tokio::time::Instant) -> Option<u64> {
        let retained = slot::slot_info(&self.client, &names.reverse).await.ok().flatten().and_then(|s| s.retained_wal_bytes);
        let size: Option<i64> = self
            .client
            .query_one("SELECT pg_total_relation_size($1::text::regclass)", &[&target.name.sql()])
            .await
            .ok()
            .and_then(|r| r.try_get(0).ok());
        let stats = repl.writer.stats.borrow().clone();
        let wal_end = repl.positions.server_wal_end();
        self.controls.progress.send_modify(|p| {
            p.phase = Phase::RevertWindow;
            p.applied = stats.applied_keys;
            p.backlog_keys = stats.backlog_keys as u64;
            p.lag_bytes = Some(wal_end.bytes_since(stats.acked));
            p.slot_retained_wal = retained;
            p.old_table_bytes = size.and_then(|s| u64::try_from(s).ok());
            p.standby_wait = repl.standbys.as_ref().and_then(StandbyWait::waiting);
        });
        tracing::info!(
            left_secs = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs(),
            retained_wal_bytes = retained,
            old_table_bytes = size,
            applied_keys = stats.applied_keys,
            backlog_keys = stats.backlog_keys,
            standby_wait_secs = repl.standbys.as_ref().and_then(StandbyWait::waiting).map(|d| d.as_secs()),
            "State: {}; the old table {} is kept current",
            Phase::RevertWindow,
            target.name
        );
        retained
    }
}

/// The run was asked to stop by SIGINT or SIGTERM (not by the panic flag or command).
fn stopped_by_signal() -> bool {
    use crate::signals::Signal;
    crate::signals::requested().is_some_and(|s| matches!(s.signal, Signal::Interrupt | Signal::Terminate))
}

/// Whether the earlier run's changelog says its revert window was open when it stopped.
pub(super) async fn was_open(client: &Client, names: &Names) -> Result<bool> {
    let state = read(client, &names.changelog, checkpoint::STATE).await?;
    Ok(state.as_deref().is_some_and(|s| s == STATE_OPEN || s.starts_with(STATE_REVERT_FAILED)))
}

/// Whether the earlier run's changelog says its revert had committed.
pub(super) async fn was_reverted(client: &Client, names: &Names) -> Result<bool> {
    Ok(read(client, &names.changelog, checkpoint::STATE).await?.as_deref() == Some(STATE_REVERTED))
}

/// The revert window's slot as the run recorded it in its changelog table, if any.
pub(crate) async fn recorded_slot(client: &Client, changelog: &QualifiedName) -> Result<Option<String>> {
    read(client, changelog, checkpoint::REVERT_SLOT).await
}


/// A value of the changelog table, or None when the row or the table is gone.
async fn read(client: &Client, changelog: &QualifiedName, key: &str) -> Result<Option<String>> {
    let exists: Option<u32> = client.query_one("SELECT to_regclass($1)::oid", &[&changelog.sql()]).await?.try_get(0)?;
    if exists.is_none() {
        return Ok(None);
    }
    match client.query_opt(&format!("SELECT value FROM {} WHERE key = $1", changelog.sql()), &[&key]).await {
        Ok(row) => Ok(row.map(|r| r.try_get(0)).transpose()?),
        // Dropped between the two statements: the run has ended.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(Error::from(e).context("reading the run's changelog table")),
    }
}
