//! Every preset, site and style: passes the config checks as printed, names its own site only,
//! carries the agent-side comments; the options are refused with messages naming what is
//! accepted.
use super::*;
use crate::config::{self, Config, FrontendMode};
use crate::destination::{Policy, Target};

/// Every preset the options can produce (the StackState one with and without `--receiver`).
fn every_preset() -> Vec<Preset> {
    let mut all = Vec::new();
    for site in DATADOG_SITES {
        for style in ["connect", "ports"] {
            all.push(options("datadog", Some(site), Some(style), None));
        }
    }
    all.push(options("stackstate", None, None, None));
    all.push(options(
        "stackstate",
        None,
        None,
        Some("https://sts.example.com/receiver/stsAgent"),
    ));
    all.push(options("datakit", None, None, None));
    all
}

fn options(
    preset: &str,
    site: Option<&str>,
    style: Option<&str>,
    receiver: Option<&str>,
) -> Preset {
    Preset::from_options(Options {
        preset,
        site,
        style,
        receiver,
    })
    .unwrap_or_else(|e| panic!("{preset} {site:?} {style:?} {receiver:?}: {e}"))
}

/// Parsed and validated as `check` does (the TLS state is built: CA bundles read).
fn checked(preset: &Preset) -> (String, Config) {
    let text = preset.render();
    let config = config::parse(&text, "init")
        .unwrap_or_else(|e| panic!("{preset:?} does not parse: {e}\n{text}"));
    if let Err(e) = crate::daemon::validate(&config) {
        panic!("{preset:?} does not validate: {e}");
    }
    assert!(
        config.warnings().is_empty(),
        "{preset:?}: {:?}",
        config.warnings()
    );
    (text, config)
}

#[test]
fn every_preset_passes_check_as_printed() {
    for preset in every_preset() {
        checked(&preset);
    }
}

/// The sites a text names: every maximal run of name characters that is a site or ends in
/// `.SITE`, attributed to the longest site it ends with (`trace.agent.us3.datadoghq.com` is
/// US3's, not US1's).
fn sites_named(text: &str) -> Vec<&'static str> {
    let mut named = Vec::new();
    for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-')) {
        let token = token.trim_matches('.').to_ascii_lowercase();
        let site = DATADOG_SITES
            .iter()
            .copied()
            .filter(|s| token == *s || token.ends_with(&format!(".{s}")))
            .max_by_key(|s| s.len());
        if let Some(site) = site
            && !named.contains(&site)
        {
            named.push(site);
        }
    }
    named
}

#[test]
fn the_site_finder_attributes_names_to_the_longest_site() {
    assert_eq!(
        sites_named("a trace.agent.us3.datadoghq.com."),
        ["us3.datadoghq.com"]
    );
    assert_eq!(sites_named("\"api.datadoghq.com:443\""), ["datadoghq.com"]);
    assert_eq!(
        sites_named("(api.datadoghq.eu) ddog-gov.com"),
        ["datadoghq.eu", "ddog-gov.com"]
    );
    assert!(sites_named("notdatadoghq.com evil-datadoghq.eu.example").is_empty());
}

#[test]
fn a_datadog_config_names_its_own_site_only() {
    for site in DATADOG_SITES {
        for style in ["connect", "ports"] {
            let text = options("datadog", Some(site), Some(style), None).render();
            assert_eq!(
                sites_named(&text),
                [site],
                "--site {site} --style {style}:\n{text}"
            );
        }
    }
    for preset in ["stackstate", "datakit"] {
        let text = options(preset, None, None, None).render();
        assert!(sites_named(&text).is_empty(), "{preset} names Datadog");
    }
}

/// The allowlist of the connect style, as the daemon applies it.
fn connect_policy(config: &Config) -> Policy {
    let [frontend] = config.frontends.as_slice() else {
        panic!("one frontend expected");
    };
    let FrontendMode::Connect(connect) = &frontend.mode else {
        panic!("connect mode expected");
    };
    Policy::new(connect.allow_destinations.clone())
}

fn allows(policy: &Policy, target: &str) -> bool {
    policy.allows(&Target::parse(target).expect("valid target"))
}

/// Names the agent opens tunnels to, under `site`.
fn agent_names(site: &str) -> Vec<String> {
    [
        "7-72-0-app.agent.",
        "trace.agent.",
        "7-72-0-flare.agent.",
        "api.",
        "agent-http-intake.logs.",
        "process.",
        "intake.profile.",
        "config.",
        "orchestrator.",
        "netpath-intake.",
    ]
    .iter()
    .map(|prefix| format!("{prefix}{site}"))
    .collect()
}

#[test]
fn the_connect_allowlist_opens_the_site_and_nothing_else() {
    for site in DATADOG_SITES {
        let (_, config) = checked(&options("datadog", Some(site), None, None));
        let policy = connect_policy(&config);
        for name in agent_names(site) {
            assert!(
                allows(&policy, &format!("{name}:443")),
                "{site}: {name} refused"
            );
            // Agents 7.67+ send the fully qualified form.
            assert!(
                allows(&policy, &format!("{name}.:443")),
                "{site}: {name}. refused"
            );
            assert!(
                !allows(&policy, &format!("{name}:80")),
                "{site}: {name}:80 allowed"
            );
        }
        for other in DATADOG_SITES.iter().filter(|other| **other != site) {
            for name in agent_names(other) {
                assert!(
                    !allows(&policy, &format!("{name}:443")),
                    "{site} allows {name}"
                );
            }
        }
        for outside in [
            format!("{site}:443"),
            format!("www.{site}:443"),
            format!("app.{site}:443"),
            format!("api.{site}.example.com:443"),
            format!("evil{site}:443"),
        ] {
            assert!(!allows(&policy, &outside), "{site} allows {outside}");
        }
    }
}

#[test]
fn the_ports_style_has_the_haproxy_port_map_with_verified_tls() {
    let expected = [
        3834, 3835, 3836, 3837, 3838, 3839, 3840, 3841, 3842, 3843, 3845, 3846, 3847,
    ];
    for site in DATADOG_SITES {
        let (_, config) = checked(&options("datadog", Some(site), Some("ports"), None));
        let ports: Vec<u16> = config.frontends.iter().map(|f| f.listen.port()).collect();
        assert_eq!(ports, expected, "{site}");
        for frontend in &config.frontends {
            let FrontendMode::Tcp { backend } = &frontend.mode else {
                panic!("{site}: {} is not a tcp frontend", frontend.name);
            };
            let backend = config.backend(backend).expect("defined");
            let tls = backend.tls.as_ref().expect("TLS originated");
            assert!(
                tls.verify && tls.sni.is_none() && tls.ca_file.is_none(),
                "{site}: {tls:?}"
            );
            let [server] = backend.servers.as_slice() else {
                panic!("one server expected");
            };
            let server = server.to_string();
            assert!(
                server.ends_with(&format!(".{site}:443")),
                "{site}: {server}"
            );
        }
        let first = &config.backends[0];
        assert_eq!(
            first.servers[0].to_string(),
            format!("metrics.agent.{site}:443")
        );
    }
}

#[test]
fn the_agent_side_settings_are_in_the_comments() {
    let has = |text: &str, lines: &[&str]| {
        for line in lines {
            assert!(
                text.lines().any(|l| l.starts_with('#') && l.contains(line)),
                "no comment line with {line:?} in:\n{text}"
            );
        }
    };
    for site in DATADOG_SITES {
        let connect = options("datadog", Some(site), Some("connect"), None).render();
        has(
            &connect,
            &[
                &format!("site: {site}"),
                "proxy:",
                "https: http://<PROXY_HOST>:3128",
                "force_use_http: true",
            ],
        );
        let ports = options("datadog", Some(site), Some("ports"), None).render();
        has(
            &ports,
            &[
                &format!("site: {site}"),
                "dd_url: http://<PROXY_HOST>:3834",
                "apm_dd_url: http://<PROXY_HOST>:3835",
                "profiling_dd_url: http://<PROXY_HOST>:3836/api/v2/profile",
                "process_dd_url: http://<PROXY_HOST>:3837",
                "logs_dd_url: <PROXY_HOST>:3838",
                "logs_no_ssl: true",
                "rc_dd_url: <PROXY_HOST>:3846",
                "skip_ssl_validation",
                "Proxy Example with HAProxy",
            ],
        );
    }
    let stackstate = options("stackstate", None, None, None).render();
    has(
        &stackstate,
        &[
            "REPLACE the receiver",
            "sts_url: http://<PROXY_HOST>:3834/receiver/stsAgent",
            "dd_url: http://<PROXY_HOST>:3834",
        ],
    );
    let datakit = options("datakit", None, None, None).render();
    has(
        &datakit,
        &["[dataway]", "http_proxy = \"http://<PROXY_HOST>:9530\""],
    );
}

#[test]
fn stackstate_sends_port_3834_to_the_receiver() {
    let cases = [
        (None, format!("{}:443", Receiver::PLACEHOLDER_HOST), true),
        (
            Some("https://sts.example.com/receiver/stsAgent"),
            "sts.example.com:443".to_owned(),
            true,
        ),
        (
            Some("sts.example.com:8443"),
            "sts.example.com:8443".to_owned(),
            true,
        ),
        (
            Some("http://10.1.2.3:7077/stsAgent"),
            "10.1.2.3:7077".to_owned(),
            false,
        ),
        (
            Some("https://[2001:db8::7]"),
            "[2001:db8::7]:443".to_owned(),
            true,
        ),
    ];
    for (receiver, server, tls) in cases {
        let preset = options("stackstate", None, None, receiver);
        let (text, config) = checked(&preset);
        assert_eq!(config.frontends[0].listen.port(), 3834, "{receiver:?}");
        let backend = &config.backends[0];
        assert_eq!(backend.servers[0].to_string(), server, "{receiver:?}");
        assert_eq!(backend.tls.is_some(), tls, "{receiver:?}");
        assert_eq!(text.contains("REPLACE"), receiver.is_none(), "{receiver:?}");
    }
    let text = options(
        "stackstate",
        None,
        None,
        Some("http://10.1.2.3:7077/stsAgent"),
    )
    .render();
    assert!(
        text.contains("sts_url: http://<PROXY_HOST>:3834/stsAgent"),
        "{text}"
    );
}

#[test]
fn datakit_is_a_connect_proxy_on_9530_to_the_dataway() {
    let (_, config) = checked(&options("datakit", None, None, None));
    assert_eq!(config.frontends[0].listen.port(), 9530);
    let policy = connect_policy(&config);
    assert!(allows(&policy, "openway.guance.com:443"));
    assert!(!allows(&policy, "example.com:443"));
}

#[test]
fn options_are_refused_with_what_is_accepted() {
    let err = |preset, site, style, receiver| {
        Preset::from_options(Options {
            preset,
            site,
            style,
            receiver,
        })
        .expect_err("refused")
        .to_string()
    };
    assert_eq!(
        err("datadog", Some("datadoghq.co"), None, None),
        "unknown Datadog site \"datadoghq.co\": expected one of datadoghq.com, datadoghq.eu, \
         us3.datadoghq.com, us5.datadoghq.com, ap1.datadoghq.com, ddog-gov.com"
    );
    assert_eq!(
        err("haproxy", None, None, None),
        "unknown preset \"haproxy\": expected one of datadog, stackstate, datakit"
    );
    assert_eq!(
        err("datadog", None, Some("tcp"), None),
        "unknown style \"tcp\": expected connect or ports"
    );
    assert_eq!(
        err("datakit", Some("datadoghq.eu"), None, None),
        "--site is only used with --preset datadog"
    );
    assert_eq!(
        err("stackstate", None, Some("ports"), None),
        "--style is only used with --preset datadog"
    );
    assert_eq!(
        err("datadog", None, None, Some("sts:443")),
        "--receiver is only used with --preset stackstate"
    );
    for (receiver, reason) in [
        ("sts.example.com", "expected HOST:PORT or a URL"),
        (
            "ftp://sts.example.com",
            "expected an http:// or https:// URL, or HOST:PORT",
        ),
        ("sts.example.com:0", "expected a port 1-65535"),
        (
            "sts\".example.com:443",
            "expected a DNS name or an IP address as the host",
        ),
        (
            "https://sts.example.com/a\"b",
            "the path must be printable ASCII without quotes",
        ),
        (
            "exa_mple.com:443",
            "expected a DNS name or an IP address as the host",
        ),
        (
            "2001:db8::1:443",
            "invalid server address \"2001:db8::1:443\": expected HOST:PORT (IPv6 as [ADDR]:PORT)",
        ),
    ] {
        assert_eq!(
            err("stackstate", None, None, Some(receiver)),
            format!("invalid --receiver \"{receiver}\": {reason}"),
        );
    }
}

#[test]
fn the_default_is_us1_connect_and_sites_are_case_insensitive() {
    assert_eq!(
        options("datadog", None, None, None),
        Preset::Datadog {
            site: "datadoghq.com",
            style: Style::Connect
        }
    );
    assert_eq!(
        options("datadog", Some("DatadogHQ.EU"), Some("ports"), None),
        Preset::Datadog {
            site: "datadoghq.eu",
            style: Style::Ports
        }
    );
}
