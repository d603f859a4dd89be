//! DNS that degrades gracefully, end to end with a real dnsmasq: a resolver that answers A but
//! refuses AAAA still resolves the backend at once; clients that come before the backend's
//! first address (the nameserver starts, or learns the name, a second after the daemon) wait
//! for it and are served; with no address ever, they are refused after `connect_timeout`.
//! Every stream is checked by hash.
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use agent_proxy_tests::dnsmasq::Dnsmasq;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::Pattern;
use agent_proxy_tests::peers::{IO_TIMEOUT, connect, exchange};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, run_scenario};
use anyhow::{Context as _, bail, ensure};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

const INTAKE: &str = "127.0.0.2:8081";
const RESOLUTIONS: &str = "agent_proxy_dns_resolutions_total";
const REJECTED: &str = "agent_proxy_frontend_rejected_total";
const CURRENT: &str = "agent_proxy_frontend_current_connections";
/// Bytes each client sends (and gets back from the echo upstream).
const LEN: u64 = 256 * 1024;

/// An upstream that echoes every connection until EOF.
async fn echo_upstream(addr: &str) -> anyhow::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    Ok(tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    }))
}

/// One client through the proxy: `LEN` bytes of stream `seed` there and back, checked by hash.
async fn client(proxy: SocketAddr, seed: u64) -> anyhow::Result<()> {
    let s = connect(proxy).await?;
    let x = exchange(s, seed, LEN, LEN)
        .await
        .with_context(|| format!("client {seed}"))?;
    ensure!(
        x.received.len == LEN && x.received.hash == Pattern::hash(seed, LEN),
        "client {seed}: sent {:?}, got back {:?}",
        x.sent,
        x.received
    );
    Ok(())
}

/// The response code and answer count dnsmasq gives for `name` and `qtype` (1 = A, 28 = AAAA).
async fn ask(server: SocketAddr, name: &str, qtype: u16) -> anyhow::Result<(u8, u16)> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.push(0);
    query.extend_from_slice(&qtype.to_be_bytes());
    query.extend_from_slice(&1u16.to_be_bytes());
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(&query, server).await?;
    let mut reply = [0u8; 512];
    let n = tokio::time::timeout(IO_TIMEOUT, socket.recv(&mut reply))
        .await
        .context("no DNS reply")??;
    ensure!(n >= 12, "short DNS reply");
    Ok((reply[3] & 0x0f, u16::from_be_bytes([reply[6], reply[7]])))
}

fn config(dns_addr: SocketAddr, connect_timeout: Duration) -> DaemonConfig {
    let mut config = DaemonConfig::new(Dataplane::Kernel, vec![]);
    config.server_entries = vec!["\"intake.test:8081\"".into()];
    config.global_extra = format!("nameservers = [\"{dns_addr}\"]\n");
    config.backend_extra = "dns = { min_ttl = \"1s\", max_ttl = \"30s\" }\n".into();
    config.connect_timeout = connect_timeout;
    config
}

fn intake_ip() -> IpAddr {
    INTAKE.parse::<SocketAddr>().expect("valid").ip()
}

#[test]
fn aaaa_refused_still_resolves_at_once() {
    run_scenario(
        "aaaa_refused_still_resolves_at_once",
        Dataplane::Kernel,
        aaaa_refused,
    );
}

/// dnsmasq without an upstream answers A for intake.test from its hosts file and REFUSED for
/// its AAAA (checked first, so the test knows it reproduces that resolver). The daemon resolves
/// the backend with its first lookup: the first client, sent as soon as the admin endpoint
/// answers, gets its bytes back, and no lookup failed.
fn aaaa_refused(_: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    let dns = Dnsmasq::start(ns, &[("intake.test", intake_ip())], 30)?;
    let dns_addr = dns.addr;
    ns.block_on(Duration::from_secs(60), move || async move {
        let (rcode, answers) = ask(dns_addr, "intake.test", 1).await?;
        ensure!(
            rcode == 0 && answers == 1,
            "A: rcode {rcode}, {answers} answers"
        );
        let (rcode, answers) = ask(dns_addr, "intake.test", 28).await?;
        ensure!(
            rcode == 5 && answers == 0,
            "AAAA: rcode {rcode}, {answers} answers: dnsmasq no longer refuses it, so this test \
             no longer reproduces a resolver that does"
        );
        let upstream = echo_upstream(INTAKE).await?;
        let env = TestEnv::start_answering(ns, config(dns_addr, Duration::from_secs(2)))?;
        let proxy = env.daemon.config.listen;
        client(proxy, 1).await?;
        let m = env.daemon.metrics()?;
        let host = [("host", "intake.test")];
        let ok = m.count(RESOLUTIONS, &[host[0], ("result", "ok")]);
        let failed = m.count(RESOLUTIONS, &[host[0], ("result", "error")])
            + m.count(RESOLUTIONS, &[host[0], ("result", "empty")]);
        ensure!(
            ok == 1 && failed == 0,
            "{ok} good and {failed} failed lookups"
        );
        ensure!(m.get("agent_proxy_dns_stale", &host) == Some(0.0));
        let (code, body) = env.daemon.get("/readyz")?;
        ensure!(code == 200, "/readyz {code} {body:?}");
        let log = env.daemon.stderr_text();
        ensure!(
            !log.contains("DNS resolution failed"),
            "a lookup failed:\n{log}"
        );
        upstream.abort();
        drop(dns);
        env.finish()
    })
}

/// Four clients connect while the backend has no address yet; after a second (none may have
/// ended by then) `answer` makes DNS answer, and every client must get its bytes back: they
/// were held, not reset. Returns what `answer` returned, and checks that nobody was refused.
async fn held_until<T>(
    env: &TestEnv,
    answer: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let proxy = env.daemon.config.listen;
    let started = Instant::now();
    let clients: Vec<_> = (10..14)
        .map(|seed| tokio::spawn(client(proxy, seed)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        clients.iter().all(|c| !c.is_finished()),
        "a client ended before any address was known"
    );
    let answered = tokio::task::block_in_place(answer)?;
    for c in clients {
        c.await??;
    }
    eprintln!(
        "clients served {:?} after they connected",
        started.elapsed()
    );
    let m = env.daemon.metrics()?;
    let refused = m.count(REJECTED, &[("reason", "no_server")]);
    ensure!(refused == 0, "{refused} clients refused with no_server");
    let ok = m.count(RESOLUTIONS, &[("host", "intake.test"), ("result", "ok")]);
    ensure!(ok >= 1, "{ok} good lookups");
    Ok(answered)
}

#[test]
fn clients_wait_for_a_late_nameserver() {
    run_scenario(
        "clients_wait_for_a_late_nameserver",
        Dataplane::Kernel,
        late_nameserver,
    );
}

/// The daemon starts while its nameserver is not up yet; it comes up a second later. The first
/// lookup is still in flight then (a UDP question to a closed port goes unanswered until
/// hickory's 2 s timeout, and is asked again), and clients wait for its answer.
fn late_nameserver(_: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    // Where Dnsmasq::start will listen.
    let dns_addr: SocketAddr = "127.0.0.1:5353".parse()?;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = echo_upstream(INTAKE).await?;
        let mut env = TestEnv::start_answering(ns, config(dns_addr, Duration::from_secs(5)))?;
        let dns = held_until(&env, || {
            Dnsmasq::start(ns, &[("intake.test", intake_ip())], 30)
        })
        .await?;
        // The fds counted at start-up included the first lookup's sockets, in flight then:
        // count again once the clients are gone, and check one more connection against that.
        env.daemon
            .settle(Duration::from_secs(10), |m| m.sum(CURRENT, &[]) == 0.0)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let fds = env.daemon.fd_count()?;
        ensure!(
            fds <= env.baseline_fds,
            "{fds} fds after the clients, {} at start-up with a lookup in flight",
            env.baseline_fds
        );
        env.baseline_fds = fds;
        client(env.daemon.config.listen, 20).await?;
        upstream.abort();
        drop(dns);
        env.finish()
    })
}

#[test]
fn clients_wait_while_the_first_lookup_is_retried() {
    run_scenario(
        "clients_wait_while_the_first_lookup_is_retried",
        Dataplane::Kernel,
        retried_lookup,
    );
}

/// The nameserver answers from the start but does not know the name yet (REFUSED): the first
/// lookup fails at once, and is retried after min_ttl (1 s), then 2 s. The name is added a
/// second after the start; clients that came meanwhile wait and are served.
fn retried_lookup(_: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    let dns = Dnsmasq::start(ns, &[("other.test", intake_ip())], 30)?;
    let dns_addr = dns.addr;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = echo_upstream(INTAKE).await?;
        let env = TestEnv::start_answering(ns, config(dns_addr, Duration::from_secs(5)))?;
        held_until(&env, || dns.set(&[("intake.test", intake_ip())])).await?;
        let m = env.daemon.metrics()?;
        let failed = m.count(RESOLUTIONS, &[("host", "intake.test"), ("result", "error")]);
        ensure!(
            failed >= 1,
            "{failed} failed lookups: the first one did not fail"
        );
        let log = env.daemon.stderr_text();
        ensure!(
            log.contains("DNS resolution failed; no server address known yet")
                && log.contains("DNS answers again"),
            "the log does not tell the failed first lookup and the answer"
        );
        upstream.abort();
        drop(dns);
        env.finish()
    })
}

#[test]
fn clients_are_refused_when_no_address_comes() {
    run_scenario(
        "clients_are_refused_when_no_address_comes",
        Dataplane::Kernel,
        no_address,
    );
}

/// The nameserver never knows the name (it refuses at once, so no lookup is ever in flight
/// for long): a client is held for the backend's connect_timeout (1 s), then refused as with
/// no server up (`no_server`).
fn no_address(_: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    let dns = Dnsmasq::start(ns, &[("other.test", intake_ip())], 30)?;
    let dns_addr = dns.addr;
    ns.block_on(Duration::from_secs(60), move || async move {
        const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
        let env = TestEnv::start_answering(ns, config(dns_addr, CONNECT_TIMEOUT))?;
        let proxy = env.daemon.config.listen;
        let started = Instant::now();
        let mut s = connect(proxy).await?;
        let mut buf = [0u8; 1];
        let end = tokio::time::timeout(IO_TIMEOUT, s.read(&mut buf))
            .await
            .context("the held client was never refused")?;
        let held = started.elapsed();
        match end {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => bail!("expected a refusal, got {other:?}"),
        }
        ensure!(
            held >= CONNECT_TIMEOUT && held < CONNECT_TIMEOUT + Duration::from_secs(1),
            "refused after {held:?} (connect_timeout {CONNECT_TIMEOUT:?})"
        );
        let m = env.daemon.metrics()?;
        let refused = m.count(REJECTED, &[("reason", "no_server")]);
        ensure!(refused == 1, "{refused} no_server refusals");
        drop(s);
        drop(dns);
        env.finish()
    })
}
