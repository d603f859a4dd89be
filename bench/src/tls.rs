//! Scenario 5 (TLS): the certificates made at bench time and the TLS lines of every peer's
//! config (nginx, HAProxy, agent-proxy).
//!
//! Two variants of the DataKit workload:
//! - **origination**: hey speaks plain HTTP to the proxy, the proxy originates *verified* TLS to
//!   an nginx intake listening with `ssl` (agent-proxy `tls = { ca_file, sni }` on the backend;
//!   HAProxy `server ... ssl verify required ca-file ... sni str(...)`, which also checks the
//!   certificate's name against the SNI);
//! - **frontend**: hey speaks HTTPS to the proxy, which terminates TLS (agent-proxy
//!   `tls = { cert, key }` on the frontend; HAProxy `bind ... ssl crt ...`) and forwards plain
//!   HTTP to the plain nginx intake.
//!
//! In both, the direct row is hey speaking HTTPS straight to the nginx TLS listener. hey does
//! not verify certificates (its transport sets `InsecureSkipVerify`, and it has no option to
//! trust a CA); with an IP-address URL it sends no SNI, so every server presents its one
//! certificate. The proxies' verification of the intake is the real one.
//!
//! The PKI is [`agent_proxy_tests::tls::Ca`] (rcgen), written to files in the bench's work
//! directory for the peers to read.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agent_proxy_tests::tls::{Ca, Validity};
use anyhow::bail;

/// The name on the intake's certificate, and the SNI both proxies send to it.
pub(crate) const INTAKE_NAME: &str = "intake.test";
/// The name on the proxies' frontend certificate.
pub(crate) const PROXY_NAME: &str = "proxy.test";
/// nginx's TLS listener (its plain one is [`crate::servers::INTAKE_PORT`]).
pub(crate) const INTAKE_TLS_PORT: u16 = 8443;

/// Which side of the proxy speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Plain client, TLS to the intake.
    Origination,
    /// TLS client, plain to the intake.
    Frontend,
}

/// The certificate files of a bench run: one CA, the intake's certificate and the proxies'.
#[derive(Clone, Debug)]
pub(crate) struct Pki {
    pub ca: PathBuf,
    pub intake_cert: PathBuf,
    pub intake_key: PathBuf,
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
    /// The proxies' chain and key in one file (HAProxy's `crt`).
    pub proxy_pem: PathBuf,
}

impl Pki {
    /// Makes a CA and two server certificates (for the intake and the proxies, both also valid
    /// for 127.0.0.1) and writes them in `dir`.
    pub(crate) fn generate(dir: &Path) -> anyhow::Result<Self> {
        let text = dir.to_string_lossy();
        if text.contains(|c: char| c.is_whitespace() || "\"\\#;".contains(c)) {
            // nginx and HAProxy take the paths unquoted.
            bail!(
                "the certificate directory {} has a character the peers' configs cannot hold \
                 unquoted; build the workspace under a plain path",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        let ca = Ca::new("agent-proxy bench CA")?;
        let intake = ca.server(&[INTAKE_NAME, "127.0.0.1"], Validity::Now)?;
        let proxy = ca.server(&[PROXY_NAME, "127.0.0.1"], Validity::Now)?;
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, &ca.pem)?;
        let (intake_cert, intake_key) = intake.write(dir, "intake")?;
        let (proxy_cert, proxy_key) = proxy.write(dir, "proxy")?;
        let proxy_pem = proxy.write_combined(dir, "proxy")?;
        Ok(Self {
            ca: ca_path,
            intake_cert,
            intake_key,
            proxy_cert,
            proxy_key,
            proxy_pem,
        })
    }
}

/// What a proxy row of a TLS scenario needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProxyTls<'a> {
    pub side: Side,
    pub pki: &'a Pki,
}

impl ProxyTls<'_> {
    /// `text()` when TLS is on `side`, nothing otherwise.
    fn on(&self, side: Side, text: impl FnOnce(&Pki) -> String) -> String {
        if self.side == side {
            text(self.pki)
        } else {
            String::new()
        }
    }

    /// Lines appended to agent-proxy's frontend table.
    pub(crate) fn agent_frontend(&self) -> String {
        self.on(Side::Frontend, |pki| {
            let (cert, key) = (toml_str(&pki.proxy_cert), toml_str(&pki.proxy_key));
            format!("tls = {{ cert = {cert}, key = {key} }}\n")
        })
    }

    /// Lines appended to agent-proxy's backend table.
    pub(crate) fn agent_backend(&self) -> String {
        self.on(Side::Origination, |pki| {
            let (ca, sni) = (toml_str(&pki.ca), toml_str(Path::new(INTAKE_NAME)));
            format!("tls = {{ ca_file = {ca}, sni = {sni} }}\n")
        })
    }

    /// Words appended to HAProxy's `bind` line. `prefer-client-ciphers`: rustls follows the
    /// client's order of cipher suites and HAProxy by default its own, so hey (Go: AES-128-GCM
    /// first) would get AES-128-GCM from agent-proxy and AES-256-GCM from HAProxy; with it both
    /// proxies decrypt the same cipher, as nginx does in the direct row.
    pub(crate) fn haproxy_bind(&self) -> String {
        self.on(Side::Frontend, |pki| {
            format!(" ssl crt {} prefer-client-ciphers", pki.proxy_pem.display())
        })
    }

    /// Words appended to HAProxy's `server` line: verified TLS, as agent-proxy's backend.
    pub(crate) fn haproxy_server(&self) -> String {
        self.on(Side::Origination, |pki| {
            let ca = pki.ca.display();
            format!(" ssl verify required ca-file {ca} sni str({INTAKE_NAME})")
        })
    }
}

/// nginx's TLS `server` block: the same `return 200` intake as the plain one, on `addr`.
pub(crate) fn nginx_server(pki: &Pki, addr: SocketAddr) -> String {
    format!(
        "  server {{\n    listen {addr} ssl backlog=16384;\n    ssl_certificate {};\n    \
         ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
         location / {{ return 200 \"ok\\n\"; }}\n  }}\n",
        pki.intake_cert.display(),
        pki.intake_key.display()
    )
}

/// A TOML basic string (JSON's string escapes are a subset of TOML's).
fn toml_str(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("a string serialises")
}

#[cfg(test)]
impl Pki {
    /// The file names [`Pki::generate`] writes, in `dir`, without writing anything.
    pub(crate) fn names_in(dir: &str) -> Self {
        let d = Path::new(dir);
        Pki {
            ca: d.join("ca.crt"),
            intake_cert: d.join("intake.crt"),
            intake_key: d.join("intake.key"),
            proxy_cert: d.join("proxy.crt"),
            proxy_key: d.join("proxy.key"),
            proxy_pem: d.join("proxy.pem"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> Pki {
        Pki::names_in("/b/tls")
    }

    #[test]
    fn each_side_gets_tls_lines_in_both_proxies_and_the_other_none() {
        let pki = pki();
        // side, agent-proxy frontend, agent-proxy backend, HAProxy bind, HAProxy server.
        let cases = [
            (
                Side::Origination,
                "",
                "tls = { ca_file = \"/b/tls/ca.crt\", sni = \"intake.test\" }\n",
                "",
                " ssl verify required ca-file /b/tls/ca.crt sni str(intake.test)",
            ),
            (
                Side::Frontend,
                "tls = { cert = \"/b/tls/proxy.crt\", key = \"/b/tls/proxy.key\" }\n",
                "",
                " ssl crt /b/tls/proxy.pem prefer-client-ciphers",
                "",
            ),
        ];
        for (side, frontend, backend, bind, server) in cases {
            let t = ProxyTls { side, pki: &pki };
            assert_eq!(t.agent_frontend(), frontend, "{side:?}");
            assert_eq!(t.agent_backend(), backend, "{side:?}");
            assert_eq!(t.haproxy_bind(), bind, "{side:?}");
            assert_eq!(t.haproxy_server(), server, "{side:?}");
        }
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(Path::new("/a\"b\\c")), r#""/a\"b\\c""#);
    }

    #[test]
    fn nginx_block_listens_with_ssl_and_the_intake_certificate() {
        let block = nginx_server(&pki(), "127.0.0.1:8443".parse().unwrap());
        assert!(
            block.contains("listen 127.0.0.1:8443 ssl backlog=16384;\n"),
            "{block}"
        );
        assert!(
            block.contains("ssl_certificate /b/tls/intake.crt;\n"),
            "{block}"
        );
        assert!(
            block.contains("ssl_certificate_key /b/tls/intake.key;\n"),
            "{block}"
        );
        assert!(block.contains("return 200"), "{block}");
    }

    #[test]
    fn generated_files_are_pem_and_plain_paths_only() {
        let dir = std::env::temp_dir().join(format!("ap-bench-pki-{}", std::process::id()));
        let pki = Pki::generate(&dir).unwrap();
        let names = Pki::names_in(&dir.to_string_lossy());
        assert_eq!(
            (&pki.ca, &pki.intake_key, &pki.proxy_pem),
            (&names.ca, &names.intake_key, &names.proxy_pem)
        );
        for p in [
            &pki.ca,
            &pki.intake_cert,
            &pki.intake_key,
            &pki.proxy_cert,
            &pki.proxy_key,
        ] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}: {text}", p.display());
        }
        let pem = std::fs::read_to_string(&pki.proxy_pem).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));
        assert!(Pki::generate(Path::new("/tmp/with space")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
