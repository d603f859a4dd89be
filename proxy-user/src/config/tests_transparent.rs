//! Transparent-mode frontends: what parses, and what is refused with which positioned message.

use std::time::Duration;

use super::*;

const BACKEND: &str = "[[backend]]\nname = \"dd\"\nservers = [\"11.0.0.10:443\"]\n";

fn transparent(body: &str) -> Result<TransparentMode, String> {
    let text = format!(
        "[[frontend]]\nname = \"egress\"\nlisten = \"0.0.0.0:15001\"\nmode = \"transparent\"\n\
         {body}\n{BACKEND}"
    );
    let config = parse(&text, "t.toml").map_err(|e| e.to_string())?;
    match &config.frontends[0].mode {
        FrontendMode::Transparent(mode) => Ok(mode.clone()),
        other => panic!("expected transparent mode, got {other:?}"),
    }
}

#[test]
fn transparent_frontends_parse_with_defaults() {
    let mode = transparent("").unwrap();
    assert!(
        mode.allow_destinations.is_empty(),
        "nothing allowed by default"
    );
    assert_eq!(mode.backend, None);
    assert_eq!(mode.intercept, None);
    assert_eq!(mode.connect_timeout, Backend::DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(mode.sniff_timeout, TransparentMode::DEFAULT_SNIFF_TIMEOUT);

    let mode = transparent(
        "allow_destinations = [\".datadoghq.com:443\", \"203.0.113.7:443\"]\n\
         intercept = { ports = [443, 80], from = [\"10.0.0.0/8\", \"fd00::/8\"], local = true }\n\
         backend = \"dd\"\nsniff_timeout = \"2s\"\nconnect_timeout = \"3s\"",
    )
    .unwrap();
    assert_eq!(mode.allow_destinations.len(), 2);
    assert_eq!(mode.backend.as_deref(), Some("dd"));
    assert_eq!(
        mode.intercept,
        Some(Intercept {
            ports: vec![443, 80],
            from: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            local: true,
        })
    );
    assert_eq!(mode.sniff_timeout, Duration::from_secs(2));
    assert_eq!(mode.connect_timeout, Duration::from_secs(3));
}

#[test]
fn bad_transparent_frontends_are_refused_where_they_are_wrong() {
    let cases = [
        (
            "intercept = { ports = [] , local = true }",
            "t.toml:5:23: intercept ports: expected 1 to 64 ports",
        ),
        (
            "intercept = { ports = [443, 443], local = true }",
            "t.toml:5:29: duplicate intercept port 443",
        ),
        (
            "intercept = { ports = [0], local = true }",
            "t.toml:5:24: invalid intercept port 0: expected at least 1",
        ),
        (
            "intercept = { ports = [15001], local = true }",
            "t.toml:5:23: frontend \"egress\": intercept ports include the frontend's own port \
             15001; its connections would be redirected to itself",
        ),
        (
            "intercept = { ports = [443] }",
            "t.toml:5:13: frontend \"egress\": intercept captures nothing: set `from` (client \
             networks routed through this host) and/or `local = true` (this host's own processes)",
        ),
        (
            "intercept = { ports = [443], from = [\"10.0.0.0/33\"] }",
            "t.toml:5:38: invalid intercept network \"10.0.0.0/33\": expected an IP address or a CIDR \
             such as 10.0.0.0/8",
        ),
        (
            "intercept = { ports = [443], locale = true }",
            "t.toml:5:30: unknown field `locale`, expected one of `ports`, `from`, `local`",
        ),
        (
            "backend = \"nope\"",
            "t.toml:5:11: frontend \"egress\": backend \"nope\" is not defined",
        ),
        (
            "tls = { cert = \"c.pem\" }",
            "t.toml:5:7: frontend \"egress\": `tls` is not used in transparent mode (the agents' \
             TLS passes through to the intake untouched)",
        ),
        (
            "users = [{ name = \"a\", password = \"b\" }]",
            "t.toml:5:9: frontend \"egress\": `users` is only used in connect mode",
        ),
        (
            "allow_destinations = [\"*:443\"]",
            "t.toml:5:23: invalid destination \"*:443\": a rule matching every host would make an \
             open proxy; list the hosts or domains agents may reach",
        ),
        (
            "sniff_timeout = \"0s\"",
            "t.toml:5:17: invalid sniff_timeout \"0s\": expected more than zero",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(transparent(body).unwrap_err(), expected, "for {body}");
    }
}

#[test]
fn intercept_needs_a_listen_address_redirected_connections_reach() {
    let with_listen = |listen: &str, intercept: &str| {
        let text = format!(
            "[[frontend]]\nname = \"egress\"\nlisten = \"{listen}\"\nmode = \"transparent\"\n\
             intercept = {intercept}\n"
        );
        parse(&text, "t.toml").map(drop).map_err(|e| e.to_string())
    };
    assert!(with_listen("127.0.0.1:15001", "{ ports = [443], local = true }").is_ok());
    assert!(with_listen("[::]:15001", "{ ports = [443], from = [\"10.0.0.0/8\"] }").is_ok());
    assert_eq!(
        with_listen(
            "127.0.0.1:15001",
            "{ ports = [443], from = [\"10.0.0.0/8\"] }"
        )
        .unwrap_err(),
        "t.toml:5:13: frontend \"egress\": intercept redirects to this host's own port 15001: \
         listen on a wildcard address (0.0.0.0 or [::]), not 127.0.0.1"
    );
    assert_eq!(
        with_listen("10.1.2.3:15001", "{ ports = [443], local = true }").unwrap_err(),
        "t.toml:5:13: frontend \"egress\": intercept redirects to this host's own port 15001: \
         listen on a loopback or wildcard address (127.0.0.1, 0.0.0.0, [::]), not 10.1.2.3"
    );
    assert_eq!(
        with_listen("0.0.0.0:0", "{ ports = [443], local = true }").unwrap_err(),
        "t.toml:5:13: frontend \"egress\": intercept needs a fixed listen port, not 0"
    );
}

#[test]
fn the_outgoing_mark_is_configurable() {
    let text = "[global]\noutgoing_mark = 7\n[[frontend]]\nname = \"a\"\nlisten = \"0.0.0.0:1\"\n\
                mode = \"transparent\"\n";
    assert_eq!(parse(text, "t.toml").unwrap().global.outgoing_mark, 7);
    let text = "[global]\noutgoing_mark = 0\n[[frontend]]\nname = \"a\"\nlisten = \"0.0.0.0:1\"\n\
                mode = \"transparent\"\n";
    assert_eq!(
        parse(text, "t.toml").unwrap_err().to_string(),
        "t.toml:2:17: invalid outgoing_mark 0: expected at least 1"
    );
}
