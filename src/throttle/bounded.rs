//! Time limits on the throttle's sessions and queries: a tick must never hang on a server
//! that does not answer. Used by the collectors and the lag probes alike.

use crate::conn::ConnInfo;
use crate::error::{Error, ErrorKind, Result};
use std::time::Duration;
use tokio_postgres::Client;

/// Bounds connecting to a server, so an unreachable host costs one tick at most.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens a session within [`CONNECT_TIMEOUT`].
pub(crate) async fn connect_within(conn: &ConnInfo) -> Result<Client> {
    match tokio::time::timeout(CONNECT_TIMEOUT, conn.connect()).await {
        Ok(client) => client,
        Err(_) => Err(Error::new(
            ErrorKind::Connection,
            format!(
                "connecting to {} timed out after {}",
                conn.endpoint.describe(),
                super::human::duration(CONNECT_TIMEOUT)
            ),
        )),
    }
}

/// Runs `fut` within `limit`; a timeout is a connection error (the session may be stuck).
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(Error::new(ErrorKind::Connection, format!("{what} took longer than {}", super::human::duration(limit))))
    })
}
