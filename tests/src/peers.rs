//! TCP peers: the test's clients and upstream servers. Every read and write has a timeout that
//! resets on progress, so a stalled proxy fails the test in seconds instead of hanging it.
//!
//! These functions create sockets: call them from inside the test's namespace (a
//! [`crate::netns::NetNs::block_on`] future).
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::pattern::{Hash, Pattern, hex};

/// 127.0.0.1, inside the test's namespace.
pub const V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// ::1, inside the test's namespace.
pub const V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);

/// How long a peer waits for any progress (one read or write) before declaring a stall.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of one write.
const CHUNK: usize = 256 * 1024;

/// Binds a listener (port 0: the kernel picks; read it back with `local_addr`).
pub async fn listen(ip: IpAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .with_context(|| format!("bind {ip}:0"))
}

/// A local address on which nothing listens: connecting to it is refused.
pub fn closed_port(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
    Ok(l.local_addr()?)
}

pub async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect {addr}: timed out"))?
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

pub async fn accept(listener: &TcpListener) -> anyhow::Result<TcpStream> {
    let (s, _) = timeout(IO_TIMEOUT, listener.accept())
        .await
        .context("accept: no connection reached the upstream in time")??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// An upstream for one connection: accepts it, reads to EOF (at most `recv_limit` bytes),
/// answers with `send_len` bytes of stream `seed`, closes. Returns what it read.
pub async fn serve_once(
    listener: TcpListener,
    recv_limit: u64,
    seed: u64,
    send_len: u64,
) -> anyhow::Result<Digest> {
    let mut s = accept(&listener).await?;
    let got = recv_to_eof(&mut s, recv_limit).await?;
    send_pattern(&mut s, seed, send_len).await?;
    timeout(IO_TIMEOUT, s.shutdown())
        .await
        .context("shutdown(Write) stalled")??;
    Ok(got)
}

/// Makes the next close of `s` send a RST (SO_LINGER with a zero timeout).
pub fn linger_zero(s: &TcpStream) -> anyhow::Result<()> {
    socket2::SockRef::from(s).set_linger(Some(Duration::ZERO))?;
    Ok(())
}

/// What one side sent or received: length and SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub hash: Hash,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes sha256={}", self.len, hex(&self.hash))
    }
}

/// Writes `len` bytes of the stream `seed`, returns their digest (as computed while sending).
pub async fn send_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> anyhow::Result<Digest> {
    let mut p = Pattern::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(CHUNK as u64) as usize;
        p.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        timeout(IO_TIMEOUT, w.write_all(&buf[..n]))
            .await
            .with_context(|| format!("write stalled after {sent} of {len} bytes"))?
            .with_context(|| format!("write failed after {sent} of {len} bytes"))?;
        sent += n as u64;
    }
    Ok(Digest {
        len,
        hash: h.finalize().into(),
    })
}

/// Reads until EOF (at most `limit` bytes) and returns the digest of all that was read.
pub async fn recv_to_eof<R: AsyncRead + Unpin>(r: &mut R, limit: u64) -> anyhow::Result<Digest> {
    Ok(recv_checked(r, limit, None).await?.0)
}

/// [`recv_to_eof`], also comparing the bytes with the stream `expect_seed` as they come, for
/// the diagnosis: returns the offset of the first byte that differs from it, if any.
pub async fn recv_checked<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u64,
    expect_seed: Option<u64>,
) -> anyhow::Result<(Digest, Option<u64>)> {
    let mut h = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut expected = vec![0; CHUNK];
    let mut pattern = expect_seed.map(Pattern::new);
    let mut first_mismatch = None;
    let mut got = 0u64;
    loop {
        let n = timeout(IO_TIMEOUT, r.read(&mut buf))
            .await
            .with_context(|| format!("read stalled after {got} bytes (no EOF)"))?
            .with_context(|| format!("read failed after {got} bytes"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        if let Some(p) = pattern.as_mut() {
            p.fill(&mut expected[..n]);
            if first_mismatch.is_none()
                && let Some(i) = (0..n).find(|&i| buf[i] != expected[i])
            {
                first_mismatch = Some(got + i as u64);
            }
        }
        got += n as u64;
        if got > limit {
            bail!(
                "received more than the {limit} bytes expected (first byte differing from \
                 the sender's stream at {first_mismatch:?})"
            );
        }
    }
    let digest = Digest {
        len: got,
        hash: h.finalize().into(),
    };
    Ok((digest, first_mismatch))
}

/// Reads exactly `len` bytes and returns their digest (no EOF expected).
pub async fn recv_exact<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> anyhow::Result<Digest> {
    let mut h = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut got = 0u64;
    while got < len {
        let want = (len - got).min(CHUNK as u64) as usize;
        let n = timeout(IO_TIMEOUT, r.read(&mut buf[..want]))
            .await
            .with_context(|| format!("read stalled after {got} of {len} bytes"))?
            .with_context(|| format!("read failed after {got} of {len} bytes"))?;
        if n == 0 {
            bail!("EOF after {got} of {len} bytes");
        }
        h.update(&buf[..n]);
        got += n as u64;
    }
    Ok(Digest {
        len,
        hash: h.finalize().into(),
    })
}

/// What one side of a full-duplex exchange sent and received.
#[derive(Debug)]
pub struct Exchanged {
    pub sent: Digest,
    pub received: Digest,
    /// Where the received bytes first differ from the stream the caller said to expect.
    pub first_mismatch: Option<u64>,
}

/// Sends `send_len` bytes of stream `seed` and shuts down writing, while reading everything the
/// other side sends until EOF (at most `recv_limit` bytes). Both directions run concurrently.
pub async fn exchange(
    stream: TcpStream,
    seed: u64,
    send_len: u64,
    recv_limit: u64,
) -> anyhow::Result<Exchanged> {
    exchange_expecting(stream, seed, send_len, recv_limit, None).await
}

/// [`exchange`], with the received bytes also compared to the stream `expect_seed` (see
/// [`recv_checked`]), so that a corruption is reported with its offset.
pub async fn exchange_expecting(
    stream: TcpStream,
    seed: u64,
    send_len: u64,
    recv_limit: u64,
    expect_seed: Option<u64>,
) -> anyhow::Result<Exchanged> {
    let (r, w) = stream.into_split();
    exchange_halves(r, w, seed, send_len, recv_limit, expect_seed).await
}

/// [`exchange_expecting`] over the two halves of any stream (a TCP socket, a TLS session).
pub async fn exchange_halves<R, W>(
    mut r: R,
    mut w: W,
    seed: u64,
    send_len: u64,
    recv_limit: u64,
    expect_seed: Option<u64>,
) -> anyhow::Result<Exchanged>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Two tasks, so that hashing both directions can use both cores.
    let writer = tokio::spawn(async move {
        let d = send_pattern(&mut w, seed, send_len).await?;
        timeout(IO_TIMEOUT, w.shutdown())
            .await
            .context("shutdown(Write) stalled")??;
        anyhow::Ok(d)
    });
    let reader = tokio::spawn(async move { recv_checked(&mut r, recv_limit, expect_seed).await });
    let (sent, received) = tokio::try_join!(writer, reader)?;
    let (received, first_mismatch) = received.context("receiving")?;
    Ok(Exchanged {
        sent: sent.context("sending")?,
        received,
        first_mismatch,
    })
}

/// How a reader saw its connection end.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    Eof,
    Error(io::ErrorKind),
}

/// Reads and discards until EOF or an error; returns how it ended and how many bytes came.
pub async fn drain_until_end<R: AsyncRead + Unpin>(
    r: &mut R,
    within: Duration,
) -> anyhow::Result<(ReadEnd, u64)> {
    let mut buf = vec![0; CHUNK];
    let mut got = 0u64;
    let drain = async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return ReadEnd::Eof,
                Ok(n) => got += n as u64,
                Err(e) => return ReadEnd::Error(e.kind()),
            }
        }
    };
    let end = timeout(within, drain)
        .await
        .with_context(|| format!("connection did not end within {within:?}"))?;
    Ok((end, got))
}

/// Writes the stream `seed` until a write fails (e.g. the connection was reset) or `limit`
/// bytes; returns the bytes written and the error that stopped it, if any.
pub async fn write_until_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    limit: u64,
    within: Duration,
) -> anyhow::Result<(u64, Option<io::ErrorKind>)> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0; 16 * 1024];
    let mut sent = 0u64;
    let fill = async {
        while sent < limit {
            p.fill(&mut buf);
            match w.write(&buf).await {
                Ok(n) => sent += n as u64,
                Err(e) => return Some(e.kind()),
            }
        }
        None
    };
    let err = timeout(within, fill)
        .await
        .with_context(|| format!("writes neither failed nor finished within {within:?}"))?;
    Ok((sent, err))
}
