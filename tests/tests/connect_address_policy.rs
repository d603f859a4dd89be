//! One address policy for every CONNECT destination (issue 20): names under an allowed domain
//! that a DNS server answers with special-purpose addresses - embedded loopback in its IPv6
//! forms (IPv4-compatible, NAT64), Teredo, site-local, reserved, benchmarking, the IETF
//! protocol block, documentation, CGNAT, private, link-local metadata - are refused with 403,
//! and nothing is accepted on any of those addresses, although the namespace has every one of
//! them on its own interface with a listener behind it. A name resolving to a global address
//! is the control: 200 and a working tunnel. Literals in their embedded forms are refused too.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agent_proxy_tests::connect::{
    PASSWORD, USER, add_loopback_address, basic_auth, closed_lines, connect_config, connect_head,
    field, open_tunnel, raw_request,
};
use agent_proxy_tests::dnsmasq::Dnsmasq;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::peers::recv_to_eof;
use agent_proxy_tests::{Dataplane, TestEnv, dataplane_tests};
use anyhow::{Context as _, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// The port every listener of the scenario uses.
const PORT: u16 = 8443;

/// `(name, address, class)`: each name is under the allowed `.example.test`, and DNS answers it
/// with the address, which the namespace has on `lo` with a listener on [`PORT`].
const REFUSED: &[(&str, &str, &str)] = &[
    ("loop4.example.test", "127.0.0.1", "loopback"),
    ("compat.example.test", "::127.0.0.1", "ipv4_compatible"),
    ("nat64-loop.example.test", "64:ff9b::7f00:1", "loopback"),
    ("nat64-private.example.test", "64:ff9b::a00:1", "private"),
    (
        "teredo.example.test",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "teredo",
    ),
    ("sitelocal.example.test", "fec0::1", "site_local"),
    ("ula.example.test", "fd00::1", "private"),
    ("doc6.example.test", "2001:db8::1", "documentation"),
    ("reserved.example.test", "240.0.0.1", "reserved"),
    ("bench.example.test", "198.18.0.1", "benchmarking"),
    ("ietf.example.test", "192.0.0.1", "protocol_assignment"),
    ("doc4.example.test", "198.51.100.10", "documentation"),
    ("cgnat.example.test", "100.64.0.1", "shared"),
    ("private.example.test", "10.0.0.1", "private"),
    ("metadata.example.test", "169.254.169.254", "link_local"),
];

/// A global unicast address for the control name.
const GLOBAL: &str = "11.0.0.20";

/// Literal destinations in embedded forms, allowed by no rule: refused at the rules (403).
const LITERALS: &[&str] = &["[::127.0.0.1]", "[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]"];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid address")
}

/// Accepts on `listener` until aborted, counting the connections that arrive.
fn count_accepts(listener: TcpListener) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (count, task)
}

fn address_policy(dp: Dataplane) -> anyhow::Result<()> {
    let netns = NetNs::new()?;
    let ns = &netns;
    for (_, addr, _) in REFUSED.iter().filter(|(_, a, _)| *a != "127.0.0.1") {
        let prefix = if addr.contains(':') { 128 } else { 32 };
        add_loopback_address(ns, &format!("{addr}/{prefix}"))?;
    }
    add_loopback_address(ns, &format!("{GLOBAL}/32"))?;
    let mut records: Vec<(&str, IpAddr)> = REFUSED.iter().map(|(n, a, _)| (*n, ip(a))).collect();
    records.push(("control.example.test", ip(GLOBAL)));
    records.push(("mapped.example.test", ip("::ffff:127.0.0.1")));
    let dns = Dnsmasq::start(ns, &records, 60)?;
    let dns_addr = dns.addr;
    ns.block_on(Duration::from_secs(90), move || async move {
        let _dns = dns;
        // IPv6 addresses on lo take a moment to leave the tentative state (DAD).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut accepts = Vec::new();
        for (name, addr, _) in REFUSED {
            let listener = TcpListener::bind(SocketAddr::new(ip(addr), PORT))
                .await
                .with_context(|| format!("listen on {addr} for {name}"))?;
            accepts.push((*addr, count_accepts(listener)));
        }
        let control = TcpListener::bind(SocketAddr::new(ip(GLOBAL), PORT)).await?;
        let mut config = connect_config(dp, &[".example.test:*".to_owned()], true, "");
        let text = config.toml_override.take().expect("connect configs are whole files");
        config.toml_override =
            Some(text.replacen("[global]\n", &format!("[global]\nnameservers = [\"{dns_addr}\"]\n"), 1));
        let env = TestEnv::start(ns, config)?;
        let proxy = env.daemon.config.listen;
        let auth = basic_auth(USER, PASSWORD);

        let mut table = Vec::new();
        let mut refused: Vec<(String, &str)> = REFUSED
            .iter()
            .map(|(n, _, c)| (format!("{n}:{PORT}"), *c))
            .collect();
        refused.push((format!("mapped.example.test:{PORT}"), "loopback"));
        for (target, class) in &refused {
            let answer = raw_request(proxy, connect_head(target, &auth).as_bytes(), false)
                .await
                .with_context(|| target.clone())?;
            let body = String::from_utf8_lossy(&answer.body).into_owned();
            ensure!(
                answer.status == 403 && body.contains(class),
                "{target}: expected 403 naming {class}, got {} {body:?}",
                answer.status
            );
            table.push(format!("{target:45} 403  {}", body.trim()));
        }
        for literal in LITERALS {
            let target = format!("{literal}:{PORT}");
            let answer = raw_request(proxy, connect_head(&target, &auth).as_bytes(), false).await?;
            ensure!(answer.status == 403, "{target}: {answer:?}");
            table.push(format!("{target:45} 403"));
        }

        // The control: a global address behind an allowed name.
        let upstream = tokio::spawn(async move {
            let (mut s, _) = control.accept().await?;
            let mut hello = [0u8; 5];
            s.read_exact(&mut hello).await?;
            s.write_all(b"world").await?;
            s.shutdown().await?;
            anyhow::Ok(hello)
        });
        let target = format!("control.example.test:{PORT}");
        let mut conn = open_tunnel(proxy, &connect_head(&target, &auth), b"hello").await?;
        conn.get_mut().shutdown().await?;
        let down = recv_to_eof(&mut conn, 6).await?;
        ensure!(&upstream.await?? == b"hello" && down.len == 5, "control tunnel: {down:?}");
        table.push(format!("{target:45} 200, tunnel carried both ways"));
        eprintln!("address policy ({dp}):\n  {}", table.join("\n  "));

        let n = refused.len() + LITERALS.len() + 1;
        env.daemon.wait_conn_logs(n, Duration::from_secs(10))?;
        let lines = closed_lines(&env.daemon.stderr_text());
        for (target, class) in &refused {
            let line = lines
                .iter()
                .find(|l| field(l, "destination") == *target)
                .with_context(|| format!("no log line for {target}"))?;
            ensure!(
                field(line, "status") == "403" && field(line, "detail").contains(class),
                "log line for {target}: {line}"
            );
        }
        let m = env.daemon.metrics()?;
        let mut classes: Vec<&str> = refused.iter().map(|(_, c)| *c).collect();
        classes.sort_unstable();
        classes.dedup();
        for class in classes {
            let expected = refused.iter().filter(|(_, c)| *c == class).count() as u64;
            let reason = format!("address_{class}");
            let counted = m.count(
                "agent_proxy_frontend_rejected_total",
                &[("reason", reason.as_str())],
            );
            ensure!(
                counted == expected,
                "agent_proxy_frontend_rejected_total{{reason=\"{reason}\"}} = {counted}, expected {expected}"
            );
        }
        let forbidden = m.count("agent_proxy_connect_requests_total", &[("status", "403")]);
        ensure!(forbidden == (refused.len() + LITERALS.len()) as u64, "403 answers: {forbidden}");
        let result = env.finish();
        for (addr, (count, task)) in accepts {
            task.abort();
            let n = count.load(Ordering::SeqCst);
            ensure!(n == 0, "{n} connections reached {addr}");
        }
        result
    })
}

dataplane_tests!(address_policy);
