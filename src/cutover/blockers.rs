//! Who holds the lock the cut-over waits for: read from a second connection while the
//! `LOCK TABLE` waits, so the report names the sessions that were actually in the way.

use crate::error::Result;
use tokio_postgres::Client;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub pid: i32,
    pub state: String,
    pub transaction_age: String,
    pub query: String,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({}, transaction open {}): {}", self.pid, self.state, self.transaction_age, self.query)
    }
}

pub async fn blockers_of(monitor: &Client, pid: i32) -> Result<Vec<Blocker>> {
    let rows = monitor
        .query(
            "SELECT a.pid, coalesce(a.state, ''), coalesce(date_trunc('second', now() - a.xact_start)::text, 'none'),
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 200)
               FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids($1)) ORDER BY a.xact_start",
            &[&pid],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Blocker {
                pid: r.try_get(0)?,
                state: r.try_get(1)?,
                transaction_age: r.try_get(2)?,
                query: r.try_get(3)?,
            })
        })
        .collect()
}
