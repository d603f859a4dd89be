//! Fuzzes the CONNECT request parser with arbitrary bytes, as a client can send them.
//!
//! The parser file is compiled in directly (it depends on std and httparse only), so the target
//! builds in seconds without the daemon's dependencies. Besides "no panic", it checks the
//! parser's promises: a complete head is never longer than the input or than `MAX_HEAD`; an
//! incomplete one is shorter than `MAX_HEAD`; only CONNECT has a target; a target prints in a
//! form that parses back to itself (the log line and the policy see the same destination).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../proxy-user/src/connect/request.rs"]
#[allow(dead_code)]
mod request;

fuzz_target!(|data: &[u8]| {
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
});
