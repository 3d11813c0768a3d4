//! SCRAM channel binding `tls-server-end-point` (RFC 5929): a hash of the server's
//! certificate, with the hash of its signature algorithm (SHA-256 for MD5 and SHA-1).

use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::der::oid::db::rfc5912;
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// The binding data for the server's certificate `der`, or `None` when its signature
/// algorithm has no hash to use (Ed25519, say): then SCRAM runs without binding.
pub fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    let cert = Certificate::from_der(der).ok()?;
    let oid = cert.signature_algorithm.oid;
    if [rfc5912::MD_5_WITH_RSA_ENCRYPTION, rfc5912::SHA_1_WITH_RSA_ENCRYPTION, rfc5912::SHA_256_WITH_RSA_ENCRYPTION, rfc5912::ECDSA_WITH_SHA_256, rfc5912::ID_SHA_256]
        .contains(&oid)
    {
        Some(Sha256::digest(der).to_vec())
    } else if [rfc5912::SHA_384_WITH_RSA_ENCRYPTION, rfc5912::ECDSA_WITH_SHA_384].contains(&oid) {
        Some(Sha384::digest(der).to_vec())
    } else if [rfc5912::SHA_512_WITH_RSA_ENCRYPTION, rfc5912::ECDSA_WITH_SHA_512].contains(&oid) {
        Some(Sha512::digest(der).to_vec())
    } else {
        None
    }
}
