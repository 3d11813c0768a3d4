//! TLS for every connection pg-ghost opens: the SQL sessions and the walsender stream use the
//! same settings, decided here from libpq's `sslmode` and friends.

use crate::conn::{ConnInfo, SslMode};
use crate::error::{Error, ErrorKind, Result};
use tokio_postgres::{Client, NoTls};

/// Opens an ordinary SQL session with `cfg` as `info`'s TLS settings ask; its connection task
/// runs on the current runtime.
pub async fn connect_sql(cfg: &tokio_postgres::Config, info: &ConnInfo) -> Result<Client> {
    if !matches!(info.ssl.mode, SslMode::Disable | SslMode::Allow | SslMode::Prefer) {
        return Err(Error::new(ErrorKind::Config, format!("sslmode={:?} needs TLS, which this build cannot speak yet", info.ssl.mode)));
    }
    let (client, connection) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection ended");
        }
    });
    Ok(client)
}
