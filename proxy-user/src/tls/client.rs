//! The TLS a backend originates: verified chain and name, default trust from the system.
use std::{path::Path, sync::Arc, time::Duration};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{HandshakeError, TlsError, VERSIONS, pem, provider};
use crate::config::BackendTls;

/// The CA bundles of the common distributions, tried in order when `ca_file` is not set:
/// Debian/Ubuntu, then Red Hat/Fedora. Failing both, the bundled webpki roots are used.
pub(super) const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// A backend's TLS: the settings and the config built from them.
pub struct ClientTls {
    settings: BackendTls,
    timeout: Duration,
    config: Arc<ClientConfig>,
    /// Where the trusted roots came from, for the start-up log line.
    pub trust: String,
}

impl ClientTls {
    /// Builds the config; `timeout` bounds each handshake (the backend's connect timeout).
    pub fn load(settings: &BackendTls, timeout: Duration) -> Result<Self, TlsError> {
        let (config, trust) = build(settings)?;
        Ok(Self {
            settings: settings.clone(),
            timeout,
            config: Arc::new(config),
            trust,
        })
    }

    /// The name sent as SNI and verified: `sni`, else the server's configured host (a DNS
    /// name, or an IP address that the certificate must list as an IP SAN).
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, HandshakeError> {
        let name = self.settings.sni.as_deref().unwrap_or(host);
        ServerName::try_from(name.to_owned()).map_err(|_| HandshakeError::BadName(name.to_owned()))
    }

    /// The handshake with a server, bounded by the timeout; the error is the reason.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        let name = self.server_name(host)?;
        let connector = TlsConnector::from(Arc::clone(&self.config));
        match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::Timeout {
                within: self.timeout,
                server: false,
            }),
        }
    }
}

fn build(settings: &BackendTls) -> Result<(ClientConfig, String), TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Config)?;
    if !settings.verify {
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth();
        return Ok((config, "none (verify = false)".to_owned()));
    }
    let (roots, trust) = roots(settings.ca_file.as_deref())?;
    Ok((
        builder.with_root_certificates(roots).with_no_client_auth(),
        trust,
    ))
}

/// `ca_file`, else the first system bundle that exists and holds a usable CA, else the
/// bundled webpki roots; with a description of the choice.
fn roots(ca_file: Option<&Path>) -> Result<(rustls::RootCertStore, String), TlsError> {
    if let Some(path) = ca_file {
        return Ok((pem::root_store(path)?, path.display().to_string()));
    }
    for bundle in SYSTEM_CA_BUNDLES {
        let path = Path::new(bundle);
        if path.exists() {
            match pem::root_store(path) {
                Ok(roots) => {
                    let trust = format!("{bundle} ({} CAs)", roots.len());
                    return Ok((roots, trust));
                }
                Err(e) => tracing::warn!(bundle, error = %crate::report::error_chain(&e),
                    "system CA bundle unusable; trying the next"),
            }
        }
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok((roots, "the bundled webpki roots".to_owned()))
}

/// `verify = false`: any certificate is accepted. The handshake signatures are still checked,
/// so the key exchange is with whoever holds the presented certificate's key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(sni: Option<&str>) -> BackendTls {
        BackendTls {
            sni: sni.map(str::to_owned),
            ca_file: None,
            verify: true,
        }
    }

    #[test]
    fn default_trust_is_the_first_system_bundle_found() {
        let tls = ClientTls::load(&settings(None), Duration::from_secs(1)).unwrap();
        match SYSTEM_CA_BUNDLES.iter().find(|b| Path::new(b).exists()) {
            Some(bundle) => assert!(tls.trust.starts_with(bundle), "{}", tls.trust),
            None => assert_eq!(tls.trust, "the bundled webpki roots"),
        }
    }

    #[test]
    fn server_name_is_the_sni_or_the_configured_host() {
        let by_host = ClientTls::load(&settings(None), Duration::from_secs(1)).unwrap();
        assert_eq!(
            by_host.server_name("intake.example.com").unwrap(),
            ServerName::try_from("intake.example.com").unwrap()
        );
        assert!(matches!(
            by_host.server_name("2001:db8::1").unwrap(),
            ServerName::IpAddress(_)
        ));
        let fixed = ClientTls::load(&settings(Some("sni.test")), Duration::from_secs(1)).unwrap();
        assert_eq!(
            fixed.server_name("10.0.0.1").unwrap(),
            ServerName::try_from("sni.test").unwrap()
        );
    }
}
