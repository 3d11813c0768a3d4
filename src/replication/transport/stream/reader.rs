//! The reader thread of a stream: coalesced blocking reads, messages cut from the buffer,
//! keepalive replies requested from the writer, batches handed to the consumer; on stop,
//! the rest of the copy discarded up to ReadyForQuery and the socket given back.

use super::{bump, duplicate, Batch, ReaderEnd, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::replication::transport::framing::{log_notice, parse_frame, server_error, Backend, StdSocket, READ_CHUNK};
use crate::replication::transport::wire::{parse_copy_data, StreamEvent};
use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A read smaller than this means the socket was nearly empty: the walsender is producing
/// message by message, and reading again at once would have it wake us for each one.
const SMALL_READ: usize = READ_CHUNK / 4;

/// Past this many bytes waiting for the consumer, the reader stops reading (the writer
/// keeps sending status updates). With the channel's batches, this bounds memory.
const MAX_PENDING_BYTES: usize = 1 << 20;

/// Counted per event on top of its payload, so that a flood of tiny messages is bounded too.
const EVENT_OVERHEAD: usize = std::mem::size_of::<StreamEvent>();

pub(super) struct Reader {
    pub(super) socket: StdSocket,
    /// Bytes read and not yet cut into messages.
    pub(super) rbuf: BytesMut,
    /// Where reads land before being appended to `rbuf` (safe code cannot read into
    /// uninitialised capacity; the copy costs far less than the read).
    pub(super) scratch: Vec<u8>,
    pub(super) shared: Arc<Shared>,
    pub(super) tx: mpsc::Sender<Batch>,
    /// Events read but not yet handed to the consumer.
    pub(super) pending: Vec<StreamEvent>,
    pub(super) pending_bytes: usize,
    pub(super) coalesce_delay: Duration,
    pub(super) label: String,
}

/// How the copy ended, when it did not fail.
enum End {
    Stop,
    ServerDone,
    Dropped,
}

impl Reader {
    pub(super) fn run(mut self) -> ReaderEnd {
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
                return Ok(if self.shared.stopping.load(Ordering::Acquire) {
                    End::Stop
                } else {
                    End::Dropped
                });
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
        while let Some(msg) = parse_frame(&mut self.rbuf)? {
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
                // A walsender stopping for a server shutdown, once we confirmed all it sent,
                // ends with CommandComplete (no CopyDone) and exits.
                Backend::Message(Message::CommandComplete(_)) => {
                    return Err(self.lost(Error::new(ErrorKind::Connection, "the server ended streaming (shutting down?)")))
                }
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ParameterStatus(_)) => {}
                other => {
                    return Err(Error::protocol(format!(
                        "unexpected {} in the replication stream",
                        other.describe()
                    )))
                }
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
            while let Some(msg) = parse_frame(&mut self.rbuf)? {
                match msg {
                    Backend::Message(Message::CopyData(_) | Message::CopyDone | Message::CommandComplete(_)) => {}
                    Backend::Message(Message::ParameterStatus(_)) => {}
                    Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                    Backend::Message(Message::ErrorResponse(e)) => error = Some(server_error(e.fields())),
                    Backend::Message(Message::ReadyForQuery(_)) => return error.map_or(Ok(()), Err),
                    other => return Err(Error::protocol(format!("unexpected {} while ending the copy", other.describe()))),
                }
            }
            if self.read()?.is_none() && self.shared.dropped.load(Ordering::Acquire) {
                return Err(Error::internal("the replication stream was dropped"));
            }
        }
    }
}
