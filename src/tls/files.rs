//! The certificate, key and revocation files a TLS connection uses, found where libpq looks
//! for them: the setting, else `~/.postgresql/`.

use crate::conn::RootCert;
use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::RootCertStore;
use std::path::{Path, PathBuf};

/// `~/.postgresql/<name>`.
pub fn default_path(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".postgresql").join(name))
}

/// The file given, else the default when it exists.
fn given_or_default(given: Option<&Path>, default: &str) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.to_path_buf()),
        None => default_path(default).filter(|p| p.exists()),
    }
}

/// The trusted roots, or `None` when none were given and `~/.postgresql/root.crt` does not
/// exist. A file given but unreadable, or holding no certificate, is an error.
pub fn root_certificates(given: Option<&RootCert>) -> Result<Option<RootCertStore>> {
    let mut store = RootCertStore::empty();
    let path = match given {
        Some(RootCert::System) => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(": {e}")).unwrap_or_default();
                return Err(Error::config(format!("sslrootcert=system: no trusted CA certificates found on this machine{why}")));
            }
            return Ok(Some(store));
        }
        Some(RootCert::File(p)) => p.clone(),
        None => match given_or_default(None, "root.crt") {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let certs = read_all(&path, "root certificate file", CertificateDer::pem_file_iter(&path))?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::config(format!("the root certificate file {} holds no usable certificate", path.display())));
    }
    Ok(Some(store))
}

/// The revocation lists of `sslcrl` (or `~/.postgresql/root.crl` when it exists).
pub fn revocation_lists(given: Option<&Path>) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    match given_or_default(given, "root.crl") {
        Some(path) => read_all(&path, "certificate revocation list", CertificateRevocationListDer::pem_file_iter(&path)),
        None => Ok(Vec::new()),
    }
}

/// The client certificate chain and its key, when a certificate is given or the default
/// one exists.
pub fn client_certificate(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let cert_path = match given_or_default(cert, "postgresql.crt") {
        Some(p) => p,
        None => return Ok(None),
    };
    let chain = read_all(&cert_path, "client certificate file", CertificateDer::pem_file_iter(&cert_path))?;
    if chain.is_empty() {
        return Err(Error::config(format!("the client certificate file {} holds no certificate", cert_path.display())));
    }
    let key_path = match key {
        Some(p) => p.to_path_buf(),
        None => default_path("postgresql.key").ok_or_else(|| Error::config("sslcert is given but no sslkey, and HOME is not set"))?,
    };
    check_key_permissions(&key_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| Error::config(format!("cannot read the private key file {}: {e}", key_path.display())))?;
    Ok(Some((chain, key)))
}

/// libpq refuses a key that others may read: owned by us, at most 0600; owned by root, at
/// most 0640 (a key shared with a group through root's ownership).
fn check_key_permissions(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| Error::config(format!("cannot read the private key file {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::config(format!("the private key {} is not a regular file", path.display())));
    }
    let mode = meta.mode() & 0o777;
    let loose = if meta.uid() == 0 { mode & 0o037 != 0 } else { mode & 0o077 != 0 };
    if loose {
        return Err(Error::config(format!(
            "the private key file {} has group or world access (mode {mode:o}); it must be u=rw (0600) or less, \
             or u=rw,g=r (0640) or less if owned by root",
            path.display()
        )));
    }
    Ok(())
}

fn read_all<T>(path: &Path, what: &str, iter: std::result::Result<impl Iterator<Item = std::result::Result<T, rustls::pki_types::pem::Error>>, rustls::pki_types::pem::Error>) -> Result<Vec<T>> {
    let fail = |e: rustls::pki_types::pem::Error| Error::config(format!("cannot read the {what} {}: {e}", path.display()));
    iter.map_err(fail)?.collect::<std::result::Result<Vec<_>, _>>().map_err(fail)
}
