//! `mode = "connect"` with real clients - curl, Python `requests`, the `datadog` API client -
//! against a local HTTPS intake, and the same raw requests sent to agent-proxy and to Squid
//! (the table in docs/connect.md).
use std::net::SocketAddr;
use std::time::Duration;

use agent_proxy_tests::connect::{
    NetnsHosts, PASSWORD, USER, add_loopback_address, basic_auth, connect_config, connect_head,
    ensure_answer_counts, read_answer_head,
};
use agent_proxy_tests::connect_cases::{
    AnswerPeers, BLACKHOLE, PUBLIC, answer_cases, blackhole_namespace,
};
use agent_proxy_tests::intake::{HttpsIntake, run_in_ns};
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::peers::{V4, connect};
use agent_proxy_tests::squid::{Squid, SquidDestination};
use agent_proxy_tests::{Dataplane, TestEnv, dataplane_tests, run_scenario};
use anyhow::{Context as _, ensure};
use tokio::io::AsyncWriteExt as _;
use tokio::time::timeout;
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
         print(r.status_code, r.headers.get('Via'))\n"
    );
    let (code, out, err) = run_in_ns(ns, "python3", &["-c", &requests])?;
    // The http:// URL goes as a plain request (tests/tests/connect_http.rs), here to a port
    // that speaks TLS: the upstream closes on it, answered 502.
    ensure!(
        code == 0 && out == "200 hello\n502 None\n",
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

    // curl x3, requests x2 (the http:// one a plain request), datadog x1.
    let n = 6;
    env.daemon.wait_conn_logs(n, Duration::from_secs(10))?;
    let m = env.daemon.metrics()?;
    ensure_answer_counts(&m, &[("200", 3), ("407", 2), ("405", 0)])?;
    let plain = m.count(
        "agent_proxy_http_requests_total",
        &[("method", "GET"), ("api", "/hello"), ("status", "502")],
    );
    ensure!(
        plain == 1,
        "agent_proxy_http_requests_total of the plain GET = {plain}"
    );
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
    "<!-- squid-table: generated by tests/tests/connect_clients.rs connect_compared_with_squid -->";
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
