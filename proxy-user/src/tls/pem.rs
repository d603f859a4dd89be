//! Reading PEM files: certificate chains, private keys, CA bundles.
use std::path::Path;

use rustls_pki_types::{
    CertificateDer, PrivateKeyDer,
    pem::{self, PemObject as _},
};

use super::TlsError;

/// Every certificate of a PEM file, in file order; at least one.
pub(super) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(super) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        source => TlsError::Read {
            path: path.to_owned(),
            source,
        },
    })
}

/// A root store from the certificates of a PEM bundle; unusable entries are skipped, but at
/// least one must be usable.
pub(super) fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let certs = certificates(path)?;
    let found = certs.len();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::NoCa {
            path: path.to_owned(),
            found,
        });
    }
    Ok(roots)
}
