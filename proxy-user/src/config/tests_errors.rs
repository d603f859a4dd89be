//! Configs that must be refused, with the exact `ORIGIN:LINE:COL: message` each produces.

use super::*;

/// A valid tail appended to snippets that test the global section or one bad frontend.
const TAIL: &str = r#"
[[backend]]
name = "b"
servers = ["127.0.0.1:2"]
"#;

fn err(text: &str) -> String {
    match parse(text, "t.toml") {
        Ok(config) => panic!("expected an error, parsed {config:?}"),
        Err(err) => err.to_string(),
    }
}

/// `text` plus one valid frontend and backend, for testing the global section.
fn global_err(global: &str) -> String {
    err(&format!(
        "[global]\n{global}\n[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n{TAIL}"
    ))
}

#[test]
fn syntax_errors() {
    assert_eq!(err("[global\n"), "t.toml:1:8: unclosed table, expected `]`");
    assert_eq!(
        err("[global]\nadmin = off\n"),
        "t.toml:2:9: string values must be quoted, expected literal string"
    );
    assert_eq!(
        global_err("retries = 1"),
        "t.toml:2:1: unknown field `retries`, expected one of `max_connections`, `dataplane`, \
         `admin`, `drain_timeout`, `log_format`, `nameservers`, `kernel_sndbuf`, `kernel_window`, `kernel_after`, `local_agents`, \
         `outgoing_mark`, `tcp_keepalive`, `dns`, `pid_file`"
    );
    assert_eq!(
        global_err("dataplane = \"auto\"\ndataplane = \"kernel\""),
        "t.toml:3:1: duplicate key `dataplane`"
    );
    // The destinations' bounds are checked as a backend's are.
    assert_eq!(
        global_err("dns = { min_ttl = \"10m\", max_ttl = \"1m\" }"),
        "t.toml:2:36: dns min_ttl (10m) must not exceed max_ttl (1m)"
    );
}

#[test]
fn unknown_keys_point_at_the_key() {
    assert_eq!(
        err("[[frontend]]\nname = \"a\"\n  lisen = \"x\"\n"),
        "t.toml:3:3: unknown field `lisen`, expected one of `name`, `listen`, `mode`, `backend`, \
         `allow`, `max_connections`, `tls`, `idle_timeout`, `tcp_keepalive`, `max_connections_queue`, \
         `users`, `allow_destinations`, `connect_timeout`, \
         `request_timeout`, `rate_limit`, `request_metrics`, `intercept`, `sniff_timeout`"
    );
    assert_eq!(
        err("[globals]\n"),
        "t.toml:1:2: unknown field `globals`, expected one of `global`, `frontend`, `backend`"
    );
    assert_eq!(
        err("[[backend]]\nname = \"b\"\nserver = []\n"),
        "t.toml:3:1: unknown field `server`, expected one of `name`, `servers`, `balance`, \
         `connect_timeout`, `retries`, `tls`, `health_check`, `passive`, `dns`"
    );
}

#[test]
fn wrong_types_point_at_the_value() {
    assert_eq!(
        global_err("max_connections = \"many\""),
        "t.toml:2:19: invalid type: string \"many\", expected an integer"
    );
    assert_eq!(
        global_err("nameservers = \"1.1.1.1\""),
        "t.toml:2:15: invalid type: string \"1.1.1.1\", expected an array"
    );
    assert_eq!(
        global_err("nameservers = [53]"),
        "t.toml:2:16: invalid type: integer `53`, expected a string"
    );
    assert_eq!(
        err("global = 1\n"),
        "t.toml:1:10: invalid type: integer `1`, expected a table"
    );
    assert_eq!(
        err("[frontend]\nname = \"a\"\n"),
        "t.toml:1:1: invalid type: map, expected an array"
    );
}

#[test]
fn missing_required_keys_point_at_the_table() {
    assert_eq!(
        err("[[frontend]]\nname = \"a\"\n"),
        "t.toml:1:1: missing field `listen`"
    );
    assert_eq!(
        err(&format!(
            "[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nmode = \"tcp\"\n{TAIL}"
        )),
        "t.toml:1:1: frontend \"a\": missing `backend` (required in tcp mode)"
    );
    assert_eq!(err(""), "t.toml:1:1: at least one [[frontend]] is required");
    assert_eq!(
        err("\n\nfrontend = []\n"),
        "t.toml:3:12: at least one [[frontend]] is required"
    );
}

#[test]
fn bad_values_in_global() {
    let cases = [
        (
            "max_connections = 0",
            "t.toml:2:19: invalid max_connections 0: expected at least 1",
        ),
        (
            "dataplane = \"ebpf\"",
            "t.toml:2:13: invalid dataplane \"ebpf\": expected auto, kernel or userspace",
        ),
        (
            "admin = \"9090\"",
            "t.toml:2:9: invalid admin address \"9090\": expected IP:PORT or \"off\"",
        ),
        (
            "drain_timeout = \"30\"",
            "t.toml:2:17: invalid drain_timeout \"30\": expected a duration such as \"5s\" or \"500ms\"",
        ),
        (
            "log_format = \"yaml\"",
            "t.toml:2:14: invalid log_format \"yaml\": expected text or json",
        ),
        (
            "nameservers = [\"1.1.1.1:53\", \"dns.google:53\"]",
            "t.toml:2:30: invalid nameserver \"dns.google:53\": expected IP:PORT",
        ),
        (
            "kernel_sndbuf = -1",
            "t.toml:2:17: invalid kernel_sndbuf -1: expected at least 0",
        ),
        (
            "kernel_sndbuf = 4294967296",
            "t.toml:2:17: invalid kernel_sndbuf 4294967296: expected at most 2147483647",
        ),
        (
            "kernel_window = 4096",
            "t.toml:2:17: invalid kernel_window 4096: expected at least 65536",
        ),
        (
            "local_agents = \"yes\"",
            "t.toml:2:16: invalid local_agents \"yes\": expected true, false or \"always\"",
        ),
    ];
    for (global, expected) in cases {
        assert_eq!(global_err(global), expected, "for {global}");
    }
}

/// One frontend with `body`, then the valid backend "b".
fn frontend_err(body: &str) -> String {
    err(&format!("[[frontend]]\n{body}\n{TAIL}"))
}

#[test]
fn bad_values_in_frontends() {
    let cases = [
        (
            "name = \"\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"",
            "t.toml:2:8: frontend name must not be empty",
        ),
        (
            "name = \"my intake\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"",
            "t.toml:2:8: invalid frontend name \"my intake\": expected letters, digits, '_', '.' or '-'",
        ),
        (
            "name = \"a\"\nlisten = \"1.2.3.4\"\nbackend = \"b\"",
            "t.toml:3:10: invalid listen address \"1.2.3.4\": expected IP:PORT",
        ),
        (
            "name = \"a\"\nlisten = \"::1:80\"\nbackend = \"b\"",
            "t.toml:3:10: invalid listen address \"::1:80\": expected IP:PORT",
        ),
        (
            "name = \"a\"\nlisten = \"127.0.0.1:1\"\nmode = \"udp\"\nbackend = \"b\"",
            "t.toml:4:8: invalid mode \"udp\": expected tcp, connect, transparent or http",
        ),
        (
            "name = \"a\"\nlisten = \"127.0.0.1:1\"\nmode = \"http\"",
            "t.toml:1:1: frontend \"a\": missing `backend` (required in http mode)",
        ),
        (
            "name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\nrequest_metrics = false",
            "t.toml:5:19: frontend \"a\": `request_metrics` is only used in http mode",
        ),
        (
            "name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\nallow = [\"10.0.0.0/8\", \"10.0.0.0/40\"]",
            "t.toml:5:24: invalid allow entry \"10.0.0.0/40\": expected an IP address or a CIDR such as 10.0.0.0/8",
        ),
        (
            "name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\nmax_connections = -5",
            "t.toml:5:19: invalid max_connections -5: expected at least 1",
        ),
        (
            "name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"nope\"",
            "t.toml:4:11: frontend \"a\": backend \"nope\" is not defined",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(frontend_err(body), expected, "for {body}");
    }
}

#[test]
fn duplicates_point_at_the_second_one() {
    let text = r#"[[frontend]]
name = "a"
listen = "127.0.0.1:1"
backend = "b"
[[frontend]]
name = "a"
listen = "127.0.0.1:2"
backend = "b"
"#;
    assert_eq!(err(text), "t.toml:6:8: duplicate frontend name \"a\"");

    let text = r#"[[frontend]]
name = "a"
listen = "[::1]:1"
backend = "b"
[[frontend]]
name = "c"
listen = "[::1]:1"
backend = "b"
"#;
    assert_eq!(
        err(text),
        "t.toml:7:10: frontend \"c\": listen address [::1]:1 is already used by frontend \"a\""
    );

    let text = r#"[[frontend]]
name = "a"
listen = "0.0.0.0:80"
backend = "b"
[[frontend]]
name = "c"
listen = "127.0.0.1:80"
backend = "b"
"#;
    assert_eq!(
        err(text),
        "t.toml:7:10: frontend \"c\": listen address 127.0.0.1:80 overlaps 0.0.0.0:80 of frontend \"a\""
    );

    let text = format!(
        "[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n{TAIL}{TAIL}"
    );
    assert_eq!(err(&text), "t.toml:11:8: duplicate backend name \"b\"");
}

/// The valid frontend "a" -> "b", then one backend "b" with `body`.
fn backend_err(body: &str) -> String {
    err(&format!(
        "[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n[[backend]]\nname = \"b\"\n{body}\n"
    ))
}

#[test]
fn bad_values_in_backends() {
    assert_eq!(
        backend_err(""),
        "t.toml:5:1: backend \"b\": at least one server is required"
    );
    let cases = [
        (
            "servers = []",
            "t.toml:7:11: backend \"b\": at least one server is required",
        ),
        (
            "servers = [\"10.0.0.1:80\", \"example.com\"]",
            "t.toml:7:27: invalid server address \"example.com\": expected HOST:PORT (IPv6 as [ADDR]:PORT)",
        ),
        (
            "servers = [\"2001:db8::1:443\"]",
            "t.toml:7:12: invalid server address \"2001:db8::1:443\": expected HOST:PORT (IPv6 as [ADDR]:PORT)",
        ),
        (
            "servers = [\"example.com:70000\"]",
            "t.toml:7:12: invalid port in server address \"example.com:70000\": expected 1-65535",
        ),
        (
            "servers = [\"exa_mple.com:443\"]",
            "t.toml:7:12: invalid hostname \"exa_mple.com\" in server address \"exa_mple.com:443\": expected an IP address or DNS name",
        ),
        (
            "servers = [\"10.0.0.256:443\"]",
            "t.toml:7:12: invalid hostname \"10.0.0.256\" in server address \"10.0.0.256:443\": expected an IP address or DNS name",
        ),
        (
            "servers = [\"h:1\"]\nbalance = \"first\"",
            "t.toml:8:11: invalid balance \"first\": expected roundrobin, leastconn or random",
        ),
        (
            "servers = [\"h:1\"]\nconnect_timeout = \"5 parsecs\"",
            "t.toml:8:19: invalid connect_timeout \"5 parsecs\": expected a duration such as \"5s\" or \"500ms\"",
        ),
        (
            "servers = [\"h:1\"]\nconnect_timeout = \"0s\"",
            "t.toml:8:19: invalid connect_timeout \"0s\": expected more than zero",
        ),
        (
            "servers = [\"h:1\"]\nretries = -1",
            "t.toml:8:11: invalid retries -1: expected at least 0",
        ),
        (
            "servers = [{ address = \"h:1\", weight = 0 }]",
            "t.toml:7:40: invalid weight 0: expected at least 1",
        ),
        (
            "servers = [{ address = \"h:1\", weight = 257 }]",
            "t.toml:7:40: invalid weight 257: expected at most 256",
        ),
        (
            "servers = [{ address = \"h\" }]",
            "t.toml:7:24: invalid server address \"h\": expected HOST:PORT (IPv6 as [ADDR]:PORT)",
        ),
        (
            "servers = [{ addr = \"h:1\" }]",
            "t.toml:7:14: unknown field `addr`, expected `address` or `weight`",
        ),
        (
            "servers = [42]",
            "t.toml:7:12: invalid type: integer `42`, expected \"HOST:PORT\" or { address = \"HOST:PORT\", weight = N }",
        ),
        (
            "servers = [\"h:1\"]\nhealth_check = { interval = \"0s\" }",
            "t.toml:8:29: invalid interval \"0s\": expected more than zero",
        ),
        (
            "servers = [\"h:1\"]\nhealth_check = { interval = \"1s\", timeout = \"2s\" }",
            "t.toml:8:45: health_check timeout (2s) must not exceed its interval (1s)",
        ),
        (
            "servers = [\"h:1\"]\nhealth_check = { rise = 0 }",
            "t.toml:8:25: invalid rise 0: expected at least 1",
        ),
        (
            "servers = [\"h:1\"]\nhealth_check = { expect_status = 200 }",
            "t.toml:8:34: expect_status needs http_path",
        ),
        (
            "servers = [\"h:1\"]\nhealth_check = { http_path = \"health\" }",
            "t.toml:8:30: invalid http_path \"health\": expected a path starting with '/', without spaces",
        ),
        (
            "servers = [\"h:1\"]\nhealth_check = { http_path = \"/\", expect_status = 99 }",
            "t.toml:8:51: invalid expect_status 99: expected at least 100",
        ),
        (
            "servers = [\"h:1\"]\nhealth_check = { intervall = \"5s\" }",
            "t.toml:8:18: unknown field `intervall`, expected one of `interval`, `timeout`, `rise`, `fall`, `http_path`, `expect_status`",
        ),
        (
            "servers = [\"h:1\"]\npassive = { backoff = \"soon\" }",
            "t.toml:8:23: invalid backoff \"soon\": expected a duration such as \"5s\" or \"500ms\"",
        ),
        (
            "servers = [\"h:1\"]\ndns = { min_ttl = \"500ms\" }",
            "t.toml:8:19: invalid min_ttl \"500ms\": expected at least 1s",
        ),
        (
            "servers = [\"h:1\"]\ndns = { min_ttl = \"10m\", max_ttl = \"1m\" }",
            "t.toml:8:36: dns min_ttl (10m) must not exceed max_ttl (1m)",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(backend_err(body), expected, "for {body}");
    }
}

#[test]
fn columns_count_characters_not_bytes() {
    // "é" is two bytes: a byte count would say column 52.
    assert_eq!(
        err(r#"frontend = [{ backend = "é", name = "a", listen = "x" }]"#),
        "t.toml:1:51: invalid listen address \"x\": expected IP:PORT"
    );
}

#[test]
fn bad_tls_settings() {
    let base = "name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"";
    let frontend_cases = [
        (
            "tls = {}",
            "t.toml:5:7: tls: a certificate is required: `cert` (and `key`, unless the cert file \
             holds it) or `certs = [{ cert, key }]`",
        ),
        (
            "tls = { key = \"k.pem\" }",
            "t.toml:5:15: tls: `key` without `cert`",
        ),
        (
            "tls = { cert = \"\" }",
            "t.toml:5:16: invalid cert: expected a file path, got an empty string",
        ),
        (
            "tls = { cert = \"c.pem\", handshake_timeout = \"0s\" }",
            "t.toml:5:45: invalid handshake_timeout \"0s\": expected more than zero",
        ),
        (
            "tls = { cert = \"c.pem\", crt = \"x\" }",
            "t.toml:5:25: unknown field `crt`, expected one of `cert`, `key`, `certs`, \
             `client_ca`, `handshake_timeout`",
        ),
        (
            "tls = { certs = [{ key = \"k.pem\" }] }",
            "t.toml:5:18: missing field `cert`",
        ),
    ];
    for (extra, expected) in frontend_cases {
        assert_eq!(
            frontend_err(&format!("{base}\n{extra}")),
            expected,
            "for {extra}"
        );
    }
    let backend_cases = [
        (
            "servers = [\"h:1\"]\ntls = { sni = \"not a name\" }",
            "t.toml:8:15: invalid sni \"not a name\": expected a DNS name or an IP address",
        ),
        (
            "servers = [\"h:1\"]\ntls = { verify = \"no\" }",
            "t.toml:8:18: invalid type: string \"no\", expected a boolean",
        ),
        (
            "servers = [\"h:1\"]\ntls = { ca = \"x\" }",
            "t.toml:8:9: unknown field `ca`, expected one of `sni`, `ca_file`, `verify`",
        ),
    ];
    for (body, expected) in backend_cases {
        assert_eq!(backend_err(body), expected, "for {body}");
    }
}

/// A config with duration key `key` set to `value`, everything else valid.
fn with_duration(key: &str, value: &str) -> String {
    let connect = |line: &str| {
        format!(
            "[[frontend]]\nname = \"c\"\nlisten = \"127.0.0.1:3\"\nmode = \"connect\"\n\
             allow_destinations = [\"a.example:443\"]\n{line}\n"
        )
    };
    let backend = |line: &str| {
        format!(
            "[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n\
                 [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\n{line}\n"
        )
    };
    match key {
        "drain_timeout" => format!(
            "[global]\ndrain_timeout = \"{value}\"\n[[frontend]]\nname = \"a\"\n\
             listen = \"127.0.0.1:1\"\nbackend = \"b\"\n{TAIL}"
        ),
        "connect_timeout" | "request_timeout" => connect(&format!("{key} = \"{value}\"")),
        "sniff_timeout" => format!(
            "[[frontend]]\nname = \"t\"\nlisten = \"0.0.0.0:3\"\nmode = \"transparent\"\n\
             sniff_timeout = \"{value}\"\n"
        ),
        "rate_limit per" => connect(&format!(
            "rate_limit = {{ connections = 1, per = \"{value}\" }}"
        )),
        "handshake_timeout" => format!(
            "[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n\
             tls = {{ cert = \"c.pem\", key = \"k.pem\", handshake_timeout = \"{value}\" }}\n{TAIL}"
        ),
        "interval" => backend(&format!("health_check = {{ interval = \"{value}\" }}")),
        // The timeout may not exceed the interval: the longest interval.
        "timeout" => backend(&format!(
            "health_check = {{ interval = \"1h\", timeout = \"{value}\" }}"
        )),
        "backoff" => backend(&format!("passive = {{ backoff = \"{value}\" }}")),
        "min_ttl" => backend(&format!(
            "dns = {{ min_ttl = \"{value}\", max_ttl = \"24h\" }}"
        )),
        "max_ttl" => backend(&format!("dns = {{ max_ttl = \"{value}\" }}")),
        "idle_timeout" | "max_connections_queue" => connect(&format!("{key} = \"{value}\"")),
        "tcp_keepalive idle" => connect(&format!("tcp_keepalive = {{ idle = \"{value}\" }}")),
        "tcp_keepalive interval" => format!(
            "[global]\ntcp_keepalive = {{ interval = \"{value}\" }}\n[[frontend]]\nname = \"a\"\n\
             listen = \"127.0.0.1:1\"\nbackend = \"b\"\n{TAIL}"
        ),
        other => panic!("duration key {other:?} has no case here: add one"),
    }
}

/// Every duration key has a bound: the bound itself passes, one second more and the value that
/// used to switch the timeouts off fail `check` with a position (issue 21).
#[test]
fn every_duration_key_has_an_upper_bound() {
    for &(key, max) in value::DURATION_LIMITS {
        let at_max = humantime::format_duration(max).to_string();
        if let Err(e) = parse(&with_duration(key, &at_max), "t.toml") {
            panic!("{key} = {at_max} is within the bound: {e}");
        }
        let over = format!("{}s", max.as_secs() + 1);
        for value in [over.as_str(), "18446744073709551615s"] {
            let e = err(&with_duration(key, value));
            let (position, message) = e.split_at(e.find(": ").unwrap());
            let mut parts = position.split(':');
            assert_eq!(parts.next(), Some("t.toml"), "{e}");
            assert!(parts.all(|n| n.parse::<usize>().is_ok()), "{e}");
            let short_key = key.rsplit(' ').next().unwrap();
            assert!(
                message.contains(&format!("\"{value}\": at most {at_max}"))
                    && message.contains(short_key),
                "{key} = {value}: {e}"
            );
        }
    }
}

#[test]
fn an_overflowing_duration_says_so() {
    let e = global_err("drain_timeout = \"99999999999999999999999s\"");
    assert!(e.starts_with("t.toml:2:17: invalid drain_timeout"), "{e}");
    assert!(e.ends_with("the number is too large"), "{e}");
}

/// A file that is not UTF-8 gets the line and column of its first bad byte.
#[test]
fn non_utf8_text_is_positioned() {
    let bytes = b"[global]\nadmin = \"127.0.0.1:9090\"\n# caf\xe9\n";
    let e = super::parse_bytes(bytes, "t.toml").unwrap_err().to_string();
    assert_eq!(
        e,
        "t.toml:3:6: the file is not UTF-8 text (byte 0xe9); save it as UTF-8"
    );
}

/// Control characters from the file never reach a terminal raw: escaped in every message.
#[test]
fn control_characters_are_escaped_in_messages() {
    // TOML's own escapes put the raw characters in the value.
    let e = global_err("drain_timeout = \"1\\u001b[31mred\\u0007\"");
    assert!(!e.chars().any(char::is_control), "{e:?}");
    assert!(e.contains("\\u{1b}[31mred\\u{7}"), "{e}");
    let e = global_err("drain_timeout = \"x\u{202e}y\"");
    assert!(e.contains("x\\u{202e}y"), "bidi override not escaped: {e}");
}

#[test]
fn bad_timeouts_and_keepalives() {
    let cases = [
        (
            "idle_timeout = \"soon\"",
            "t.toml:5:16: invalid idle_timeout \"soon\": expected a duration such as \"5s\" or \"500ms\"",
        ),
        (
            "tcp_keepalive = { idle = \"1500ms\" }",
            "t.toml:5:26: invalid tcp_keepalive idle \"1500ms\": expected whole seconds, at least 1s",
        ),
        (
            "tcp_keepalive = { interval = \"0s\" }",
            "t.toml:5:30: invalid tcp_keepalive interval \"0s\": expected whole seconds, at least 1s",
        ),
        (
            "tcp_keepalive = { count = 128 }",
            "t.toml:5:27: invalid tcp_keepalive count 128: expected at most 127",
        ),
        (
            "tcp_keepalive = { idle = \"1s\", probes = 3 }",
            "t.toml:5:32: unknown field `probes`, expected one of `idle`, `interval`, `count`",
        ),
        (
            "max_connections_queue = 5",
            "t.toml:5:25: invalid type: integer `5`, expected a string",
        ),
    ];
    for (line, expected) in cases {
        let body = format!("name = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n{line}");
        assert_eq!(frontend_err(&body), expected, "for {line}");
    }
}
