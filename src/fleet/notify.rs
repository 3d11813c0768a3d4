//! Telling people how the fleet went: a JSON POST to `--notify-webhook` (plain `http://`,
//! over a TCP stream: no HTTP client is worth its weight for one request; for `https://`
//! endpoints a `pg-ghost-on-fleet-complete` hook with curl does it) and the hooks
//! `pg-ghost-on-target-success`, `pg-ghost-on-target-failure` and
//! `pg-ghost-on-fleet-complete` from `--hooks-path`.
//!
//! Invariants: a notification never changes how the fleet ended; a webhook or hook that
//! fails is logged as an error and the fleet's outcome stands. No connection string (and so
//! no password) reaches a hook's environment.

use super::report::{Report, TargetReport};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::hooks::ScriptHooks;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the webhook may take, connect to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// An `http://host[:port]/path` URL, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Webhook {
    pub fn parse(url: &str) -> Result<Webhook> {
        let bad = |why: &str| Error::config(format!("--notify-webhook {url:?}: {why}"));
        if url.starts_with("https://") {
            return Err(bad("only http:// URLs are sent by pg-ghost itself; for https, post the report from a pg-ghost-on-fleet-complete hook (curl)"));
        }
        let rest = url.strip_prefix("http://").ok_or_else(|| bad("give an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':').filter(|(h, _)| !h.ends_with(']') || authority.starts_with('[')) {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (h, p.parse::<u16>().map_err(|_| bad(&format!("port {p:?} is not a number")))?),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Webhook { host: host.to_string(), port, path: path.to_string() })
    }

    /// POSTs `body` as JSON; an answer other than 2xx is an error naming the status line.
    pub async fn post(&self, body: &str) -> Result<()> {
        tokio::time::timeout(WEBHOOK_TIMEOUT, self.exchange(body))
            .await
            .map_err(|_| Error::new(ErrorKind::Io, format!("the webhook did not answer within {WEBHOOK_TIMEOUT:?}")))?
    }

    async fn exchange(&self, body: &str) -> Result<()> {
        let mut stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.with_context(|| format!("connecting to the webhook {}:{}", self.host, self.port))?;
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: pg-ghost/{}\r\nConnection: close\r\n\r\n{body}",
            self.path,
            self.port,
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        stream.write_all(request.as_bytes()).await.context("sending the webhook")?;
        let mut answer = Vec::new();
        // The status line is all that matters; read until the server closes (Connection: close).
        stream.read_to_end(&mut answer).await.context("reading the webhook's answer")?;
        let text = String::from_utf8_lossy(&answer);
        let status_line = text.lines().next().unwrap_or("").trim().to_string();
        let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
        match code {
            Some(200..=299) => Ok(()),
            _ => Err(Error::new(ErrorKind::Io, format!("the webhook answered {status_line:?}"))),
        }
    }
}

/// Runs the per-target hook for how it ended.
pub async fn target_hook(hooks: Option<&ScriptHooks>, fleet_id: &str, r: &TargetReport) {
    let Some(hooks) = hooks else { return };
    let event = if r.status == super::report::Status::Failed { "pg-ghost-on-target-failure" } else { "pg-ghost-on-target-success" };
    let vars = vec![
        ("PG_GHOST_FLEET_ID", fleet_id.to_string()),
        ("PG_GHOST_TARGET_NAME", r.name.clone()),
        ("PG_GHOST_TARGET_SERVER", r.server.clone()),
        ("PG_GHOST_TARGET_STATUS", r.status.as_str().to_string()),
        ("PG_GHOST_TARGET_VERSION_BEFORE", r.version_before.clone().unwrap_or_default()),
        ("PG_GHOST_TARGET_VERSION_AFTER", r.version_after.clone().unwrap_or_default()),
        ("PG_GHOST_TARGET_ERROR", r.error.clone().unwrap_or_default()),
    ];
    if let Err(e) = hooks.run_prefixed(event, &vars).await {
        tracing::error!(tenant = %r.name, error = %e.chain(), "the {event} hook failed");
    }
}

/// The end of the fleet: the webhook, then the `pg-ghost-on-fleet-complete` hooks.
pub async fn fleet_complete(hooks: Option<&ScriptHooks>, webhook: Option<&Webhook>, report: &Report, report_file: Option<&std::path::Path>) {
    if let Some(w) = webhook {
        match w.post(&report.webhook_body()).await {
            Ok(()) => tracing::info!(host = %w.host, port = w.port, "the report was sent to the webhook"),
            Err(e) => tracing::error!(host = %w.host, port = w.port, error = %e.chain(), "could not send the report to the webhook"),
        }
    }
    let Some(hooks) = hooks else { return };
    let vars = vec![
        ("PG_GHOST_FLEET_ID", report.fleet_id.clone()),
        ("PG_GHOST_FLEET_TARGETS", report.targets.to_string()),
        ("PG_GHOST_FLEET_SUCCEEDED", report.succeeded.to_string()),
        ("PG_GHOST_FLEET_FAILED", report.failed.to_string()),
        ("PG_GHOST_FLEET_SKIPPED", report.skipped.to_string()),
        ("PG_GHOST_FLEET_NOT_STARTED", report.not_started.to_string()),
        ("PG_GHOST_FLEET_SUMMARY", report.summary()),
        ("PG_GHOST_FLEET_REPORT_FILE", report_file.map(|p| p.display().to_string()).unwrap_or_default()),
    ];
    if let Err(e) = hooks.run_prefixed("pg-ghost-on-fleet-complete", &vars).await {
        tracing::error!(error = %e.chain(), "the pg-ghost-on-fleet-complete hook failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        assert_eq!(Webhook::parse("http://hooks.local:8080/services/T/B").unwrap(), Webhook { host: "hooks.local".into(), port: 8080, path: "/services/T/B".into() });
        assert_eq!(Webhook::parse("http://127.0.0.1").unwrap(), Webhook { host: "127.0.0.1".into(), port: 80, path: "/".into() });
        assert_eq!(Webhook::parse("http://[::1]:9000/x").unwrap(), Webhook { host: "::1".into(), port: 9000, path: "/x".into() });
        assert!(Webhook::parse("https://hooks.slack.com/x").unwrap_err().to_string().contains("hook"));
        assert!(Webhook::parse("ftp://x").is_err());
        assert!(Webhook::parse("http://x:port/").unwrap_err().to_string().contains("not a number"));
    }

    #[tokio::test]
    async fn the_webhook_gets_the_json_and_a_non_2xx_answer_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for answer in ["HTTP/1.1 200 OK", "HTTP/1.1 500 Internal Server Error"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0; 4096];
                let mut got = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
                        if body.len() >= len {
                            bodies.push(body.to_string());
                            break;
                        }
                    }
                }
                s.write_all(format!("{answer}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
            }
            bodies
        });
        let w = Webhook::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap();
        w.post("{\"text\":\"one\"}").await.unwrap();
        let e = w.post("{\"text\":\"two\"}").await.unwrap_err();
        assert!(e.to_string().contains("500 Internal Server Error"), "{e}");
        assert_eq!(server.await.unwrap(), ["{\"text\":\"one\"}", "{\"text\":\"two\"}"]);
    }
}
