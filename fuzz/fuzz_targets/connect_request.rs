//! Fuzzes the CONNECT request parser with arbitrary bytes, as a client can send them.
//!
//! The parser file is compiled in directly (it depends on std and httparse only), so the target
//! builds in seconds without the daemon's dependencies. Besides "no panic", it checks the
//! parser's promises: a complete head is never longer than the input or than `MAX_HEAD`; an
//! incomplete one is shorter than `MAX_HEAD`; only CONNECT has a target; a target prints in a
//! form that parses back to itself (the log line and the policy see the same destination).
//!
//! It also drives the head reader's decision ([`request::step`]) as a client can end a head:
//! for a cut of the input where the client closes (FIN) or resets (RST), the reader must never
//! wait for more - a closed socket stays readable, so a wait there spins and freezes the daemon
//! (issue 21) - and a client still open is waited for only while its head is incomplete and
//! under `MAX_HEAD`.
//!
//! And the destination policy (issue 20): for any address - from the input as a DNS answer
//! would give it, or as the literal of a CONNECT request - a tunnel is opened (the 200) only to
//! a global unicast address or one a rule names; never to a refused class.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../proxy-user/src/http"]
#[allow(dead_code)]
mod http {
    pub mod absolute;
    pub mod request;
}
use http::request;

include!("destination_modules.rs");

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use destination::policy::{DestinationRule, Judgement, Policy};

/// A policy as an operator writes one: names, a domain with any port, one literal and one
/// network of private addresses.
static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::new(
        [".example.test:*", "intake.example.com:443", "10.0.0.5:8443", "10.20.0.0/16:443"]
            .iter()
            .map(|r| DestinationRule::parse(r).unwrap())
            .collect(),
    )
});

/// Whether a rule of [`POLICY`] names `addr` (and so may let a special-purpose address through).
fn named(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    (ip == IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)) && addr.port() == 8443)
        || (matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [10, 20]) && addr.port() == 443)
}

/// The policy's promise: an address is dialed (the tunnel's 200) only if it is global unicast
/// or a rule names it, and the classifier agrees with itself on the mapped form.
fn check_policy(addr: SocketAddr) {
    let judged = POLICY.judge(addr);
    let class = address_class::classify(addr.ip());
    match judged {
        Judgement::Global => assert!(class.is_ok(), "{addr} dialed as global: {class:?}"),
        Judgement::Named(r) => assert!(named(addr) && class == Err(r), "{addr} named: {r}"),
        Judgement::Refused(r) => assert!(class == Err(r) && !named(addr), "{addr}: {r}"),
    }
    if let IpAddr::V4(v4) = addr.ip() {
        let mapped = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port());
        assert_eq!(POLICY.judge(mapped).dialable(), judged.dialable(), "{addr} vs {mapped}");
    }
}

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    // As a DNS answer: the first 18 bytes are an address and a port.
    if let Some(bytes) = data.get(..18) {
        let port = u16::from_be_bytes([bytes[16], bytes[17]]);
        let v6: [u8; 16] = bytes[..16].try_into().unwrap();
        check_policy(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(v6)), port));
        let v4: [u8; 4] = bytes[..4].try_into().unwrap();
        check_policy(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(v4)), port));
    }
    // As a CONNECT request: a literal target is dialed as it is, so the same promise holds.
    if let Ok(Some(request::Request { target: Some(target), .. })) = request::parse(data)
        && let destination::target::TargetHost::Ip(ip) = target.host
        && POLICY.allows(&target)
    {
        let addr = SocketAddr::new(ip, target.port);
        check_policy(addr);
        assert!(named(addr), "{addr} passed the rules without a rule naming it");
    }
    // The first byte picks where the client stops sending; the rest is what it sent.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) * data.len() / 255;
    let sent = &data[..cut];
    for closed in [false, true] {
        let step = request::step(request::Peeked::Bytes { bytes: sent, closed });
        if closed {
            assert_ne!(step, request::Step::Wait, "waited for a closed client: {sent:?}");
        }
        match step {
            request::Step::Wait => assert!(sent.len() < request::MAX_HEAD),
            request::Step::Gone { reset, sent: n } => {
                assert!(closed && !reset && n == sent.len());
                assert_eq!(request::parse(sent), Ok(None));
            }
            request::Step::Complete(req) => assert_eq!(request::parse(sent), Ok(Some(req))),
            request::Step::Refuse(e) => assert_eq!(request::parse(sent), Err(e)),
        }
    }
    assert_eq!(
        request::step(request::Peeked::Reset),
        request::Step::Gone { reset: true, sent: 0 }
    );
});

fn check_parse(data: &[u8]) {
    match request::parse(data) {
        Ok(Some(req)) => {
            assert!(req.head_len <= data.len() && req.head_len <= request::MAX_HEAD);
            assert_eq!(req.target.is_some(), req.method == "CONNECT");
            if let Some(target) = &req.target {
                let shown = target.to_string();
                assert_eq!(destination::Target::parse(&shown).as_ref(), Ok(target), "{shown}");
            }
        }
        Ok(None) => assert!(data.len() < request::MAX_HEAD),
        Err(_) => {}
    }
}
