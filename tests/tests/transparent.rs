//! `mode = "transparent"` (issue 14) on a real gateway: an agent namespace whose default route is
//! the proxy's namespace, and an intake namespace behind it ([`Gateway`]). The daemon installs
//! its iptables rules itself. Clients that know nothing of a proxy - curl, Python `requests`,
//! the `datadog` API client, raw sockets - reach the intake; the intake sees the proxy's
//! address; refused connections are reset with nothing dialed; the host's own processes are
//! captured by `OUTPUT` and the proxy's own connections are not.
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_proxy_tests::connect::{NetnsHosts, closed_lines, field};
use agent_proxy_tests::dnsmasq::Dnsmasq;
use agent_proxy_tests::gateway::{self, Gateway, INTAKE, INTAKE6, PROXY_OUTER, PROXY_OUTER6};
use agent_proxy_tests::intake::{HttpsIntake, run_in_ns};
use agent_proxy_tests::peers::exchange_expecting;
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The transparent frontend's port, and the ports it intercepts.
const LISTEN_PORT: u16 = 15001;
const SINK_PORT: u16 = 9000;
/// Another host behind the gateway: not an address of the allowed names.
const OTHER: &str = "11.0.0.20";
const METADATA: &str = "169.254.169.254";
const PRIVATE: &str = "10.99.0.1";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid address")
}

/// The daemon's config: name rules for `.example.test`, address rules for the sinks.
pub fn transparent_config(dp: Dataplane, dns: SocketAddr, extra: &str) -> DaemonConfig {
    let mut config = DaemonConfig::new(dp, Vec::new());
    config.listen = SocketAddr::new(ip("::"), LISTEN_PORT);
    config.toml_override = Some(format!(
        "[global]\ndataplane = \"{dp}\"\nadmin = \"{admin}\"\ndrain_timeout = \"2s\"\n\
         log_format = \"json\"\nnameservers = [\"{dns}\"]\n{global}\n\
         [[frontend]]\nname = \"fe\"\nlisten = \"[::]:{LISTEN_PORT}\"\nmode = \"transparent\"\n\
         allow = [\"{agents}\", \"{agents6}\", \"{outer}/32\"]\n\
         allow_destinations = [\".example.test:*\", \"{INTAKE}:{SINK_PORT}\", \"[{INTAKE6}]:{SINK_PORT}\"]\n\
         intercept = {{ ports = [443, 80, {SINK_PORT}], from = [\"{agents}\", \"{agents6}\"], local = true }}\n\
         sniff_timeout = \"1s\"\nconnect_timeout = \"2s\"\n{extra}",
        admin = config.admin,
        global = dp.extra_global(),
        agents = gateway::AGENT_NET,
        agents6 = gateway::AGENT_NET6,
        outer = PROXY_OUTER,
    ));
    config
}

/// Who connected to a listener of the intake host, in order.
type Peers = Arc<Mutex<Vec<IpAddr>>>;

/// Answers every HTTP request with `hello` and closes, recording who connected.
fn http_responder(listeners: Vec<TcpListener>) -> Peers {
    let peers: Peers = Arc::default();
    for listener in listeners {
        serve_hello(listener, Arc::clone(&peers));
    }
    peers
}

fn serve_hello(listener: TcpListener, seen: Peers) {
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer.ip().to_canonical());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });
}

/// Counts connections that reach `listener` (where nothing may arrive).
fn accept_counter(listener: TcpListener) -> Peers {
    let peers: Peers = Arc::default();
    let seen = Arc::clone(&peers);
    tokio::spawn(async move {
        while let Ok((_, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer.ip());
        }
    });
    peers
}

/// A full-duplex exchange of `len` bytes each way with hashes, through whatever carries a
/// connection from here to `addr`, where `listener` accepts it. Returns who the intake saw.
pub async fn exchange_through(
    listener: &TcpListener,
    addr: SocketAddr,
    len: u64,
    seeds: (u64, u64),
) -> anyhow::Result<IpAddr> {
    let client = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let (server, peer) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .context("the intake accepted nothing")??;
    let (up, down) = seeds;
    let server = tokio::spawn(exchange_expecting(server, down, len, len, Some(up)));
    let client = exchange_expecting(client, up, len, len, Some(down)).await?;
    let server = server.await??;
    ensure!(
        server.received == client.sent && client.received == server.sent,
        "bytes differ through the proxy to {addr}: up {:?} vs {:?} (first mismatch {:?}), \
         down {:?} vs {:?} (first mismatch {:?})",
        server.received,
        client.sent,
        server.first_mismatch,
        client.received,
        server.sent,
        client.first_mismatch
    );
    Ok(peer.ip().to_canonical())
}

/// A raw client that sends `bytes` (maybe nothing) and reads until the connection ends:
/// `true` when it ended with a reset (how a refusal looks).
async fn refused_raw(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<bool> {
    let mut s = TcpStream::connect(addr).await?;
    if !bytes.is_empty() {
        s.write_all(bytes).await?;
    }
    let mut buf = [0u8; 256];
    let ended = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    Ok(matches!(ended, Ok(Err(ref e)) if e.kind() == std::io::ErrorKind::ConnectionReset))
}

fn transparent_gateway(dp: Dataplane) -> anyhow::Result<()> {
    for tool in ["curl", "python3", "openssl", "iptables", "ip6tables"] {
        ensure!(
            agent_proxy_tests::privileges::which(tool).is_some(),
            "{tool} is missing (cargo xtask setup installs it)"
        );
    }
    let gw = Gateway::new()?;
    for extra in [OTHER, METADATA, PRIVATE] {
        gw.add_intake_address(ip(extra))?;
    }
    let records = [
        ("intake.example.test", ip(INTAKE)),
        ("intake.example.test", ip(INTAKE6)),
        ("other.example.test", ip(OTHER)),
        ("metadata.example.test", ip(METADATA)),
        ("private.example.test", ip(PRIVATE)),
        ("outside.test", ip(INTAKE)),
    ];
    let dns = Dnsmasq::start(&gw.proxy, &records, 60)?;
    let hosts: Vec<String> = records
        .iter()
        .filter(|(_, a)| a.is_ipv4())
        .map(|(n, a)| format!("{a} {n}"))
        .collect();
    let _agent_hosts = NetnsHosts::new(&gw.agent, &hosts)?;
    let _proxy_hosts = NetnsHosts::new(&gw.proxy, &hosts)?;
    let dir = std::env::temp_dir().join(format!("agent-proxy-intake-{}", gw.intake.name()));
    let intake = HttpsIntake::start(
        &gw.intake,
        SocketAddr::new(ip(INTAKE), 443),
        "intake.example.test",
        &dir,
    )?;
    let cert = intake.cert.to_string_lossy().into_owned();
    let env = TestEnv::start(&gw.proxy, transparent_config(dp, dns.addr, ""))?;
    let (agent, proxy_ns) = (&gw.agent, &gw.proxy);
    let gw = &gw;
    let expected_lines = gw
        .agent
        .block_on(Duration::from_secs(120), move || async move {
            let mut expected_lines = 0;
            let plain = http_responder(vec![
                gw.intake_listener(SocketAddr::new(ip(INTAKE), 80))?,
                gw.intake_listener(SocketAddr::new(ip(INTAKE6), 80))?,
            ]);
            let sink = gw.intake_listener(SocketAddr::new(ip(INTAKE), SINK_PORT))?;
            let sink6 = gw.intake_listener(SocketAddr::new(ip(INTAKE6), SINK_PORT))?;
            let mut never = Vec::new();
            for (addr, port) in [(OTHER, 443), (OTHER, 80), (METADATA, 443), (PRIVATE, 443)] {
                let listener = gw.intake_listener(SocketAddr::new(ip(addr), port))?;
                never.push((format!("{addr}:{port}"), accept_counter(listener)));
            }
            let curl =
                |args: &[&str]| run_in_ns(agent, "curl", &[&["-sS", "-m", "10"], args].concat());

            // TLS passes through: the agent verifies the intake's own certificate.
            let (code, out, err) = curl(&["--cacert", &cert, "https://intake.example.test/hello"])?;
            ensure!(
                code == 0 && out == "hello",
                "curl https: exit {code}, {out:?} {err:?}"
            );
            expected_lines += 1;
            let requests = format!(
                "import requests\n\
             r = requests.get('https://intake.example.test/hello', verify='{cert}')\n\
             print(r.status_code, r.text)\n"
            );
            let (code, out, err) = run_in_ns(agent, "python3", &["-c", &requests])?;
            ensure!(
                code == 0 && out == "200 hello\n",
                "python requests: exit {code}, {out:?} {err:?}"
            );
            expected_lines += 1;
            let datadog = format!(
                "import json, time\n\
             from datadog import initialize, api\n\
             initialize(api_key='k', app_key='a', api_host='https://intake.example.test', \
             cacert='{cert}')\n\
             print(json.dumps(api.Metric.send(metric='agent_proxy.transparent_test', \
             points=[(time.time(), 42)])))\n"
            );
            let (code, out, err) = run_in_ns(agent, "python3", &["-c", &datadog])?;
            ensure!(
                code == 0 && out.contains("\"ok\""),
                "datadog client: exit {code}, {out:?} {err:?}"
            );
            expected_lines += 1;
            let posted = intake
                .requests()
                .into_iter()
                .filter(|r| r["method"] == "POST")
                .count();
            ensure!(
                posted == 1,
                "the intake received {posted} POSTs, expected the datadog series"
            );

            // Plain HTTP, matched on Host; IPv4, then IPv6 through ip6tables.
            let (code, out, err) = curl(&["http://intake.example.test/plain"])?;
            ensure!(
                code == 0 && out == "hello",
                "curl http: exit {code}, {out:?} {err:?}"
            );
            let url6 = format!("http://[{INTAKE6}]/v6");
            let (code, out, err) = curl(&["-g", "-H", "Host: intake.example.test", &url6])?;
            ensure!(
                code == 0 && out == "hello",
                "curl http over IPv6: exit {code}, {out:?} {err:?}"
            );
            expected_lines += 2;
            let seen = plain.lock().unwrap().clone();
            ensure!(
                seen == vec![ip(PROXY_OUTER), ip(PROXY_OUTER6)],
                "the intake saw {seen:?}, expected the proxy's addresses"
            );

            // Address rules: any protocol, bytes checked both ways.
            for (listener, addr, outer, seed) in [
                (
                    &sink,
                    SocketAddr::new(ip(INTAKE), SINK_PORT),
                    PROXY_OUTER,
                    1,
                ),
                (
                    &sink6,
                    SocketAddr::new(ip(INTAKE6), SINK_PORT),
                    PROXY_OUTER6,
                    3,
                ),
            ] {
                let peer = exchange_through(listener, addr, 1 << 20, (seed, seed + 1)).await?;
                ensure!(
                    peer == ip(outer),
                    "the sink at {addr} saw {peer}, expected {outer}"
                );
                expected_lines += 1;
            }

            // Refusals: reset, nothing dialed, counted by reason.
            let fail = |args: &[&str], what: &str| -> anyhow::Result<()> {
                let (code, out, _) = curl(args)?;
                ensure!(
                    code != 0,
                    "{what}: curl succeeded ({out:?}); it must be refused"
                );
                Ok(())
            };
            fail(
                &["--cacert", &cert, "https://outside.test/"],
                "a name outside the rules",
            )?;
            let resolve = format!("intake.example.test:443:{OTHER}");
            fail(
                &[
                    "--cacert",
                    &cert,
                    "--resolve",
                    &resolve,
                    "https://intake.example.test/",
                ],
                "an allowed SNI towards another address",
            )?;
            fail(
                &[
                    "-H",
                    "Host: intake.example.test",
                    &format!("http://{OTHER}/"),
                ],
                "an allowed Host towards another address",
            )?;
            fail(
                &["-k", "https://metadata.example.test/"],
                "the metadata address",
            )?;
            fail(
                &["-k", "https://private.example.test/"],
                "a private address",
            )?;
            let https = SocketAddr::new(ip(INTAKE), 443);
            let garbage = b"\x16\x03\x01\x00\x10not a client hello at all";
            ensure!(
                refused_raw(https, garbage).await?,
                "garbage instead of a ClientHello was not reset"
            );
            ensure!(
                refused_raw(https, b"").await?,
                "a silent client was not reset after sniff_timeout"
            );
            expected_lines += 7;
            for (addr, peers) in &never {
                let peers = peers.lock().unwrap().clone();
                ensure!(
                    peers.is_empty(),
                    "{addr} was dialed by {peers:?}; it must not be"
                );
            }

            // This host's own processes are captured by OUTPUT; the proxy's own dial is not.
            let (code, out, err) = run_in_ns(
                proxy_ns,
                "curl",
                &[
                    "-sS",
                    "-m",
                    "10",
                    "--cacert",
                    &cert,
                    "https://intake.example.test/hello",
                ],
            )?;
            ensure!(
                code == 0 && out == "hello",
                "curl on the proxy host: exit {code}, {out:?} {err:?}"
            );
            expected_lines += 1;
            anyhow::Ok(expected_lines)
        })?;

    env.daemon
        .wait_conn_logs(expected_lines, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(300));
    let lines = closed_lines(&env.daemon.stderr_text());
    ensure!(
        lines.len() == expected_lines,
        "{} connection lines, expected {expected_lines} (a loop would add more): {lines:#?}",
        lines.len()
    );
    let local: Vec<_> = lines
        .iter()
        .filter(|l| field(l, "client").starts_with(&format!("{PROXY_OUTER}:")))
        .collect();
    ensure!(
        local.len() == 1 && field(local[0], "host") == "intake.example.test",
        "lines of the proxy host's own curl: {local:#?}"
    );
    let tls = lines
        .iter()
        .find(|l| {
            field(l, "destination") == format!("{INTAKE}:443") && field(l, "end") != "rejected"
        })
        .context("no line for the HTTPS connection")?;
    ensure!(
        field(tls, "host") == "intake.example.test"
            && field(tls, "server") == format!("{INTAKE}:443"),
        "HTTPS line: {tls:#}"
    );
    let m = env.daemon.metrics()?;
    for (reason, count) in [
        ("destination", 1),
        ("sni_mismatch", 1),
        ("host_mismatch", 1),
        ("address_link_local", 1),
        ("address_private", 1),
        ("no_name", 2),
    ] {
        let got = m.count(
            "agent_proxy_frontend_rejected_total",
            &[("frontend", "fe"), ("reason", reason)],
        );
        ensure!(
            got == count,
            "rejected_total{{reason=\"{reason}\"}} = {got}, expected {count}"
        );
    }
    let kernel = m.sum(
        "agent_proxy_bytes_total",
        &[("frontend", "fe"), ("path", "kernel")],
    );
    if dp.is_kernel() {
        ensure!(
            kernel >= 4.0 * (1 << 20) as f64,
            "kernel bytes {kernel}: the kernel did not carry the sinks' bytes"
        );
    } else {
        ensure!(kernel == 0.0, "kernel bytes {kernel} on the userspace path");
    }
    drop(dns);
    let finished = env.finish();
    let _ = std::fs::remove_dir_all(&dir);
    finished
}

dataplane_tests!(transparent_gateway);

/// Connections held open at once through the gateway.
const CONNECTIONS: u64 = 1_000;

/// 1 GiB each way through an address rule, byte-exact (`bulk`: `len` bytes each way), then
/// 1,000 connections open at once (the gauge shows them all), each exchanging a few KB checked
/// by hash.
fn transparent_bulk(dp: Dataplane) -> anyhow::Result<()> {
    bulk_and_many(dp, agent_proxy_tests::heavy::bulk_len())
}

fn bulk_and_many(dp: Dataplane, len: u64) -> anyhow::Result<()> {
    let _heavy = agent_proxy_tests::heavy::heavy();
    let gw = Gateway::new()?;
    let dns = Dnsmasq::start(&gw.proxy, &[("intake.example.test", ip(INTAKE))], 60)?;
    let env = TestEnv::start(&gw.proxy, transparent_config(dp, dns.addr, ""))?;
    let (gw, daemon) = (&gw, &env.daemon);
    gw.agent
        .block_on(Duration::from_secs(240), move || async move {
            let sink_addr = SocketAddr::new(ip(INTAKE), SINK_PORT);
            let sink = gw.intake_listener(sink_addr)?;
            if len > 0 {
                let started = std::time::Instant::now();
                exchange_through(&sink, sink_addr, len, (0x7a11, 0x7a12))
                    .await
                    .map_err(|e| {
                        // Whether the verdict met retransmitted overlaps (trimmed, kept).
                        let overlaps = daemon
                            .metrics()
                            .map(|m| agent_proxy_tests::checks::overlaps(&m));
                        e.context(format!(
                            "the 1 GiB exchange; overlapping buffers (trimmed, kept): {overlaps:?}"
                        ))
                    })?;
                eprintln!(
                    "transparent bulk [{dp}]: {len} bytes each way in {:.2?}",
                    started.elapsed()
                );
            }

            let (go_tx, go_rx) = tokio::sync::watch::channel(false);
            let server = tokio::spawn(async move {
                let mut handlers = tokio::task::JoinSet::new();
                for _ in 0..CONNECTIONS {
                    let (mut s, _) = tokio::time::timeout(Duration::from_secs(20), sink.accept())
                        .await
                        .context("the sink's accept stalled")??;
                    handlers.spawn(async move {
                        let id = s.read_u64_le().await?;
                        let x =
                            exchange_expecting(s, id * 2 + 1, 4096, 1 << 20, Some(id * 2)).await?;
                        ensure!(
                            x.received.len == 4096 && x.first_mismatch.is_none(),
                            "sink side of connection {id}: {:?}",
                            x.received
                        );
                        anyhow::Ok(())
                    });
                }
                while let Some(r) = handlers.join_next().await {
                    r??;
                }
                anyhow::Ok(())
            });
            let connecting = Arc::new(tokio::sync::Semaphore::new(64));
            let mut clients = tokio::task::JoinSet::new();
            for id in 0..CONNECTIONS {
                let permit = Arc::clone(&connecting).acquire_owned().await?;
                let mut go = go_rx.clone();
                clients.spawn(async move {
                    let mut s = TcpStream::connect(sink_addr).await?;
                    s.write_u64_le(id).await?;
                    drop(permit);
                    go.wait_for(|g| *g).await?;
                    let x = exchange_expecting(s, id * 2, 4096, 1 << 20, Some(id * 2 + 1)).await?;
                    ensure!(
                        x.received.len == 4096 && x.first_mismatch.is_none(),
                        "client side of connection {id}: {:?}",
                        x.received
                    );
                    anyhow::Ok(())
                });
            }
            // Every connection is open through the proxy before any byte beyond its id moves.
            let m = daemon.settle(Duration::from_secs(30), |m| {
                m.count(
                    "agent_proxy_frontend_current_connections",
                    &[("frontend", "fe")],
                ) == CONNECTIONS
            })?;
            let open = m.count(
                "agent_proxy_frontend_current_connections",
                &[("frontend", "fe")],
            );
            ensure!(
                open == CONNECTIONS,
                "{open} connections open at once, expected {CONNECTIONS}"
            );
            go_tx.send(true)?;
            let mut failed = None;
            while let Some(r) = clients.join_next().await {
                if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                    failed.get_or_insert(e);
                }
            }
            let server = server.await?;
            if let Some(e) = failed {
                return Err(e.context(format!("a client failed; the sink side: {server:?}")));
            }
            server?;
            anyhow::Ok(())
        })?;
    let lines = CONNECTIONS as usize + usize::from(len > 0);
    let logs = env.daemon.wait_conn_logs(lines, Duration::from_secs(20))?;
    // The kernel's counters account for every byte the log lines do not say was copied in
    // userspace (a bulk direction that outran the redirect worker, see docs/architecture.md).
    let (total, copied) = logs.iter().fold((0, 0), |(t, c), l| {
        (
            t + l.bytes_up + l.bytes_down,
            c + l.userspace_up + l.userspace_down,
        )
    });
    ensure!(
        total == 2 * len + (8 + 2 * 4096) * CONNECTIONS,
        "log lines account for {total} bytes"
    );
    let kernel_expected = if dp.is_kernel() { total - copied } else { 0 };
    let m = env.daemon.settle(Duration::from_secs(3), |m| {
        m.count(
            "agent_proxy_bytes_total",
            &[("frontend", "fe"), ("path", "kernel")],
        ) == kernel_expected
    })?;
    let kernel = m.count(
        "agent_proxy_bytes_total",
        &[("frontend", "fe"), ("path", "kernel")],
    );
    ensure!(
        kernel == kernel_expected && (!dp.is_kernel() || kernel > 0),
        "kernel bytes {kernel}, expected {kernel_expected} ({total} carried, {copied} copied)"
    );
    if dp.is_kernel() {
        // Retransmitted segments that overlap received bytes, trimmed by the verdict (the cause
        // of the duplicate bytes the 1 GiB transfer used to meet).
        agent_proxy_tests::checks::check_overlaps(&m, &format!("transparent [{dp}]"))?;
    }
    drop(dns);
    env.finish()
}

dataplane_tests!(transparent_bulk);
