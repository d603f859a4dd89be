//! The iptables rules of transparent frontends over their life (issue 14): `redirect install`
//! is idempotent, `redirect remove` takes everything away, `run` installs at start and removes
//! on SIGTERM; after SIGKILL the rules stay (agents' connections fail closed) until a restart
//! replaces them or `redirect remove` cleans up - and then traffic flows routed, straight to the
//! intake. IPv4 and IPv6 alike.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use agent_proxy_tests::daemon::{Daemon, require_binary};
use agent_proxy_tests::gateway::{AGENT, Gateway, INTAKE, PROXY_OUTER, nat_rules};
use agent_proxy_tests::intake::run_in_ns;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::privileges::require_root;
use agent_proxy_tests::{DaemonConfig, Dataplane};
use anyhow::{Context as _, ensure};

const SINK: u16 = 9000;

fn config() -> DaemonConfig {
    let mut config = DaemonConfig::new(Dataplane::Userspace, Vec::new());
    config.listen = "[::]:15001".parse().expect("valid address");
    config.toml_override = Some(format!(
        "[global]\ndataplane = \"userspace\"\nadmin = \"{}\"\ndrain_timeout = \"1s\"\n\
         log_format = \"json\"\n\
         [[frontend]]\nname = \"fe\"\nlisten = \"[::]:15001\"\nmode = \"transparent\"\n\
         allow_destinations = [\"{INTAKE}:{SINK}\"]\n\
         intercept = {{ ports = [{SINK}, 443], from = [\"10.77.0.0/24\", \"fd77::/64\"], local = true }}\n",
        config.admin
    ));
    config
}

/// `agent-proxy redirect ACTION -c FILE` in `ns`: exit code and stdout.
fn redirect(ns: &NetNs, action: &str, file: &str) -> anyhow::Result<(i32, String)> {
    let bin = require_binary();
    let (code, out, err) = run_in_ns(
        ns,
        &bin.to_string_lossy(),
        &["redirect", action, "-c", file],
    )?;
    ensure!(
        action == "status" || code == 0,
        "redirect {action}: exit {code}, {out} {err}"
    );
    Ok((code, out))
}

/// How many of the proxy's rules each family's nat table holds: (jumps, rules in its chains).
fn counts(ns: &NetNs) -> anyhow::Result<[(usize, usize); 2]> {
    let mut out = [(0, 0); 2];
    for (i, command) in ["iptables", "ip6tables"].into_iter().enumerate() {
        let rules = nat_rules(ns, command)?;
        let jumps = rules
            .lines()
            .filter(|l| {
                l.starts_with("-A PREROUTING -j AGENT_PROXY_")
                    || l.starts_with("-A OUTPUT -j AGENT_PROXY_")
            })
            .count();
        let own = rules
            .lines()
            .filter(|l| l.starts_with("-A AGENT_PROXY_"))
            .count();
        out[i] = (jumps, own);
    }
    Ok(out)
}

/// Who the sink on the intake host sees when the agent connects to it (`None`: the
/// connection failed, as it does towards a proxy that is not running).
fn agent_reaches_sink(gw: &Gateway) -> anyhow::Result<Option<IpAddr>> {
    let sink_addr = SocketAddr::new(INTAKE.parse()?, SINK);
    let listener = gw.intake.run(|| std::net::TcpListener::bind(sink_addr))?;
    listener.set_nonblocking(true)?;
    let connected = gw
        .agent
        .run(|| std::net::TcpStream::connect_timeout(&sink_addr, Duration::from_secs(3)));
    let Ok(_client) = connected else {
        return Ok(None);
    };
    for _ in 0..100 {
        if let Ok((_, peer)) = listener.accept() {
            return Ok(Some(peer.ip()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("the agent connected but the sink accepted nothing")
}

#[test]
fn redirect_rules_follow_install_remove_and_the_daemon() {
    if !require_root("redirect_rules_follow_install_remove_and_the_daemon") {
        return;
    }
    let run = || -> anyhow::Result<()> {
        let gw = Gateway::new()?;
        let dir = std::env::temp_dir().join(format!("agent-proxy-redirect-{}", gw.proxy.name()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("agent-proxy.toml");
        std::fs::write(&file, config().to_toml())?;
        let file = file.to_string_lossy().into_owned();
        // Per family: two jumps; PREROUTING one rule for its `from` network, OUTPUT three
        // (the mark, loopback, the redirect).
        let installed = [(2, 4), (2, 4)];
        let none = [(0, 0), (0, 0)];

        redirect(&gw.proxy, "install", &file)?;
        redirect(&gw.proxy, "install", &file)?;
        ensure!(
            counts(&gw.proxy)? == installed,
            "after two installs: {:?}\n{}",
            counts(&gw.proxy)?,
            nat_rules(&gw.proxy, "iptables")?
        );
        let (code, out) = redirect(&gw.proxy, "status", &file)?;
        ensure!(
            code == 0 && out.contains("rules match the config"),
            "status after install: {code} {out}"
        );
        redirect(&gw.proxy, "remove", &file)?;
        redirect(&gw.proxy, "remove", &file)?;
        ensure!(
            counts(&gw.proxy)? == none,
            "after remove: {:?}",
            counts(&gw.proxy)?
        );
        let (code, _) = redirect(&gw.proxy, "status", &file)?;
        ensure!(code == 1, "status without rules exits {code}, expected 1");
        ensure!(
            agent_reaches_sink(&gw)? == Some(AGENT.parse()?),
            "without rules the agent must reach the intake routed, with its own address"
        );

        // run installs, SIGTERM removes.
        let mut daemon = Daemon::start(&gw.proxy, config())?;
        ensure!(
            counts(&gw.proxy)? == installed,
            "while running: {:?}",
            counts(&gw.proxy)?
        );
        ensure!(
            agent_reaches_sink(&gw)? == Some(PROXY_OUTER.parse()?),
            "while the proxy runs the intake must see the proxy"
        );
        let status = daemon.stop()?;
        ensure!(status.success(), "daemon exited {status}");
        daemon.passed();
        drop(daemon);
        ensure!(
            counts(&gw.proxy)? == none,
            "after SIGTERM: {:?}",
            counts(&gw.proxy)?
        );

        // SIGKILL leaves them (connections fail closed); a restart replaces them, one set.
        let mut daemon = Daemon::start(&gw.proxy, config())?;
        daemon.passed();
        drop(daemon); // SIGKILL
        ensure!(
            counts(&gw.proxy)? == installed,
            "after SIGKILL: {:?}",
            counts(&gw.proxy)?
        );
        ensure!(
            agent_reaches_sink(&gw)?.is_none(),
            "with the rules of a killed proxy the agent's connection must fail, not leak around it"
        );
        let mut daemon = Daemon::start(&gw.proxy, config())?;
        ensure!(
            counts(&gw.proxy)? == installed,
            "after a restart: {:?}",
            counts(&gw.proxy)?
        );
        ensure!(
            agent_reaches_sink(&gw)? == Some(PROXY_OUTER.parse()?),
            "after a restart"
        );
        daemon.passed();
        drop(daemon); // SIGKILL again; then the operator's remove cleans up.
        redirect(&gw.proxy, "remove", &file)?;
        ensure!(
            counts(&gw.proxy)? == none,
            "after SIGKILL and remove: {:?}",
            counts(&gw.proxy)?
        );
        ensure!(
            agent_reaches_sink(&gw)? == Some(AGENT.parse()?),
            "after remove the agent must reach the intake routed"
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    };
    if let Err(e) = run().context("redirect rules") {
        panic!("{e:?}");
    }
}

/// A host without the iptables commands gets an error that names what is missing, from both
/// `redirect install` and `run`, and nothing else is attempted.
#[test]
fn a_host_without_iptables_is_told_what_is_missing() {
    let bin = require_binary();
    let dir = std::env::temp_dir().join(format!("agent-proxy-noipt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("agent-proxy.toml");
    let mut text = config().to_toml();
    // No kernel path, no admin port, a free listen port: this test needs no privileges and
    // no namespace of its own.
    let free = std::net::TcpListener::bind("[::]:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    text = text.replacen("admin = \"127.0.0.1:9090\"\n", "admin = \"off\"\n", 1);
    text = text.replace("15001", &free.to_string());
    std::fs::write(&file, text).expect("write config");
    let expected = "`iptables` is not installed; transparent frontends with `intercept` need it";
    for args in [vec!["redirect", "install", "-c"], vec!["run", "-c"]] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .arg(&file)
            .env("PATH", "/nonexistent")
            .output()
            .expect("run agent-proxy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
