//! Scanning the original for the rows a check finds: keyset chunks under the throttle's
//! gate, narrowing a chunk that fails to the rows that fail.

use super::sql::{self, Table};
use super::{Check, Finding, Kind, Original, Violation};
use crate::conn::ConnInfo;
use crate::copy::{next_chunk_size, Bound, Chunker, Gate, GateState, Range};
use crate::error::{Context, Error, ErrorKind, Result};
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

/// How the checks run.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Offending rows (or duplicate values) to report per clause: `--data-check-limit`.
    pub report: usize,
    /// Rows in the first chunk; later chunks adapt to `chunk_time`, as the copy's do.
    pub chunk_size: u64,
    pub chunk_time: Duration,
    /// Rest after each chunk, as a fraction of the time it took (`--nice-ratio`).
    pub nice_ratio: f64,
    /// How often a long check logs its progress.
    pub log_every: Duration,
}

/// Keys listed per duplicate value.
const KEYS_PER_DUPLICATE: usize = 5;

/// Runs the checks in order; returns the first clause the rows break, with its first
/// offending rows. `gate` is consulted before every chunk (and before a duplicate search).
pub async fn run(conn: &ConnInfo, original: &Original<'_>, checks: &[Check], limits: &Limits, mut gate: Gate) -> Result<Option<Finding>> {
    if checks.is_empty() {
        return Ok(None);
    }
    let conn = conn.with_application_name("pg-ghost data check");
    let client = read_only(&conn).await?;
    let table = Table { name: original.name, key: &original.key };
    for check in checks {
        let started = Instant::now();
        let violations = match check.kind {
            Kind::Unique { .. } => {
                pass_gate(&mut gate).await?;
                tracing::info!(clause = %check.clause, "data check: looking for duplicates (one GROUP BY over the table)");
                duplicates(&client, &table, check, limits.report).await?
            }
            _ => {
                let mut scan = Scan { client: &client, table: &table, check, limits, found: Vec::new() };
                scan.chunks(&conn, &mut gate).await?;
                scan.found
            }
        };
        tracing::info!(
            clause = %check.clause,
            found = violations.len(),
            secs = started.elapsed().as_secs_f64(),
            "data check done"
        );
        if !violations.is_empty() {
            return Ok(Some(Finding {
                check: check.clone(),
                labels: sql::labels(check),
                violations,
                query: sql::listing_sql(&table, check),
            }));
        }
    }
    Ok(None)
}

async fn read_only(conn: &ConnInfo) -> Result<Client> {
    let client = conn.connect().await?;
    client
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .context("making the data check's session read-only")?;
    Ok(client)
}

/// Waits while the gate says throttled; an abort ends the check.
async fn pass_gate(gate: &mut Gate) -> Result<()> {
    loop {
        let state = gate.borrow_and_update().clone();
        match state {
            GateState::Open => return Ok(()),
            GateState::Abort(why) => return Err(Error::new(ErrorKind::Aborted, why)),
            GateState::Throttled(_) => {
                if gate.changed().await.is_err() {
                    return Err(Error::new(ErrorKind::Aborted, "the throttler stopped"));
                }
            }
        }
    }
}

struct Scan<'a> {
    client: &'a Client,
    table: &'a Table<'a>,
    check: &'a Check,
    limits: &'a Limits,
    found: Vec<Violation>,
}

impl Scan<'_> {
    fn full(&self) -> bool {
        self.found.len() >= self.limits.report
    }

    async fn chunks(&mut self, conn: &ConnInfo, gate: &mut Gate) -> Result<()> {
        let mut chunker = Chunker::start(conn.connect().await?, self.table.name, self.table.key, None).await?;
        let mut size = self.limits.chunk_size.max(1);
        let (started, mut logged, mut rows) = (Instant::now(), Instant::now(), 0u64);
        while !self.full() {
            pass_gate(gate).await?;
            let Some(range) = chunker.next(size).await? else { break };
            let began = Instant::now();
            self.range(&range).await?;
            let took = began.elapsed();
            rows += size;
            size = next_chunk_size(size, took, self.limits.chunk_time);
            if logged.elapsed() >= self.limits.log_every {
                logged = Instant::now();
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(
                    clause = %self.check.clause,
                    rows_checked = rows,
                    rows_per_sec = (rows as f64 / secs.max(0.001)) as u64,
                    upto = %range.hi.join(", "),
                    "data check in progress"
                );
            }
            let pause = crate::throttle::nice_pause(took, self.limits.nice_ratio);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        self.found.truncate(self.limits.report);
        Ok(())
    }

    /// The offending rows of one chunk; narrowed when computing the chunk fails.
    async fn range(&mut self, range: &Range) -> Result<()> {
        match self.rows(range.lo.as_ref(), &range.hi).await {
            Ok(rows) => self.found.extend(rows),
            Err(e) if e.is_row_error() => self.narrow(range, e).await?,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    async fn rows(&self, lo: Option<&Bound>, hi: &Bound) -> Result<Vec<Violation>> {
        let (filter, values) = match lo {
            None => (self.table.first(), hi.clone()),
            Some(lo) => (self.table.after(), hi.iter().chain(lo).cloned().collect()),
        };
        let Some(sql) = sql::rows_sql(self.table, self.check, &filter) else { return Ok(Vec::new()) };
        let rows = query(self.client, &sql, &values).await?;
        rows.iter().map(|r| self.violation(r)).collect()
    }

    fn violation(&self, row: &Row) -> Result<Violation> {
        let n = self.table.key.len();
        let key = (0..n).map(|i| row.try_get::<_, String>(i)).collect::<Result<Vec<_>, _>>()?;
        let values = (n..row.len()).map(|i| row.try_get::<_, Option<String>>(i)).collect::<Result<Vec<_>, _>>()?;
        Ok(Violation { keys: vec![key], values, rows: None, error: None })
    }

    /// Finds the rows of `range` whose evaluation fails, by halving the range's keys until
    /// each failing part is one row; parts that evaluate report their offending rows as
    /// usual. Left halves first, so the rows come in key order.
    async fn narrow(&mut self, range: &Range, first: Error) -> Result<()> {
        tracing::debug!(clause = %self.check.clause, error = %first, "a chunk failed to evaluate: narrowing it to its rows");
        let (filter, values) = match &range.lo {
            None => (self.table.first(), range.hi.clone()),
            Some(lo) => (self.table.after(), range.hi.iter().chain(lo).cloned().collect()),
        };
        let keys: Vec<Bound> = query(self.client, &self.table.keys_sql(&filter), &values)
            .await?
            .iter()
            .map(|r| (0..r.len()).map(|i| r.try_get::<_, String>(i)).collect::<Result<Vec<_>, _>>())
            .collect::<Result<_, _>>()?;
        let mut parts = vec![(0, keys.len())];
        while let Some((a, b)) = parts.pop() {
            if self.full() || a >= b {
                continue;
            }
            if b - a == 1 {
                self.one(&keys[a]).await?;
                continue;
            }
            let lo = if a == 0 { range.lo.as_ref() } else { Some(&keys[a - 1]) };
            match self.rows(lo, &keys[b - 1]).await {
                Ok(rows) => self.found.extend(rows),
                Err(e) if e.is_row_error() => {
                    let mid = a + (b - a) / 2;
                    parts.push((mid, b));
                    parts.push((a, mid));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One row: offending, failing (with the server's message), or fine.
    async fn one(&mut self, key: &Bound) -> Result<()> {
        let filter = self.table.one();
        let Some(sql) = sql::rows_sql(self.table, self.check, &filter) else { return Ok(()) };
        match query(self.client, &sql, key).await {
            Ok(rows) => {
                for r in &rows {
                    let v = self.violation(r)?;
                    self.found.push(v);
                }
            }
            Err(e) if e.is_row_error() => {
                // What the row holds, for the report; its evaluation failed, not its read.
                let values = match query(self.client, &sql::values_sql(self.table, self.check, &filter), key).await {
                    Ok(rows) => match rows.first() {
                        Some(r) => (0..r.len()).map(|i| r.try_get::<_, Option<String>>(i)).collect::<Result<Vec<_>, _>>()?,
                        None => return Ok(()), // gone meanwhile
                    },
                    Err(_) => Vec::new(),
                };
                self.found.push(Violation { keys: vec![key.clone()], values, rows: None, error: Some(e.message().to_string()) });
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

async fn query(client: &Client, sql: &str, values: &[String]) -> Result<Vec<Row>> {
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    client.query(sql, &params).await.map_err(Error::from)
}

/// The first duplicate values of a UNIQUE, with the keys of the rows sharing each.
async fn duplicates(client: &Client, table: &Table<'_>, check: &Check, limit: usize) -> Result<Vec<Violation>> {
    let Some(sql) = sql::duplicates_sql(table, check, Some(limit), KEYS_PER_DUPLICATE) else { return Ok(Vec::new()) };
    let rows = client.query(sql.as_str(), &[]).await.with_context(|| format!("looking for duplicates of {}", check.clause))?;
    let values = match &check.kind {
        Kind::Unique { exprs, .. } => exprs.len(),
        _ => 0,
    };
    let n = table.key.len();
    let mut out = Vec::new();
    for r in rows {
        let vals = (0..values).map(|i| r.try_get::<_, Option<String>>(i)).collect::<Result<Vec<_>, _>>()?;
        let count: i64 = r.try_get(values)?;
        let columns: Vec<Vec<String>> = (0..n).map(|i| r.try_get::<_, Vec<String>>(values + 1 + i)).collect::<Result<_, _>>()?;
        let keys = (0..columns.first().map_or(0, Vec::len)).map(|j| columns.iter().map(|c| c.get(j).cloned().unwrap_or_default()).collect()).collect();
        out.push(Violation { keys, values: vals, rows: Some(count), error: None });
    }
    Ok(out)
}
