//! Getting a lost connection back.
//!
//! A connection can be lost at any moment of a run: a DBA terminates a backend, the server
//! restarts, the network drops. Every part of pg-ghost that holds one gets it back the same
//! way: it opens a new connection, with back-off, until `--reconnect-timeout` has passed
//! since the loss (one [`Outage`]), then gives up with the last error, which stops the run.
//! The owner then does again what the lost connection was doing, so only work that is safe
//! to repeat is redone this way: a flush by key (it re-reads the original),
//! `START_REPLICATION` from the slot's confirmed position (the stream is delivered at least
//! once anyway). The transaction of a lost session rolled back with it, unless its COMMIT had
//! gone through just before: where repeating it is not harmless (a copy chunk into a ghost
//! with no key index, the cut-over's swap), its owner asks how it ended ([`committing`],
//! [`committed`]).
//!
//! Each loss is a warning naming the connection and what it lost; each recovery an info line
//! (`reconnected`).

use crate::conn::ConnInfo;
use crate::error::{Backoff, Context, Error, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::Client;

/// Between attempts: quick at first (after a terminated backend the server answers at once),
/// then every 2 s (a server restarting takes seconds).
const BACKOFF: Backoff = Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(2), attempts: u32::MAX };

/// One outage of one connection: from its loss until the work it was doing succeeds again.
/// The timeout counts from the first loss, so a connection lost again right after each
/// reconnect still gives up in time.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<Instant>,
    attempts: u32,
}

impl Outage {
    pub fn new() -> Outage {
        Outage::default()
    }

    /// The work went through: the next loss starts a new outage, with the whole timeout.
    pub fn end(&mut self) {
        *self = Outage::default();
    }

    fn begin(&mut self) -> Instant {
        *self.since.get_or_insert_with(Instant::now)
    }

    fn elapsed(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// Records the loss of `conn`'s session with `error` while it did `what`, with a warning.
/// Returns the error itself when reconnecting is off (`--reconnect-timeout 0s`).
pub fn lost(conn: &ConnInfo, outage: &mut Outage, error: Error, what: &str) -> Result<()> {
    if conn.reconnect_timeout.is_zero() {
        return Err(error);
    }
    outage.begin();
    tracing::warn!(
        connection = %conn.application_name,
        lost = what,
        error = %error,
        "connection lost; reconnecting for up to {} s",
        conn.reconnect_timeout.as_secs_f64()
    );
    Ok(())
}

/// Logs the end of an outage of `conn`'s connection, and counts it.
pub fn reconnected(conn: &ConnInfo, outage: &Outage) {
    conn.reconnects.count(&conn.application_name);
    tracing::info!(
        connection = %conn.application_name,
        after_ms = outage.elapsed().as_millis() as u64,
        attempts = outage.attempts,
        "reconnected"
    );
}

/// Runs `attempt` (opening a connection, starting the stream) until it succeeds. Retryable
/// failures (no server to connect to, a slot still held by the walsender of the connection
/// just lost) are tried again with back-off until `limit` has passed since the outage
/// began; any other failure is returned at once.
pub async fn retry<T, F, Fut>(limit: Duration, outage: &mut Outage, what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let since = outage.begin();
    loop {
        outage.attempts += 1;
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                let delay = BACKOFF.delay(outage.attempts);
                if since.elapsed() + delay > limit {
                    return Err(e.context(format!(
                        "{what}: no connection within {} s (--reconnect-timeout), giving up",
                        limit.as_secs_f64()
                    )));
                }
                tracing::debug!(what, attempt = outage.attempts, error = %e, "reconnecting failed; trying again");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens a session to replace the one lost with `error` while it did `what`.
pub async fn connect_again(conn: &ConnInfo, outage: &mut Outage, error: Error, what: &str) -> Result<Client> {
    lost(conn, outage, error, what)?;
    let client = retry(conn.reconnect_timeout, outage, "reconnecting", || conn.connect()).await?;
    reconnected(conn, outage);
    Ok(client)
}

/// A transaction about to be committed, told apart so that its outcome can be asked for
/// if the COMMIT's answer is lost with the connection ([`committed`]).
#[derive(Clone, Debug)]
pub struct Committing {
    pub xid: String,
    /// Its backend: once the connection is lost, a backend still idle in this transaction
    /// never got the COMMIT, and holds the transaction's locks until it is ended.
    pid: i32,
    /// The backend's start, in microseconds since the epoch (pids are reused).
    started: i64,
}

/// How often a lost session's backend is looked at while it still runs its statement.
const LOST_POLL: Duration = Duration::from_millis(500);

/// How often a wait for a lost session's backend that goes on is reported.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// A server backend, told apart from a later one that reuses its pid by its start time (in
/// microseconds since the epoch: a text form would depend on the session's settings).
#[derive(Clone, Debug)]
pub struct Backend {
    pub pid: i32,
    started: i64,
}

impl Backend {
    /// The backend of `client`'s session.
    pub async fn of(client: &Client) -> Result<Backend> {
        let row = client
            .query_typed_one(
                "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8 FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(Backend { pid: row.try_get(0)?, started: row.try_get(1)? })
    }

    /// Ends this backend of a lost session, if it is still there, asked on `client` (another
    /// session): whatever transaction it is in can never commit (its client is gone), and
    /// until the server notices that (its TCP keepalives: hours, by default) it holds that
    /// transaction's locks, idle in it or still running a statement. Waits up to 5 s for it
    /// to be gone, so that its locks are released when this returns; still there then, the
    /// error is one to try again after (its locks may still be held).
    pub async fn end(&self, client: &Client) -> Result<()> {
        let ended: Vec<bool> = client
            .query(
                "SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity
                  WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2",
                &[&self.pid, &self.started],
            )
            .await
            .context("ending the lost session's backend")?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        match ended.first() {
            None => Ok(()),
            Some(true) => {
                tracing::warn!(pid = self.pid, "the lost session's backend was still there, in its transaction: ended, its locks released");
                Ok(())
            }
            Some(false) => Err(Error::new(
                crate::error::ErrorKind::Busy,
                format!("the lost session's backend (pid {}) was told to end and is still there after 5 s", self.pid),
            )),
        }
    }

    /// The same backend (a pooler in session mode can hand a new connection the server
    /// backend a lost one had).
    pub fn same_as(&self, other: &Backend) -> bool {
        self.pid == other.pid && self.started == other.started
    }
}

/// Reads, just before its COMMIT, what [`committed`] needs to learn how `client`'s
/// transaction ended; `None` when it has written nothing (no xid: nothing to lose or to
/// repeat). One round trip, without a prepare: under the cut-over's lock, writers wait for it.
pub async fn committing(client: &Client) -> Result<Option<Committing>> {
    let row = client
        .query_typed_one(
            "SELECT pg_current_xact_id_if_assigned()::text, pid, (extract(epoch FROM backend_start) * 1000000)::int8
               FROM pg_catalog.pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .context("reading the transaction's id")?;
    let Some(xid) = row.try_get::<_, Option<String>>(0)? else { return Ok(None) };
    Ok(Some(Committing { xid, pid: row.try_get(1)?, started: row.try_get(2)? }))
}

/// How the transaction `t` ended, asked on `client` (a session other than the one lost): true
/// when it committed. A COMMIT whose answer was lost may have gone through. While the
/// transaction is in progress: a backend that sits idle in it never got the COMMIT (its
/// client is gone) and is ended, so that the transaction rolls back and lets go of its locks;
/// otherwise it is finishing, and this waits (a warning every 10 s). An xid the server does
/// not know yet ("in the future": it restarted before the transaction reached its WAL) never
/// committed.
pub async fn committed(client: &Client, t: &Committing) -> Result<bool> {
    let started = std::time::Instant::now();
    let mut reported = started;
    loop {
        let status: Option<String> = match client.query_one("SELECT pg_xact_status($1::text::xid8)", &[&t.xid]).await {
            Ok(row) => row.try_get(0)?,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE) => return Ok(false),
            Err(e) => return Err(Error::from(e).context("asking how a transaction whose COMMIT's answer was lost ended")),
        };
        match status.as_deref() {
            Some("committed") => return Ok(true),
            Some("aborted") => return Ok(false),
            Some(_) => {
                client
                    .execute(
                        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
                          WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2 AND state = 'idle in transaction'",
                        &[&t.pid, &t.started],
                    )
                    .await
                    .context("ending the lost session's transaction, which never got its COMMIT")?;
                if reported.elapsed() >= Duration::from_secs(10) {
                    reported = std::time::Instant::now();
                    tracing::warn!(xid = t.xid, pid = t.pid, waited_secs = started.elapsed().as_secs(), "waiting for a transaction whose COMMIT's answer was lost to end");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => return Err(Error::internal(format!("how transaction {}, whose COMMIT's answer was lost, ended is no longer known", t.xid))),
        }
    }
}

/// [`committed`], asked on a new session of `conn`, opened (again when lost meanwhile) for up
/// to `--reconnect-timeout` in all; returns that session with the answer. `what` names the
/// question in errors.
pub async fn ask_committed(conn: &ConnInfo, t: &Committing, what: &str) -> Result<(Client, bool)> {
    let mut outage = Outage::new();
    loop {
        let client = retry(conn.reconnect_timeout, &mut outage, what, || conn.connect()).await?;
        match committed(&client, t).await {
            Ok(answer) => return Ok((client, answer)),
            Err(e) if e.kind().is_lost_connection() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// An SQL session that is opened again when lost.
pub struct Session {
    conn: ConnInfo,
    client: Arc<Client>,
    unreachable: Option<Arc<Notify>>,
    /// `unreachable` was told that this connection closed (see [`Session::tell_if_closed`]).
    closure_told: bool,
}

impl Session {
    /// Opens the session; `conn` (its application name included) is used again to reconnect.
    pub async fn connect(conn: ConnInfo) -> Result<Session> {
        let client = Arc::new(conn.connect().await?);
        Ok(Session { conn, client, unreachable: None, closure_told: false })
    }

    /// `notify` is told each time a new connection cannot be opened for a reason worth waiting
    /// out: then the server itself is down or restarting, not just this session.
    pub fn tell_when_unreachable(mut self, notify: Arc<Notify>) -> Session {
        self.unreachable = Some(notify);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Tells `unreachable`, once per connection, that the connection closed while unused (its
    /// backend terminated: a fast shutdown does that first), without waiting for its next use
    /// to find out. A server shutting down waits for the walsenders, and a logical walsender
    /// for its client to confirm what it sent, which a stream whose apply cannot flush never
    /// does: letting the stream go at once spares the restart `wal_sender_timeout`.
    pub fn tell_if_closed(&mut self) {
        if !self.closure_told && self.client.is_closed() {
            self.closure_told = true;
            if let Some(n) = &self.unreachable {
                n.notify_one();
            }
        }
    }

    /// Runs `op` on the session. When the session is lost, before or during `op`, a new one is
    /// opened and `op` runs again on it from the start, so `op` must be safe to repeat; `what`
    /// says in the warning what was lost.
    pub async fn run<T, F, Fut>(&mut self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut outage = Outage::new();
        loop {
            match op(self.client.clone()).await {
                Err(e) if e.kind().is_lost_connection() => {
                    lost(&self.conn, &mut outage, e, what)?;
                    let (conn, unreachable) = (&self.conn, &self.unreachable);
                    let client = retry(conn.reconnect_timeout, &mut outage, "reconnecting", || async move {
                        let opened = conn.connect().await;
                        if let (Err(e), Some(n)) = (&opened, unreachable) {
                            if e.is_retryable() {
                                n.notify_one();
                            }
                        }
                        opened
                    })
                    .await?;
                    reconnected(&self.conn, &outage);
                    self.client = Arc::new(client);
                    self.closure_told = false;
                }
                other => return other,
            }
        }
    }
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
pub async fn wait_for_statement_end(client: &Client, lost: &Backend, what: &str, outage: &mut Outage) -> Result<()> {
    let started = std::time::Instant::now();
    let mut reported: Option<std::time::Instant> = None;
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
            reported = Some(std::time::Instant::now());
            tracing::info!(
                pid = lost.pid,
                waited_secs = started.elapsed().as_secs(),
                what,
                "the lost session's backend still runs its statement on the server: waiting for it to end, so as to keep what it does"
            );
        }
        tokio::time::sleep(LOST_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn conn(timeout: Duration) -> ConnInfo {
        let mut c = ConnInfo::parse_with_env("host=127.0.0.1 port=1 user=u", |_| None).unwrap();
        c.reconnect_timeout = timeout;
        c
    }

    #[test]
    fn reconnects_are_counted_by_session_across_clones() {
        let main = conn(Duration::from_secs(1));
        let stream = main.with_application_name("pg-ghost stream");
        reconnected(&stream, &Outage::new());
        reconnected(&stream.clone(), &Outage::new());
        reconnected(&main.with_application_name("pg-ghost apply"), &Outage::new());
        assert_eq!(main.reconnects.counts(), [("pg-ghost apply".to_string(), 1), ("pg-ghost stream".to_string(), 2)]);
        let other_run = conn(Duration::from_secs(1));
        assert!(other_run.reconnects.counts().is_empty(), "another run's settings share nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_what_is_retryable_until_the_timeout_then_says_so() {
        let mut outage = Outage::new();
        let mut tries = 0;
        let started = tokio::time::Instant::now();
        let r: Result<()> = retry(Duration::from_secs(10), &mut outage, "starting", || {
            tries += 1;
            async { Err(Error::new(ErrorKind::Busy, "slot active")) }
        })
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert!(e.to_string().contains("--reconnect-timeout"), "{e}");
        assert!(tries > 5, "{tries}");
        assert!(started.elapsed() <= Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn other_failures_and_successes_end_at_once() {
        let mut tries = 0;
        let r: Result<()> = retry(Duration::from_secs(10), &mut Outage::new(), "starting", || {
            tries += 1;
            async { Err(Error::new(ErrorKind::Auth, "no")) }
        })
        .await;
        assert_eq!((tries, r.unwrap_err().kind()), (1, ErrorKind::Auth));
        let mut tries = 0;
        let r = retry(Duration::from_secs(10), &mut Outage::new(), "starting", || {
            tries += 1;
            let t = tries;
            async move {
                if t < 3 {
                    Err(Error::new(ErrorKind::Connection, "refused"))
                } else {
                    Ok(t)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[test]
    fn a_zero_timeout_gives_the_loss_back() {
        let e = lost(&conn(Duration::ZERO), &mut Outage::new(), Error::new(ErrorKind::Connection, "gone"), "x").unwrap_err();
        assert_eq!(e.to_string(), "gone");
        assert!(lost(&conn(Duration::from_secs(1)), &mut Outage::new(), Error::new(ErrorKind::Connection, "gone"), "x").is_ok());
    }
}
