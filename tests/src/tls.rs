//! TLS peers for the scenarios: a throw-away PKI made with rcgen (CA, server and client
//! certificates, expired ones too), rustls configs for the test's own TLS clients and intakes,
//! and full-duplex hashed exchanges over any stream.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::logs::{CONNECTION_CLOSED, json_lines};
use crate::netns::NetNs;
use crate::peers::{Exchanged, IO_TIMEOUT, exchange_halves};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate authority of the test.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// How long a certificate is valid.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid now (rcgen's default: 1975 to 4096).
    Now,
    /// Expired: valid in 2020 only.
    Expired,
}

/// A certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { params, key, pem })
    }

    fn sign(&self, mut params: CertificateParams, cn: &str) -> anyhow::Result<Leaf> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses, as SANs).
    pub fn server(&self, names: &[&str], validity: Validity) -> anyhow::Result<Leaf> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        self.sign(params, names.first().copied().unwrap_or("server"))
    }

    /// A client certificate (for mTLS).
    pub fn client(&self, name: &str) -> anyhow::Result<Leaf> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, name)
    }

    pub fn roots(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        let der = CertificateDer::from(self.params.self_signed(&self.key)?.der().to_vec());
        roots.add(der)?;
        Ok(roots)
    }
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `STEM.crt` and `STEM.key` in `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }

    /// Writes one PEM file holding the chain and the key (HAProxy's `crt` style).
    pub fn write_combined(&self, dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, format!("{}{}", self.cert_pem, self.key_pem))?;
        Ok(path)
    }
}

/// A directory for a scenario's certificate files, emptied first.
pub fn cert_dir(ns: &NetNs) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("agent-proxy-tls-{}", ns.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A TLS server config presenting `leaf`; with `client_ca`, client certificates are required.
pub fn server_config(leaf: &Leaf, client_ca: Option<&Ca>) -> anyhow::Result<Arc<ServerConfig>> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()?),
                provider(),
            )
            .build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(
        builder.with_single_cert(vec![leaf.der.clone()], leaf.key())?,
    ))
}

/// A TLS client config trusting `ca`, presenting `client` when given.
pub fn client_config(ca: &Ca, client: Option<&Leaf>) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(ca.roots()?);
    let config = match client {
        Some(leaf) => builder.with_client_auth_cert(vec![leaf.der.clone()], leaf.key())?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Connects to `addr` and completes a TLS handshake for `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<ClientStream> {
    let tcp = crate::peers::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned())?;
    timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .context("tls handshake timed out")?
    .context("tls handshake")
}

/// Accepts one connection on `listener` and completes a TLS handshake as the server.
pub async fn tls_accept(
    listener: &TcpListener,
    config: Arc<ServerConfig>,
) -> anyhow::Result<ServerStream> {
    let tcp = crate::peers::accept(listener).await?;
    timeout(
        IO_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await
    .context("tls handshake timed out")?
    .context("tls handshake")
}

/// [`crate::peers::exchange_expecting`] over any stream (TLS or not): sends `send_len` bytes
/// of stream `seed` then shuts down writing (a close_notify through TLS), while reading to EOF.
pub async fn exchange_stream<S>(
    stream: S,
    seed: u64,
    send_len: u64,
    recv_limit: u64,
    expect_seed: Option<u64>,
) -> anyhow::Result<Exchanged>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    exchange_halves(r, w, seed, send_len, recv_limit, expect_seed).await
}

/// The fields of every "connection closed" line (with `end`, `detail`, `tls`...).
pub fn conn_fields(log: &str) -> Vec<Value> {
    json_lines(log)
        .into_iter()
        .map(|line| line.get("fields").cloned().unwrap_or(line))
        .filter(|f| f.get("message").and_then(Value::as_str) == Some(CONNECTION_CLOSED))
        .collect()
}

/// A string field of a log line ("" when absent).
pub fn field<'a>(line: &'a Value, key: &str) -> &'a str {
    line.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Runs `program args` inside `ns` with `stdin`, and returns its output; fails if it cannot
/// start or does not finish within 30 s.
pub fn run_in_ns(ns: &NetNs, program: &str, args: &[&str], stdin: &[u8]) -> anyhow::Result<Output> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {program} (is it installed?)"))?;
    let mut input = child.stdin.take().context("stdin")?;
    input.write_all(stdin)?;
    drop(input);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "{program} {args:?} did not finish within 30 s; stdout: {}; stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
