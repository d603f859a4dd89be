//! The TLS a frontend terminates: certificates chosen by SNI, optional mTLS.
use std::{fmt, sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{HandshakeError, TlsError, VERSIONS, pem, provider};
use crate::config::{CertFiles, FrontendTls};

/// A frontend's TLS: the settings (file paths) and the config built from them.
pub struct ServerTls {
    settings: FrontendTls,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and builds the config.
    pub fn load(settings: &FrontendTls) -> Result<Self, TlsError> {
        Ok(Self {
            config: Arc::new(build(settings)?),
            settings: settings.clone(),
        })
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// The handshake with a client, bounded by the handshake timeout; the error is the reason,
    /// for the log line. rustls sends the client an alert when it can (a plaintext request
    /// gets one); the caller then closes the socket.
    pub async fn accept(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config));
        match tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::Timeout {
                within: self.settings.handshake_timeout,
                server: true,
            }),
        }
    }
}

fn build(settings: &FrontendTls) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut entries = Vec::with_capacity(settings.certs.len());
    for files in &settings.certs {
        entries.push(certified_key(files, &provider)?);
    }
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Config)?;
    let builder = match &settings.client_ca {
        Some(path) => {
            let roots = pem::root_store(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_cert_resolver(Arc::new(SniResolver::new(entries))))
}

/// A certificate with the DNS names (SANs) it can be chosen by.
struct Entry {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

fn certified_key(
    files: &CertFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Entry, TlsError> {
    let chain = pem::certificates(&files.cert)?;
    let key_path = files.key.as_ref().unwrap_or(&files.cert);
    let key = pem::private_key(key_path)?;
    let names = webpki::EndEntityCert::try_from(&chain[0])
        .map_err(|source| TlsError::BadCertificate {
            path: files.cert.clone(),
            source,
        })?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
        cert: files.cert.clone(),
        key: key_path.clone(),
        source,
    })?;
    Ok(Entry {
        names,
        key: Arc::new(key),
    })
}

/// Chooses the certificate whose SANs name the client's SNI (exactly, else by a `*.` wildcard
/// in the first label), in config order; the first certificate otherwise.
struct SniResolver {
    entries: Vec<Entry>,
}

impl SniResolver {
    fn new(entries: Vec<Entry>) -> Self {
        assert!(
            !entries.is_empty(),
            "config conversion ensures a certificate"
        );
        Self { entries }
    }

    fn choose(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let chosen = sni.and_then(|sni| {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            let wildcard = sni.split_once('.').map(|(_, parent)| format!("*.{parent}"));
            let named = |name: &str| {
                self.entries
                    .iter()
                    .find(|e| e.names.iter().any(|n| n == name))
            };
            named(&sni).or_else(|| wildcard.as_deref().and_then(named))
        });
        &chosen.unwrap_or(&self.entries[0]).key
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&Vec<String>> = self.entries.iter().map(|e| &e.names).collect();
        f.debug_struct("SniResolver")
            .field("names", &names)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.choose(hello.server_name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(names: &[&str]) -> Entry {
        let cert = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let signing = provider().key_provider.load_private_key(key).unwrap();
        Entry {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            key: Arc::new(CertifiedKey::new(vec![cert.cert.der().clone()], signing)),
        }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let resolver = SniResolver::new(vec![
            entry(&["default.test"]),
            entry(&["*.agents.test"]),
            entry(&["intake.agents.test", "other.test"]),
        ]);
        let pick = |sni| {
            let chosen = resolver.choose(sni);
            resolver
                .entries
                .iter()
                .position(|e| Arc::ptr_eq(&e.key, chosen))
        };
        assert_eq!(pick(None), Some(0));
        assert_eq!(pick(Some("unknown.test")), Some(0));
        assert_eq!(pick(Some("intake.agents.test")), Some(2));
        assert_eq!(pick(Some("INTAKE.agents.test.")), Some(2));
        assert_eq!(pick(Some("other.test")), Some(2));
        assert_eq!(pick(Some("metrics.agents.test")), Some(1));
        // A wildcard covers one label only.
        assert_eq!(pick(Some("a.b.agents.test")), Some(0));
    }
}
