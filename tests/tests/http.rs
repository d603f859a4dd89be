//! Request/response traffic: clients that send their request the moment the connection is up
//! and wait for the answer (the case where bytes reach the proxy before its sockets are
//! spliced), then many requests over a few keep-alive connections. Every response is checked
//! byte for byte.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_proxy_tests::checks::{CLOSED, assert_bytes, check_conn_log, tail};
use agent_proxy_tests::heavy::heavy;
use agent_proxy_tests::http::{HttpUpstream, request, request_for};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::peers::{V4, connect};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, ensure};
use tokio::io::BufReader;
use tokio::time::timeout;

/// How long one request may take, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Byte totals both peers agree on, summed over all requests.
#[derive(Default)]
struct Totals {
    up: AtomicU64,
    down: AtomicU64,
    slowest_us: AtomicU64,
}

impl Totals {
    fn add(&self, up: u64, down: u64, took: Duration) {
        self.up.fetch_add(up, Ordering::Relaxed);
        self.down.fetch_add(down, Ordering::Relaxed);
        self.slowest_us
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Sizes vary from empty to several segments, deterministically.
fn sizes(i: u64) -> (usize, usize) {
    let body = match i % 4 {
        0 => 0,
        1 => (i % 100) as usize,
        2 => 1_000 + (i * 37 % 8_000) as usize,
        _ => 16_384 + (i * 7_919 % 50_000) as usize,
    };
    let resp = match i % 3 {
        0 => 0,
        1 => (i * 13 % 1_500) as usize,
        _ => 20_000 + (i * 104_729 % 60_000) as usize,
    };
    (body, resp)
}

const NEW_CONNECTIONS: u64 = 1_000;
/// Connections in flight at once.
const PARALLEL: u64 = 8;

fn http_new_connections_send_first(dp: Dataplane) -> anyhow::Result<()> {
    let _heavy = heavy();
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(120), move || async move {
        let upstream = HttpUpstream::start(V4).await?;
        let env = TestEnv::start(ns, DaemonConfig::new(dp, vec![upstream.addr]))?;
        let addr = env.daemon.config.listen;
        let totals = Arc::new(Totals::default());
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..PARALLEL {
            let totals = totals.clone();
            workers.spawn(async move {
                for i in (w..NEW_CONNECTIONS).step_by(PARALLEL as usize) {
                    let (body_len, resp_len) = sizes(i);
                    let (path, body) = request_for(i, body_len, resp_len);
                    let t0 = Instant::now();
                    let one = async {
                        let mut conn = BufReader::new(connect(addr).await?);
                        request(&mut conn, &path, &body, true).await
                    };
                    let (up, down) = timeout(REQUEST_TIMEOUT, one)
                        .await
                        .with_context(|| {
                            format!(
                                "request {i} ({path}, {body_len} byte body, sent right after \
                                 connect) got no complete response within {REQUEST_TIMEOUT:?}"
                            )
                        })?
                        .with_context(|| format!("request {i}"))?;
                    totals.add(up, down, t0.elapsed());
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = workers.join_next().await {
            r??;
        }
        eprintln!(
            "http [{dp}]: {NEW_CONNECTIONS} new connections in {:.2?}, slowest {} us",
            started.elapsed(),
            totals.slowest_us.load(Ordering::Relaxed)
        );
        upstream.expect_served(NEW_CONNECTIONS).await?;

        let (up, down) = (
            totals.up.load(Ordering::Relaxed),
            totals.down.load(Ordering::Relaxed),
        );
        let logs = env
            .daemon
            .wait_conn_logs(NEW_CONNECTIONS as usize, Duration::from_secs(10))?;
        ensure!(
            logs.len() == NEW_CONNECTIONS as usize,
            "{} log lines",
            logs.len()
        );
        let (log_up, log_down) = logs
            .iter()
            .fold((0, 0), |(u, d), l| (u + l.bytes_up, d + l.bytes_down));
        ensure!(
            (log_up, log_down) == (up, down),
            "log lines sum to {log_up} up, {log_down} down; the peers sent {up} up, {down} down"
        );
        for log in &logs {
            check_conn_log(log, dp, log.bytes_up, log.bytes_down, CLOSED)?;
        }
        assert_bytes(&env.daemon, dp, up, down, tail(&logs))?;
        let m = env.daemon.metrics()?;
        let accepted = m.count(
            "agent_proxy_frontend_connections_total",
            &[("frontend", "fe")],
        );
        ensure!(
            accepted == NEW_CONNECTIONS,
            "agent_proxy_frontend_connections_total = {accepted}"
        );
        drop(upstream);
        env.finish()
    })
}

const KEEPALIVE_CONNECTIONS: u64 = 10;
const KEEPALIVE_REQUESTS: u64 = 10_000;

fn http_keepalive_10k(dp: Dataplane) -> anyhow::Result<()> {
    let _heavy = heavy();
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(120), move || async move {
        let upstream = HttpUpstream::start(V4).await?;
        let env = TestEnv::start(ns, DaemonConfig::new(dp, vec![upstream.addr]))?;
        let addr = env.daemon.config.listen;
        let totals = Arc::new(Totals::default());
        let started = Instant::now();
        let mut conns = tokio::task::JoinSet::new();
        for c in 0..KEEPALIVE_CONNECTIONS {
            let totals = totals.clone();
            conns.spawn(async move {
                let mut conn = BufReader::new(connect(addr).await?);
                let mut sent = (0, 0);
                let per_conn = KEEPALIVE_REQUESTS / KEEPALIVE_CONNECTIONS;
                for k in 0..per_conn {
                    let i = c * per_conn + k;
                    let (path, body) =
                        request_for(i, (i * 37 % 2_048) as usize, (i * 101 % 4_096) as usize);
                    let t0 = Instant::now();
                    let (up, down) =
                        timeout(REQUEST_TIMEOUT, request(&mut conn, &path, &body, false))
                            .await
                            .with_context(|| {
                                format!("keep-alive request {k} on connection {c} stalled")
                            })?
                            .with_context(|| format!("keep-alive request {k} on connection {c}"))?;
                    totals.add(up, down, t0.elapsed());
                    sent = (sent.0 + up, sent.1 + down);
                }
                anyhow::Ok(sent)
            });
        }
        let mut per_conn = Vec::new();
        while let Some(r) = conns.join_next().await {
            per_conn.push(r??);
        }
        eprintln!(
            "http [{dp}]: {KEEPALIVE_REQUESTS} keep-alive requests in {:.2?}, slowest {} us",
            started.elapsed(),
            totals.slowest_us.load(Ordering::Relaxed)
        );
        upstream.expect_served(KEEPALIVE_REQUESTS).await?;
        let (up, down) = (
            totals.up.load(Ordering::Relaxed),
            totals.down.load(Ordering::Relaxed),
        );
        let logs = env
            .daemon
            .wait_conn_logs(KEEPALIVE_CONNECTIONS as usize, Duration::from_secs(10))?;
        ensure!(
            logs.len() == KEEPALIVE_CONNECTIONS as usize,
            "{} log lines",
            logs.len()
        );
        let mut logged: Vec<(u64, u64)> = logs.iter().map(|l| (l.bytes_up, l.bytes_down)).collect();
        logged.sort();
        per_conn.sort();
        ensure!(
            logged == per_conn,
            "per-connection bytes in the log {logged:?} differ from the peers' {per_conn:?}"
        );
        for log in &logs {
            // The clients close their idle keep-alive connections.
            check_conn_log(log, dp, log.bytes_up, log.bytes_down, CLOSED)?;
        }
        assert_bytes(&env.daemon, dp, up, down, tail(&logs))?;
        drop(upstream);
        env.finish()
    })
}

dataplane_tests!(http_new_connections_send_first, http_keepalive_10k);
