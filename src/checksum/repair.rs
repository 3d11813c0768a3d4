//! Re-copying one key range of the ghost while changes keep streaming.
//!
//! The range is registered with [`InFlight`] exactly like a copy chunk, so the flusher
//! defers every changed key inside it until the repair has committed and then flushes it
//! from a snapshot that sees the repair (the race in DESIGN.md, phase 5). The repair itself
//! is one REPEATABLE READ transaction: delete the ghost's rows of the range, copy the
//! original's rows of the range, and compare the range again in that same snapshot. Nothing
//! else writes those ghost rows meanwhile, so that comparison is exact: a difference left
//! after it is not lag but something that rewrites rows (a trigger, a non-deterministic
//! transformation), and the transaction is rolled back.

use super::sql::ChecksumSql;
use super::{compare, differing_keys, persistent_difference, CheckRange};
use crate::apply::inflight::Registered;
use crate::apply::InFlight;
use crate::copy::{Bound, Range};
use crate::ghost::Mapping;
use crate::sql::QualifiedName;
use crate::error::{Backoff, Context, ErrorKind, Result};
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel};

/// A repair that meets a serialization failure is simply run again.
const RETRY: Backoff = Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(2), attempts: 5 };

/// Repairs `range`. Returns false when there was nothing to repair: the open last range
/// holds no rows on either side any more.
pub(super) async fn repair(client: &mut Client, sql: &ChecksumSql, inflight: &InFlight, range: &CheckRange) -> Result<bool> {
    let Some(bounded) = bounded(client, sql, range).await? else { return Ok(false) };
    let _registered = Registered::new(inflight, inflight.chunk_starting(&bounded).await);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match repair_once(client, sql, &bounded).await {
            Err(e) if e.kind() == ErrorKind::Serialization && attempt < RETRY.attempts => {
                tracing::debug!(attempt, error = %e, "checksum repair met a concurrent write; running it again");
                tokio::time::sleep(RETRY.delay(attempt)).await;
            }
            other => return other.map(|()| true),
        }
    }
}

/// Removes the ghost's rows whose key comes after `after` in the original key's order (all of
/// them without it): a resumed copy into a ghost with no key index starts again from its
/// watermark. Returns how many rows went.
pub async fn clear_after(client: &Client, orig: &QualifiedName, ghost: &QualifiedName, m: &Mapping, after: Option<&Bound>) -> Result<u64> {
    let sql = super::catalog::load(client, orig, ghost, m).await?;
    let values: Vec<&str> = after.into_iter().flatten().map(String::as_str).collect();
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    client
        .execute(&sql.delete_after(after.is_some()), &params)
        .await
        .context("removing the ghost's rows past the copy's watermark")
}

/// The range with an upper bound: the open last range ends at the greatest key either side
/// has now (later keys are new changes, which the stream brings).
async fn bounded(client: &Client, sql: &ChecksumSql, range: &CheckRange) -> Result<Option<Range>> {
    if let Some(hi) = &range.hi {
        return Ok(Some(Range::new(range.lo.clone(), hi.clone())));
    }
    let lo: Vec<&str> = range.lo.iter().flatten().map(String::as_str).collect();
    let params: Vec<&(dyn ToSql + Sync)> = lo.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let row = client
        .query_opt(&sql.greatest_key(range.lo.is_some()), &params)
        .await
        .context("finding the end of the last checksum range")?;
    let hi = match row {
        Some(row) => (0..row.len()).map(|i| row.try_get::<_, String>(i)).collect::<Result<Vec<_>, _>>()?,
        None => return Ok(None),
    };
    Ok(Some(Range::new(range.lo.clone(), hi)))
}

async fn repair_once(client: &mut Client, sql: &ChecksumSql, range: &Range) -> Result<()> {
    let check = CheckRange { lo: range.lo.clone(), hi: Some(range.hi.clone()) };
    let values = check.params();
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .context("starting a checksum repair")?;
    let has_lo = range.lo.is_some();
    let deleted = tx.execute(&sql.delete(has_lo), &params).await.with_context(|| format!("clearing {check} on the ghost"))?;
    let copied = tx.execute(&sql.insert(has_lo), &params).await.with_context(|| format!("copying {check} again"))?;
    let sums = compare(&tx, sql, &check).await?;
    if !sums.equal() {
        let keys = differing_keys(&tx, sql, &check, None).await?;
        // Dropping the transaction rolls the repair back: the ghost stays as it was.
        drop(tx);
        return Err(persistent_difference(&check, &keys));
    }
    tx.commit().await.with_context(|| format!("committing the repair of {check}"))?;
    tracing::info!(range = %check, deleted, copied, "checksum: range repaired and verified");
    Ok(())
}
