//! A tiny HTTP/1.1 upstream and client, enough for request/response traffic through the proxy.
//!
//! The upstream answers `POST /anything?resp=N` with 200 and a body that proves it saw the
//! exact request: the hex SHA-256 of `path \n body`, followed by `N` bytes of a pattern seeded
//! from that hash. The client knows the same rule and compares the whole response body.
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::pattern::{Pattern, hex, sha256};
use crate::peers::{IO_TIMEOUT, listen};

/// Longest request head line the server and client accept.
const MAX_LINE: usize = 8 * 1024;

/// The response body for a request: see the module doc.
pub fn expected_body(path: &str, body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(path.len() + 1 + body.len());
    input.extend_from_slice(path.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(body);
    let h = sha256(&input);
    let resp_len = path
        .split_once("resp=")
        .and_then(|(_, n)| n.split('&').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let seed = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    let mut out = hex(&h).into_bytes();
    out.extend_from_slice(&Pattern::bytes(seed, resp_len));
    out
}

/// The upstream server; stops (aborts its tasks) on drop.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl HttpUpstream {
    /// Binds on `ip`, port 0, and serves until dropped.
    pub async fn start(ip: IpAddr) -> anyhow::Result<Self> {
        let listener = listen(ip).await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, e) = (served.clone(), errors.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let (s, e) = (s.clone(), e.clone());
                conns.spawn(async move {
                    if let Err(err) = serve(stream, &s).await {
                        e.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{peer}: {err:#}"));
                    }
                });
                // Reap finished connections so the set stays small.
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            served,
            errors,
            task,
        })
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Checks that the server met no error and answered exactly `n` requests. It counts a
    /// request after writing the response, so a client can hold the last response a moment
    /// before the count moves: this waits (at most 2 s) for it.
    pub async fn expect_served(&self, n: u64) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.served() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let errors = self.errors();
        ensure!(errors.is_empty(), "upstream errors: {errors:?}");
        let served = self.served();
        ensure!(
            served == n,
            "upstream served {served} requests, expected {n}"
        );
        Ok(())
    }

    /// Errors the server met (malformed requests, stalls), for the test to report.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A parsed request or response head.
struct Head {
    first_line: String,
    content_length: usize,
    close: bool,
}

/// Reads a head; `None` on a clean EOF before its first byte.
async fn read_head(r: &mut BufReader<TcpStream>) -> anyhow::Result<Option<Head>> {
    let mut first_line = String::new();
    let mut content_length = None;
    let mut close = false;
    loop {
        let mut line = String::new();
        let n = timeout(IO_TIMEOUT, r.read_line(&mut line))
            .await
            .context("head read stalled")??;
        if n == 0 {
            if first_line.is_empty() {
                return Ok(None);
            }
            bail!("EOF inside a head after {first_line:?}");
        }
        ensure!(line.len() <= MAX_LINE, "head line too long");
        let line = line.trim_end_matches(['\r', '\n']);
        if first_line.is_empty() {
            ensure!(!line.is_empty(), "empty first line");
            first_line = line.to_owned();
            continue;
        }
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad header {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().context("bad content-length")?);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(Some(Head {
        first_line,
        content_length: content_length.context("no content-length")?,
        close,
    }))
}

async fn read_body(r: &mut BufReader<TcpStream>, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut body = vec![0; len];
    timeout(IO_TIMEOUT, r.read_exact(&mut body))
        .await
        .with_context(|| format!("body read of {len} bytes stalled"))?
        .with_context(|| format!("body read of {len} bytes"))?;
    Ok(body)
}

async fn serve(stream: TcpStream, served: &AtomicU64) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut r = BufReader::new(stream);
    while let Some(head) = read_head(&mut r).await? {
        let mut parts = head.first_line.split(' ');
        let (Some("POST"), Some(path), Some("HTTP/1.1")) =
            (parts.next(), parts.next(), parts.next())
        else {
            bail!("unexpected request line {:?}", head.first_line);
        };
        let path = path.to_owned();
        let body = read_body(&mut r, head.content_length).await?;
        let resp_body = expected_body(&path, &body);
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            resp_body.len(),
            if head.close { "close" } else { "keep-alive" }
        )
        .into_bytes();
        resp.extend_from_slice(&resp_body);
        timeout(IO_TIMEOUT, r.get_mut().write_all(&resp))
            .await
            .context("response write stalled")??;
        served.fetch_add(1, Ordering::Relaxed);
        if head.close {
            r.get_mut().shutdown().await?;
            return Ok(());
        }
    }
    Ok(())
}

/// The request number `i` of a test: its path and body (deterministic).
pub fn request_for(i: u64, body_len: usize, resp_len: usize) -> (String, Vec<u8>) {
    (
        format!("/obj/{i}?resp={resp_len}"),
        Pattern::bytes(i.wrapping_mul(0x1000_0001), body_len),
    )
}

/// Sends one request in a single write (the whole head and body at once, as an agent sending
/// immediately on connect does) and checks the whole response. With `close`, also checks that
/// the connection then ends with EOF. Returns the bytes sent and received.
pub async fn request(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    body: &[u8],
    close: bool,
) -> anyhow::Result<(u64, u64)> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: upstream\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes();
    req.extend_from_slice(body);
    timeout(IO_TIMEOUT, conn.get_mut().write_all(&req))
        .await
        .context("request write stalled")??;
    let head = read_head(conn)
        .await
        .with_context(|| format!("response to {path}"))?
        .with_context(|| format!("EOF instead of a response to {path}"))?;
    ensure!(
        head.first_line == "HTTP/1.1 200 OK",
        "bad status line {:?} for {path}",
        head.first_line
    );
    let resp_body = read_body(conn, head.content_length).await?;
    let expected = expected_body(path, body);
    ensure!(
        resp_body == expected,
        "wrong response body for {path}: {} bytes, sha256 {}, expected {} bytes, sha256 {}",
        resp_body.len(),
        hex(&sha256(&resp_body)),
        expected.len(),
        hex(&sha256(&expected))
    );
    if close {
        let mut extra = [0u8; 1];
        let n = timeout(IO_TIMEOUT, conn.read(&mut extra))
            .await
            .with_context(|| format!("no EOF after the response to {path}"))?
            .with_context(|| format!("read after the response to {path}"))?;
        ensure!(n == 0, "bytes after the response to {path}");
    }
    // Head sizes are included: these are the bytes on the wire.
    let received = resp_body.len() as u64 + response_head_len(resp_body.len(), close);
    Ok((req.len() as u64, received))
}

fn response_head_len(body_len: usize, close: bool) -> u64 {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\nConnection: {}\r\n\r\n",
        if close { "close" } else { "keep-alive" }
    )
    .len() as u64
}
