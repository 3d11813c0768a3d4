//! Telling people how the fleet went: a JSON POST to `--notify-webhook` (`https://`, with the
//! system's trusted CAs or `--notify-webhook-ca`, or plain `http://`; one request over a TCP
//! stream, through rustls for https, which pg-ghost has for PostgreSQL: no HTTP client is
//! worth its weight for it) and the hooks
//! `pg-ghost-on-target-success`, `pg-ghost-on-target-failure` and
//! `pg-ghost-on-fleet-complete` from `--hooks-path`.
//!
//! Invariants: a notification never changes how the fleet ended; a webhook or hook that
//! fails is logged as an error and the fleet's outcome stands. No connection string (and so
//! no password) reaches a hook's environment.

use super::report::{Report, TargetReport};
use crate::error::{Context, Error, ErrorKind, Result};
use crate::hooks::ScriptHooks;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long the webhook may take, connect to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// An `http[s]://host[:port]/path` URL, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// `Some` for https: the CA file to trust, or `None` inside for the system's CAs.
    pub tls: Option<Option<PathBuf>>,
}

impl Webhook {
    pub fn parse(url: &str) -> Result<Webhook> {
        let bad = |why: &str| Error::config(format!("--notify-webhook {url:?}: {why}"));
        let (rest, tls, default_port) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (rest, Some(None), 443),
            (None, Some(rest)) => (rest, None, 80),
            (None, None) => return Err(bad("give an https:// or http:// URL")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let (host, port) = match authority.rsplit_once(':').filter(|(h, _)| !h.ends_with(']') || authority.starts_with('[')) {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (h, p.parse::<u16>().map_err(|_| bad(&format!("port {p:?} is not a number")))?),
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Webhook { host: host.to_string(), port, path: path.to_string(), tls })
    }

    /// Trusts the CAs of `file` (PEM) rather than the system's, for an https webhook.
    pub fn trusting(self, file: Option<PathBuf>) -> Result<Webhook> {
        match (&self.tls, file) {
            (_, None) => Ok(self),
            (Some(_), Some(f)) => Ok(Webhook { tls: Some(Some(f)), ..self }),
            (None, Some(_)) => Err(Error::config("--notify-webhook-ca is for an https:// webhook")),
        }
    }

    /// POSTs `body` as JSON; an answer other than 2xx is an error naming the status line.
    pub async fn post(&self, body: &str) -> Result<()> {
        tokio::time::timeout(WEBHOOK_TIMEOUT, self.exchange(body))
            .await
            .map_err(|_| Error::new(ErrorKind::Io, format!("the webhook did not answer within {WEBHOOK_TIMEOUT:?}")))?
    }

    async fn exchange(&self, body: &str) -> Result<()> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.with_context(|| format!("connecting to the webhook {}:{}", self.host, self.port))?;
        let Some(ca) = &self.tls else { return self.talk(stream, body).await };
        let roots = match ca {
            Some(file) => crate::conn::RootCert::File(file.clone()),
            None => crate::conn::RootCert::System,
        };
        let roots = crate::tls::root_certificates(Some(&roots))?.ok_or_else(|| Error::config("no CA certificates to verify the webhook with"))?;
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(crate::tls::crypto_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS setup for the webhook: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|_| Error::config(format!("--notify-webhook: {:?} is not a host name TLS can verify", self.host)))?;
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("TLS with the webhook {}: {e}", self.host)))?;
        self.talk(stream, body).await
    }

    async fn talk<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S, body: &str) -> Result<()> {
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
        // The status line is all that matters: read until it is whole or the server closes
        // (a TLS server may close without close_notify, which is no error here).
        let mut buf = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if !answer.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(Error::from(e).context("reading the webhook's answer")),
            }
        }
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
        assert_eq!(Webhook::parse("http://hooks.local:8080/services/T/B").unwrap(), Webhook { host: "hooks.local".into(), port: 8080, path: "/services/T/B".into(), tls: None });
        assert_eq!(Webhook::parse("http://127.0.0.1").unwrap(), Webhook { host: "127.0.0.1".into(), port: 80, path: "/".into(), tls: None });
        assert_eq!(Webhook::parse("http://[::1]:9000/x").unwrap(), Webhook { host: "::1".into(), port: 9000, path: "/x".into(), tls: None });
        assert_eq!(
            Webhook::parse("https://hooks.slack.com/services/T/B").unwrap(),
            Webhook { host: "hooks.slack.com".into(), port: 443, path: "/services/T/B".into(), tls: Some(None) }
        );
        assert!(Webhook::parse("http://x/").unwrap().trusting(Some("/ca.pem".into())).is_err());
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

    /// An https webhook with a certificate from a CA of its own, given by
    /// `--notify-webhook-ca`: the JSON arrives; a webhook whose certificate that CA did not
    /// sign is refused.
    #[tokio::test]
    async fn an_https_webhook_is_verified_against_the_ca_given() {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let (ours, other) = (ca("webhook CA"), ca("another CA"));
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ours).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ours_file, other_file) = (dir.path().join("ours.pem"), dir.path().join("other.pem"));
        std::fs::write(&ours_file, ours.pem()).unwrap();
        std::fs::write(&other_file, other.pem()).unwrap();

        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(crate::tls::crypto_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(mut s) = acceptor.accept(tcp).await else { continue };
                let mut buf = vec![0; 8192];
                let n = s.read(&mut buf).await.unwrap();
                got.push(String::from_utf8_lossy(&buf[..n]).to_string());
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
                let _ = s.shutdown().await;
            }
            got
        });
        let url = format!("https://localhost:{port}/hook");
        let refused = Webhook::parse(&url).unwrap().trusting(Some(other_file)).unwrap().post("{}").await.unwrap_err();
        assert!(refused.to_string().contains("TLS with the webhook"), "{refused}");
        Webhook::parse(&url).unwrap().trusting(Some(ours_file)).unwrap().post("{\"text\":\"done\"}").await.unwrap();
        let got = server.await.unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("POST /hook HTTP/1.1") && got[0].ends_with("{\"text\":\"done\"}"), "{got:?}");
    }
}
