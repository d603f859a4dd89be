//! TLS on both sides of the proxy, with rustls (crypto provider: aws-lc-rs, see docs/tls.md).
//!
//! - [`ServerTls`] terminates the TLS of agents on a frontend: one or more certificates chosen
//!   by SNI, TLS 1.2 and 1.3, optional client-certificate verification (mTLS).
//! - [`ClientTls`] originates verified TLS from a backend to its servers: the chain against the
//!   system CA bundle (or `ca_file`, or the bundled webpki roots), the name against the SNI.
//!
//! Both are built from the files when the config is loaded, at start and by each reload
//! (SIGHUP), which builds new ones for the connections that follow; a connection keeps the
//! config it started with.
//!
//! A connection with TLS on either side is carried by the userspace relay (`crate::tcp`,
//! [`crate::relay::relay_streams`]); the kernel cannot splice bytes it would have to encrypt.
mod client;
mod pem;
mod server;
mod state;

use std::{fmt, io, path::PathBuf, sync::Arc, time::Duration};

pub(crate) use client::ClientTls;
pub(crate) use server::ServerTls;
// Public through `daemon`, which re-exports them (its start-up error and state name them).
#[expect(unreachable_pub, reason = "re-exported by `daemon`, which is public")]
pub use state::{TlsLoadError, TlsState};

/// Why one handshake failed. `Display` is the log line's `detail`; [`HandshakeError::reason`]
/// the bounded `reason` label of `agent_proxy_tls_handshake_errors_total`.
#[derive(Debug)]
pub enum HandshakeError {
    /// Not complete within the handshake timeout (`server`: we were the TLS server).
    Timeout { within: Duration, server: bool },
    /// Cut by the end of the drain at shutdown.
    Shutdown,
    /// The handshake failed: a TLS error from rustls (inside the I/O error), or the peer
    /// closed or reset the connection.
    Failed(io::Error),
    /// The name to verify the server against is not a valid server name.
    BadName(String),
}

/// The values of the `reason` label, for a handshake that failed.
#[cfg(test)]
pub(crate) const HANDSHAKE_REASONS: [&str; 7] = [
    "timeout",
    "shutdown",
    "certificate",
    "alert",
    "protocol",
    "closed",
    "config",
];

impl HandshakeError {
    /// One of the reasons the metric's HELP lists (`HANDSHAKE_REASONS` in the tests): `timeout`; `certificate` (the peer's certificate was
    /// refused, or none was presented where one is required); `alert` (the peer sent a fatal
    /// alert, such as a client that does not trust our certificate); `protocol` (not TLS, a
    /// version or cipher the other side does not accept, a malformed message); `closed` (the
    /// peer closed or reset mid-handshake); `config` (no valid server name to verify);
    /// `shutdown` (cut by the end of the drain).
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Timeout { .. } => "timeout",
            HandshakeError::Shutdown => "shutdown",
            HandshakeError::BadName(_) => "config",
            HandshakeError::Failed(e) => match e.get_ref().and_then(|e| e.downcast_ref()) {
                Some(
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented,
                ) => "certificate",
                Some(rustls::Error::AlertReceived(_)) => "alert",
                Some(_) => "protocol",
                None => match e.kind() {
                    io::ErrorKind::InvalidData => "protocol",
                    _ => "closed",
                },
            },
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Timeout {
                within,
                server: true,
            } => {
                write!(f, "tls handshake: no complete handshake within {within:?}")
            }
            HandshakeError::Timeout {
                within,
                server: false,
            } => {
                write!(f, "tls handshake: not complete within {within:?}")
            }
            HandshakeError::Shutdown => f.write_str("tls handshake: cut at shutdown"),
            HandshakeError::Failed(e) => write!(f, "tls handshake: {e}"),
            HandshakeError::BadName(name) => write!(f, "tls: {name:?} is not a valid server name"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Why TLS settings could not be loaded from their files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no PEM certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{}: no PEM private key in the file (set `key`, or put the key in the cert file)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: the private key cannot be used with {}", key.display(), cert.display())]
    Key {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: the first certificate cannot be parsed", path.display())]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: webpki::Error,
    },
    #[error("{}: none of the {found} certificates is a usable CA", path.display())]
    NoCa { path: PathBuf, found: usize },
    #[error("client_ca {}", path.display())]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The crypto provider every config is built with.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Seeds the provider's random generator now, at start: AWS-LC seeds its CPU-jitter entropy
/// source on first use, which took 35-60 ms here - the first agents' handshakes would wait for
/// it (measured by the bench's TLS scenarios: p99 36-130 ms against 13-28 ms once seeded).
pub(crate) fn warm_up_rng() {
    let mut bytes = [0u8; 32];
    if provider().secure_random.fill(&mut bytes).is_err() {
        tracing::warn!("the TLS random generator failed at start; handshakes will say more");
    }
}

/// TLS 1.2 and 1.3: agents in the field still speak 1.2.
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
