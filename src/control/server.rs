//! The listener: a Unix socket (`--serve-socket-file`) and optionally a TCP port on
//! 127.0.0.1 (`--serve-tcp-port`). Each connection sends one line, gets one answer, and is
//! closed; everything else is [`Dispatcher`]'s.
//!
//! Invariants:
//! - the socket file has mode 0600 from the moment its path can be connected to: it is bound
//!   inside a private (0700) directory, restricted, then linked into place, and the link
//!   fails rather than replace a file that appeared meanwhile;
//! - a path that holds a live socket (another run listening) or anything but a socket is
//!   refused; a stale socket left by a killed run is replaced;
//! - the socket file is removed when the handle shuts down or is dropped, but only if it is
//!   still the one this process created;
//! - a connection is bounded: one line of at most [`MAX_LINE`] bytes, read within
//!   [`READ_TIMEOUT`], answered within [`WRITE_TIMEOUT`], then the rest of its input is
//!   discarded (so closing does not reset the connection under the answer); at most
//!   [`MAX_CONNECTIONS`] are served at once, the others are closed unanswered.

use super::{ControlContext, Dispatcher};
use crate::config::ControlConfig;
use crate::error::{Error, ErrorKind, Result};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The longest command line read; a throttle query is the longest thing anyone sends.
pub const MAX_LINE: usize = 4096;
/// A client that connects and sends nothing is answered with an error after this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that does not read its answer is dropped after this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once, so a flood cannot pile up tasks.
pub const MAX_CONNECTIONS: usize = 16;
/// At shutdown, answers in flight (a `panic`'s among them) get this long to be written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Input discarded after the answer, at most.
const DRAIN_LIMIT: u64 = 1 << 20;
/// After a failed accept (e.g. out of file descriptors), wait this long before the next,
/// rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub struct ControlServer;

/// What answers a command line: a run's [`Dispatcher`], or a fleet's commands.
pub trait Answer: Send + Sync + 'static {
    fn answer<'a>(&'a self, line: &'a str) -> futures_util::future::BoxFuture<'a, String>;
}

impl Answer for Dispatcher {
    fn answer<'a>(&'a self, line: &'a str) -> futures_util::future::BoxFuture<'a, String> {
        Box::pin(Dispatcher::answer(self, line))
    }
}

impl ControlServer {
    /// Binds what `cfg` asks for and serves it on the current runtime until the handle is
    /// shut down or dropped. A `tcp_port` of 0 lets the kernel choose (for tests); the
    /// handle tells which.
    pub fn spawn(cfg: &ControlConfig, ctx: ControlContext) -> Result<ControlHandle> {
        Self::spawn_answering(cfg, Arc::new(Dispatcher::new(ctx)))
    }

    /// As [`ControlServer::spawn`], with the commands answered by `dispatcher`.
    pub fn spawn_answering(cfg: &ControlConfig, dispatcher: Arc<dyn Answer>) -> Result<ControlHandle> {
        // TCP first: it leaves nothing behind when the socket file then fails, and a socket
        // file bound first is removed (dropped) when the port then fails.
        let tcp = cfg.tcp_port.map(bind_tcp).transpose()?;
        let unix = cfg.socket_file.as_deref().map(bind_unix).transpose()?;
        let (stop, stopped) = watch::channel(false);
        let mut handle = ControlHandle { socket: None, tcp_addr: None, stop, tasks: Vec::new() };
        if let Some((listener, file)) = unix {
            tracing::info!(path = %file.path.display(), "control socket listening");
            handle.socket = Some(file);
            handle.tasks.push(tokio::spawn(accept_loop(listener, dispatcher.clone(), stopped.clone())));
        }
        if let Some(listener) = tcp {
            let addr = listener.local_addr().map_err(|e| io_error("reading the control port's address", e))?;
            tracing::info!(%addr, "control port listening");
            handle.tcp_addr = Some(addr);
            handle.tasks.push(tokio::spawn(accept_loop(listener, dispatcher, stopped)));
        }
        Ok(handle)
    }
}

/// Keeps the listeners running; shutting down or dropping it stops them and removes the
/// socket file.
pub struct ControlHandle {
    socket: Option<SocketFile>,
    tcp_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlHandle {
    pub fn socket_file(&self) -> Option<&Path> {
        self.socket.as_ref().map(|s| s.path.as_path())
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Stops accepting, removes the socket file, and lets answers in flight finish.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        // Removed first, so no new client reaches a server that is going away.
        drop(self.socket.take());
        for task in self.tasks.drain(..) {
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "control listener ended abnormally");
            }
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // `socket` removes its file as it is dropped.
    }
}

/// A listener of either kind, as the accept loop needs it.
trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

async fn accept_loop<L: Listener>(listener: L, dispatcher: Arc<dyn Answer>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A dropped sender (the handle dropped) stops the loop as well.
            // The guard `wait_for` returns is dropped inside, as it may not cross threads.
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept_one() => match accepted {
                Ok(stream) if connections.len() < MAX_CONNECTIONS => {
                    connections.spawn(serve(stream, dispatcher.clone()));
                }
                Ok(_) => tracing::warn!(limit = MAX_CONNECTIONS, "control connection closed unanswered: too many at once"),
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a control connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!(left = connections.len(), "control connections still open at shutdown are cut");
    }
}

/// One connection: read a line, answer it, close.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, dispatcher: Arc<dyn Answer>) {
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_line(&mut read)).await {
        Ok(Ok(line)) => dispatcher.answer(&line).await,
        Ok(Err(why)) => format!("error: {why}\n"),
        Err(_) => format!("error: no command within {READ_TIMEOUT:?}\n"),
    };
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        write.write_all(answer.as_bytes()).await?;
        write.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("a control client left before reading its answer");
        return;
    }
    // Closing with input unread makes the kernel reset the connection, and the client may
    // lose the answer with it (an overlong line, or a second line gh-ost would ignore too):
    // discard what is left, within bounds, until the client closes its side.
    let (mut rest, mut sink) = ((&mut read).take(DRAIN_LIMIT), tokio::io::sink());
    let _ = tokio::time::timeout(READ_TIMEOUT, tokio::io::copy(&mut rest, &mut sink)).await;
}

/// Reads up to a newline or the end of input, at most [`MAX_LINE`] bytes.
async fn read_line<R: AsyncBufRead + Unpin>(read: &mut R) -> std::result::Result<String, String> {
    let mut buf = Vec::new();
    (&mut *read).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).await.map_err(|e| format!("reading the command: {e}"))?;
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        return Err(format!("the command is longer than {MAX_LINE} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "the command is not UTF-8".to_string())
}

fn bind_tcp(port: u16) -> Result<tokio::net::TcpListener> {
    let what = || format!("listening on 127.0.0.1:{port} (--serve-tcp-port)");
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| io_error(what(), e))?;
    listener.set_nonblocking(true).map_err(|e| io_error(what(), e))?;
    tokio::net::TcpListener::from_std(listener).map_err(|e| io_error(what(), e))
}

/// The socket file this process created, identified by its inode so that removing it
/// never removes another process's file at the same path. Removed when dropped.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove the control socket file");
                }
            }
            Ok(_) => tracing::debug!(path = %self.path.display(), "the control socket path now holds another file; left alone"),
            Err(_) => {}
        }
    }
}

fn bind_unix(path: &Path) -> Result<(tokio::net::UnixListener, SocketFile)> {
    clear_stale(path)?;
    let what = || format!("creating the control socket {} (--serve-socket-file)", path.display());
    let private = PrivateDir::create(path).map_err(|e| io_error(what(), e))?;
    let temp = private.path.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&temp).map_err(|e| io_error(what(), e))?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).map_err(|e| io_error(what(), e))?;
    let meta = std::fs::symlink_metadata(&temp).map_err(|e| io_error(what(), e))?;
    // link(2) never replaces: if another process took the path since the check, fail.
    std::fs::hard_link(&temp, path).map_err(|e| io_error(what(), e))?;
    drop(private);
    let file = SocketFile { path: path.to_path_buf(), dev: meta.dev(), ino: meta.ino() };
    listener.set_nonblocking(true).map_err(|e| io_error(what(), e))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| io_error(what(), e))?;
    Ok((listener, file))
}

/// Refuses a path that holds anything but a dead socket, and removes a dead one.
fn clear_stale(path: &Path) -> Result<()> {
    let flag = |why: String| Error::config(format!("--serve-socket-file {}: {why}", path.display()));
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(flag(e.to_string())),
    };
    if !meta.file_type().is_socket() {
        return Err(flag("exists and is not a socket; remove it or choose another path".into()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(flag("another process is listening on it (another pg-ghost run?)".into())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale control socket file");
            std::fs::remove_file(path).map_err(|e| flag(format!("cannot remove the stale socket: {e}")))
        }
        Err(e) => Err(flag(format!("cannot tell whether it is in use: {e}"))),
    }
}

/// A 0700 directory beside the socket path (same filesystem, so the socket can be linked
/// into place), removed with what is in it when dropped.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(beside: &Path) -> io::Result<PrivateDir> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let parent = match beside.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Short, so the socket path inside stays within the 108 bytes a socket address holds.
        let path = parent.join(format!(".pgg{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(PrivateDir { path })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a temporary directory");
        }
    }
}

fn io_error(what: impl Into<String>, e: io::Error) -> Error {
    Error::with_source(ErrorKind::Io, format!("{}: {e}", what.into()), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_one_bounded_line() {
        async fn line(input: &[u8]) -> std::result::Result<String, String> {
            read_line(&mut &input[..]).await
        }
        let mut two = &b"status\nmore"[..];
        assert_eq!(read_line(&mut two).await, Ok("status\n".into()));
        assert_eq!(two, b"more", "the rest is left for the drain");
        assert_eq!(line(b"sup").await, Ok("sup".into()));
        assert_eq!(line(b"").await, Ok(String::new()));
        let exact = "x".repeat(MAX_LINE);
        assert_eq!(line(exact.as_bytes()).await, Ok(exact.clone()));
        assert_eq!(line(format!("{exact}\n").as_bytes()).await, Ok(format!("{exact}\n")));
        let long = "x".repeat(MAX_LINE + 1);
        assert_eq!(line(long.as_bytes()).await, Err(format!("the command is longer than {MAX_LINE} bytes")));
        assert_eq!(line(b"st\xffatus\n").await, Err("the command is not UTF-8".into()));
    }
}
