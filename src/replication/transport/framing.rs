//! The socket and the message framing under the walsender transport.
//!
//! `Framed` owns the socket and two buffers. Backend messages are cut out of the read
//! buffer without copying (`Bytes` slices of it), so an XLogData payload handed to the
//! consumer is the very memory the socket filled. The only tag postgres-protocol does not
//! parse is CopyBothResponse (`'W'`), recognised here before the library sees it.

use super::tls::{AsyncTls, StdTls};
use crate::conn::{Endpoint, TcpSettings};
use crate::error::{Error, ErrorKind, Result};
use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Header, Message};
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Room asked for before every read. Large enough that, once the socket has been allowed
/// to fill, one read takes everything a busy walsender queued meanwhile.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<AsyncTls>),
}

impl Socket {
    pub(crate) async fn connect(endpoint: &Endpoint, tcp: &TcpSettings) -> io::Result<Socket> {
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                // Status updates are a few dozen bytes that must leave at once: a keepalive
                // reply held back by Nagle's algorithm is a reply the server may time out on.
                stream.set_nodelay(true)?;
                // The stream waits for the server's messages; a server gone with the network
                // is found by these, as on the SQL sessions (see `TcpSettings`).
                let socket = socket2::SockRef::from(&stream);
                socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(tcp.idle).with_interval(tcp.interval).with_retries(tcp.count))?;
                #[cfg(target_os = "linux")]
                if tcp.user_timeout.is_some() {
                    socket.set_tcp_user_timeout(tcp.user_timeout)?;
                }
                Ok(Socket::Tcp(stream))
            }
            Endpoint::Unix { dir, port } => Ok(Socket::Unix(UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?)),
        }
    }
}

impl Socket {
    /// Leaves tokio's reactor: a socket in no epoll set wakes nobody when data arrives,
    /// which is what lets a sleeping reader thread leave the walsender undisturbed.
    pub(crate) fn into_std(self) -> io::Result<StdSocket> {
        let s = match self {
            Socket::Tcp(s) => StdSocket::Tcp(s.into_std()?),
            Socket::Unix(s) => StdSocket::Unix(s.into_std()?),
            Socket::Tls(s) => StdSocket::Tls(Box::new(s.into_std()?)),
        };
        s.set_nonblocking(false)?;
        Ok(s)
    }
}

/// The same socket in blocking mode, for the reader and writer threads of a stream.
pub(crate) enum StdSocket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
    Tls(Box<StdTls>),
}

impl StdSocket {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            StdSocket::Tcp(s) => s.set_nonblocking(on),
            StdSocket::Unix(s) => s.set_nonblocking(on),
            StdSocket::Tls(s) => s.tcp().set_nonblocking(on),
        }
    }

    pub(crate) fn try_clone(&self) -> io::Result<StdSocket> {
        Ok(match self {
            StdSocket::Tcp(s) => StdSocket::Tcp(s.try_clone()?),
            StdSocket::Unix(s) => StdSocket::Unix(s.try_clone()?),
            StdSocket::Tls(s) => StdSocket::Tls(Box::new(s.try_clone()?)),
        })
    }

    pub(crate) fn set_read_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            StdSocket::Tcp(s) => s.set_read_timeout(t),
            StdSocket::Unix(s) => s.set_read_timeout(t),
            StdSocket::Tls(s) => s.tcp().set_read_timeout(t),
        }
    }

    /// Back into tokio's reactor (needs a runtime context).
    pub(crate) fn into_tokio(self) -> io::Result<Socket> {
        self.set_read_timeout(None)?;
        self.set_nonblocking(true)?;
        Ok(match self {
            StdSocket::Tcp(s) => Socket::Tcp(TcpStream::from_std(s)?),
            StdSocket::Unix(s) => Socket::Unix(UnixStream::from_std(s)?),
            StdSocket::Tls(s) => Socket::Tls(Box::new(s.into_tokio()?)),
        })
    }
}

impl io::Read for StdSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StdSocket::Tcp(s) => s.read(buf),
            StdSocket::Unix(s) => s.read(buf),
            StdSocket::Tls(s) => s.read(buf),
        }
    }
}

impl io::Write for StdSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StdSocket::Tcp(s) => s.write(buf),
            StdSocket::Unix(s) => s.write(buf),
            StdSocket::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            StdSocket::Tcp(s) => s.flush(),
            StdSocket::Unix(s) => s.flush(),
            StdSocket::Tls(s) => s.flush(),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A backend message, or the CopyBothResponse postgres-protocol does not know.
pub(crate) enum Backend {
    Message(Message),
    CopyBothResponse,
}

impl Backend {
    /// A short name for messages that arrive where they should not.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Backend::CopyBothResponse => "CopyBothResponse",
            Backend::Message(m) => match m {
                Message::AuthenticationOk => "AuthenticationOk",
                Message::BackendKeyData(_) => "BackendKeyData",
                Message::CommandComplete(_) => "CommandComplete",
                Message::CopyData(_) => "CopyData",
                Message::CopyDone => "CopyDone",
                Message::CopyInResponse(_) => "CopyInResponse",
                Message::CopyOutResponse(_) => "CopyOutResponse",
                Message::DataRow(_) => "DataRow",
                Message::EmptyQueryResponse => "EmptyQueryResponse",
                Message::ErrorResponse(_) => "ErrorResponse",
                Message::NoticeResponse(_) => "NoticeResponse",
                Message::ParameterStatus(_) => "ParameterStatus",
                Message::ReadyForQuery(_) => "ReadyForQuery",
                Message::RowDescription(_) => "RowDescription",
                _ => "an unexpected message",
            },
        }
    }
}

pub(crate) struct Framed {
    socket: Socket,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Framed {
    pub(crate) fn new(socket: Socket) -> Framed {
        Framed::from_parts(socket, BytesMut::with_capacity(READ_CHUNK))
    }

    /// The socket and what was read from it but not parsed yet. Anything unsent in the
    /// write buffer is dropped: callers detach only between commands.
    pub(crate) fn into_parts(self) -> (Socket, BytesMut) {
        (self.socket, self.rbuf)
    }

    pub(crate) fn from_parts(socket: Socket, rbuf: BytesMut) -> Framed {
        Framed {
            socket,
            rbuf,
            wbuf: BytesMut::with_capacity(1024),
        }
    }

    /// Where frontend messages are encoded before [`Framed::flush`] sends them.
    pub(crate) fn write_buf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    pub(crate) async fn flush(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.socket
            .write_all(&self.wbuf)
            .await
            .map_err(|e| io_error(e, "sending to the server"))?;
        // A TLS session may hold back ciphertext the socket would not take at once.
        self.socket.flush().await.map_err(|e| io_error(e, "sending to the server"))?;
        self.wbuf.clear();
        Ok(())
    }

    /// One read from the socket into the read buffer; returns the number of bytes read.
    /// Cancel-safe (nothing is read when the future is dropped). EOF is an error: the
    /// server never closes a healthy connection on its own.
    pub(crate) async fn read_some(&mut self) -> Result<usize> {
        self.rbuf.reserve(READ_CHUNK);
        let n = self
            .socket
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| io_error(e, "reading from the server"))?;
        if n == 0 {
            return Err(Error::new(ErrorKind::Connection, "the server closed the connection (EOF)"));
        }
        Ok(n)
    }

    /// The next complete message already in the read buffer, if any.
    pub(crate) fn parse(&mut self) -> Result<Option<Backend>> {
        parse_frame(&mut self.rbuf)
    }

    /// The next message, reading as much as needed.
    pub(crate) async fn recv(&mut self) -> Result<Backend> {
        loop {
            if let Some(m) = self.parse()? {
                return Ok(m);
            }
            self.read_some().await?;
        }
    }

    pub(crate) async fn shutdown(&mut self) {
        // Best effort: the peer may already be gone, and there is nothing left to tell it.
        let _ = self.socket.shutdown().await;
    }
}

fn io_error(e: io::Error, what: &str) -> Error {
    // The io::Error conversion decides Connection (reset, EOF, refused) versus Io; a TLS
    // alert (the server refused our client certificate, say) is explained.
    crate::tls::io_failure(e, "as configured", what)
}

/// Cuts one message off the front of `buf`, or returns `None` when it is not complete yet.
pub(crate) fn parse_frame(buf: &mut BytesMut) -> Result<Option<Backend>> {
    let header = match Header::parse(buf).map_err(|e| Error::protocol(format!("malformed message header: {e}")))? {
        Some(h) => h,
        None => return Ok(None),
    };
    if header.tag() == COPY_BOTH_RESPONSE_TAG {
        // Header::parse guarantees len >= 4, so this cannot underflow or wrap.
        let total = header.len() as usize + 1;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(total);
        return Ok(Some(Backend::CopyBothResponse));
    }
    Message::parse(buf)
        .map(|m| m.map(Backend::Message))
        .map_err(|e| Error::protocol(format!("malformed message from the server (tag {:?}): {e}", header.tag() as char)))
}

/// The fields of an ErrorResponse or NoticeResponse that matter to a reader.
#[derive(Debug, Default)]
pub(crate) struct ServerMessage {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerMessage {
    pub(crate) fn read(mut fields: ErrorFields<'_>) -> ServerMessage {
        let mut m = ServerMessage::default();
        // A malformed field list still tells us what it managed to say before the damage.
        while let Ok(Some(f)) = fields.next() {
            let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'V' => m.severity = Some(value),
                b'S' if m.severity.is_none() => m.severity = Some(value),
                b'C' => m.code = Some(value),
                b'M' => m.message = Some(value),
                b'D' => m.detail = Some(value),
                b'H' => m.hint = Some(value),
                _ => {}
            }
        }
        m
    }

    pub(crate) fn text(&self) -> String {
        let mut text = self
            .message
            .clone()
            .unwrap_or_else(|| "the server reported an error without a message".into());
        if let Some(d) = &self.detail {
            text.push_str(". ");
            text.push_str(d);
        }
        if let Some(h) = &self.hint {
            text.push_str(". Hint: ");
            text.push_str(h);
        }
        text
    }

    /// The error, its kind mapped from the SQLSTATE in the one place that does it.
    pub(crate) fn into_error(self) -> Error {
        let text = self.text();
        match self.code {
            Some(code) => Error::new(ErrorKind::from_sqlstate(&code), text).set_sqlstate(code),
            None => Error::new(ErrorKind::Sql, text),
        }
    }
}

pub(crate) fn server_error(fields: ErrorFields<'_>) -> Error {
    ServerMessage::read(fields).into_error()
}

pub(crate) fn log_notice(fields: ErrorFields<'_>) {
    let m = ServerMessage::read(fields);
    tracing::info!(
        severity = m.severity.as_deref().unwrap_or(""),
        code = m.code.as_deref().unwrap_or(""),
        "server notice: {}",
        m.text()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn recognises_copy_both_response_and_what_follows() {
        let mut buf = BytesMut::new();
        buf.put_slice(&frame(b'W', &[0, 0, 0]));
        buf.put_slice(&frame(b'd', b"k0123456789abcdef\x01"));
        buf.put_slice(&frame(b'Z', b"I")[..3]);
        assert!(matches!(parse_frame(&mut buf), Ok(Some(Backend::CopyBothResponse))));
        match parse_frame(&mut buf) {
            Ok(Some(Backend::Message(Message::CopyData(d)))) => assert_eq!(d.data().len(), 18),
            _ => panic!("expected CopyData"),
        }
        // A partial message stays in the buffer until the rest arrives.
        assert!(matches!(parse_frame(&mut buf), Ok(None)));
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn incomplete_copy_both_waits() {
        let mut buf = BytesMut::from(&frame(b'W', &[0, 0, 0])[..6]);
        assert!(matches!(parse_frame(&mut buf), Ok(None)));
        assert_eq!(buf.len(), 6);
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 1][..]);
        assert_eq!(parse_frame(&mut buf).err().map(|e| e.kind()), Some(ErrorKind::Protocol));
        let mut buf = BytesMut::from(&frame(b'?', b"xyz")[..]);
        assert_eq!(parse_frame(&mut buf).err().map(|e| e.kind()), Some(ErrorKind::Protocol));
    }

    #[test]
    fn error_response_maps_sqlstate() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        let mut buf = BytesMut::from(&frame(b'E', body)[..]);
        let e = match parse_frame(&mut buf) {
            Ok(Some(Backend::Message(Message::ErrorResponse(b)))) => server_error(b.fields()),
            _ => panic!("expected ErrorResponse"),
        };
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert_eq!(e.sqlstate(), Some("28P01"));
        assert!(e.to_string().contains("password authentication failed"), "{e}");
    }
}
