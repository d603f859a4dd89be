//! What the scenarios of HTTP the proxy reads share (connect mode's plain requests, http
//! frontends): the request smuggling attempts every such frontend must refuse, the uploads
//! whose bodies the intake hashes, and reading a kept-alive connection's answers.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A POST of `target` with `framing` headers, a chunked end and a smuggled request behind it.
pub fn smuggling_head(target: &str, host: &str, auth: &str, framing: &str) -> Vec<u8> {
    format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}{framing}\r\n0\r\n\r\n\
         GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
    )
    .into_bytes()
}

/// The heads a proxy that reads requests must refuse before it dials anything: each with its
/// name and the expected status (400, or 431 for the oversized one).
pub fn refused_heads(target: &str, host: &str, auth: &str) -> Vec<(&'static str, Vec<u8>, u16)> {
    let head = |framing: &str| smuggling_head(target, host, auth, framing);
    vec![
        (
            "Content-Length and Transfer-Encoding",
            head("Content-Length: 40\r\nTransfer-Encoding: chunked\r\n"),
            400,
        ),
        (
            "Transfer-Encoding and Content-Length",
            head("Transfer-Encoding: chunked\r\nContent-Length: 40\r\n"),
            400,
        ),
        (
            "two Content-Length",
            head("Content-Length: 5\r\nContent-Length: 40\r\n"),
            400,
        ),
        (
            "two equal Content-Length",
            head("Content-Length: 5\r\nContent-Length: 5\r\n"),
            400,
        ),
        (
            "Transfer-Encoding other than chunked",
            head("Transfer-Encoding: chunked, identity\r\n"),
            400,
        ),
        (
            "two Host",
            head("Host: other.test\r\nContent-Length: 5\r\n"),
            400,
        ),
        (
            "obs-fold",
            head("Content-Length: 5\r\nX-Folded: a\r\n b\r\n"),
            400,
        ),
        (
            "bare LF",
            format!(
                "POST {target} HTTP/1.1\nHost: {host}\n{}Content-Length: 5\n\n0\r\n\r\n",
                auth.replace("\r\n", "\n")
            )
            .into_bytes(),
            400,
        ),
        (
            "oversized head",
            format!(
                "GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}X-Big: {}\r\n\r\n",
                "b".repeat(20_000)
            )
            .into_bytes(),
            431,
        ),
    ]
}

/// POSTs the file at `body` to `url` with curl (through `curl`, which adds the proxy and TLS
/// options), once with a `Content-Length` and once chunked; each answer must carry `digest`,
/// the intake's SHA-256 of what it received.
pub fn post_twice(
    curl: impl Fn(&[&str]) -> anyhow::Result<(i32, String, String)>,
    url: &str,
    body: &Path,
    digest: &str,
) -> anyhow::Result<()> {
    let upload = format!("@{}", body.display());
    for chunked in [false, true] {
        let mut args = vec![
            "--data-binary",
            &upload,
            "-H",
            "Content-Type: application/octet-stream",
        ];
        if chunked {
            args.extend(["-H", "Transfer-Encoding: chunked"]);
        }
        args.push(url);
        let (code, out, err) = curl(&args)?;
        ensure!(
            code == 0 && out.contains(digest),
            "curl POST (chunked: {chunked}): exit {code}, {out:?} {err:?}"
        );
    }
    Ok(())
}

/// Writes `bytes` on a new connection to `proxy` and reads until the proxy closes it (at most
/// 10 s): every answer, as text.
pub async fn answers_to(proxy: SocketAddr, bytes: &[u8]) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(proxy).await?;
    stream.write_all(bytes).await?;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .context("no EOF after the answers")??;
    Ok(String::from_utf8_lossy(&all).into_owned())
}

/// The status codes of the answers in `text`, in order.
pub fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12))
        .collect()
}

/// Sends each case on a connection of its own and checks its answer's status.
pub async fn ensure_refused(
    proxy: SocketAddr,
    cases: &[(&str, Vec<u8>, u16)],
) -> anyhow::Result<()> {
    for (name, bytes, status) in cases {
        let answer = crate::connect::raw_request(proxy, bytes, false)
            .await
            .with_context(|| format!("{name}: no answer"))?;
        ensure!(
            answer.status == *status,
            "{name}: expected {status}, got {answer:?}"
        );
    }
    Ok(())
}

/// A body of `len` pattern bytes from `seed`, written to `dir/upload.bin`: the file and its
/// SHA-256 in hex (what the intake answers a POST of it with).
pub fn upload_file(dir: &Path, seed: u64, len: usize) -> anyhow::Result<(PathBuf, String)> {
    let body = crate::pattern::Pattern::bytes(seed, len);
    let digest = crate::pattern::hex(&crate::pattern::sha256(&body));
    let file = dir.join("upload.bin");
    std::fs::write(&file, &body)?;
    Ok((file, digest))
}

/// curl in `ns` with `options` before each call's own arguments: (exit code, stdout, stderr).
pub fn curl_in<'a>(
    ns: &'a crate::netns::NetNs,
    options: Vec<String>,
) -> impl Fn(&[&str]) -> anyhow::Result<(i32, String, String)> + 'a {
    move |args: &[&str]| {
        let mut all: Vec<&str> = vec!["-sS"];
        all.extend(options.iter().map(String::as_str));
        all.extend_from_slice(args);
        crate::intake::run_in_ns(ns, "curl", &all)
    }
}
