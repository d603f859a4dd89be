//! HTTP the proxy sees, with TLS (issue 17):
//! - `mode = "http"`: a reverse proxy with the operator's certificate on the frontend and
//!   verified TLS to the intake (curl, Python `requests`, the `datadog` client), a plain one
//!   without per-request metrics, one whose backend refuses; smuggling attempts 400 with
//!   nothing dialed, a silent client 408, the per-API metrics, the log lines;
//! - a connect frontend with `tls`, an HTTPS proxy: curl and Python `requests` with an
//!   `https://` proxy URL, through a CONNECT tunnel to a TLS intake and with plain `http://`
//!   requests; 407 over TLS; a plaintext client refused by the handshake.
//!
//! The daemon runs with the kernel path loaded: these connections must stay in userspace
//! (`path=userspace`, no kernel bytes for their frontends) while the TLS is terminated.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agent_proxy_tests::connect::{
    NetnsHosts, PASSWORD, USER, add_loopback_address, basic_auth, closed_lines, field,
};
use agent_proxy_tests::http_cases::{
    answers_to, curl_in, ensure_refused, post_twice, refused_heads, smuggling_head, statuses,
    upload_file,
};
use agent_proxy_tests::intake::{HttpsIntake, run_in_ns};
use agent_proxy_tests::metrics::Metrics;
use agent_proxy_tests::netns::NetNs;

use agent_proxy_tests::tls::{Ca, Validity};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, run_scenario};
use anyhow::{Context as _, ensure};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The address the intakes listen on (a "public" address on the namespace's loopback).
const PUBLIC: &str = "11.0.0.20";
const TLS_PORT: u16 = 8443;
const PLAIN_PORT: u16 = 8080;
/// Nothing listens there.
const DEAD_PORT: u16 = 8099;
/// The POST bodies: larger than any buffer on the way, so that buffering would show.
const UPLOAD: usize = 170 * 1024;

/// The listeners of the frontends, on 127.0.0.1.
const SECURE: u16 = 7000;
const PLAIN: u16 = 7001;
const DOWN: u16 = 7002;

fn requests_total(m: &Metrics, frontend: &str, method: &str, api: &str, status: &str) -> u64 {
    m.count(
        "agent_proxy_http_requests_total",
        &[
            ("frontend", frontend),
            ("method", method),
            ("api", api),
            ("status", status),
        ],
    )
}

fn kernel_bytes(m: &Metrics, frontend: &str) -> u64 {
    m.count(
        "agent_proxy_bytes_total",
        &[("frontend", frontend), ("path", "kernel")],
    )
}

/// The requests an intake logged (not its accept and ready lines).
fn seen(intake: &HttpsIntake) -> Vec<Value> {
    intake
        .requests()
        .into_iter()
        .filter(|r| r.get("method").is_some())
        .collect()
}

/// A namespace with the intakes' address, the host names and the proxy's certificate (from a
/// CA of the test, written as `ca.crt` in `dir`).
struct Setup {
    ns: NetNs,
    authority: Ca,
    _hosts: NetnsHosts,
    /// An HTTPS intake (certificate from the CA) and a plain one.
    secure_intake: Option<HttpsIntake>,
    plain_intake: Option<HttpsIntake>,
    dir: std::path::PathBuf,
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn setup(stem: &str) -> anyhow::Result<Setup> {
    for tool in ["curl", "python3", "openssl"] {
        ensure!(
            agent_proxy_tests::privileges::which(tool).is_some(),
            "{tool} is missing (cargo xtask setup installs it)"
        );
    }
    let ns = NetNs::new()?;
    add_loopback_address(&ns, &format!("{PUBLIC}/32"))?;
    let hosts = NetnsHosts::new(
        &ns,
        &[
            format!("{PUBLIC} intake.test"),
            "127.0.0.1 proxy.test".to_owned(),
        ],
    )?;
    let dir = std::env::temp_dir().join(format!("agent-proxy-{stem}-{}", ns.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let authority = Ca::new("agent-proxy test operator CA")?;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, &authority.pem)?;
    let (cert, key) = authority
        .server(&["proxy.test"], Validity::Now)?
        .write(&dir, "proxy")?;
    let mut setup = Setup {
        ns,
        authority,
        _hosts: hosts,
        secure_intake: None,
        plain_intake: None,
        dir,
        ca,
        cert,
        key,
    };
    let public = PUBLIC.parse()?;
    setup.secure_intake = Some(secure_intake(&setup, SocketAddr::new(public, TLS_PORT))?);
    setup.plain_intake = Some(HttpsIntake::start_plain(
        &setup.ns,
        SocketAddr::new(public, PLAIN_PORT),
        &setup.dir.join("plain"),
    )?);
    Ok(setup)
}

/// A daemon config of the test's frontends and backends, after the usual `[global]`.
fn config(dp: Dataplane, rest: String) -> anyhow::Result<DaemonConfig> {
    let mut config = DaemonConfig::new(dp, Vec::new());
    config.toml_override = Some(format!(
        "[global]\ndataplane = \"{dp}\"\n{}admin = \"{}\"\ndrain_timeout = \"2s\"\nlog_format = \"json\"\n\n{rest}",
        dp.extra_global(),
        config.admin,
    ));
    config.listen = format!("127.0.0.1:{SECURE}").parse()?;
    Ok(config)
}

/// The two intakes, taken out of the setup.
fn intakes(s: &mut Setup) -> anyhow::Result<(HttpsIntake, HttpsIntake)> {
    Ok((
        s.secure_intake.take().context("the TLS intake")?,
        s.plain_intake.take().context("the plain intake")?,
    ))
}

/// The TLS intake, with a certificate for `intake.test` and its address from the test's CA.
fn secure_intake(s: &Setup, addr: SocketAddr) -> anyhow::Result<HttpsIntake> {
    let dir = s.dir.join("tls");
    std::fs::create_dir_all(&dir)?;
    let ip = addr.ip().to_string();
    let files = s
        .authority
        .server(&["intake.test", &ip], Validity::Now)?
        .write(&dir, "intake")?;
    HttpsIntake::start_certified(&s.ns, addr, files, &dir)
}

fn tls_line(cert: &Path, key: &Path) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        cert.display(),
        key.display()
    )
}

fn http_mode(dp: Dataplane) -> anyhow::Result<()> {
    let mut s = setup("http-mode")?;
    let (secure_intake, plain_intake) = intakes(&mut s)?;
    let ns = &s.ns;
    let config = config(
        dp,
        format!(
            "[[frontend]]\nname = \"secure\"\nlisten = \"127.0.0.1:{SECURE}\"\nmode = \"http\"\nbackend = \"intake\"\n{}\n\
             [[frontend]]\nname = \"plain\"\nlisten = \"127.0.0.1:{PLAIN}\"\nmode = \"http\"\nbackend = \"plain\"\n\
             request_timeout = \"1s\"\nrequest_metrics = false\n\n\
             [[frontend]]\nname = \"down\"\nlisten = \"127.0.0.1:{DOWN}\"\nmode = \"http\"\nbackend = \"down\"\n\n\
             [[backend]]\nname = \"intake\"\nservers = [\"intake.test:{TLS_PORT}\"]\n\
             tls = {{ ca_file = \"{}\" }}\n\n\
             [[backend]]\nname = \"plain\"\nservers = [\"{PUBLIC}:{PLAIN_PORT}\"]\n\n\
             [[backend]]\nname = \"down\"\nservers = [\"{PUBLIC}:{DEAD_PORT}\"]\nretries = 1\nconnect_timeout = \"1s\"\n",
            tls_line(&s.cert, &s.key),
            s.ca.display(),
        ),
    )?;
    let env = TestEnv::start(ns, config)?;
    let ca = s.ca.display().to_string();
    let base = format!("https://proxy.test:{SECURE}");
    let curl = curl_in(ns, vec!["--cacert".into(), ca.clone()]);

    // curl over TLS both ways: GET, a 170 KB POST and the same body chunked.
    let (code, out, err) = curl(&[&format!("{base}/hello")])?;
    ensure!(
        code == 0 && out == "hello",
        "curl GET: exit {code}, {out:?} {err:?}"
    );
    let (file, digest) = upload_file(&s.dir, 23, UPLOAD)?;
    post_twice(
        &curl,
        &format!("{base}/api/v2/upload/12345"),
        &file,
        &digest,
    )?;
    // Two requests in one curl run: one client connection, one upstream connection.
    let dialed = secure_intake.accepted();
    let before = env.daemon.metrics()?;
    let (code, out, err) = curl(&[&format!("{base}/hello"), &format!("{base}/hello")])?;
    ensure!(
        code == 0 && out == "hellohello",
        "curl keep-alive: exit {code}, {out:?} {err:?}"
    );
    let after = env.daemon.metrics()?;
    let accepted = |m: &Metrics| {
        m.count(
            "agent_proxy_frontend_connections_total",
            &[("frontend", "secure")],
        )
    };
    ensure!(
        accepted(&after) == accepted(&before) + 1 && secure_intake.accepted() == dialed + 1,
        "two requests took {} client and {} upstream connections",
        accepted(&after) - accepted(&before),
        secure_intake.accepted() - dialed
    );

    // Python requests (a session) and the datadog API client, trusting the operator's CA
    // (`verify` per request: a session's is overridden by REQUESTS_CA_BUNDLE when set).
    let requests = format!(
        "import requests\n\
         s = requests.Session()\n\
         r = s.get('{base}/hello', verify='{ca}')\n\
         print(r.status_code, r.text)\n\
         r = s.post('{base}/api/v1/check_run/42', json={{'check': 'x'}}, verify='{ca}')\n\
         print(r.status_code, r.json()['status'])\n"
    );
    let (code, out, err) = run_in_ns(ns, "python3", &["-c", &requests])?;
    ensure!(
        code == 0 && out == "200 hello\n202 ok\n",
        "python requests: exit {code}, {out:?} {err:?}"
    );
    let datadog = format!(
        "import json, time\n\
         from datadog import initialize, api\n\
         initialize(api_key='k', app_key='a', api_host='{base}', cacert='{ca}')\n\
         print(json.dumps(api.Metric.send(metric='agent_proxy.http_mode_test', points=[(time.time(), 42)])))\n"
    );
    let (code, out, err) = run_in_ns(ns, "python3", &["-c", &datadog])?;
    ensure!(
        code == 0 && out.contains("\"ok\""),
        "datadog api client: exit {code}, {out:?} {err:?}"
    );

    // What the intake received: origin-form targets, the client's Host, every POST whole.
    let got = seen(&secure_intake);
    ensure!(
        got.len() == 8,
        "the TLS intake saw {} requests: {got:?}",
        got.len()
    );
    for r in &got {
        ensure!(
            r["path"].as_str().is_some_and(|p| p.starts_with('/'))
                && r["host"] == format!("proxy.test:{SECURE}").as_str()
                && r["proxy_authorization"] == false,
            "the intake received {r}"
        );
    }
    let uploads: Vec<&Value> = got
        .iter()
        .filter(|r| r["path"] == "/api/v2/upload/12345")
        .collect();
    ensure!(
        uploads.len() == 2
            && uploads
                .iter()
                .all(|p| p["sha256"] == digest.as_str() && p["len"] == UPLOAD),
        "uploads at the intake: {uploads:?}"
    );
    ensure!(
        got.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/api/v1/series"))
            && r["body"]
                .as_str()
                .is_some_and(|b| b.contains("agent_proxy.http_mode_test"))),
        "the datadog series did not arrive: {got:?}"
    );

    // The plain frontend: smuggling attempts and an oversized head refused before anything is
    // dialed; a client that says nothing answered 408 after request_timeout (1 s).
    let plain: SocketAddr = format!("127.0.0.1:{PLAIN}").parse()?;
    let refused = refused_heads("/api/v1/series", "intake.test", "");
    ns.block_on(Duration::from_secs(60), || async {
        ensure_refused(plain, &refused).await?;
        // Silent after a partial head: 408 once request_timeout has passed.
        let mut stream = tokio::net::TcpStream::connect(plain).await?;
        stream.write_all(b"GET /slow HTTP/1.1\r\nHo").await?;
        let started = std::time::Instant::now();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
            .await
            .context("no EOF after the 408")??;
        let text = String::from_utf8_lossy(&all);
        ensure!(
            text.starts_with("HTTP/1.1 408 ") && started.elapsed() >= Duration::from_millis(900),
            "a silent client got {text:?} after {:?}",
            started.elapsed()
        );
        anyhow::Ok(())
    })?;
    ensure!(
        plain_intake.accepted() == 0,
        "refused requests reached the plain intake: {:?}",
        plain_intake.requests()
    );
    // A request that passes, and its keep-alive successor with two Content-Lengths: 200, then
    // 400, and only the first reaches the intake.
    let bytes = [
        b"GET /hello HTTP/1.1\r\nHost: intake.test\r\n\r\n".to_vec(),
        smuggling_head(
            "/api/v1/series",
            "intake.test",
            "",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
        ),
    ]
    .concat();
    let answers = ns.block_on(Duration::from_secs(30), || answers_to(plain, &bytes))?;
    let statuses = statuses(&answers);
    ensure!(
        statuses == ["200", "400"] && answers.contains("hello"),
        "keep-alive then smuggling: {answers:?}"
    );
    let plain_seen = seen(&plain_intake);
    ensure!(
        plain_seen.len() == 1 && plain_seen[0]["path"] == "/hello",
        "the plain intake received {plain_seen:?}"
    );

    // A backend that refuses: 502 from the proxy, after its retries.
    let (code, out, err) = run_in_ns(
        ns,
        "curl",
        &[
            "-sS",
            "-w",
            " %{http_code}",
            &format!("http://127.0.0.1:{DOWN}/hello"),
        ],
    )?;
    // The client learns nothing of the backend's servers; the log line does.
    ensure!(
        code == 0 && out.ends_with(" 502") && !out.contains(PUBLIC),
        "a refusing backend: exit {code}, {out:?} {err:?}"
    );

    // The per-request metrics: the secure frontend's by api; none for the plain one.
    let m = env.daemon.metrics()?;
    for (method, api, status, n) in [
        ("GET", "/hello", "200", 4),
        ("POST", "/api/v2/upload/:id", "202", 2),
        ("POST", "/api/v1/check_run/:id", "202", 1),
        ("POST", "/api/v1/series", "202", 1),
    ] {
        let got = requests_total(&m, "secure", method, api, status);
        ensure!(
            got == n,
            "http_requests_total{{secure,{method},{api},{status}}} = {got}, expected {n}"
        );
    }
    let uploaded = m.count(
        "agent_proxy_http_request_bytes_total",
        &[("frontend", "secure"), ("api", "/api/v2/upload/:id")],
    );
    ensure!(
        uploaded == 2 * UPLOAD as u64,
        "request bytes of the uploads = {uploaded}"
    );
    ensure!(
        m.count("agent_proxy_http_requests_total", &[("frontend", "plain")]) == 0,
        "request_metrics = false still counted requests"
    );
    ensure!(
        requests_total(&m, "down", "GET", "/hello", "502") == 1,
        "the 502 was not counted"
    );
    for fe in ["secure", "plain", "down"] {
        ensure!(kernel_bytes(&m, fe) == 0, "frontend {fe} has kernel bytes");
    }

    // Log lines: TLS both ways in userspace, the requests counted.
    let lines = closed_lines(&env.daemon.stderr_text());
    ensure!(
        lines.iter().any(|l| field(l, "frontend") == "secure"
            && field(l, "tls") == "both"
            && field(l, "path") == "userspace"
            && field(l, "detail") == "requests: 2"
            && field(l, "status") == "200"),
        "no log line for the keep-alive connection: {lines:?}"
    );
    ensure!(
        lines.iter().any(|l| field(l, "frontend") == "down"
            && field(l, "status") == "502"
            && field(l, "detail").contains(&format!("{PUBLIC}:{DEAD_PORT}"))),
        "no log line with the refusing server: {lines:?}"
    );
    ensure!(
        lines.iter().any(|l| field(l, "frontend") == "plain"
            && field(l, "status") == "408"
            && field(l, "end") == "refused"),
        "no log line for the 408: {lines:?}"
    );
    env.finish()?;
    drop((secure_intake, plain_intake));
    let _ = std::fs::remove_dir_all(&s.dir);
    Ok(())
}

fn https_proxy(dp: Dataplane) -> anyhow::Result<()> {
    let mut s = setup("https-proxy")?;
    let (secure_intake, plain_intake) = intakes(&mut s)?;
    let ns = &s.ns;
    let config = config(
        dp,
        format!(
            "[[frontend]]\nname = \"proxy\"\nlisten = \"127.0.0.1:{SECURE}\"\nmode = \"connect\"\n\
             users = [{{ name = \"{USER}\", password = \"{PASSWORD}\" }}]\n\
             allow_destinations = [\"intake.test:{TLS_PORT}\", \"intake.test:{PLAIN_PORT}\"]\n{}",
            tls_line(&s.cert, &s.key),
        ),
    )?;
    let env = TestEnv::start(ns, config)?;
    let ca = s.ca.display().to_string();
    let intake_ca = secure_intake.cert.display().to_string();
    let proxy_url = format!("https://{USER}:{PASSWORD}@proxy.test:{SECURE}");
    let curl = |proxy: &str, args: &[&str]| {
        let options = [
            "--proxy",
            proxy,
            "--proxy-cacert",
            &ca,
            "--cacert",
            &intake_ca,
        ];
        curl_in(ns, options.map(str::to_owned).to_vec())(args)
    };

    // curl: a CONNECT tunnel to the TLS intake, a plain request, and no credentials (407).
    let (code, out, err) = curl(
        &proxy_url,
        &[&format!("https://intake.test:{TLS_PORT}/hello")],
    )?;
    ensure!(
        code == 0 && out == "hello",
        "curl through the tunnel: exit {code}, {out:?} {err:?}"
    );
    let (code, out, err) = curl(
        &proxy_url,
        &[&format!("http://intake.test:{PLAIN_PORT}/hello")],
    )?;
    ensure!(
        code == 0 && out == "hello",
        "curl plain request: exit {code}, {out:?} {err:?}"
    );
    let (code, out, err) = curl(
        &format!("https://proxy.test:{SECURE}"),
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://intake.test:{PLAIN_PORT}/hello"),
        ],
    )?;
    ensure!(
        code == 0 && out == "407",
        "curl without credentials: exit {code}, {out:?} {err:?}"
    );

    // Python requests with an https:// proxy URL: a tunnel (170 KB POST) and a plain request.
    let (file, digest) = upload_file(&s.dir, 29, UPLOAD)?;
    // `verify` per request: a session's is overridden by REQUESTS_CA_BUNDLE when set.
    let requests = format!(
        "import requests\n\
         s = requests.Session()\n\
         s.proxies = {{'https': '{proxy_url}', 'http': '{proxy_url}'}}\n\
         r = s.post('https://intake.test:{TLS_PORT}/api/v2/upload/7', data=open('{}', 'rb').read(), verify='{ca}')\n\
         print(r.status_code, r.json()['sha256'])\n\
         r = s.get('http://intake.test:{PLAIN_PORT}/hello', verify='{ca}')\n\
         print(r.status_code, r.text, r.headers.get('Via'))\n",
        file.display(),
    );
    let (code, out, err) = run_in_ns(ns, "python3", &["-c", &requests])?;
    ensure!(
        code == 0 && out == format!("202 {digest}\n200 hello 1.1 agent-proxy\n"),
        "python requests: exit {code}, {out:?} {err:?}"
    );

    // A plaintext CONNECT on the TLS port: refused by the handshake, nothing dialed.
    let dialed = secure_intake.accepted();
    let proxy: SocketAddr = format!("127.0.0.1:{SECURE}").parse()?;
    let auth = basic_auth(USER, PASSWORD);
    let plaintext = format!(
        "CONNECT intake.test:{TLS_PORT} HTTP/1.1\r\nHost: intake.test:{TLS_PORT}\r\n{auth}\r\n"
    );
    ns.block_on(Duration::from_secs(30), || async {
        let mut stream = tokio::net::TcpStream::connect(proxy).await?;
        stream.write_all(plaintext.as_bytes()).await?;
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await;
        ensure!(
            !all.starts_with(b"HTTP/1.1 200"),
            "a plaintext CONNECT got a tunnel"
        );
        anyhow::Ok(())
    })?;
    ensure!(
        secure_intake.accepted() == dialed,
        "a plaintext CONNECT was dialed"
    );

    let m = env.daemon.metrics()?;
    ensure!(
        m.count(
            "agent_proxy_tls_handshake_errors_total",
            &[("side", "frontend"), ("name", "proxy")]
        ) == 1,
        "the plaintext client's handshake failure was not counted"
    );
    ensure!(
        m.count("agent_proxy_connect_requests_total", &[("status", "200")]) == 2
            && m.count("agent_proxy_connect_requests_total", &[("status", "407")]) == 0,
        "CONNECT answers: {:?}",
        m.count("agent_proxy_connect_requests_total", &[])
    );
    ensure!(
        requests_total(&m, "proxy", "GET", "/hello", "200") == 2
            && requests_total(&m, "proxy", "GET", "/hello", "407") == 1,
        "plain requests through the HTTPS proxy were not counted"
    );
    ensure!(
        kernel_bytes(&m, "proxy") == 0,
        "a TLS frontend's tunnel went through the kernel"
    );
    let posted: Vec<Value> = seen(&secure_intake);
    ensure!(
        posted.iter().any(|r| r["path"] == "/api/v2/upload/7"
            && r["sha256"] == digest.as_str()
            && r["len"] == UPLOAD),
        "the upload through the tunnel: {posted:?}"
    );
    ensure!(
        seen(&plain_intake)
            .iter()
            .all(|r| r["proxy_authorization"] == false),
        "credentials reached the intake"
    );

    let log = env.daemon.stderr_text();
    ensure!(!log.contains(PASSWORD), "the password reached the log");
    let lines = closed_lines(&log);
    let tunnels: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            field(l, "status") == "200"
                && field(l, "destination") == format!("intake.test:{TLS_PORT}")
        })
        .collect();
    ensure!(
        tunnels.len() == 2
            && tunnels.iter().all(|l| field(l, "tls") == "client"
                && field(l, "path") == "userspace"
                && field(l, "detail").contains("relayed in userspace")),
        "tunnel log lines: {tunnels:?}"
    );
    env.finish()?;
    drop((secure_intake, plain_intake));
    let _ = std::fs::remove_dir_all(&s.dir);
    Ok(())
}

#[test]
fn http_mode_tls_both_sides() {
    run_scenario("http_mode_tls_both_sides", Dataplane::Kernel, http_mode);
}

#[test]
fn connect_https_proxy() {
    run_scenario("connect_https_proxy", Dataplane::Kernel, https_proxy);
}
