//! Keyset chunking of the original: ranges `(lo, hi]` on the key, up to the key's maximum
//! taken when the copy starts (rows inserted later arrive through the stream).
//!
//! Boundaries are read by the server (`ORDER BY key OFFSET n-1 LIMIT 1`, an index-only walk
//! of the key index), so ranges follow PostgreSQL's own ordering of the key's type and
//! collation; composite keys compare as rows.

use crate::error::{Context, Result};
use crate::keysql::KeyCols;
use crate::sql::QualifiedName;
use std::sync::Arc;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// A key as text values, in key order.
pub type Bound = Vec<String>;

/// The rows with `lo < key <= hi` (no lower bound for the first range), of one partition
/// when `part` is set, of the whole table otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub lo: Option<Bound>,
    pub hi: Bound,
    pub part: Option<Arc<Part>>,
}

impl Range {
    /// A range over the whole table.
    pub fn new(lo: Option<Bound>, hi: Bound) -> Range {
        Range { lo, hi, part: None }
    }
}

/// A leaf partition of a partitioned original, copied and checked on its own: its rows are
/// read from the original's partition and written into the ghost's.
#[derive(Debug, PartialEq, Eq)]
pub struct Part {
    pub orig: QualifiedName,
    pub ghost: QualifiedName,
    /// The partition's constraint (`pg_get_partition_constraintdef`, its ancestors' included),
    /// over the key's column names: true exactly for the keys whose row lives in it. It may
    /// only name key columns (see `crate::copy::partitions`).
    pub predicate: String,
}

/// Where a chunked walk of one table (or partition) stands, without a session of its own:
/// the caller lends one to each step, so that many partitions' walks share one.
pub struct Cursor {
    /// `INSERT ... ON CONFLICT` recording the range handed out last in the changelog table,
    /// for DBAs watching the copy (and for tests that aim writes at the chunk in flight).
    record: Option<String>,
    boundary_from_start: String,
    boundary_after: String,
    max: Option<Bound>,
    lo: Option<Bound>,
    done: bool,
    part: Option<Arc<Part>>,
}

/// A [`Cursor`] with its own session.
pub struct Chunker {
    client: Client,
    cursor: Cursor,
}

/// Reads a row of `key::text` columns as a bound.
fn bound(row: &tokio_postgres::Row) -> Result<Bound> {
    (0..row.len()).map(|i| row.try_get::<_, String>(i).map_err(Into::into)).collect()
}

fn params(values: &[&Bound]) -> Vec<String> {
    values.iter().flat_map(|b| b.iter().cloned()).collect()
}

impl Cursor {
    /// Reads the key's current maximum in `table`; an empty table gives a cursor with no ranges.
    pub async fn start(client: &Client, table: &QualifiedName, key: &KeyCols, resume_after: Option<Bound>) -> Result<Cursor> {
        let max_sql = format!("SELECT {} FROM {} ORDER BY {} LIMIT 1", key.as_text(), table.sql(), key.order_by(true));
        let max = match client.query_typed_opt(&max_sql, &[]).await.with_context(|| format!("reading the key's maximum in {table}"))? {
            Some(row) => Some(bound(&row)?),
            None => None,
        };
        let n = key.len();
        let select = |filter: String| {
            format!(
                "SELECT {} FROM {} WHERE {filter} ORDER BY {} OFFSET $1::bigint LIMIT 1",
                key.as_text(),
                table.sql(),
                key.order_by(false)
            )
        };
        let upto = format!("{} <= {}", key.tuple(), key.params(2));
        let boundary_from_start = select(upto.clone());
        let boundary_after = select(format!("{} > {} AND {upto}", key.tuple(), key.params(2 + n)));
        Ok(Cursor { record: None, boundary_from_start, boundary_after, done: max.is_none(), max, lo: resume_after, part: None })
    }

    /// The ranges of one partition: a walk of the original's partition, its ranges marked as its.
    pub async fn start_part(client: &Client, part: Arc<Part>, key: &KeyCols, resume_after: Option<Bound>) -> Result<Cursor> {
        let mut cursor = Cursor::start(client, &part.orig, key, resume_after).await?;
        cursor.part = Some(part);
        Ok(cursor)
    }

    pub fn part(&self) -> Option<&Arc<Part>> {
        self.part.as_ref()
    }

    /// Where the walk starts or stands: every key at or below it is behind it.
    pub fn position(&self) -> Option<&Bound> {
        self.lo.as_ref()
    }

    /// Records each range handed out as `copy_range` = `<lo>..<hi>` in `changelog`.
    pub fn record_ranges_in(&mut self, changelog: &QualifiedName) {
        self.record = Some(crate::checkpoint::upsert_sql(changelog));
    }

    pub fn max(&self) -> Option<&Bound> {
        self.max.as_ref()
    }

    /// The next range of about `size` rows, or None when the walk has reached the maximum.
    /// On an error nothing moves: the same call again hands out the same range (or one
    /// that ends elsewhere, never a gap).
    pub async fn next(&mut self, client: &Client, size: u64) -> Result<Option<Range>> {
        let Some(max) = self.max.clone().filter(|_| !self.done) else { return Ok(None) };
        let offset = size.saturating_sub(1).min(i64::MAX as u64) as i64;
        // One round trip each (no prepare): across a network, a chunk of a small partition
        // costs its round trips more than its rows. The key values are text, cast in the SQL.
        let (sql, values) = match &self.lo {
            None => (&self.boundary_from_start, params(&[&max])),
            Some(lo) => (&self.boundary_after, params(&[&max, lo])),
        };
        let mut p: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&offset, Type::INT8)];
        p.extend(values.iter().map(|v| (v as &(dyn ToSql + Sync), Type::TEXT)));
        let row = client.query_typed_opt(sql, &p).await.context("finding the next chunk boundary")?;
        let hi = match row {
            Some(row) => bound(&row)?,
            None => max.clone(),
        };
        let range = Range { lo: self.lo.clone(), hi, part: self.part.clone() };
        if let Some(sql) = &self.record {
            let text = format!("{}..{}", range.lo.as_ref().map(|b| b.join(",")).unwrap_or_default(), range.hi.join(","));
            crate::checkpoint::record(client, sql, "copy_range", &text).await.context("recording the copy range")?;
        }
        self.done = range.hi == max;
        self.lo = Some(range.hi.clone());
        Ok(Some(range))
    }
}

impl Chunker {
    /// Reads the key's current maximum; an empty table gives a chunker with no ranges.
    pub async fn start(client: Client, orig: &QualifiedName, key: &KeyCols, resume_after: Option<Bound>) -> Result<Chunker> {
        let cursor = Cursor::start(&client, orig, key, resume_after).await?;
        Ok(Chunker { client, cursor })
    }

    /// Records each range handed out as `copy_range` = `<lo>..<hi>` in `changelog`.
    pub fn record_ranges_in(&mut self, changelog: &QualifiedName) {
        self.cursor.record_ranges_in(changelog);
    }

    pub fn max(&self) -> Option<&Bound> {
        self.cursor.max()
    }

    /// Goes on with a new session after the old one was lost.
    pub fn replace_client(&mut self, client: Client) {
        self.client = client;
    }

    /// See [`Cursor::next`].
    pub async fn next(&mut self, size: u64) -> Result<Option<Range>> {
        self.cursor.next(&self.client, size).await
    }
}
