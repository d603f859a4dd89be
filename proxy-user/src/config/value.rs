//! Parsers for the string values of the config: names, addresses, networks, durations.
//!
//! Each returns `Err(message)` with the message an operator reads after `FILE:LINE:COL:`; the
//! caller knows the position. Messages quote the value and say what was expected.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::{Host, ServerAddr};

/// A frontend or backend name: non-empty `[A-Za-z0-9_.-]`, because it becomes a metric label
/// value and a log field and should need no quoting in either.
pub(super) fn name(kind: &str, value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("{kind} name must not be empty"));
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !value.chars().all(valid) {
        return Err(format!(
            "invalid {kind} name \"{value}\": expected letters, digits, '_', '.' or '-'"
        ));
    }
    Ok(value.to_owned())
}

/// `IP:PORT` with IPv6 in brackets; `what` names the value in the message.
pub(super) fn socket_addr(what: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("invalid {what} \"{value}\": expected IP:PORT"))
}

/// A nameserver: `IP:PORT`, or a bare IP meaning port 53 as in `/etc/resolv.conf`.
pub(super) fn nameserver(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    value
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("invalid nameserver \"{value}\": expected IP:PORT"))
}

/// A client network: a CIDR, or a bare IP meaning that one host (/32 or /128).
///
/// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`), as HAProxy and iptables do.
pub(super) fn network(value: &str) -> Result<IpNet, String> {
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    value.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!(
            "invalid allow entry \"{value}\": expected an IP address or a CIDR such as 10.0.0.0/8"
        )
    })
}

/// The largest value each duration key accepts. Past these a value is a mistake (or an attempt
/// to turn a safeguard off): `"18446744073709551615s"` used to pass and made the timeouts
/// never fire and SIGTERM wait forever. Documented in docs/configuration.md ("Durations").
pub(super) const DURATION_LIMITS: &[(&str, Duration)] = &[
    ("drain_timeout", Duration::from_secs(3600)),
    ("connect_timeout", Duration::from_secs(300)),
    ("request_timeout", Duration::from_secs(300)),
    ("handshake_timeout", Duration::from_secs(300)),
    ("sniff_timeout", Duration::from_secs(60)),
    ("rate_limit per", Duration::from_secs(86_400)),
    ("interval", Duration::from_secs(3600)),
    ("timeout", Duration::from_secs(3600)),
    ("backoff", Duration::from_secs(3600)),
    ("min_ttl", Duration::from_secs(86_400)),
    ("max_ttl", Duration::from_secs(86_400)),
    ("idle_timeout", Duration::from_secs(7 * 86_400)),
    ("max_connections_queue", Duration::from_secs(300)),
    // The kernel's bounds: TCP_KEEPIDLE and TCP_KEEPINTVL take at most 32,767 s.
    ("tcp_keepalive idle", Duration::from_secs(32_767)),
    ("tcp_keepalive interval", Duration::from_secs(32_767)),
];

/// The bound of `key` in [`DURATION_LIMITS`]; a key missing there is a bug, caught by the unit
/// test that walks every duration key, and gets the strictest bound meanwhile.
fn duration_limit(key: &str) -> Duration {
    DURATION_LIMITS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(Duration::from_secs(300), |(_, max)| *max)
}

/// A humantime duration such as `30s`, `500ms` or `1m 30s`, at most the key's bound in
/// [`DURATION_LIMITS`]; `key` names it in the message.
pub(super) fn duration(key: &str, value: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(value).map_err(|e| {
        let why = match e {
            humantime::DurationError::NumberOverflow => "; the number is too large".to_owned(),
            _ => String::new(),
        };
        format!("invalid {key} \"{value}\": expected a duration such as \"5s\" or \"500ms\"{why}")
    })?;
    let max = duration_limit(key);
    if parsed > max {
        return Err(format!(
            "invalid {key} \"{value}\": at most {} (see \"Durations\" in docs/configuration.md)",
            humantime::format_duration(max)
        ));
    }
    Ok(parsed)
}

/// A backend server: `HOST:PORT`, where HOST is an IPv4 address, `[IPv6]` or a hostname.
pub(super) fn server(value: &str) -> Result<ServerAddr, String> {
    let expected =
        || format!("invalid server address \"{value}\": expected HOST:PORT (IPv6 as [ADDR]:PORT)");
    let (host, port) = value.rsplit_once(':').ok_or_else(expected)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    let port = match port.parse::<u16>() {
        Ok(0) | Err(_) => {
            return Err(format!(
                "invalid port in server address \"{value}\": expected 1-65535"
            ));
        }
        Ok(port) => port,
    };
    let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // Brackets are only for IPv6, as in URLs; `[1.2.3.4]` is a typo worth reporting.
        match inner.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V6(_)) => Host::Ip(ip),
            _ => return Err(expected()),
        }
    } else if host.contains(':') {
        // An unbracketed IPv6 address: the port cannot be told apart from the last group.
        return Err(expected());
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        Host::Ip(ip)
    } else if is_hostname(host) {
        Host::Name(host.to_owned())
    } else {
        return Err(format!(
            "invalid hostname \"{host}\" in server address \"{value}\": \
             expected an IP address or DNS name"
        ));
    };
    Ok(ServerAddr { host, port })
}

/// RFC 1123 host names: dot-separated labels of 1-63 letters, digits and hyphens, not starting
/// or ending with a hyphen, at most 253 characters, with an optional trailing dot (a fully
/// qualified name that the resolver must not extend with search domains).
///
/// The last label must not be all digits (RFC 3696 section 2): otherwise a mistyped IPv4
/// address such as `10.0.0.256` would be sent to DNS instead of reported.
fn is_hostname(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let top_level_ok = name
        .rsplit('.')
        .next()
        .is_some_and(|label| !label.bytes().all(|b| b.is_ascii_digit()));
    name.split('.').all(label_ok) && top_level_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_follow_rfc_1123() {
        for good in [
            "localhost",
            "intake.example.com",
            "intake.example.com.",
            "3com.com",
            "a-b.c",
            "x1",
            &format!("{}.com", "a".repeat(63)),
        ] {
            assert!(is_hostname(good), "{good} should be valid");
        }
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "-a.com",
            "a-.com",
            "a_b.com",
            "10.0.0.256",
            "1.2.3",
            "a.com..",
            "ex ample.com",
            "exämple.com",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}a", "a.".repeat(127)),
        ] {
            assert!(!is_hostname(bad), "{bad} should be invalid");
        }
    }

    #[test]
    fn servers_accept_ipv4_ipv6_and_names() {
        let v4 = server("10.0.0.1:80").unwrap();
        assert_eq!(v4.host, Host::Ip("10.0.0.1".parse().unwrap()));
        assert_eq!(v4.to_string(), "10.0.0.1:80");
        let v6 = server("[2001:db8::1]:443").unwrap();
        assert_eq!(v6.host, Host::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "[2001:db8::1]:443");
        let fqdn = server("intake.example.com.:443").unwrap();
        assert_eq!(fqdn.host, Host::Name("intake.example.com.".into()));
        assert_eq!(fqdn.to_string(), "intake.example.com.:443");
    }

    #[test]
    fn servers_reject_what_cannot_be_dialed() {
        for bad in ["example.com", "::1:443", "[1.2.3.4]:80", "[::1]", ":80"] {
            assert!(server(bad).is_err(), "{bad} should be invalid");
        }
        assert_eq!(
            server("example.com:0").unwrap_err(),
            "invalid port in server address \"example.com:0\": expected 1-65535"
        );
    }

    #[test]
    fn networks_accept_bare_ips_and_clear_host_bits() {
        assert_eq!(network("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(network("::1").unwrap().to_string(), "::1/128");
        assert_eq!(network("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(network("10.0.0.0/33").is_err());
    }

    #[test]
    fn nameservers_default_to_port_53() {
        assert_eq!(nameserver("1.1.1.1").unwrap().to_string(), "1.1.1.1:53");
        assert_eq!(nameserver("[::1]:5353").unwrap().to_string(), "[::1]:5353");
        assert!(nameserver("dns.google:53").is_err());
    }
}
