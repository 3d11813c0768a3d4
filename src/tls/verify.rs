//! What is checked of the server's certificate. rustls checks the chain and the name
//! together; libpq's weaker modes need less, so two verifiers wrap its own.

use crate::error::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

pub enum Check {
    /// `prefer`/`require` without a root certificate: encryption only. The handshake's
    /// signatures are still verified, so the peer holds the certificate's key.
    Nothing,
    /// `verify-ca` (and `require` with a root certificate): the chain, not the name.
    ChainOnly(RootCertStore),
    /// `verify-full`: the chain and the host name.
    Full(RootCertStore),
}

impl Check {
    pub fn describe(&self) -> &'static str {
        match self {
            Check::Nothing => "none",
            Check::ChainOnly(_) => "the chain to a trusted root",
            Check::Full(_) => "the chain to a trusted root and the host name",
        }
    }
}

pub fn verifier(check: Check, crls: Vec<CertificateRevocationListDer<'static>>) -> Result<Arc<dyn ServerCertVerifier>> {
    let provider = super::crypto_provider();
    let algorithms = provider.signature_verification_algorithms;
    let webpki = |roots: RootCertStore| {
        let mut builder = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider.clone()));
        if !crls.is_empty() {
            // libpq checks the server's own certificate against the list, and accepts an
            // issuer the list says nothing about.
            builder = builder.with_crls(crls.clone()).only_check_end_entity_revocation().allow_unknown_revocation_status();
        }
        builder.build().map_err(|e| Error::config(format!("cannot use the root certificates: {e}")))
    };
    Ok(match check {
        Check::Nothing => Arc::new(EncryptionOnly { algorithms }),
        Check::ChainOnly(roots) => Arc::new(ChainOnly { inner: webpki(roots)? }),
        Check::Full(roots) => webpki(roots)?,
    })
}

#[derive(Debug)]
struct EncryptionOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // rustls looks at the name only once the chain and revocation have passed.
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
