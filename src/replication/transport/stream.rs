//! The streaming half of the transport: while `START_REPLICATION` runs, the socket leaves
//! tokio and belongs to two threads, and the consumer holds a [`ReplicationStream`].
//!
//! Why threads: a socket registered in tokio's epoll set wakes a parked worker for every
//! packet that arrives, even while the reader deliberately waits for the socket to fill
//! (measured: ~35,000 wake-ups for ~1,100 reads of 200,000 small transactions). Each
//! wake-up costs the walsender, which is the bottleneck. A thread that sleeps between
//! reads is in no wait queue, so the walsender writes into the socket buffer undisturbed.
//!
//! - The reader thread reads (coalesced: after a small read it sleeps `coalesce_delay`),
//!   cuts messages, asks the writer to answer keepalives that request a reply, and hands
//!   batches to the consumer over a bounded channel. When the consumer is behind it keeps
//!   reading until about `MAX_PENDING_BYTES` wait, then blocks on the channel.
//! - The writer thread sends standby status updates: at least every `status_interval`, at
//!   once when a reply is requested or the consumer asks, and finally CopyDone. It never
//!   waits for the consumer, so a slow consumer does not get the connection cut.
//! - On stop, the reader discards the rest of the copy up to ReadyForQuery and hands the
//!   socket back; it returns to tokio as a command-mode connection.

use super::framing::{log_notice, server_error, Backend, Framed, StdSocket, READ_CHUNK};
use super::options::StreamOptions;
use super::wire::{encode_status_update, parse_copy_data, Positions, StreamEvent};
use super::{ConnMeta, ReplicationConnection};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::lsn::Lsn;
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// A read smaller than this means the socket was nearly empty: the walsender is producing
/// message by message, and reading again at once would have it wake us for each one.
const SMALL_READ: usize = READ_CHUNK / 4;

/// Past this many bytes waiting for the consumer, the reader stops reading (the writer
/// keeps sending status updates). With the channel's batches, this bounds memory.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// Counted per event on top of its payload, so that a flood of tiny messages is bounded too.
const EVENT_OVERHEAD: usize = std::mem::size_of::<StreamEvent>();

/// How often an idle reader looks up from the socket to see whether the stream was dropped.
const IDLE_POLL: Duration = Duration::from_millis(100);

type Batch = Result<Vec<StreamEvent>>;

/// What the reader gives back when it ends: the socket and its unparsed bytes.
type ReaderEnd = Result<(StdSocket, BytesMut)>;

/// Requests to the writer thread.
#[derive(Default)]
struct Requests {
    status_now: bool,
    /// Final status update, then CopyDone (stop).
    stop: bool,
    /// CopyDone only: the server ended the copy.
    copy_done: bool,
    /// Leave without writing anything more (the stream is gone or failed).
    exit: bool,
}

#[derive(Default)]
struct Shared {
    written: AtomicU64,
    flushed: AtomicU64,
    applied: AtomicU64,
    requests: Mutex<Requests>,
    wake_writer: Condvar,
    /// stop() was called: what follows from the server is the end of the copy.
    stopping: AtomicBool,
    /// The handle was dropped: both threads leave.
    dropped: AtomicBool,
    /// The server ended the copy itself (CopyDone): the channel closing is not a failure.
    server_ended: AtomicBool,
    /// Why the writer could not write, for the reader to report.
    writer_failed: Mutex<Option<Error>>,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    xlog_data: AtomicU64,
    keepalives: AtomicU64,
    replies_requested: AtomicU64,
    status_updates: AtomicU64,
}

impl Shared {
    fn positions(&self) -> Positions {
        Positions {
            written: Lsn(self.written.load(Ordering::Acquire)),
            flushed: Lsn(self.flushed.load(Ordering::Acquire)),
            applied: Lsn(self.applied.load(Ordering::Acquire)),
        }
    }

    fn requests(&self) -> MutexGuard<'_, Requests> {
        // A poisoned lock only means a thread panicked while holding it; the flags are
        // still meaningful.
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self, set: impl FnOnce(&mut Requests)) {
        set(&mut self.requests());
        self.wake_writer.notify_one();
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The consumer's side of the status updates: cheap to clone, usable from any task.
///
/// Each position only moves forward: a smaller value than the last one is ignored, so
/// the flushed LSN the server sees never goes backwards.
#[derive(Clone)]
pub struct Feedback {
    shared: Arc<Shared>,
}

impl Feedback {
    pub fn set_written(&self, lsn: Lsn) {
        self.shared.written.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// Everything up to `lsn` is durably applied; the slot may release WAL before it.
    /// Give a Commit's `end_lsn`, or an idle keepalive's `wal_end`, never a change's LSN.
    pub fn set_flushed(&self, lsn: Lsn) {
        self.shared.flushed.fetch_max(lsn.0, Ordering::AcqRel);
    }

    pub fn set_applied(&self, lsn: Lsn) {
        self.shared.applied.fetch_max(lsn.0, Ordering::AcqRel);
    }

    pub fn positions(&self) -> Positions {
        self.shared.positions()
    }

    /// Sends a status update with the current positions now rather than at the next
    /// interval (e.g. right after a flush, so the slot advances promptly).
    pub fn send_status_now(&self) {
        self.shared.request(|r| r.status_now = true);
    }
}

/// Counters of the reader and writer, for benchmarks and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// `read()` calls that returned data.
    pub reads: u64,
    pub bytes_read: u64,
    pub xlog_data: u64,
    pub keepalives: u64,
    /// Keepalives that asked for a reply; each was answered by a status update.
    pub replies_requested: u64,
    /// Status updates sent, for any reason.
    pub status_updates: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Ended,
    Failed,
}

/// A running `START_REPLICATION`. Dropping it closes the connection; [`stop`] ends the
/// copy cleanly and gives the connection back.
///
/// [`stop`]: ReplicationStream::stop
pub struct ReplicationStream {
    events: mpsc::Receiver<Batch>,
    feedback: Feedback,
    reader: Option<oneshot::Receiver<ReaderEnd>>,
    meta: Option<ConnMeta>,
    state: State,
    slot: String,
    status_interval: Duration,
}

impl ReplicationStream {
    /// The next batch of events, in stream order.
    ///
    /// `Ok(None)` means the server ended the copy itself (CopyDone); [`stop`] then gives the
    /// connection back. An error means the stream is over: the server closed it (EOF,
    /// kind `Connection`) or sent an ErrorResponse (kind mapped from its SQLSTATE); later
    /// calls keep failing. Events read before the failure are delivered before it.
    ///
    /// Cancel-safe: a `recv` dropped in a `select!` loses no events.
    ///
    /// [`stop`]: ReplicationStream::stop
    pub async fn recv(&mut self) -> Result<Option<Vec<StreamEvent>>> {
        match self.state {
            State::Failed => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!("the replication stream from slot {:?} has already failed", self.slot),
                ))
            }
            State::Ended => return Ok(None),
            State::Open => {}
        }
        match self.events.recv().await {
            Some(Ok(batch)) => Ok(Some(batch)),
            Some(Err(e)) => {
                self.state = State::Failed;
                Err(e)
            }
            None if self.feedback.shared.server_ended.load(Ordering::Acquire) => {
                self.state = State::Ended;
                Ok(None)
            }
            None => {
                self.state = State::Failed;
                Err(Error::internal(format!("the reader of slot {:?} ended without saying why", self.slot)))
            }
        }
    }

    /// A handle to report positions from elsewhere (e.g. the task that commits the ghost).
    pub fn feedback(&self) -> Feedback {
        self.feedback.clone()
    }

    pub fn set_written(&self, lsn: Lsn) {
        self.feedback.set_written(lsn)
    }

    pub fn set_flushed(&self, lsn: Lsn) {
        self.feedback.set_flushed(lsn)
    }

    pub fn set_applied(&self, lsn: Lsn) {
        self.feedback.set_applied(lsn)
    }

    pub fn send_status_now(&self) {
        self.feedback.send_status_now()
    }

    pub fn stats(&self) -> StreamStats {
        let s = &self.feedback.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StreamStats {
            reads: get(&s.reads),
            bytes_read: get(&s.bytes_read),
            xlog_data: get(&s.xlog_data),
            keepalives: get(&s.keepalives),
            replies_requested: get(&s.replies_requested),
            status_updates: get(&s.status_updates),
        }
    }

    /// The walsender's process id (for `pg_stat_replication`, or to terminate it).
    pub fn backend_pid(&self) -> i32 {
        self.meta.as_ref().map_or(0, |m| m.backend_pid)
    }

    /// The interval actually used, after fitting it to the server's `wal_sender_timeout`.
    pub fn status_interval(&self) -> Duration {
        self.status_interval
    }

    /// Ends the copy: sends a last status update with the current positions, then
    /// CopyDone, discards what the server still sends until ReadyForQuery, and returns the
    /// connection in command mode (e.g. for `DROP_REPLICATION_SLOT`). Events not yet
    /// received are dropped; they come again from the flushed position on the next START.
    /// If the stream had failed, returns that failure.
    pub async fn stop(mut self) -> Result<ReplicationConnection> {
        let context = format!("stopping replication from slot {:?}", self.slot);
        let shared = &self.feedback.shared;
        shared.stopping.store(true, Ordering::Release);
        shared.request(|r| r.stop = true);
        // A reader blocked delivering to a full channel must not wait for us while we wait for it.
        self.events.close();
        let reader = self.reader.take().ok_or_else(|| Error::internal("the replication stream was already stopped"))?;
        let (socket, rbuf) = match reader.await {
            Ok(end) => end.context(context.clone())?,
            Err(_) => return Err(Error::internal(format!("the reader of slot {:?} vanished", self.slot))),
        };
        let socket = socket.into_tokio().context(context.clone())?;
        let meta = self.meta.take().ok_or_else(|| Error::internal("the connection was already returned"))?;
        tracing::info!(slot = %self.slot, "replication stopped");
        Ok(ReplicationConnection { framed: Framed::from_parts(socket, rbuf), meta, busy: false })
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        // Without stop() (or with its future dropped half-way), nobody collects the
        // connection: both threads leave, closing it. After a completed stop() they are
        // gone already and this changes nothing.
        let shared = &self.feedback.shared;
        shared.dropped.store(true, Ordering::Release);
        shared.request(|r| r.exit = true);
    }
}

/// Hands a connection that has just received CopyBothResponse to a reader and a writer
/// thread.
pub(super) fn spawn(
    conn: ReplicationConnection,
    slot: &str,
    status_interval: Duration,
    o: &StreamOptions,
) -> Result<ReplicationStream> {
    let ReplicationConnection { framed, meta, .. } = conn;
    let (socket, rbuf) = framed.into_parts();
    let read_half = socket.into_std().context("detaching the socket from the async runtime")?;
    read_half.set_read_timeout(Some(IDLE_POLL))?;
    let write_half = read_half.try_clone().context("duplicating the socket for status updates")?;

    let shared = Arc::new(Shared::default());
    let (tx, events) = mpsc::channel(o.channel_capacity);
    let (end_tx, end_rx) = oneshot::channel();
    let label = format!("slot {slot:?} (walsender pid {})", meta.backend_pid);

    let writer = Writer { socket: write_half, shared: shared.clone(), status_interval, label: label.clone() };
    std::thread::Builder::new()
        .name("pg-ghost-walsnd-w".into())
        .spawn(move || writer.run())
        .context("starting the status update thread")?;

    let reader = Reader {
        socket: read_half,
        rbuf,
        scratch: vec![0; READ_CHUNK],
        shared: shared.clone(),
        tx,
        pending: Vec::new(),
        pending_bytes: 0,
        coalesce_delay: o.coalesce_delay,
        label,
    };
    let spawned = std::thread::Builder::new().name("pg-ghost-walsnd-r".into()).spawn(move || {
        let end = reader.run();
        let _ = end_tx.send(end);
    });
    if let Err(e) = spawned {
        shared.request(|r| r.exit = true);
        return Err(Error::from(e).context("starting the replication reader thread"));
    }
    Ok(ReplicationStream {
        events,
        feedback: Feedback { shared },
        reader: Some(end_rx),
        meta: Some(meta),
        state: State::Open,
        slot: slot.to_string(),
        status_interval,
    })
}

struct Writer {
    socket: StdSocket,
    shared: Arc<Shared>,
    status_interval: Duration,
    label: String,
}

impl Writer {
    fn run(mut self) {
        if let Err(e) = self.serve() {
            tracing::debug!(stream = %self.label, error = %e, "status updates stopped");
            *self.shared.writer_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    }

    fn serve(&mut self) -> Result<()> {
        let mut next_status = Instant::now() + self.status_interval;
        loop {
            let requests = {
                let mut r = self.shared.requests();
                loop {
                    let due = Instant::now() >= next_status;
                    if due || r.status_now || r.stop || r.copy_done || r.exit {
                        break;
                    }
                    let wait = next_status.saturating_duration_since(Instant::now());
                    r = self.shared.wake_writer.wait_timeout(r, wait).unwrap_or_else(|e| e.into_inner()).0;
                }
                std::mem::take(&mut *r)
            };
            if requests.exit {
                return Ok(());
            }
            let mut out = BytesMut::new();
            if !requests.copy_done {
                // Periodic, requested, a keepalive's reply, or the last one before stopping.
                let p = self.shared.positions();
                encode_status_update(&mut out, p, SystemTime::now(), false);
                bump(&self.shared.status_updates, 1);
                tracing::trace!(stream = %self.label, flushed = %p.flushed, "status update");
            }
            let last = requests.stop || requests.copy_done;
            if last {
                frontend::copy_done(&mut out);
            }
            self.socket.write_all(&out).map_err(|e| Error::from(e).context("sending a standby status update"))?;
            if last {
                return Ok(());
            }
            next_status = Instant::now() + self.status_interval;
        }
    }
}

struct Reader {
    socket: StdSocket,
    /// Bytes read and not yet cut into messages.
    rbuf: BytesMut,
    /// Where reads land before being appended to `rbuf` (safe code cannot read into
    /// uninitialised capacity; the copy costs far less than the read).
    scratch: Vec<u8>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Batch>,
    /// Events read but not yet handed to the consumer.
    pending: Vec<StreamEvent>,
    pending_bytes: usize,
    coalesce_delay: Duration,
    label: String,
}

/// How the copy ended, when it did not fail.
enum End {
    Stop,
    ServerDone,
    Dropped,
}

impl Reader {
    fn run(mut self) -> ReaderEnd {
        let outcome = self.stream();
        let end = outcome.and_then(|end| {
            match end {
                End::Stop => self.drain_to_ready()?,
                End::ServerDone => {
                    tracing::info!(stream = %self.label, "the server ended the replication stream");
                    self.shared.request(|r| r.copy_done = true);
                    self.drain_to_ready()?;
                    self.shared.server_ended.store(true, Ordering::Release);
                    self.deliver_all();
                }
                End::Dropped => {}
            }
            Ok(end)
        });
        match end {
            Ok(End::Dropped) => Err(Error::internal("the replication stream was dropped")),
            Ok(_) => {
                let Reader { socket, rbuf, .. } = self;
                Ok((socket, rbuf))
            }
            Err(e) => {
                self.shared.request(|r| r.exit = true);
                let e = e.context(format!("streaming from {}", self.label));
                tracing::debug!(error = %e, "replication stream failed");
                let copy = duplicate(&e);
                self.deliver_all();
                let _ = self.tx.blocking_send(Err(e));
                Err(copy)
            }
        }
    }

    /// Reads and delivers until the consumer stops, the server ends the copy, or a failure.
    fn stream(&mut self) -> Result<End> {
        loop {
            // Whatever is buffered first (some may have come with CopyBothResponse).
            if self.drain_buffer()? {
                // After our own CopyDone, the server's is just its answer.
                let stopping = self.shared.stopping.load(Ordering::Acquire);
                return Ok(if stopping { End::Stop } else { End::ServerDone });
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                return Ok(End::Stop);
            }
            if !self.deliver()? {
                return Ok(if self.shared.stopping.load(Ordering::Acquire) { End::Stop } else { End::Dropped });
            }
            match self.read()? {
                Some(n) if n < SMALL_READ && !self.coalesce_delay.is_zero() => {
                    // Let the socket fill rather than be woken for every message.
                    std::thread::sleep(self.coalesce_delay);
                }
                Some(_) => {}
                None if self.shared.dropped.load(Ordering::Acquire) => return Ok(End::Dropped),
                None => {}
            }
        }
    }

    /// One read; `None` when the idle poll timed out.
    fn read(&mut self) -> Result<Option<usize>> {
        match self.socket.read(&mut self.scratch) {
            Ok(0) => Err(self.lost(Error::new(ErrorKind::Connection, "the server closed the connection (EOF)"))),
            Ok(n) => {
                self.rbuf.extend_from_slice(&self.scratch[..n]);
                bump(&self.shared.reads, 1);
                bump(&self.shared.bytes_read, n as u64);
                Ok(Some(n))
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                match self.shared.writer_failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    Some(e) => Err(e),
                    None => Ok(None),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(self.lost(Error::from(e).context("reading from the server"))),
        }
    }

    fn lost(&self, e: Error) -> Error {
        e.context(
            "the replication connection was lost (walsender terminated, server shut down, \
             or no status update within wal_sender_timeout)",
        )
    }

    /// Hands pending events over. Returns false when the consumer is gone.
    fn deliver(&mut self) -> Result<bool> {
        if self.pending.is_empty() {
            return Ok(true);
        }
        let batch = std::mem::take(&mut self.pending);
        match self.tx.try_send(Ok(batch)) {
            Ok(()) => {
                self.pending_bytes = 0;
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(Ok(batch))) if self.pending_bytes < MAX_PENDING_BYTES => {
                // The consumer is behind: keep reading ahead a little.
                self.pending = batch;
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(batch)) => {
                // Enough read ahead: wait for the consumer (the writer keeps the server content).
                let delivered = self.tx.blocking_send(batch).is_ok();
                self.pending_bytes = 0;
                Ok(delivered)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
        }
    }

    fn deliver_all(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.tx.blocking_send(Ok(std::mem::take(&mut self.pending)));
            self.pending_bytes = 0;
        }
    }

    /// Moves every complete message in the read buffer to `pending` and has the writer
    /// answer the keepalives that ask for a reply. Returns true at the server's CopyDone.
    fn drain_buffer(&mut self) -> Result<bool> {
        let mut reply = false;
        let mut done = false;
        while let Some(msg) = super::framing::parse_frame(&mut self.rbuf)? {
            match msg {
                Backend::Message(Message::CopyData(body)) => {
                    let event = parse_copy_data(body.into_bytes())?;
                    match &event {
                        StreamEvent::XLogData { data, .. } => {
                            self.pending_bytes += data.len() + EVENT_OVERHEAD;
                            bump(&self.shared.xlog_data, 1);
                        }
                        StreamEvent::Keepalive { reply_requested, .. } => {
                            self.pending_bytes += EVENT_OVERHEAD;
                            bump(&self.shared.keepalives, 1);
                            if *reply_requested {
                                bump(&self.shared.replies_requested, 1);
                                reply = true;
                            }
                        }
                    }
                    self.pending.push(event);
                }
                Backend::Message(Message::CopyDone) => {
                    done = true;
                    break;
                }
                Backend::Message(Message::ErrorResponse(e)) => return Err(server_error(e.fields())),
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ParameterStatus(_)) => {}
                other => return Err(Error::protocol(format!("unexpected {} in the replication stream", other.describe()))),
            }
        }
        // One reply covers every request in this read: it carries the same positions.
        if reply {
            self.shared.request(|r| r.status_now = true);
        }
        Ok(done)
    }

    /// After CopyDone (ours or the server's): reads up to ReadyForQuery. CopyData decoded
    /// before the server saw our CopyDone (a large transaction keeps coming to its end) is
    /// dropped: it is sent again from the flushed LSN on the next START.
    fn drain_to_ready(&mut self) -> Result<()> {
        let mut error = None;
        loop {
            while let Some(msg) = super::framing::parse_frame(&mut self.rbuf)? {
                match msg {
                    Backend::Message(Message::CopyData(_) | Message::CopyDone | Message::CommandComplete(_)) => {}
                    Backend::Message(Message::ParameterStatus(_)) => {}
                    Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                    Backend::Message(Message::ErrorResponse(e)) => error = Some(server_error(e.fields())),
                    Backend::Message(Message::ReadyForQuery(_)) => return error.map_or(Ok(()), Err),
                    other => {
                        return Err(Error::protocol(format!("unexpected {} while ending the copy", other.describe())))
                    }
                }
            }
            if self.read()?.is_none() && self.shared.dropped.load(Ordering::Acquire) {
                return Err(Error::internal("the replication stream was dropped"));
            }
        }
    }
}

/// The consumer gets the error through the channel; stop() gets this copy of it.
fn duplicate(e: &Error) -> Error {
    let text = e.to_string();
    match e.sqlstate() {
        Some(code) => {
            let suffix = format!(" (SQLSTATE {code})");
            let text = text.strip_suffix(&suffix).unwrap_or(&text);
            Error::new(e.kind(), text).set_sqlstate(code)
        }
        None => Error::new(e.kind(), text),
    }
}
