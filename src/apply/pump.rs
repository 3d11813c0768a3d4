//! Moves the replication stream into the apply loop: XLogData is decoded and reduced to
//! keys and markers (`changes`), keepalives become idle positions, and everything goes to
//! the writer through a bounded channel, so a slow writer slows the reading (the transport
//! keeps the connection alive meanwhile).

use super::changes::ChangeExtractor;
use super::writer::StreamItem;
use crate::error::{Error, ErrorKind, Result};
use crate::lsn::Lsn;
use crate::replication::pgoutput::Decoder;
use crate::replication::transport::{ReplicationStream, StreamEvent};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

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

/// Runs until `stop` fires (then returns the stream, to be stopped cleanly), the writer
/// goes away, or the stream fails.
pub async fn pump(
    mut stream: ReplicationStream,
    mut extractor: ChangeExtractor,
    items: mpsc::Sender<StreamItem>,
    positions: Arc<StreamPositions>,
    mut stop: oneshot::Receiver<()>,
) -> Result<ReplicationStream> {
    let mut decoder = Decoder::new();
    // Keys of the transaction being read; they leave with its commit.
    let mut keys = Vec::new();
    let mut out = Vec::new();
    loop {
        let batch = tokio::select! {
            biased;
            _ = &mut stop => return Ok(stream),
            batch = stream.recv() => batch?,
        };
        let Some(batch) = batch else {
            return Err(Error::new(ErrorKind::Connection, "the replication stream ended"));
        };
        for event in batch {
            match event {
                StreamEvent::XLogData { wal_end, data, .. } => {
                    positions.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                    positions.messages.fetch_add(1, Ordering::Relaxed);
                    let message = decoder.decode(&data)?;
                    extractor.on_message(message, &mut keys, &mut out)?;
                }
                StreamEvent::Keepalive { wal_end, .. } => {
                    positions.server_wal_end.fetch_max(wal_end.0, Ordering::Relaxed);
                    if keys.is_empty() {
                        out.extend(extractor.idle_item(wal_end));
                    }
                }
            }
        }
        for item in out.drain(..) {
            if items.send(item).await.is_err() {
                return Ok(stream);
            }
        }
    }
}
