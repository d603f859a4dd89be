//! 1,000 connections open at the same time, then each exchanging a few KB both ways, every
//! direction checked by hash.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_proxy_tests::checks::{CLOSED, assert_bytes, check_conn_log, tail};
use agent_proxy_tests::heavy::heavy;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::{IO_TIMEOUT, V4, connect, exchange, listen};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Semaphore, watch};
use tokio::time::timeout;

const CONNECTIONS: u64 = 1_000;
/// Connects in flight at once (the daemon's accept backlog is finite).
const CONNECTING: usize = 64;

/// What the client of connection `id` sends after its 8-byte id: seed and length.
fn up(id: u64) -> (u64, u64) {
    (id * 2, 2_048 + id * 131 % 6_000)
}

/// What the upstream answers connection `id` with.
fn down(id: u64) -> (u64, u64) {
    (id * 2 + 1, 1_024 + id * 977 % 7_000)
}

fn concurrent_1000(dp: Dataplane) -> anyhow::Result<()> {
    let _heavy = heavy();
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(120), move || async move {
        let upstream = listen(V4).await?;
        let env = TestEnv::start(ns, DaemonConfig::new(dp, vec![upstream.local_addr()?]))?;
        let addr = env.daemon.config.listen;
        let (go_tx, go_rx) = watch::channel(false);
        let opened = Arc::new(AtomicU64::new(0));

        // Upstream: accept all, learn each connection's id, wait for "go", then exchange.
        let server_opened = opened.clone();
        let server_go = go_rx.clone();
        let server = tokio::spawn(async move {
            let mut handlers = tokio::task::JoinSet::new();
            for _ in 0..CONNECTIONS {
                let (mut s, _) = timeout(IO_TIMEOUT, upstream.accept())
                    .await
                    .context("upstream accept stalled")??;
                let opened = server_opened.clone();
                let mut go = server_go.clone();
                handlers.spawn(async move {
                    let id = timeout(IO_TIMEOUT, s.read_u64_le())
                        .await
                        .context("id read stalled")??;
                    opened.fetch_add(1, Ordering::Relaxed);
                    go.wait_for(|g| *g).await?;
                    let (seed, len) = down(id);
                    let x = exchange(s, seed, len, 1 << 20).await?;
                    let (want_seed, want_len) = up(id);
                    let want = Pattern::hash(want_seed, want_len);
                    ensure!(
                        x.received.len == want_len && x.received.hash == want,
                        "upstream of connection {id}: received {:?}, expected {want_len} bytes",
                        x.received
                    );
                    anyhow::Ok(())
                });
            }
            let mut failures = Vec::new();
            while let Some(r) = handlers.join_next().await {
                if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                    failures.push(format!("{e:#}"));
                }
            }
            anyhow::Ok(failures)
        });

        // Clients: connect all, send the id, wait for "go", exchange.
        let connecting = Arc::new(Semaphore::new(CONNECTING));
        let mut clients = tokio::task::JoinSet::new();
        for id in 0..CONNECTIONS {
            let connecting = connecting.clone();
            let mut go = go_rx.clone();
            clients.spawn(async move {
                let permit = connecting.acquire_owned().await?;
                let mut s = connect(addr).await?;
                s.write_u64_le(id).await?;
                drop(permit);
                go.wait_for(|g| *g).await?;
                let (seed, len) = up(id);
                let x = exchange(s, seed, len, 1 << 20).await?;
                let (want_seed, want_len) = down(id);
                let want = Pattern::hash(want_seed, want_len);
                ensure!(
                    x.received.len == want_len && x.received.hash == want,
                    "client of connection {id}: received {:?}, expected {want_len} bytes",
                    x.received
                );
                anyhow::Ok(8 + len)
            });
        }

        let started = Instant::now();
        while opened.load(Ordering::Relaxed) < CONNECTIONS {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "only {} of {CONNECTIONS} connections reached the upstream within 30 s",
                    opened.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "concurrent [{dp}]: {CONNECTIONS} connections open in {:.2?}",
            started.elapsed()
        );

        // All open at once: the daemon must see them all, and on the kernel path have both
        // sockets of each in the splice maps.
        let m = env.daemon.settle(Duration::from_secs(5), |m| {
            m.count(
                "agent_proxy_frontend_current_connections",
                &[("frontend", "fe")],
            ) == CONNECTIONS
        })?;
        let current = m.count(
            "agent_proxy_frontend_current_connections",
            &[("frontend", "fe")],
        );
        ensure!(
            current == CONNECTIONS,
            "agent_proxy_frontend_current_connections = {current} with {CONNECTIONS} open"
        );
        if dp.is_kernel() {
            let m = env.daemon.settle(Duration::from_secs(5), |m| {
                m.count("agent_proxy_kernel_map_entries", &[("map", "SPLICE_SOCKS")])
                    == 2 * CONNECTIONS
            })?;
            let socks = m.count("agent_proxy_kernel_map_entries", &[("map", "SPLICE_SOCKS")]);
            ensure!(
                socks == 2 * CONNECTIONS,
                "agent_proxy_kernel_map_entries{{map=\"SPLICE_SOCKS\"}} = {socks} with \
                 {CONNECTIONS} idle connections open (2 sockets each)"
            );
        }

        go_tx.send(true)?;
        let mut up_total = 0;
        let mut failures = Vec::new();
        while let Some(r) = clients.join_next().await {
            match r.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(n) => up_total += n,
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        let server_failures = server.await??;
        ensure!(
            failures.is_empty() && server_failures.is_empty(),
            "{} client and {} upstream failures, first ones: {:?} {:?}",
            failures.len(),
            server_failures.len(),
            failures.iter().take(3).collect::<Vec<_>>(),
            server_failures.iter().take(3).collect::<Vec<_>>()
        );
        let down_total: u64 = (0..CONNECTIONS).map(|id| down(id).1).sum();
        eprintln!(
            "concurrent [{dp}]: all exchanges done after {:.2?}",
            started.elapsed()
        );

        let logs = env
            .daemon
            .wait_conn_logs(CONNECTIONS as usize, Duration::from_secs(10))?;
        ensure!(
            logs.len() == CONNECTIONS as usize,
            "{} log lines",
            logs.len()
        );
        for log in &logs {
            check_conn_log(log, dp, log.bytes_up, log.bytes_down, CLOSED)?;
        }
        let (log_up, log_down) = logs
            .iter()
            .fold((0, 0), |(u, d), l| (u + l.bytes_up, d + l.bytes_down));
        ensure!(
            (log_up, log_down) == (up_total, down_total),
            "log lines sum to {log_up} up, {log_down} down; peers sent {up_total}, {down_total}"
        );
        assert_bytes(&env.daemon, dp, up_total, down_total, tail(&logs))?;
        env.finish()
    })
}

dataplane_tests!(concurrent_1000);
