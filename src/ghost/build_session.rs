//! A session that builds indexes and constraints on the ghost (or vacuums it), and gets its
//! connection back when it is lost in the middle of a build.
//!
//! A lost connection does not stop the build it was running: the server notices that its
//! client is gone only when it next writes to it, after the statement has ended (and its
//! implicit transaction committed). So before the build is made again on a new connection,
//! the lost session's backend is waited for until it no longer runs a statement (it has
//! ended, or sits idle on a socket nobody reads); then the build is made again only if it is
//! not there (a build that committed is kept, and what follows it, validation or comments,
//! runs again, which changes nothing). A build of hours is not thrown away for a dropped
//! network, and two builds of the same index never run side by side.

use crate::conn::ConnInfo;
use crate::error::{Context, Error, Result};
use crate::reconnect::{connect_again, Outage};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How often the lost session's backend is looked at while it still runs its statement.
const POLL: Duration = Duration::from_millis(500);

/// How often a wait for the lost session's backend that goes on is reported.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// A server backend, told apart from a later one that reuses its pid by its start time (in
/// microseconds since the epoch: a text form would depend on the session's settings).
#[derive(Clone, Debug)]
struct Backend {
    pid: i32,
    started: i64,
}

pub(crate) struct BuildSession<'a> {
    /// Where to open a new connection; without it a lost connection ends the build.
    conn: Option<&'a ConnInfo>,
    first: &'a Client,
    replaced: Option<Client>,
    /// The backend of the connection in use, read before its first build.
    backend: Option<Backend>,
    outage: Outage,
}

impl<'a> BuildSession<'a> {
    pub(crate) fn new(client: &'a Client, conn: Option<&'a ConnInfo>) -> BuildSession<'a> {
        BuildSession { conn, first: client, replaced: None, backend: None, outage: Outage::new() }
    }

    pub(super) fn client(&self) -> &Client {
        self.replaced.as_ref().unwrap_or(self.first)
    }

    /// Before a build: learns which backend the session's connection has, the first time, so
    /// that a loss can wait for it.
    pub(super) async fn prepare(&mut self) -> Result<()> {
        if self.backend.is_none() && self.conn.is_some() {
            self.backend = Some(own_backend(self.client()).await?);
        }
        Ok(())
    }

    /// Runs `sql` (one statement that is safe to run again once the lost one has ended:
    /// `VACUUM`, `ANALYZE`) on the session, opened again when lost (see [`BuildSession::again`]).
    pub(crate) async fn execute(&mut self, sql: &str, what: &str) -> Result<()> {
        loop {
            let attempt = match self.prepare().await {
                Ok(()) => self.client().batch_execute(sql).await.map_err(Error::from).context(what.to_string()),
                Err(e) => Err(e),
            };
            if !self.again(attempt, what).await? {
                return Ok(());
            }
        }
    }

    /// After a build (or its [`BuildSession::prepare`]) ended with `result`: `Ok(false)` when it
    /// went through; `Ok(true)` when its connection was lost and a new one is ready, the lost
    /// backend's statement over: the build is to be made again, looking first at what is
    /// already built. Any other failure, or a loss without `conn` or past
    /// `--reconnect-timeout`, is returned. `what` names the build in the warning.
    pub(super) async fn again(&mut self, result: Result<()>, what: &str) -> Result<bool> {
        let error = match result {
            Ok(()) => {
                self.outage.end();
                return Ok(false);
            }
            Err(e) if e.kind().is_lost_connection() => e,
            Err(e) => return Err(e),
        };
        let Some(conn) = self.conn else { return Err(error) };
        let mut error = error;
        loop {
            let client = connect_again(conn, &mut self.outage, error, what).await?;
            let waited = match &self.backend {
                Some(lost) => wait_for_statement_end(&client, lost, what, &mut self.outage).await,
                None => Ok(()),
            };
            match waited {
                Ok(()) => {
                    self.outage.end();
                    self.backend = None;
                    self.replaced = Some(client);
                    return Ok(true);
                }
                Err(e) if e.kind().is_lost_connection() => error = e,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn own_backend(client: &Client) -> Result<Backend> {
    let row = client
        .query_one(
            "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8 FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .context("reading the build session's backend")?;
    Ok(Backend { pid: row.try_get(0)?, started: row.try_get(1)? })
}

/// Waits until `lost` runs no statement any more: gone, or idle (its statement ended, its
/// client never to read the result). One that stays idle is terminated, so that it does not
/// hold a connection slot until the server's TCP keepalives find its client gone. Where the
/// server does not track the backend's activity (`track_activities` off: state `disabled`),
/// it runs a statement for as long as it holds a lock on a relation (a build or a vacuum
/// holds one on the ghost throughout).
///
/// Each answer ends `outage`: a loss during a wait as long as the lost build is a new outage,
/// with the whole `--reconnect-timeout`, while sessions that are lost before they answer
/// anything give up in time.
async fn wait_for_statement_end(client: &Client, lost: &Backend, what: &str, outage: &mut Outage) -> Result<()> {
    let started = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        let row = client
            .query_opt(
                "SELECT a.state, EXISTS (SELECT 1 FROM pg_catalog.pg_locks l WHERE l.pid = a.pid AND l.locktype = 'relation')
                   FROM pg_catalog.pg_stat_activity a
                  WHERE a.pid = $1 AND (extract(epoch FROM a.backend_start) * 1000000)::int8 = $2",
                &[&lost.pid, &lost.started],
            )
            .await
            .context("looking at the lost session's backend")?;
        outage.end();
        let running = match &row {
            None => false,
            Some(row) => {
                let state: Option<String> = row.try_get(0)?;
                let holds_locks: bool = row.try_get(1)?;
                match state.as_deref() {
                    Some("active") | Some("fastpath function call") => true,
                    Some(s) if s.starts_with("idle") => false,
                    _ => holds_locks,
                }
            }
        };
        if !running {
            if row.is_some() {
                // In one statement with the check, so that no other backend taking the pid
                // in between can be hit.
                let terminated = client
                    .query(
                        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
                          WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2 AND state LIKE 'idle%'",
                        &[&lost.pid, &lost.started],
                    )
                    .await;
                tracing::debug!(pid = lost.pid, ?terminated, "the lost session's backend, idle, terminated");
            }
            if reported.is_some() {
                tracing::info!(pid = lost.pid, waited_secs = started.elapsed().as_secs(), what, "the lost session's statement has ended");
            }
            return Ok(());
        }
        if reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            reported = Some(Instant::now());
            tracing::info!(
                pid = lost.pid,
                waited_secs = started.elapsed().as_secs(),
                what,
                "the lost session's backend still runs its statement on the server: waiting for it to end, so as to keep what it does"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
