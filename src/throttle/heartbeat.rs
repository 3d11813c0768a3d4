//! The heartbeat: every `--heartbeat-interval-millis`, the row `('heartbeat', <now>)` is
//! upserted into the changelog table on the primary. Standbys replay it, and reading it
//! back there tells how far behind they are (see `lag.rs`, which explains how).
//!
//! Invariants: `value` and `updated_at` hold the same instant of the primary's clock
//! (`value` as text for a DBA, `updated_at` typed for the lag query). The write commits
//! with `synchronous_commit = local`: flushed at once even where the server default is
//! `off` (a commit left to the WAL writer would add to the measured lag), and not held by
//! a synchronous standby, whose lag this is meant to show rather than wait on. Failures
//! are logged once per streak and retried on the next beat; they never stop the run: a
//! missing heartbeat reads as growing lag, which throttles.

use super::bounded::{connect_within, within};
use crate::conn::ConnInfo;
use crate::error::{Context, Error, Result};
use crate::sql::QualifiedName;
use std::convert::Infallible;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;

/// The key of the heartbeat row in the changelog table.
pub const KEY: &str = "heartbeat";

/// Bounds one write, so a stuck session is replaced rather than waited on for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The upsert; one `clock_timestamp()` feeds both columns.
pub fn upsert_sql(changelog: &QualifiedName) -> String {
    format!(
        "INSERT INTO {} (key, value, updated_at)
         SELECT '{KEY}', n.t::text, n.t FROM (SELECT pg_catalog.clock_timestamp() AS t) n
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
        changelog.sql()
    )
}

/// Writes heartbeats until dropped.
pub async fn run(conn: ConnInfo, changelog: QualifiedName, interval: Duration) -> Infallible {
    let conn = conn.with_application_name("pg-ghost heartbeat");
    let sql = upsert_sql(&changelog);
    let mut client: Option<Client> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match beat(&mut client, &conn, &sql).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(table = %changelog, "heartbeat written again");
            }
            Ok(()) => {}
            Err(e) => {
                client = None;
                if !failing {
                    tracing::warn!(table = %changelog, error = %e, "heartbeat write failed; retrying at every beat (lag reads as growing meanwhile)");
                }
                failing = true;
            }
        }
    }
}

async fn beat(client: &mut Option<Client>, conn: &ConnInfo, sql: &str) -> Result<()> {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = Some(open(conn).await?);
    }
    let c = client.as_ref().ok_or_else(|| Error::internal("heartbeat session missing"))?;
    within(WRITE_TIMEOUT, "writing the heartbeat", async { c.execute(sql, &[]).await.context("writing the heartbeat") })
        .await
        .map(|_| ())
}

async fn open(conn: &ConnInfo) -> Result<Client> {
    let client = connect_within(conn).await?;
    within(WRITE_TIMEOUT, "setting synchronous_commit", async {
        client.batch_execute("SET synchronous_commit = local").await.context("setting synchronous_commit")
    })
    .await?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_quotes_the_changelog_and_stamps_both_columns_once() {
        let sql = upsert_sql(&QualifiedName::new("Sales", "_Orders_ghc"));
        assert!(sql.starts_with("INSERT INTO \"Sales\".\"_Orders_ghc\" (key, value, updated_at)"), "{sql}");
        assert_eq!(sql.matches("clock_timestamp()").count(), 1, "{sql}");
        assert!(sql.contains("ON CONFLICT (key) DO UPDATE"), "{sql}");
    }
}
