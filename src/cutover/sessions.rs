//! The cut-over's two sessions: the one that locks and swaps, and the monitor that reads who
//! blocks it and emits the sentinel. Either may be terminated by someone else
//! (`pg_terminate_backend` from a DBA or a watchdog), or lost with the network; a lost one is
//! replaced before the next attempt, so one loss costs one attempt, not the run.

use crate::conn::ConnInfo;
use crate::error::{Context, Result};
use crate::reconnect::{Backend, Outage};
use std::time::Duration;
use tokio_postgres::Client;

/// A session that does not answer `SELECT 1` within this is replaced.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Sessions {
    pub client: Client,
    pub monitor: Client,
    /// The backend pid of `client`, whose blockers the monitor looks up.
    pub pid: i32,
    /// `client`'s backend, to be ended if `client` is lost while the backend goes on.
    backend: Backend,
    /// The server's `deadlock_timeout`, which bounds how long the LOCK may wait.
    pub deadlock_timeout: Duration,
    /// `client`'s own `statement_timeout`, restored once the LOCK is granted.
    pub statement_timeout: String,
    /// What to do about autovacuum workers in the LOCK's way.
    pub autovacuum: super::autovacuum::Policy,
    /// Whether PL/pgSQL is there for a `DO` block (see [`super::also_locked::one_statement`]).
    pub plpgsql: bool,
}

impl Sessions {
    pub async fn open(conn: &ConnInfo) -> Result<Sessions> {
        let (client, backend) = connect_cut_over(conn).await?;
        let monitor = connect_monitor(conn).await?;
        let row = client
            .query_one(
                "SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout'),
                        current_setting('statement_timeout'),
                        EXISTS (SELECT FROM pg_language WHERE lanname = 'plpgsql' AND has_language_privilege(oid, 'USAGE'))",
                &[],
            )
            .await
            .context("reading deadlock_timeout")?;
        let deadlock_ms: i64 = row.try_get(0)?;
        let deadlock_timeout = Duration::from_millis(deadlock_ms.max(1) as u64);
        // Setting it to the value it has tells whether the role may set it (superuser, or
        // `GRANT SET ON PARAMETER`), without changing anything.
        let may_lower = client.batch_execute(&format!("SET deadlock_timeout = '{deadlock_ms}ms'")).await.is_ok();
        let autovacuum = super::autovacuum::Policy::new(may_lower);
        Ok(Sessions { client, monitor, pid: backend.pid, backend, deadlock_timeout, statement_timeout: row.try_get(1)?, autovacuum, plpgsql: row.try_get(2)? })
    }

    /// Replaces the sessions that were lost, each opened again for up to
    /// `--reconnect-timeout` (a server restarting refuses connections for a while). A session
    /// that still answers is kept: its transaction was rolled back when the attempt failed.
    /// Returns the backend of the lost `client`, which may still be there: the network can
    /// go without the server knowing. What to do with it is the caller's call (see
    /// [`Backend::end`], [`crate::reconnect::wait_for_statement_end`]).
    pub async fn replace_lost(&mut self, conn: &ConnInfo) -> Result<Option<Backend>> {
        let mut lost = None;
        if !answers(&self.client).await {
            let mut outage = Outage::new();
            let (client, backend) = crate::reconnect::retry(conn.reconnect_timeout, &mut outage, "reconnecting the cut-over session", || connect_cut_over(conn)).await?;
            tracing::warn!(old_pid = self.pid, new_pid = backend.pid, "the cut-over session was lost; reconnected");
            self.client = client;
            self.pid = backend.pid;
            let old = std::mem::replace(&mut self.backend, backend);
            lost = Some(old).filter(|old| !old.same_as(&self.backend));
        }
        if !answers(&self.monitor).await {
            let mut outage = Outage::new();
            self.monitor = crate::reconnect::retry(conn.reconnect_timeout, &mut outage, "reconnecting the cut-over's monitor session", || connect_monitor(conn)).await?;
            tracing::warn!("the cut-over's monitor session was lost; reconnected");
        }
        Ok(lost)
    }
}

/// What the lost session's backend, which may go on, is left to (see
/// [`Sessions::replace_after_loss`]).
pub(crate) enum LostStatement<'a> {
    /// Its transaction can never commit (its COMMIT was not sent, or was resolved already),
    /// and holds its locks until the server finds its client gone: ended.
    InTransaction,
    /// A statement that commits by itself (`CREATE INDEX CONCURRENTLY`, a statement outside
    /// a transaction block): waited for until it has ended, so that what it did is there to
    /// be looked at and nothing runs beside it. `what` names it in the log.
    OnItsOwn { what: &'a str },
}

impl Sessions {
    /// After a lost connection: replaces the lost sessions (see [`Sessions::replace_lost`]),
    /// then deals with the lost backend as `statement` says, when it is still there.
    pub async fn replace_after_loss(&mut self, conn: &ConnInfo, statement: LostStatement<'_>) -> Result<()> {
        let Some(lost) = self.replace_lost(conn).await? else { return Ok(()) };
        match statement {
            LostStatement::InTransaction => lost.end(&self.monitor).await,
            LostStatement::OnItsOwn { what } => crate::reconnect::wait_for_statement_end(&self.monitor, &lost, what, &mut Outage::new()).await,
        }
    }
}

async fn connect_cut_over(conn: &ConnInfo) -> Result<(Client, Backend)> {
    let client = conn.with_application_name("pg-ghost cut-over").connect().await?;
    let backend = Backend::of(&client).await.context("reading the cut-over session's backend")?;
    Ok((client, backend))
}

async fn connect_monitor(conn: &ConnInfo) -> Result<Client> {
    let monitor = conn.with_application_name("pg-ghost monitor").connect().await?;
    // The sentinel is emitted here, while the table is locked: with synchronous_commit off
    // it would wait for the WAL writer, on for synchronous standbys; decoding needs the WAL
    // flushed here only.
    monitor.batch_execute("SET synchronous_commit = local").await?;
    Ok(monitor)
}

/// The server terminates a session with an error that reaches only the statement running
/// then; the client learns the socket is closed a moment later, so ask.
async fn answers(client: &Client) -> bool {
    !client.is_closed() && matches!(tokio::time::timeout(PROBE_TIMEOUT, client.batch_execute("SELECT 1")).await, Ok(Ok(())))
}
