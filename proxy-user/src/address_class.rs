//! What kind of address a destination is, for the one rule every destination obeys: a client
//! of the proxy may only reach *global unicast* addresses, unless the operator names the
//! address (or its network) in a rule.
//!
//! One classifier serves every path that dials an address a client chose or a DNS answer gave
//! (CONNECT literals and resolved names, later transparent destinations and absolute-form
//! HTTP); health checks of configured backends are the operator's own and are not judged.
//!
//! The tables follow the IANA special-purpose address registries
//! (<https://www.iana.org/assignments/iana-ipv4-special-registry>,
//! <https://www.iana.org/assignments/iana-ipv6-special-registry>), with the "globally
//! reachable" exceptions they list, plus multicast, and for IPv6 everything outside global
//! unicast `2000::/3`. Every IPv6 form that carries an IPv4 address is unwrapped and the IPv4
//! address judged as well: IPv4-mapped `::ffff:0:0/96` (judged as the IPv4 address itself),
//! IPv4-compatible `::/96` (deprecated: always refused), NAT64 `64:ff9b::/96` (allowed when the
//! embedded address is), the local-use NAT64 prefix `64:ff9b:1::/48` (never global), 6to4
//! `2002::/16` (allowed when the embedded address is) and Teredo `2001::/32` (refused; its
//! server and client addresses are named in the reason). Smokescreen classifies the same way,
//! after DNS, with one function; 3proxy's IPv4-mapped bypass (its issue 807) is what happens
//! when two functions disagree.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The class of an address that is not global unicast. Each is a metric label value
/// (`agent_proxy_frontend_rejected_total{reason="address_<class>"}`) and a log field, so the
/// set is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Special {
    /// `0.0.0.0/8` ("this network", RFC 791), `::/128`.
    Unspecified,
    /// `127.0.0.0/8`, `::1/128`.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16` (RFC 1918); `fc00::/7` unique local (RFC 4193).
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT (RFC 6598).
    Shared,
    /// `169.254.0.0/16` (cloud metadata at 169.254.169.254), `fe80::/10`.
    LinkLocal,
    /// `fec0::/10`, deprecated site-local (RFC 3879).
    SiteLocal,
    /// `192.0.0.0/24` IETF protocol assignments (RFC 6890) but its global anycast addresses;
    /// `2001::/23` but its global blocks.
    Protocol,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24` (RFC 5737); `2001:db8::/32`
    /// (RFC 3849), `3fff::/20` (RFC 9637).
    Documentation,
    /// `198.18.0.0/15` (RFC 2544), `2001:2::/48` (RFC 5180).
    Benchmarking,
    /// `192.88.99.0/24`, the deprecated 6to4 relay anycast (RFC 7526).
    Relay6to4,
    /// `240.0.0.0/4` (RFC 1112), IPv6 outside `2000::/3` not listed elsewhere (IETF reserved),
    /// `5f00::/16` SRv6 SIDs (RFC 9602).
    Reserved,
    /// `255.255.255.255/32`.
    Broadcast,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `100::/64` discard-only (RFC 6666), `100:0:0:1::/64` dummy prefix (RFC 9780).
    Discard,
    /// `::/96` IPv4-compatible (deprecated by RFC 4291).
    Ipv4Compatible,
    /// `64:ff9b:1::/48`, local-use NAT64 (RFC 8215).
    Nat64Local,
    /// `2001::/32` Teredo (RFC 4380).
    Teredo,
}

impl Special {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Special::Unspecified => "unspecified",
            Special::Loopback => "loopback",
            Special::Private => "private",
            Special::Shared => "shared",
            Special::LinkLocal => "link_local",
            Special::SiteLocal => "site_local",
            Special::Protocol => "protocol_assignment",
            Special::Documentation => "documentation",
            Special::Benchmarking => "benchmarking",
            Special::Relay6to4 => "relay_6to4",
            Special::Reserved => "reserved",
            Special::Broadcast => "broadcast",
            Special::Multicast => "multicast",
            Special::Discard => "discard",
            Special::Ipv4Compatible => "ipv4_compatible",
            Special::Nat64Local => "nat64_local",
            Special::Teredo => "teredo",
        }
    }
}

/// The `reason` label of `agent_proxy_frontend_rejected_total` for a destination refused for
/// its address class: `address_CLASS`.
pub(crate) fn reason(class: Special) -> String {
    format!("address_{class}")
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an address is not global unicast: its class, and the IPv4 address it embeds when that
/// is what was judged (`64:ff9b::7f00:1` is refused as the loopback `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub class: Special,
    pub embedded: Option<Ipv4Addr>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.embedded {
            Some(v4) => write!(f, "{} (embeds {v4})", self.class),
            None => write!(f, "{}", self.class),
        }
    }
}

/// `Ok(())` for a global unicast address, else the reason it is not.
pub(crate) fn classify(ip: IpAddr) -> Result<(), Refused> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map_err(|class| Refused {
            class,
            embedded: None,
        }),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Result<(), Special> {
    // Inside 192.0.0.0/24, the anycast addresses the registry lists as globally reachable:
    // PCP (RFC 7723) and TURN (RFC 8155).
    let protocol_global = ip == Ipv4Addr::new(192, 0, 0, 9) || ip == Ipv4Addr::new(192, 0, 0, 10);
    let table: [([u8; 4], u32, Special); 16] = [
        ([0, 0, 0, 0], 8, Special::Unspecified),
        ([10, 0, 0, 0], 8, Special::Private),
        ([100, 64, 0, 0], 10, Special::Shared),
        ([127, 0, 0, 0], 8, Special::Loopback),
        ([169, 254, 0, 0], 16, Special::LinkLocal),
        ([172, 16, 0, 0], 12, Special::Private),
        ([192, 0, 0, 0], 24, Special::Protocol),
        ([192, 0, 2, 0], 24, Special::Documentation),
        ([192, 88, 99, 0], 24, Special::Relay6to4),
        ([192, 168, 0, 0], 16, Special::Private),
        ([198, 18, 0, 0], 15, Special::Benchmarking),
        ([198, 51, 100, 0], 24, Special::Documentation),
        ([203, 0, 113, 0], 24, Special::Documentation),
        ([224, 0, 0, 0], 4, Special::Multicast),
        ([255, 255, 255, 255], 32, Special::Broadcast),
        // After the broadcast address, which it contains.
        ([240, 0, 0, 0], 4, Special::Reserved),
    ];
    for (net, len, class) in table {
        if in_v4(ip, net, len) {
            if class == Special::Protocol && protocol_global {
                return Ok(());
            }
            return Err(class);
        }
    }
    Ok(())
}

fn in_v6(ip: Ipv6Addr, net: u128, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    u128::from(ip) & mask == net & mask
}

/// The IPv4 address in bits `from..from + 32` of `ip`.
fn v4_at(ip: Ipv6Addr, from: u32) -> Ipv4Addr {
    Ipv4Addr::from((u128::from(ip) >> (96 - from)) as u32)
}

fn classify_v6(ip: Ipv6Addr) -> Result<(), Refused> {
    let refuse = |class| {
        Err(Refused {
            class,
            embedded: None,
        })
    };
    let bits = u128::from(ip);
    // The forms that embed an IPv4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        // Judged as the IPv4 address itself: the kernel dials it as one.
        return classify_v4(v4).map_err(|class| Refused {
            class,
            embedded: Some(v4),
        });
    }
    if bits == 0 {
        return refuse(Special::Unspecified);
    }
    if bits == 1 {
        return refuse(Special::Loopback);
    }
    if in_v6(ip, 0, 96) {
        return Err(Refused {
            class: Special::Ipv4Compatible,
            embedded: Some(v4_at(ip, 96)),
        });
    }
    if in_v6(ip, 0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        let v4 = v4_at(ip, 96);
        return classify_v4(v4).map_err(|class| Refused {
            class,
            embedded: Some(v4),
        });
    }
    if in_v6(ip, 0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48) {
        return refuse(Special::Nat64Local);
    }
    if in_v6(ip, 0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        let v4 = v4_at(ip, 16);
        return classify_v4(v4).map_err(|class| Refused {
            class,
            embedded: Some(v4),
        });
    }
    if in_v6(ip, 0x2001_0000_0000_0000_0000_0000_0000_0000, 32) {
        // The server's address is in bits 32-63; the client's, obfuscated, in the last 32.
        return Err(Refused {
            class: Special::Teredo,
            embedded: Some(v4_at(ip, 32)),
        });
    }
    let table: [(u128, u32, Special); 11] = [
        (
            0x0100_0000_0000_0000_0000_0000_0000_0000,
            64,
            Special::Discard,
        ),
        (
            0x0100_0000_0000_0001_0000_0000_0000_0000,
            64,
            Special::Discard,
        ),
        (
            0x2001_0002_0000_0000_0000_0000_0000_0000,
            48,
            Special::Benchmarking,
        ),
        (
            0x2001_0db8_0000_0000_0000_0000_0000_0000,
            32,
            Special::Documentation,
        ),
        (
            0x3fff_0000_0000_0000_0000_0000_0000_0000,
            20,
            Special::Documentation,
        ),
        (
            0x5f00_0000_0000_0000_0000_0000_0000_0000,
            16,
            Special::Reserved,
        ),
        (
            0xfc00_0000_0000_0000_0000_0000_0000_0000,
            7,
            Special::Private,
        ),
        (
            0xfe80_0000_0000_0000_0000_0000_0000_0000,
            10,
            Special::LinkLocal,
        ),
        (
            0xfec0_0000_0000_0000_0000_0000_0000_0000,
            10,
            Special::SiteLocal,
        ),
        (
            0xff00_0000_0000_0000_0000_0000_0000_0000,
            8,
            Special::Multicast,
        ),
        // IETF protocol assignments, after its global blocks (below) are taken out.
        (
            0x2001_0000_0000_0000_0000_0000_0000_0000,
            23,
            Special::Protocol,
        ),
    ];
    for (net, len, class) in table {
        if in_v6(ip, net, len) {
            if class == Special::Protocol && protocol_global_v6(ip) {
                return Ok(());
            }
            return refuse(class);
        }
    }
    if !in_v6(ip, 0x2000_0000_0000_0000_0000_0000_0000_0000, 3) {
        return refuse(Special::Reserved);
    }
    Ok(())
}

/// The blocks of `2001::/23` that the registry lists as globally reachable: the PCP, TURN and
/// DNS-SD SRP anycast addresses, AMT, AS112-v6, ORCHIDv2 and DRIP.
fn protocol_global_v6(ip: Ipv6Addr) -> bool {
    let anycast = [1u128, 2, 3]
        .map(|low| 0x2001_0001_0000_0000_0000_0000_0000_0000 | low)
        .contains(&u128::from(ip));
    anycast
        || in_v6(ip, 0x2001_0003_0000_0000_0000_0000_0000_0000, 32)
        || in_v6(ip, 0x2001_0004_0112_0000_0000_0000_0000_0000, 48)
        || in_v6(ip, 0x2001_0020_0000_0000_0000_0000_0000_0000, 28)
        || in_v6(ip, 0x2001_0030_0000_0000_0000_0000_0000_0000, 28)
}

#[cfg(test)]
#[path = "address_class/tests.rs"]
mod tests;
