//! Fuzzes transparent mode's peek at a client's first bytes ([`sniff::sniff`]: the TLS
//! ClientHello's SNI or the HTTP `Host`) with arbitrary bytes, as a redirected client can send
//! them.
//!
//! The sniff file is compiled in directly (it depends on std, rustls's `Acceptor` and httparse;
//! rustls without a crypto provider, which reading a ClientHello does not need). Besides "no
//! panic", it checks what the mode relies on:
//! - a closed client (or a full buffer) always gets a decision: the peek loop never waits for
//!   bytes that cannot come (issue 21);
//! - the decision follows the first byte: a TLS answer only for a handshake record, an HTTP
//!   answer only for a head that starts with an upper-case letter;
//! - an SNI is a DNS name the destination grammar reads as a name (what `check_name` resolves
//!   and matches against the rules), never an address or something it refuses;
//! - a `Host` value is one trimmed header value: no line break or NUL can reach the name check
//!   or the log line, and `host_without_port` returns a part of it;
//! - a prefix of an input that gives a ClientHello or an HTTP head, with the client still open,
//!   asks for more (`None`) or already gives the same answer: it is never refused early.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../proxy-user/src/transparent/sniff.rs"]
#[allow(dead_code)]
mod sniff;

/// The destination grammar (std only), for what the mode does with a name.
#[path = "../../proxy-user/src/destination/target.rs"]
#[allow(dead_code)]
mod target;

use sniff::{MAX_SNIFF, Sniffed, sniff};
use target::{Target, TargetHost};

fuzz_target!(|data: &[u8]| {
    let closed = sniff(data, true).expect("a closed client always gets a decision");
    let open = sniff(data, false);
    if data.len() >= MAX_SNIFF {
        assert_eq!(
            open.as_ref(),
            Some(&closed),
            "a full buffer is decided as closed"
        );
    }
    if let Some(open) = &open {
        assert_eq!(
            open, &closed,
            "more bytes cannot come, or the answer was already given"
        );
    }
    check_answer(data, &closed);
    // A few cuts of the input, the client still sending.
    if matches!(closed, Sniffed::Tls { .. } | Sniffed::Http { .. }) && data.len() < MAX_SNIFF {
        let last = usize::from(*data.last().unwrap_or(&0));
        for cut in [1, data.len() / 2, data.len() - 1, last * data.len() / 256] {
            if let Some(early) = sniff(&data[..cut.min(data.len())], false) {
                assert_eq!(early, closed, "a prefix of {cut} bytes decided differently");
            }
        }
    }
});

fn check_answer(data: &[u8], sniffed: &Sniffed) {
    match sniffed {
        Sniffed::Tls { sni } => {
            assert_eq!(data.first(), Some(&0x16), "TLS without a handshake record");
            if let Some(name) = sni {
                let target = Target::parse(&format!("{name}:443"))
                    .unwrap_or_else(|e| panic!("SNI {name:?} is not a destination: {e}"));
                assert!(
                    matches!(target.host, TargetHost::Name { .. }),
                    "SNI {name:?} reads as an address"
                );
            }
        }
        Sniffed::Http { host } => {
            assert!(
                data.first().is_some_and(u8::is_ascii_uppercase),
                "HTTP from a head that does not start with a method"
            );
            if let Some(value) = host {
                assert_eq!(value, value.trim(), "an untrimmed Host value");
                assert!(
                    !value.contains(['\r', '\n', '\0']),
                    "a Host value spanning lines: {value:?}"
                );
                let host = sniff::host_without_port(value);
                assert!(value.contains(host), "{host:?} is not a part of {value:?}");
            }
        }
        Sniffed::Other => {}
    }
}
