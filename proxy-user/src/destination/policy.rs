//! Which destinations a connect or transparent frontend may open: `allow_destinations`,
//! checked twice.
//!
//! 1. The requested `host:port` must match a rule: `host:port` exactly, `.domain:port` for the
//!    domain and every name under it, `[v6]:port` / `v4:port` for a literal, `v4/len:port` /
//!    `[v6/len]:port` for a literal in a network. A port may be `*`, but only when written so;
//!    there is no rule matching every host (that would be an open proxy), and no rules means
//!    nothing is allowed.
//! 2. Every address the proxy would dial - the literal, or each address the name resolves to -
//!    must be global unicast ([`crate::address_class`]: loopback, private, link-local with the
//!    cloud metadata service, CGNAT, documentation, benchmarking, reserved, multicast, and
//!    every IPv6 form that embeds such an IPv4 address are not), unless a rule names that very
//!    address or a network holding it. Otherwise an allowed name whose DNS an attacker
//!    controls could reach the proxy host's own services. The addresses judged are the ones
//!    dialed, by address: nothing is resolved again between the check and the connect.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::IpNet;

use super::target::{Target, TargetHost};
use crate::address_class::{self, Refused};

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
    /// Any literal address in this network (IPv4-mapped IPv6 addresses are judged as IPv4).
    Net(IpNet),
}

/// The shortest prefixes a network rule may have: a wider one is most of an address family,
/// which is an open proxy on that port.
const MIN_PREFIX_V4: u8 = 8;
const MIN_PREFIX_V6: u8 = 16;

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
        if host.contains('/') {
            return Self::parse_net(text, host, port);
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

    /// `v4/len:port` or `[v6/len]:port`.
    fn parse_net(text: &str, host: &str, port: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid destination \"{text}\": expected a network as ADDR/LEN:PORT or \
                 [IPv6/LEN]:PORT (PORT may be *)"
            )
        };
        let inner = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').ok_or_else(expected)?,
            None => host,
        };
        let net: IpNet = inner.parse().map_err(|_| expected())?;
        if net.addr().is_ipv6() != host.starts_with('[') {
            return Err(expected());
        }
        let min = if net.addr().is_ipv4() {
            MIN_PREFIX_V4
        } else {
            MIN_PREFIX_V6
        };
        if net.prefix_len() < min {
            return Err(format!(
                "invalid destination \"{text}\": a network wider than /{min} is most of the \
                 internet and would make an open proxy; name narrower networks"
            ));
        }
        if net.trunc() != net {
            return Err(format!(
                "invalid destination \"{text}\": {net} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        let port = match port {
            "*" => None,
            digits => match Target::parse(&format!("a:{digits}")) {
                Ok(t) => Some(t.port),
                Err(_) => return Err(expected()),
            },
        };
        Ok(Self {
            host: RuleHost::Net(net),
            port,
        })
    }

    fn port_matches(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn matches(&self, target: &Target) -> bool {
        if !self.port_matches(target.port) {
            return false;
        }
        match (&self.host, &target.host) {
            (RuleHost::Ip(_) | RuleHost::Net(_), TargetHost::Ip(ip)) => self.covers(*ip),
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

    /// Whether this rule names `ip` (its literal, or a network holding it).
    fn covers(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self.host {
            RuleHost::Ip(rule) => rule == ip,
            RuleHost::Net(net) => net.contains(&ip),
            RuleHost::Exact(_) | RuleHost::Suffix(_) => false,
        }
    }

    fn names_address(&self, addr: SocketAddr) -> bool {
        self.port_matches(addr.port()) && self.covers(addr.ip())
    }
}

impl fmt::Display for DestinationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            RuleHost::Exact(name) => f.write_str(name)?,
            RuleHost::Suffix(name) => write!(f, ".{name}")?,
            RuleHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            RuleHost::Ip(ip) => write!(f, "{ip}")?,
            RuleHost::Net(net @ IpNet::V6(_)) => write!(f, "[{net}]")?,
            RuleHost::Net(net) => write!(f, "{net}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => f.write_str(":*"),
        }
    }
}

/// The rules of one frontend.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    rules: Vec<DestinationRule>,
    /// Per rule: it has let a special-purpose address through, and the log has said so (once
    /// per rule, so that a deliberately allowed internal intake does not log every connection).
    overrode: Arc<[AtomicBool]>,
}

/// What check 2 says of one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judgement {
    /// A global unicast address.
    Global,
    /// Not global, but a rule names it: dialed.
    Named(Refused),
    /// Not global and no rule names it: not dialed.
    Refused(Refused),
}

impl Judgement {
    /// Whether the address is dialed (the fuzz target's check; the daemon matches instead).
    #[cfg_attr(
        not(any(fuzzing, test)),
        expect(dead_code, reason = "used by the fuzz target and the tests")
    )]
    pub(crate) fn dialable(self) -> bool {
        !matches!(self, Judgement::Refused(_))
    }
}

impl Policy {
    pub(crate) fn new(rules: Vec<DestinationRule>) -> Self {
        let overrode = rules.iter().map(|_| AtomicBool::new(false)).collect();
        Self { rules, overrode }
    }

    /// Whether some rule names hosts (`host:port`, `.domain:port`): without one, a transparent
    /// connection whose address no rule names is refused without reading what it sends.
    pub(crate) fn has_name_rules(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| matches!(rule.host, RuleHost::Exact(_) | RuleHost::Suffix(_)))
    }

    /// Check 1: the requested destination matches a rule.
    pub(crate) fn allows(&self, target: &Target) -> bool {
        self.rules.iter().any(|rule| rule.matches(target))
    }

    /// Check 2 for one address the proxy would dial.
    pub(crate) fn judge(&self, addr: SocketAddr) -> Judgement {
        let Err(refused) = address_class::classify(addr.ip()) else {
            return Judgement::Global;
        };
        let Some(i) = self.rules.iter().position(|rule| rule.names_address(addr)) else {
            return Judgement::Refused(refused);
        };
        if !self.overrode[i].swap(true, Ordering::Relaxed) {
            tracing::info!(rule = %self.rules[i], %addr, class = %refused,
                "a special-purpose address is allowed because a rule names it \
                 (said once per rule)");
        }
        Judgement::Named(refused)
    }
}
