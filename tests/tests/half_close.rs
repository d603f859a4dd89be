//! Half-close: one side sends and shuts down writing; the other reads everything and EOF, and
//! only then answers over the still-open other direction. Byte-exact both ways. These also
//! cover IPv6: an IPv6 upstream behind an IPv4 frontend, and an IPv6 frontend.
use std::net::SocketAddr;
use std::time::Duration;

use agent_proxy_tests::checks::{CLOSED, assert_bytes, check_conn_log, tail};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::{
    Digest, IO_TIMEOUT, V4, V6, accept, connect, listen, recv_to_eof, send_pattern,
};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, ensure};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The first speaker's bytes (an odd size, several segments).
const FIRST: (u64, u64) = (0xf1, (1 << 20) + 17);
/// The answer, sent only after the first speaker's EOF arrived.
const ANSWER: (u64, u64) = (0xa2, (512 << 10) + 5);
/// Pause between reading EOF and answering: a proxy that tears the connection down on the
/// first FIN would be caught here.
const PAUSE: Duration = Duration::from_millis(300);

/// Sends FIRST, shuts down writing, then reads the ANSWER to EOF.
async fn speak_first(s: TcpStream) -> anyhow::Result<Digest> {
    let (mut r, mut w) = s.into_split();
    let sent = send_pattern(&mut w, FIRST.0, FIRST.1).await?;
    timeout(IO_TIMEOUT, w.shutdown()).await??;
    ensure!(sent.hash == Pattern::hash(FIRST.0, FIRST.1));
    let got = recv_to_eof(&mut r, 1 << 30)
        .await
        .context("reading the answer after our own shutdown(Write)")?;
    expect(&got, ANSWER, "the answer, read by the first speaker")?;
    Ok(got)
}

/// Reads FIRST to EOF, pauses, sends the ANSWER, shuts down writing, and waits for EOF again.
async fn answer<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
) -> anyhow::Result<()> {
    let got = recv_to_eof(r, 1 << 30).await?;
    expect(
        &got,
        FIRST,
        "the first speaker's bytes, read by the answerer",
    )?;
    tokio::time::sleep(PAUSE).await;
    send_pattern(w, ANSWER.0, ANSWER.1)
        .await
        .context("answering after the peer's half-close")?;
    timeout(IO_TIMEOUT, w.shutdown()).await??;
    Ok(())
}

fn expect(got: &Digest, (seed, len): (u64, u64), what: &str) -> anyhow::Result<()> {
    let want = Digest {
        len,
        hash: Pattern::hash(seed, len),
    };
    ensure!(*got == want, "{what}: got {got:?}, expected {want:?}");
    Ok(())
}

/// Runs one half-close exchange: the client speaks first if `client_first`.
fn half_close(
    dp: Dataplane,
    listen_addr: SocketAddr,
    upstream_ip: std::net::IpAddr,
    client_first: bool,
) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = listen(upstream_ip).await?;
        let mut config = DaemonConfig::new(dp, vec![upstream.local_addr()?]);
        config.listen = listen_addr;
        let env = TestEnv::start(ns, config)?;
        let server = tokio::spawn(async move {
            let s = accept(&upstream).await?;
            if client_first {
                let (mut r, mut w) = s.into_split();
                answer(&mut r, &mut w).await?;
            } else {
                speak_first(s).await?;
            }
            anyhow::Ok(())
        });
        let s = connect(listen_addr).await?;
        if client_first {
            speak_first(s).await.context("client")?;
        } else {
            let (mut r, mut w) = s.into_split();
            answer(&mut r, &mut w).await.context("client")?;
        }
        server.await?.context("upstream")?;

        let (up, down) = if client_first {
            (FIRST.1, ANSWER.1)
        } else {
            (ANSWER.1, FIRST.1)
        };
        let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
        ensure!(logs.len() == 1, "{} log lines: {logs:?}", logs.len());
        check_conn_log(&logs[0], dp, up, down, CLOSED)?;
        assert_bytes(&env.daemon, dp, up, down, tail(&logs))?;
        env.finish()
    })
}

/// Client sends then half-closes; IPv4 frontend, IPv6 upstream.
fn half_close_client_first(dp: Dataplane) -> anyhow::Result<()> {
    half_close(dp, "127.0.0.1:7000".parse()?, V6, true)
}

/// Upstream speaks first (before the client sent anything) then half-closes; IPv6 frontend,
/// IPv4 upstream.
fn half_close_upstream_first(dp: Dataplane) -> anyhow::Result<()> {
    half_close(dp, "[::1]:7000".parse()?, V4, false)
}

dataplane_tests!(half_close_client_first, half_close_upstream_first);
