//! Moves the replication stream into the apply loop: XLogData is decoded and reduced to
//! keys and markers (`changes`), keepalives become idle positions, and everything goes to
//! the writer through a bounded channel, so a slow writer slows the reading (the transport
//! keeps the connection alive meanwhile).
//!
//! A lost walsender connection is opened again (`crate::reconnect`) and streaming starts
//! again on the same slot from its confirmed position (`Lsn::ZERO`): every transaction that
//! committed after it comes again, whole. What had arrived of a transaction not committed yet
//! is dropped (its keys, the extractor's open and streamed transactions, the decoder's block
//! state); keys already handed to the writer stay there. The writer never acknowledges a
//! position whose keys are not flushed, so nothing after the confirmed position is missing,
//! and a transaction handed over twice is flushed twice, which is harmless.

use super::changes::ChangeExtractor;
use super::writer::{Acker, StreamItem};
use crate::conn::ConnInfo;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::reconnect::{self, Outage};
use crate::replication::pgoutput::Decoder;
use crate::replication::transport::{Feedback, ReplicationConnection, ReplicationStream, StreamEvent, StreamOptions};
use futures_util::FutureExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Notify};

/// Positions seen on the stream, for lag reporting.
#[derive(Debug, Default)]
pub struct StreamPositions {
    /// The server's end of WAL as of the last message.
    pub server_wal_end: AtomicU64,
    /// Messages decoded.
    pub messages: AtomicU64,
}

impl StreamPositions {
    pub fn server_wal_end(&self) -> Lsn {
        Lsn(self.server_wal_end.load(Ordering::Relaxed))
    }
}

/// Where the stream comes from: a walsender connection streaming one slot.
pub struct Source {
    conn: ConnInfo,
    slot: String,
    options: StreamOptions,
}

impl Source {
    /// `conn` opens the walsender connections (its application name and reconnect timeout
    /// included).
    pub fn new(conn: ConnInfo, slot: String, options: StreamOptions) -> Source {
        Source { conn, slot, options }
    }

    /// Opens a walsender connection and streams from the slot's confirmed position.
    pub async fn open(&self) -> Result<ReplicationStream> {
        let repl = ReplicationConnection::connect(&self.conn).await?;
        repl.start_replication(&self.slot, Lsn::ZERO, &self.options).await.context("starting the stream")
    }

    /// [`Source::open`] until it works, within the outage's time. Right after a loss the
    /// slot may still be held by the old walsender (`Busy`): that is retried too.
    async fn reopen(&self, outage: &mut Outage) -> Result<ReplicationStream> {
        let stream = reconnect::retry(self.conn.reconnect_timeout, outage, "starting the stream again", || self.open()).await?;
        reconnect::reconnected(&self.conn, outage);
        Ok(stream)
    }
}

/// Acknowledgements to the slot, through whichever stream is current: the writer holds one
/// [`Acker`] for the whole run while the stream under it is replaced after a loss.
pub struct Acks {
    current: Mutex<(Lsn, Feedback)>,
}

impl Acks {
    pub fn new(feedback: Feedback) -> Arc<Acks> {
        Arc::new(Acks { current: Mutex::new((Lsn::ZERO, feedback)) })
    }

    pub fn acker(self: &Arc<Self>) -> Acker {
        let acks = self.clone();
        Arc::new(move |lsn| acks.ack(lsn))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Lsn, Feedback)> {
        // Two plain assignments under the lock: a poisoned one still holds good data.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ack(&self, lsn: Lsn) {
        let mut current = self.lock();
        current.0 = current.0.max(lsn);
        report(&current.1, current.0);
    }

    /// A new stream takes over; it starts from what was acknowledged on the old one, which
    /// the slot may not have received before the loss.
    fn switch_to(&self, feedback: Feedback) {
        let mut current = self.lock();
        report(&feedback, current.0);
        current.1 = feedback;
    }
}

fn report(feedback: &Feedback, lsn: Lsn) {
    if lsn == Lsn::ZERO {
        return;
    }
    feedback.set_written(lsn);
    feedback.set_flushed(lsn);
    feedback.set_applied(lsn);
    feedback.send_status_now();
}

/// The pump's inputs and outputs, for the whole run.
pub struct Pump {
    pub source: Source,
    pub acks: Arc<Acks>,
    pub extractor: ChangeExtractor,
    pub items: mpsc::Sender<StreamItem>,
    pub positions: Arc<StreamPositions>,
    /// Told when the apply session cannot reach the server. The stream is then let go too: a
    /// walsender of a server shutting down waits for its client to confirm everything it
    /// sent, which the writer cannot do without a session, and the shutdown would wait for
    /// ever (until the reconnect timeout ended the run).
    pub release: Arc<Notify>,
}

impl Pump {
    /// Runs until `stop` fires (then returns the stream, to be stopped cleanly), the writer
    /// goes away, the stream fails in a way a new connection cannot help, or the reconnect
    /// timeout passes.
    pub async fn run(mut self, mut stream: ReplicationStream, mut stop: oneshot::Receiver<()>) -> Result<ReplicationStream> {
        let mut decoder = Decoder::new();
        // Keys of the transaction being read; they leave with its commit.
        let mut keys = Vec::new();
        let mut out = Vec::new();
        let mut outage = Outage::new();
        loop {
            let received = tokio::select! {
                biased;
                _ = &mut stop => return Ok(stream),
                _ = self.release.notified() => Err(Error::new(
                    ErrorKind::Connection,
                    "the apply session cannot reach the server (restarting?), so the stream is let go too",
                )),
                batch = stream.recv() => batch.and_then(|b| {
                    b.ok_or_else(|| Error::new(ErrorKind::Connection, "the server ended the replication stream"))
                }),
            };
            let batch = match received {
                Ok(batch) => batch,
                Err(e) if e.kind().is_lost_connection() => {
                    let dropped = keys.len() + self.extractor.reset();
                    keys.clear();
                    decoder = Decoder::new();
                    let what = format!(
                        "the replication stream; {dropped} changed keys of transactions not committed yet are dropped and come again from the slot's confirmed position"
                    );
                    reconnect::lost(&self.source.conn, &mut outage, e, &what)?;
                    drop(stream);
                    stream = tokio::select! {
                        biased;
                        _ = &mut stop => return Err(Error::new(ErrorKind::Connection, "the run stopped while the stream was being started again")),
                        s = self.source.reopen(&mut outage) => s?,
                    };
                    // A notice from before the new stream was about the old one.
                    let _ = self.release.notified().now_or_never();
                    self.acks.switch_to(stream.feedback());
                    continue;
                }
                Err(e) => return Err(e),
            };
            outage.end();
            for event in batch {
                match event {
                    StreamEvent::XLogData { wal_end, data, .. } => {
                        self.positions.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                        self.positions.messages.fetch_add(1, Ordering::Relaxed);
                        let message = decoder.decode(&data)?;
                        self.extractor.on_message(message, &mut keys, &mut out)?;
                    }
                    StreamEvent::Keepalive { wal_end, .. } => {
                        self.positions.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                        if keys.is_empty() {
                            out.extend(self.extractor.idle_item(wal_end));
                        }
                    }
                }
            }
            for item in out.drain(..) {
                if self.items.send(item).await.is_err() {
                    return Ok(stream);
                }
            }
        }
    }
}
