//! `agent-proxy init --preset`: the printed configs pass `agent-proxy check` as printed, name
//! their own Datadog site only, carry the agent-side settings; unknown options are refused with
//! what is accepted; and the Datadog connect preset, run as printed with only its nameservers
//! pointed at a test DNS server, tunnels to its site's intake names and refuses other sites'.
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use agent_proxy_tests::connect::{add_loopback_address, connect_head, open_tunnel, raw_request};
use agent_proxy_tests::connect_cases::PUBLIC;
use agent_proxy_tests::daemon::require_binary;
use agent_proxy_tests::dnsmasq::Dnsmasq;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::pattern::{Pattern, sha256};
use agent_proxy_tests::peers::{recv_to_eof, serve_once};
use agent_proxy_tests::privileges::require_root;
use agent_proxy_tests::{Daemon, DaemonConfig, Dataplane};
use anyhow::{Context as _, ensure};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

const SITES: [&str; 6] = [
    "datadoghq.com",
    "datadoghq.eu",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "ap1.datadoghq.com",
    "ddog-gov.com",
];

/// Runs the binary with `args`; the output, whatever the exit status.
fn agent_proxy(args: &[&str]) -> Output {
    Command::new(require_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run agent-proxy {args:?}: {e}"))
}

/// `agent-proxy init ARGS`: must exit 0 with the config on stdout and nothing on stderr.
fn init(args: &[&str]) -> String {
    let mut all = vec!["init"];
    all.extend_from_slice(args);
    let out = agent_proxy(&all);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "agent-proxy {all:?}: {}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 config")
}

/// Saves `text` and runs `agent-proxy check -c` on it: exit 0, nothing printed.
fn assert_checks(name: &str, text: &str) {
    let dir = std::env::temp_dir().join(format!("agent-proxy-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path: PathBuf = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    let out = agent_proxy(&["check", "-c", path.to_str().expect("UTF-8 path")]);
    assert!(
        out.status.code() == Some(0) && out.stdout.is_empty() && out.stderr.is_empty(),
        "check {name}: {}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}

/// Every place in `text` where another site than `own` is named. An occurrence of a site
/// counts unless it is the tail of an occurrence of `own` (US3's names end in US1's site), and
/// an occurrence of `own` counts as another site's when a longer site ends there.
fn other_sites_named(text: &str, own: &str) -> Vec<String> {
    let text = text.to_ascii_lowercase();
    let mut found = Vec::new();
    for site in SITES.iter().filter(|s| **s != own) {
        for (at, _) in text.match_indices(site) {
            let end = at + site.len();
            let inside_own = own.ends_with(site) && end >= own.len() && text[..end].ends_with(own);
            let label_start = at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric();
            let label_end = text[end..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'));
            if label_start && label_end && !inside_own {
                let from = at.saturating_sub(30);
                found.push(format!("{site} in ...{}...", &text[from..end]));
            }
        }
    }
    found
}

#[test]
fn every_preset_passes_check_as_printed() {
    for site in SITES {
        for style in ["connect", "ports"] {
            let text = init(&["--preset", "datadog", "--site", site, "--style", style]);
            assert_checks(&format!("datadog-{site}-{style}"), &text);
            let others = other_sites_named(&text, site);
            assert!(
                others.is_empty(),
                "--site {site} --style {style}: {others:?}"
            );
            assert!(
                text.contains(&format!("#   site: {site}\n")),
                "{site} {style}"
            );
            let agent_side = match style {
                "connect" => "#     https: http://<PROXY_HOST>:3128\n",
                _ => "#   dd_url: http://<PROXY_HOST>:3834\n",
            };
            assert!(
                text.contains(agent_side),
                "{site} {style}: no {agent_side:?}"
            );
        }
    }
    // The default: US1, connect.
    assert_eq!(
        init(&["--preset", "datadog"]),
        init(&[
            "--preset",
            "datadog",
            "--site",
            "datadoghq.com",
            "--style",
            "connect"
        ])
    );
    for (name, args, line) in [
        (
            "stackstate",
            vec!["--preset", "stackstate"],
            "listen = \"0.0.0.0:3834\"\n",
        ),
        (
            "stackstate-receiver",
            vec![
                "--preset",
                "stackstate",
                "--receiver",
                "https://sts.example.com/receiver/stsAgent",
            ],
            "servers = [\"sts.example.com:443\"]\n",
        ),
        (
            "datakit",
            vec!["--preset", "datakit"],
            "listen = \"0.0.0.0:9530\"\n",
        ),
    ] {
        let text = init(&args);
        assert_checks(name, &text);
        assert!(text.contains(line), "{name}: no {line:?}");
        for site in SITES {
            assert!(!text.contains(site), "{name} names {site}");
        }
    }
}

#[test]
fn the_site_check_tells_sites_apart() {
    assert!(other_sites_named("api.us3.datadoghq.com", "us3.datadoghq.com").is_empty());
    assert_eq!(
        other_sites_named("api.us3.datadoghq.com", "datadoghq.com").len(),
        1
    );
    assert_eq!(
        other_sites_named("# datadoghq.com\n", "us3.datadoghq.com").len(),
        1
    );
    assert!(other_sites_named("notdatadoghq.com", "datadoghq.eu").is_empty());
}

#[test]
fn unknown_options_are_refused_with_what_is_accepted() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--preset", "datadog", "--site", "datadoghq.co"],
            "agent-proxy init: unknown Datadog site \"datadoghq.co\": expected one of \
             datadoghq.com, datadoghq.eu, us3.datadoghq.com, us5.datadoghq.com, \
             ap1.datadoghq.com, ddog-gov.com\n",
        ),
        (
            &["--preset", "squid"],
            "agent-proxy init: unknown preset \"squid\": expected one of datadog, stackstate, datakit\n",
        ),
        (
            &["--preset", "datakit", "--style", "ports"],
            "agent-proxy init: --style is only used with --preset datadog\n",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        let out = agent_proxy(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}");
        assert!(out.stdout.is_empty(), "{all:?} printed a config");
        assert_eq!(String::from_utf8_lossy(&out.stderr), message, "{all:?}");
    }
}

/// `init ARGS`, as printed, with `nameservers` pointed at the test's dnsmasq; the proxy's
/// listener is `listen`.
fn preset_config(
    args: &[&str],
    listen: &str,
    nameserver: std::net::SocketAddr,
) -> anyhow::Result<DaemonConfig> {
    let text = init(args);
    let (before, after) = text
        .split_once("[global]\n")
        .context("the preset has no [global]")?;
    let mut config = DaemonConfig::new(Dataplane::Kernel, Vec::new());
    config.listen = listen.parse()?;
    config.admin = "127.0.0.1:9090".parse()?;
    config.drain_timeout = Duration::from_secs(30);
    config.toml_override = Some(format!(
        "{before}[global]\nnameservers = [\"{nameserver}\"]\n{after}"
    ));
    Ok(config)
}

/// The StackState preset without `--receiver` starts, and `/readyz` names the placeholder that
/// must be replaced (it resolves nowhere).
#[test]
fn the_stackstate_placeholder_starts_not_ready() {
    if !require_root("init::the_stackstate_placeholder_starts_not_ready") {
        return;
    }
    let ns = NetNs::new().expect("namespace");
    let dns = Dnsmasq::start(&ns, &[], 60).expect("dnsmasq");
    let config =
        preset_config(&["--preset", "stackstate"], "127.0.0.1:3834", dns.addr).expect("config");
    let mut daemon = Daemon::start_answering(&ns, config).expect("daemon");
    let (code, body) = daemon.get("/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("backend stackstate: no address known for stackstate-receiver.invalid:443"),
        "{body}"
    );
    assert!(daemon.stop().expect("stop").success(), "exit after SIGTERM");
    daemon.passed();
}

#[test]
fn the_datadog_connect_preset_tunnels_to_its_site_only() {
    if !require_root("init::the_datadog_connect_preset_tunnels_to_its_site_only") {
        return;
    }
    let ns = NetNs::new().expect("namespace");
    add_loopback_address(&ns, &format!("{PUBLIC}/32")).expect("public address");
    let public: IpAddr = PUBLIC.parse().expect("address");
    // Every site's names resolve (to the test's intake), so that a 403 is the allowlist's.
    let names: Vec<String> = SITES
        .iter()
        .flat_map(|s| [format!("7-72-0-app.agent.{s}"), format!("app.{s}")])
        .collect();
    let records: Vec<(&str, IpAddr)> = names.iter().map(|n| (n.as_str(), public)).collect();
    let dns = Dnsmasq::start(&ns, &records, 60).expect("dnsmasq");
    for (i, site) in SITES.iter().enumerate() {
        let args = ["--preset", "datadog", "--site", site];
        let config = preset_config(&args, "127.0.0.1:3128", dns.addr).expect("config");
        let proxy = config.listen;
        let mut daemon = Daemon::start(&ns, config).expect("daemon");
        let seed = 100 + i as u64;
        let outcome = ns.block_on(Duration::from_secs(60), move || async move {
            let listener = TcpListener::bind((public, 443)).await?;
            let intake = tokio::spawn(serve_once(listener, 1 << 20, seed + 1, 300_000));
            let payload = Pattern::bytes(seed, 200_000);
            // Agents 7.67+ send the fully qualified name.
            let target = format!("7-72-0-app.agent.{site}.:443");
            let mut conn = open_tunnel(proxy, &connect_head(&target, ""), &payload[..1_500])
                .await
                .with_context(|| format!("tunnel to {target}"))?;
            conn.get_mut().write_all(&payload[1_500..]).await?;
            conn.get_mut().shutdown().await?;
            let down = recv_to_eof(&mut conn, 1 << 20).await?;
            ensure!(
                intake.await??.hash == sha256(&payload),
                "{site}: the intake did not receive what the agent sent"
            );
            ensure!(
                down.len == 300_000 && down.hash == Pattern::hash(seed + 1, 300_000),
                "{site}: the agent received {down:?}"
            );
            let mut refused = vec![format!("app.{site}:443")];
            refused.extend(
                SITES
                    .iter()
                    .filter(|other| *other != site)
                    .map(|other| format!("7-72-0-app.agent.{other}:443")),
            );
            for target in refused {
                let answer =
                    raw_request(proxy, connect_head(&target, "").as_bytes(), false).await?;
                ensure!(answer.status == 403, "{site}: CONNECT {target}: {answer:?}");
            }
            Ok(())
        });
        let status = daemon.stop().expect("stop");
        if let Err(e) = outcome {
            panic!("{site}: {e:?}\ndaemon log:\n{}", daemon.stderr_text());
        }
        assert!(status.success(), "{site}: daemon exited {status}");
        daemon.passed();
    }
}
