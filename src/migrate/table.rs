//! The migrations table, `pgghost.migrations`, next to the history of runs (`pgghost.runs`;
//! not `pg_ghost`: PostgreSQL reserves schema names starting with `pg_`). One row per
//! version, written as the file goes: `running` when it starts, the statements done after
//! each one (with the SHA-256 of their text, so a resumed file can tell they are unchanged),
//! then `applied` or `failed` with the error. The ids of the `pg-ghost run`s its online
//! changes made link it to `pgghost.runs`.
//!
//! Only one `migrate` applies files to a database at a time: it holds an advisory lock for
//! its whole session.

use crate::error::{Context, Error, Result};
use tokio_postgres::Client;

pub const TABLE: &str = "pgghost.migrations";

/// The advisory lock's key: "pgghost-migrate" hashed once, a fixed number.
const LOCK_KEY: i64 = 0x7067_6768_6d69_6772;

const CREATE: &str = "CREATE SCHEMA IF NOT EXISTS pgghost;
CREATE TABLE IF NOT EXISTS pgghost.migrations (
    version text PRIMARY KEY,
    description text NOT NULL,
    phase text,
    checksum text NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'applied', 'failed')),
    statements_done integer NOT NULL DEFAULT 0,
    statements_total integer NOT NULL,
    done_checksum text,
    started_at timestamptz NOT NULL DEFAULT now(),
    applied_at timestamptz,
    duration interval NOT NULL DEFAULT '0',
    applied_by text NOT NULL,
    run_ids text[] NOT NULL DEFAULT '{}',
    error text
)";

/// A row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub version: String,
    pub description: String,
    pub phase: Option<String>,
    pub checksum: String,
    pub status: String,
    pub statements_done: i32,
    pub statements_total: i32,
    pub done_checksum: Option<String>,
    pub applied_at: Option<String>,
    pub duration: String,
    pub applied_by: String,
    pub run_ids: Vec<String>,
    pub error: Option<String>,
}

impl Row {
    pub fn is_applied(&self) -> bool {
        self.status == "applied"
    }
}

pub async fn exists(client: &Client) -> Result<bool> {
    let row = client.query_one("SELECT to_regclass('pgghost.migrations') IS NOT NULL", &[]).await.context("looking for pgghost.migrations")?;
    Ok(row.get(0))
}

pub async fn create(client: &Client) -> Result<()> {
    client.batch_execute(CREATE).await.context("creating pgghost.migrations").map_err(Error::from)
}

/// Takes the advisory lock for this session, or refuses: another `migrate` is running.
pub async fn lock(client: &Client) -> Result<()> {
    let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY]).await.context("taking the migrations lock")?;
    match row.get::<_, bool>(0) {
        true => Ok(()),
        false => Err(Error::refused("another pg-ghost migrate is applying files to this database (it holds the migrations lock); wait for it")),
    }
}

pub async fn rows(client: &Client) -> Result<Vec<Row>> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version, description, phase, checksum, status, statements_done, statements_total, done_checksum,
                    to_char(applied_at, 'YYYY-MM-DD HH24:MI:SS TZ'), date_trunc('milliseconds', duration)::text, applied_by, run_ids, error
               FROM pgghost.migrations",
            &[],
        )
        .await
        .context("reading pgghost.migrations")?;
    Ok(rows
        .iter()
        .map(|r| Row {
            version: r.get(0),
            description: r.get(1),
            phase: r.get(2),
            checksum: r.get(3),
            status: r.get(4),
            statements_done: r.get(5),
            statements_total: r.get(6),
            done_checksum: r.get(7),
            applied_at: r.get(8),
            duration: r.get(9),
            applied_by: r.get(10),
            run_ids: r.get(11),
            error: r.get(12),
        })
        .collect())
}

/// The file starts (or starts again): `running`, with its checksum as it is now.
pub async fn start(client: &Client, version: &str, description: &str, phase: Option<&str>, checksum: &str, total: i32, by: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO pgghost.migrations (version, description, phase, checksum, status, statements_total, applied_by)
             VALUES ($1, $2, $3, $4, 'running', $5, $6)
             ON CONFLICT (version) DO UPDATE SET description = $2, phase = $3, checksum = $4, status = 'running',
                 statements_total = $5, applied_by = $6, started_at = now(), error = NULL",
            &[&version, &description, &phase, &checksum, &total, &by],
        )
        .await
        .context("recording the migration's start")?;
    Ok(())
}

pub async fn add_run_id(client: &Client, version: &str, run_id: &str) -> Result<()> {
    client
        .execute("UPDATE pgghost.migrations SET run_ids = run_ids || $2::text WHERE version = $1", &[&version, &run_id])
        .await
        .context("recording the run id")?;
    Ok(())
}

/// `done` statements are done; `done_checksum` covers their text.
pub async fn progress(client: &Client, version: &str, done: i32, done_checksum: &str) -> Result<()> {
    client
        .execute("UPDATE pgghost.migrations SET statements_done = $2, done_checksum = $3 WHERE version = $1", &[&version, &done, &done_checksum])
        .await
        .context("recording the migration's progress")?;
    Ok(())
}

/// The file ended: applied (error None) or failed. The time since it started adds to its
/// duration (a resumed file counts every attempt).
pub async fn finish(client: &Client, version: &str, error: Option<&str>) -> Result<()> {
    let status = if error.is_some() { "failed" } else { "applied" };
    client
        .execute(
            "UPDATE pgghost.migrations SET status = $2, error = $3, duration = duration + (clock_timestamp() - started_at),
                    applied_at = CASE WHEN $2 = 'applied' THEN clock_timestamp() END
              WHERE version = $1",
            &[&version, &status, &error],
        )
        .await
        .context("recording the migration's end")?;
    Ok(())
}
