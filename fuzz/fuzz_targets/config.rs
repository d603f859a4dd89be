//! Fuzzes the config loader with arbitrary file contents, as `agent-proxy check` and `run` read
//! them: [`config::parse_bytes`] is what [`config::load`] calls once the file is read.
//!
//! The config module is compiled in directly (it depends on std, serde, toml, humantime, ipnet
//! and the destination grammar only), so the target builds without the daemon's dependencies
//! (aya and the eBPF build, tokio, hickory, aws-lc). Besides "no panic", it checks the loader's
//! promises:
//! - loading is deterministic: the same bytes load to an equal config, or fail with the same
//!   error (the daemon and `check` must agree, and a SIGHUP-time reload must too);
//! - every error renders as `ORIGIN:LINE:COL: message` (the format `check` promises, for an
//!   editor to jump to) with a 1-based position inside the text and a message of one line that
//!   quotes no control character (a quoted value must not drive the operator's terminal);
//! - a config that loads holds what the typed structs document, so nothing at run time
//!   re-checks it: at least one frontend, unique names made of `[A-Za-z0-9_.-]`, every backend
//!   a frontend names exists and has servers, ports are not 0, weights and TTL bounds in range.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../proxy-user/src/config/mod.rs"]
#[allow(dead_code)]
mod config;

include!("destination_modules.rs");

use config::{Config, ConfigError, FrontendMode, ServerSpec};

/// The origin errors start with, as a file name would.
const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let first = config::parse_bytes(data, ORIGIN);
    let again = config::parse_bytes(data, ORIGIN);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "one text, two configs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "one text, two errors"),
        _ => panic!("one text loaded once and failed once: {first:?} / {again:?}"),
    }
    match first {
        Ok(config) => check_config(&config),
        Err(e) => check_error(&e, &String::from_utf8_lossy(data)),
    }
});

/// `ORIGIN:LINE:COL: message`, the position inside `text` (for bytes that are not UTF-8, the
/// position is the first bad byte's, which the lossy text keeps in place).
fn check_error(e: &ConfigError, text: &str) {
    let shown = e.to_string();
    let (line, column) = e
        .position()
        .unwrap_or_else(|| panic!("a parse error without a position: {shown}"));
    let message = e.message();
    assert_eq!(shown, format!("{ORIGIN}:{line}:{column}: {message}"));
    assert!(!message.trim().is_empty(), "an empty message: {shown:?}");
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    assert!(
        !message.chars().any(hidden),
        "a control character in {shown:?}"
    );
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        (1..=lines.len()).contains(&line),
        "line {line} of a {}-line text: {shown:?}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    assert!(
        (1..=width + 1).contains(&column),
        "column {column} of a {width}-character line: {shown:?}"
    );
}

/// What the typed config documents about itself.
fn check_config(config: &Config) {
    assert!(!config.frontends.is_empty(), "a config without frontends");
    check_names("frontend", config.frontends.iter().map(|f| f.name.as_str()));
    check_names("backend", config.backends.iter().map(|b| b.name.as_str()));
    for f in &config.frontends {
        assert!(
            f.max_connections >= 1,
            "frontend {:?}: max_connections 0",
            f.name
        );
        let backend = match &f.mode {
            FrontendMode::Tcp { backend } => Some(backend),
            FrontendMode::Http(h) => {
                assert!(
                    !h.request_timeout.is_zero(),
                    "frontend {:?}: request_timeout 0",
                    f.name
                );
                Some(&h.backend)
            }
            FrontendMode::Transparent(t) => {
                if let Some(i) = &t.intercept {
                    assert!(
                        !i.ports.is_empty(),
                        "frontend {:?}: no intercept ports",
                        f.name
                    );
                    for (n, port) in i.ports.iter().enumerate() {
                        assert!(!i.ports[..n].contains(port), "port {port} twice");
                    }
                }
                t.backend.as_ref()
            }
            FrontendMode::Connect(c) => {
                assert!(
                    c.users
                        .iter()
                        .all(|u| !u.name.is_empty() && !u.name.contains(':')),
                    "frontend {:?}: a user name Basic credentials cannot carry",
                    f.name
                );
                None
            }
        };
        if let Some(name) = backend {
            assert!(
                config.backend(name).is_some(),
                "frontend {:?} names the missing backend {name:?}",
                f.name
            );
        }
        if let Some(tls) = &f.tls {
            assert!(
                !tls.certs.is_empty(),
                "frontend {:?}: TLS without certificates",
                f.name
            );
        }
        if let Some(limit) = &f.rate_limit {
            assert!(limit.connections >= 1 && !limit.per.is_zero(), "{limit:?}");
        }
    }
    for b in &config.backends {
        assert!(
            !b.servers.is_empty(),
            "backend {:?} without servers",
            b.name
        );
        for server in &b.servers {
            assert_ne!(server.addr.port, 0, "backend {:?}: port 0", b.name);
            assert!(
                (1..=ServerSpec::MAX_WEIGHT).contains(&server.weight),
                "backend {:?}: weight {}",
                b.name,
                server.weight
            );
        }
        assert!(
            b.dns.min_ttl <= b.dns.max_ttl,
            "backend {:?}: {:?}",
            b.name,
            b.dns
        );
        assert!(
            !b.connect_timeout.is_zero(),
            "backend {:?}: connect_timeout 0",
            b.name
        );
    }
    assert!(config.global.max_connections >= 1);
    assert!(config.global.kernel_window >= config::Global::MIN_KERNEL_WINDOW);
}

/// Names are metric labels: unique within their kind, made of `[A-Za-z0-9_.-]`.
fn check_names<'a>(kind: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen = Vec::new();
    for name in names {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')),
            "{kind} name {name:?}"
        );
        assert!(!seen.contains(&name), "two {kind}s named {name:?}");
        seen.push(name);
    }
}
