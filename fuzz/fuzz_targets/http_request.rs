//! Fuzzes what a plain-HTTP request of a connect frontend meets before hyper does: the
//! absolute-form target parser, the `api` label normaliser and its bounded set, and the
//! framing scanner that finds each head of a kept-alive connection.
//!
//! The daemon files are compiled in directly (std, httparse, thiserror, ipnet, tracing), as in
//! `connect_request`. Besides "no panic", it checks their promises:
//! - a parsed target has a port, an origin-form path starting with `/`, prints in a form that
//!   parses back to itself, and `http://HOST ORIGIN` parses back to the same request;
//! - an `api` label has no query, collapsing it again changes nothing, no segment of it is an
//!   id, and one frontend's set never holds more than `MAX_APIS` values besides `other`;
//! - the scanner gives the same result however the stream is cut into reads (the first byte
//!   picks the cut), never checks more than it was given, and what it holds back (an
//!   incomplete head or line) stays under `MAX_HEAD`: the stream's buffer is bounded.
#![no_main]

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;

#[path = "../../proxy-user/src/http"]
#[allow(dead_code)]
mod http {
    pub mod absolute;
    pub mod api;
    pub mod request;
    pub mod scan;
}

include!("destination_modules.rs");

use http::request::MAX_HEAD;
use http::scan::{Scanner, Stop};
use http::{absolute, api};

/// One frontend's `api` set across the run, and every label it gave.
static APIS: LazyLock<(api::Apis, Mutex<HashSet<String>>)> =
    LazyLock::new(|| (api::Apis::default(), Mutex::new(HashSet::new())));

fn check_absolute(text: &str) {
    let Ok(a) = absolute::parse(text) else {
        return;
    };
    assert!(a.target.port != 0 && a.origin.starts_with('/'), "{text:?}: {a:?}");
    let shown = a.target.to_string();
    assert_eq!(destination::Target::parse(&shown).as_ref(), Ok(&a.target), "{shown}");
    let again = format!("http://{}{}", a.host, a.origin);
    assert_eq!(absolute::parse(&again).as_ref(), Ok(&a), "{text:?} -> {again:?}");
}

fn check_api(text: &str) {
    let label = api::normalize(text);
    assert!(!label.contains(['?', '#']), "{text:?} -> {label:?}");
    assert_eq!(api::normalize(&label), label, "{text:?}");
    assert!(label.split('/').all(|s| s.is_empty() || s == api::ID || api::normalize(s) == s));
    let (apis, seen) = &*APIS;
    let given = apis.label(text);
    assert!(given.label == api::OTHER || given.label == label);
    assert!(given.label.len() <= api::MAX_API_LEN || given.label == api::OTHER);
    let mut seen = seen.lock().unwrap();
    seen.insert(given.label);
    assert!(seen.len() <= api::MAX_APIS + 1, "{} api values", seen.len());
    let method = api::method_label(text);
    assert!(method == api::OTHER || method == text);
}

/// The stop without the refused head's first line, which depends on how much was read.
fn kind(stop: &Option<Stop>) -> Option<Result<String, &'static str>> {
    stop.as_ref().map(|s| match s {
        Stop::Head { error, .. } => Ok(error.to_string()),
        Stop::Body(why) => Err(*why),
    })
}

fn check_scan(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let (whole, stop) = Scanner::default().advance(stream);
    assert!(whole <= stream.len());
    if stop.is_none() {
        assert!(stream.len() - whole < MAX_HEAD, "{} bytes held back", stream.len() - whole);
    }
    let cut = usize::from(cut) * stream.len() / 255;
    let mut scanner = Scanner::default();
    let (first, first_stop) = scanner.advance(&stream[..cut]);
    let (n, s) = if first_stop.is_some() {
        (first, first_stop)
    } else {
        let (second, s) = scanner.advance(&stream[first..]);
        (first + second, s)
    };
    assert_eq!((n, kind(&s)), (whole, kind(&stop)), "cut at {cut}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_absolute(text);
        check_api(text);
    }
    check_scan(data);
});
