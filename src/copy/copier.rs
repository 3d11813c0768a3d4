use super::chunker::{Bound, Cursor, Part, Range};
use super::watermark::Watermark;
use super::sizing::next_chunk_size;
use crate::apply::inflight::{ChunkTicket, Registered};
use crate::apply::InFlight;
use crate::checkpoint;
use crate::conn::ConnInfo;
use crate::error::{Error, ErrorKind, Result};
use crate::ghost::Mapping;
use crate::keysql::{insert_select, KeyCols};
use crate::reconnect::{self, Outage};
use crate::replication::origins;
use crate::sql::{ident_list, QualifiedName};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// What to copy and how.
#[derive(Clone)]
pub struct CopyJob {
    pub conn: ConnInfo,
    pub orig: QualifiedName,
    pub ghost: QualifiedName,
    pub mapping: Mapping,
    pub workers: usize,
    pub chunk_time: Duration,
    /// Where to record the range in flight and the copy's watermark; None: nowhere.
    pub changelog: Option<QualifiedName>,
    /// Start after this key (a resumed copy): every row at or below it was copied.
    pub resume_after: Option<Bound>,
    /// The ghost was empty when the stream started and flushes wait for the copy's plan
    /// ([`InFlight::expect_copy`]): chunks insert without `ON CONFLICT`, and the flusher
    /// leaves keys the copy has not reached to it. A resumed copy finds rows in the ghost and
    /// skips them instead.
    pub fresh: bool,
    /// The original's leaf partitions, each copied on its own from the original's partition
    /// into the ghost's; empty: the table is copied by ranges of its key.
    pub parts: Vec<Arc<Part>>,
    /// A resumed copy of partitions: their watermarks, by [`checkpoint::part_watermark_key`]
    /// (a partition without one starts after `resume_after`).
    pub resume_parts: BTreeMap<String, Bound>,
    /// The slot whose copy-worker origins mark the workers' sessions, so that the stream
    /// leaves their writes out ([`crate::replication::origins`]); None: not marked.
    pub origins: Option<String>,
}

/// Shared counters, read by the status line and written by the workers.
#[derive(Debug, Default)]
pub struct CopyProgress {
    pub rows: AtomicU64,
    pub chunks: AtomicU64,
    /// The size of the next chunk; adapts to `--chunk-time` until a DBA sets it.
    pub chunk_size: AtomicU64,
    /// Set when a DBA chose the chunk size (`chunk-size=N` on the socket): from then on the
    /// size stays where they put it.
    chunk_size_pinned: AtomicBool,
    /// `--nice-ratio`, as the bits of an f64: the pause after each chunk, as a fraction of
    /// the time it took.
    nice_ratio: AtomicU64,
    pub done: AtomicBool,
}

impl CopyProgress {
    pub fn new(initial_chunk: u64) -> Arc<CopyProgress> {
        let p = CopyProgress::default();
        p.chunk_size.store(initial_chunk.max(1), Ordering::Relaxed);
        Arc::new(p)
    }

    /// A chunk size chosen by a DBA: used as is for every later chunk.
    pub fn pin_chunk_size(&self, size: u64) {
        self.chunk_size_pinned.store(true, Ordering::Relaxed);
        self.chunk_size.store(size.max(1), Ordering::Relaxed);
    }

    pub fn set_nice_ratio(&self, ratio: f64) {
        self.nice_ratio.store(ratio.max(0.0).to_bits(), Ordering::Relaxed);
    }

    pub fn nice_ratio(&self) -> f64 {
        f64::from_bits(self.nice_ratio.load(Ordering::Relaxed))
    }
}

/// Gate consulted before each chunk: `Ok` to go on, an error to stop the copy. It may wait
/// (throttling).
pub type Gate = watch::Receiver<GateState>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GateState {
    #[default]
    Open,
    /// Wait; the reason is for the status line.
    Throttled(String),
    /// Stop copying.
    Abort(String),
}

struct Statements {
    first: String,
    after: String,
    /// Records the copy's watermark in the changelog, in the chunk's transaction.
    checkpoint: Option<String>,
}

fn statements(job: &CopyJob, orig: &QualifiedName, ghost: &QualifiedName) -> Statements {
    let source = KeyCols::source(&job.mapping);
    let n = source.len();
    let head = insert_select(orig, ghost, &job.mapping);
    // Speculative insertion writes a second WAL record per row: only pay it when the ghost
    // may already hold some of the chunk's keys.
    let conflict = match job.fresh {
        true => String::new(),
        false => format!("ON CONFLICT ({}) DO NOTHING", ident_list(job.mapping.conflict_target())),
    };
    let upto = format!("{} <= {}", source.tuple(), source.params(1));
    Statements {
        first: format!("{head} WHERE {upto} {conflict}"),
        after: format!("{head} WHERE {} > {} AND {upto} {conflict}", source.tuple(), source.params(1 + n)),
        checkpoint: job.changelog.as_ref().map(checkpoint::upsert_sql),
    }
}

/// One walk of the copy: the whole table, or one partition.
struct Unit {
    cursor: Cursor,
    sql: Arc<Statements>,
    watermark: Arc<Watermark>,
    /// The changelog key its watermark is recorded under.
    mark_key: Arc<str>,
    /// Workers whose last chunk came from it.
    workers: usize,
    /// Every range of it handed out.
    exhausted: bool,
}

/// A chunk handed to a worker, with what its commit records.
struct Taken {
    seq: u64,
    ticket: ChunkTicket,
    range: Range,
    sql: Arc<Statements>,
    watermark: Arc<Watermark>,
    mark_key: Arc<str>,
}

/// The walks, and the one session that finds every walk's chunk boundaries.
struct Units {
    client: Client,
    list: Vec<Unit>,
    /// The walk each worker took its last chunk from.
    assigned: Vec<Option<usize>>,
}

impl Units {
    async fn start(job: &CopyJob, client: Client) -> Result<Units> {
        let key = KeyCols::source(&job.mapping);
        let mut list = Vec::new();
        if job.parts.is_empty() {
            let cursor = Cursor::start(&client, &job.orig, &key, job.resume_after.clone()).await?;
            list.push(Unit::new(job, cursor, &job.orig, &job.ghost, checkpoint::COPY_WATERMARK.into()));
        }
        // Every partition's maximum is read at once (pipelined): one round trip for the tree.
        let starts = job.parts.iter().map(|part| {
            let mark_key = checkpoint::part_watermark_key(&part.orig);
            let after = job.resume_parts.get(&mark_key).or(job.resume_after.as_ref()).cloned();
            let (client, key) = (&client, &key);
            async move { Ok::<_, Error>((Cursor::start_part(client, part.clone(), key, after).await?, part, mark_key)) }
        });
        for (cursor, part, mark_key) in futures_util::future::try_join_all(starts).await? {
            list.push(Unit::new(job, cursor, &part.orig, &part.ghost, mark_key));
        }
        if let Some(changelog) = &job.changelog {
            for unit in &mut list {
                unit.cursor.record_ranges_in(changelog);
            }
        }
        Ok(Units { client, list, assigned: vec![None; job.workers.max(1)] })
    }

    /// What no chunk has covered yet: from where each walk starts to its maximum.
    fn uncopied(&self) -> Vec<Range> {
        self.list
            .iter()
            .filter_map(|u| {
                let hi = u.cursor.max()?.clone();
                Some(Range { lo: u.cursor.position().cloned(), hi, part: u.cursor.part().cloned() })
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.list.iter().all(|u| u.cursor.max().is_none())
    }

    /// The walk `worker` takes its next chunk from: the one it is on while it has ranges,
    /// else the one with the fewest workers, so that workers spread over partitions.
    fn walk_for(&mut self, worker: usize) -> Option<usize> {
        if let Some(i) = self.assigned[worker].filter(|&i| !self.list[i].exhausted) {
            return Some(i);
        }
        let best = self.list.iter().enumerate().filter(|(_, u)| !u.exhausted).min_by_key(|(i, u)| (u.workers, *i)).map(|(i, _)| i)?;
        if let Some(old) = self.assigned[worker] {
            self.list[old].workers -= 1;
        }
        self.list[best].workers += 1;
        self.assigned[worker] = Some(best);
        Some(best)
    }
}

impl Unit {
    fn new(job: &CopyJob, cursor: Cursor, orig: &QualifiedName, ghost: &QualifiedName, mark_key: String) -> Unit {
        let watermark = Arc::new(Watermark::new(cursor.position().cloned()));
        let exhausted = cursor.max().is_none();
        Unit { cursor, sql: Arc::new(statements(job, orig, ghost)), watermark, mark_key: mark_key.into(), workers: 0, exhausted }
    }
}

/// Copies every row up to the key's maximum at the start (each partition's, when copied by
/// partition). Returns when all chunks are committed, or with the first error (the other
/// workers stop at their next chunk).
pub async fn copy_table(
    job: CopyJob,
    inflight: Arc<InFlight>,
    progress: Arc<CopyProgress>,
    gate: Gate,
) -> Result<()> {
    let chunker_client = job.conn.with_application_name("pg-ghost copy").connect().await?;
    let units = Units::start(&job, chunker_client).await?;
    if job.fresh {
        inflight.copy_planned(units.uncopied());
    }
    if units.is_empty() {
        progress.done.store(true, Ordering::Relaxed);
        return Ok(());
    }
    if !job.parts.is_empty() {
        tracing::info!(partitions = job.parts.len(), workers = job.workers.max(1), "copying partition by partition");
    }
    let units = Arc::new(Mutex::new(units));
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Workers(Vec::new());
    for worker in 0..job.workers.max(1) {
        let conn = job.conn.with_application_name("pg-ghost copy");
        let origin = job.origins.as_deref().map(|slot| origins::for_copy_worker(slot, worker));
        let client = conn.connect().await?;
        if let Some(name) = &origin {
            origins::create(&client, name).await?;
            origins::set_up(&client, name).await?;
        }
        let ctx = WorkerCtx {
            worker,
            conn,
            origin,
            client,
            units: units.clone(),
            inflight: inflight.clone(),
            progress: progress.clone(),
            gate: gate.clone(),
            failed: failed.clone(),
            chunk_time: job.chunk_time,
            committing: std::sync::Mutex::new(None),
        };
        tasks.0.push(tokio::spawn(ctx.run()));
    }
    let mut first_error = None;
    for t in tasks.0.iter_mut() {
        let result = t.await.unwrap_or_else(|e| Err(Error::internal(format!("copy worker failed: {e}"))));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            progress.done.store(true, Ordering::Relaxed);
            Ok(())
        }
    }
}

/// The copy's worker tasks, stopped when the copy is dropped (the run stopped it): a chunk in
/// flight rolls back with its session, as after a crash, and no worker goes on copying, or
/// holding its replication origin, behind the run's back.
struct Workers(Vec<tokio::task::JoinHandle<Result<()>>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A chunk that hit a deadlock or a serialization failure is simply copied again.
const RETRY: crate::error::Backoff =
    crate::error::Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(2), attempts: 5 };

struct WorkerCtx {
    worker: usize,
    /// Opens the worker's session again when it is lost, and the chunker's.
    conn: ConnInfo,
    /// The replication origin its session writes under, set up again on a new session.
    origin: Option<String>,
    client: Client,
    units: Arc<Mutex<Units>>,
    inflight: Arc<InFlight>,
    progress: Arc<CopyProgress>,
    gate: Gate,
    failed: Arc<AtomicBool>,
    chunk_time: Duration,
    /// The chunk whose COMMIT was sent and not yet answered: its transaction and rows.
    committing: std::sync::Mutex<Option<(reconnect::Committing, u64)>>,
}

impl WorkerCtx {
    async fn run(mut self) -> Result<()> {
        let result = self.copy_chunks().await;
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn copy_chunks(&mut self) -> Result<()> {
        loop {
            self.pass_gate().await?;
            if self.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let size = self.progress.chunk_size.load(Ordering::Relaxed);
            let Some(taken) = self.next_range(size).await? else { return Ok(()) };
            let started = Instant::now();
            let inflight = self.inflight.clone();
            let registered = Registered::new(&inflight, taken.ticket);
            registered.wait_for_earlier_flushes().await;
            let chunk = Chunk { seq: taken.seq, range: &taken.range, sql: &taken.sql, watermark: &taken.watermark, mark_key: &taken.mark_key };
            let rows = self.copy_range_again_if_lost(&chunk).await;
            // Only once the chunk's rows are visible (or it gave up) may the flusher touch
            // keys in its range.
            drop(registered);
            let rows = rows?;
            taken.watermark.committed(taken.seq, taken.range.hi.clone());
            let took = started.elapsed();
            self.progress.rows.fetch_add(rows, Ordering::Relaxed);
            self.progress.chunks.fetch_add(1, Ordering::Relaxed);
            // Only adapt when nobody set the size (the control socket wins).
            if !self.progress.chunk_size_pinned.load(Ordering::Relaxed) {
                let _ = self.progress.chunk_size.compare_exchange(
                    size,
                    next_chunk_size(size, took, self.chunk_time),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            tracing::trace!(worker = self.worker, rows, ms = took.as_millis() as u64, "chunk copied");
            let pause = crate::throttle::nice_pause(took, self.progress.nice_ratio());
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// The next range of the walk this worker is on (or moves to), numbered and registered
    /// as in flight under the walks' lock (so both follow each walk's key order); when the
    /// walks' session is lost, asked again on a new one.
    async fn next_range(&self, size: u64) -> Result<Option<Taken>> {
        let mut units = self.units.lock().await;
        let mut outage = Outage::new();
        loop {
            let Some(i) = units.walk_for(self.worker) else { return Ok(None) };
            let Units { client, list, .. } = &mut *units;
            let unit = &mut list[i];
            match unit.cursor.next(client, size).await {
                Err(e) if e.kind().is_lost_connection() => {
                    units.client = reconnect::connect_again(&self.conn, &mut outage, e, "the next copy range (asked again)").await?;
                }
                Ok(Some(range)) => {
                    let seq = unit.watermark.issue();
                    let ticket = self.inflight.register(&range);
                    return Ok(Some(Taken {
                        seq,
                        ticket,
                        range,
                        sql: unit.sql.clone(),
                        watermark: unit.watermark.clone(),
                        mark_key: unit.mark_key.clone(),
                    }));
                }
                Ok(None) => {
                    unit.exhausted = true;
                    if let Some(part) = unit.cursor.part() {
                        tracing::debug!(partition = %part.orig, "every range of the partition handed out");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies the chunk; when the worker's session is lost, copies it again on a new one,
    /// unless its COMMIT had been sent and went through (asked by its xid: copied again, its
    /// rows would be in a ghost with no key index twice). A lost chunk that did not commit
    /// rolled back, and its range stays registered in flight until it is done.
    async fn copy_range_again_if_lost(&mut self, chunk: &Chunk<'_>) -> Result<u64> {
        let mut outage = Outage::new();
        loop {
            match RETRY.retry("copying a chunk", || self.copy_range(chunk)).await {
                Err(e) if e.kind().is_lost_connection() => {
                    let committing = self.committing.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(rows) = self.reconnect_and_ask(&mut outage, e, committing).await? {
                        return Ok(rows);
                    }
                }
                other => return other,
            }
        }
    }

    /// A new session for the worker (its origin set up again) after `lost`; and, when the
    /// lost chunk's COMMIT had been sent, whether it went through: `Some(rows)` when it did.
    /// A session lost again meanwhile is opened again within the same outage, the question
    /// kept.
    async fn reconnect_and_ask(&mut self, outage: &mut Outage, lost: Error, committing: Option<(reconnect::Committing, u64)>) -> Result<Option<u64>> {
        let what = format!("copy worker {}'s chunk (copied again unless its COMMIT went through)", self.worker);
        let mut error = lost;
        loop {
            self.client = reconnect::connect_again(&self.conn, outage, error, &what).await?;
            let asked = async {
                if let Some(name) = &self.origin {
                    origins::set_up(&self.client, name).await?;
                }
                match &committing {
                    Some((t, rows)) if reconnect::committed(&self.client, t).await? => {
                        tracing::info!(worker = self.worker, xid = t.xid, rows, "the lost chunk's COMMIT went through: it is not copied again");
                        Ok::<_, Error>(Some(*rows))
                    }
                    _ => Ok(None),
                }
            };
            match asked.await {
                Err(e) if e.kind().is_lost_connection() => error = e,
                other => return other,
            }
        }
    }

    async fn pass_gate(&mut self) -> Result<()> {
        loop {
            let state = self.gate.borrow_and_update().clone();
            match state {
                GateState::Open => return Ok(()),
                GateState::Abort(why) => return Err(Error::new(ErrorKind::Aborted, why)),
                GateState::Throttled(_) => {
                    if self.gate.changed().await.is_err() {
                        return Err(Error::new(ErrorKind::Aborted, "the throttler stopped"));
                    }
                }
            }
        }
    }

    async fn copy_range(&self, chunk: &Chunk<'_>) -> Result<u64> {
        let range = chunk.range;
        let mut values: Vec<&str> = range.hi.iter().map(String::as_str).collect();
        if let Some(lo) = &range.lo {
            values.extend(lo.iter().map(String::as_str));
        }
        // Every key parameter is text, cast in the statement (`$n::text::type`).
        let params: Vec<(&(dyn ToSql + Sync), Type)> = values.iter().map(|v| (v as &(dyn ToSql + Sync), Type::TEXT)).collect();
        let sql = if range.lo.is_some() { &chunk.sql.after } else { &chunk.sql.first };
        let result = self.copy_in_transaction(sql, &params, chunk).await;
        result.map_err(|e| {
            let lo = range.lo.as_ref().map(|b| b.join(", ")).unwrap_or_else(|| "start".into());
            let of = range.part.as_ref().map(|p| format!(" of partition {}", p.orig)).unwrap_or_default();
            e.context(format!("copying rows{of} with key in ({lo}, {}]", range.hi.join(", ")))
        })
    }

    /// The chunk and the watermark its commit makes true, in one transaction.
    ///
    /// BEGIN, the copy, the watermark and the read of the transaction's id go out together
    /// (pipelined, without a prepare: `*_typed`), the COMMIT after their answers: two round
    /// trips a chunk where there were eight, which across a network were a chunk's time on a
    /// partition of a few hundred rows. A statement that fails leaves the rest to fail on the
    /// aborted transaction; its own error is the one reported: the answers come in order and
    /// the join looks at the statements in order (`biased`), so that a deadlock is seen as
    /// one (and the chunk copied again), not as "current transaction is aborted".
    async fn copy_in_transaction(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)], chunk: &Chunk<'_>) -> Result<u64> {
        *self.committing.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // Read before the statements go out: the prefix of committed chunks only grows, so the
        // value is never past what this commit makes true.
        let mark = chunk.watermark.value_at_commit_of(chunk.seq, &chunk.range.hi).map(|m| checkpoint::encode_bound(&m));
        let work = async {
            let begin = async { self.client.batch_execute("BEGIN").await.map_err(Error::from) };
            let copy = async { self.client.execute_typed(sql, params).await.map_err(Error::from) };
            let record = async {
                if let (Some(record), Some(value)) = (&chunk.sql.checkpoint, &mark) {
                    checkpoint::record(&self.client, record, &chunk.mark_key, value).await?;
                }
                Ok::<_, Error>(())
            };
            let ((), rows, (), committing) = tokio::try_join!(biased; begin, copy, record, reconnect::committing(&self.client))?;
            *self.committing.lock().unwrap_or_else(|p| p.into_inner()) = committing.map(|t| (t, rows));
            self.client.batch_execute("COMMIT").await?;
            if crate::fault::reply_lost("copy-commit") {
                return Err(Error::new(ErrorKind::Connection, "fault injection: the answer to the chunk's COMMIT was lost"));
            }
            *self.committing.lock().unwrap_or_else(|p| p.into_inner()) = None;
            Ok::<_, Error>(rows)
        };
        let result = work.await;
        if result.is_err() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        result
    }
}

/// A chunk being copied.
struct Chunk<'a> {
    seq: u64,
    range: &'a Range,
    sql: &'a Statements,
    watermark: &'a Watermark,
    mark_key: &'a str,
}
