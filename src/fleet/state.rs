//! The fleet's state in the registry database (never in the tenants): one row per fleet
//! run in `pgghost.fleet_runs` and one per target in `pgghost.fleet_targets`, written as
//! the fleet goes, so that `--resume FLEET_ID` continues where a killed fleet stopped and
//! the DBA can query where every target stands.
//!
//! Invariants: the tables are created only once every target was reached (bad input
//! changes nothing); a target is `running` before its change starts and `succeeded`,
//! `skipped` or `failed` once it ended, so after a kill only targets left `pending`,
//! `running` or `failed` run again.

use super::report::Status;
use crate::error::{Context, Error, Result};
use tokio_postgres::Client;

const CREATE: &str = "CREATE SCHEMA IF NOT EXISTS pgghost;
CREATE TABLE IF NOT EXISTS pgghost.fleet_runs (
    fleet_id text PRIMARY KEY,
    job text NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'stopped')),
    stopped_reason text,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    started_by text NOT NULL DEFAULT current_user
);
CREATE TABLE IF NOT EXISTS pgghost.fleet_targets (
    fleet_id text NOT NULL REFERENCES pgghost.fleet_runs ON DELETE CASCADE,
    name text NOT NULL,
    position integer NOT NULL,
    server text NOT NULL,
    size_bytes bigint NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'skipped', 'failed', 'not-started')),
    version_before text,
    version_after text,
    started_at timestamptz,
    ended_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    error text,
    PRIMARY KEY (fleet_id, name)
)";

pub async fn create(client: &Client) -> Result<()> {
    client.batch_execute(CREATE).await.context("creating the fleet tables pgghost.fleet_runs and pgghost.fleet_targets in the registry")?;
    Ok(())
}

/// One target as the fleet recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub name: String,
    pub status: Status,
    pub version_before: Option<String>,
    pub version_after: Option<String>,
}

/// A new fleet run with its targets, all pending, in the order they will run.
pub async fn begin(client: &Client, fleet_id: &str, job: &str, targets: &[(String, String, i64)]) -> Result<()> {
    client
        .execute("INSERT INTO pgghost.fleet_runs (fleet_id, job, status) VALUES ($1, $2, 'running')", &[&fleet_id, &job])
        .await
        .context("recording the fleet run in the registry")?;
    add_targets(client, fleet_id, targets, 0).await
}

/// Targets a resumed fleet finds that the first run did not have, after the others.
pub async fn add_targets(client: &Client, fleet_id: &str, targets: &[(String, String, i64)], first_position: i32) -> Result<()> {
    for (i, (name, server, size)) in targets.iter().enumerate() {
        let position = first_position + i as i32;
        client
            .execute(
                "INSERT INTO pgghost.fleet_targets (fleet_id, name, position, server, size_bytes, status)
                 VALUES ($1, $2, $3, $4, $5, 'pending') ON CONFLICT (fleet_id, name) DO NOTHING",
                &[&fleet_id, name, &position, server, size],
            )
            .await
            .context("recording the fleet's targets in the registry")?;
    }
    Ok(())
}

/// A fleet to resume: its job and its targets as recorded, in order.
pub async fn load(client: &Client, fleet_id: &str) -> Result<(String, Vec<Recorded>)> {
    let exists: bool = client.query_one("SELECT to_regclass('pgghost.fleet_runs') IS NOT NULL", &[]).await.context("looking for pgghost.fleet_runs")?.get(0);
    let run = match exists {
        true => client.query_opt("SELECT job FROM pgghost.fleet_runs WHERE fleet_id = $1", &[&fleet_id]).await.context("reading pgghost.fleet_runs")?,
        false => None,
    };
    let Some(run) = run else { return Err(Error::config(format!("--resume {fleet_id}: the registry has no fleet run with this id (see pgghost.fleet_runs)"))) };
    let rows = client
        .query("SELECT name, status, version_before, version_after FROM pgghost.fleet_targets WHERE fleet_id = $1 ORDER BY position", &[&fleet_id])
        .await
        .context("reading pgghost.fleet_targets")?;
    let mut targets = Vec::with_capacity(rows.len());
    for r in rows {
        let status: String = r.get(1);
        let status = Status::parse(&status).ok_or_else(|| Error::internal(format!("pgghost.fleet_targets holds an unknown status {status:?}")))?;
        targets.push(Recorded { name: r.get(0), status, version_before: r.get(2), version_after: r.get(3) });
    }
    Ok((run.get(0), targets))
}

pub async fn resumed(client: &Client, fleet_id: &str) -> Result<()> {
    client
        .execute("UPDATE pgghost.fleet_runs SET status = 'running', stopped_reason = NULL, ended_at = NULL WHERE fleet_id = $1", &[&fleet_id])
        .await
        .context("recording the fleet's resume")?;
    Ok(())
}

pub async fn target_started(client: &Client, fleet_id: &str, name: &str) -> Result<()> {
    client
        .execute(
            "UPDATE pgghost.fleet_targets SET status = 'running', started_at = now(), ended_at = NULL, attempts = attempts + 1, error = NULL
              WHERE fleet_id = $1 AND name = $2",
            &[&fleet_id, &name],
        )
        .await
        .with_context(|| format!("recording the start of target {name} in the registry"))?;
    Ok(())
}

pub async fn target_ended(client: &Client, fleet_id: &str, r: &super::report::TargetReport) -> Result<()> {
    let name = &r.name;
    client
        .execute(
            "UPDATE pgghost.fleet_targets SET status = $3, version_before = coalesce($4, version_before), version_after = $5, error = $6,
                    ended_at = CASE WHEN $3 IN ('succeeded', 'skipped', 'failed') THEN now() END
              WHERE fleet_id = $1 AND name = $2",
            &[&fleet_id, name, &r.status.as_str(), &r.version_before, &r.version_after, &r.error],
        )
        .await
        .with_context(|| format!("recording the end of target {name} in the registry"))?;
    Ok(())
}

/// The fleet ended: `succeeded`, `failed` (some target failed) or `stopped` (with why).
pub async fn finish(client: &Client, fleet_id: &str, status: &str, stopped: Option<&str>) -> Result<()> {
    client
        .execute("UPDATE pgghost.fleet_runs SET status = $2, stopped_reason = $3, ended_at = now() WHERE fleet_id = $1", &[&fleet_id, &status, &stopped])
        .await
        .context("recording the fleet's end in the registry")?;
    Ok(())
}
