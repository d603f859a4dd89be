//! Nothing held forever (issue 16): idle connections are closed while busy ones stay, on every
//! data path; a peer that vanishes without a FIN or reset (its link cut) is noticed through TCP
//! keepalive and the connection ends with nothing left behind; past a connection limit,
//! `max_connections_queue` holds new connections in the accept queue instead of resetting them.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_proxy_tests::connect::{closed_lines, field, run};
use agent_proxy_tests::gateway::{Gateway, INTAKE, PROXY_INNER};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::{
    ReadEnd, V4, accept, connect, drain_until_end, exchange, listen, recv_exact,
};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests, run_scenario};
use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const IDLE: Duration = Duration::from_secs(1);

/// One byte each way, checked.
async fn ping(client: &mut TcpStream, server: &mut TcpStream, i: u8) -> anyhow::Result<()> {
    client.write_all(&[i]).await?;
    let mut byte = [0u8; 1];
    server.read_exact(&mut byte).await?;
    ensure!(byte[0] == i, "upstream received {} for {i}", byte[0]);
    server.write_all(&[i ^ 0xff]).await?;
    client.read_exact(&mut byte).await?;
    ensure!(byte[0] == i ^ 0xff, "client received {} for {i}", byte[0]);
    Ok(())
}

/// `idle_timeout = "1s"`: of two connections opened together, the one that goes quiet after a
/// first exchange is closed about a second later - both of its peers read EOF (a FIN, not a
/// reset), its log line says `end=idle_timeout` - while the other, exchanging a byte every
/// 300 ms for 4 s (four timeouts), is untouched and ends as its client closes it.
fn idle_closed_busy_stays(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = listen(V4).await?;
        let mut config = DaemonConfig::new(dp, vec![upstream.local_addr()?]);
        config.frontend_extra = format!("idle_timeout = \"{}s\"\n", IDLE.as_secs());
        let env = TestEnv::start(ns, config)?;
        let addr = env.daemon.config.listen;

        let mut quiet = connect(addr).await?;
        let mut quiet_up = accept(&upstream).await?;
        let mut busy = connect(addr).await?;
        let mut busy_up = accept(&upstream).await?;
        ping(&mut quiet, &mut quiet_up, 1).await?;
        let last_byte = Instant::now();

        let quiet_ends = tokio::spawn(async move {
            let client = drain_until_end(&mut quiet, Duration::from_secs(10)).await?;
            let upstream = drain_until_end(&mut quiet_up, Duration::from_secs(10)).await?;
            anyhow::Ok((client, upstream, last_byte.elapsed()))
        });
        let busy_start = Instant::now();
        let mut i = 0u8;
        while busy_start.elapsed() < 4 * IDLE {
            ping(&mut busy, &mut busy_up, i)
                .await
                .with_context(|| format!("busy connection, exchange {i}"))?;
            i = i.wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (client_end, upstream_end, after) = quiet_ends.await??;
        eprintln!("idle [{dp}]: quiet connection closed {after:?} after its last byte");
        ensure!(
            client_end == (ReadEnd::Eof, 0) && upstream_end == (ReadEnd::Eof, 0),
            "the idle connection ended with client {client_end:?}, upstream {upstream_end:?}, \
             expected EOF and no byte on both"
        );
        ensure!(
            after >= IDLE && after < IDLE * 3,
            "the idle connection was closed {after:?} after its last byte (timeout {IDLE:?})"
        );
        // The busy one still works, then ends as its client closes it.
        ping(&mut busy, &mut busy_up, 0xaa).await?;
        busy.shutdown().await?;
        let (end, _) = drain_until_end(&mut busy_up, Duration::from_secs(5)).await?;
        ensure!(end == ReadEnd::Eof, "busy upstream saw {end:?}");
        busy_up.shutdown().await?;
        let (end, _) = drain_until_end(&mut busy, Duration::from_secs(5)).await?;
        ensure!(end == ReadEnd::Eof, "busy client saw {end:?}");

        let lines = wait_lines(&env, 2).await?;
        let ends: Vec<String> = lines.iter().map(|l| field(l, "end")).collect();
        ensure!(
            ends == ["idle_timeout", "client_close"],
            "log ends {ends:?}, expected idle_timeout then client_close: {lines:?}"
        );
        let detail = field(&lines[0], "detail");
        ensure!(
            detail == "no byte in either direction for 1s",
            "idle detail {detail:?}"
        );
        ensure!(
            field(&lines[0], "path") == dp.as_str(),
            "idle connection carried on {}",
            field(&lines[0], "path")
        );
        let m = env.daemon.metrics()?;
        let idle = m.count(
            "agent_proxy_connections_ended_total",
            &[("end", "idle_timeout")],
        );
        ensure!(
            idle == 1,
            "{idle} connections counted as ended by idle_timeout"
        );
        env.finish()
    })
}

/// The connection log lines, once there are `n`.
async fn wait_lines(env: &TestEnv, n: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = closed_lines(&env.daemon.stderr_text());
        if lines.len() >= n || Instant::now() > deadline {
            ensure!(
                lines.len() == n,
                "{} log lines, expected {n}: {lines:?}",
                lines.len()
            );
            return Ok(lines);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const LISTEN_PORT: u16 = 7000;
const INTAKE_PORT: u16 = 9000;

/// A tcp frontend on the gateway's proxy host, its backend on the intake host, with keepalive
/// probes after 1 s, every 1 s, two of them: a vanished peer is noticed within 3 s.
fn gateway_config(dp: Dataplane) -> DaemonConfig {
    let intake: SocketAddr = format!("{INTAKE}:{INTAKE_PORT}").parse().expect("address");
    let mut config = DaemonConfig::new(dp, vec![intake]);
    config.listen = format!("{PROXY_INNER}:{LISTEN_PORT}")
        .parse()
        .expect("address");
    config.global_extra =
        "tcp_keepalive = { idle = \"1s\", interval = \"1s\", count = 2 }\n".into();
    config
}

/// A listener in the intake namespace.
fn intake_listener(gw: &Gateway) -> anyhow::Result<TcpListener> {
    let std = gw
        .intake
        .run(|| std::net::TcpListener::bind(("0.0.0.0", INTAKE_PORT)))?;
    std.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std)?)
}

/// A connection from the agent host to the intake through the proxy, checked with 64 KiB each
/// way; returns both ends.
async fn through(
    gw: &Gateway,
    listener: &TcpListener,
    addr: SocketAddr,
    seed: u64,
) -> anyhow::Result<(TcpStream, TcpStream)> {
    let std = gw.agent.run(|| std::net::TcpStream::connect(addr))?;
    std.set_nonblocking(true)?;
    let mut client = TcpStream::from_std(std)?;
    let mut server = accept(listener).await?;
    let len = 64 * 1024u64;
    let mut buf = vec![0u8; len as usize];
    Pattern::new(seed).fill(&mut buf);
    client.write_all(&buf).await?;
    let got = recv_exact(&mut server, len).await?;
    ensure!(
        got.hash == Pattern::hash(seed, len),
        "upstream received other bytes"
    );
    Pattern::new(seed + 1).fill(&mut buf);
    server.write_all(&buf).await?;
    let got = recv_exact(&mut client, len).await?;
    ensure!(
        got.hash == Pattern::hash(seed + 1, len),
        "client received other bytes"
    );
    Ok((client, server))
}

/// A peer that vanishes: the link to it goes down (no FIN, no reset ever arrives). With
/// keepalive after 1 s, every 1 s, two probes, the proxy gives up on it within about 3 s and
/// resets the other side: first the intake's link is cut under an idle connection (the agent
/// reads a reset, `end=upstream_reset`), then, with the link back, the agent's link under
/// another (the intake reads a reset, `end=client_reset`). Map entries and fds are gone after.
fn vanished_peer_detected(dp: Dataplane) -> anyhow::Result<()> {
    let gw = Gateway::new()?;
    let gw = &gw;
    gw.proxy
        .block_on(Duration::from_secs(90), move || async move {
            let config = gateway_config(dp);
            let addr = config.listen;
            let listener = intake_listener(gw)?;
            let env = TestEnv::start(&gw.proxy, config)?;
            let bound = Duration::from_secs(8);

            // The intake vanishes.
            let (mut client, server) = through(gw, &listener, addr, 10).await?;
            run(&["ip", "-n", gw.intake.name(), "link", "set", "vi", "down"])?;
            let cut = Instant::now();
            let (end, got) = drain_until_end(&mut client, bound)
                .await
                .context("the agent was not told its intake vanished")?;
            let took = cut.elapsed();
            eprintln!("vanished intake [{dp}]: agent saw {end:?} after {took:?}");
            ensure!(
                end == ReadEnd::Error(std::io::ErrorKind::ConnectionReset) && got == 0,
                "the agent saw {end:?} and {got} bytes, expected a reset"
            );
            ensure!(
                took >= Duration::from_secs(2),
                "noticed after {took:?}, before any probe could fail"
            );
            drop(server);
            run(&["ip", "-n", gw.intake.name(), "link", "set", "vi", "up"])?;

            // The agent vanishes.
            let (client, mut server) = through(gw, &listener, addr, 20).await?;
            run(&["ip", "-n", gw.agent.name(), "link", "set", "va", "down"])?;
            let cut = Instant::now();
            let (end, got) = drain_until_end(&mut server, bound)
                .await
                .context("the intake was not told the agent vanished")?;
            let took = cut.elapsed();
            eprintln!("vanished agent [{dp}]: intake saw {end:?} after {took:?}");
            ensure!(
                end == ReadEnd::Error(std::io::ErrorKind::ConnectionReset) && got == 0,
                "the intake saw {end:?} and {got} bytes, expected a reset"
            );
            drop(client);
            run(&["ip", "-n", gw.agent.name(), "link", "set", "va", "up"])?;

            let lines = wait_lines(&env, 2).await?;
            let ends: Vec<String> = lines.iter().map(|l| field(l, "end")).collect();
            ensure!(
                ends == ["upstream_reset", "client_reset"],
                "log ends {ends:?}: {lines:?}"
            );
            for line in &lines {
                let detail = field(line, "detail");
                ensure!(
                    detail.contains("timed out"),
                    "detail {detail:?} does not say the peer timed out"
                );
            }
            env.finish()
        })
}

dataplane_tests!(idle_closed_busy_stays, vanished_peer_detected);

/// `max_connections = 2` with `max_connections_queue = "5s"`: a third client is not reset; it
/// waits in the accept queue and is served (bytes checked) once one of the first two closes.
/// A fourth, while the limit stays full past the bound, is refused after about the bound.
fn queue_instead_of_reset(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = listen(V4).await?;
        let mut config = DaemonConfig::new(dp, vec![upstream.local_addr()?]);
        config.frontend_max_connections = 2;
        config.frontend_extra = "max_connections_queue = \"2s\"\n".into();
        let env = TestEnv::start(ns, config)?;
        let addr = env.daemon.config.listen;

        let first = connect(addr).await?;
        let first_up = accept(&upstream).await?;
        let second = connect(addr).await?;
        let second_up = accept(&upstream).await?;
        // The third connects (the kernel completes the handshake) and waits.
        let third = connect(addr).await?;
        let queued = Instant::now();
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop((first, first_up));
        let third_up = accept(&upstream).await?;
        let waited = queued.elapsed();
        ensure!(
            waited >= Duration::from_millis(600),
            "the third connection reached the upstream after {waited:?}, before a slot freed"
        );
        let up = tokio::spawn(exchange(third_up, 2, 30_000, 1 << 20));
        let x = exchange(third, 1, 20_000, 1 << 20).await?;
        let y = up.await??;
        ensure!(
            x.received.len == 30_000 && x.received.hash == Pattern::hash(2, 30_000),
            "queued client received {:?}",
            x.received
        );
        ensure!(
            y.received.len == 20_000 && y.received.hash == Pattern::hash(1, 20_000),
            "upstream of the queued client received {:?}",
            y.received
        );

        // Two connections open again (second, and a new one): the next one waits the bound,
        // then is refused.
        let fourth = connect(addr).await?;
        let fourth_up = accept(&upstream).await?;
        let mut fifth = connect(addr).await?;
        let t0 = Instant::now();
        let (end, _) = drain_until_end(&mut fifth, Duration::from_secs(6)).await?;
        let took = t0.elapsed();
        ensure!(
            end == ReadEnd::Error(std::io::ErrorKind::ConnectionReset),
            "the connection past the bound saw {end:?}"
        );
        ensure!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
            "refused after {took:?}, expected about the 2 s bound"
        );
        let m = env.daemon.metrics()?;
        let rejected = m.count(
            "agent_proxy_frontend_rejected_total",
            &[("reason", "frontend_max_connections")],
        );
        ensure!(rejected == 1, "{rejected} connections refused, expected 1");
        drop((second, second_up, fourth, fourth_up, fifth));
        env.finish()
    })
}

#[test]
fn max_connections_queue_holds_then_refuses() {
    run_scenario(
        "max_connections_queue_holds_then_refuses",
        Dataplane::Userspace,
        queue_instead_of_reset,
    );
}
