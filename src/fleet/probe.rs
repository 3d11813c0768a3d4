//! Before anything runs, every target is reached once: its connection string is read, a
//! session opened, its size measured (unless the registry gave it) and the highest version
//! its `pgghost.migrations` records read (`--plan` shows it). A target that cannot be
//! reached stops the fleet before anything changes, with its name and the reason.

use super::targets::Target;
use crate::conn::ConnInfo;
use crate::error::{Error, Result};
use crate::migrate::{files::Version, table};
use tokio::task::JoinSet;
use tokio_postgres::Client;

/// Sessions opened at once while probing: enough for hundreds of tenants, few for a server.
const AT_ONCE: usize = 8;

/// A target reached: what the fleet runs it with and orders it by.
#[derive(Clone, Debug)]
pub struct Probed {
    pub target: Target,
    pub conn: ConnInfo,
    pub server: String,
    pub size_bytes: i64,
    /// The highest version its `pgghost.migrations` records as applied, when the fleet began.
    pub version: Option<String>,
}

/// Reaches every target, `AT_ONCE` at a time; the first that fails names itself.
pub async fn probe_all(targets: Vec<Target>) -> Result<Vec<Probed>> {
    let total = targets.len();
    let mut out: Vec<Option<Probed>> = vec![None; total];
    let mut queue = targets.into_iter().enumerate();
    let mut running = JoinSet::new();
    let mut failures = Vec::new();
    loop {
        while running.len() < AT_ONCE {
            let Some((i, t)) = queue.next() else { break };
            running.spawn(async move { (i, probe(t).await) });
        }
        let Some(joined) = running.join_next().await else { break };
        match joined {
            Ok((i, Ok(p))) => out[i] = Some(p),
            Ok((_, Err(e))) => failures.push(e),
            Err(e) => failures.push(Error::internal(format!("probing a target: {e}"))),
        }
    }
    if let Some(first) = failures.into_iter().next() {
        return Err(first.context("reaching every target before starting (nothing was changed)"));
    }
    tracing::info!(targets = total, "every target reached");
    Ok(out.into_iter().flatten().collect())
}

async fn probe(target: Target) -> Result<Probed> {
    let name = target.name.clone();
    let at = |e: Error| e.context(format!("target {name}"));
    let conn = ConnInfo::parse(&target.conninfo).map_err(|e| at(e.context("its conninfo")))?;
    let conn = conn.resolve().await.map_err(at)?;
    let client = conn.with_application_name("pg-ghost fleet").connect().await.map_err(at)?;
    let size_bytes = match target.size_bytes {
        Some(s) => s,
        None => client.query_one("SELECT pg_database_size(current_database())", &[]).await.map_err(|e| at(Error::from(e).context("measuring its size")))?.get(0),
    };
    // Only shown by --plan: a table the role may not read is no reason to stop the fleet.
    let version = applied_version(&client).await.unwrap_or_else(|e| {
        tracing::warn!(tenant = %name, error = %e.chain(), "cannot read the applied version");
        None
    });
    let server = target.server.clone().unwrap_or_else(|| conn.endpoint.describe());
    Ok(Probed { target, conn, server, size_bytes, version })
}

/// The highest version `pgghost.migrations` records as applied; `None` before any.
pub async fn applied_version(client: &Client) -> Result<Option<String>> {
    let rows = table::rows(client).await?;
    Ok(rows.iter().filter(|r| r.is_applied()).filter_map(|r| Version::parse(&r.version)).max().map(|v| v.to_string()))
}
