//! `mode = "connect"` end to end: tunnels (a pipelined ClientHello, an IPv6 literal, a
//! fully-qualified name with its trailing dot) judged on hashes and carried on the kernel path,
//! every error answer on raw requests, duplicate headers refused, and the per-client rate limit.
use std::net::SocketAddr;
use std::time::Duration;

use agent_proxy_tests::checks::{BYTES_TOTAL, assert_bytes, bytes, tail};
use agent_proxy_tests::connect::{
    ANSWER_WITHIN, Answer, NetnsHosts, PASSWORD, USER, add_loopback_address, basic_auth,
    closed_lines, connect_config, connect_head, ensure_answer_counts, field, open_tunnel,
    raw_request, read_answer,
};
use agent_proxy_tests::connect_cases::{
    AnswerPeers, Case, PUBLIC, answer_cases, blackhole_namespace,
};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::{Pattern, sha256};
use agent_proxy_tests::peers::{
    V4, V6, accept, connect, linger_zero, listen, recv_to_eof, send_pattern,
};
use agent_proxy_tests::{Dataplane, TestEnv, dataplane_tests, run_scenario};
use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// Bytes the client sends with its CONNECT head in one write, like a TLS ClientHello.
const PIPELINED: usize = 1_500;
const UP_LEN: usize = 1 << 20;
const DOWN_LEN: u64 = 700_000;

/// The upstream of a tunnel: takes one connection, reads to EOF, answers with `DOWN_LEN`
/// pattern bytes seeded `seed`, closes. Returns the digest of what it received.
async fn serve_once(
    listener: TcpListener,
    seed: u64,
) -> anyhow::Result<agent_proxy_tests::peers::Digest> {
    let mut s = accept(&listener).await?;
    let got = recv_to_eof(&mut s, UP_LEN as u64 + 1).await?;
    send_pattern(&mut s, seed, DOWN_LEN).await?;
    s.shutdown().await?;
    Ok(got)
}

/// One tunnel to `listener` through `proxy` requesting `target`; checks both directions'
/// hashes. The first [`PIPELINED`] bytes go in the same write as the CONNECT head.
async fn tunnel(
    proxy: SocketAddr,
    listener: TcpListener,
    target: &str,
    seed: u64,
) -> anyhow::Result<()> {
    let upstream = tokio::spawn(serve_once(listener, seed + 1));
    let payload = Pattern::bytes(seed, UP_LEN);
    let head = connect_head(target, &basic_auth(USER, PASSWORD));
    let mut conn = open_tunnel(proxy, &head, &payload[..PIPELINED])
        .await
        .with_context(|| format!("tunnel to {target}"))?;
    conn.get_mut().write_all(&payload[PIPELINED..]).await?;
    conn.get_mut().shutdown().await?;
    let down = recv_to_eof(&mut conn, DOWN_LEN + 1).await?;
    let up = upstream.await??;
    ensure!(
        up.len == UP_LEN as u64 && up.hash == sha256(&payload),
        "{target}: upstream received {up:?}, the client sent {UP_LEN} bytes sha256 {}",
        agent_proxy_tests::pattern::hex(&sha256(&payload))
    );
    let expected = Pattern::hash(seed + 1, DOWN_LEN);
    ensure!(
        down.len == DOWN_LEN && down.hash == expected,
        "{target}: client received {down:?}, the upstream sent {DOWN_LEN} bytes"
    );
    Ok(())
}

fn connect_tunnels(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    add_loopback_address(ns, &format!("{PUBLIC}/32"))?;
    let _hosts = NetnsHosts::new(ns, &[format!("{PUBLIC} intake.test. intake.test")])?;
    ns.block_on(Duration::from_secs(90), move || async move {
        let v4 = listen(V4).await?;
        let v6 = listen(V6).await?;
        let public = listen(PUBLIC.parse()?).await?;
        let (p4, p6, pp) = (
            v4.local_addr()?.port(),
            v6.local_addr()?.port(),
            public.local_addr()?.port(),
        );
        let destinations = [
            format!("127.0.0.1:{p4}"),
            format!("[::1]:{p6}"),
            // A suffix rule; the name resolves to a public address, which needs no rule.
            format!(".test:{pp}"),
        ];
        let env = TestEnv::start(ns, connect_config(dp, &destinations, true, ""))?;
        let proxy = env.daemon.config.listen;
        let targets = [
            format!("127.0.0.1:{p4}"),
            format!("[::1]:{p6}"),
            format!("intake.test.:{pp}"),
        ];
        tunnel(proxy, v4, &targets[0], 10).await?;
        tunnel(proxy, v6, &targets[1], 20).await?;
        tunnel(proxy, public, &targets[2], 30).await?;

        let logs = env.daemon.wait_conn_logs(3, Duration::from_secs(10))?;
        let lines = closed_lines(&env.daemon.stderr_text());
        for (line, target) in lines.iter().zip(&targets) {
            ensure!(
                field(line, "destination") == *target
                    && field(line, "status") == "200"
                    && field(line, "path") == dp.as_str()
                    && field(line, "backend") == "-"
                    && ["client_close", "upstream_close"].contains(&field(line, "end").as_str()),
                "log line for {target}: {line}"
            );
        }
        ensure!(
            field(&lines[2], "server") == format!("{PUBLIC}:{pp}"),
            "intake.test. was not dialed at {PUBLIC}: {}",
            lines[2]
        );
        let (up, down) = (3 * UP_LEN as u64, 3 * DOWN_LEN);
        let (log_up, log_down) = logs
            .iter()
            .fold((0, 0), |(u, d), l| (u + l.bytes_up, d + l.bytes_down));
        ensure!(
            (log_up, log_down) == (up, down),
            "log lines count {log_up} up / {log_down} down, the peers moved {up} / {down}"
        );
        // On the kernel path, the bytes are counted by the eBPF program's own counters.
        assert_bytes(&env.daemon, dp, up, down, tail(&logs))?;
        if dp.is_kernel() {
            let m = env.daemon.metrics()?;
            let kernel_up = bytes(&m, Dataplane::Kernel, "upstream");
            ensure!(
                kernel_up > up / 2,
                "{BYTES_TOTAL}{{path=\"kernel\",direction=\"upstream\"}} = {kernel_up} of {up}"
            );
        }
        let m = env.daemon.metrics()?;
        let ok = m.count("agent_proxy_connect_requests_total", &[("status", "200")]);
        ensure!(
            ok == 3,
            "agent_proxy_connect_requests_total{{status=\"200\"}} = {ok}"
        );
        let log = env.daemon.stderr_text();
        ensure!(!log.contains(PASSWORD), "the password reached the log");
        env.finish()
    })
}

dataplane_tests!(connect_tunnels);

fn connect_answers(dp: Dataplane) -> anyhow::Result<()> {
    let netns = blackhole_namespace()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(90), move || async move {
        let peers = AnswerPeers::start().await?;
        let env = TestEnv::start(ns, peers.config(dp))?;
        let AnswerPeers {
            closed,
            resetting,
            internal,
            ..
        } = peers;
        let (reset_port, internal_port) = (
            resetting.local_addr()?.port(),
            internal.local_addr()?.port(),
        );
        let proxy = env.daemon.config.listen;
        let auth = basic_auth(USER, PASSWORD);
        let allowed = format!("127.0.0.1:{reset_port}");
        let cases = answer_cases(&auth, &allowed, internal_port, closed);
        let mut table = Vec::new();
        for case in &cases {
            let answer = timeout(ANSWER_WITHIN, raw_request(proxy, &case.bytes, false))
                .await
                .with_context(|| format!("{}: no answer", case.name))?
                .with_context(|| case.name)?;
            check_answer(case, &answer)?;
            table.push(format!("{:40} {}", case.name, answer.status_line));
        }

        // A slow client: half a request line, then nothing.
        let mut slow = connect(proxy).await?;
        slow.write_all(format!("CONNECT {allowed} HTTP/1.1\r\n").as_bytes()).await?;
        let answer = timeout(ANSWER_WITHIN, read_answer(slow)).await.context("slow request: no 408")??;
        ensure!(answer.status == 408, "slow request: {answer:?}");
        table.push(format!("{:40} {}", "slow request", answer.status_line));

        // A destination that accepts and then resets: 200, then the reset reaches the client.
        // It resets once it has the pipelined bytes, which the proxy forwards after its 200
        // (resetting at once could beat the proxy's connect, a 502).
        let upstream = tokio::spawn(async move {
            let mut s = accept(&resetting).await?;
            let mut hello = [0u8; 5];
            s.read_exact(&mut hello).await?;
            ensure!(&hello == b"hello", "the upstream got {hello:?}");
            linger_zero(&s)?;
            drop(s);
            anyhow::Ok(())
        });
        let mut conn = open_tunnel(proxy, &connect_head(&allowed, &auth), b"hello").await?;
        upstream.await??;
        let mut buf = [0u8; 16];
        let end = timeout(ANSWER_WITHIN, conn.read(&mut buf)).await.context("no end after the reset")?;
        ensure!(
            matches!(end, Ok(0) | Err(_)),
            "bytes after the upstream reset: {end:?}"
        );
        table.push(format!("{:40} 200, then {end:?}", "upstream resets"));
        eprintln!("connect answers:\n  {}", table.join("\n  "));

        let n = cases.len() + 2;
        env.daemon.wait_conn_logs(n, Duration::from_secs(10))?;
        let lines = closed_lines(&env.daemon.stderr_text());
        ensure!(lines.len() == n, "{} log lines for {n} connections", lines.len());
        let m = env.daemon.metrics()?;
        for status in [200, 400, 403, 405, 407, 408, 431, 502, 504] {
            let plain = cases.iter().filter(|c| c.plain && c.status == status).count();
            let answered = m.count(
                "agent_proxy_http_requests_total",
                &[("status", &status.to_string())],
            );
            ensure!(
                answered == plain as u64,
                "agent_proxy_http_requests_total{{status=\"{status}\"}} = {answered}, expected {plain}"
            );
            let expected = cases.iter().filter(|c| !c.plain && c.status == status).count()
                + usize::from(status == 408 || status == 200);
            let counted = m.count("agent_proxy_connect_requests_total", &[("status", &status.to_string())]);
            ensure!(
                counted == expected as u64,
                "agent_proxy_connect_requests_total{{status=\"{status}\"}} = {counted}, expected {expected}"
            );
            let logged = lines.iter().filter(|l| field(l, "status") == status.to_string()).count();
            ensure!(
                logged == expected + plain,
                "{logged} log lines with status {status}, expected {}",
                expected + plain
            );
        }
        for line in &lines {
            let end = field(line, "end");
            let plain = field(line, "detail").starts_with("plain requests: ");
            let expected_end = match field(line, "status").as_str() {
                _ if plain => "client_close",
                "200" => "upstream_reset",
                "502" | "504" => "connect_failed",
                _ => "refused",
            };
            ensure!(end == expected_end, "end={end}, expected {expected_end}: {line}");
        }
        let log = env.daemon.stderr_text();
        ensure!(!log.contains(PASSWORD), "the password reached the log");
        ensure!(!log.contains(auth.trim_end()), "the credentials header reached the log");
        drop(internal);
        env.finish()
    })
}

fn check_answer(case: &Case, answer: &Answer) -> anyhow::Result<()> {
    ensure!(
        answer.status == case.status,
        "{}: expected {}, got {answer:?}",
        case.name,
        case.status
    );
    ensure!(
        answer.header("connection") == Some("close") && answer.body.starts_with(b"agent-proxy: "),
        "{}: {answer:?}",
        case.name
    );
    match case.status {
        407 => ensure!(
            answer.header("proxy-authenticate") == Some("Basic realm=\"agent-proxy\""),
            "{}: no Basic challenge: {answer:?}",
            case.name
        ),
        405 => ensure!(
            answer.header("allow") == Some("CONNECT"),
            "{}: no Allow header: {answer:?}",
            case.name
        ),
        _ => {}
    }
    Ok(())
}

#[test]
fn connect_answers_every_error() {
    run_scenario("connect_answers", Dataplane::Kernel, connect_answers);
}

/// Duplicate `Proxy-Authorization` (a wrong one, then the right one: accepted before issue
/// 16), `Host` or `Content-Length` headers: 400 naming the header, before credentials or the
/// destination are looked at, so nothing is dialed; the same request with one of each opens its
/// tunnel.
fn connect_duplicate_headers(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let upstream = listen(V4).await?;
        let allowed = format!("127.0.0.1:{}", upstream.local_addr()?.port());
        let env = TestEnv::start(
            ns,
            connect_config(dp, std::slice::from_ref(&allowed), true, ""),
        )?;
        let proxy = env.daemon.config.listen;
        let right = basic_auth(USER, PASSWORD);
        let wrong = basic_auth(USER, "wrong");
        let cases = [
            ("Proxy-Authorization", format!("{wrong}{right}")),
            (
                "Proxy-Authorization",
                format!(
                    "{right}{}",
                    wrong.replacen("Proxy-Authorization", "proxy-AUTHORIZATION", 1)
                ),
            ),
            ("Host", format!("host: {allowed}\r\n{right}")),
            (
                "Content-Length",
                format!("Content-Length: 0\r\n{right}CONTENT-LENGTH: 0\r\n"),
            ),
        ];
        for (name, headers) in &cases {
            let head = connect_head(&allowed, headers);
            let answer = timeout(ANSWER_WITHIN, raw_request(proxy, head.as_bytes(), false))
                .await
                .with_context(|| format!("duplicate {name}: no answer"))??;
            let body = format!("agent-proxy: Bad Request: duplicate {name} header\n");
            ensure!(
                answer.status_line == "HTTP/1.1 400 Bad Request" && answer.body == body.as_bytes(),
                "duplicate {name}: {answer:?}"
            );
        }
        // Every refusal was answered, so a dial would already be in the accept queue.
        let dialed = timeout(Duration::from_millis(300), upstream.accept()).await;
        ensure!(
            dialed.is_err(),
            "a refused request reached the destination: {dialed:?}"
        );
        tunnel(proxy, upstream, &allowed, 40).await?;

        let n = cases.len() + 1;
        env.daemon.wait_conn_logs(n, Duration::from_secs(10))?;
        let lines = closed_lines(&env.daemon.stderr_text());
        ensure!(
            lines.len() == n,
            "{} log lines for {n} connections",
            lines.len()
        );
        for (name, _) in &cases {
            let detail = format!("duplicate {name} header");
            let expected = cases.iter().filter(|(n, _)| n == name).count();
            let logged = lines
                .iter()
                .filter(|l| {
                    field(l, "status") == "400"
                        && field(l, "end") == "refused"
                        && field(l, "server") == "-"
                        && field(l, "detail") == detail
                })
                .count();
            ensure!(
                logged == expected,
                "{logged} refused lines with detail {detail:?}, expected {expected}: {lines:?}"
            );
        }
        let tunnels: Vec<_> = lines
            .iter()
            .filter(|l| field(l, "status") == "200")
            .collect();
        ensure!(
            tunnels.len() == 1 && field(tunnels[0], "server") == allowed,
            "the tunnel with one of each header: {tunnels:?}"
        );
        let m = env.daemon.metrics()?;
        ensure_answer_counts(&m, &[("400", cases.len() as u64), ("200", 1), ("407", 0)])?;
        let log = env.daemon.stderr_text();
        ensure!(!log.contains(PASSWORD), "the password reached the log");
        env.finish()
    })
}

#[test]
fn connect_refuses_duplicate_headers() {
    run_scenario(
        "connect_duplicate_headers",
        Dataplane::Kernel,
        connect_duplicate_headers,
    );
}

const RATE: u64 = 3;
const ATTEMPTS: u64 = 5;

fn connect_rate_limit(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(60), move || async move {
        let extra = format!("rate_limit = {{ connections = {RATE}, per = \"1h\" }}\n");
        let env = TestEnv::start(ns, connect_config(dp, &[], false, &extra))?;
        let proxy = env.daemon.config.listen;
        let mut refused = 0;
        for i in 0..ATTEMPTS {
            let result =
                raw_request(proxy, connect_head("example.com:443", "").as_bytes(), false).await;
            match result {
                Ok(answer) => ensure!(
                    i < RATE && answer.status == 403,
                    "attempt {i}: {answer:?} (nothing is allowed, and only {RATE} may pass)"
                ),
                Err(e) => {
                    ensure!(i >= RATE, "attempt {i} within the rate failed: {e:#}");
                    refused += 1;
                }
            }
        }
        ensure!(refused == ATTEMPTS - RATE, "{refused} attempts refused");
        let m = env.daemon.settle(Duration::from_secs(3), |m| {
            m.count(
                "agent_proxy_frontend_rejected_total",
                &[("reason", "rate_limit")],
            ) == ATTEMPTS - RATE
        })?;
        let limited = m.count(
            "agent_proxy_frontend_rejected_total",
            &[("reason", "rate_limit")],
        );
        ensure!(
            limited == ATTEMPTS - RATE,
            "rejected{{reason=\"rate_limit\"}} = {limited}"
        );
        let forbidden = m.count("agent_proxy_connect_requests_total", &[("status", "403")]);
        ensure!(forbidden == RATE, "403 answers: {forbidden}");
        env.finish()
    })
}

#[test]
fn connect_rate_limit_per_client() {
    run_scenario(
        "connect_rate_limit",
        Dataplane::Userspace,
        connect_rate_limit,
    );
}
