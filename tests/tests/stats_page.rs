//! The admin endpoint as operators and their tools see it (issue 15): `/stats` as an HTML page
//! in a real browser (headless Chromium), which must show what the JSON says; and `/metrics`
//! after traffic, which `promtool check metrics` must find clean.
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::peers::{V4, closed_port, connect, exchange_expecting, listen};
use agent_proxy_tests::{DaemonConfig, Dataplane, TestEnv, run_scenario};
use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

/// Runs `program args` inside `ns`; its stdout.
fn run_in(ns: &NetNs, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .output()
        .with_context(|| {
            format!("run {program} (is it installed? `cargo xtask test` installs it)")
        })?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn chromium() -> &'static str {
    if std::path::Path::new("/usr/bin/chromium").exists() {
        "chromium"
    } else {
        "chromium-browser"
    }
}

/// The text of the first element `<TAG ... MARKER ...>` of `dom` (its content up to `</`).
fn cell(dom: &str, marker: &str) -> anyhow::Result<String> {
    let at = dom
        .find(marker)
        .with_context(|| format!("{marker:?} not in the DOM"))?;
    let start = dom[at..]
        .find('>')
        .map(|i| at + i + 1)
        .context("no tag end")?;
    let end = dom[start..]
        .find("</")
        .map(|i| start + i)
        .context("no closing tag")?;
    Ok(dom[start..end].to_owned())
}

/// A frontend with traffic and a rejection, a backend of one live and one dead server under
/// active checks: the page Chromium renders shows the frontend's counters, each server's state
/// and last check, the version and the reload count exactly as `/stats` has them in JSON.
fn page_shows_the_json(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    ns.block_on(Duration::from_secs(90), move || async move {
        let live = listen(V4).await?;
        let dead: SocketAddr = closed_port(V4)?;
        let live_addr = live.local_addr()?;
        let mut config = DaemonConfig::new(dp, vec![live_addr, dead]);
        config.backend_extra =
            "health_check = { interval = \"200ms\", timeout = \"100ms\", rise = 1, fall = 1 }\n"
                .into();
        config.frontend_extra = "allow = [\"127.0.0.1\"]\n".into();
        let env = TestEnv::start(ns, config)?;
        let addr = env.daemon.config.listen;
        // The live server echoes (health checks connect to it too).
        tokio::spawn(async move {
            while let Ok((s, _)) = live.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                });
            }
        });
        for i in 0..3 {
            let c = connect(addr).await?;
            let x = exchange_expecting(c, i, 10_000, 1 << 20, Some(i)).await?;
            ensure!(
                x.received.len == 10_000 && x.first_mismatch.is_none(),
                "echo {i}: {:?}",
                x.received
            );
        }
        // Refused by `allow`: from 127.0.0.2.
        let admin = env.daemon.config.admin;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        // The reset can beat the end of connect().
        if let Ok(mut refused) = socket.connect(addr).await {
            let mut byte = [0u8; 1];
            let read = tokio::io::AsyncReadExt::read(&mut refused, &mut byte).await;
            ensure!(
                read.is_err(),
                "a client outside `allow` was not reset: {read:?}"
            );
        }
        // Let the checks find the dead server and the counters settle.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = env.daemon.wait_conn_logs(3, Duration::from_secs(5))?;

        let (code, body) = env.daemon.get("/stats")?;
        ensure!(code == 200, "/stats: {code}");
        let json: Value = serde_json::from_str(&body)?;
        let url = format!("http://{admin}/stats");
        let dom = run_in(
            ns,
            chromium(),
            &[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--dump-dom",
                &url,
            ],
        )?;
        ensure!(
            dom.contains("<title>agent-proxy stats</title>"),
            "not the stats page: {dom}"
        );

        let fe = &json["frontends"]["fe"];
        let row = &dom[dom.find("data-frontend=\"fe\"").context("no row for fe")?..];
        for (class, value) in [
            ("current", &fe["current_connections"]),
            ("total", &fe["connections_total"]),
            ("rejected", &fe["rejected"]),
        ] {
            let shown = cell(row, &format!("class=\"{class}\""))?;
            ensure!(
                shown.parse::<u64>().ok() == value.as_u64(),
                "the page shows {class} = {shown}, /stats says {value}"
            );
        }
        ensure!(fe["rejected"] == 1, "rejected = {}", fe["rejected"]);
        ensure!(
            fe["connections_total"] == 4,
            "connections_total = {}",
            fe["connections_total"]
        );
        let up = fe["bytes"]["upstream"]["kernel"].as_u64().unwrap_or(0)
            + fe["bytes"]["upstream"]["userspace"].as_u64().unwrap_or(0);
        ensure!(up == 30_000, "bytes up in /stats: {up}");
        ensure!(
            cell(row, "class=\"up\"")? == "30000",
            "bytes up on the page"
        );

        let servers = json["backends"]["be"].as_array().context("no backend be")?;
        ensure!(servers.len() == 2, "servers in /stats: {servers:?}");
        for server in servers {
            let address = server["address"].as_str().unwrap_or_default();
            let marker = format!("data-address=\"{address}\"");
            let at = dom
                .find(&marker)
                .with_context(|| format!("no row for {address}"))?;
            let row_start = dom[..at].rfind("<tr").unwrap_or(at);
            let row = &dom[row_start..];
            let up = server["up"].as_bool().unwrap_or(false);
            let state = cell(row, "class=\"state\"")?;
            ensure!(
                state == if up { "UP" } else { "DOWN" },
                "{address}: page {state}, /stats up = {up}"
            );
            let dead_one = address == dead.to_string();
            ensure!(up != dead_one, "{address}: up = {up}");
            let check = cell(row, "class=\"name check\"")?;
            let json_error = server["last_check"]["error"].as_str();
            match json_error {
                Some(_) => ensure!(check.starts_with("failed"), "{address}: check {check:?}"),
                None => ensure!(check == "passed", "{address}: check {check:?}"),
            }
            ensure!(
                json_error.is_some() == dead_one,
                "{address}: last check {:?}",
                server["last_check"]
            );
        }
        ensure!(
            cell(&dom, "id=\"version\"")? == json["version"].as_str().unwrap_or_default(),
            "version differs"
        );
        ensure!(cell(&dom, "id=\"reloads\"")? == "0", "reloads on the page");
        ensure!(
            cell(&dom, "id=\"dataplane\"")? == dp.as_str(),
            "dataplane on the page"
        );

        // A screenshot, kept for a human to look at (and a check that it renders).
        let shot = std::env::temp_dir().join(format!("agent-proxy-stats-{dp}.png"));
        let shot_arg = format!("--screenshot={}", shot.display());
        run_in(
            ns,
            chromium(),
            &[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1200,700",
                &shot_arg,
                &url,
            ],
        )?;
        let size = std::fs::metadata(&shot)?.len();
        ensure!(size > 10_000, "screenshot of {size} bytes");
        eprintln!("stats page [{dp}]: screenshot in {}", shot.display());

        // JSON stays the default for everything but a browser.
        let (_, body) = env.daemon.get("/stats")?;
        ensure!(body.starts_with('{'), "/stats without Accept: {body:.60}");

        // promtool on /metrics, after all this.
        let metrics = run_in(ns, "curl", &["-sf", &format!("http://{admin}/metrics")])?;
        let file = std::env::temp_dir().join(format!("agent-proxy-metrics-{}.txt", ns.name()));
        std::fs::write(&file, &metrics)?;
        let checked = Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", file.display()))
            .output()
            .context("promtool (package prometheus)")?;
        let _ = std::fs::remove_file(&file);
        if !checked.status.success() {
            bail!(
                "promtool check metrics: {}\n{}{}",
                checked.status,
                String::from_utf8_lossy(&checked.stdout),
                String::from_utf8_lossy(&checked.stderr)
            );
        }
        env.finish()
    })
}

#[test]
fn stats_page_in_chromium_and_promtool() {
    for dp in [Dataplane::KernelRemote, Dataplane::Userspace] {
        run_scenario(
            "stats_page_in_chromium_and_promtool",
            dp,
            page_shows_the_json,
        );
    }
}
