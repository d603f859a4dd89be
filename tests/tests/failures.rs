//! Failures on either side: an upstream that refuses connections (with and without another
//! server to retry on), and a reset from the upstream or the client in the middle of a
//! transfer. The other side must learn promptly, and the log must say how it ended.
use std::time::{Duration, Instant};

use agent_proxy_tests::checks::{CLOSED, check_conn_log};
use agent_proxy_tests::daemon::BACKEND;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::{
    V4, accept, closed_port, connect, drain_until_end, exchange, linger_zero, listen, recv_exact,
    write_until_error,
};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, ensure};
use tokio::io::AsyncWriteExt as _;

const CONNECT_ERRORS: &str = "agent_proxy_backend_connect_errors_total";
/// How soon the other side must see a reset propagated.
const PROMPTLY: Duration = Duration::from_secs(3);

/// The only server refuses: each client sees its connection closed within
/// connect_timeout * retries + 2 s and receives nothing, connect errors are counted. The first
/// client's attempts take the server out (passive health, 3 failures; its retries still all
/// go ahead), so its log says end=connect_failed and the later clients are refused at once:
/// end=rejected, counted under reason="no_server".
fn upstream_refuses(dp: Dataplane) -> anyhow::Result<()> {
    const ATTEMPTS: usize = 3;
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let refusing = closed_port(V4)?;
        let config = DaemonConfig::new(dp, vec![refusing]);
        let bound = config.connect_timeout * config.retries + Duration::from_secs(2);
        let env = TestEnv::start(ns, config)?;
        let addr = env.daemon.config.listen;
        for attempt in 0..ATTEMPTS {
            let t0 = Instant::now();
            let mut s = match connect(addr).await {
                Ok(s) => s,
                // Refused at once (no server up): the reset can beat the end of connect().
                Err(e) if attempt > 0 && is_reset(&e) => {
                    eprintln!("refuses [{dp}]: attempt {attempt}: reset during connect");
                    continue;
                }
                Err(e) => return Err(e),
            };
            // An agent talks first; those bytes have nowhere to go.
            let _ = s.write_all(b"POST /intake HTTP/1.1\r\n").await;
            let (end, got) = drain_until_end(&mut s, bound).await.with_context(|| {
                format!("attempt {attempt}: client not told the upstream refuses")
            })?;
            let took = t0.elapsed();
            eprintln!("refuses [{dp}]: attempt {attempt}: {end:?} after {took:.2?}");
            ensure!(
                got == 0,
                "attempt {attempt}: the client received {got} bytes"
            );
            ensure!(
                took < bound,
                "attempt {attempt}: took {took:?}, bound {bound:?}"
            );
        }
        let m = env.daemon.settle(Duration::from_secs(3), |m| {
            m.count(CONNECT_ERRORS, &[("backend", BACKEND)]) >= ATTEMPTS as u64
        })?;
        let errors = m.count(CONNECT_ERRORS, &[("backend", BACKEND)]);
        ensure!(
            errors >= ATTEMPTS as u64,
            "{CONNECT_ERRORS}{{backend=\"{BACKEND}\"}} = {errors} after {ATTEMPTS} refused clients"
        );
        let rejected = m.count(
            "agent_proxy_frontend_rejected_total",
            &[("reason", "no_server")],
        );
        ensure!(
            rejected == ATTEMPTS as u64 - 1,
            "{rejected} clients refused for no_server, expected {}",
            ATTEMPTS - 1
        );
        let logs = env
            .daemon
            .wait_conn_logs(ATTEMPTS, Duration::from_secs(5))?;
        ensure!(logs.len() == ATTEMPTS, "{} log lines: {logs:?}", logs.len());
        for (i, log) in logs.iter().enumerate() {
            let expected = if i == 0 { "connect_failed" } else { "rejected" };
            ensure!(
                log.end == expected && log.path == "none",
                "log line {i} says end={:?} path={:?}, expected {expected} and none: {log:?}",
                log.end,
                log.path
            );
        }
        env.finish()
    })
}

/// SYNs sent to `port` inside `ns`, counted by an iptables rule (added by the first call):
/// the attempts as the network saw them, not as the daemon reports them.
fn syns_to(ns: &NetNs, port: u16) -> anyhow::Result<u64> {
    let iptables = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), "iptables", "-w"])
            .args(args)
            .output()
            .context("iptables")?;
        ensure!(
            out.status.success(),
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let port = port.to_string();
    let rule = ["OUTPUT", "-p", "tcp", "--syn", "--dport", port.as_str()];
    if iptables(&[&["-C"], &rule[..]].concat()).is_err() {
        iptables(&[&["-A"], &rule[..]].concat())?;
    }
    let listing = iptables(&["-L", "OUTPUT", "-v", "-x", "-n"])?;
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("dpt:{port}")))
        .with_context(|| format!("no counting rule in {listing}"))?;
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no packet count in {line:?}"))
}

/// The one server refuses: a client's connection makes exactly `retries + 1` attempts (SYNs
/// counted by iptables, connect errors by the daemon, and the log's detail), although passive
/// health takes the server out after `passive.fall` of them: passive health decides what new
/// connections choose, not how many attempts one makes. The next client is refused at once
/// (`no_server`) without a SYN.
fn retries_make_every_attempt() -> anyhow::Result<()> {
    for (retries, fall) in [(3u32, None), (5, Some(1u32)), (2, Some(10))] {
        let netns = NetNs::new()?;
        let ns = &netns;
        ns.block_on(Duration::from_secs(60), move || async move {
            let refusing = closed_port(V4)?;
            let mut config = DaemonConfig::new(Dataplane::Userspace, vec![refusing]);
            config.retries = retries;
            if let Some(fall) = fall {
                config.backend_extra = format!("passive = {{ fall = {fall}, backoff = \"1m\" }}\n");
            }
            let case = format!("retries = {retries}, passive fall {fall:?}");
            let before = syns_to(ns, refusing.port())?;
            let env = TestEnv::start(ns, config)?;
            let addr = env.daemon.config.listen;
            let mut s = connect(addr).await?;
            let (end, got) = drain_until_end(&mut s, Duration::from_secs(10))
                .await
                .with_context(|| format!("{case}: the client was not closed"))?;
            eprintln!("{case}: client saw {end:?}");
            ensure!(got == 0, "{case}: the client received {got} bytes");
            let attempts = u64::from(retries) + 1;
            let syns = syns_to(ns, refusing.port())? - before;
            ensure!(
                syns == attempts,
                "{case}: {syns} SYNs to the server, expected {attempts}"
            );
            let m = env.daemon.settle(Duration::from_secs(3), |m| {
                m.count(CONNECT_ERRORS, &[("backend", BACKEND)]) >= attempts
            })?;
            let errors = m.count(CONNECT_ERRORS, &[("backend", BACKEND)]);
            ensure!(
                errors == attempts,
                "{case}: {CONNECT_ERRORS} = {errors}, expected {attempts}"
            );
            let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
            ensure!(
                logs.len() == 1 && logs[0].end == "connect_failed",
                "{case}: {logs:?}"
            );
            let said = format!("accepted the connection after {attempts} attempts");
            ensure!(
                env.daemon.stderr_text().contains(&said),
                "{case}: the log does not say {said:?}"
            );
            // Taken out by passive health (fall reached): the next client is refused without
            // a dial. With fall above the attempts the server stays in and is dialed again.
            let out = fall.unwrap_or(3) <= retries + 1;
            if let Ok(mut s) = connect(addr).await {
                let _ = drain_until_end(&mut s, Duration::from_secs(10)).await;
            }
            env.daemon.wait_conn_logs(2, Duration::from_secs(5))?;
            let syns = syns_to(ns, refusing.port())? - before;
            let expected = if out { attempts } else { 2 * attempts };
            ensure!(
                syns == expected,
                "{case}: {syns} SYNs after a second client, expected {expected}"
            );
            let rejected = env.daemon.metrics()?.count(
                "agent_proxy_frontend_rejected_total",
                &[("reason", "no_server")],
            );
            ensure!(
                rejected == u64::from(out),
                "{case}: {rejected} refused for no_server"
            );
            env.finish()
        })?;
    }
    Ok(())
}

#[test]
fn retries_make_every_attempt_userspace() {
    agent_proxy_tests::run_scenario("retries_make_every_attempt", Dataplane::Userspace, |_| {
        retries_make_every_attempt()
    });
}

fn is_reset(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
    })
}

/// Two servers, the first refuses: every connection lands on the second (retry/redispatch)
/// and its client sees no error at all.
fn upstream_refuses_retry_next_server(dp: Dataplane) -> anyhow::Result<()> {
    const CLIENTS: u64 = 4;
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let refusing = closed_port(V4)?;
        let live = listen(V4).await?;
        let live_addr = live.local_addr()?;
        let env = TestEnv::start(ns, DaemonConfig::new(dp, vec![refusing, live_addr]))?;
        let addr = env.daemon.config.listen;
        let server = tokio::spawn(async move {
            for i in 0..CLIENTS {
                let s = accept(&live).await?;
                let x = exchange(s, 100 + i, 20_000 + i, 1 << 20).await?;
                ensure!(
                    x.received.len == 10_000 + i && x.received.hash == Pattern::hash(i, 10_000 + i),
                    "upstream, connection {i}: received {:?}",
                    x.received
                );
            }
            anyhow::Ok(())
        });
        // One client at a time, so that the upstream knows which one it is talking to.
        for i in 0..CLIENTS {
            let s = connect(addr).await?;
            let x = exchange(s, i, 10_000 + i, 1 << 20)
                .await
                .with_context(|| format!("client {i}"))?;
            ensure!(
                x.received.len == 20_000 + i
                    && x.received.hash == Pattern::hash(100 + i, 20_000 + i),
                "client {i}: received {:?}",
                x.received
            );
        }
        server.await??;
        let m = env.daemon.metrics()?;
        let refused = m.count(
            CONNECT_ERRORS,
            &[("backend", BACKEND), ("server", &refusing.to_string())],
        );
        let all: Vec<String> = m
            .matching(CONNECT_ERRORS, &[])
            .map(|s| format!("{:?} {}", s.labels, s.value))
            .collect();
        ensure!(
            refused >= 1,
            "no connect error counted for the refusing server {refusing}: {all:?}"
        );
        let logs = env
            .daemon
            .wait_conn_logs(CLIENTS as usize, Duration::from_secs(5))?;
        ensure!(
            logs.len() == CLIENTS as usize,
            "{} log lines: {logs:?}",
            logs.len()
        );
        let mut paths = Vec::new();
        for log in &logs {
            // Each client sends and half-closes at once; while the daemon is still retrying,
            // that FIN can reach it before the splice, and a TCP socket that got a FIN
            // (CLOSE_WAIT) cannot join a sockmap: the userspace relay is then the right path
            // even on the kernel data plane. Retry is what this test is about.
            let path = match (dp, log.path.as_str()) {
                (Dataplane::Kernel | Dataplane::KernelRemote, "userspace") => Dataplane::Userspace,
                _ => dp,
            };
            paths.push(log.path.clone());
            let i = log.bytes_up.wrapping_sub(10_000);
            check_conn_log(log, path, 10_000 + i, 20_000 + i, CLOSED)?;
            ensure!(
                log.server == live_addr.to_string(),
                "log names server {:?}, expected the live {live_addr}",
                log.server
            );
        }
        eprintln!("refuses then retries [{dp}]: paths {paths:?}");
        env.finish()
    })
}

/// The upstream reads a little of a stream, then resets (SO_LINGER 0): the client's
/// connection must end promptly, and the log says end=upstream_reset.
fn upstream_resets_mid_stream(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = listen(V4).await?;
        let env = TestEnv::start(ns, DaemonConfig::new(dp, vec![upstream.local_addr()?]))?;
        let s = connect(env.daemon.config.listen).await?;
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            write_until_error(&mut w, 7, 1 << 30, Duration::from_secs(30)).await
        });
        let mut up = accept(&upstream).await?;
        recv_exact(&mut up, 256 * 1024)
            .await
            .context("upstream reading the start of the stream")?;
        linger_zero(&up)?;
        drop(up);
        let reset_at = Instant::now();
        let (end, _) = drain_until_end(&mut r, PROMPTLY)
            .await
            .context("the client did not see the upstream's reset")?;
        eprintln!(
            "upstream reset [{dp}]: client read ended with {end:?} after {:.2?}",
            reset_at.elapsed()
        );
        writer.abort();
        let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
        ensure!(logs.len() == 1, "{} log lines: {logs:?}", logs.len());
        ensure!(
            logs[0].end == "upstream_reset" && logs[0].path == dp.as_str(),
            "log line says end={:?} path={:?}, expected upstream_reset on {dp}: {:?}",
            logs[0].end,
            logs[0].path,
            logs[0]
        );
        drop((r, writer));
        env.finish()
    })
}

/// The client resets mid-stream while the upstream is sending to it and reading from it: the
/// upstream's connection must end promptly, and the log says end=client_reset.
fn client_resets_mid_stream(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = listen(V4).await?;
        let env = TestEnv::start(ns, DaemonConfig::new(dp, vec![upstream.local_addr()?]))?;
        let mut client = connect(env.daemon.config.listen).await?;
        let up = accept(&upstream).await?;
        let (mut ur, mut uw) = up.into_split();
        let up_writer = tokio::spawn(async move {
            write_until_error(&mut uw, 9, 1 << 30, Duration::from_secs(30)).await
        });
        // Traffic both ways is flowing when the client resets.
        agent_proxy_tests::peers::send_pattern(&mut client, 3, 256 * 1024).await?;
        recv_exact(&mut ur, 256 * 1024).await?;
        recv_exact(&mut client, 256 * 1024).await?;
        linger_zero(&client)?;
        drop(client);
        let reset_at = Instant::now();
        let (end, _) = drain_until_end(&mut ur, PROMPTLY)
            .await
            .context("the upstream did not see the client's reset")?;
        eprintln!(
            "client reset [{dp}]: upstream read ended with {end:?} after {:.2?}",
            reset_at.elapsed()
        );
        up_writer.abort();
        let logs = env.daemon.wait_conn_logs(1, Duration::from_secs(5))?;
        ensure!(logs.len() == 1, "{} log lines: {logs:?}", logs.len());
        ensure!(
            logs[0].end == "client_reset" && logs[0].path == dp.as_str(),
            "log line says end={:?} path={:?}, expected client_reset on {dp}: {:?}",
            logs[0].end,
            logs[0].path,
            logs[0]
        );
        env.finish()
    })
}

dataplane_tests!(
    upstream_refuses,
    upstream_refuses_retry_next_server,
    upstream_resets_mid_stream,
    client_resets_mid_stream
);
