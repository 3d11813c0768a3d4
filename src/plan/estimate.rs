//! How long, how much WAL and how much disk: the table's sizes from the catalog and two rates
//! measured on a sample of its rows (written into the clone, then rolled back; read). They are
//! estimates and are printed as such: a sample from the front of the table, caches, and the
//! load of the moment all move them.

use super::clauses::CLONE;
use crate::error::{Context, Result};
use crate::sql::{ident, QualifiedName};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Rows read and written for the rates.
const SAMPLE_ROWS: i64 = 20_000;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sizes {
    /// `reltuples`; -1 when never analyzed (then counted).
    pub rows: i64,
    pub heap_bytes: i64,
    pub toast_bytes: i64,
    pub index_bytes: i64,
}

impl Sizes {
    pub async fn read(client: &Client, table: &QualifiedName) -> Result<Sizes> {
        let row = client
            .query_one(
                "SELECT c.reltuples::bigint, pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), pg_indexes_size(c.oid)
                   FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&table.sql()],
            )
            .await
            .context("reading the table's size")?;
        let mut sizes = Sizes { rows: row.try_get(0)?, heap_bytes: row.try_get(1)?, toast_bytes: row.try_get(2)?, index_bytes: row.try_get(3)? };
        if sizes.rows < 0 {
            sizes.rows = client.query_one(&format!("SELECT count(*) FROM {}", table.sql()), &[]).await.context("counting the table's rows")?.try_get(0)?;
        }
        Ok(sizes)
    }

    /// What a full copy writes: the rows and every index, once.
    pub fn copy_bytes(&self) -> i64 {
        self.heap_bytes + self.toast_bytes + self.index_bytes
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rates {
    pub sample_rows: i64,
    /// Rows written per second (into the clone, which writes no WAL: a copy with WAL and
    /// indexes is slower; see `Estimates`).
    pub write_rows_per_sec: f64,
    /// Bytes of table read per second.
    pub read_bytes_per_sec: f64,
}

impl Rates {
    /// `columns` are the table's columns a copy writes (generated ones left out).
    pub async fn measure(client: &Client, table: &QualifiedName, columns: &[String], sizes: &Sizes) -> Result<Rates> {
        if sizes.rows == 0 || columns.is_empty() {
            return Ok(Rates::default());
        }
        let list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
        let started = Instant::now();
        let read: i64 = client
            .query_one(&format!("SELECT count(*) FROM (SELECT {list} FROM {} LIMIT {SAMPLE_ROWS}) s", table.sql()), &[])
            .await
            .context("reading a sample of the table")?
            .try_get(0)?;
        let read_time = started.elapsed();
        client.batch_execute("BEGIN").await?;
        let started = Instant::now();
        let written = client
            .execute(&format!("INSERT INTO pg_temp.{} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {} LIMIT {SAMPLE_ROWS}", ident(CLONE), table.sql()), &[])
            .await;
        let write_time = started.elapsed();
        client.batch_execute("ROLLBACK").await?;
        let written = written.context("writing a sample of the table into the clone")? as f64;
        let row_bytes = (sizes.heap_bytes + sizes.toast_bytes) as f64 / sizes.rows.max(1) as f64;
        Ok(Rates {
            sample_rows: read,
            write_rows_per_sec: written / secs(write_time),
            read_bytes_per_sec: read as f64 * row_bytes / secs(read_time),
        })
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-4)
}

/// One way of making the change, estimated.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cost {
    pub seconds: f64,
    pub wal_bytes: i64,
    pub extra_disk_bytes: i64,
    /// How long writes to the table wait, in words.
    pub writes_blocked: String,
}

/// How much slower than the unlogged, index-free sample a whole copy goes: pg-ghost's run
/// (chunked copy into an index-less ghost, the change stream beside it, index builds, the
/// checksum) and a plain ALTER's rewrite (one pass, WAL, every index rebuilt). The rewrite's
/// was measured on a 1,000,000-row table (README); pg-ghost's whole run took 2.4 times a plain
/// ALTER on 2,000,000 rows (`scripts/bench/RESULTS.md`, fourth round).
pub const GHOST_SLOWDOWN: f64 = 3.6;
pub const REWRITE_SLOWDOWN: f64 = 1.5;

pub fn copy_seconds(sizes: &Sizes, rates: &Rates, slowdown: f64) -> f64 {
    if rates.write_rows_per_sec <= 0.0 {
        return 0.0;
    }
    sizes.rows as f64 / rates.write_rows_per_sec * slowdown + scan_seconds(sizes.index_bytes, rates)
}

pub fn scan_seconds(bytes: i64, rates: &Rates) -> f64 {
    match rates.read_bytes_per_sec > 0.0 {
        true => bytes as f64 / rates.read_bytes_per_sec,
        false => 0.0,
    }
}
