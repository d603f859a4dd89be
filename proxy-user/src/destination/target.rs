//! A destination as `host:port`: the target of a CONNECT request, the grammar of the
//! `allow_destinations` rules, and the name a transparent connection asks for.
//!
//! The file depends on std only: the fuzz crate (`fuzz/`) compiles it into its target.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The destination of a CONNECT request: `host:port` (RFC 9110 section 9.3.6, authority-form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub host: TargetHost,
    pub port: u16,
}

/// The host part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TargetHost {
    /// An IPv4 literal or a bracketed IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, lower-cased, without its trailing dot.
    Name {
        name: String,
        /// It was sent with a trailing dot (fully qualified: never extended with search
        /// domains). Newer Datadog agents send `intake.datadoghq.com.:443`.
        fqdn: bool,
    },
}

impl Target {
    /// Parses `host:port`, `[v6]:port`. The port is required (CONNECT has no default).
    pub(crate) fn parse(text: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("invalid CONNECT target {:?}: {why}", clip(text));
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected a port 1-65535"));
        }
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("expected a port 1-65535")),
            Ok(port) => port,
        };
        let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            match inner.parse::<Ipv6Addr>() {
                Ok(ip) => TargetHost::Ip(IpAddr::V6(ip)),
                Err(_) => return Err(bad("expected an IPv6 address in brackets")),
            }
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            TargetHost::Ip(IpAddr::V4(ip))
        } else {
            let (name, fqdn) = match host.strip_suffix('.') {
                Some(name) => (name, true),
                None => (host, false),
            };
            if !plausible_name(name) {
                return Err(bad("expected a DNS name, an IPv4 address or [IPv6]"));
            }
            TargetHost::Name {
                name: name.to_ascii_lowercase(),
                fqdn,
            }
        };
        Ok(Target { host, port })
    }
}

/// Whether `name` can be a DNS name worth resolving: 1-253 bytes of letters, digits, `-` and
/// `_` (SRV-style labels exist) in non-empty labels of at most 63. Whether it is *allowed* is
/// the destination policy's question, against names the config validated strictly.
fn plausible_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// At most 64 characters of a client-supplied string, for error messages.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            TargetHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
            TargetHost::Name { name, fqdn } => {
                let dot = if *fqdn { "." } else { "" };
                write!(f, "{name}{dot}:{}", self.port)
            }
        }
    }
}
