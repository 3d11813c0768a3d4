//! libpq's TLS settings as a connection string or the environment gives them. What they
//! mean for a connection (which certificates to trust, what to present, when to fall back
//! to plain text) is decided in `crate::tls`.

use crate::error::{Error, Result};
use std::path::PathBuf;
use std::str::FromStr;

/// `sslmode`, with libpq's meanings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text first; TLS if the server insists.
    Allow,
    /// TLS if the server offers it, plain text otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is checked only if a root certificate is at hand.
    Require,
    /// TLS, with a certificate signed by a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::config(format!(
                    "invalid sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
                )))
            }
        })
    }
}

/// `channel_binding`: whether SCRAM binds the authentication to the TLS channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelBindingMode {
    Disable,
    /// Bind when TLS is on and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Refuse to authenticate any other way.
    Require,
}

impl FromStr for ChannelBindingMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<ChannelBindingMode> {
        Ok(match s {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            other => return Err(Error::config(format!("invalid channel_binding {other:?}: use disable, prefer or require"))),
        })
    }
}

/// Where the trusted certificates come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trusted CAs.
    System,
}

/// The TLS keys of a connection string, as given: `None` where neither the string nor the
/// environment set one (then libpq's defaults under `~/.postgresql/` apply).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    pub channel_binding: ChannelBindingMode,
}

impl RootCert {
    pub fn parse(value: &str) -> RootCert {
        if value == "system" {
            RootCert::System
        } else {
            RootCert::File(value.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_libpq_spells_them() {
        assert_eq!("verify-full".parse::<SslMode>().unwrap(), SslMode::VerifyFull);
        assert_eq!(SslMode::default(), SslMode::Prefer);
        let e = "verify_full".parse::<SslMode>().unwrap_err();
        assert!(e.to_string().contains("verify_full"), "{e}");
        assert_eq!("require".parse::<ChannelBindingMode>().unwrap(), ChannelBindingMode::Require);
        assert!("yes".parse::<ChannelBindingMode>().is_err());
        assert_eq!(RootCert::parse("system"), RootCert::System);
        assert_eq!(RootCert::parse("/x/ca.pem"), RootCert::File("/x/ca.pem".into()));
    }
}
