//! The streaming half of the transport: a reader task that owns the socket while
//! `START_REPLICATION` runs, and the [`ReplicationStream`] handle the consumer holds.
//!
//! The task reads, cuts messages, answers keepalives that ask for a reply, sends a status
//! update at least every `status_interval`, and hands batches of events to the consumer
//! over a bounded channel. It keeps doing the first four while the consumer is behind;
//! only reading stops, once a bounded amount is waiting, so memory stays bounded.

use super::framing::{log_notice, server_error, Backend, READ_CHUNK};
use super::options::StreamOptions;
use super::wire::{encode_status_update, parse_copy_data, Positions, StreamEvent};
use super::ReplicationConnection;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::lsn::Lsn;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// A read smaller than this means the socket was nearly empty: the walsender is producing
/// message by message, and reading again at once would wake it (a context switch) for
/// each one. Pausing lets it fill the socket instead (measured 2–2.5× server throughput).
const SMALL_READ: usize = READ_CHUNK / 4;

/// Past this many bytes waiting for the consumer, the task stops reading the socket (but
/// keeps sending status updates). With the channel's batches, this bounds memory.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// Counted per event on top of its payload, so that a flood of tiny messages is bounded too.
const EVENT_OVERHEAD: usize = std::mem::size_of::<StreamEvent>();

type Batch = Result<Vec<StreamEvent>>;

#[derive(Default)]
struct Shared {
    written: AtomicU64,
    flushed: AtomicU64,
    applied: AtomicU64,
    status_now: Notify,
    /// The server ended the copy itself (CopyDone): the channel closing is not a failure.
    server_ended: AtomicBool,
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
        self.shared.status_now.notify_one();
    }
}

/// Counters of the reader task, for benchmarks and diagnostics.
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
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<ReplicationConnection>>>,
    state: State,
    slot: String,
    backend_pid: i32,
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
                Err(Error::internal(format!("the reader task of slot {:?} ended without saying why", self.slot)))
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
        self.backend_pid
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A task blocked delivering to a full channel must not wait for us while we wait for it.
        self.events.close();
        let task = self.task.take().ok_or_else(|| Error::internal("the replication stream was already stopped"))?;
        match task.await {
            Ok(result) => result.with_context(|| format!("stopping replication from slot {:?}", self.slot)),
            Err(e) => Err(Error::internal(format!("the reader task of slot {:?} failed: {e}", self.slot))),
        }
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        // Without stop(), nobody will collect the connection: close it now.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the reader task on a connection that has just received CopyBothResponse.
pub(super) fn spawn(conn: ReplicationConnection, slot: &str, status_interval: Duration, o: &StreamOptions) -> ReplicationStream {
    let shared = Arc::new(Shared::default());
    let (tx, events) = mpsc::channel(o.channel_capacity);
    let (stop, stop_rx) = oneshot::channel();
    let backend_pid = conn.backend_pid();
    let reader = Reader {
        conn,
        shared: shared.clone(),
        pending: Vec::new(),
        pending_bytes: 0,
        status_interval,
        next_status: Instant::now() + status_interval,
        coalesce_delay: o.coalesce_delay,
        slot: slot.to_string(),
    };
    ReplicationStream {
        events,
        feedback: Feedback { shared },
        stop: Some(stop),
        task: Some(tokio::spawn(reader.run(tx, stop_rx))),
        state: State::Open,
        slot: slot.to_string(),
        backend_pid,
        status_interval,
    }
}

enum End {
    /// stop() was called.
    Stop,
    /// The server sent CopyDone.
    ServerDone,
    /// The stream handle was dropped.
    ConsumerGone,
}

struct Reader {
    conn: ReplicationConnection,
    shared: Arc<Shared>,
    /// Events read but not yet handed to the consumer.
    pending: Vec<StreamEvent>,
    pending_bytes: usize,
    status_interval: Duration,
    next_status: Instant,
    coalesce_delay: Duration,
    slot: String,
}

impl Reader {
    async fn run(mut self, tx: mpsc::Sender<Batch>, mut stop_rx: oneshot::Receiver<()>) -> Result<ReplicationConnection> {
        let end = match self.stream(&tx, &mut stop_rx).await {
            Ok(end) => end,
            Err(e) => return Err(self.fail(&tx, e).await),
        };
        match end {
            End::Stop => {
                if let Err(e) = self.finish_copy(true).await {
                    return Err(e.context(format!("ending the copy of slot {:?}", self.slot)));
                }
                self.conn.set_idle();
                Ok(self.conn)
            }
            End::ServerDone => {
                tracing::info!(slot = %self.slot, "the server ended the replication stream");
                if let Err(e) = self.finish_copy(false).await {
                    return Err(self.fail(&tx, e).await);
                }
                self.shared.server_ended.store(true, Ordering::Release);
                self.deliver_pending(&tx).await;
                // Closing the channel is how recv() learns the stream is over.
                drop(tx);
                self.conn.set_idle();
                // Hold the connection until stop() collects it (or the handle is dropped).
                let _ = stop_rx.await;
                Ok(self.conn)
            }
            End::ConsumerGone => Err(Error::internal("the replication stream was dropped")),
        }
    }

    /// Hands the consumer what was read before the failure, then the failure itself.
    async fn fail(&mut self, tx: &mpsc::Sender<Batch>, e: Error) -> Error {
        let e = e.context(format!("streaming from slot {:?} (walsender pid {})", self.slot, self.conn.backend_pid()));
        tracing::debug!(error = %e, "replication stream failed");
        let copy = duplicate(&e);
        self.deliver_pending(tx).await;
        let _ = tx.send(Err(e)).await;
        copy
    }

    async fn deliver_pending(&mut self, tx: &mpsc::Sender<Batch>) {
        if !self.pending.is_empty() {
            let _ = tx.send(Ok(std::mem::take(&mut self.pending))).await;
            self.pending_bytes = 0;
        }
    }

    async fn stream(&mut self, tx: &mpsc::Sender<Batch>, stop_rx: &mut oneshot::Receiver<()>) -> Result<End> {
        let shared = self.shared.clone();
        // Whatever arrived together with CopyBothResponse is already buffered.
        if self.drain_buffer().await? {
            return Ok(End::ServerDone);
        }
        // While set, the socket is left to fill until this instant.
        let mut read_resume: Option<Instant> = None;
        loop {
            let status_due = self.next_status;
            let has_pending = !self.pending.is_empty();
            let can_read = read_resume.is_none() && self.pending_bytes < MAX_PENDING_BYTES;
            tokio::select! {
                // Order matters: stop first, then status updates (the server's patience),
                // then delivery (the consumer), then reading more.
                biased;
                r = &mut *stop_rx => return Ok(if r.is_ok() { End::Stop } else { End::ConsumerGone }),
                _ = shared.status_now.notified() => self.send_status().await?,
                _ = sleep_until(status_due) => self.send_status().await?,
                permit = tx.reserve(), if has_pending => match permit {
                    Ok(permit) => {
                        permit.send(Ok(std::mem::take(&mut self.pending)));
                        self.pending_bytes = 0;
                    }
                    Err(_) => return Ok(End::ConsumerGone),
                },
                _ = sleep_until(read_resume.unwrap_or(status_due)), if read_resume.is_some() => read_resume = None,
                n = self.conn.framed.read_some(), if can_read => {
                    let n = n.map_err(|e| {
                        e.context("the replication connection was lost (walsender terminated, server shut down, or no status update within wal_sender_timeout)")
                    })?;
                    bump(&shared.reads, 1);
                    bump(&shared.bytes_read, n as u64);
                    if n < SMALL_READ && !self.coalesce_delay.is_zero() {
                        read_resume = Some(Instant::now() + self.coalesce_delay);
                    }
                    if self.drain_buffer().await? {
                        return Ok(End::ServerDone);
                    }
                }
            }
        }
    }

    /// Moves every complete message in the read buffer to `pending` and answers the
    /// keepalives among them that ask for a reply. Returns true at the server's CopyDone.
    async fn drain_buffer(&mut self) -> Result<bool> {
        let mut reply = false;
        let mut done = false;
        while let Some(msg) = self.conn.framed.parse()? {
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
            self.send_status().await?;
        }
        Ok(done)
    }

    async fn send_status(&mut self) -> Result<()> {
        let p = self.shared.positions();
        encode_status_update(self.conn.framed.write_buf(), p, SystemTime::now(), false);
        self.conn.framed.flush().await.context("sending a standby status update")?;
        self.next_status = Instant::now() + self.status_interval;
        bump(&self.shared.status_updates, 1);
        tracing::trace!(slot = %self.slot, flushed = %p.flushed, "status update sent");
        Ok(())
    }

    /// Ends the copy from our side and reads up to ReadyForQuery. `final_status` sends
    /// the positions once more first, so the slot keeps what the consumer confirmed last.
    async fn finish_copy(&mut self, final_status: bool) -> Result<()> {
        if final_status {
            self.send_status().await?;
        }
        frontend::copy_done(self.conn.framed.write_buf());
        self.conn.framed.flush().await?;
        let mut error = None;
        loop {
            match self.conn.framed.recv().await? {
                // Decoded before the server saw our CopyDone (a large transaction keeps
                // coming until its end): dropped, it is sent again from the flushed LSN.
                Backend::Message(Message::CopyData(_) | Message::CopyDone | Message::CommandComplete(_)) => {}
                Backend::Message(Message::ParameterStatus(_)) => {}
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ErrorResponse(e)) => error = Some(server_error(e.fields())),
                Backend::Message(Message::ReadyForQuery(_)) => return error.map_or(Ok(()), Err),
                other => return Err(Error::protocol(format!("unexpected {} while ending the copy", other.describe()))),
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
