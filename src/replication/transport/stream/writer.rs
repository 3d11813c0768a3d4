//! The writer thread of a stream: standby status updates (periodic, on request, in answer
//! to keepalives), then CopyDone. It waits on a condition variable, never on the consumer
//! or the reader, so the server hears from us however far behind the consumer is.

use super::{bump, Shared};
use crate::error::{Error, Result};
use crate::replication::transport::framing::StdSocket;
use crate::replication::transport::wire::encode_status_update;
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub(super) struct Writer {
    pub(super) socket: StdSocket,
    pub(super) shared: Arc<Shared>,
    pub(super) status_interval: Duration,
    pub(super) label: String,
}

impl Writer {
    pub(super) fn run(mut self) {
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
            self.socket
                .write_all(&out)
                .map_err(|e| Error::from(e).context("sending a standby status update"))?;
            if last {
                return Ok(());
            }
            next_status = Instant::now() + self.status_interval;
        }
    }
}
