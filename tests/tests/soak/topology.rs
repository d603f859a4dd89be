//! The soak's world: the three hosts of [`Gateway`] with impaired links, dnsmasq on the proxy
//! host naming the intake, a test CA, and two daemons on the proxy host (kernel path with
//! `local_agents = false`, userspace relay), each with a tcp, a TLS-terminating tcp, a connect
//! and a transparent frontend.
//!
//! Transparent mode: the daemon's own rules (`intercept`) live in fixed chains
//! (`AGENT_PROXY_PREROUTING`), which a second daemon in the same namespace would overwrite. So
//! the kernel daemon installs its rules itself (for its `transparent_dst` port) and the userspace
//! daemon's frontend has no `intercept`: the soak adds its REDIRECT rule by hand, as an operator
//! would ([`operator_redirect`]), for another port.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use agent_proxy_tests::connect::{PASSWORD, USER, run};
use agent_proxy_tests::dnsmasq::Dnsmasq;
use agent_proxy_tests::gateway::{AGENT_NET, Gateway, INTAKE, PROXY_INNER};
use agent_proxy_tests::impair::{Figures, Impairment};
use agent_proxy_tests::tls::{Ca, Validity, cert_dir};
use agent_proxy_tests::{DaemonConfig, Dataplane};

/// The intake's second address, where DNS moves the intake name to and back.
pub(crate) const INTAKE_ALT: &str = "11.0.0.21";
/// The intake's name in DNS (backends and CONNECT destinations).
pub(crate) const INTAKE_NAME: &str = "intake.soak.test";
/// The port the tcp, TLS and connect frontends' traffic reaches on the intake.
pub(crate) const INTAKE_PORT: u16 = 9000;
/// The name in the proxy's TLS certificate.
pub(crate) const PROXY_NAME: &str = "proxy.soak.test";
/// Every connect timeout of the daemons: a lost SYN is sent again after TCP's initial RTO of 1 s,
/// so a shorter timeout would fail connections that the lossy links merely delay.
const CONNECT_TIMEOUT: &str = "3s";
/// The tcp frontends' `idle_timeout`: their Idle clients stay silent until the proxy closes
/// them (the other frontends keep the default, 5 min, and their Idle clients speak after a few
/// seconds).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// TTL of dnsmasq's answers, and the `dns.min_ttl` of the backends and of the destinations
/// (`global.dns`: connect mode resolves the intake's name in the destination cache, whose
/// default bounds, 5 s - 300 s, would keep the last good address up to 20 s after DNS came
/// back from the soak's 12-s outage, past the judge's `DNS_GRACE`).
pub(crate) const DNS_TTL_SECS: u32 = 1;
/// Both daemons' `tcp_keepalive` (probes after 2 s of silence, then every second; 6 s in all,
/// which is also their `TCP_USER_TIMEOUT`). The lossy links drop a reset now and then, and TCP
/// never sends one twice: a resetting client whose reset is lost, after the daemon's socket to
/// it has nothing left unacknowledged (its FIN forwarded and acknowledged, say), would leave
/// that connection waiting for the client's next byte for good. A probe finds the client's
/// socket gone (its host answers with a reset) and the connection ends as the reset it was -
/// which is what the option is for (docs/reliability.md). The defaults (60 s, then every 10 s)
/// would find it too, after the intake's 20-s stall guard.
const KEEPALIVE: &str = "{ idle = \"2s\", interval = \"1s\", count = 4 }";

/// The ports of one daemon.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ports {
    pub(crate) admin: u16,
    pub(crate) tcp: u16,
    pub(crate) tls: u16,
    pub(crate) connect: u16,
    /// The transparent frontend's own port.
    pub(crate) transparent: u16,
    /// The intake port its transparent clients dial (and the rules redirect).
    pub(crate) transparent_dst: u16,
}

pub(crate) const KERNEL: Ports = Ports {
    admin: 9091,
    tcp: 7001,
    tls: 7002,
    connect: 7003,
    transparent: 15001,
    transparent_dst: 9101,
};

pub(crate) const USERSPACE: Ports = Ports {
    admin: 9092,
    tcp: 7011,
    tls: 7012,
    connect: 7013,
    transparent: 15002,
    transparent_dst: 9102,
};

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid address")
}

/// The hosts, their impaired links, DNS and the TLS material.
pub(crate) struct World {
    pub(crate) gw: Gateway,
    pub(crate) dns: Dnsmasq,
    pub(crate) ca: Ca,
    cert: PathBuf,
    key: PathBuf,
}

impl World {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let gw = Gateway::new()?;
        gw.add_intake_address(ip(INTAKE_ALT))?;
        let dns = Dnsmasq::start(&gw.proxy, &[(INTAKE_NAME, ip(INTAKE))], DNS_TTL_SECS)?;
        let ca = Ca::new("soak CA")?;
        let dir = cert_dir(&gw.proxy)?;
        let (cert, key) = ca
            .server(&[PROXY_NAME], Validity::Now)?
            .write(&dir, "proxy")?;
        operator_redirect(&gw, USERSPACE)?;
        Ok(Self {
            gw,
            dns,
            ca,
            cert,
            key,
        })
    }

    /// The config of the daemon on `dp` with `ports`.
    pub(crate) fn config(&self, dp: Dataplane, ports: Ports) -> DaemonConfig {
        let mut config = DaemonConfig::new(dp, Vec::new());
        config.admin = SocketAddr::new(ip("127.0.0.1"), ports.admin);
        config.listen = SocketAddr::new(ip(PROXY_INNER), ports.tcp);
        let kernel = if dp.is_kernel() {
            // Small buffers, so that slow readers and bulk streams of a few MiB reach the
            // kernel path's flow control (hand-over to userspace and back).
            "kernel_window = 262144\nkernel_sndbuf = 1048576\n"
        } else {
            ""
        };
        let intercept = if dp.is_kernel() {
            format!(
                "intercept = {{ ports = [{}], from = [\"{AGENT_NET}\"] }}\n",
                ports.transparent_dst
            )
        } else {
            String::new()
        };
        config.toml_override = Some(format!(
            "[global]\ndataplane = \"{dp}\"\n{extra}{kernel}admin = \"{admin}\"\n\
             drain_timeout = \"2s\"\nlog_format = \"json\"\nnameservers = [\"{dns}\"]\n\
             tcp_keepalive = {KEEPALIVE}\ndns = {{ min_ttl = \"{DNS_TTL_SECS}s\", max_ttl = \"5s\" }}\n\n\
             [[frontend]]\nname = \"tcp\"\nlisten = \"{PROXY_INNER}:{tcp}\"\nbackend = \"intake\"\n\
             idle_timeout = \"{idle}s\"\n\n\
             [[frontend]]\nname = \"tls\"\nlisten = \"{PROXY_INNER}:{tls}\"\nbackend = \"intake\"\n\
             tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\n\
             [[frontend]]\nname = \"connect\"\nlisten = \"{PROXY_INNER}:{connect}\"\nmode = \"connect\"\n\
             users = [{{ name = \"{USER}\", password = \"{PASSWORD}\" }}]\n\
             allow_destinations = [\"{INTAKE_NAME}:{INTAKE_PORT}\"]\nconnect_timeout = \"{CONNECT_TIMEOUT}\"\n\n\
             [[frontend]]\nname = \"transparent\"\nlisten = \"0.0.0.0:{transparent}\"\n\
             mode = \"transparent\"\nallow = [\"{AGENT_NET}\"]\n\
             allow_destinations = [\"{INTAKE}:{dst}\"]\n{intercept}connect_timeout = \"{CONNECT_TIMEOUT}\"\n\n\
             [[backend]]\nname = \"intake\"\nservers = [\"{INTAKE_NAME}:{INTAKE_PORT}\"]\n\
             connect_timeout = \"{CONNECT_TIMEOUT}\"\nretries = 2\npassive = {{ fall = 3, backoff = \"1s\" }}\n\
             dns = {{ min_ttl = \"{DNS_TTL_SECS}s\", max_ttl = \"5s\" }}\n",
            extra = dp.extra_global(),
            idle = IDLE_TIMEOUT.as_secs(),
            admin = config.admin,
            dns = self.dns.addr,
            tcp = ports.tcp,
            tls = ports.tls,
            connect = ports.connect,
            transparent = ports.transparent,
            dst = ports.transparent_dst,
            cert = self.cert.display(),
            key = self.key.display(),
        ));
        config
    }
}

/// Impairs both ends of both links of `gw` (each end shapes what it sends and drops some of
/// what it receives).
pub(crate) fn impair(gw: &Gateway) -> anyhow::Result<Vec<(String, Impairment<'_>)>> {
    [
        (&gw.agent, "va", "agent"),
        (&gw.proxy, "vp", "proxy, agent side"),
        (&gw.proxy, "vo", "proxy, intake side"),
        (&gw.intake, "vi", "intake"),
    ]
    .into_iter()
    .map(|(ns, dev, what)| Ok((what.to_owned(), Impairment::apply(ns, dev)?)))
    .collect()
}

/// The REDIRECT rule an operator writes for a transparent frontend without `intercept`: the
/// agents' connections to `ports.transparent_dst` go to the frontend's port.
fn operator_redirect(gw: &Gateway, ports: Ports) -> anyhow::Result<()> {
    run(&[
        "ip",
        "netns",
        "exec",
        gw.proxy.name(),
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-s",
        AGENT_NET,
        "-p",
        "tcp",
        "--dport",
        &ports.transparent_dst.to_string(),
        "-j",
        "REDIRECT",
        "--to-ports",
        &ports.transparent.to_string(),
    ])
}

/// Sums what the impaired links did.
pub(crate) fn link_figures(
    links: &[(String, Impairment<'_>)],
) -> anyhow::Result<Vec<(String, Figures)>> {
    links
        .iter()
        .map(|(what, link)| Ok((what.clone(), link.figures()?)))
        .collect()
}
