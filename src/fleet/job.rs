//! One target's turn: the fleet's job run in this process, on the target, through the same
//! code `pg-ghost migrate` and `pg-ghost run` use (never a child process), with the
//! versions before and after read from its `pgghost.migrations`.

use super::config::{FleetConfig, Job};
use super::probe::{applied_version, Probed};
use super::report::{Status, TargetReport};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::migrate::{self, MigrateConfig, Mode};
use crate::runner::{self, Outcome};
use std::time::Instant;

/// Runs the job on `p`; never fails itself: a failure is the report's status and error.
pub async fn run(cfg: &FleetConfig, p: &Probed) -> TargetReport {
    let started = Instant::now();
    tracing::info!(tenant = %p.target.name, server = %p.server, "target starting");
    let mut report = TargetReport {
        name: p.target.name.clone(),
        server: p.server.clone(),
        size_bytes: p.size_bytes,
        status: Status::Running,
        version_before: None,
        version_after: None,
        seconds: None,
        error: None,
        note: None,
    };
    let result = match &cfg.job {
        Job::Migrate { .. } => migrate_target(cfg, p, &mut report).await,
        Job::Alter { table, clauses } => alter_target(cfg, p, table, clauses, &mut report).await,
    };
    report.seconds = Some(started.elapsed().as_secs_f64());
    match result {
        Ok(status) => {
            report.status = status;
            tracing::info!(tenant = %p.target.name, status = status.as_str(), secs = report.seconds, "target done");
        }
        Err(e) => {
            // The report and the registry say which target; the error is the target's own.
            tracing::error!(tenant = %p.target.name, error = %e.chain(), "target failed");
            report.status = Status::Failed;
            report.error = Some(e.chain());
        }
    }
    report
}

async fn migrate_target(cfg: &FleetConfig, p: &Probed, report: &mut TargetReport) -> Result<Status> {
    let Job::Migrate { dir, target, phase, out_of_order } = &cfg.job else { return Err(Error::internal("not a migrate job")) };
    let client = p.conn.with_application_name("pg-ghost fleet").connect().await?;
    report.version_before = applied_version(&client).await?;
    let mcfg = MigrateConfig {
        conn: p.conn.clone(),
        dir: dir.clone(),
        target: target.clone(),
        phase: *phase,
        mode: Mode::Apply,
        runs: cfg.runs.clone(),
        out_of_order: *out_of_order,
        format: crate::plan::Format::Text,
    };
    let result = migrate::migrate(&mcfg).await;
    // Read after a failure too: the files applied before the one that failed stay applied.
    match applied_version(&client).await {
        Ok(v) => report.version_after = v,
        Err(e) => tracing::warn!(tenant = %p.target.name, error = %e.chain(), "could not read the version after the migration"),
    }
    let out = result?;
    Ok(if out == migrate::NOTHING_TO_APPLY { Status::Skipped } else { Status::Succeeded })
}

/// A change has no version: that it was made is read from the target's history of runs, a
/// run that succeeded with the same statement (by its fingerprint) on the same table. So a
/// fleet run again, or a second fleet, skips it as the migrate job skips an applied file.
async fn already_made(p: &Probed, table: &str, clauses: &str) -> Result<Option<String>> {
    let client = p.conn.with_application_name("pg-ghost fleet").connect().await?;
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&crate::history::DEFAULT_TABLE])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(None);
    }
    let name = crate::inspect::resolve_table(&client, table).await?;
    let Some(fingerprint) = crate::history::fingerprint(&name.sql(), clauses) else { return Ok(None) };
    let row = client
        .query_opt(
            &format!(
                "SELECT run_id FROM {} WHERE fingerprint = $1 AND outcome = 'success' AND execute ORDER BY ended_at DESC LIMIT 1",
                crate::history::DEFAULT_TABLE
            ),
            &[&fingerprint],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

async fn alter_target(cfg: &FleetConfig, p: &Probed, table: &str, clauses: &str, report: &mut TargetReport) -> Result<Status> {
    if let Some(run_id) = already_made(p, table, clauses).await? {
        report.note = Some(format!("already changed by run {run_id} (pg-ghost history)"));
        return Ok(Status::Skipped);
    }
    let run_id = crate::history::new_run_id();
    let config = Config::for_migration(p.conn.clone(), table, clauses, &cfg.runs, run_id)?;
    match runner::run_or_resume(config).await? {
        Outcome::CutOver | Outcome::Direct { .. } => Ok(Status::Succeeded),
        other => Err(Error::internal(format!("the online change ended as {other:?}"))),
    }
}
