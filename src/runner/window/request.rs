//! `pg-ghost revert` and `pg-ghost finalize`: the DBA's side of the revert window. The request
//! goes to the pg-ghost serving the window through its changelog table; a window no pg-ghost
//! serves is taken up here, as `run --resume` takes it up.

use super::{read, recorded_slot, Request, STATE_FINALIZED, STATE_IMPOSSIBLE, STATE_OPEN, STATE_REVERTED, STATE_REVERT_FAILED, REQUEST_POLL};
use crate::checkpoint;
use crate::config::WindowConfig;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::inspect;
use crate::names::Names;
use crate::replication::slot;
use crate::runner::Outcome;
use crate::sql::QualifiedName;
use tokio_postgres::Client;

/// `pg-ghost revert` / `pg-ghost finalize`: asks the pg-ghost running the table's revert window
/// and waits until it has done it.
pub async fn request(cfg: WindowConfig, request: Request) -> Result<()> {
    let conn = cfg.conn.clone().resolve().await?;
    let client = conn.with_application_name("pg-ghost window").connect().await?;
    let table = inspect::resolve_table(&client, &cfg.table).await?;
    let oid: u32 = client.query_one("SELECT $1::text::regclass::oid", &[&table.sql()]).await?.try_get(0)?;
    let names = Names::for_table(&table, oid);
    let changelog = names.changelog.clone();
    let state = read(&client, &changelog, checkpoint::STATE).await?;
    // A revert that failed (its lock not had in time) left the window open.
    let open = state.as_deref().is_some_and(|s| s == STATE_OPEN || s.starts_with(STATE_REVERT_FAILED));
    if !open {
        return Err(Error::refused(format!(
            "no revert window is open on {table} (state: {}); a window opens with `pg-ghost run --execute --revertible-for DURATION`",
            state.as_deref().unwrap_or("no pg-ghost run")
        )));
    }
    // The window's slot is named after the original's OID: the old table's, now.
    let reverse = recorded_slot(&client, &changelog).await?.ok_or_else(|| Error::refused(format!("the revert window on {table} recorded no slot")))?;
    let old_oid: Option<u32> = reverse.strip_prefix("pg_ghost_").and_then(|s| s.strip_suffix("_rev")).and_then(|s| s.parse().ok());
    let slot = slot::slot_info(&client, &reverse).await?;
    let streaming = slot.as_ref().and_then(|s| s.active_pid).is_some();
    if slot.is_none() {
        return Err(Error::refused(format!(
            "the revert window on {table} has lost its slot {reverse}: it cannot be served any more (`pg-ghost cleanup --table {table}` ends it)"
        )));
    }
    // The state is set back to open first, so that only this request's outcome is waited for.
    let upsert = checkpoint::upsert_sql(&changelog);
    checkpoint::record(&client, &upsert, checkpoint::STATE, STATE_OPEN).await.context("asking the running pg-ghost")?;
    checkpoint::record(&client, &upsert, checkpoint::WINDOW_REQUEST, request.name()).await.context("asking the running pg-ghost")?;
    if !streaming {
        let alter = checkpoint::read(&client, &changelog)
            .await?
            .and_then(|s| s.plan)
            .map(|p| p.alter)
            .ok_or_else(|| Error::refused(format!("the revert window on {table}: the earlier run's plan is missing from its changelog table")))?;
        drop(client);
        return take_up(&cfg, &alter, &table, request).await;
    }
    tracing::info!(table = %table, request = request.name(), "asked the running pg-ghost; waiting for it");
    let deadline = tokio::time::Instant::now() + cfg.wait;
    loop {
        tokio::time::sleep(REQUEST_POLL).await;
        let state = read(&client, &changelog, checkpoint::STATE).await?;
        let done = match (request, state.as_deref()) {
            (Request::Revert, Some(STATE_REVERTED)) | (Request::Finalize, Some(STATE_FINALIZED)) => true,
            // The run ends right after, dropping its changelog table; gone with the table not
            // reverted, the run ended otherwise (its window failed).
            (Request::Revert, None) => match current_oid(&client, &table).await? == old_oid {
                true => true,
                false => {
                    return Err(Error::new(
                        ErrorKind::Aborted,
                        format!("the pg-ghost serving the revert window on {table} ended without reverting it; see its log"),
                    ))
                }
            },
            (Request::Finalize, None) => current_oid(&client, &table).await? == Some(oid),
            (_, Some(s)) if s.starts_with(STATE_REVERT_FAILED) || s.starts_with(STATE_IMPOSSIBLE) => {
                return Err(Error::new(ErrorKind::Refused, format!("{table}: {s}")));
            }
            _ => false,
        };
        if done {
            tracing::info!(table = %table, "{}", match request {
                Request::Revert => "reverted: the table is the original again",
                Request::Finalize => "the revert window is closed: the table keeps the new definition",
            });
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::new(ErrorKind::Aborted, format!("the running pg-ghost did not {} {table} within {:?} (the request stays; see its log)", request.name(), cfg.wait)));
        }
    }
}

/// No pg-ghost serves the window (the one that opened it was killed): it is taken up here, as
/// `run --resume` does, with the request already left for it; the window's first act is to
/// carry it out.
async fn take_up(cfg: &WindowConfig, alter: &str, table: &QualifiedName, request: Request) -> Result<()> {
    tracing::info!(table = %table, request = request.name(), "no pg-ghost serves the revert window: taking it up here");
    // The plan keeps the ALTER as PostgreSQL's parser prints it, on a stand-in table name.
    let clauses = alter.strip_prefix("ALTER TABLE pg_ghost_t ").unwrap_or(alter);
    let outcome = Box::pin(crate::runner::run(cfg.take_up(clauses)?)).await?;
    match (request, outcome) {
        (Request::Revert, Outcome::Reverted) | (Request::Finalize, Outcome::CutOver) => Ok(()),
        (_, other) => Err(Error::new(ErrorKind::Refused, format!("{table}: the revert window ended otherwise than asked ({other:?})"))),
    }
}

async fn current_oid(client: &Client, table: &QualifiedName) -> Result<Option<u32>> {
    Ok(client.query_one("SELECT to_regclass($1)::oid", &[&table.sql()]).await?.try_get(0)?)
}
