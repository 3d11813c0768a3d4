//! The comparison after `--test-on-replica`'s cut-over: every range of both tables compared
//! once, nothing repaired, the differing keys reported.
//!
//! [`super::verify`] runs while changes still stream, so a difference may be lag and is
//! re-checked and repaired. This one runs once nothing writes to either table any more (the
//! replica's subscriptions are stopped and the swap is undone): a difference is real and is
//! the test's result, so it is reported as found, never repaired.

use super::sql::{ChecksumSql, Side};
use super::{compare, differing_keys, feed, start_pass, ChecksumJob, CheckRange, RangeSize};
use crate::error::Result;
use crate::reconnect::{self, Outage};
use crate::sql::literal;
use futures_util::future::{try_join, try_join_all};
use std::time::{Duration, Instant};

/// What the comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub ranges: u64,
    /// Rows of the original compared.
    pub rows: u64,
    /// Per differing range: `key range (lo, hi]: N key(s) differ: k1, k2, ...`.
    pub differences: Vec<String>,
    pub elapsed: Duration,
    /// A query a DBA can run to see the same comparison row by row: it returns the rows found
    /// on one side only, none when the tables agree.
    pub query: String,
}

impl Audit {
    pub fn clean(&self) -> bool {
        self.differences.is_empty()
    }
}

/// `ROW(...)::text` of one side: text compares whatever the column types (json has no
/// equality operator, so `EXCEPT` over the columns themselves would fail).
fn row_text(side: &Side) -> String {
    format!("ROW({})::text", side.row.join(", "))
}

/// The DBA's query: both directions of `EXCEPT ALL` over the rows as the checksum renders
/// them, each row labelled with the side it was found on only.
fn query(sql: &ChecksumSql) -> String {
    let one_side = |a: &Side, b: &Side| {
        format!(
            "SELECT {} AS only_in, r FROM (SELECT {} AS r FROM ONLY {} EXCEPT ALL SELECT {} FROM ONLY {}) d",
            literal(&a.table.to_string()),
            row_text(a),
            a.table.sql(),
            row_text(b),
            b.table.sql()
        )
    };
    format!("{} UNION ALL {}", one_side(&sql.orig, &sql.ghost), one_side(&sql.ghost, &sql.orig))
}

/// Compares the ghost with the original range by range, reporting every range that differs.
pub async fn audit(job: &ChecksumJob) -> Result<Audit> {
    let started = Instant::now();
    let (conn, ranges) = start_pass(job).await?;
    let size = RangeSize::new(job);
    let (finding, feed) = feed(ranges, &conn, &size, job.workers);
    let worker = || async {
        let mut client = conn.connect().await?;
        let mut part = Audit::default();
        loop {
            let Some((sql, range)) = feed.next().await else { return Ok::<_, crate::error::Error>(part) };
            // Reading only: a lost session's range is read again on a new one.
            let mut outage = Outage::new();
            loop {
                match check(&client, &sql, &range, &size, &mut part).await {
                    Err(e) if e.kind().is_lost_connection() => {
                        client = reconnect::connect_again(&conn, &mut outage, e, "a compared range (compared again)").await?;
                    }
                    other => break other?,
                }
            }
        }
    };
    let ((), parts) = try_join(finding, try_join_all((0..job.workers.max(1)).map(|_| worker()))).await?;
    // The DBA's query reads the whole tables, partitions or not.
    let whole = super::catalog::load(&conn.connect().await?, &job.orig, &job.ghost, &job.mapping).await?;
    let mut audit = Audit { query: query(&whole), ..Audit::default() };
    for part in parts {
        audit.ranges += part.ranges;
        audit.rows += part.rows;
        audit.differences.extend(part.differences);
    }
    audit.elapsed = started.elapsed();
    Ok(audit)
}

async fn check(client: &tokio_postgres::Client, sql: &ChecksumSql, range: &CheckRange, size: &RangeSize, part: &mut Audit) -> Result<()> {
    let started = Instant::now();
    let sums = compare(client, sql, range).await?;
    size.took(sql, sums.orig_rows(), started.elapsed());
    let differing = match sums.equal() {
        true => None,
        false => Some(differing_keys(client, sql, range, None).await?),
    };
    // Counted only once the range is read through (a lost session reads it again).
    part.ranges += 1;
    part.rows += sums.orig_rows();
    if let Some(keys) = differing {
        tracing::warn!(range = %range, keys = %keys, "the ghost differs from the original");
        part.differences.push(format!("{range}: {keys}"));
    }
    Ok(())
}
