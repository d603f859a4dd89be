//! A slow reader must not make the proxy (or the kernel on its behalf) buffer without bound:
//! the upstream stops reading, the client writes as fast as it can, and what the client gets
//! to write must plateau while the daemon's memory and the kernel's TCP memory stay flat. Then
//! the upstream reads everything, which must be exactly what the client wrote.
use std::time::{Duration, Instant};

use agent_proxy_tests::checks::{CLOSED, assert_bytes, bytes, check_conn_log, tail};
use agent_proxy_tests::heavy::heavy;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::{Pattern, hex};
use agent_proxy_tests::peers::{IO_TIMEOUT, V4, accept, connect, listen, recv_checked};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, ensure};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::time::timeout;

const MIB: u64 = 1 << 20;
/// The client's stream.
const SEED: u64 = 42;
const KERNEL_WINDOW: u64 = 4 * MIB;
const KERNEL_SNDBUF: u64 = 8 * MIB;
/// What the client may get written in total: the window plus every socket buffer on the way
/// (client send, daemon receive and send on both sockets, upstream receive) fits well below.
const WRITTEN_BOUND: u64 = 64 * MIB;
/// The client stops here whatever happens, so that a proxy without flow control cannot eat
/// the machine's memory during the test.
const WRITE_CAP: u64 = 256 * MIB;
const WRITE_FOR: Duration = Duration::from_secs(4);
/// Bound on the growth of the daemon's RSS and of the kernel's TCP memory.
const MEMORY_BOUND: u64 = 64 * MIB;
/// After this long, the last second must add almost nothing: the amount written plateaued.
const PLATEAU_SLACK: u64 = MIB;

/// TCP memory from sockstat ("TCP: inuse .. mem N", pages), in bytes. The file is read
/// through the daemon's pid so it is the test namespace's view; note that the kernel keeps
/// the TCP memory figure machine-wide, so other tests' sockets show in it too.
fn tcp_mem(pid: u32) -> anyhow::Result<u64> {
    let text = NetNs::proc_net(pid, "sockstat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("no TCP line in sockstat")?;
    let pages: u64 = line
        .split_whitespace()
        .skip_while(|w| *w != "mem")
        .nth(1)
        .context("no mem in sockstat")?
        .parse()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Ok(pages * page)
}

/// The daemon of these tests: the window and send buffer the bounds above assume.
fn config(dp: Dataplane, upstream: std::net::SocketAddr) -> DaemonConfig {
    let mut config = DaemonConfig::new(dp, vec![upstream]);
    config.kernel_window = Some(KERNEL_WINDOW);
    config.kernel_sndbuf = Some(KERNEL_SNDBUF);
    config
}

fn slow_reader(dp: Dataplane) -> anyhow::Result<()> {
    let _heavy = heavy();
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = listen(V4).await?;
        let env = TestEnv::start(ns, config(dp, upstream.local_addr()?))?;
        let pid = env.daemon.pid();
        let mut client = connect(env.daemon.config.listen).await?;
        // The upstream accepts and then does not read.
        let mut up = accept(&upstream).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss_before = env.daemon.rss_bytes()?;
        let tcp_before = tcp_mem(pid)?;

        let mut w = PatternWriter::new(SEED);
        let mut samples = Vec::new();
        let started = Instant::now();
        let mut next_sample = Duration::ZERO;
        while started.elapsed() < WRITE_FOR && w.written < WRITE_CAP {
            if started.elapsed() >= next_sample {
                samples.push((started.elapsed(), w.written));
                next_sample += Duration::from_millis(250);
            }
            w.write_once(&mut client).await?;
        }
        let written = w.written;
        samples.push((started.elapsed(), written));
        let rss_after = env.daemon.rss_bytes()?;
        let tcp_after = tcp_mem(pid)?;
        let series: Vec<String> = samples
            .iter()
            .map(|(t, w)| format!("{:.2}s:{:.1}MiB", t.as_secs_f64(), *w as f64 / MIB as f64))
            .collect();
        eprintln!(
            "slow reader [{dp}]: written over time: {}",
            series.join(" ")
        );
        eprintln!(
            "slow reader [{dp}]: daemon RSS {:.1} -> {:.1} MiB, kernel TCP mem {:.1} -> {:.1} MiB",
            rss_before as f64 / MIB as f64,
            rss_after as f64 / MIB as f64,
            tcp_before as f64 / MIB as f64,
            tcp_after as f64 / MIB as f64
        );
        ensure!(
            written < WRITTEN_BOUND,
            "the client wrote {written} bytes into a connection whose reader reads nothing \
             (bound {WRITTEN_BOUND}): no backpressure. Series: {series:?}"
        );
        let one_second_ago = samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= started.elapsed() - Duration::from_secs(1))
            .map_or(0, |(_, w)| *w);
        ensure!(
            written - one_second_ago <= PLATEAU_SLACK,
            "still {} bytes written in the last second: no plateau. Series: {series:?}",
            written - one_second_ago
        );
        let rss_growth = rss_after.saturating_sub(rss_before);
        ensure!(
            rss_growth < MEMORY_BOUND,
            "daemon RSS grew by {rss_growth} bytes while its upstream did not read"
        );
        let tcp_growth = tcp_after.saturating_sub(tcp_before);
        ensure!(
            tcp_growth < MEMORY_BOUND,
            "kernel TCP memory grew by {tcp_growth} bytes while the upstream did not read"
        );

        // Now the upstream reads everything: exactly what the client wrote, in order.
        let reader =
            tokio::spawn(async move { recv_checked(&mut up, WRITE_CAP, Some(SEED)).await });
        timeout(IO_TIMEOUT, client.shutdown())
            .await
            .context("client shutdown stalled")??;
        let (got, first_mismatch) = reader.await?.context("upstream reading the backlog")?;
        let sent: [u8; 32] = w.hash.finalize().into();
        ensure!(
            got.len == written && got.hash == sent,
            "upstream read {:?}; the client wrote {written} bytes sha256={}; first differing \
             byte at offset {first_mismatch:?}",
            got,
            hex(&sent)
        );
        drop(client);
        let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
        ensure!(logs.len() == 1, "{} log lines: {logs:?}", logs.len());
        check_conn_log(&logs[0], dp, written, 0, CLOSED)?;
        assert_bytes(&env.daemon, dp, written, 0, tail(&logs))?;
        env.finish()
    })
}

/// Phase 2 of `caught_up_direction_returns_to_the_kernel`: written in paced chunks, slowly
/// enough that the upstream (now reading) never lets the redirect queue reach the window.
const PHASE2: u64 = 16 * MIB;

/// The client's side of these tests: a seeded pattern written in 64 KiB chunks, with the hash
/// and count of exactly what was written.
struct PatternWriter {
    pattern: Pattern,
    hash: Sha256,
    chunk: Vec<u8>,
    off: usize,
    written: u64,
}

impl PatternWriter {
    fn new(seed: u64) -> Self {
        let chunk = vec![0u8; 64 * 1024];
        Self {
            pattern: Pattern::new(seed),
            hash: Sha256::new(),
            off: chunk.len(),
            chunk,
            written: 0,
        }
    }

    /// One write of at most 50 ms; returns whether it wrote anything. A timed-out write wrote
    /// nothing (tokio's write is one poll), so `written` and the hash stay exact.
    async fn write_once(&mut self, client: &mut tokio::net::TcpStream) -> anyhow::Result<bool> {
        if self.off == self.chunk.len() {
            self.pattern.fill(&mut self.chunk);
            self.off = 0;
        }
        let Ok(r) = timeout(
            Duration::from_millis(50),
            client.write(&self.chunk[self.off..]),
        )
        .await
        else {
            return Ok(false);
        };
        let n = r.context("client write")?;
        self.hash.update(&self.chunk[self.off..self.off + n]);
        self.off += n;
        self.written += n as u64;
        Ok(true)
    }

    /// Writes the rest of the current chunk and `more` whole chunks, `pause` apart.
    async fn write_chunks(
        &mut self,
        client: &mut tokio::net::TcpStream,
        more: u64,
        pause: Duration,
    ) -> anyhow::Result<()> {
        for _ in 0..=more {
            if self.off == self.chunk.len() {
                self.pattern.fill(&mut self.chunk);
                self.off = 0;
            }
            timeout(IO_TIMEOUT, client.write_all(&self.chunk[self.off..]))
                .await
                .context("client write stalled")??;
            self.hash.update(&self.chunk[self.off..]);
            self.written += (self.chunk.len() - self.off) as u64;
            self.off = self.chunk.len();
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }
}

/// A direction handed to userspace because its reader stopped goes back to the kernel once
/// userspace has carried the backlog: after the upstream has caught up, a paced second phase
/// is carried entirely by the verdict (no userspace byte), the log line counts the hand-back,
/// and the upstream reads exactly what the client wrote, in order.
fn caught_up_direction_returns_to_the_kernel(dp: Dataplane) -> anyhow::Result<()> {
    let _heavy = heavy();
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = listen(V4).await?;
        let env = TestEnv::start(ns, config(dp, upstream.local_addr()?))?;
        let mut client = connect(env.daemon.config.listen).await?;
        let mut up = accept(&upstream).await?;

        // Phase 1: the upstream does not read until the client can write no more.
        let mut w = PatternWriter::new(SEED);
        let started = Instant::now();
        let mut last_progress = Instant::now();
        while started.elapsed() < WRITE_FOR && last_progress.elapsed() < Duration::from_millis(300)
        {
            if w.write_once(&mut client).await? {
                last_progress = Instant::now();
            }
        }
        ensure!(
            w.written < WRITTEN_BOUND,
            "the client wrote {} bytes to a reader that reads nothing: no backpressure",
            w.written
        );
        let reader =
            tokio::spawn(async move { recv_checked(&mut up, WRITE_CAP, Some(SEED)).await });
        // The pattern continues where phase 1 stopped: the rest of its chunk goes first.
        w.write_chunks(&mut client, 0, Duration::ZERO).await?;
        let phase1 = w.written;
        // The upstream reads the backlog; the daemon carries it and catches up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = env.daemon.metrics()?;

        // Phase 2, paced.
        w.write_chunks(
            &mut client,
            PHASE2 / w.chunk.len() as u64 - 1,
            Duration::from_millis(2),
        )
        .await?;
        let phase2 = w.written - phase1;
        let total = phase1 + phase2;
        let after = env.daemon.settle(Duration::from_secs(3), |m| {
            bytes(m, Dataplane::Kernel, "upstream") + bytes(m, Dataplane::Userspace, "upstream")
                == total
        })?;
        let delta = |path| bytes(&after, path, "upstream") - bytes(&before, path, "upstream");
        let (kernel2, userspace2) = (delta(Dataplane::Kernel), delta(Dataplane::Userspace));
        eprintln!(
            "hand-back [{dp}]: phase 1 {phase1} bytes; phase 2 {phase2} bytes: {kernel2} by the \
             kernel, {userspace2} in userspace"
        );
        if dp.is_kernel() {
            ensure!(
                kernel2 == phase2 && userspace2 == 0,
                "phase 2 ({phase2} bytes, after userspace caught up) went {kernel2} through the \
                 kernel and {userspace2} through userspace: the direction was not taken back"
            );
        }

        timeout(IO_TIMEOUT, client.shutdown())
            .await
            .context("client shutdown stalled")??;
        let (got, first_mismatch) = reader.await?.context("upstream reading")?;
        let sent: [u8; 32] = w.hash.finalize().into();
        ensure!(
            got.len == total && got.hash == sent,
            "upstream read {got:?}; the client wrote {total} bytes sha256={}; first differing \
             byte at offset {first_mismatch:?}",
            hex(&sent)
        );
        drop(client);
        let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
        ensure!(logs.len() == 1, "{} log lines: {logs:?}", logs.len());
        check_conn_log(&logs[0], dp, total, 0, CLOSED)?;
        if dp.is_kernel() {
            ensure!(
                logs[0].pauses >= 1 && logs[0].resumes >= 1 && logs[0].userspace_up > 0,
                "a direction handed to userspace and taken back: {:?}",
                logs[0]
            );
        }
        assert_bytes(&env.daemon, dp, total, 0, tail(&logs))?;
        env.finish()
    })
}

dataplane_tests!(slow_reader, caught_up_direction_returns_to_the_kernel);
