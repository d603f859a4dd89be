//! Connect-mode frontends and the per-client rate limit: what parses, and what is refused
//! with which positioned message.

use std::time::Duration;

use super::*;

fn connect_frontend(body: &str) -> Result<Frontend, String> {
    let text = format!(
        "[[frontend]]\nname = \"proxy\"\nlisten = \"127.0.0.1:3128\"\nmode = \"connect\"\n{body}\n"
    );
    parse(&text, "t.toml")
        .map(|config| config.frontends[0].clone())
        .map_err(|e| e.to_string())
}

fn connect_mode(body: &str) -> ConnectMode {
    match connect_frontend(body)
        .unwrap_or_else(|e| panic!("{e}"))
        .mode
    {
        FrontendMode::Connect(mode) => mode,
        other => panic!("expected connect mode, got {other:?}"),
    }
}

#[test]
fn connect_frontends_parse_with_defaults() {
    let mode = connect_mode("");
    assert!(mode.users.is_empty());
    assert!(
        mode.allow_destinations.is_empty(),
        "nothing allowed by default"
    );
    assert_eq!(mode.connect_timeout, Backend::DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(mode.request_timeout, ConnectMode::DEFAULT_REQUEST_TIMEOUT);

    let mode = connect_mode(
        "users = [{ name = \"agent\", password = \"s3cret\" }, { name = \"b\", password = \"x\" }]\n\
         allow_destinations = [\".datadoghq.com:443\", \"intake.example.com.:443\", \"[::1]:*\"]\n\
         connect_timeout = \"750ms\"\nrequest_timeout = \"3s\"",
    );
    assert_eq!(
        mode.users,
        vec![
            User::new("agent".into(), "s3cret".into()),
            User::new("b".into(), "x".into())
        ]
    );
    let rules: Vec<String> = mode
        .allow_destinations
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        rules,
        [".datadoghq.com:443", "intake.example.com:443", "[::1]:*"]
    );
    assert_eq!(mode.connect_timeout, Duration::from_millis(750));
    assert_eq!(mode.request_timeout, Duration::from_secs(3));
}

#[test]
fn rate_limits_parse_in_every_mode() {
    let frontend = connect_frontend("rate_limit = { connections = 20 }").unwrap();
    assert_eq!(
        frontend.rate_limit,
        Some(RateLimit {
            connections: 20,
            per: Duration::from_secs(1)
        })
    );
    let config = parse(
        "[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n\
         rate_limit = { connections = 5, per = \"1m\" }\n\
         [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        config.frontends[0].rate_limit,
        Some(RateLimit {
            connections: 5,
            per: Duration::from_secs(60)
        })
    );
}

#[test]
fn bad_connect_settings_are_positioned() {
    let cases = [
        (
            "backend = \"b\"",
            "t.toml:5:11: frontend \"proxy\": `backend` is not used in connect mode (each CONNECT \
             request names its destination; list them in allow_destinations)",
        ),
        (
            "allow_destinations = [\"*:443\"]",
            "t.toml:5:23: invalid destination \"*:443\": a rule matching every host would make an \
             open proxy; list the hosts or domains agents may reach",
        ),
        (
            "allow_destinations = [\"a.example.com:443\", \"example.com\"]",
            "t.toml:5:44: invalid destination \"example.com\": expected HOST:PORT, .DOMAIN:PORT, \
             IP:PORT or [IPv6]:PORT (PORT may be *)",
        ),
        (
            "users = [{ name = \"a:b\", password = \"pw\" }]",
            "t.toml:5:19: invalid user name \"a:b\": expected a non-empty name without ':'",
        ),
        (
            "users = [{ name = \"a\", password = \"pw\" }, { name = \"a\", password = \"pw2\" }]",
            "t.toml:5:52: duplicate user name \"a\"",
        ),
        (
            "users = [{ name = \"a\", password = \"\" }]",
            "t.toml:5:35: user \"a\": the password must not be empty",
        ),
        (
            "users = [{ name = \"a\" }]",
            "t.toml:5:10: missing field `password`",
        ),
        (
            "users = [{ name = \"a\", passwd = \"hunter2\" }]",
            "t.toml:5:24: unknown field `passwd`, expected `name` or `password`",
        ),
        (
            "connect_timeout = \"0s\"",
            "t.toml:5:19: invalid connect_timeout \"0s\": expected more than zero",
        ),
        (
            "request_timeout = \"soon\"",
            "t.toml:5:19: invalid request_timeout \"soon\": expected a duration such as \"5s\" or \
             \"500ms\"",
        ),
        (
            "rate_limit = { connections = 0 }",
            "t.toml:5:30: invalid rate_limit connections 0: expected at least 1",
        ),
        (
            "rate_limit = { connections = 1, per = \"0s\" }",
            "t.toml:5:39: invalid rate_limit per \"0s\": expected more than zero",
        ),
    ];
    for (body, expected) in cases {
        let got = connect_frontend(body).expect_err(body);
        assert_eq!(got, expected, "for {body}");
        assert!(
            !got.contains("hunter2"),
            "a config error quoted a password: {got}"
        );
    }
}

#[test]
fn connect_keys_are_refused_in_tcp_mode() {
    for (key, value, col, modes) in [
        (
            "users",
            "[{ name = \"a\", password = \"pw\" }]",
            9,
            "connect mode",
        ),
        (
            "allow_destinations",
            "[\"a.example:443\"]",
            22,
            "connect and transparent mode",
        ),
        (
            "connect_timeout",
            "\"1s\"",
            19,
            "connect and transparent mode",
        ),
        ("request_timeout", "\"1s\"", 19, "connect and http mode"),
        ("sniff_timeout", "\"1s\"", 17, "transparent mode"),
        (
            "intercept",
            "{ ports = [443], local = true }",
            13,
            "transparent mode",
        ),
    ] {
        let text = format!(
            "[[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n{key} = {value}\n\
             [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\n"
        );
        assert_eq!(
            parse(&text, "t.toml").unwrap_err().to_string(),
            format!("t.toml:5:{col}: frontend \"a\": `{key}` is only used in {modes}")
        );
    }
}

#[test]
fn debug_output_of_a_config_hides_passwords() {
    let frontend =
        connect_frontend("users = [{ name = \"agent\", password = \"hunter2\" }]").unwrap();
    let text = format!("{frontend:?}");
    assert!(
        text.contains("agent") && !text.contains("hunter2"),
        "{text}"
    );
}
