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
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../proxy-user/src/connect/request.rs"]
#[allow(dead_code)]
mod request;

fuzz_target!(|data: &[u8]| {
    check_parse(data);
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
                assert_eq!(request::Target::parse(&shown).as_ref(), Ok(target), "{shown}");
            }
        }
        Ok(None) => assert!(data.len() < request::MAX_HEAD),
        Err(_) => {}
    }
}
