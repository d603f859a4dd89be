//! Plain-HTTP requests through a connect frontend (`curl -x http://proxy http://intake/...`):
//! real clients - curl (GET, a 170 KB POST, a chunked upload, two hosts on one proxy
//! connection), Python `requests`, the `datadog` API client - against a plain HTTP intake;
//! request smuggling attempts refused with 400 and a destination outside the allowlist with
//! 403, with nothing reaching the intake; what the intake received (origin-form target, `Via`,
//! no `Proxy-Authorization`, the bodies' SHA-256); the per-request metrics.
use std::net::SocketAddr;
use std::time::Duration;

use agent_proxy_tests::connect::{
    NetnsHosts, PASSWORD, USER, add_loopback_address, basic_auth, closed_lines, connect_config,
    field,
};
use agent_proxy_tests::connect_cases::PUBLIC;
use agent_proxy_tests::http_cases::{
    answers_to, curl_in, ensure_refused, post_twice, refused_heads, smuggling_head, statuses,
    upload_file,
};
use agent_proxy_tests::intake::{HttpsIntake, run_in_ns};
use agent_proxy_tests::metrics::Metrics;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::{Dataplane, TestEnv, run_scenario};
use anyhow::ensure;
use serde_json::Value;

const PORT: u16 = 8080;
/// The POST bodies: larger than any buffer on the way, so that buffering would show.
const UPLOAD: usize = 170 * 1024;

fn requests_total(m: &Metrics, method: &str, api: &str, status: &str) -> u64 {
    m.count(
        "agent_proxy_http_requests_total",
        &[("method", method), ("api", api), ("status", status)],
    )
}

fn plain_http(dp: Dataplane) -> anyhow::Result<()> {
    for tool in ["curl", "python3"] {
        ensure!(
            agent_proxy_tests::privileges::which(tool).is_some(),
            "{tool} is missing (cargo xtask setup installs it)"
        );
    }
    let netns = NetNs::new()?;
    let ns = &netns;
    add_loopback_address(ns, &format!("{PUBLIC}/32"))?;
    let _hosts = NetnsHosts::new(
        ns,
        &[format!("{PUBLIC} intake.test other.test denied.test")],
    )?;
    let dir = std::env::temp_dir().join(format!("agent-proxy-plain-{}", ns.name()));
    let intake = HttpsIntake::start_plain(ns, SocketAddr::new(PUBLIC.parse()?, PORT), &dir)?;
    let config = connect_config(
        dp,
        &[format!("intake.test:{PORT}"), format!("other.test:{PORT}")],
        true,
        "",
    );
    let env = TestEnv::start(ns, config)?;
    let proxy = env.daemon.config.listen;
    let with_auth = format!("http://{USER}:{PASSWORD}@{proxy}");
    let intake_url = format!("http://intake.test:{PORT}");

    // Refused before anything is dialed: smuggling attempts (400) and a destination outside
    // the allowlist (403). The intake must not see a single connection.
    let auth = basic_auth(USER, PASSWORD);
    let target = format!("{intake_url}/api/v1/series");
    let head =
        |framing: &str| smuggling_head(&target, &format!("intake.test:{PORT}"), &auth, framing);
    let mut refused = refused_heads(&target, &format!("intake.test:{PORT}"), &auth);
    refused.extend([
        (
            "destination not allowed",
            format!(
                "GET http://denied.test:{PORT}/hello HTTP/1.1\r\nHost: denied.test\r\n{auth}Connection: close\r\n\r\n"
            )
            .into_bytes(),
            403,
        ),
        (
            "port not allowed (80 when none is written)",
            format!(
                "GET http://intake.test/hello HTTP/1.1\r\nHost: intake.test\r\n{auth}Connection: close\r\n\r\n"
            )
            .into_bytes(),
            403,
        ),
    ]);
    ns.block_on(Duration::from_secs(60), || ensure_refused(proxy, &refused))?;
    ensure!(
        intake.accepted() == 0,
        "refused requests reached the intake: {:?}",
        intake.requests()
    );

    // The same attempts behind a request that passed, on one kept-alive connection: the first
    // is answered, the second refused with 400, and only the first reaches the intake.
    let later: Vec<(&str, String)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            "Content-Length: 40\r\nTransfer-Encoding: chunked\r\n".to_owned(),
        ),
        (
            "two equal Content-Length",
            "Content-Length: 5\r\nContent-Length: 5\r\n".to_owned(),
        ),
        ("bare LF", "Content-Length: 5\nX-Bare: lf\r\n".to_owned()),
    ];
    for (name, framing) in &later {
        let before = intake.requests().len();
        let bytes = [
            format!("GET {intake_url}/hello HTTP/1.1\r\nHost: intake.test:{PORT}\r\n{auth}\r\n")
                .into_bytes(),
            head(framing),
        ]
        .concat();
        let answers = ns.block_on(Duration::from_secs(30), || answers_to(proxy, &bytes))?;
        let statuses = statuses(&answers);
        ensure!(
            statuses == ["200", "400"] && answers.contains("hello"),
            "later head, {name}: answers {answers:?}"
        );
        let seen: Vec<Value> = intake.requests().split_off(before);
        ensure!(
            seen.iter().filter(|r| r.get("method").is_some()).count() == 1
                && seen
                    .iter()
                    .all(|r| r.get("method").is_none() || r["path"] == "/hello"),
            "later head, {name}: the intake received {seen:?}"
        );
    }

    // curl: GET, then without credentials (407).
    let curl = curl_in(ns, vec!["-x".into(), with_auth.clone()]);
    let (code, out, err) = curl(&[&format!("{intake_url}/hello")])?;
    ensure!(
        code == 0 && out == "hello",
        "curl GET: exit {code}, {out:?} {err:?}"
    );
    let (code, out, err) = run_in_ns(
        ns,
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            &format!("http://{proxy}"),
            &format!("{intake_url}/hello"),
        ],
    )?;
    ensure!(
        code == 0 && out == "407",
        "curl without credentials: exit {code}, {out:?} {err:?}"
    );

    // A 170 KB POST with a Content-Length, then the same body as a chunked upload.
    let (file, digest) = upload_file(&dir, 17, UPLOAD)?;
    post_twice(
        &curl,
        &format!("{intake_url}/api/v2/upload/12345"),
        &file,
        &digest,
    )?;
    let posts: Vec<Value> = intake
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/api/v2/upload/12345")
        .collect();
    ensure!(
        posts.len() == 2
            && posts
                .iter()
                .all(|p| p["sha256"] == digest.as_str() && p["len"] == UPLOAD)
            && posts[0]["chunked"] == false
            && posts[1]["chunked"] == true,
        "the intake received {posts:?}"
    );

    // Two hosts in one curl run: one proxy connection carries both requests, each on an
    // upstream connection of its own destination.
    let before = env.daemon.metrics()?;
    let dialed = intake.accepted();
    let (code, out, err) = curl(&[
        &format!("{intake_url}/hello"),
        &format!("http://other.test:{PORT}/hello"),
    ])?;
    ensure!(
        code == 0 && out == "hellohello",
        "curl two hosts: exit {code}, {out:?} {err:?}"
    );
    let after = env.daemon.metrics()?;
    let accepted = |m: &Metrics| m.count("agent_proxy_frontend_connections_total", &[]);
    ensure!(
        accepted(&after) == accepted(&before) + 1,
        "two hosts in one curl run took {} proxy connections",
        accepted(&after) - accepted(&before)
    );
    ensure!(
        intake.accepted() == dialed + 2,
        "two hosts took {} upstream connections",
        intake.accepted() - dialed
    );

    // Python requests (a session: keep-alive) and the datadog API client, plain http.
    let requests = format!(
        "import requests\n\
         s = requests.Session()\n\
         s.proxies = {{'http': '{with_auth}'}}\n\
         r = s.get('{intake_url}/hello')\n\
         print(r.status_code, r.text, r.headers.get('Via'))\n\
         r = s.post('{intake_url}/api/v1/check_run', json={{'check': 'x'}})\n\
         print(r.status_code, r.json()['status'])\n"
    );
    let dialed = intake.accepted();
    let (code, out, err) = run_in_ns(ns, "python3", &["-c", &requests])?;
    ensure!(
        code == 0 && out == "200 hello 1.1 agent-proxy\n202 ok\n",
        "python requests: exit {code}, {out:?} {err:?}"
    );
    // Two requests to one destination: its upstream connection is kept and reused.
    ensure!(
        intake.accepted() == dialed + 1,
        "a session's two requests to one host took {} upstream connections",
        intake.accepted() - dialed
    );
    let datadog = format!(
        "import json, time\n\
         from datadog import initialize, api\n\
         initialize(api_key='k', app_key='a', api_host='{intake_url}', proxies={{'http': '{with_auth}'}})\n\
         print(json.dumps(api.Metric.send(metric='agent_proxy.plain_test', points=[(time.time(), 42)])))\n"
    );
    let (code, out, err) = run_in_ns(ns, "python3", &["-c", &datadog])?;
    ensure!(
        code == 0 && out.contains("\"ok\""),
        "datadog api client: exit {code}, {out:?} {err:?}"
    );

    // What the intake saw: origin-form targets, the proxy's Via, no proxy credentials.
    let seen: Vec<Value> = intake
        .requests()
        .into_iter()
        .filter(|r| r.get("method").is_some())
        .collect();
    ensure!(
        seen.len() == 8 + later.len(),
        "the intake saw {} requests: {seen:?}",
        seen.len()
    );
    for r in &seen {
        let via = r["via"].as_array().map(Vec::len);
        ensure!(
            r["path"].as_str().is_some_and(|p| p.starts_with('/'))
                && r["via"][0] == "1.1 agent-proxy"
                && via == Some(1)
                && r["proxy_authorization"] == false
                && r["proxy_connection"] == false
                && r["host"]
                    .as_str()
                    .is_some_and(|h| h.ends_with(&format!(".test:{PORT}"))),
            "the intake received {r}"
        );
    }
    ensure!(
        seen.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/api/v1/series"))
            && r["body"]
                .as_str()
                .is_some_and(|b| b.contains("agent_proxy.plain_test"))),
        "the datadog series did not arrive: {seen:?}"
    );

    // The per-request metrics.
    let m = env.daemon.metrics()?;
    for (method, api, status, n) in [
        ("GET", "/hello", "200", 4 + later.len() as u64),
        ("GET", "/hello", "407", 1),
        ("GET", "/hello", "403", 2),
        ("POST", "/api/v2/upload/:id", "202", 2),
        ("POST", "/api/v1/check_run", "202", 1),
        ("POST", "/api/v1/series", "202", 1),
        ("POST", "/api/v1/series", "400", later.len() as u64),
    ] {
        let got = requests_total(&m, method, api, status);
        ensure!(
            got == n,
            "agent_proxy_http_requests_total{{method={method},api={api},status={status}}} = {got}, expected {n}"
        );
    }
    let uploaded = m.count(
        "agent_proxy_http_request_bytes_total",
        &[("api", "/api/v2/upload/:id")],
    );
    ensure!(
        uploaded == 2 * UPLOAD as u64,
        "agent_proxy_http_request_bytes_total of the uploads = {uploaded}"
    );
    let answered = m.count(
        "agent_proxy_http_response_bytes_total",
        &[("api", "/hello")],
    );
    // Four `hello`s, and the proxy's own 407 and 403 bodies.
    ensure!(
        answered > 4 * 5,
        "agent_proxy_http_response_bytes_total of /hello = {answered}"
    );
    let timed = m.count(
        "agent_proxy_http_request_duration_seconds_count",
        &[("api", "/hello")],
    );
    ensure!(
        timed == 7 + later.len() as u64,
        "duration observations of /hello: {timed}"
    );

    // Logs: one line per client connection, no credentials.
    let log = env.daemon.stderr_text();
    ensure!(!log.contains(PASSWORD), "the password reached the log");
    let lines = closed_lines(&log);
    ensure!(
        lines
            .iter()
            .any(|l| field(l, "detail") == "plain requests: 2"
                && field(l, "destination") == format!("intake.test:{PORT}")
                && field(l, "status") == "200"
                && field(l, "path") == "userspace"),
        "no log line for the two-host connection: {lines:?}"
    );
    env.finish()?;
    drop(intake);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn connect_plain_http() {
    run_scenario("connect_plain_http", Dataplane::Userspace, plain_http);
}
