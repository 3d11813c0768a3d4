//! The apply loop: collects changed keys from the stream and flushes them to the ghost.
//!
//! Priorities, highest first: commands from the runner (pause, drain for cut-over, stop),
//! a finished flush, then new stream items. A flush starts as soon as keys are pending and
//! none is running, so keys accumulate (and deduplicate) while one runs.
//!
//! Invariants: the flushed LSN reported to the slot is the end LSN of a transaction all of
//! whose keys were flushed in a committed ghost transaction, and it never goes backwards.
//! While paused no flush runs, so a cut-over can lock the original without queueing the
//! flusher's reads behind it. A flush whose session is lost is run again, with the same
//! keys, on a new session (`crate::reconnect::Session`): its transaction rolled back, and
//! nothing it covered was acknowledged, so no key is lost; the run stops only when no
//! session can be had within the reconnect timeout.

use super::flush::{FlushSql, Key};
use super::inflight::InFlight;
use crate::error::{Context, Error, Result};
use crate::lsn::Lsn;
use crate::reconnect::Session;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// What the stream consumer tells the writer, in stream order.
#[derive(Debug)]
pub enum StreamItem {
    /// A transaction committed: the keys it changed in the original, its end LSN, and its
    /// xid when it changed the original (a flush of its keys first waits until it is
    /// visible). Every transaction ending at or before `end_lsn` has been sent.
    Committed { keys: Vec<Key>, end_lsn: Lsn, xid: Option<u32> },
    /// No transaction is open and the server is at this LSN: nothing more before it.
    Idle(Lsn),
    /// A control message (the cut-over sentinel) passed the stream.
    Sentinel(String),
    /// The table's Relation message came (again) on a stream that carries only some of its
    /// columns: the next flush first checks the definition in the catalog.
    RelationResent,
}

#[derive(Clone, Debug, Default)]
pub struct ApplyStats {
    /// Keys flushed so far (a key changed twice between flushes counts once); parked keys
    /// count once they are written.
    pub applied_keys: u64,
    /// Keys parked so far while the ghost had no key index (see `super::park`).
    pub parked_keys: u64,
    /// Parked keys written to the ghost so far (a resumed run's include the earlier run's).
    pub unparked_keys: u64,
    pub backlog_keys: usize,
    pub flushing: bool,
    /// Last LSN acknowledged to the slot.
    pub acked: Lsn,
    /// Last commit LSN seen on the stream.
    pub received: Lsn,
}

impl ApplyStats {
    /// Keys parked by this run and not written to the ghost yet.
    pub fn parked_waiting(&self) -> u64 {
        self.parked_keys.saturating_sub(self.unparked_keys)
    }
}

/// Reports the flushed LSN to the replication stream.
pub type Acker = Arc<dyn Fn(Lsn) + Send + Sync>;

enum Command {
    Pause(oneshot::Sender<()>),
    Resume,
    DrainUntil(String, oneshot::Sender<Vec<Key>>),
    Requeue(Vec<Key>),
    Unpark(oneshot::Sender<u64>),
    Stop(oneshot::Sender<()>),
}

/// How an error says that the apply loop went away, as seen from a handle on it (a command
/// that got no answer); why it went is the loop's own error (`runner::Background::failed`).
const LOOP_GONE: &str = "the apply loop stopped";

/// The error of a handle on the apply loop that found it gone `while_doing`.
pub fn loop_gone(while_doing: &str) -> Error {
    Error::internal(format!("{LOOP_GONE} {while_doing}"))
}

/// Whether `e` only says that the apply loop went away (see [`loop_gone`]).
pub fn is_loop_gone(e: &Error) -> bool {
    e.kind() == crate::error::ErrorKind::Internal && e.message().starts_with(LOOP_GONE)
}

#[derive(Clone)]
pub struct WriterHandle {
    commands: mpsc::Sender<Command>,
    pub stats: watch::Receiver<ApplyStats>,
}

impl WriterHandle {
    async fn send(&self, c: Command) -> Result<()> {
        self.commands.send(c).await.map_err(|_| loop_gone("before taking a command"))
    }

    /// Stops flushing; returns once no flush is running.
    pub async fn pause(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Pause(tx)).await?;
        rx.await.map_err(|_| loop_gone("while pausing"))
    }

    pub async fn resume(&self) -> Result<()> {
        self.send(Command::Resume).await
    }

    /// Registers `sentinel` with the apply loop; the returned receiver yields every key still
    /// pending once the sentinel has passed the stream. Register before emitting the
    /// sentinel: one that arrives before anyone waits for it is not recognised.
    pub async fn expect_sentinel(&self, sentinel: &str) -> Result<oneshot::Receiver<Vec<Key>>> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::DrainUntil(sentinel.to_string(), tx)).await?;
        Ok(rx)
    }

    /// Gives back keys taken by `drain_until` whose flush did not commit.
    pub async fn requeue(&self, keys: Vec<Key>) -> Result<()> {
        self.send(Command::Requeue(keys)).await
    }

    /// Writes every parked key to the ghost (see `super::park`), a batch at a time between
    /// the flushes of new changes; returns how many once none is left. Call it once the
    /// ghost's key index exists and parking has stopped.
    pub async fn unpark(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Unpark(tx)).await?;
        rx.await.map_err(|_| loop_gone("while writing parked keys"))
    }

    pub async fn stop(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stop(tx)).await?;
        let _ = rx.await;
        Ok(())
    }
}

/// Keys are flushed in statements of at most this many keys.
const MAX_KEYS_PER_STATEMENT: usize = 20_000;

/// What a flush task hands back.
struct Flushed {
    keys: usize,
    /// Keys inside copy chunks in flight, by chunk: flushed once the chunk ended.
    deferred: Vec<(u64, Vec<Key>)>,
    wrote: Wrote,
}

/// Where a flush put its keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// New changes, into the ghost.
    Ghost,
    /// New changes, parked while the ghost has no key index.
    Parked,
    /// A batch of parked keys, into the ghost (none: none was left).
    Unparked,
}

type FlushTask = JoinHandle<Result<Flushed>>;

pub struct Writer {
    /// Only the running flush uses it (one at a time); it replaces the client when lost.
    session: Arc<tokio::sync::Mutex<Session>>,
    sql: Arc<FlushSql>,
    inflight: Arc<InFlight>,
    /// Deferred keys by chunk, with the acknowledged LSN when they were first deferred: the
    /// slot may not pass it while they wait.
    deferred: HashMap<u64, (Vec<Key>, Lsn)>,
    ack: Acker,
    pending: HashSet<Key>,
    /// Transactions whose keys are pending: a flush waits until they are visible.
    xids: Vec<u32>,
    /// Highest LSN up to which every change is in `pending` or already flushed.
    complete_to: Lsn,
    stats: ApplyStats,
    paused: bool,
    pause_waiters: Vec<oneshot::Sender<()>>,
    draining: Option<(String, oneshot::Sender<Vec<Key>>)>,
    flush: Option<(FlushTask, Lsn)>,
    /// The next flush checks the table's definition first ([`StreamItem::RelationResent`]).
    check_definition: bool,
    /// Keys were handed to a cut-over ([`WriterHandle::expect_sentinel`]) and have not come
    /// back: they are written in the cut-over's transaction, which may never commit, so no
    /// position past them may be acknowledged meanwhile.
    handed_out: bool,
    /// Parked keys are being written back: who waits for the end, and how many so far.
    unparking: Option<(oneshot::Sender<u64>, u64)>,
    /// While unparking, the next flush is a parked batch even when new keys are pending, so
    /// that neither starves the other.
    parked_turn: bool,
}

impl Writer {
    /// Starts the apply loop. It ends on `stop`, when the stream's channel closes, or on the
    /// first failed flush, which it returns.
    pub fn spawn(
        session: Session,
        sql: FlushSql,
        inflight: Arc<InFlight>,
        ack: Acker,
        items: mpsc::Receiver<StreamItem>,
    ) -> (WriterHandle, JoinHandle<Result<()>>) {
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (stats_tx, stats_rx) = watch::channel(ApplyStats::default());
        let writer = Writer {
            session: Arc::new(tokio::sync::Mutex::new(session)),
            sql: Arc::new(sql),
            inflight,
            deferred: HashMap::new(),
            ack,
            pending: HashSet::new(),
            xids: Vec::new(),
            complete_to: Lsn::ZERO,
            stats: ApplyStats::default(),
            paused: false,
            pause_waiters: Vec::new(),
            draining: None,
            flush: None,
            check_definition: false,
            handed_out: false,
            unparking: None,
            parked_turn: false,
        };
        let task = tokio::spawn(writer.run(cmd_rx, items, stats_tx));
        (WriterHandle { commands: cmd_tx, stats: stats_rx }, task)
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut items: mpsc::Receiver<StreamItem>,
        stats: watch::Sender<ApplyStats>,
    ) -> Result<()> {
        let inflight = self.inflight.clone();
        let mut closed_check = tokio::time::interval(CLOSED_CHECK_EVERY);
        closed_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            for chunk in inflight.take_ended() {
                self.release(chunk);
            }
            self.maybe_start_flush();
            self.stats.backlog_keys = self.pending.len();
            self.stats.flushing = self.flush.is_some();
            stats.send_replace(self.stats.clone());
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(Command::Stop(done)) => {
                        self.finish_flush().await?;
                        let _ = done.send(());
                        return Ok(());
                    }
                    Some(c) => self.command(c).await?,
                    None => return Ok(()),
                },
                done = wait_flush(&mut self.flush) => self.flush_done(done)?,
                item = items.recv() => match item {
                    Some(item) => self.item(item),
                    None => {
                        self.finish_flush().await?;
                        return Err(Error::new(crate::ErrorKind::Connection, "the replication stream ended"));
                    }
                },
                _ = inflight.chunk_ended.notified() => {}
                // Between flushes the session is unused: a connection the server closed
                // (shutting down) would go unseen until the next flush.
                _ = closed_check.tick() => {
                    if let Ok(mut session) = self.session.try_lock() {
                        session.tell_if_closed();
                    }
                }
            }
        }
    }

    async fn command(&mut self, c: Command) -> Result<()> {
        match c {
            Command::Pause(done) => {
                self.paused = true;
                if self.flush.is_some() {
                    self.pause_waiters.push(done);
                } else {
                    let _ = done.send(());
                }
            }
            Command::Resume => self.paused = false,
            Command::DrainUntil(id, reply) => self.draining = Some((id, reply)),
            Command::Requeue(keys) => {
                self.pending.extend(keys);
                self.handed_out = false;
            }
            Command::Unpark(reply) => {
                if self.sql.parking().is_some_and(|p| p.active()) {
                    return Err(Error::internal("parked keys were asked for while flushes still park them"));
                }
                self.unparking = Some((reply, 0));
            }
            Command::Stop(_) => {}
        }
        Ok(())
    }

    fn item(&mut self, item: StreamItem) {
        match item {
            StreamItem::Committed { keys, end_lsn, xid } => {
                self.pending.extend(keys);
                self.complete_to = self.complete_to.max(end_lsn);
                self.stats.received = self.stats.received.max(end_lsn);
                self.xids.extend(xid);
            }
            StreamItem::Idle(lsn) => {
                self.complete_to = self.complete_to.max(lsn);
                if self.pending.is_empty() && self.flush.is_none() && !self.handed_out {
                    // Keys deferred for a chunk in flight are in no flush yet either.
                    self.acknowledge(self.deferred_floor(lsn));
                }
            }
            StreamItem::RelationResent => self.check_definition = true,
            StreamItem::Sentinel(id) => {
                if self.draining.as_ref().map_or(false, |(want, _)| *want == id) {
                    if let Some((_, reply)) = self.draining.take() {
                        let keys: Vec<Key> = self.pending.drain().collect();
                        match reply.send(keys) {
                            Ok(()) => self.handed_out = true,
                            Err(keys) => self.pending.extend(keys),
                        }
                    }
                }
            }
        }
    }

    fn maybe_start_flush(&mut self) {
        if self.paused || self.flush.is_some() || !self.inflight.flushes_allowed() {
            return;
        }
        if self.unparking.is_some() && (self.pending.is_empty() || self.parked_turn) {
            self.parked_turn = false;
            let (session, sql) = (self.session.clone(), self.sql.clone());
            let task = tokio::spawn(async move {
                let mut session = session.lock().await;
                let keys = unpark_one_batch(&mut session, &sql).await?;
                Ok(Flushed { keys, deferred: Vec::new(), wrote: Wrote::Unparked })
            });
            // Parked keys were acknowledged when they were parked: nothing more to acknowledge.
            self.flush = Some((task, self.stats.acked));
            return;
        }
        if self.pending.is_empty() {
            return;
        }
        self.parked_turn = true;
        let keys: Vec<Key> = self.pending.drain().collect();
        let xids = std::mem::take(&mut self.xids);
        let upto = self.complete_to;
        // Keys still deferred from earlier flushes keep the ghost short of `upto`.
        let complete = self.deferred.is_empty().then_some(upto);
        let (session, sql, inflight) = (self.session.clone(), self.sql.clone(), self.inflight.clone());
        let check_definition = std::mem::take(&mut self.check_definition);
        let wrote = match self.sql.parking().is_some_and(|p| p.active()) {
            true => Wrote::Parked,
            false => Wrote::Ghost,
        };
        let task = tokio::spawn(async move {
            let mut session = session.lock().await;
            let result = match check_definition {
                true => {
                    let (sql, xids) = (&*sql, &xids);
                    // The catalog shows what the transactions that brought the Relation message
                    // changed only once they are visible, a moment after the stream had them.
                    session
                        .run("checking the table's definition (asks again)", |c| async move {
                            wait_until_visible(&c, xids).await?;
                            sql.check_definition(&*c).await
                        })
                        .await
                }
                false => Ok(()),
            };
            let result = match result {
                // The definition check already waited for these transactions.
                Ok(()) => flush_outside_chunks(&mut session, &sql, &inflight, keys, if check_definition { &[] } else { &xids }, complete).await,
                Err(e) => Err(e),
            };
            let result = result.map(|f| Flushed { wrote, ..f });
            inflight.flush_ended();
            result
        });
        self.flush = Some((task, upto));
    }

    /// Keys deferred for a chunk that has ended go back to the pending set.
    fn release(&mut self, chunk: u64) {
        if let Some((keys, _)) = self.deferred.remove(&chunk) {
            self.pending.extend(keys);
        }
    }

    fn flush_done(&mut self, done: (Result<Flushed>, Lsn)) -> Result<()> {
        let (result, upto) = done;
        let flushed = result?;
        match flushed.wrote {
            Wrote::Parked => self.stats.parked_keys += flushed.keys as u64,
            Wrote::Ghost | Wrote::Unparked => self.stats.applied_keys += flushed.keys as u64,
        }
        if flushed.wrote == Wrote::Unparked {
            self.stats.unparked_keys += flushed.keys as u64;
            if let Some((_, total)) = self.unparking.as_mut() {
                *total += flushed.keys as u64;
            }
            if flushed.keys == 0 {
                if let Some((reply, total)) = self.unparking.take() {
                    let _ = reply.send(total);
                }
            }
        }
        for (chunk, keys) in flushed.deferred {
            let acked = self.stats.acked;
            self.deferred.entry(chunk).or_insert_with(|| (Vec::new(), acked)).0.extend(keys);
            if !self.inflight.is_in_flight(chunk) {
                self.release(chunk);
            }
        }
        self.acknowledge(self.deferred_floor(upto));
        for w in self.pause_waiters.drain(..) {
            let _ = w.send(());
        }
        Ok(())
    }

    async fn finish_flush(&mut self) -> Result<()> {
        if self.flush.is_some() {
            let done = wait_flush(&mut self.flush).await;
            self.flush_done(done)?;
        }
        Ok(())
    }

    /// `lsn`, or less while keys wait for a chunk in flight: the slot may not pass the
    /// position acknowledged when they were first deferred, since no flush holds them.
    fn deferred_floor(&self, lsn: Lsn) -> Lsn {
        self.deferred.values().map(|(_, floor)| *floor).min().map_or(lsn, |f| f.min(lsn))
    }

    fn acknowledge(&mut self, lsn: Lsn) {
        if lsn > self.stats.acked {
            self.stats.acked = lsn;
            (self.ack)(lsn);
        }
    }
}

/// How often the session is looked at between flushes ([`Session::tell_if_closed`]).
const CLOSED_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Resolves when the running flush ends; pending forever when none runs.
async fn wait_flush(flush: &mut Option<(FlushTask, Lsn)>) -> (Result<Flushed>, Lsn) {
    match flush {
        Some((task, upto)) => {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(Error::internal(format!("flush task failed: {e}"))),
            };
            let upto = *upto;
            *flush = None;
            (result, upto)
        }
        None => std::future::pending().await,
    }
}

/// Waits until every transaction in `xids` is visible to new snapshots.
///
/// The walsender decodes a commit once its WAL record is flushed, but the transaction
/// becomes visible to other sessions a moment later (and only after synchronous standbys
/// confirmed it, when there are any). Re-reading the original before then would read the
/// row as it was, and nothing would come to correct it.
async fn wait_until_visible(client: &Client, xids: &[u32]) -> Result<()> {
    if xids.is_empty() {
        return Ok(());
    }
    let xids: Vec<i64> = xids.iter().map(|x| *x as i64).collect();
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        let invisible: i64 = client
            .query_one(INVISIBLE_XIDS, &[&xids])
            .await
            .context("checking that streamed transactions are visible")?
            .try_get(0)?;
        if invisible == 0 {
            return Ok(());
        }
        if !warned && started.elapsed() > std::time::Duration::from_secs(5) {
            warned = true;
            tracing::warn!(invisible, "streamed transactions are committed in WAL but not yet visible (waiting for synchronous standbys?)");
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// How many of the 32-bit xids in `$1` a new snapshot would not see: still listed as running,
/// or at or past the snapshot's xmax (compared modulo 2^32).
const INVISIBLE_XIDS: &str = "
    WITH s AS (SELECT pg_current_snapshot() AS snap),
         m AS (SELECT pg_snapshot_xmax(snap)::text::bigint & 4294967295 AS xmax_lo FROM s)
    SELECT count(*) FROM unnest($1::bigint[]) AS t(x), m
     WHERE ((x - m.xmax_lo) & 4294967295) < 2147483648
        OR x IN (SELECT xip::text::bigint & 4294967295 FROM s, pg_snapshot_xip(s.snap) AS xip)";

/// Flushes `keys` but those inside copy chunks in flight, which it hands back, and those
/// the copy has not reached, which it leaves to the copy. Deadlocks and serialization
/// failures are retried; so is each step whose session is lost, on a new one. What the
/// flush learnt of the copy stays true meanwhile: a chunk registered after it waits for
/// its end.
async fn flush_outside_chunks(
    session: &mut Session,
    sql: &FlushSql,
    inflight: &InFlight,
    keys: Vec<Key>,
    xids: &[u32],
    complete: Option<Lsn>,
) -> Result<Flushed> {
    let waiting = format!("a flush of {} keys, waiting for their transactions to be visible (waits again)", keys.len());
    session.run(&waiting, |c| async move { wait_until_visible(&c, xids).await }).await?;
    // Only now: a chunk that registers after this reads the changes just made visible.
    let view = inflight.flush_starting();
    let mut deferred: HashMap<u64, Vec<Key>> = HashMap::new();
    let keys = if view.in_flight.is_empty() && view.uncopied.is_empty() {
        keys
    } else {
        let mut regions: Vec<_> = view.in_flight.iter().map(|(_, r)| r.clone()).collect();
        regions.extend(view.uncopied.clone());
        let (all, only) = (&keys, &regions);
        let finding = format!("a flush of {} keys, finding those inside copy chunks (asks again)", keys.len());
        let found = session.run(&finding, |c| async move { sql.ranges_of(&*c, all, only).await }).await?;
        let mut now = Vec::with_capacity(keys.len());
        for (key, region) in keys.into_iter().zip(found) {
            match region.map(|i| view.in_flight.get(i)) {
                Some(Some((chunk, _))) => deferred.entry(*chunk).or_default().push(key),
                // Not copied yet: the chunk that reaches it reads the original's row as is.
                Some(None) => {}
                None => now.push(key),
            }
        }
        now
    };
    let applied = complete.filter(|_| deferred.is_empty());
    let backoff = crate::error::Backoff { initial: std::time::Duration::from_millis(20), ..Default::default() };
    let flushing = format!("a flush of {} keys (rolled back; the same keys are flushed again)", keys.len());
    let now = &keys;
    session
        .run(&flushing, |c| async move {
            backoff.retry("flushing changed keys", || flush_in_transaction(&c, sql, now, applied)).await
        })
        .await?;
    Ok(Flushed { keys: keys.len(), deferred: deferred.into_iter().collect(), wrote: Wrote::Ghost })
}

/// Writes one parked batch to the ghost and removes it from the changelog, in one
/// transaction; returns its number of keys, 0 when none was left.
async fn unpark_one_batch(session: &mut Session, sql: &FlushSql) -> Result<usize> {
    let Some(parking) = sql.parking() else { return Ok(0) };
    let backoff = crate::error::Backoff { initial: std::time::Duration::from_millis(20), ..Default::default() };
    session
        .run("writing parked keys (rolled back; taken again)", |c| async move {
            backoff
                .retry("writing parked keys", || {
                    in_transaction(&c, "a write of parked keys", async {
                        let Some(keys) = parking.take(&*c, sql.key_len(), MAX_KEYS_PER_STATEMENT).await? else { return Ok(0) };
                        for batch in keys.chunks(MAX_KEYS_PER_STATEMENT) {
                            sql.run(&*c, batch).await?;
                        }
                        Ok(keys.len())
                    })
                })
                .await
        })
        .await
}

/// `applied`: the LSN this flush brings the ghost to, recorded with it; None when keys were
/// deferred (the ghost is not complete up to any later LSN).
async fn flush_in_transaction(client: &Client, sql: &FlushSql, keys: &[Key], applied: Option<Lsn>) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    in_transaction(client, "a flush", async {
        for batch in keys.chunks(MAX_KEYS_PER_STATEMENT) {
            sql.run(client, batch).await?;
        }
        if let Some(lsn) = applied {
            sql.record_applied(client, lsn).await?;
        }
        if let Some(standbys) = sql.standbys() {
            standbys.before_commit(client).await?;
        }
        crate::fault::crash_point("apply-before-commit");
        Ok(())
    })
    .await?;
    // Its changes are confirmed once the standbys have the commit (a failover slot).
    match sql.standbys() {
        Some(standbys) => standbys.wait(client).await,
        None => Ok(()),
    }
}

/// Runs `work` in a transaction of its own on `client`: committed when it succeeds, rolled
/// back when it fails (the failed statement leaves the transaction block open).
async fn in_transaction<T>(client: &Client, what: &str, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    client.batch_execute("BEGIN").await.with_context(|| format!("starting {what}"))?;
    match work.await {
        Ok(v) => {
            client.batch_execute("COMMIT").await.with_context(|| format!("committing {what}"))?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}
