//! Replication origins on the copy's sessions, so that the walsender leaves the copy's own
//! writes out of its decoding (PostgreSQL 16 and later).
//!
//! The walsender decodes every change of the database, the copy's inserts into the ghost
//! among them, and pgoutput drops those only when it replays their transaction, as changes
//! of an unpublished table: a quarter of a run's CPU on 2 cores. From PostgreSQL 16 a stream
//! asked for `origin 'none'` drops the changes of every session that set up a replication
//! origin before it queues them (for 2M rows inserted in one statement, 5.7 CPU-s of the
//! walsender against 1.0; the WAL is still read).
//!
//! `'none'` drops the changes of every origin, not only pg-ghost's: those a subscription (or
//! any other replication tool) writes into the original table too. So the stream asks for it
//! only when no replication origin but pg-ghost's exists as it starts; while it runs, a
//! session of its own looks for another one every 200 ms and stops the run when one appears,
//! and the cut-over looks again under its lock, when no change can reach the original any
//! more. (An origin made, written under into this very table and dropped again between two
//! looks would go unseen: the checksum, on by default, compares every row before the swap.)
//! Every origin pg-ghost creates is named after its slot and dropped with it.

use crate::conn::ConnInfo;
use crate::error::{Backoff, Context, Error, ErrorKind, Result};
use std::time::Duration;
use tokio_postgres::Client;

/// Origins named thus are pg-ghost's own (other runs' included): they mark copy sessions,
/// which write ghosts only. (PostgreSQL reserves origin names starting with `pg_`.)
const OWN_PREFIX: &str = "pgghost_";

/// The origin of copy worker `worker` of the run streaming from `slot`.
pub fn for_copy_worker(slot: &str, worker: usize) -> String {
    format!("{}{worker}", workers_prefix(slot))
}

fn workers_prefix(slot: &str) -> String {
    format!("{OWN_PREFIX}{slot}_c")
}

/// Whether the run may leave its copy's writes out of the stream, and if not, why; the
/// reason is None when the server is older than PostgreSQL 16 (nothing to say there).
pub async fn may_filter_own_writes(client: &Client) -> Result<Result<(), Option<String>>> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 160000,
                    has_function_privilege('pg_catalog.pg_replication_origin_create(text)', 'EXECUTE')
                      AND has_function_privilege('pg_catalog.pg_replication_origin_session_setup(text)', 'EXECUTE')
                      AND has_function_privilege('pg_catalog.pg_replication_origin_drop(text)', 'EXECUTE')",
            &[],
        )
        .await
        .context("checking for replication origins")?;
    if !row.try_get::<_, bool>(0)? {
        return Ok(Err(None));
    }
    if !row.try_get::<_, bool>(1)? {
        return Ok(Err(Some("the role may not use replication origins (pg_replication_origin_create, _session_setup, _drop)".into())));
    }
    let foreign = foreign(client).await?;
    if !foreign.is_empty() {
        return Ok(Err(Some(format!(
            "replication origin(s) {} exist: changes written under them (a subscription's, into the original table too) must reach the stream",
            foreign.join(", ")
        ))));
    }
    Ok(Ok(()))
}

/// Replication origins that are not pg-ghost's.
async fn foreign(client: &Client) -> Result<Vec<String>> {
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT roname::text FROM pg_catalog.pg_replication_origin WHERE NOT starts_with(roname, $1) ORDER BY roname)",
            &[&OWN_PREFIX],
        )
        .await
        .context("listing replication origins")?;
    Ok(row.try_get(0)?)
}

/// In a run whose stream leaves origins out (and under the cut-over's lock): refuses to go on
/// when an origin other than pg-ghost's exists, since changes written under it may have been
/// left out too.
pub async fn refuse_if_foreign(client: &Client) -> Result<()> {
    let foreign = foreign(client).await?;
    if foreign.is_empty() {
        return Ok(());
    }
    Err(Error::refused(format!(
        "replication origin(s) {} appeared during the run, and the stream left out every change written under an origin: \
         changes they wrote into the table may be missing from the ghost, so pg-ghost stops before the swap (the table is \
         untouched); run again with --initially-drop-ghost-table (or after pg-ghost cleanup): with the origin there from \
         the start, the stream leaves nothing out",
        foreign.join(", ")
    )))
}

/// How often [`watch_for_foreign`] looks.
pub const WATCH_EVERY: Duration = Duration::from_millis(200);

/// While the stream leaves origins out: looks every `every`, on a session of its own (opened
/// again when lost), for an origin other than pg-ghost's; returns the refusal when one appears.
pub async fn watch_for_foreign(conn: ConnInfo, every: Duration) -> Error {
    let mut client: Option<Client> = None;
    loop {
        tokio::time::sleep(every).await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = conn.with_application_name("pg-ghost origins").connect().await.ok();
        }
        let Some(c) = client.as_ref() else { continue };
        match refuse_if_foreign(c).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Refused => return e,
            Err(e) => {
                tracing::debug!(error = %e.chain(), "looking for replication origins: the session is opened again");
                client = None;
            }
        }
    }
}

/// Creates `name` unless it exists (a resumed run finds its own).
pub async fn create(client: &Client, name: &str) -> Result<()> {
    client
        .execute(
            "SELECT pg_catalog.pg_replication_origin_create($1)
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)",
            &[&name],
        )
        .await
        .with_context(|| format!("creating replication origin {name:?}"))?;
    Ok(())
}

/// Marks the session's writes with origin `name` until it ends. On a new session after a
/// lost one, the old backend may still hold the origin for a moment (55006): retried.
pub async fn set_up(client: &Client, name: &str) -> Result<()> {
    Backoff::default()
        .retry("marking a session's writes with its replication origin", || async {
            client.execute("SELECT pg_catalog.pg_replication_origin_session_setup($1)", &[&name]).await.map(|_| ()).map_err(Error::from)
        })
        .await
        .with_context(|| format!("marking the session's writes with replication origin {name:?}"))
}

/// Drops the origins of the run streaming from `slot`. A session that held one may not have
/// ended yet (55006, object in use): retried, then left with a warning (`pg-ghost cleanup`
/// drops it with the slot).
pub async fn drop_for_slot(client: &Client, slot: &str) -> Result<()> {
    let prefix = workers_prefix(slot);
    let names: Vec<String> = client
        .query("SELECT roname::text FROM pg_catalog.pg_replication_origin WHERE starts_with(roname, $1)", &[&prefix])
        .await
        .context("listing the run's replication origins")?
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<std::result::Result<_, _>>()?;
    let ours = names.into_iter().filter(|n| n[prefix.len()..].chars().all(|c| c.is_ascii_digit()) && n.len() > prefix.len());
    let backoff = Backoff { initial: std::time::Duration::from_millis(50), max: std::time::Duration::from_secs(1), attempts: 8 };
    for name in ours {
        let dropped = backoff
            .retry("dropping a replication origin", || async {
                client.execute("SELECT pg_catalog.pg_replication_origin_drop($1)", &[&name]).await.map(|_| ()).map_err(Error::from)
            })
            .await;
        match dropped {
            Ok(()) => tracing::debug!(origin = %name, "replication origin dropped"),
            Err(e) if e.sqlstate().is_some() => {
                tracing::warn!(origin = %name, error = %e.chain(), "replication origin left behind; pg-ghost cleanup drops it")
            }
            Err(e) => return Err(e.context(format!("dropping replication origin {name:?}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_origins_are_named_after_the_slot() {
        assert_eq!(super::for_copy_worker("pg_ghost_16387", 0), "pgghost_pg_ghost_16387_c0");
        assert!(super::for_copy_worker("pg_ghost_1", 3).starts_with(super::OWN_PREFIX));
    }
}
