//! Configs that must parse, and what they parse to.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

fn ok(text: &str) -> Config {
    parse(text, "test.toml").unwrap_or_else(|err| panic!("{err}"))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn net(text: &str) -> ipnet::IpNet {
    text.parse().unwrap()
}

/// The example of the interface contract, without the keys that are not supported yet
/// (`tls`: `tls_keys_parse` parses the contract's two `tls` lines).
const CONTRACT_EXAMPLE: &str = r#"
[global]
max_connections = 10000          # over it: new connections are refused and counted
dataplane = "auto"               # auto | kernel | userspace ; auto = kernel where possible
admin = "127.0.0.1:9090"         # GET /metrics /healthz /readyz /stats
drain_timeout = "30s"
log_format = "text"              # text | json
nameservers = []                 # "ip:port" list; empty = /etc/resolv.conf

[[frontend]]
name = "metrics"
listen = "0.0.0.0:3834"          # IPv4 or [IPv6]:port
mode = "tcp"                     # tcp | connect | transparent
backend = "datadog-metrics"      # tcp mode; connect/transparent may name one as a default
allow = ["10.0.0.0/8", "127.0.0.1/32"]   # client CIDRs; empty = all
max_connections = 4096

# connect mode only
# users = [{ name = "agent", password = "..." }]     # Basic Proxy-Authorization; none = no auth
# allow_destinations = [".datadoghq.com:443", "intake.example.com:443"]   # default: deny all

[[backend]]
name = "datadog-metrics"
servers = ["metrics.agent.datadoghq.com:443"]   # host:port; hostnames are re-resolved
balance = "roundrobin"           # roundrobin | leastconn | random
connect_timeout = "5s"
retries = 3                      # then try another server
health_check = { interval = "5s", timeout = "2s", rise = 2, fall = 3 }
dns = { min_ttl = "5s", max_ttl = "300s" }
"#;

#[test]
fn contract_example_parses_to_the_documented_values() {
    let config = ok(CONTRACT_EXAMPLE);
    assert_eq!(config.global, Global::default());
    assert_eq!(
        config.frontends,
        vec![Frontend {
            name: "metrics".into(),
            listen: addr("0.0.0.0:3834"),
            mode: FrontendMode::Tcp {
                backend: "datadog-metrics".into()
            },
            allow: vec![net("10.0.0.0/8"), net("127.0.0.1/32")],
            max_connections: 4096,
            rate_limit: None,
            tls: None,
            idle_timeout: Some(Frontend::DEFAULT_IDLE_TIMEOUT),
            tcp_keepalive: TcpKeepalive::default(),
            max_connections_queue: None,
        }]
    );
    assert_eq!(
        config.backends,
        vec![Backend {
            name: "datadog-metrics".into(),
            servers: vec![ServerSpec {
                addr: ServerAddr {
                    host: Host::Name("metrics.agent.datadoghq.com".into()),
                    port: 443,
                },
                weight: 1,
            }],
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            health_check: Some(HealthCheck {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                rise: 2,
                fall: 3,
                http: None,
            }),
            passive: Passive::default(),
            dns: DnsTtl::default(),
            tls: None,
        }]
    );
    assert_eq!(config.backend("datadog-metrics"), Some(&config.backends[0]));
}

#[test]
fn example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent-proxy.toml");
    let config = load(&path).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.frontends[0].name, "intake");
    assert_eq!(config.frontends[0].listen, addr("127.0.0.1:8080"));
    assert_eq!(
        config.backend("local-intake").unwrap().servers[0].to_string(),
        "127.0.0.1:8081"
    );
    assert_eq!(config.global.admin, Some(addr("127.0.0.1:9090")));
    assert_eq!(config.global.dataplane, Dataplane::Auto);
}

#[test]
fn defaults_apply_when_keys_are_absent() {
    let config = ok(r#"
[[frontend]]
name = "a"
listen = "127.0.0.1:1"
backend = "b"

[[backend]]
name = "b"
servers = ["127.0.0.1:2"]
"#);
    let global = &config.global;
    assert_eq!(global.max_connections, 10_000);
    assert_eq!(global.dataplane, Dataplane::Auto);
    assert_eq!(global.admin, Some(addr("127.0.0.1:9090")));
    assert_eq!(global.drain_timeout, Duration::from_secs(30));
    assert_eq!(global.log_format, LogFormat::Text);
    assert!(global.nameservers.is_empty());
    assert_eq!(global.kernel_sndbuf, 8_388_608);
    assert_eq!(global.kernel_window, 4_194_304);

    let frontend = &config.frontends[0];
    assert_eq!(
        frontend.mode,
        FrontendMode::Tcp {
            backend: "b".into()
        }
    );
    assert!(frontend.allow.is_empty());
    assert_eq!(frontend.max_connections, 4096);

    let backend = &config.backends[0];
    assert_eq!(backend.balance, Balance::RoundRobin);
    assert_eq!(backend.connect_timeout, Duration::from_secs(5));
    assert_eq!(backend.retries, 3);
}

#[test]
fn every_global_key_is_read() {
    let config = ok(r#"
[global]
max_connections = 5
dataplane = "userspace"
admin = "[::1]:9191"
drain_timeout = "1m 30s"
log_format = "json"
nameservers = ["1.1.1.1:53", "[2606:4700:4700::1111]:53", "9.9.9.9"]
kernel_sndbuf = 0
kernel_window = 65536
kernel_after = 16384
local_agents = false
dns = { min_ttl = "1s", max_ttl = "30s" }

[[frontend]]
name = "a"
listen = "127.0.0.1:1"
backend = "b"

[[backend]]
name = "b"
servers = ["127.0.0.1:2"]
balance = "leastconn"
connect_timeout = "250ms"
retries = 0
"#);
    assert_eq!(
        config.global,
        Global {
            max_connections: 5,
            dataplane: Dataplane::Userspace,
            admin: Some(addr("[::1]:9191")),
            drain_timeout: Duration::from_secs(90),
            log_format: LogFormat::Json,
            nameservers: vec![
                addr("1.1.1.1:53"),
                addr("[2606:4700:4700::1111]:53"),
                addr("9.9.9.9:53")
            ],
            kernel_sndbuf: 0,
            kernel_window: 65536,
            kernel_after: 16384,
            local_agents: LocalAgentsMode::Off,
            outgoing_mark: 0x4150,
            tcp_keepalive: TcpKeepalive::default(),
            dns: DnsTtl {
                min_ttl: Duration::from_secs(1),
                max_ttl: Duration::from_secs(30),
            },
            pid_file: None,
        }
    );
    assert_eq!(config.backends[0].balance, Balance::LeastConn);
    assert_eq!(
        config.backends[0].connect_timeout,
        Duration::from_millis(250)
    );
    assert_eq!(config.backends[0].retries, 0);
}

#[test]
fn admin_off_or_empty_disables_it() {
    for value in ["off", ""] {
        let config = ok(&format!(
            "[global]\nadmin = \"{value}\"\n\
             [[frontend]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackend = \"b\"\n\
             [[backend]]\nname = \"b\"\nservers = [\"127.0.0.1:2\"]\n"
        ));
        assert_eq!(config.global.admin, None);
    }
}

#[test]
fn ipv6_listen_and_servers() {
    let config = ok(r#"
[[frontend]]
name = "v6"
listen = "[::1]:3834"
backend = "v6-servers"
allow = ["::1", "fd00::/8", "10.0.0.1"]

[[backend]]
name = "v6-servers"
servers = ["[2001:db8::1]:443", "[::ffff:10.0.0.1]:80", "10.0.0.2:80"]
"#);
    assert_eq!(config.frontends[0].listen, addr("[::1]:3834"));
    assert_eq!(
        config.frontends[0].allow,
        vec![net("::1/128"), net("fd00::/8"), net("10.0.0.1/32")]
    );
    let servers: Vec<String> = config.backends[0]
        .servers
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        servers,
        ["[2001:db8::1]:443", "[::ffff:10.0.0.1]:80", "10.0.0.2:80"]
    );
    assert_eq!(
        config.backends[0].servers[0].addr.host,
        Host::Ip("2001:db8::1".parse().unwrap())
    );
}

#[test]
fn hostnames_keep_their_trailing_dot() {
    let config = ok(r#"
[[frontend]]
name = "a"
listen = "127.0.0.1:1"
backend = "b"

[[backend]]
name = "b"
servers = ["intake.example.com.:443", "localhost:8081"]
"#);
    let servers = &config.backends[0].servers;
    assert_eq!(
        servers[0].addr.host,
        Host::Name("intake.example.com.".into())
    );
    assert_eq!(servers[0].addr.port, 443);
    assert_eq!(servers[0].to_string(), "intake.example.com.:443");
    assert_eq!(servers[1].addr.host, Host::Name("localhost".into()));
}

#[test]
fn inline_tables_and_several_frontends_sharing_a_backend() {
    let config = ok(r#"
frontend = [
  { name = "a", listen = "127.0.0.1:1", backend = "b" },
  { name = "a.2", listen = "127.0.0.1:2", backend = "b" },
  { name = "zero-1", listen = "127.0.0.1:0", backend = "b" },
  { name = "zero-2", listen = "127.0.0.1:0", backend = "b" },
]
backend = [{ name = "b", servers = ["127.0.0.1:3"] }]
"#);
    let names: Vec<&str> = config.frontends.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["a", "a.2", "zero-1", "zero-2"]);
}

#[test]
fn frontend_and_backend_may_share_a_name() {
    let config = ok(r#"
[[frontend]]
name = "intake"
listen = "127.0.0.1:1"
backend = "intake"

[[backend]]
name = "intake"
servers = ["127.0.0.1:2"]
"#);
    assert_eq!(config.frontends[0].name, config.backends[0].name);
}

#[test]
fn unreadable_file_names_the_path() {
    let err = load(Path::new("/nonexistent/agent-proxy.toml")).unwrap_err();
    assert_eq!(err.position(), None);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/agent-proxy.toml: cannot read: "),
        "{err}"
    );
}

#[test]
fn pool_keys_parse() {
    let config = ok(r#"
[[frontend]]
name = "a"
listen = "127.0.0.1:1"
backend = "b"

[[backend]]
name = "b"
servers = ["10.0.0.1:443", { address = "intake.example.com:443", weight = 3 }]
balance = "random"
health_check = { interval = "1s", timeout = "500ms", rise = 1, fall = 2, http_path = "/health", expect_status = 204 }
passive = { fall = 0, backoff = "1m" }
dns = { min_ttl = "1s", max_ttl = "60s" }
"#);
    let backend = &config.backends[0];
    let weights: Vec<(String, u32)> = backend
        .servers
        .iter()
        .map(|s| (s.to_string(), s.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("10.0.0.1:443".into(), 1),
            ("intake.example.com:443".into(), 3)
        ]
    );
    assert_eq!(
        backend.health_check,
        Some(HealthCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 2,
            http: Some(HttpCheck {
                path: "/health".into(),
                expect_status: Some(204),
            }),
        })
    );
    assert_eq!(
        backend.passive,
        Passive {
            fall: 0,
            backoff: Duration::from_secs(60)
        }
    );
    assert_eq!(
        backend.dns,
        DnsTtl {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60)
        }
    );
    assert_eq!(backend.dns.clamp(Duration::ZERO), Duration::from_secs(1));
    assert_eq!(
        backend.dns.clamp(Duration::from_secs(3600)),
        Duration::from_secs(60)
    );
}

#[test]
fn pool_keys_default() {
    let config = ok(r#"
[[frontend]]
name = "a"
listen = "127.0.0.1:1"
backend = "b"

[[backend]]
name = "b"
servers = ["10.0.0.1:443"]
health_check = {}
"#);
    let backend = &config.backends[0];
    assert_eq!(
        backend.health_check,
        Some(HealthCheck {
            interval: HealthCheck::DEFAULT_INTERVAL,
            timeout: HealthCheck::DEFAULT_TIMEOUT,
            rise: HealthCheck::DEFAULT_RISE,
            fall: HealthCheck::DEFAULT_FALL,
            http: None,
        })
    );
    assert_eq!(backend.passive, Passive::default());
    assert_eq!(backend.dns, DnsTtl::default());
}

#[test]
fn tls_keys_parse() {
    let config = ok(r#"
[[frontend]]
name = "a"
listen = "127.0.0.1:1"
backend = "b"
tls = { cert = "/etc/agent-proxy/proxy.pem", key = "/etc/agent-proxy/proxy.key" }

[[frontend]]
name = "c"
listen = "127.0.0.1:2"
backend = "b"
tls = { cert = "both.pem", certs = [{ cert = "other.pem", key = "other.key" }, { cert = "third.pem" }], client_ca = "ca.pem", handshake_timeout = "3s" }

[[backend]]
name = "b"
servers = ["intake.example.com:443"]
tls = { sni = "metrics.agent.datadoghq.com", ca_file = "/etc/ssl/certs/ca-certificates.crt", verify = true }

[[backend]]
name = "d"
servers = ["[::1]:443"]
tls = {}
"#);
    let files = |cert: &str, key: Option<&str>| CertFiles {
        cert: cert.into(),
        key: key.map(Into::into),
    };
    assert_eq!(
        config.frontends[0].tls,
        Some(FrontendTls {
            certs: vec![files(
                "/etc/agent-proxy/proxy.pem",
                Some("/etc/agent-proxy/proxy.key")
            )],
            client_ca: None,
            handshake_timeout: Duration::from_secs(10),
        })
    );
    assert_eq!(
        config.frontends[1].tls,
        Some(FrontendTls {
            certs: vec![
                files("both.pem", None),
                files("other.pem", Some("other.key")),
                files("third.pem", None)
            ],
            client_ca: Some("ca.pem".into()),
            handshake_timeout: Duration::from_secs(3),
        })
    );
    assert_eq!(
        config.backends[0].tls,
        Some(BackendTls {
            sni: Some("metrics.agent.datadoghq.com".into()),
            ca_file: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            verify: true,
        })
    );
    assert_eq!(
        config.backends[1].tls,
        Some(BackendTls {
            sni: None,
            ca_file: None,
            verify: true,
        })
    );
    assert!(config.warnings().is_empty());
}

#[test]
fn verify_false_is_accepted_with_a_warning() {
    let config = ok(r#"
[[frontend]]
name = "a"
listen = "127.0.0.1:1"
backend = "lab"

[[backend]]
name = "lab"
servers = ["10.0.0.1:443"]
tls = { verify = false }
"#);
    assert!(!config.backends[0].tls.as_ref().unwrap().verify);
    assert_eq!(
        config.warnings(),
        vec![
            "backend \"lab\": tls verify = false: the servers' certificates are not checked, \
             anyone on the path can impersonate them (use only in a lab)"
                .to_owned()
        ]
    );
}

#[test]
fn timeouts_and_keepalive_defaults_and_overrides() {
    let config = ok(r#"
[global]
tcp_keepalive = { idle = "30s", count = 3 }

[[frontend]]
name = "defaults"
listen = "127.0.0.1:1"
backend = "b"

[[frontend]]
name = "own"
listen = "127.0.0.1:2"
backend = "b"
idle_timeout = "90s"
max_connections_queue = "2s"
tcp_keepalive = { interval = "2s" }

[[frontend]]
name = "never"
listen = "127.0.0.1:3"
backend = "b"
idle_timeout = "0s"

[[backend]]
name = "b"
servers = ["127.0.0.1:9"]
"#);
    let global = TcpKeepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(10),
        count: 3,
    };
    assert_eq!(config.global.tcp_keepalive, global);
    assert_eq!(global.detection(), Duration::from_secs(60));
    let [defaults, own, never] = &config.frontends[..] else {
        panic!("three frontends")
    };
    assert_eq!(defaults.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(defaults.tcp_keepalive, global);
    assert_eq!(defaults.max_connections_queue, None);
    assert_eq!(own.idle_timeout, Some(Duration::from_secs(90)));
    assert_eq!(own.max_connections_queue, Some(Duration::from_secs(2)));
    // A frontend's own table starts from the built-in defaults, not from the global one.
    assert_eq!(
        own.tcp_keepalive,
        TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(2),
            count: 6,
        }
    );
    assert_eq!(never.idle_timeout, None);
    assert_eq!(
        TcpKeepalive::default().detection(),
        Duration::from_secs(120)
    );
}

#[test]
fn http_mode_and_tls_on_connect_frontends() {
    let config = ok(r#"
[[frontend]]
name = "intake"
listen = "127.0.0.1:8443"
mode = "http"
backend = "b"
request_timeout = "3s"
request_metrics = false
tls = { cert = "proxy.pem" }

[[frontend]]
name = "plain"
listen = "127.0.0.1:8080"
mode = "http"
backend = "b"

[[frontend]]
name = "egress"
listen = "127.0.0.1:3128"
mode = "connect"
allow_destinations = [".example.com:443"]
tls = { cert = "proxy.pem" }

[[backend]]
name = "b"
servers = ["intake.example.com:443"]
tls = {}
"#);
    let modes: Vec<&FrontendMode> = config.frontends.iter().map(|f| &f.mode).collect();
    assert_eq!(
        modes[0],
        &FrontendMode::Http(HttpMode {
            backend: "b".into(),
            request_timeout: Duration::from_secs(3),
            request_metrics: false,
        })
    );
    assert_eq!(
        modes[1],
        &FrontendMode::Http(HttpMode {
            backend: "b".into(),
            request_timeout: ConnectMode::DEFAULT_REQUEST_TIMEOUT,
            request_metrics: true,
        })
    );
    assert!(matches!(modes[2], FrontendMode::Connect(_)));
    assert!(config.frontends[0].tls.is_some() && config.frontends[2].tls.is_some());
    assert!(config.frontends[1].tls.is_none());
}
