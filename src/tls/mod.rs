//! TLS for every connection pg-ghost opens. The SQL sessions (tokio-postgres) and the
//! walsender stream (our transport) take the same [`TlsPlan`], built here from libpq's
//! settings with libpq's meanings:
//!
//! - `disable`: plain text. `allow`: plain text, TLS if the server refuses that. `prefer`
//!   (the default): TLS if the server offers it. `require`: TLS or nothing. `verify-ca`: the
//!   certificate must chain to a trusted root. `verify-full`: and name the host.
//! - As libpq does for compatibility, `prefer` and `require` check the chain when a root
//!   certificate is at hand (`sslrootcert`, or `~/.postgresql/root.crt`).
//! - `sslrootcert=system` trusts the operating system's CAs, and only with `verify-full`
//!   (as libpq 16+: a weaker mode would trust any certificate those CAs ever signed).
//! - Client certificates: `sslcert`/`sslkey`, by default `~/.postgresql/postgresql.crt`
//!   and `.key` when they exist; a key readable by others is refused, as libpq does.
//! - Unix sockets never use TLS.
//!
//! rustls (with ring) rather than OpenSSL: nothing to install on the machine, and one TLS
//! stack for both kinds of connection.

mod binding;
mod files;
pub(crate) use files::root_certificates;
mod verify;

pub use binding::server_end_point;

use crate::conn::{ChannelBindingMode, ConnInfo, Endpoint, RootCert, SslMode};
use crate::error::{Error, ErrorKind, Result};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::sync::Arc;
use tokio_postgres::config::{ChannelBinding, SslMode as PgSslMode};
use tokio_postgres::{Client, NoTls};

/// How a connection negotiates encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiation {
    Plain,
    /// Plain text; TLS only if the server refuses the plain connection (`allow`).
    PlainThenTls,
    /// TLS if the server accepts the request, else plain text (`prefer`).
    TlsIfOffered,
    /// TLS, or fail (`require` and stricter).
    TlsOnly,
}

/// Everything a connection needs to speak TLS to one endpoint.
#[derive(Clone)]
pub struct TlsPlan {
    pub negotiation: Negotiation,
    /// Set unless `negotiation` is `Plain`.
    pub config: Option<Arc<ClientConfig>>,
    /// The name the certificate is checked against (verify-full) and sent as SNI.
    pub server_name: ServerName<'static>,
    pub channel_binding: ChannelBindingMode,
    /// What the certificate check is, for messages.
    pub verification: &'static str,
}

impl TlsPlan {
    /// The plan for `info`'s endpoint. Fails on settings that cannot work (a missing root
    /// certificate with verify-ca, an unreadable key, ...) before anything is sent.
    pub fn for_conn(info: &ConnInfo) -> Result<TlsPlan> {
        let ssl = &info.ssl;
        let host = match &info.endpoint {
            Endpoint::Tcp { host, .. } => host.clone(),
            Endpoint::Unix { .. } => "localhost".to_string(),
        };
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| Error::config(format!("host {host:?} is not a valid name for TLS: {e}")))?;
        let plain = TlsPlan { negotiation: Negotiation::Plain, config: None, server_name: server_name.clone(), channel_binding: ssl.channel_binding, verification: "none" };
        let negotiation = match (&info.endpoint, ssl.mode) {
            (Endpoint::Unix { .. }, _) | (_, SslMode::Disable) => return Ok(plain),
            (_, SslMode::Allow) => Negotiation::PlainThenTls,
            (_, SslMode::Prefer) => Negotiation::TlsIfOffered,
            _ => Negotiation::TlsOnly,
        };
        if ssl.root_cert == Some(RootCert::System) && ssl.mode != SslMode::VerifyFull {
            return Err(Error::config(format!(
                "sslrootcert=system needs sslmode=verify-full (it is {}): the system's CAs sign certificates for any host",
                mode_name(ssl.mode)
            )));
        }
        let roots = files::root_certificates(ssl.root_cert.as_ref())?;
        let check = match (ssl.mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => verify::Check::Full(roots),
            (SslMode::VerifyCa, Some(roots)) => verify::Check::ChainOnly(roots),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(Error::config(format!(
                    "sslmode={} needs trusted root certificates, and {} does not exist: give sslrootcert=<file> \
                     (or sslrootcert=system with verify-full), or a weaker sslmode",
                    mode_name(ssl.mode),
                    files::default_path("root.crt").map(|p| p.display().to_string()).unwrap_or_else(|| "~/.postgresql/root.crt".into())
                )))
            }
            (_, Some(roots)) => verify::Check::ChainOnly(roots),
            (_, None) => verify::Check::Nothing,
        };
        let verification = check.describe();
        let crls = files::revocation_lists(ssl.crl.as_deref())?;
        let verifier = verify::verifier(check, crls)?;
        let builder = ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::internal(format!("TLS protocol versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match files::client_certificate(ssl.cert.as_deref(), ssl.key.as_deref())? {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::config(format!("the client certificate and key do not go together: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsPlan { negotiation, config: Some(Arc::new(config)), verification, ..plain })
    }

    /// The rustls configuration, for a plan that may use TLS.
    pub fn tls_config(&self) -> Result<Arc<ClientConfig>> {
        self.config.clone().ok_or_else(|| Error::internal("a plain-text plan has no TLS configuration"))
    }
}

/// Opens an ordinary SQL session with `cfg` as `info`'s TLS settings ask; its connection task
/// runs on the current runtime.
pub async fn connect_sql(cfg: &tokio_postgres::Config, info: &ConnInfo) -> Result<Client> {
    let plan = TlsPlan::for_conn(info)?;
    let mut cfg = cfg.clone();
    cfg.channel_binding(match plan.channel_binding {
        ChannelBindingMode::Disable => ChannelBinding::Disable,
        ChannelBindingMode::Prefer => ChannelBinding::Prefer,
        ChannelBindingMode::Require => ChannelBinding::Require,
    });
    match plan.negotiation {
        Negotiation::Plain => plain(cfg.ssl_mode(PgSslMode::Disable)).await,
        Negotiation::TlsIfOffered => tls(cfg.ssl_mode(PgSslMode::Prefer), &plan).await,
        Negotiation::TlsOnly => tls(cfg.ssl_mode(PgSslMode::Require), &plan).await,
        Negotiation::PlainThenTls => match plain(cfg.clone().ssl_mode(PgSslMode::Disable)).await {
            // Refused by the server (pg_hba.conf has only `hostssl` for us): try TLS.
            Err(e) if e.sqlstate().is_some() => {
                tracing::debug!(error = %e, "the server refused a plain-text connection; trying TLS (sslmode=allow)");
                tls(cfg.ssl_mode(PgSslMode::Require), &plan).await
            }
            other => other,
        },
    }
}

async fn plain(cfg: &tokio_postgres::Config) -> Result<Client> {
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| explain(e, "none"))?;
    spawn_connection(connection);
    Ok(client)
}

async fn tls(cfg: &tokio_postgres::Config, plan: &TlsPlan) -> Result<Client> {
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*plan.tls_config()?).clone());
    let (client, connection) = cfg.connect(connector).await.map_err(|e| explain(e, plan.verification))?;
    spawn_connection(connection);
    Ok(client)
}

fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "connection ended");
        }
    });
}

/// tokio-postgres's error, with what a TLS failure means said in a DBA's words.
fn explain(e: tokio_postgres::Error, verification: &str) -> Error {
    let text = chain_text(&e);
    // Neither is worth retrying: the next attempt meets the same certificate and server.
    if let Some(why) = tls_failure(&e) {
        return Error::with_source(ErrorKind::Auth, format!("TLS: {}", why.describe(verification)), e);
    }
    if text.contains("server does not support TLS") {
        return Error::with_source(ErrorKind::Config, no_tls_on_server(), e);
    }
    Error::from(e)
}

/// An I/O error of a TLS socket: a TLS failure said for a DBA, anything else as usual.
pub fn io_failure(e: std::io::Error, verification: &str, what: &str) -> Error {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(r) => Error::new(ErrorKind::Auth, format!("TLS {what}: {}", TlsFailure(r.clone()).describe(verification))),
        None => Error::from(e).context(what),
    }
}

/// The error and its sources, as one line.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cur) = next {
        text.push_str(": ");
        text.push_str(&cur.to_string());
        next = cur.source();
    }
    text
}

/// The rustls error somewhere in `e`'s sources.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cur) = next {
        if let Some(r) = cur.downcast_ref::<rustls::Error>() {
            return Some(TlsFailure(r.clone()));
        }
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(TlsFailure(r.clone()));
            }
        }
        next = cur.source();
    }
    None
}

/// What the server says when sslmode asks for TLS and it has none.
pub fn no_tls_on_server() -> String {
    "the server does not accept TLS connections (ssl = off), but sslmode requires TLS; \
     turn ssl on at the server, or use sslmode=prefer or disable"
        .to_string()
}

/// A TLS failure, described for a DBA.
pub struct TlsFailure(pub rustls::Error);

impl TlsFailure {
    pub fn describe(&self, verification: &str) -> String {
        use rustls::CertificateError as C;
        match &self.0 {
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => format!(
                "the server's certificate is not signed by a trusted CA (sslrootcert; check: {verification})"
            ),
            rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
                "the server's certificate does not name the host connected to (sslmode=verify-full): {}",
                self.0
            ),
            rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => format!("the server's certificate has expired: {}", self.0),
            rustls::Error::InvalidCertificate(C::Revoked) => "the server's certificate is revoked (sslcrl)".to_string(),
            rustls::Error::AlertReceived(alert) => {
                format!("the server ended the handshake ({alert:?}): it may require a client certificate (sslcert, sslkey) or not accept this one")
            }
            other => format!("the TLS handshake failed: {other}"),
        }
    }
}

/// ring's algorithms: it builds with a C compiler alone (aws-lc needs cmake), and offers
/// every suite PostgreSQL servers use. It lacks the post-quantum key exchanges, which
/// PostgreSQL's OpenSSL builds do not offer either.
#[allow(deprecated)]
pub(crate) fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

pub fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

