//! Startup and authentication of a walsender connection: trust, cleartext, md5,
//! SCRAM-SHA-256, and SCRAM-SHA-256-PLUS (bound to the TLS channel) when the connection is
//! encrypted and the server offers it.

use super::framing::{log_notice, server_error, Backend, Framed};
use crate::conn::{ChannelBindingMode, ConnInfo};
use crate::error::{Error, ErrorKind, Result};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{AuthenticationSaslBody, Message};
use postgres_protocol::message::frontend;
use std::collections::HashMap;

const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// How the server made us prove who we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password asked (`trust`, or `peer` on a Unix socket).
    Trust,
    Cleartext,
    Md5,
    ScramSha256,
    /// SCRAM bound to the TLS channel (`tls-server-end-point`).
    ScramSha256Plus,
}

/// What SCRAM may bind to.
pub(crate) struct Channel {
    pub tls: bool,
    /// `tls-server-end-point` data of the server's certificate, when TLS is on.
    pub binding: Option<Vec<u8>>,
    pub mode: ChannelBindingMode,
}

/// What the server told us during startup.
pub(crate) struct Session {
    pub auth: AuthMethod,
    pub backend_pid: i32,
    pub params: HashMap<String, String>,
    pub tls: bool,
}

/// Sends the startup packet, authenticates, and reads up to the first ReadyForQuery.
pub(crate) async fn startup(framed: &mut Framed, info: &ConnInfo, channel: Channel) -> Result<Session> {
    let params = [
        ("user", info.user.as_str()),
        ("database", info.dbname.as_str()),
        // `database` (not `true`): a logical walsender bound to the database, which also
        // accepts plain SQL.
        ("replication", "database"),
        ("application_name", info.application_name.as_str()),
        ("client_encoding", "UTF8"),
    ];
    frontend::startup_message(params, framed.write_buf()).map_err(|e| Error::config(format!("cannot encode the startup packet: {e}")))?;
    framed.flush().await?;
    let auth = authenticate(framed, info, &channel).await?;
    if channel.mode == ChannelBindingMode::Require && auth != AuthMethod::ScramSha256Plus {
        return Err(Error::new(
            ErrorKind::Auth,
            format!(
                "channel_binding=require, but the server authenticated us by {auth:?}{}: it was not proven to be the server that knows the password",
                if channel.tls { "" } else { " over a connection without TLS" }
            ),
        ));
    }

    let mut backend_pid = 0;
    let mut params = HashMap::new();
    loop {
        match framed.recv().await? {
            Backend::Message(Message::BackendKeyData(b)) => backend_pid = b.process_id(),
            Backend::Message(Message::ParameterStatus(p)) => {
                if let (Ok(k), Ok(v)) = (p.name(), p.value()) {
                    params.insert(k.to_string(), v.to_string());
                }
            }
            Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
            Backend::Message(Message::ReadyForQuery(_)) => return Ok(Session { auth, backend_pid, params, tls: channel.tls }),
            Backend::Message(Message::ErrorResponse(e)) => return Err(server_error(e.fields())),
            other => return Err(Error::protocol(format!("unexpected {} during startup", other.describe()))),
        }
    }
}

async fn authenticate(framed: &mut Framed, info: &ConnInfo, channel: &Channel) -> Result<AuthMethod> {
    let mut method = AuthMethod::Trust;
    loop {
        match framed.recv().await? {
            Backend::Message(Message::AuthenticationOk) => return Ok(method),
            Backend::Message(Message::AuthenticationCleartextPassword) => {
                method = AuthMethod::Cleartext;
                frontend::password_message(password(info)?, framed.write_buf()).map_err(encode_error)?;
                framed.flush().await?;
            }
            Backend::Message(Message::AuthenticationMd5Password(body)) => {
                method = AuthMethod::Md5;
                let hash = md5_hash(info.user.as_bytes(), password(info)?, body.salt());
                frontend::password_message(hash.as_bytes(), framed.write_buf()).map_err(encode_error)?;
                framed.flush().await?;
            }
            Backend::Message(Message::AuthenticationSasl(body)) => {
                method = scram(framed, info, body, channel).await?;
            }
            Backend::Message(Message::ErrorResponse(e)) => return Err(server_error(e.fields())),
            Backend::Message(
                Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential,
            ) => {
                return Err(Error::new(
                    ErrorKind::Auth,
                    "the server asks for GSSAPI, SSPI, Kerberos or SCM authentication, which pg-ghost does not support; \
                     use scram-sha-256, md5, password or trust for this role in pg_hba.conf",
                ))
            }
            other => return Err(Error::protocol(format!("unexpected {} during authentication", other.describe()))),
        }
    }
}

async fn scram(framed: &mut Framed, info: &ConnInfo, body: AuthenticationSaslBody, channel: &Channel) -> Result<AuthMethod> {
    let mut offered = Vec::new();
    let mut mechanisms = body.mechanisms();
    while let Some(m) = mechanisms
        .next()
        .map_err(|e| Error::protocol(format!("malformed SASL mechanism list: {e}")))?
    {
        offered.push(m.to_string());
    }
    let plus_offered = offered.iter().any(|m| m == SCRAM_SHA_256_PLUS);
    let (mechanism, binding, method) = match (&channel.binding, channel.mode) {
        (Some(data), ChannelBindingMode::Prefer | ChannelBindingMode::Require) if plus_offered => {
            (SCRAM_SHA_256_PLUS, ChannelBinding::tls_server_end_point(data.clone()), AuthMethod::ScramSha256Plus)
        }
        (_, ChannelBindingMode::Require) => {
            return Err(Error::new(
                ErrorKind::Auth,
                if channel.tls {
                    format!("channel_binding=require, but the server offers only {offered:?} (or its certificate's signature has no hash to bind to)")
                } else {
                    "channel_binding=require needs a TLS connection (sslmode=require or stricter)".to_string()
                },
            ))
        }
        // "y": we could bind, but the server did not offer it (a downgrade the server detects).
        (Some(_), ChannelBindingMode::Prefer) => (SCRAM_SHA_256, ChannelBinding::unrequested(), AuthMethod::ScramSha256),
        // "n": no channel to bind to, or binding turned off.
        _ => (SCRAM_SHA_256, ChannelBinding::unsupported(), AuthMethod::ScramSha256),
    };
    if !offered.iter().any(|m| m == mechanism) {
        return Err(Error::new(ErrorKind::Auth, format!("the server offers SASL mechanisms {offered:?} but not {mechanism}")));
    }
    let mut scram = ScramSha256::new(password(info)?, binding);
    frontend::sasl_initial_response(mechanism, scram.message(), framed.write_buf()).map_err(encode_error)?;
    framed.flush().await?;

    match framed.recv().await? {
        Backend::Message(Message::AuthenticationSaslContinue(b)) => scram
            .update(b.data())
            .map_err(|e| Error::new(ErrorKind::Auth, format!("invalid SCRAM challenge from the server: {e}")))?,
        Backend::Message(Message::ErrorResponse(e)) => return Err(server_error(e.fields())),
        other => {
            return Err(Error::protocol(format!(
                "unexpected {} during SCRAM authentication",
                other.describe()
            )))
        }
    }
    frontend::sasl_response(scram.message(), framed.write_buf()).map_err(encode_error)?;
    framed.flush().await?;

    match framed.recv().await? {
        Backend::Message(Message::AuthenticationSaslFinal(b)) => scram.finish(b.data()).map(|()| method).map_err(|e| {
            // The server proved it does not know the password: it is not the server we think.
            Error::new(ErrorKind::Auth, format!("the server's SCRAM signature does not verify: {e}"))
        }),
        Backend::Message(Message::ErrorResponse(e)) => Err(server_error(e.fields())),
        other => Err(Error::protocol(format!(
            "unexpected {} during SCRAM authentication",
            other.describe()
        ))),
    }
}

fn password(info: &ConnInfo) -> Result<&[u8]> {
    info.password.as_deref().ok_or_else(|| {
        Error::new(
            ErrorKind::Auth,
            format!(
                "the server asks for a password for role {:?} but none was given (password= in the connection string, PGPASSWORD, or a matching line in the password file)",
                info.user
            ),
        )
    })
}

fn encode_error(e: std::io::Error) -> Error {
    Error::config(format!("cannot encode the password message: {e}"))
}
