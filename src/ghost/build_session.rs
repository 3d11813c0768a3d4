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
use crate::reconnect::{connect_again, wait_for_statement_end, Backend, Outage};
use tokio_postgres::Client;

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
            self.backend = Some(Backend::of(self.client()).await.context("reading the build session's backend")?);
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
