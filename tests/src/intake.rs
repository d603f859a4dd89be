//! A local HTTPS "intake" for the real-client scenarios: Python's http.server behind TLS with a
//! throw-away certificate (openssl), run inside the test's namespace, or in plain HTTP
//! ([`HttpsIntake::start_plain`]). It answers `GET /hello` with `hello`, and any POST (with a
//! `Content-Length` or chunked body) with 202 `{"status": "ok", "sha256": ...}`, writing one
//! JSON line per request (method, path, `Host`, `Via`, whether `Proxy-Authorization` came
//! through, the body's SHA-256 and length, the decompressed body) and one per accepted
//! connection (`{"accept": true}`) to its log so the test can see what arrived.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::netns::NetNs;

const SERVER: &str = r#"
import hashlib, http.server, json, ssl, sys, zlib

cert, key, host, port, log = sys.argv[1:6]
out = open(log, "a", buffering=1)

class Intake(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def seen(self):
        h = self.headers
        return {"path": self.path, "host": h.get("Host"), "via": h.get_all("Via"),
                "proxy_authorization": h.get("Proxy-Authorization") is not None,
                "proxy_connection": h.get("Proxy-Connection") is not None,
                "chunked": h.get("Transfer-Encoding", "") == "chunked"}

    def body(self):
        if self.headers.get("Transfer-Encoding", "") == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_GET(self):
        out.write(json.dumps(dict(self.seen(), method="GET")) + "\n")
        self.reply(200, b"hello")

    def do_POST(self):
        body = self.body()
        digest = hashlib.sha256(body).hexdigest()
        enc = self.headers.get("Content-Encoding", "")
        if enc in ("deflate", "gzip"):
            body = zlib.decompress(body, zlib.MAX_WBITS | 32)
        out.write(json.dumps(dict(self.seen(), method="POST", sha256=digest, len=len(body),
                                  body=body[:4096].decode("utf-8", "replace"))) + "\n")
        self.reply(202, json.dumps({"status": "ok", "sha256": digest}).encode(), "application/json")

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    def get_request(self):
        pair = super().get_request()
        out.write(json.dumps({"accept": True}) + "\n")
        return pair

server = Server((host, int(port)), Intake)
if cert != "-":
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
out.write(json.dumps({"ready": True}) + "\n")
server.serve_forever()
"#;

/// The running intake; killed on drop.
pub struct HttpsIntake {
    pub addr: SocketAddr,
    /// The self-signed certificate clients must trust.
    pub cert: PathBuf,
    log: PathBuf,
    child: Child,
}

impl HttpsIntake {
    /// Starts the intake in `ns` on `addr`, with a certificate for `name` and the address, in
    /// `dir`; waits (at most 10 s) until it listens.
    pub fn start(ns: &NetNs, addr: SocketAddr, name: &str, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(ns, addr, Some(name), dir)
    }

    /// The intake in plain HTTP (`cert` is then empty).
    pub fn start_plain(ns: &NetNs, addr: SocketAddr, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(ns, addr, None, dir)
    }

    /// The intake in HTTPS with a given certificate and key (one a test's CA signed: rustls
    /// refuses openssl's self-signed certificates, which are CAs, as end entities).
    pub fn start_certified(
        ns: &NetNs,
        addr: SocketAddr,
        (cert, key): (PathBuf, PathBuf),
        dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::spawn(ns, addr, Some((cert, key)), dir)
    }

    fn start_with(
        ns: &NetNs,
        addr: SocketAddr,
        tls_name: Option<&str>,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let files = match tls_name {
            Some(name) => Some(certificate(addr, name, dir)?),
            None => None,
        };
        Self::spawn(ns, addr, files, dir)
    }

    fn spawn(
        ns: &NetNs,
        addr: SocketAddr,
        files: Option<(PathBuf, PathBuf)>,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let tls = files.is_some();
        let (cert, key) = files.unwrap_or_default();
        let arg = |p: &Path| {
            if tls {
                p.as_os_str().to_owned()
            } else {
                "-".into()
            }
        };
        let script = dir.join("intake.py");
        std::fs::write(&script, SERVER)?;
        let log = dir.join("intake.log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "python3"])
            .arg(&script)
            .arg(arg(&cert))
            .arg(arg(&key))
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .context("start the HTTPS intake")?;
        let mut intake = Self {
            addr,
            cert,
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !intake.requests().iter().any(|r| r.get("ready").is_some()) {
            if let Some(status) = intake.child.try_wait()? {
                bail!("the HTTPS intake exited with {status} before listening");
            }
            if Instant::now() > deadline {
                bail!("the HTTPS intake did not start within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(intake)
    }

    /// The connections it accepted so far.
    pub fn accepted(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.get("accept").is_some())
            .count()
    }

    /// Every line the intake logged (requests, and the "ready" line).
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for HttpsIntake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for `name` and `addr`'s address, and its key, in `dir`.
fn certificate(addr: SocketAddr, name: &str, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join("intake.pem");
    let key = dir.join("intake.key");
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={name}")])
        .args([
            "-addext",
            &format!("subjectAltName=DNS:{name},IP:{}", addr.ip()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run openssl (apt-get install openssl)")?;
    ensure!(status.success(), "openssl req failed: {status}");
    Ok((cert, key))
}

/// Runs `program args` inside `ns` and returns (exit code, stdout, stderr).
pub fn run_in_ns(
    ns: &NetNs,
    program: &str,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {program} in {}", ns.name()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
