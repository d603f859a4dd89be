//! Which destinations a CONNECT frontend may open: `allow_destinations`, checked twice.
//!
//! 1. The requested `host:port` must match a rule: `host:port` exactly, `.domain:port` for the
//!    domain and every name under it, `[v6]:port` / `v4:port` for a literal. A port may be `*`,
//!    but only when written so; there is no rule matching every host (that would be an open
//!    proxy), and no rules means nothing is allowed.
//! 2. The addresses the name resolves to must not be internal - loopback, link-local (the
//!    cloud metadata service at 169.254.169.254 among them), private, shared (CGNAT),
//!    unspecified, broadcast, multicast - unless a rule names that very address. Otherwise an
//!    allowed name whose DNS an attacker controls could reach the proxy host's own services.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::request::{Target, TargetHost};

/// One `allow_destinations` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRule {
    host: RuleHost,
    /// `None`: any port (`:*`).
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleHost {
    /// This name only (lower-case, no trailing dot).
    Exact(String),
    /// This name and every name under it (lower-case, no dots at either end).
    Suffix(String),
    /// This literal address.
    Ip(IpAddr),
}

impl DestinationRule {
    /// Parses an entry; the message is an operator's (it follows `FILE:LINE:COL:`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid destination \"{text}\": expected HOST:PORT, .DOMAIN:PORT, \
                 IP:PORT or [IPv6]:PORT (PORT may be *)"
            )
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
        if host == "*" || host == "." || host.is_empty() {
            return Err(format!(
                "invalid destination \"{text}\": a rule matching every host would make an open \
                 proxy; list the hosts or domains agents may reach"
            ));
        }
        let (port, probe) = match port {
            "*" => (None, "1"),
            digits => (Some(()), digits),
        };
        let suffix = host.strip_prefix('.');
        let target = Target::parse(&format!("{}:{probe}", suffix.unwrap_or(host)))
            .map_err(|_| expected())?;
        let port = port.map(|()| target.port);
        let host = match (target.host, suffix) {
            (TargetHost::Ip(ip), None) => RuleHost::Ip(ip.to_canonical()),
            (TargetHost::Name { name, .. }, Some(_)) => RuleHost::Suffix(name),
            (TargetHost::Name { name, .. }, None) => RuleHost::Exact(name),
            (TargetHost::Ip(_), Some(_)) => return Err(expected()),
        };
        Ok(Self { host, port })
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn matches(&self, target: &Target) -> bool {
        if !self.port_matches(target.port) {
            return false;
        }
        match (&self.host, &target.host) {
            (RuleHost::Ip(rule), TargetHost::Ip(ip)) => *rule == ip.to_canonical(),
            (RuleHost::Exact(rule), TargetHost::Name { name, .. }) => rule == name,
            (RuleHost::Suffix(rule), TargetHost::Name { name, .. }) => {
                name == rule
                    || name
                        .strip_suffix(rule.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            _ => false,
        }
    }

    fn names_address(&self, addr: SocketAddr) -> bool {
        self.port_matches(addr.port())
            && matches!(self.host, RuleHost::Ip(ip) if ip == addr.ip().to_canonical())
    }
}

impl fmt::Display for DestinationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            RuleHost::Exact(name) => f.write_str(name)?,
            RuleHost::Suffix(name) => write!(f, ".{name}")?,
            RuleHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            RuleHost::Ip(ip) => write!(f, "{ip}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => f.write_str(":*"),
        }
    }
}

/// The rules of one frontend.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<DestinationRule>,
}

impl Policy {
    pub fn new(rules: Vec<DestinationRule>) -> Self {
        Self { rules }
    }

    /// Check 1: the requested destination matches a rule.
    pub fn allows(&self, target: &Target) -> bool {
        self.rules.iter().any(|rule| rule.matches(target))
    }

    /// Check 2: a resolved address may be dialed.
    pub fn admits(&self, addr: SocketAddr) -> bool {
        !is_internal(addr.ip()) || self.rules.iter().any(|rule| rule.names_address(addr))
    }
}

/// Addresses that belong to the proxy host or its private networks rather than to the internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(ip) => {
            let shared = Ipv4Addr::new(100, 64, 0, 0); // 100.64.0.0/10, RFC 6598
            let this_network = ip.octets()[0] == 0; // 0.0.0.0/8
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || this_network
                || (u32::from(ip) & 0xffc0_0000) == u32::from(shared)
        }
        IpAddr::V6(ip) => {
            let segments = ip.segments();
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (AWS's fd00:ec2::254 metadata too)
                || (segments[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}
