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

use super::framing::{Framed, StdSocket, READ_CHUNK};
use super::options::StreamOptions;
use super::wire::{Positions, StreamEvent};
use super::{ConnMeta, ReplicationConnection};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::lsn::Lsn;
use bytes::BytesMut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How often an idle reader looks up from the socket to see whether the stream was dropped.
const IDLE_POLL: Duration = Duration::from_millis(100);

mod reader;
mod writer;

use reader::Reader;
use writer::Writer;

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
                Err(Error::internal(format!(
                    "the reader of slot {:?} ended without saying why",
                    self.slot
                )))
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
        let reader = self
            .reader
            .take()
            .ok_or_else(|| Error::internal("the replication stream was already stopped"))?;
        let (socket, rbuf) = match reader.await {
            Ok(end) => end.context(context.clone())?,
            Err(_) => return Err(Error::internal(format!("the reader of slot {:?} vanished", self.slot))),
        };
        let socket = socket.into_tokio().context(context.clone())?;
        let meta = self
            .meta
            .take()
            .ok_or_else(|| Error::internal("the connection was already returned"))?;
        tracing::info!(slot = %self.slot, "replication stopped");
        Ok(ReplicationConnection {
            framed: Framed::from_parts(socket, rbuf),
            meta,
            busy: false,
        })
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
pub(super) fn spawn(conn: ReplicationConnection, slot: &str, status_interval: Duration, o: &StreamOptions) -> Result<ReplicationStream> {
    let ReplicationConnection { framed, meta, .. } = conn;
    let (socket, rbuf) = framed.into_parts();
    let read_half = socket.into_std().context("detaching the socket from the async runtime")?;
    read_half.set_read_timeout(Some(IDLE_POLL))?;
    let write_half = read_half.try_clone().context("duplicating the socket for status updates")?;

    let shared = Arc::new(Shared::default());
    let (tx, events) = mpsc::channel(o.channel_capacity);
    let (end_tx, end_rx) = oneshot::channel();
    let label = format!("slot {slot:?} (walsender pid {})", meta.backend_pid);

    let writer = Writer {
        socket: write_half,
        shared: shared.clone(),
        status_interval,
        label: label.clone(),
    };
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
