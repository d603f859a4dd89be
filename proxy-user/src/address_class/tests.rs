//! The registries' ranges, both edges of each, the embedded forms, and global neighbours.

use super::*;

fn class(text: &str) -> Option<Special> {
    let ip: IpAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
    classify(ip).err().map(|r| r.class)
}

/// `(first, last, class)` of every refused range; the addresses just outside each edge are
/// checked in [`neighbours_outside_the_ranges_are_global`].
const RANGES: &[(&str, &str, Special)] = &[
    ("0.0.0.0", "0.255.255.255", Special::Unspecified),
    ("10.0.0.0", "10.255.255.255", Special::Private),
    ("100.64.0.0", "100.127.255.255", Special::Shared),
    ("127.0.0.0", "127.255.255.255", Special::Loopback),
    ("169.254.0.0", "169.254.255.255", Special::LinkLocal),
    ("172.16.0.0", "172.31.255.255", Special::Private),
    ("192.0.0.0", "192.0.0.8", Special::Protocol),
    ("192.0.0.11", "192.0.0.255", Special::Protocol),
    ("192.0.2.0", "192.0.2.255", Special::Documentation),
    ("192.88.99.0", "192.88.99.255", Special::Relay6to4),
    ("192.168.0.0", "192.168.255.255", Special::Private),
    ("198.18.0.0", "198.19.255.255", Special::Benchmarking),
    ("198.51.100.0", "198.51.100.255", Special::Documentation),
    ("203.0.113.0", "203.0.113.255", Special::Documentation),
    ("224.0.0.0", "239.255.255.255", Special::Multicast),
    ("240.0.0.0", "255.255.255.254", Special::Reserved),
    ("255.255.255.255", "255.255.255.255", Special::Broadcast),
    ("::", "::", Special::Unspecified),
    ("::1", "::1", Special::Loopback),
    ("::2", "::ffff:ffff", Special::Ipv4Compatible),
    ("::1:0:0", "::fffe:ffff:ffff", Special::Reserved),
    (
        "::1:0:0:0",
        "63:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Reserved,
    ),
    (
        "64:ff9b:1::",
        "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        Special::Nat64Local,
    ),
    ("100::", "100::ffff:ffff:ffff:ffff", Special::Discard),
    (
        "100:0:0:1::",
        "100::1:ffff:ffff:ffff:ffff",
        Special::Discard,
    ),
    (
        "2001::",
        "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Teredo,
    ),
    ("2001:1::", "2001:1::", Special::Protocol),
    (
        "2001:1::4",
        "2001:1:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Protocol,
    ),
    (
        "2001:2::",
        "2001:2:0:ffff:ffff:ffff:ffff:ffff",
        Special::Benchmarking,
    ),
    (
        "2001:2:1::",
        "2001:2:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Protocol,
    ),
    (
        "2001:4::",
        "2001:4:111:ffff:ffff:ffff:ffff:ffff",
        Special::Protocol,
    ),
    (
        "2001:4:113::",
        "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Protocol,
    ),
    (
        "2001:40::",
        "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Protocol,
    ),
    (
        "2001:db8::",
        "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Documentation,
    ),
    (
        "3fff::",
        "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Documentation,
    ),
    (
        "5f00::",
        "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Reserved,
    ),
    (
        "4000::",
        "5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Reserved,
    ),
    (
        "fc00::",
        "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Private,
    ),
    (
        "fe80::",
        "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::LinkLocal,
    ),
    (
        "fec0::",
        "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::SiteLocal,
    ),
    (
        "ff00::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        Special::Multicast,
    ),
];

#[test]
fn both_edges_of_every_range() {
    for &(first, last, expected) in RANGES {
        assert_eq!(class(first), Some(expected), "{first}");
        assert_eq!(class(last), Some(expected), "{last}");
    }
}

/// One step outside each edge that borders global space.
#[test]
fn neighbours_outside_the_ranges_are_global() {
    for global in [
        "1.0.0.0",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "191.255.255.255",
        "192.0.0.9",
        "192.0.0.10",
        "192.0.1.0",
        "192.0.1.255",
        "192.0.3.0",
        "192.88.98.255",
        "192.88.100.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "198.51.99.255",
        "198.51.101.0",
        "203.0.112.255",
        "203.0.114.0",
        "223.255.255.255",
        "8.8.8.8",
        "2000::",
        "2001:1::1",
        "2001:1::2",
        "2001:1::3",
        "2001:3::",
        "2001:3:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:4:112::",
        "2001:4:112:ffff:ffff:ffff:ffff:ffff",
        "2001:20::",
        "2001:3f:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:200::",
        "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:db9::",
        "2001:4860:4860::8888",
        "2606:4700::1111",
        "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "3fff:1000::",
        "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ] {
        assert_eq!(class(global), None, "{global} is global unicast");
    }
}

#[test]
fn embedded_ipv4_is_judged() {
    let refused = |text: &str| classify(text.parse().unwrap()).unwrap_err();
    let cases = [
        ("::ffff:127.0.0.1", Special::Loopback, "127.0.0.1"),
        (
            "::ffff:169.254.169.254",
            Special::LinkLocal,
            "169.254.169.254",
        ),
        ("::ffff:10.0.0.1", Special::Private, "10.0.0.1"),
        ("::127.0.0.1", Special::Ipv4Compatible, "127.0.0.1"),
        ("::8.8.8.8", Special::Ipv4Compatible, "8.8.8.8"),
        ("64:ff9b::7f00:1", Special::Loopback, "127.0.0.1"),
        ("64:ff9b::a00:1", Special::Private, "10.0.0.1"),
        ("64:ff9b::a9fe:a9fe", Special::LinkLocal, "169.254.169.254"),
        ("64:ff9b::c612:1", Special::Benchmarking, "198.18.0.1"),
        ("2002:7f00:1::", Special::Loopback, "127.0.0.1"),
        ("2002:a9fe:a9fe::1", Special::LinkLocal, "169.254.169.254"),
        ("2002:0:0::1", Special::Unspecified, "0.0.0.0"),
        (
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            Special::Teredo,
            "65.54.227.120",
        ),
    ];
    for (text, class, v4) in cases {
        let r = refused(text);
        assert_eq!(
            (r.class, r.embedded),
            (class, Some(v4.parse().unwrap())),
            "{text}"
        );
    }
    // Global IPv4 behind NAT64, 6to4 and the mapped form is global.
    for global in ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
        assert_eq!(class(global), None, "{global}");
    }
    assert_eq!(
        refused("64:ff9b::7f00:1").to_string(),
        "loopback (embeds 127.0.0.1)"
    );
}

/// Deterministic pseudo-random addresses (splitmix64), weighted towards the special ranges.
fn addresses(n: usize) -> impl Iterator<Item = IpAddr> {
    let mut x = 0x5eed_u64;
    std::iter::repeat_with(move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
    .take(n)
    .enumerate()
    .map(|(i, r)| {
        let (first, _, _) = RANGES[i % RANGES.len()];
        let base: IpAddr = first.parse().unwrap();
        match (base, i % 3) {
            // Near a range's start, anywhere in IPv4, anywhere in IPv6.
            (IpAddr::V4(b), 0) => {
                IpAddr::V4(Ipv4Addr::from(u32::from(b).wrapping_add(r as u32 % 4096)))
            }
            (IpAddr::V6(b), 0) => IpAddr::V6(Ipv6Addr::from(
                u128::from(b).wrapping_add(u128::from(r % 4096)),
            )),
            (_, 1) => IpAddr::V4(Ipv4Addr::from(r as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(
                (u128::from(r) << 64) | u128::from(r.rotate_left(17)),
            )),
        }
    })
}

/// An address is judged the same however it reaches the policy: as the literal a client writes
/// in its CONNECT line (parsed from text), as the `IpAddr` of a DNS answer, and for an IPv4
/// address as its IPv4-mapped and NAT64 forms (which a resolver or DNS64 can return for it).
#[test]
fn literal_and_resolved_forms_are_judged_alike() {
    use crate::destination::{Target, TargetHost};
    for ip in addresses(200_000) {
        let resolved = classify(ip);
        let literal = match ip {
            IpAddr::V4(v4) => format!("{v4}:443"),
            IpAddr::V6(v6) => format!("[{v6}]:443"),
        };
        let parsed = match Target::parse(&literal).unwrap().host {
            TargetHost::Ip(parsed) => parsed,
            other => panic!("{literal} parsed as {other:?}"),
        };
        assert_eq!(classify(parsed), resolved, "{literal}");
        if let IpAddr::V4(v4) = ip {
            let mapped = classify(IpAddr::V6(v4.to_ipv6_mapped()));
            assert_eq!(
                mapped.map_err(|r| r.class),
                resolved.map_err(|r| r.class),
                "{v4}"
            );
            let nat64 = Ipv6Addr::from((0x64_ff9b_u128 << 96) | u128::from(u32::from(v4)));
            let nat64 = classify(IpAddr::V6(nat64));
            assert_eq!(
                nat64.map_err(|r| r.class),
                resolved.map_err(|r| r.class),
                "{v4}"
            );
        }
    }
}
