//! The scrape endpoint: a minimal HTTP/1.1 responder for `GET /metrics` (and `HEAD`).
//!
//! A scrape is one request on one connection; nothing more is spoken. Each connection is
//! bounded: a request head of at most [`MAX_HEAD`] bytes read within [`READ_TIMEOUT`], an
//! answer written within [`WRITE_TIMEOUT`] with `Connection: close`, then closed; at most
//! [`MAX_CONNECTIONS`] are served at once, the others are closed unanswered. A request
//! body, keep-alive and pipelining are not supported (Prometheus needs none of them).
//!
//! The listener is bound by [`MetricsServer::bind`] before the run touches the database,
//! so an address that cannot be used stops the run before anything is created.

use super::{render, Sources, CONTENT_TYPE};
use crate::error::{Error, ErrorKind, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The longest request head read; a scraper's is a few hundred bytes.
pub const MAX_HEAD: usize = 8192;
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONNECTIONS: usize = 8;
/// After a failed accept (e.g. out of file descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound listener, then the task serving it; dropping it stops the serving.
pub struct MetricsServer {
    listener: Option<std::net::TcpListener>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (port 0: the kernel chooses; [`MetricsServer::addr`] tells which).
    pub fn bind(addr: SocketAddr) -> Result<MetricsServer> {
        let failed = |e: std::io::Error| {
            Error::with_source(ErrorKind::Io, format!("cannot listen on {addr} for metrics (--metrics-listen): {e}"), e)
        };
        let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        let addr = listener.local_addr().map_err(failed)?;
        Ok(MetricsServer { listener: Some(listener), addr, task: None })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts answering scrapes from `sources` on the current runtime.
    pub fn serve(&mut self, sources: Sources) -> Result<()> {
        self.serve_page(Arc::new(move || render(&sources.snapshot())))
    }

    /// Starts answering scrapes with what `page` renders (a fleet's metrics, not a run's).
    pub fn serve_page(&mut self, page: Page) -> Result<()> {
        let Some(listener) = self.listener.take() else { return Ok(()) };
        let listener = TcpListener::from_std(listener)
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("serving metrics on {}: {e}", self.addr), e))?;
        tracing::info!(addr = %self.addr, "serving metrics at http://{}/metrics", self.addr);
        self.task = Some(tokio::spawn(accept_loop(listener, page)));
        Ok(())
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Renders the metrics page for one scrape.
pub type Page = Arc<dyn Fn() -> String + Send + Sync>;

async fn accept_loop(listener: TcpListener, page: Page) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => {
                    connections.spawn(serve(stream, page.clone()));
                }
                Ok(_) => tracing::debug!(limit = MAX_CONNECTIONS, "metrics connection closed unanswered: too many at once"),
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

async fn serve(mut stream: TcpStream, page: Page) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => respond(&head, || page()),
        Ok(Err(Unreadable::TooLong)) => Response::error(431, "Request Header Fields Too Large", "the request head is too long\n"),
        Ok(Err(Unreadable::Closed)) => return,
        Err(_) => Response::error(408, "Request Timeout", "no request within 5 s\n"),
    };
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response.to_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::debug!("a metrics client left before reading its answer");
    }
}

enum Unreadable {
    TooLong,
    /// The client closed or the connection failed before a whole head arrived.
    Closed,
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> std::result::Result<Vec<u8>, Unreadable> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|_| Unreadable::Closed)?;
        if n == 0 {
            return Err(Unreadable::Closed);
        }
        head.extend_from_slice(&buf[..n]);
        if head_end(&head).is_some() {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(Unreadable::TooLong);
        }
    }
}

/// Where the head ends: after `\r\n\r\n` (or a bare `\n\n`, which HTTP lets servers accept).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub body: String,
    /// `HEAD`: the headers of the answer, without its body.
    pub head_only: bool,
    pub allow: bool,
}

impl Response {
    fn error(status: u16, reason: &'static str, body: &str) -> Response {
        Response { status, reason, content_type: "text/plain; charset=utf-8", body: body.into(), head_only: false, allow: false }
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The answer to a request head; `metrics` renders the page when it is asked for.
pub(super) fn respond(head: &[u8], metrics: impl FnOnce() -> String) -> Response {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Response::error(400, "Bad Request", "the request line is not UTF-8\n");
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Response::error(400, "Bad Request", "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::error(505, "HTTP Version Not Supported", "HTTP/1.0 and HTTP/1.1 only\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Response { allow: true, ..Response::error(405, "Method Not Allowed", "GET /metrics\n") },
    };
    if path != "/metrics" {
        return Response { head_only, ..Response::error(404, "Not Found", "the metrics are at /metrics\n") };
    }
    Response { status: 200, reason: "OK", content_type: CONTENT_TYPE, body: metrics(), head_only, allow: false }
}
