//! Helpers for the CONNECT-mode scenarios: the daemon config of a connect frontend, a raw
//! client that sends any bytes and reads the whole answer, per-namespace host names, and the
//! `destination`/`status` fields of the log lines.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{DaemonConfig, Dataplane, FRONTEND};
use crate::logs::{CONNECTION_CLOSED, json_lines};
use crate::metrics::Metrics;
use crate::netns::NetNs;
use crate::peers::{IO_TIMEOUT, connect};

/// The user of the generated configs.
pub const USER: &str = "agent";
/// Its password; a test checks that it never reaches the log.
pub const PASSWORD: &str = "s3cret-pw";

/// A daemon config with one connect frontend (no backend), `users` = [`USER`]/[`PASSWORD`]
/// unless `auth` is false, and `extra` TOML lines appended to the frontend.
pub fn connect_config(
    dp: Dataplane,
    destinations: &[String],
    auth: bool,
    extra: &str,
) -> DaemonConfig {
    let mut config = DaemonConfig::new(dp, Vec::new());
    let users = if auth {
        format!("users = [{{ name = \"{USER}\", password = \"{PASSWORD}\" }}]\n")
    } else {
        String::new()
    };
    let destinations: Vec<String> = destinations.iter().map(|d| format!("\"{d}\"")).collect();
    config.mode = "connect";
    config.toml_override = Some(format!(
        "[global]\ndataplane = \"{dp}\"\n{}admin = \"{}\"\ndrain_timeout = \"2s\"\nlog_format = \"json\"\n\n\
         [[frontend]]\nname = \"{FRONTEND}\"\nlisten = \"{}\"\nmode = \"connect\"\n{users}\
         allow_destinations = [{}]\nconnect_timeout = \"1s\"\n{extra}",
        dp.extra_global(),
        config.admin,
        config.listen,
        destinations.join(", "),
    ));
    config
}

/// `Proxy-Authorization: Basic ...` for `user:password`, with its line end.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A CONNECT request head for `target`, with `headers` (each ending in CRLF).
pub fn connect_head(target: &str, headers: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n")
}

/// An answer of the proxy, read to EOF.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub status_line: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head (status line and headers) from `r`.
pub async fn read_answer_head(
    r: &mut BufReader<TcpStream>,
) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let mut status_line = String::new();
    timeout(IO_TIMEOUT, r.read_line(&mut status_line))
        .await
        .context("no answer")??;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        let n = timeout(IO_TIMEOUT, r.read_line(&mut line))
            .await
            .context("answer head stalled")??;
        ensure!(n > 0, "EOF inside the answer head after {status_line:?}");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').context("header line without ':'")?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok((status_line.trim_end().to_owned(), headers))
}

fn status_of(line: &str) -> anyhow::Result<u16> {
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP answer: {line:?}"
    );
    parts
        .next()
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {line:?}"))
}

/// Sends `bytes` (shutting down writing when `close_after`), then reads the whole answer to
/// EOF and checks that it is well formed: a status line, headers, and a body exactly as long
/// as its Content-Length.
pub async fn raw_request(
    proxy: SocketAddr,
    bytes: &[u8],
    close_after: bool,
) -> anyhow::Result<Answer> {
    let mut stream = connect(proxy).await?;
    timeout(IO_TIMEOUT, stream.write_all(bytes))
        .await
        .context("request write stalled")??;
    if close_after {
        stream.shutdown().await?;
    }
    read_answer(stream).await
}

/// Reads an error answer to EOF and checks its framing.
pub async fn read_answer(stream: TcpStream) -> anyhow::Result<Answer> {
    let mut r = BufReader::new(stream);
    let (status_line, headers) = read_answer_head(&mut r).await?;
    let status = status_of(&status_line)?;
    let mut body = Vec::new();
    timeout(IO_TIMEOUT, r.read_to_end(&mut body))
        .await
        .context("no EOF after the answer")??;
    let answer = Answer {
        status,
        status_line,
        headers,
        body,
    };
    let length: usize = answer
        .header("content-length")
        .with_context(|| format!("no Content-Length: {answer:?}"))?
        .parse()?;
    ensure!(
        length == answer.body.len(),
        "Content-Length {length} but a {} byte body: {answer:?}",
        answer.body.len()
    );
    Ok(answer)
}

/// Opens a tunnel: sends the CONNECT head followed by `pipelined` in one write, checks the 200
/// and returns the stream positioned after the answer head (any bytes the upstream already
/// sent stay in the reader's buffer).
pub async fn open_tunnel(
    proxy: SocketAddr,
    head: &str,
    pipelined: &[u8],
) -> anyhow::Result<BufReader<TcpStream>> {
    let mut stream = connect(proxy).await?;
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(pipelined);
    timeout(IO_TIMEOUT, stream.write_all(&bytes))
        .await
        .context("CONNECT write stalled")??;
    let mut r = BufReader::new(stream);
    let (status_line, headers) = read_answer_head(&mut r).await?;
    if status_of(&status_line)? != 200 {
        bail!("tunnel refused: {status_line:?} {headers:?}");
    }
    ensure!(
        status_line == "HTTP/1.1 200 Connection established" && headers.is_empty(),
        "unexpected tunnel answer {status_line:?} {headers:?}"
    );
    Ok(r)
}

/// Checks `agent_proxy_connect_requests_total{status}` against `expected` (status, count) pairs.
pub fn ensure_answer_counts(m: &Metrics, expected: &[(&str, u64)]) -> anyhow::Result<()> {
    for &(status, expected) in expected {
        let counted = m.count("agent_proxy_connect_requests_total", &[("status", status)]);
        ensure!(
            counted == expected,
            "agent_proxy_connect_requests_total{{status=\"{status}\"}} = {counted}, expected {expected}"
        );
    }
    Ok(())
}

/// One "connection closed" line: its fields as JSON.
pub fn closed_lines(stderr: &str) -> Vec<Value> {
    json_lines(stderr)
        .into_iter()
        .map(|line| line.get("fields").cloned().unwrap_or(line))
        .filter(|f| f.get("message").and_then(Value::as_str) == Some(CONNECTION_CLOSED))
        .collect()
}

/// A string field of a log line ("" when absent).
pub fn field(line: &Value, key: &str) -> String {
    match line.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Host names for the daemon of one namespace: `ip netns exec` bind-mounts
/// `/etc/netns/NAME/hosts` over `/etc/hosts` for the programs it starts, so the host's own
/// `/etc/hosts` is untouched. Removed on drop.
pub struct NetnsHosts {
    dir: PathBuf,
}

impl NetnsHosts {
    /// `lines` in hosts(5) format, plus localhost.
    pub fn new(ns: &NetNs, lines: &[String]) -> anyhow::Result<Self> {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let guard = Self { dir };
        let mut text = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n".to_owned();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(guard.dir.join("hosts"), text)?;
        Ok(guard)
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Adds `cidr` to `lo` in `ns` (an address the tests treat as a public destination).
pub fn add_loopback_address(ns: &NetNs, cidr: &str) -> anyhow::Result<()> {
    run(&["ip", "-n", ns.name(), "addr", "add", cidr, "dev", "lo"])
}

/// Runs a command to success.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    output(args).map(drop)
}

/// Runs a command to success and returns its standard output.
pub fn output(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Generous bound for one answer (liveness only).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);
