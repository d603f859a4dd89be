//! A three-namespace topology for transparent mode: an agent host whose default route is the
//! proxy host (the gateway), and an intake network behind the proxy host, joined by veth pairs
//! so that every byte crosses a link and the proxy's IP stack as it would from another host.
//!
//! ```text
//!  agent  10.77.0.2 / fd77::2  --veth--  10.77.0.1 / fd77::1   proxy
//!                                        11.0.0.1 / 2a01:77::1  --veth--  11.0.0.10 / 2a01:77::10  intake
//! ```
//! The proxy host forwards (IPv4 and IPv6), so without rules the agent reaches the intake
//! routed, with its own source address. 11.0.0.0/24 and 2a01:77::/64 stand for public
//! addresses (the destination policy refuses private ones); they exist only in these
//! namespaces.
use std::net::{IpAddr, SocketAddr};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::connect::run;
use crate::netns::NetNs;

pub const AGENT: &str = "10.77.0.2";
pub const AGENT6: &str = "fd77::2";
pub const PROXY_INNER: &str = "10.77.0.1";
pub const PROXY_OUTER: &str = "11.0.0.1";
pub const PROXY_OUTER6: &str = "2a01:77::1";
pub const INTAKE: &str = "11.0.0.10";
pub const INTAKE6: &str = "2a01:77::10";
/// The agents' network, for `allow` and `intercept.from`.
pub const AGENT_NET: &str = "10.77.0.0/24";
pub const AGENT_NET6: &str = "fd77::/64";

/// The three namespaces; deleted (with their links) on drop.
pub struct Gateway {
    pub agent: NetNs,
    pub proxy: NetNs,
    pub intake: NetNs,
}

impl Gateway {
    pub fn new() -> anyhow::Result<Self> {
        let gw = Self {
            agent: NetNs::new()?,
            proxy: NetNs::new()?,
            intake: NetNs::new()?,
        };
        let (a, p, i) = (gw.agent.name(), gw.proxy.name(), gw.intake.name());
        run(&[
            "ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vp", "netns", p,
        ])?;
        run(&[
            "ip", "-n", p, "link", "add", "vo", "type", "veth", "peer", "name", "vi", "netns", i,
        ])?;
        for (ns, dev, v4, v6) in [
            (a, "va", "10.77.0.2/24", "fd77::2/64"),
            (p, "vp", "10.77.0.1/24", "fd77::1/64"),
            (p, "vo", "11.0.0.1/24", "2a01:77::1/64"),
            (i, "vi", "11.0.0.10/24", "2a01:77::10/64"),
        ] {
            run(&["ip", "-n", ns, "addr", "add", v4, "dev", dev])?;
            run(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            run(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        run(&["ip", "-n", a, "route", "add", "default", "via", PROXY_INNER])?;
        run(&[
            "ip", "-n", a, "-6", "route", "add", "default", "via", "fd77::1",
        ])?;
        run(&["ip", "-n", i, "route", "add", "default", "via", PROXY_OUTER])?;
        run(&[
            "ip",
            "-n",
            i,
            "-6",
            "route",
            "add",
            "default",
            "via",
            PROXY_OUTER6,
        ])?;
        run(&[
            "ip",
            "netns",
            "exec",
            p,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ])?;
        Ok(gw)
    }

    /// Puts `ip` on the intake host's `lo` and routes it there from the proxy host (another
    /// destination behind the gateway).
    pub fn add_intake_address(&self, ip: IpAddr) -> anyhow::Result<()> {
        let (cidr, via, family) = match ip {
            IpAddr::V4(_) => (format!("{ip}/32"), INTAKE, "-4"),
            IpAddr::V6(_) => (format!("{ip}/128"), INTAKE6, "-6"),
        };
        run(&[
            "ip",
            "-n",
            self.intake.name(),
            "addr",
            "add",
            &cidr,
            "dev",
            "lo",
        ])?;
        run(&[
            "ip",
            "-n",
            self.proxy.name(),
            family,
            "route",
            "add",
            &cidr,
            "via",
            via,
        ])
    }
}

impl Gateway {
    /// A listener on the intake host (the socket is made in its namespace), to be used from
    /// a tokio runtime. The backlog holds a burst of 1,000 connects without SYN cookies.
    pub fn intake_listener(&self, addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let std = self
            .intake
            .run(|| -> std::io::Result<std::net::TcpListener> {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )?;
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(4096)?;
                Ok(socket.into())
            })
            .with_context(|| format!("listen on {addr} in the intake namespace"))?;
        std.set_nonblocking(true)?;
        Ok(TcpListener::from_std(std)?)
    }
}

/// `iptables -t nat -S` (or ip6tables) in `ns`: the whole nat table, for assertions on rules.
pub fn nat_rules(ns: &NetNs, command: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), command, "-w", "-t", "nat", "-S"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{command} -t nat -S: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
