//! `kernel_after`: a kernel-path connection starts in the userspace relay and moves to the
//! kernel once it has carried that many bytes. A short exchange stays in the relay (no map
//! entry, no redirect); a long one is relayed, then spliced, every byte exact across the move,
//! and its log line counts both parts. With the same-host agent programs loaded the option does
//! not apply.
use std::time::Duration;

use agent_proxy_tests::checks::CLOSED;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::peers::{V4, accept, connect, exchange_expecting, listen};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, run_scenario};
use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SEED_UP: u64 = 0x0af7_0001;
const SEED_DOWN: u64 = 0x0af7_0002;
const KERNEL_AFTER: u64 = 1 << 20;

fn config(dp: Dataplane, upstream: std::net::SocketAddr) -> DaemonConfig {
    let mut config = DaemonConfig::new(dp, vec![upstream]);
    config.global_extra = format!("kernel_after = {KERNEL_AFTER}\n");
    config
}

fn redirects(m: &agent_proxy_tests::metrics::Metrics) -> f64 {
    m.sum("agent_proxy_kernel_redirects_total", &[("frontend", "fe")])
}

/// `len` bytes each way at once through a daemon with `kernel_after`; the bytes checked, the
/// connection's log line returned with the environment.
async fn exchange_through(
    ns: &NetNs,
    dp: Dataplane,
    len: u64,
) -> anyhow::Result<(TestEnv, agent_proxy_tests::logs::ConnLog)> {
    let upstream = listen(V4).await?;
    let env = TestEnv::start(ns, config(dp, upstream.local_addr()?))?;
    let listen_addr = env.daemon.config.listen;
    let server = tokio::spawn(async move {
        let s = accept(&upstream).await?;
        exchange_expecting(s, SEED_DOWN, len, len, Some(SEED_UP)).await
    });
    let s = connect(listen_addr).await?;
    let client = exchange_expecting(s, SEED_UP, len, len, Some(SEED_DOWN))
        .await
        .context("client side")?;
    let server = server.await?.context("upstream side")?;
    ensure!(
        server.received == client.sent && client.received == server.sent,
        "bytes differ: upstream received {:?} of {:?}, client received {:?} of {:?}",
        server.received,
        client.sent,
        client.received,
        server.sent
    );
    let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
    let log = logs.into_iter().next().context("no log line")?;
    ensure!(
        log.path == "kernel" && log.bytes_up == len && log.bytes_down == len,
        "expected path=kernel with {len} bytes each way: {log:?}"
    );
    ensure!(CLOSED.contains(&log.end.as_str()), "end: {log:?}");
    Ok((env, log))
}

/// 32 MiB each way at once: relayed until 1 MiB has passed, then spliced.
fn long_exchange_moves_to_the_kernel(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    let len = 32u64 << 20;
    ns.block_on(Duration::from_secs(60), move || async move {
        let (env, log) = exchange_through(ns, dp, len).await?;
        let relayed = log.userspace_up + log.userspace_down;
        ensure!(
            relayed >= KERNEL_AFTER && relayed < 2 * len,
            "the relay carried {relayed} bytes before the move (expected at least \
             {KERNEL_AFTER}, and less than everything): {log:?}"
        );
        let m = env.daemon.metrics()?;
        ensure!(redirects(&m) > 0.0, "no kernel redirect after the move");
        let kernel_bytes = m.sum("agent_proxy_bytes_total", &[("path", "kernel")]);
        ensure!(
            kernel_bytes > 0.0 && kernel_bytes as u64 + relayed >= 2 * len,
            "kernel bytes {kernel_bytes} + relayed {relayed} do not cover {} bytes",
            2 * len
        );
        env.finish()
    })
}

/// Request/response rounds of 4 KiB: the whole connection stays in the relay.
fn short_exchange_stays_in_the_relay(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(30), move || async move {
        let upstream = listen(V4).await?;
        let env = TestEnv::start(ns, config(dp, upstream.local_addr()?))?;
        let server = tokio::spawn(async move {
            let mut s = accept(&upstream).await?;
            let mut buf = vec![0u8; 4096];
            for round in 0..10u8 {
                s.read_exact(&mut buf).await?;
                ensure!(
                    buf.iter().all(|&b| b == round),
                    "round {round}: request differs"
                );
                s.write_all(&vec![round ^ 0xff; 4096]).await?;
            }
            anyhow::Ok(())
        });
        let mut c = connect(env.daemon.config.listen).await?;
        let mut buf = vec![0u8; 4096];
        for round in 0..10u8 {
            c.write_all(&vec![round; 4096]).await?;
            c.read_exact(&mut buf).await?;
            ensure!(
                buf.iter().all(|&b| b == round ^ 0xff),
                "round {round}: answer differs"
            );
        }
        drop(c);
        server.await?.context("upstream side")?;
        let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
        let log = &logs[0];
        ensure!(
            log.path == "userspace"
                && log.bytes_up == 40960
                && log.bytes_down == 40960
                && log.userspace_up == 40960
                && log.userspace_down == 40960,
            "expected the whole exchange in the relay: {log:?}"
        );
        let m = env.daemon.metrics()?;
        ensure!(
            redirects(&m) == 0.0,
            "the kernel redirected bytes of a short exchange"
        );
        env.finish()
    })
}

#[test]
fn long_exchange_moves_to_the_kernel_kernel_remote() {
    run_scenario(
        "long_exchange_moves_to_the_kernel",
        Dataplane::KernelRemote,
        long_exchange_moves_to_the_kernel,
    );
}

/// With the same-host agent programs loaded (`local_agents`), `kernel_after` does not apply:
/// the connection is in the kernel from its first byte (see `Conn::carry_kernel`).
fn ignored_with_same_host_agents(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    let len = 4u64 << 20;
    ns.block_on(Duration::from_secs(60), move || async move {
        let (env, log) = exchange_through(ns, dp, len).await?;
        ensure!(
            log.userspace_up + log.userspace_down == 0 || log.pauses > 0,
            "bytes relayed before the kernel took over, with same-host agents loaded: {log:?}"
        );
        env.finish()
    })
}

#[test]
fn ignored_with_same_host_agents_kernel() {
    run_scenario(
        "ignored_with_same_host_agents",
        Dataplane::Kernel,
        ignored_with_same_host_agents,
    );
}

#[test]
fn short_exchange_stays_in_the_relay_kernel_remote() {
    run_scenario(
        "short_exchange_stays_in_the_relay",
        Dataplane::KernelRemote,
        short_exchange_stays_in_the_relay,
    );
}
