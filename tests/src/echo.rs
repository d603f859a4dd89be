//! Small peers for scenarios about the daemon's life (reloads, upgrades) rather than its bytes:
//! an echo server, one checked echo round trip, and a paced writer.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::pattern::Pattern;

/// Echoes every connection of `listener` back to it, counting them in `accepted`.
pub fn echo_server(listener: TcpListener, accepted: Arc<AtomicU64>) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// One short connection through `to`: `len` bytes of stream `seed` out, the same back, checked.
pub async fn echo_once(to: SocketAddr, seed: u64, len: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(to)
        .await
        .with_context(|| format!("connect {to}"))?;
    let mut out = vec![0u8; len];
    Pattern::new(seed).fill(&mut out);
    s.write_all(&out).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .context("echo stalled")??;
    ensure!(
        back == out,
        "echo through {to} returned {} other bytes",
        back.len()
    );
    Ok(())
}

/// Writes `chunks` chunks of `chunk` bytes of stream `seed`, one every `pause`, then shuts
/// down writing.
pub async fn paced<W: AsyncWrite + Unpin>(
    mut w: W,
    seed: u64,
    chunks: u64,
    chunk: usize,
    pause: Duration,
) -> anyhow::Result<()> {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; chunk];
    for i in 0..chunks {
        pattern.fill(&mut buf);
        w.write_all(&buf)
            .await
            .with_context(|| format!("paced write {i}"))?;
        tokio::time::sleep(pause).await;
    }
    w.shutdown().await?;
    Ok(())
}
