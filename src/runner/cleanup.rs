//! `pg-ghost cleanup`: removes what a run that died left behind (slot, publication, ghost
//! and changelog tables), for the table as it is now and for its old table after a
//! cut-over that committed but did not finish cleaning up, and a revert window's reverse slot
//! and publication (which ends the window; both tables stay). It never touches the original.

use crate::config::CleanupConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::inspect;
use crate::names::Names;
use crate::replication::slot;
use tokio_postgres::Client;

pub async fn cleanup(cfg: CleanupConfig) -> Result<()> {
    let conn = cfg.conn.resolve().await?;
    let client = conn.with_application_name("pg-ghost cleanup").connect().await?;
    let table = inspect::resolve_table(&client, &cfg.table).await?;
    let oid: u32 = client
        .query_one("SELECT $1::text::regclass::oid", &[&table.sql()])
        .await?
        .try_get(0)?;
    let names = Names::for_table(&table, oid);
    let mut stream_names = vec![names.slot.clone(), names.reverse.clone()];
    // After a committed cut-over the original lives on as the old table, under its old OID.
    if let Some(old_oid) = oid_of(&client, &names.old.sql()).await? {
        let old = Names::for_table(&table, old_oid);
        stream_names.extend([old.slot, old.reverse]);
    }
    // A revert window's stream, named after the original's OID, is recorded in the changelog
    // (the old table may carry a timestamped name). Removing it ends the window.
    if let Some(reverse) = crate::runner::window::recorded_slot(&client, &names.changelog).await? {
        if !stream_names.contains(&reverse) {
            stream_names.push(reverse);
        }
    }
    for name in &stream_names {
        if let Some(pid) = slot::slot_info(&client, name).await?.and_then(|s| s.active_pid) {
            return Err(Error::refused(format!(
                "replication slot {name} is in use by walsender pid {pid}: a pg-ghost run on {table} is still streaming; stop it (its panic flag file, or SIGTERM) before cleaning up"
            )));
        }
    }
    let backoff = crate::error::Backoff::default();
    let mut removed = Vec::new();
    for name in &stream_names {
        if slot::drop_slot(&client, name, &backoff).await? {
            removed.push(format!("replication slot {name}"));
        }
        if slot::publication_exists(&client, name).await? {
            slot::drop_publication(&client, name).await?;
            removed.push(format!("publication {name}"));
        }
    }
    for t in [&names.ghost, &names.changelog] {
        if oid_of(&client, &t.sql()).await?.is_some() {
            if t == &names.ghost {
                crate::dependents::materialized::drop_leftovers(&client, t).await?;
            }
            super::dropping::drop_table(&client, t, &crate::ghost::LockWait::default()).await?;
            removed.push(format!("table {t}"));
        }
    }
    if removed.is_empty() {
        tracing::info!(table = %table, "nothing to clean up");
    } else {
        tracing::info!(table = %table, removed = %removed.join(", "), "cleaned up");
    }
    Ok(())
}

async fn oid_of(client: &Client, sql_name: &str) -> Result<Option<u32>> {
    let row = client
        .query_one("SELECT to_regclass($1)::oid", &[&sql_name])
        .await
        .map_err(|e| Error::from(e).context("looking up a table"))?;
    row.try_get::<_, Option<u32>>(0).map_err(|e| Error::new(ErrorKind::Sql, e.to_string()))
}
