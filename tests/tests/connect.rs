//! `mode = "connect"` end to end: tunnels (a pipelined ClientHello, an IPv6 literal, a
//! fully-qualified name with its trailing dot) judged on hashes and carried on the kernel path,
//! every error answer on raw requests, and the per-client rate limit.
use std::net::SocketAddr;
use std::time::Duration;

use agent_proxy_tests::checks::{BYTES_TOTAL, assert_bytes, bytes, tail};
use agent_proxy_tests::connect::{
    ANSWER_WITHIN, Answer, NetnsHosts, PASSWORD, USER, add_loopback_address, basic_auth,
    closed_lines, connect_config, connect_head, field, open_tunnel, raw_request, read_answer,
    read_answer_head, run,
};
use agent_proxy_tests::intake::{HttpsIntake, run_in_ns};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::{Pattern, sha256};
use agent_proxy_tests::peers::{
    V4, V6, accept, closed_port, connect, linger_zero, listen, recv_to_eof, send_pattern,
};
use agent_proxy_tests::squid::{Squid, SquidDestination};
use agent_proxy_tests::{Dataplane, TestEnv, dataplane_tests, run_scenario};
use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// An address the tests give to `lo` and treat as a public destination (TEST-NET-2).
const PUBLIC: &str = "198.51.100.10";

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
        if dp == Dataplane::Kernel {
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

/// An address in the netns whose SYNs are dropped: connecting to it times out.
const BLACKHOLE: &str = "198.51.100.99";

/// One raw case: what is sent, and the status expected.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
}

/// A namespace with [`PUBLIC`]/24 on `lo` and SYNs to [`BLACKHOLE`] dropped.
fn blackhole_namespace() -> anyhow::Result<NetNs> {
    let ns = NetNs::new()?;
    add_loopback_address(&ns, &format!("{PUBLIC}/24"))?;
    let drop_syns = ["-A", "OUTPUT", "-d", BLACKHOLE, "-p", "tcp", "-j", "DROP"];
    let mut args = vec!["ip", "netns", "exec", ns.name(), "iptables"];
    args.extend(drop_syns);
    run(&args)?;
    Ok(ns)
}

/// The destinations of the answer scenarios (create inside the namespace).
struct AnswerPeers {
    /// Allowed, nothing listens.
    closed: SocketAddr,
    /// Allowed; the scenario decides what it does with connections.
    resetting: TcpListener,
    /// Allowed by the name `localhost` only, which resolves to loopback, which no rule names.
    internal: TcpListener,
    /// The `allow_destinations` naming them, and [`BLACKHOLE`]`:443`.
    destinations: [String; 4],
}

impl AnswerPeers {
    async fn start() -> anyhow::Result<Self> {
        let closed = closed_port(V4)?;
        let resetting = listen(V4).await?;
        let internal = listen(V4).await?;
        let destinations = [
            format!("127.0.0.1:{}", closed.port()),
            format!("127.0.0.1:{}", resetting.local_addr()?.port()),
            format!("localhost:{}", internal.local_addr()?.port()),
            format!("{BLACKHOLE}:443"),
        ];
        Ok(Self {
            closed,
            resetting,
            internal,
            destinations,
        })
    }

    /// A connect frontend allowing [`Self::destinations`], with a 1 s request timeout.
    fn config(&self, dp: Dataplane) -> agent_proxy_tests::DaemonConfig {
        let extra = "request_timeout = \"1s\"\n";
        connect_config(dp, &self.destinations, true, extra)
    }
}

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
            let expected = cases.iter().filter(|c| c.status == status).count()
                + usize::from(status == 408 || status == 200);
            let counted = m.count("agent_proxy_connect_requests_total", &[("status", &status.to_string())]);
            ensure!(
                counted == expected as u64,
                "agent_proxy_connect_requests_total{{status=\"{status}\"}} = {counted}, expected {expected}"
            );
            let logged = lines.iter().filter(|l| field(l, "status") == status.to_string()).count();
            ensure!(logged == expected, "{logged} log lines with status {status}, expected {expected}");
        }
        for line in &lines {
            let end = field(line, "end");
            let expected_end = match field(line, "status").as_str() {
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

/// The raw cases: `allowed` is an allowed literal destination, `internal_port` is allowed by
/// the name `localhost` only, `closed` is allowed and refuses connections, [`BLACKHOLE`]`:443`
/// is allowed and drops SYNs.
fn answer_cases(auth: &str, allowed: &str, internal_port: u16, closed: SocketAddr) -> Vec<Case> {
    let auth = auth.to_owned();
    let allowed = allowed.to_owned();
    let big = connect_head(
        &allowed,
        &format!("{auth}X-Big: {}\r\n", "b".repeat(20_000)),
    );
    let mut pipelined_407 = connect_head(&allowed, "").into_bytes();
    pipelined_407.extend_from_slice(&Pattern::bytes(5, 2_000));
    vec![
        Case {
            name: "no credentials",
            bytes: connect_head(&allowed, "").into(),
            status: 407,
        },
        Case {
            name: "wrong password",
            bytes: connect_head(&allowed, &basic_auth(USER, "wrong")).into(),
            status: 407,
        },
        Case {
            name: "no credentials, ClientHello pipelined",
            bytes: pipelined_407,
            status: 407,
        },
        Case {
            name: "destination not allowed",
            bytes: connect_head("example.com:443", &auth).into(),
            status: 403,
        },
        Case {
            name: "IPv6 literal not allowed",
            bytes: connect_head(&allowed.replace("127.0.0.1", "[::1]"), &auth).into(),
            status: 403,
        },
        Case {
            name: "name resolving to loopback",
            bytes: connect_head(&format!("localhost:{internal_port}"), &auth).into(),
            status: 403,
        },
        Case {
            name: "absolute-form GET",
            bytes: format!("GET http://{allowed}/ HTTP/1.1\r\nHost: {allowed}\r\n{auth}\r\n")
                .into(),
            status: 405,
        },
        Case {
            name: "absolute-form POST",
            bytes: format!(
                "POST http://intake.test/api/v1/series HTTP/1.1\r\nHost: intake.test\r\n\
                 Content-Length: 2\r\n{auth}\r\n{{}}"
            )
            .into(),
            status: 405,
        },
        Case {
            name: "lower-case connect",
            bytes: format!("connect {allowed} HTTP/1.1\r\n\r\n").into(),
            status: 405,
        },
        Case {
            name: "not HTTP",
            bytes: b"\x16\x03\x01\x00\x10hello, not http\r\n\r\n".to_vec(),
            status: 400,
        },
        Case {
            name: "target without a port",
            bytes: connect_head("127.0.0.1", &auth).into(),
            status: 400,
        },
        Case {
            name: "oversized headers",
            bytes: big.into(),
            status: 431,
        },
        Case {
            name: "upstream refuses",
            bytes: connect_head(&closed.to_string(), &auth).into(),
            status: 502,
        },
        Case {
            name: "upstream never answers",
            bytes: connect_head(&format!("{BLACKHOLE}:443"), &auth).into(),
            status: 504,
        },
    ]
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

/// Real clients through the proxy to a local HTTPS intake named `intake.test`: curl with and
/// without credentials, Python `requests`, and the `datadog` package's API client.
fn connect_real_clients(dp: Dataplane) -> anyhow::Result<()> {
    for tool in ["curl", "python3", "openssl"] {
        ensure!(
            agent_proxy_tests::privileges::which(tool).is_some(),
            "{tool} is missing (cargo xtask setup installs it)"
        );
    }
    let netns = NetNs::new()?;
    let ns = &netns;
    add_loopback_address(ns, &format!("{PUBLIC}/32"))?;
    let _hosts = NetnsHosts::new(ns, &[format!("{PUBLIC} intake.test")])?;
    let port = 8443;
    let dir = std::env::temp_dir().join(format!("agent-proxy-intake-{}", ns.name()));
    let intake = HttpsIntake::start(
        ns,
        SocketAddr::new(PUBLIC.parse()?, port),
        "intake.test",
        &dir,
    )?;
    let cert = intake.cert.to_string_lossy().into_owned();
    let config = connect_config(dp, &[format!("intake.test:{port}")], true, "");
    let env = TestEnv::start(ns, config)?;
    let proxy = env.daemon.config.listen;
    let with_auth = format!("http://{USER}:{PASSWORD}@{proxy}");
    let url = format!("https://intake.test:{port}/hello");

    let (code, out, err) = run_in_ns(
        ns,
        "curl",
        &["-sS", "--cacert", &cert, "-x", &with_auth, &url],
    )?;
    ensure!(
        code == 0 && out == "hello",
        "curl -x with credentials: exit {code}, {out:?} {err:?}"
    );
    let (code, _, err) = run_in_ns(
        ns,
        "curl",
        &[
            "-sS",
            "--cacert",
            &cert,
            "-x",
            &format!("http://{proxy}"),
            &url,
        ],
    )?;
    ensure!(
        code == 56 && err.contains("407"),
        "curl -x without credentials: exit {code}, {err:?}"
    );
    let wrong = format!("http://{USER}:nope@{proxy}");
    let (code, _, err) = run_in_ns(ns, "curl", &["-sS", "--cacert", &cert, "-x", &wrong, &url])?;
    ensure!(
        code == 56 && err.contains("407"),
        "curl -x with a wrong password: exit {code}, {err:?}"
    );

    let requests = format!(
        "import requests\n\
         p = {{'https': '{with_auth}', 'http': '{with_auth}'}}\n\
         r = requests.get('{url}', proxies=p, verify='{cert}')\n\
         print(r.status_code, r.text)\n\
         r = requests.get('http://intake.test:{port}/hello', proxies=p)\n\
         print(r.status_code, r.headers.get('Allow'))\n"
    );
    let (code, out, err) = run_in_ns(ns, "python3", &["-c", &requests])?;
    ensure!(
        code == 0 && out == "200 hello\n405 CONNECT\n",
        "python requests: exit {code}, {out:?} {err:?}"
    );

    let datadog = format!(
        "import json, time\n\
         from datadog import initialize, api\n\
         initialize(api_key='k', app_key='a', api_host='https://intake.test:{port}', \
         proxies={{'https': '{with_auth}'}}, cacert='{cert}')\n\
         print(json.dumps(api.Metric.send(metric='agent_proxy.connect_test', points=[(time.time(), 42)], tags=['via:proxy'])))\n"
    );
    let (code, out, err) = run_in_ns(ns, "python3", &["-c", &datadog])?;
    ensure!(
        code == 0 && out.contains("\"ok\""),
        "datadog api client: exit {code}, {out:?} {err:?}"
    );
    let posted: Vec<_> = intake
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    ensure!(
        posted.len() == 1
            && posted[0]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/api/v1/series"))
            && posted[0]["body"]
                .as_str()
                .is_some_and(|b| b.contains("agent_proxy.connect_test") && b.contains("via:proxy")),
        "the intake received {posted:?}"
    );

    // curl x3, requests x2 (the http:// one is a 405), datadog x1.
    let n = 6;
    env.daemon.wait_conn_logs(n, Duration::from_secs(10))?;
    let m = env.daemon.metrics()?;
    for (status, expected) in [("200", 3), ("407", 2), ("405", 1)] {
        let counted = m.count("agent_proxy_connect_requests_total", &[("status", status)]);
        ensure!(
            counted == expected,
            "connect_requests_total{{status=\"{status}\"}} = {counted}, expected {expected}"
        );
    }
    let log = env.daemon.stderr_text();
    ensure!(!log.contains(PASSWORD), "the password reached the log");
    env.finish()?;
    drop(intake);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

dataplane_tests!(connect_real_clients);

/// How long the comparison waits for each answer: Squid's DNS lookups (no server in the
/// namespace) take `dns_timeout` x its retries.
const SUMMARY_WITHIN: Duration = Duration::from_secs(10);

/// The answer's status and the headers that matter for a client, read from the head only
/// (a tunnel would not end by itself), or what happened instead.
async fn summarize(proxy: SocketAddr, bytes: &[u8]) -> String {
    let one = async {
        let mut stream = connect(proxy).await?;
        stream.write_all(bytes).await?;
        let mut r = tokio::io::BufReader::new(stream);
        let (status_line, headers) = read_answer_head(&mut r).await?;
        let mut summary = status_line.split(' ').nth(1).unwrap_or("?").to_owned();
        for (name, value) in headers {
            if ["proxy-authenticate", "allow", "x-squid-error"].contains(&name.as_str()) {
                summary += &format!(", `{name}: {value}`");
            }
        }
        anyhow::Ok(summary)
    };
    match timeout(SUMMARY_WITHIN, one).await {
        Ok(Ok(summary)) => summary,
        Ok(Err(e)) => format!("no answer ({})", e.root_cause()),
        Err(_) => format!("no answer within {} s", SUMMARY_WITHIN.as_secs()),
    }
}

const SQUID_MARK: &str =
    "<!-- squid-table: generated by tests/tests/connect.rs connect_compared_with_squid -->";
const SQUID_END: &str = "<!-- /squid-table -->";

/// The same raw requests to agent-proxy and to Squid with an equivalent config. The table in
/// docs/connect.md must be what this run produces (`AP_WRITE_DOCS=1` rewrites it).
fn compare_with_squid(dp: Dataplane) -> anyhow::Result<()> {
    if agent_proxy_tests::privileges::which("squid").is_none() {
        ensure!(
            !agent_proxy_tests::privileges::in_ci(),
            "squid is not installed (cargo xtask test installs it)"
        );
        eprintln!(
            "!! SKIPPED connect_compared_with_squid: squid is not installed (apt-get install squid)"
        );
        return Ok(());
    }
    let netns = blackhole_namespace()?;
    let ns = &netns;
    let squid_addr: SocketAddr = "127.0.0.1:3128".parse()?;
    let rows = ns.block_on(Duration::from_secs(120), move || async move {
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
        let squid = Squid::start(
            ns,
            squid_addr,
            USER,
            PASSWORD,
            &[
                SquidDestination::Ip(closed),
                SquidDestination::Ip(SocketAddr::new(V4, reset_port)),
                SquidDestination::Name("localhost".into(), internal_port),
                SquidDestination::Ip(SocketAddr::new(BLACKHOLE.parse()?, 443)),
            ],
            Duration::from_secs(1),
            Duration::from_secs(1),
        )?;
        let auth = basic_auth(USER, PASSWORD);
        let allowed = format!("127.0.0.1:{reset_port}");
        let mut cases: Vec<(&str, Vec<u8>)> = answer_cases(&auth, &allowed, internal_port, closed)
            .into_iter()
            .map(|c| (c.name, c.bytes))
            .collect();
        cases.push((
            "slow request (half a request line)",
            format!("CONNECT {allowed} HTTP/1.1\r\n").into(),
        ));
        cases.push(("allowed, reachable", connect_head(&allowed, &auth).into()));
        // The accepting listener takes every tunnel of the last case and closes it.
        let acceptor = tokio::spawn(async move {
            while let Ok((s, _)) = resetting.accept().await {
                drop(s);
            }
        });
        let mut rows = Vec::new();
        for (name, bytes) in &cases {
            let ours = summarize(env.daemon.config.listen, bytes).await;
            let theirs = summarize(squid.addr, bytes).await;
            rows.push(format!("| {name} | {ours} | {theirs} |"));
        }
        acceptor.abort();
        let header = format!(
            "| case | agent-proxy | Squid {} |\n| --- | --- | --- |",
            squid.version
        );
        drop(squid);
        drop(internal);
        env.finish()?;
        anyhow::Ok(format!("{header}\n{}", rows.join("\n")))
    })?;
    let table = format!("{SQUID_MARK}\n{rows}\n{SQUID_END}");
    let doc_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/connect.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let (before, rest) = doc
        .split_once(SQUID_MARK)
        .context("docs/connect.md has no squid-table mark")?;
    let (_, after) = rest
        .split_once(SQUID_END)
        .context("docs/connect.md has no squid-table end")?;
    let current = rest.split_once(SQUID_END).map_or("", |(t, _)| t);
    if std::env::var_os("AP_WRITE_DOCS").is_some() {
        std::fs::write(&doc_path, format!("{before}{table}{after}"))?;
        eprintln!("docs/connect.md: squid table rewritten");
        return Ok(());
    }
    // agent-proxy's column must be what the doc says; Squid's (timing-dependent: DNS and
    // connect timeouts) is only reported when it moved.
    let (documented, measured) = (columns(current), columns(&rows));
    let ours = |rows: &[[String; 3]]| -> Vec<[String; 2]> {
        rows.iter()
            .map(|[c, a, _]| [c.clone(), a.clone()])
            .collect()
    };
    ensure!(
        ours(&documented) == ours(&measured),
        "docs/connect.md's table of agent-proxy answers differs from this run \
         (AP_WRITE_DOCS=1 rewrites it):\n{table}"
    );
    if documented != measured {
        eprintln!("note: Squid answered differently from docs/connect.md this time:\n{table}");
    }
    Ok(())
}

/// The cells of a markdown table's body rows.
fn columns(text: &str) -> Vec<[String; 3]> {
    text.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| case") && !l.starts_with("| ---"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            let cell = |i: usize| cells.get(i).copied().unwrap_or_default().to_owned();
            [cell(0), cell(1), cell(2)]
        })
        .collect()
}

#[test]
fn connect_compared_with_squid() {
    run_scenario(
        "connect_compared_with_squid",
        Dataplane::Userspace,
        compare_with_squid,
    );
}
