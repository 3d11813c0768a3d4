//! Checksum before cut-over: proves, range by range, that the ghost holds exactly the
//! original's rows with the ALTER's transformation applied, repairing what differs.
//!
//! For each key range (the chunker's ranges of the original, then an open range above its
//! maximum for rows inserted since), one statement reads both sides in one snapshot: the
//! row count and an order-independent hash aggregate (the XOR of each row's 64-bit hash, each
//! value hashed in a form that differs exactly when its text does) of each side. The
//! original's rows are its mapped expressions cast to the ghost's column types, the ghost's
//! rows its mapped columns in the same order, so a row hashes the same on both sides exactly
//! when it holds what the copy writes (collisions of the hash aside). Generated columns and
//! columns the ALTER adds are compared on neither side (their values are the ghost's own,
//! defaults may be volatile).
//!
//! Invariants:
//! - The original is only read; the ghost is written only by a repair, inside a range
//!   registered with [`InFlight`] like a copy chunk, so streamed changes are never lost.
//! - A range that differs has its differing rows re-checked after each `catch_up()` (the
//!   ghost lags the original by the apply backlog; `catch_up` must wait until every change
//!   committed before it is written to the ghost); a range whose rows still differ is
//!   repaired and verified in the repair's own snapshot. A difference that survives its repair fails the run with
//!   [`ErrorKind::Aborted`], naming the range and sample keys; row values never appear in
//!   messages or logs.
//! - No snapshot is held longer than one range's statement.

mod audit;
mod catalog;
mod repair;
mod sql;

pub use audit::{audit, Audit};
pub use repair::clear_after;

use crate::apply::InFlight;
use crate::conn::ConnInfo;
use crate::copy::{next_chunk_size, Bound, Cursor, Part};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::ghost::Mapping;
use crate::keysql::KeyCols;
use crate::reconnect::{self, Outage};
use crate::sql::QualifiedName;
use futures_util::future::{try_join, try_join_all, BoxFuture};
use std::future::Future;
use sql::ChecksumSql;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio::sync::{mpsc, Mutex};
use tokio_postgres::GenericClient;

/// What to compare and how.
#[derive(Clone, Debug)]
pub struct ChecksumJob {
    pub conn: ConnInfo,
    pub orig: QualifiedName,
    pub ghost: QualifiedName,
    pub mapping: Mapping,
    /// Rows of the original in the first compared range; with `range_time` the next ones are
    /// sized from the time the ranges before them took.
    pub range_rows: u64,
    /// The time one range's statement should take, which is how long it holds its snapshot;
    /// None: every range has `range_rows` rows.
    pub range_time: Option<Duration>,
    /// Re-checks of a differing range, each after a `catch_up()`, before it is repaired.
    pub rechecks: u32,
    /// Ranges compared at once, each on its own connection.
    pub workers: usize,
    /// Counted as ranges are done, for the metrics; the caller may share it.
    pub progress: Arc<ChecksumProgress>,
    /// A partitioned original's leaves, each compared with the ghost's on its own; empty:
    /// the tables are compared by ranges of the key.
    pub parts: Vec<Arc<Part>>,
}

impl ChecksumJob {
    /// The first range: small enough for wide rows (50,000 rows of 4 kB took 0.55 s), the
    /// next ones grow from there.
    pub const DEFAULT_RANGE_ROWS: u64 = 10_000;
    /// Each range then costs about 2 ms more than its rows (two statements and their round
    /// trips: about 2 % here), and a worker done with the last range waits for the others for
    /// half of it on average; 2M narrow rows take about as long as with 50,000-row ranges, and
    /// a range holds its snapshot about this long whatever its rows' width.
    pub const DEFAULT_RANGE_TIME: Duration = Duration::from_millis(100);
    /// Rows of each range, when sized by time, of a table whose ranges each read the whole
    /// ghost (see `sql::ChecksumSql::scans_ghost`): time says nothing of their rows there,
    /// and fewer ranges mean fewer scans.
    pub const SCANNING_RANGE_ROWS: u64 = 50_000;
    pub const DEFAULT_RECHECKS: u32 = 3;

    pub fn new(conn: ConnInfo, orig: QualifiedName, ghost: QualifiedName, mapping: Mapping) -> ChecksumJob {
        ChecksumJob {
            conn,
            orig,
            ghost,
            mapping,
            range_rows: Self::DEFAULT_RANGE_ROWS,
            range_time: Some(Self::DEFAULT_RANGE_TIME),
            rechecks: Self::DEFAULT_RECHECKS,
            workers: 1,
            progress: Arc::default(),
            parts: Vec::new(),
        }
    }
}

/// The checksum's counts so far, added to as each range is done (the report of a pass comes
/// only at its end); counts of a failed pass stay counted.
#[derive(Debug, Default)]
pub struct ChecksumProgress {
    pub ranges: AtomicU64,
    pub rows: AtomicU64,
    pub differing_ranges: AtomicU64,
    pub repaired_ranges: AtomicU64,
}

impl ChecksumProgress {
    fn count(&self, checked: &Checked) {
        self.ranges.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(checked.rows, Ordering::Relaxed);
        self.differing_ranges.fetch_add(u64::from(checked.differed), Ordering::Relaxed);
        self.repaired_ranges.fetch_add(u64::from(checked.repaired), Ordering::Relaxed);
    }
}

/// The outcome of a clean pass: every range equal, directly or after its repair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChecksumReport {
    pub ranges: u64,
    /// Rows of the original compared (counted at each range's last comparison).
    pub rows: u64,
    /// Ranges that still differed after their re-checks.
    pub differing_ranges: u64,
    /// Of those, ranges re-copied and verified (the others had become empty meanwhile).
    pub repaired_ranges: u64,
    pub elapsed: Duration,
}

/// A key range in the original key's order: `lo < key <= hi`, either end open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckRange {
    pub lo: Option<Bound>,
    pub hi: Option<Bound>,
}

impl CheckRange {
    /// The bounds as statement parameters: the lower bound's values, then the upper's.
    fn params(&self) -> Vec<&str> {
        self.lo.iter().chain(self.hi.iter()).flatten().map(String::as_str).collect()
    }
}

impl fmt::Display for CheckRange {
    /// `(10, 20]`, `(start, 20]`, `(20, end)`; composite bounds in parentheses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lo = self.lo.as_ref().map(|b| show_key(b)).unwrap_or_else(|| "start".into());
        match &self.hi {
            Some(hi) => write!(f, "key range ({lo}, {}]", show_key(hi)),
            None => write!(f, "key range ({lo}, end)"),
        }
    }
}

/// A key as a DBA would write it: `42` or `(7, 42)`.
fn show_key(key: &[String]) -> String {
    if key.len() == 1 {
        key[0].clone()
    } else {
        format!("({})", key.join(", "))
    }
}

/// Count and hash of one range on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sums {
    orig: [i64; 2],
    ghost: [i64; 2],
}

impl Sums {
    fn equal(&self) -> bool {
        self.orig == self.ghost
    }

    fn orig_rows(&self) -> u64 {
        u64::try_from(self.orig[0]).unwrap_or(0)
    }
}

/// Keys that differ in a range: the first ones (at most [`RECHECK_KEYS`]) and how many in all.
#[derive(Clone, Debug, Default)]
struct DifferingKeys {
    sample: Vec<Vec<String>>,
    total: i64,
}

impl DifferingKeys {
    /// Whether `sample` holds every differing key, so re-checking them re-checks the range.
    fn complete(&self) -> bool {
        self.total <= self.sample.len() as i64
    }
}

impl fmt::Display for DifferingKeys {
    /// Names at most [`SAMPLE_KEYS`] of them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.sample.iter().take(SAMPLE_KEYS).map(|k| show_key(k)).collect();
        write!(f, "{} key(s) differ: {}", self.total, shown.join(", "))?;
        if self.total > shown.len() as i64 {
            f.write_str(", ...")?;
        }
        Ok(())
    }
}

/// How many differing keys a message or log line names.
const SAMPLE_KEYS: usize = 10;

/// How many differing keys a re-check follows one by one; past that the whole range is
/// compared again.
const RECHECK_KEYS: u32 = 10_000;

async fn compare(client: &impl GenericClient, sql: &ChecksumSql, range: &CheckRange) -> Result<Sums> {
    let values = range.params();
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    let row = client
        .query_one(&sql.compare(range.lo.is_some(), range.hi.is_some()), &params)
        .await
        .with_context(|| format!("comparing {range}"))?;
    let get = |i: usize| row.try_get::<_, i64>(i);
    Ok(Sums { orig: [get(0)?, get(1)?], ghost: [get(2)?, get(3)?] })
}

/// The keys of `range` whose rows differ, in one snapshot; with `among`, only those of that
/// earlier answer (when it was complete) are looked at again.
async fn differing_keys(
    client: &impl GenericClient,
    sql: &ChecksumSql,
    range: &CheckRange,
    among: Option<&DifferingKeys>,
) -> Result<DifferingKeys> {
    let among = among.filter(|k| k.complete());
    let n = sql.bounds.len();
    let bounds: Vec<&str> = range.params();
    // One text[] per key column, the keys' values column by column.
    let sets: Vec<Vec<&str>> = match among {
        Some(keys) => (0..n).map(|i| keys.sample.iter().map(|k| k[i].as_str()).collect()).collect(),
        None => Vec::new(),
    };
    let mut params: Vec<&(dyn ToSql + Sync)> = bounds.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
    params.extend(sets.iter().map(|v| v as &(dyn ToSql + Sync)));
    let rows = client
        .query(&sql.differing_keys(range.lo.is_some(), range.hi.is_some(), among.is_some(), RECHECK_KEYS), &params)
        .await
        .with_context(|| format!("finding the differing keys of {range}"))?;
    let mut keys = DifferingKeys::default();
    for row in rows {
        keys.total = row.try_get(n)?;
        keys.sample.push((0..n).map(|i| row.try_get::<_, String>(i)).collect::<Result<_, _>>()?);
    }
    Ok(keys)
}

fn persistent_difference(range: &CheckRange, keys: &DifferingKeys) -> Error {
    Error::new(
        ErrorKind::Aborted,
        format!(
            "checksum: the ghost still differs from the original in {range} right after re-copying it ({keys}); \
             something rewrites the ghost's rows (a trigger on it, or a non-deterministic USING expression). \
             The cut-over is refused; compare those keys in both tables"
        ),
    )
}

/// What one pass over the table needs: the session settings and the ranges, with the
/// statements (read from the catalog) that compare them, handed out to the pass's workers
/// one by one.
async fn start_pass(job: &ChecksumJob) -> Result<(ConnInfo, Ranges)> {
    let conn = job.conn.with_application_name("pg-ghost checksum");
    let client = conn.connect().await?;
    let key = KeyCols::source(&job.mapping);
    let mut walks = Vec::new();
    if job.parts.is_empty() {
        let sql = catalog::load(&client, &job.orig, &job.ghost, &job.mapping).await?;
        let cursor = Cursor::start(&client, &job.orig, &key, None).await?;
        walks.push(Walk { sql: Arc::new(sql), cursor, tail_done: false });
    }
    for part in &job.parts {
        let sql = catalog::load(&client, &part.orig, &part.ghost, &job.mapping).await?;
        let cursor = Cursor::start_part(&client, part.clone(), &key, None).await?;
        walks.push(Walk { sql: Arc::new(sql), cursor, tail_done: false });
    }
    Ok((conn, Ranges { client, walks, turn: 0 }))
}

/// A range to compare, with the statements that compare it.
type Handed = (Arc<ChecksumSql>, CheckRange);

/// The ranges as the workers take them, one at a time.
struct Feed {
    ranges: Mutex<mpsc::Receiver<Handed>>,
}

impl Feed {
    /// The next range; None once every range is taken.
    async fn next(&self) -> Option<Handed> {
        self.ranges.lock().await.recv().await
    }
}

/// Finds the ranges ahead of `workers` workers: each range's end is searched (an index walk
/// over its rows, about a seventh of what comparing them costs) on the walks' session while
/// the workers compare, instead of by a worker between two ranges. Returns the future that
/// finds them, to be run alongside the workers (it ends once every range is found, or once
/// the workers are gone), and the feed they take them from.
fn feed<'a>(mut ranges: Ranges, conn: &'a ConnInfo, size: &'a RangeSize, workers: usize) -> (impl Future<Output = Result<()>> + 'a, Feed) {
    let (tx, rx) = mpsc::channel(workers.max(1));
    let finding = async move {
        while let Some(next) = ranges.next(conn, size).await? {
            if tx.send(next).await.is_err() {
                break;
            }
        }
        Ok(())
    };
    (finding, Feed { ranges: Mutex::new(rx) })
}

/// The ranges of one table or partition: the cursor's, up to its maximum when the checksum
/// starts, then the open range above it.
struct Walk {
    sql: Arc<ChecksumSql>,
    cursor: Cursor,
    tail_done: bool,
}

/// Every walk's ranges, taken from the walks in turn so that workers spread over partitions.
struct Ranges {
    client: tokio_postgres::Client,
    walks: Vec<Walk>,
    turn: usize,
}

impl Ranges {
    /// The next range and the statements that compare it; asked again on a new session
    /// when the walks' session is lost.
    async fn next(&mut self, conn: &ConnInfo, size: &RangeSize) -> Result<Option<(Arc<ChecksumSql>, CheckRange)>> {
        for _ in 0..self.walks.len() {
            let i = self.turn % self.walks.len();
            self.turn += 1;
            let rows = size.rows_for(&self.walks[i].sql);
            if let Some(range) = self.next_of(i, conn, rows).await? {
                return Ok(Some((self.walks[i].sql.clone(), range)));
            }
        }
        Ok(None)
    }

    async fn next_of(&mut self, i: usize, conn: &ConnInfo, size: u64) -> Result<Option<CheckRange>> {
        let mut outage = Outage::new();
        let next = loop {
            match self.walks[i].cursor.next(&self.client, size).await {
                Err(e) if e.kind().is_lost_connection() => {
                    self.client = reconnect::connect_again(conn, &mut outage, e, "the next checksum range (asked again)").await?;
                }
                other => break other?,
            }
        };
        let walk = &mut self.walks[i];
        if let Some(r) = next {
            return Ok(Some(CheckRange { lo: r.lo, hi: Some(r.hi) }));
        }
        if walk.tail_done {
            return Ok(None);
        }
        walk.tail_done = true;
        Ok(Some(CheckRange { lo: walk.cursor.max().cloned(), hi: None }))
    }
}

/// The rows asked of the next range, shared by a pass's workers.
struct RangeSize {
    rows: AtomicU64,
    target: Option<Duration>,
}

impl RangeSize {
    fn new(job: &ChecksumJob) -> RangeSize {
        RangeSize { rows: AtomicU64::new(job.range_rows.max(1)), target: job.range_time }
    }

    fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// The rows to ask of the next range compared by `sql`.
    fn rows_for(&self, sql: &ChecksumSql) -> u64 {
        match self.target {
            Some(_) if sql.scans_ghost => ChecksumJob::SCANNING_RANGE_ROWS,
            _ => self.rows(),
        }
    }

    /// Sizes the next ranges after a range of `rows` rows was compared by `sql` in `took`.
    /// Workers reporting at once may overwrite each other's size: either is a fair one.
    fn took(&self, sql: &ChecksumSql, rows: u64, took: Duration) {
        match self.target {
            Some(target) if !sql.scans_ghost => {
                self.rows.store(next_range_size(self.rows(), rows, took, target), Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The rows of the next range after one of `rows` rows took `took`, ranges being asked for
/// `size` rows: it moves towards `target` as the copy's chunks do. A range holding less than
/// half of `size` (the last one below the maximum, the open one above it, one whose rows were
/// deleted since) says little about a full one and leaves the size as it is.
fn next_range_size(size: u64, rows: u64, took: Duration, target: Duration) -> u64 {
    if rows < size / 2 {
        return size;
    }
    next_chunk_size(rows, took, target)
}

impl ChecksumReport {
    fn add(&mut self, other: &ChecksumReport) {
        self.ranges += other.ranges;
        self.rows += other.rows;
        self.differing_ranges += other.differing_ranges;
        self.repaired_ranges += other.repaired_ranges;
    }

    fn count(&mut self, checked: &Checked) {
        self.ranges += 1;
        self.rows += checked.rows;
        self.differing_ranges += u64::from(checked.differed);
        self.repaired_ranges += u64::from(checked.repaired);
    }
}

/// What happened to one range.
struct Checked {
    rows: u64,
    differed: bool,
    repaired: bool,
    /// How long its first comparison took.
    took: Duration,
}

/// Compares the whole ghost with the original, repairing ranges that keep differing.
///
/// `catch_up` must resolve once the apply has caught up with every change committed before
/// it was called (the runner's catch-up); it is called before each re-check of a differing
/// range. Returns the report of a clean pass, or the first error: a range still differing
/// right after its repair is [`ErrorKind::Aborted`].
pub async fn verify<'a>(
    job: &ChecksumJob,
    inflight: &InFlight,
    catch_up: impl Fn() -> BoxFuture<'a, Result<()>>,
) -> Result<ChecksumReport> {
    let started = Instant::now();
    let (conn, ranges) = start_pass(job).await?;
    let size = RangeSize::new(job);
    let (finding, feed) = feed(ranges, &conn, &size, job.workers);
    let ctx = Worker { job, feed: &feed, size: &size, inflight, catch_up: &catch_up };
    // The workers run in this task: the first error drops the others, whose connections
    // close and roll back whatever they were doing, and whose ranges are released.
    let workers = try_join_all((0..job.workers.max(1)).map(|_| ctx.run(&conn)));
    let ((), parts) = try_join(finding, workers).await?;
    let mut report = ChecksumReport::default();
    for part in &parts {
        report.add(part);
    }
    report.elapsed = started.elapsed();
    tracing::info!(
        table = %job.orig,
        ranges = report.ranges,
        rows = report.rows,
        differing_ranges = report.differing_ranges,
        repaired_ranges = report.repaired_ranges,
        secs = report.elapsed.as_secs_f64(),
        "checksum complete: the ghost matches the original"
    );
    Ok(report)
}

/// What every worker shares: ranges are handed out one at a time.
struct Worker<'j, C> {
    job: &'j ChecksumJob,
    feed: &'j Feed,
    size: &'j RangeSize,
    inflight: &'j InFlight,
    catch_up: &'j C,
}

impl<'j, 'a, C: Fn() -> BoxFuture<'a, Result<()>>> Worker<'j, C> {
    async fn run(&self, conn: &ConnInfo) -> Result<ChecksumReport> {
        let mut client = conn.connect().await?;
        let mut part = ChecksumReport::default();
        loop {
            let Some((sql, range)) = self.feed.next().await else { return Ok(part) };
            // A range is only read, or repaired in one transaction: a lost session's work is
            // simply done again on a new one.
            let mut outage = Outage::new();
            let checked = loop {
                match check_range(&mut client, &sql, self.inflight, self.catch_up, self.job.rechecks, &range).await {
                    Err(e) if e.kind().is_lost_connection() => {
                        client = reconnect::connect_again(conn, &mut outage, e, "a checksum range (checked again)").await?;
                    }
                    other => break other?,
                }
            };
            self.size.took(&sql, checked.rows, checked.took);
            part.count(&checked);
            self.job.progress.count(&checked);
        }
    }
}

async fn check_range<'a>(
    client: &mut tokio_postgres::Client,
    sql: &ChecksumSql,
    inflight: &InFlight,
    catch_up: &impl Fn() -> BoxFuture<'a, Result<()>>,
    rechecks: u32,
    range: &CheckRange,
) -> Result<Checked> {
    let started = Instant::now();
    let sums = compare(&*client, sql, range).await?;
    let took = started.elapsed();
    if sums.equal() {
        return Ok(Checked { rows: sums.orig_rows(), differed: false, repaired: false, took });
    }
    // Both sides were read in one snapshot: a row that differs there is one whose change the
    // apply had not written yet, or a real difference. Once the apply has written everything
    // committed up to now, only those rows are read again, in a new snapshot; comparing the
    // whole range again would find the changes of that moment missing, and under steady
    // writes never come out equal.
    let mut keys = differing_keys(&*client, sql, range, None).await?;
    let mut attempt = 0;
    while keys.total > 0 && attempt < rechecks {
        attempt += 1;
        tracing::debug!(range = %range, attempt, keys = %keys, "checksum: rows differ; re-checking them after the apply catches up");
        catch_up().await.context("catching up before a checksum re-check")?;
        keys = differing_keys(&*client, sql, range, Some(&keys)).await?;
    }
    if keys.total == 0 {
        return Ok(Checked { rows: sums.orig_rows(), differed: false, repaired: false, took });
    }
    tracing::warn!(range = %range, keys = %keys, rechecks, "checksum: range still differs after catching up; repairing it");
    let repaired = repair::repair(client, sql, inflight, range).await?;
    // The repair verified the range in its own snapshot; count the rows as they are now.
    let rows = compare(&*client, sql, range).await?.orig_rows();
    Ok(Checked { rows, differed: true, repaired, took })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[&str]) -> Bound {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ranges_read_as_a_dba_writes_them() {
        let r = CheckRange { lo: None, hi: Some(b(&["20"])) };
        assert_eq!(r.to_string(), "key range (start, 20]");
        let r = CheckRange { lo: Some(b(&["1", "x"])), hi: None };
        assert_eq!(r.to_string(), "key range ((1, x), end)");
        assert_eq!(r.params(), ["1", "x"]);
        let r = CheckRange { lo: Some(b(&["1"])), hi: Some(b(&["9"])) };
        assert_eq!(r.params(), ["1", "9"]);
    }

    #[test]
    fn differing_keys_name_keys_only() {
        let keys = DifferingKeys { sample: vec![b(&["1", "2"]), b(&["3", "4"])], total: 5 };
        assert_eq!(keys.to_string(), "5 key(s) differ: (1, 2), (3, 4), ...");
        let e = persistent_difference(&CheckRange { lo: None, hi: Some(b(&["9"])) }, &keys);
        assert_eq!(e.kind(), ErrorKind::Aborted);
        assert!(e.to_string().contains("in key range (start, 9] right after re-copying it (5 key(s) differ: (1, 2), (3, 4), ...)"), "{e}");
    }

    #[test]
    fn ranges_are_sized_by_time_from_full_ranges_only() {
        let target = Duration::from_millis(100);
        let ms = Duration::from_millis;
        assert_eq!(next_range_size(50_000, 50_000, ms(50), target), 100_000);
        assert_eq!(next_range_size(50_000, 50_000, ms(400), target), 25_000);
        // Sized from the rows the range held.
        assert_eq!(next_range_size(50_000, 40_000, ms(40), target), 80_000);
        // The last range below the maximum, or the open one: the size stays.
        assert_eq!(next_range_size(50_000, 20_000, ms(1), target), 50_000);
        assert_eq!(next_range_size(50_000, 0, ms(400), target), 50_000);
    }

    #[test]
    fn sums_compare_counts_and_hashes() {
        let s = Sums { orig: [3, 12], ghost: [3, 12] };
        assert!(s.equal());
        assert_eq!(s.orig_rows(), 3);
        assert!(!Sums { orig: [3, 12], ghost: [3, 15] }.equal());
        assert!(!Sums { orig: [3, 12], ghost: [2, 12] }.equal());
    }
}
