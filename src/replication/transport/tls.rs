//! TLS under the walsender transport. The stream's two threads share one socket, and a TLS
//! session is a single state machine, so rustls's `ClientConnection` is driven here by hand:
//! the state sits behind a mutex, and a thread holds it only to hand ciphertext over or take
//! plaintext out, never while it waits on the socket. The same state serves the async
//! command mode (tokio) and the blocking threads of a stream, and moves between the two
//! with the socket, as a plain socket does.

use crate::error::{Error, ErrorKind, Result};
use crate::tls::TlsPlan;
use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Ciphertext is read from the socket in pieces of this size.
const CIPHERTEXT_CHUNK: usize = 64 * 1024;

struct State {
    conn: ClientConnection,
    /// Ciphertext read from the socket that rustls has not taken yet.
    pending: Vec<u8>,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A thread that panicked holding the lock leaves a state worth nothing more than an
    // error on the next read; the connection is dropped after it anyway.
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tls_io_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl State {
    /// Plaintext already decrypted, or `None` when there is none yet.
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.conn.reader().read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Hands one piece of pending ciphertext to rustls. One piece at a time: rustls refuses
    /// more once the plaintext it holds is not read.
    fn feed_once(&mut self) -> io::Result<()> {
        let mut rest = &self.pending[..];
        let taken = self.conn.read_tls(&mut rest)?;
        self.pending.drain(..taken);
        self.conn.process_new_packets().map_err(tls_io_error)?;
        Ok(())
    }

    /// Tells rustls the socket reached its end.
    fn end_of_input(&mut self) -> io::Result<()> {
        self.conn.read_tls(&mut io::empty())?;
        self.conn.process_new_packets().map_err(tls_io_error)?;
        Ok(())
    }

    fn take(&mut self, ciphertext: &[u8]) -> io::Result<()> {
        if ciphertext.is_empty() {
            return self.end_of_input();
        }
        self.pending.extend_from_slice(ciphertext);
        self.feed_once()
    }
}

/// A TLS session over a TCP socket in tokio's reactor.
pub(crate) struct AsyncTls {
    tcp: TcpStream,
    state: Shared,
    scratch: Vec<u8>,
}

impl AsyncTls {
    /// The TLS handshake on a socket whose server has accepted the SSLRequest.
    pub(crate) async fn handshake(tcp: TcpStream, plan: &TlsPlan) -> Result<AsyncTls> {
        let conn = ClientConnection::new(plan.tls_config()?, plan.server_name.clone())
            .map_err(|e| Error::new(ErrorKind::Config, format!("cannot start TLS: {e}")))?;
        let mut tls = AsyncTls { tcp, state: Arc::new(Mutex::new(State { conn, pending: Vec::new() })), scratch: vec![0; CIPHERTEXT_CHUNK] };
        std::future::poll_fn(|cx| tls.poll_handshake(cx))
            .await
            .map_err(|e| crate::tls::io_failure(e, plan.verification, "during the TLS handshake"))?;
        Ok(tls)
    }

    /// The server's certificate, for channel binding.
    pub(crate) fn peer_certificate(&self) -> Option<Vec<u8>> {
        lock(&self.state).conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec())
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send_ciphertext(cx))?;
            if !lock(&self.state).conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_receive_ciphertext(cx))?;
        }
    }

    /// Writes out all the ciphertext rustls has queued.
    fn poll_send_ciphertext(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = lock(&self.state);
        while state.conn.wants_write() {
            let mut out = PollWriter { tcp: &mut self.tcp, cx };
            match state.conn.write_tls(&mut out) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads one piece of ciphertext from the socket (or its end) into rustls.
    fn poll_receive_ciphertext(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !lock(&self.state).pending.is_empty() {
            return Poll::Ready(lock(&self.state).feed_once());
        }
        let mut buf = ReadBuf::new(&mut self.scratch);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        let read = buf.filled();
        Poll::Ready(lock(&self.state).take(read))
    }

    pub(crate) fn into_std(self) -> io::Result<StdTls> {
        let tcp = self.tcp.into_std()?;
        Ok(StdTls { tcp, state: self.state, scratch: self.scratch })
    }
}

/// `Write` over a tokio socket for rustls: not ready is `WouldBlock`, with the task's
/// waker registered.
struct PollWriter<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for PollWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for AsyncTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(n) = lock(&this.state).read_plain(buf.initialize_unfilled())? {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_receive_ciphertext(cx))?;
            // Reading may have produced something to send (a key update's answer, an alert).
            let _ = this.poll_send_ciphertext(cx)?;
        }
    }
}

impl AsyncWrite for AsyncTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send_ciphertext(cx))?;
        let n = lock(&this.state).conn.writer().write(buf)?;
        // What does not go out now waits in rustls for the next write or flush.
        let _ = this.poll_send_ciphertext(cx)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_ciphertext(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        lock(&this.state).conn.send_close_notify();
        ready!(this.poll_send_ciphertext(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// The same TLS session over the blocking socket of a stream's threads.
pub(crate) struct StdTls {
    tcp: std::net::TcpStream,
    state: Shared,
    scratch: Vec<u8>,
}

impl StdTls {
    pub(crate) fn tcp(&self) -> &std::net::TcpStream {
        &self.tcp
    }

    pub(crate) fn try_clone(&self) -> io::Result<StdTls> {
        Ok(StdTls { tcp: self.tcp.try_clone()?, state: self.state.clone(), scratch: vec![0; CIPHERTEXT_CHUNK] })
    }

    pub(crate) fn into_tokio(self) -> io::Result<AsyncTls> {
        Ok(AsyncTls { tcp: TcpStream::from_std(self.tcp)?, state: self.state, scratch: self.scratch })
    }

    fn send_ciphertext(state: &mut State, mut tcp: &std::net::TcpStream) -> io::Result<()> {
        while state.conn.wants_write() {
            state.conn.write_tls(&mut tcp)?;
        }
        Ok(())
    }
}

impl Read for StdTls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut state = lock(&self.state);
                if let Some(n) = state.read_plain(buf)? {
                    return Ok(n);
                }
                if !state.pending.is_empty() {
                    state.feed_once()?;
                    StdTls::send_ciphertext(&mut state, &self.tcp)?;
                    continue;
                }
            }
            // Not under the lock: the writer thread must be able to send meanwhile. A read
            // timeout comes back from here as it would from a plain socket.
            let n = (&self.tcp).read(&mut self.scratch)?;
            let mut state = lock(&self.state);
            state.take(&self.scratch[..n])?;
            StdTls::send_ciphertext(&mut state, &self.tcp)?;
        }
    }
}

impl Write for StdTls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = lock(&self.state);
        state.conn.writer().write_all(buf)?;
        StdTls::send_ciphertext(&mut state, &self.tcp)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut state = lock(&self.state);
        StdTls::send_ciphertext(&mut state, &self.tcp)
    }
}
