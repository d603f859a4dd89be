//! The typed configuration of agent-proxy, read from a TOML file.
//!
//! Loading happens in two steps so that every mistake can be reported as `FILE:LINE:COL: message`:
//!
//! 1. `raw` deserializes the text with serde into structs that mirror the file one to one
//!    (`deny_unknown_fields` everywhere) and keep each value wrapped in [`toml::Spanned`], so its
//!    byte range in the file is known.
//! 2. `convert` turns those raw values into the typed structs below exactly once: socket
//!    addresses, CIDRs, durations and hostnames are parsed, names are checked for uniqueness and
//!    references between sections are resolved. After that, nothing at run time has to re-check
//!    the config: a frontend's backend always exists, a [`Backend`] always has a
//!    server.
//!

mod convert;
mod error;
mod pool;
mod raw;
mod transparent;
mod value;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_connect;
#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_transparent;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The destination rules of connect and transparent frontends, defined with the policy that
/// matches them ([`crate::destination`], a foundation module like this one).
pub use crate::destination::DestinationRule;

/// A frontend's `rate_limit = { connections, per }`: at most `connections` new connections per
/// client IP address in each window of `per` (enforced by the listener, in every mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// New connections admitted per address and window; at least 1.
    pub connections: u32,
    /// The window; more than zero.
    pub per: Duration,
}

impl RateLimit {
    /// The default of `per`.
    pub const DEFAULT_PER: Duration = Duration::from_secs(1);
}

/// `tcp_keepalive = { idle, interval, count }` (`[global]`, or a frontend's own): how a peer
/// that vanished without a FIN or reset (host gone, link cut) is noticed, on both sockets of
/// every connection. TCP keepalive probes start after `idle` without traffic, go out every
/// `interval`, and `count` unanswered ones end the connection; `TCP_USER_TIMEOUT` is set to the
/// same total ([`TcpKeepalive::detection`]), so that bytes sent to a vanished peer are given up
/// on as quickly instead of after TCP's ~15 minutes of retransmissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl TcpKeepalive {
    /// How long a vanished peer can go unnoticed: `idle + interval * count`.
    pub fn detection(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

impl Default for TcpKeepalive {
    /// 60 s + 6 x 10 s: a vanished peer is noticed within two minutes, and an idle connection
    /// costs one probe a minute.
    fn default() -> Self {
        TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 6,
        }
    }
}

/// One `users` entry of a connect frontend. The password never prints: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    password: String,
}

impl User {
    /// `name` must not contain `:` (Basic credentials are `name:password`); the config checks it.
    pub fn new(name: String, password: String) -> Self {
        Self { name, password }
    }

    /// The password, for the constant-time check of `connect::auth` only.
    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"***")
            .finish()
    }
}
pub use error::ConfigError;

/// The whole configuration: process-wide settings plus the frontends and backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The `[global]` section; all defaults when the section is absent.
    pub global: Global,
    /// The `[[frontend]]` tables in file order; never empty.
    pub frontends: Vec<Frontend>,
    /// The `[[backend]]` tables in file order.
    pub backends: Vec<Backend>,
}

impl Config {
    /// Settings that are valid but unsafe, one sentence each; `check` prints them and the
    /// daemon logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        self.backends
            .iter()
            .filter(|b| b.tls.as_ref().is_some_and(|tls| !tls.verify))
            .map(|b| {
                format!(
                    "backend \"{}\": tls verify = false: the servers' certificates are not \
                     checked, anyone on the path can impersonate them (use only in a lab)",
                    b.name
                )
            })
            .collect()
    }

    /// The backend called `name`. Every backend a frontend names resolves, because
    /// [`parse`] refuses configs where it would not.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|backend| backend.name == name)
    }
}

/// Process-wide settings (`[global]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// Connections accepted across all frontends; over it new ones are refused and counted.
    pub max_connections: usize,
    /// Which data path carries the bytes.
    pub dataplane: Dataplane,
    /// Where `/metrics`, `/healthz`, `/readyz` and `/stats` are served; `None` when `"off"`.
    pub admin: Option<SocketAddr>,
    /// How long SIGTERM/SIGINT waits for open connections before exiting.
    pub drain_timeout: Duration,
    /// The format of log lines.
    pub log_format: LogFormat,
    /// DNS servers used to resolve backend hostnames; empty means `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Send buffer (bytes) forced on spliced sockets, so the kernel path can keep a fast link
    /// full; 0 leaves the kernel default.
    pub kernel_sndbuf: u32,
    /// Bytes that may wait in the kernel's redirect queue per direction; past it the proxy
    /// carries that direction in userspace until it has caught up. Bounds memory under a slow
    /// reader. At least [`Global::MIN_KERNEL_WINDOW`].
    pub kernel_window: u64,
    /// Bytes a kernel-path connection carries in the userspace relay before it moves to the
    /// kernel (the splice's set-up costs more than relaying a short exchange); 0: in the
    /// kernel from its first byte. Only without the same-host agent programs
    /// (`local_agents = false`, or not loaded).
    pub kernel_after: u64,
    /// Agents on this host that connect to a kernel-path frontend send straight into the
    /// upstream socket (sock_ops + sk_msg on the cgroup v2 root), skipping the loopback leg.
    pub local_agents: LocalAgentsMode,
    /// The `SO_MARK` on every socket the proxy dials while a transparent frontend captures this
    /// host's own connections (`intercept.local`): their `OUTPUT` rules let marked packets pass,
    /// so the proxy never captures itself. Pick a value no other mark user on the host takes.
    pub outgoing_mark: u32,
    /// The keepalive of frontends that set none of their own.
    pub tcp_keepalive: TcpKeepalive,
    /// Bounds on the DNS TTLs of the destinations clients name (CONNECT and absolute-form
    /// requests, transparent mode's names), and on the retries of a failed refresh of them.
    pub dns: DnsTtl,
    /// Written with the daemon's PID once it serves, removed when it exits; for scripts.
    pub pid_file: Option<PathBuf>,
}

/// `global.local_agents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAgentsMode {
    /// `false`: same-host agents use the splice like remote ones.
    Off,
    /// `true` (the default): the direct path, unless the kernel's self-test at start shows that
    /// a socket in a sockmap misreports `ioctl(FIONREAD)` (Linux 6.18.14 and later stable
    /// kernels): then same-host agents use the splice, and the log says why.
    On,
    /// `"always"`: the direct path even on such a kernel, where an agent's FIONREAD reads 0.
    Always,
}

impl Global {
    /// The smallest accepted `kernel_window`: below one maximal TCP window of data the kernel
    /// path would stall more often than it moves bytes.
    pub const MIN_KERNEL_WINDOW: u64 = 65536;
    /// The default of [`Global::outgoing_mark`]: "AP" in ASCII, clear of the bits kube-proxy
    /// (0x4000, 0x8000), Calico (0xffff0000) and istio (1337) use.
    pub const DEFAULT_OUTGOING_MARK: u32 = 0x4150;
}

impl Default for Global {
    fn default() -> Self {
        Global {
            max_connections: 10_000,
            dataplane: Dataplane::Auto,
            admin: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090)),
            drain_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            nameservers: Vec::new(),
            kernel_sndbuf: 8 * 1024 * 1024,
            kernel_window: 4 * 1024 * 1024,
            kernel_after: 0,
            local_agents: LocalAgentsMode::On,
            outgoing_mark: Global::DEFAULT_OUTGOING_MARK,
            tcp_keepalive: TcpKeepalive::default(),
            dns: DnsTtl::default(),
            pid_file: None,
        }
    }
}

/// Which data path carries established connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dataplane {
    /// The kernel (eBPF sockmap) where it can be loaded, userspace otherwise.
    #[default]
    Auto,
    /// The kernel only; starting fails when the eBPF programs cannot be loaded.
    Kernel,
    /// The userspace relay only.
    Userspace,
}

impl fmt::Display for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dataplane::Auto => "auto",
            Dataplane::Kernel => "kernel",
            Dataplane::Userspace => "userspace",
        })
    }
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// One listening socket and what to do with its connections (`[[frontend]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    /// Unique among frontends; made of `[A-Za-z0-9_.-]` because it is a metric label.
    pub name: String,
    /// The address to bind; port 0 picks a free port (useful in tests).
    pub listen: SocketAddr,
    /// How connections are routed.
    pub mode: FrontendMode,
    /// Client networks allowed to connect; empty allows everyone.
    pub allow: Vec<ipnet::IpNet>,
    /// Connections open at once on this frontend; over it new ones are refused and counted.
    pub max_connections: usize,
    /// New connections admitted per client IP address and period; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// TLS terminated on this frontend (`tls = { cert, key, ... }`); `None` is plaintext.
    pub tls: Option<FrontendTls>,
    /// A carried connection with no byte in either direction for this long is closed (both
    /// sides, with a FIN; `end=idle_timeout`); `None` (`"0s"`): never.
    pub idle_timeout: Option<Duration>,
    /// Dead-peer detection on both sockets of its connections: its own `tcp_keepalive`, else
    /// `global.tcp_keepalive`.
    pub tcp_keepalive: TcpKeepalive,
    /// Past a connection limit, how long new connections may wait in the kernel's accept queue
    /// for a slot before they are refused; `None`: refused at once.
    pub max_connections_queue: Option<Duration>,
}

/// TLS on a frontend: the certificates it presents, and optionally the CA its clients' must
/// chain to. The files are read when the daemon starts and again on SIGHUP (see docs/tls.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendTls {
    /// Certificates to present, never empty. The first is the default (no SNI, or an SNI that
    /// no certificate names); the others are chosen by the SNI matching their SANs.
    pub certs: Vec<CertFiles>,
    /// PEM file of the CAs a client certificate must chain to; set, a client without a valid
    /// certificate is refused (mTLS).
    pub client_ca: Option<PathBuf>,
    /// How long a client may take to complete its handshake before it is closed.
    pub handshake_timeout: Duration,
}

impl FrontendTls {
    /// The default of [`FrontendTls::handshake_timeout`].
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The chain, leaf first; may also hold the key (HAProxy's `crt` style).
    pub cert: PathBuf,
    /// The private key; `None` when `cert` holds it.
    pub key: Option<PathBuf>,
}

/// TLS originated by a backend towards its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// The server name sent (SNI) and verified; `None` uses each server's configured host.
    pub sni: Option<String>,
    /// PEM file of trusted CAs; `None` uses the system bundle, else the bundled roots.
    pub ca_file: Option<PathBuf>,
    /// `false` accepts any certificate (labs only; warned at start and by `check`).
    pub verify: bool,
}

impl Frontend {
    /// The default of [`Frontend::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
    /// The default of [`Frontend::idle_timeout`]: longer than the idle pools of agents' HTTP
    /// clients (Go's keeps an idle connection 90 s), so that the agent, which knows when it
    /// will reuse a connection, is the one that closes it; short enough that connections
    /// nobody uses do not hold slots for long.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
}

/// How a frontend routes its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMode {
    /// Every connection goes to `backend`, which exists in [`Config::backends`].
    Tcp {
        /// The name of the backend.
        backend: String,
    },
    /// An HTTP CONNECT forward proxy: each connection names its destination (docs/connect.md).
    Connect(ConnectMode),
    /// Connections redirected by iptables; each one's destination is the address it was sent
    /// to (docs/transparent.md).
    Transparent(TransparentMode),
    /// An HTTP/1.1 reverse proxy to `backend` that sees each request (docs/http.md).
    Http(HttpMode),
}

/// The settings of a `mode = "http"` frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMode {
    /// The backend every request goes to, which exists in [`Config::backends`].
    pub backend: String,
    /// How long a client may take to send its first request head (408 after it).
    pub request_timeout: Duration,
    /// Per-request metrics (`agent_proxy_http_requests_total` and the rest, by `api`); `false`
    /// leaves them out.
    pub request_metrics: bool,
}

/// The settings of a `mode = "transparent"` frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransparentMode {
    /// Destinations that may be opened; empty: none. Address rules match the original
    /// destination; name rules match the TLS SNI or HTTP `Host`, which must resolve to it.
    pub allow_destinations: Vec<DestinationRule>,
    /// Send every allowed connection to this backend (which exists in [`Config::backends`])
    /// instead of its original destination.
    pub backend: Option<String>,
    /// The iptables rules `run` installs for this frontend; `None`: the operator redirects.
    pub intercept: Option<Intercept>,
    /// How long one connect attempt to the original destination may take.
    pub connect_timeout: Duration,
    /// How long the client may take to send what names its destination (a ClientHello or an
    /// HTTP head) when no address rule matches; after it, it is refused.
    pub sniff_timeout: Duration,
}

impl TransparentMode {
    /// The default of [`TransparentMode::sniff_timeout`]: TLS clients and HTTP clients send at
    /// once; a client that says nothing for this long speaks a protocol where the server speaks
    /// first, which only an address rule can allow.
    pub const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_secs(5);
}

/// `intercept = { ports, from, local }`: which connections the frontend's iptables rules
/// redirect to it (docs/transparent.md, "The rules").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intercept {
    /// Destination ports captured; never empty, no duplicates.
    pub ports: Vec<u16>,
    /// Client networks routed through this host whose connections are captured (nat
    /// `PREROUTING`); empty: none.
    pub from: Vec<ipnet::IpNet>,
    /// This host's own processes are captured too (nat `OUTPUT`), never the proxy's own
    /// connections (they carry [`Global::outgoing_mark`]).
    pub local: bool,
}

/// The settings of a `mode = "connect"` frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectMode {
    /// Accepted Basic credentials; empty: no authentication.
    pub users: Vec<User>,
    /// Destinations that may be opened; empty: none.
    pub allow_destinations: Vec<DestinationRule>,
    /// How long one connect attempt to the destination may take (504 after the last).
    pub connect_timeout: Duration,
    /// How long the client may take to send its whole request head (408 after it).
    pub request_timeout: Duration,
}

impl ConnectMode {
    /// The default of [`ConnectMode::request_timeout`]: an agent sends its CONNECT at once; a
    /// client that trickles its head (slowloris) holds a connection slot no longer than this.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
}

/// A named group of servers (`[[backend]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Unique among backends; same charset as frontend names.
    pub name: String,
    /// The servers to balance over; never empty.
    pub servers: Vec<ServerSpec>,
    /// How a server is picked for a new connection.
    pub balance: Balance,
    /// How long one connect attempt may take before the next server is tried.
    pub connect_timeout: Duration,
    /// Further connect attempts (on other servers where possible) after the first one fails.
    pub retries: u32,
    /// TLS to the servers (`tls = { sni, ca_file, verify }`); `None` is plaintext.
    pub tls: Option<BackendTls>,
    /// Active health checks; `None` leaves the decision to passive health alone.
    pub health_check: Option<HealthCheck>,
    /// What consecutive connect failures do to a server.
    pub passive: Passive,
    /// Bounds on the DNS TTLs of the servers' hostnames.
    pub dns: DnsTtl,
}

impl Backend {
    /// The default of [`Backend::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default of [`Backend::retries`].
    pub const DEFAULT_RETRIES: u32 = 3;
}

/// A configured server and its share of the load.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    /// Where it is; a hostname stands for every address it resolves to.
    pub addr: ServerAddr,
    /// Relative share of new connections, 1..=[`ServerSpec::MAX_WEIGHT`]; every address of a
    /// hostname gets this weight.
    pub weight: u32,
}

impl ServerSpec {
    /// The default weight.
    pub const DEFAULT_WEIGHT: u32 = 1;
    /// The largest weight (as HAProxy's).
    pub const MAX_WEIGHT: u32 = 256;
}

impl fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// Active health checks of every address of a backend (`health_check = { ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between two checks of one address.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive successes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    pub fall: u32,
    /// An HTTP GET instead of a bare connect.
    pub http: Option<HttpCheck>,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_RISE: u32 = 2;
    pub const DEFAULT_FALL: u32 = 3;
}

/// `http_path` / `expect_status` of a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// The request target, starting with `/`.
    pub path: String,
    /// The status that means healthy; `None` accepts any 2xx or 3xx.
    pub expect_status: Option<u16>,
}

/// Passive health (`passive = { fall, backoff }`): after `fall` consecutive failed connects a
/// server takes no new connections for `backoff`, then gets one trial connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// 0 turns passive health off.
    pub fall: u32,
    pub backoff: Duration,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            fall: 3,
            backoff: Duration::from_secs(10),
        }
    }
}

/// Bounds applied to DNS TTLs (`dns = { min_ttl, max_ttl }`): a hostname is re-resolved when
/// its answer's TTL, clamped to these, has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsTtl {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

impl Default for DnsTtl {
    fn default() -> Self {
        DnsTtl {
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
        }
    }
}

impl DnsTtl {
    /// `ttl` within the bounds.
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl)
    }

    /// When to ask again after `failures` (at least 1) failed or empty resolutions in a row:
    /// `min_ttl`, doubling with each further failure, at most `max_ttl`. A nameserver that is
    /// down is not asked every `min_ttl` forever, and one that comes back is noticed within
    /// `max_ttl`.
    pub fn retry_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.min_ttl
            .saturating_mul(1 << doublings)
            .min(self.max_ttl)
    }
}

/// A server of a backend: an IP address or a hostname (re-resolved at run time), and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    /// The host part.
    pub host: Host,
    /// The port, never 0.
    pub port: u16,
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            // Brackets keep the port separable from the address, as in a URL.
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// The host part of a [`ServerAddr`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal address: used as is, never resolved.
    Ip(IpAddr),
    /// A DNS name made of RFC 1123 labels, as written (a trailing dot marks it fully qualified).
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// How a backend picks a server for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Balance {
    /// Each server in turn.
    #[default]
    RoundRobin,
    /// The server with the fewest open connections.
    LeastConn,
    /// A server picked at random.
    Random,
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
            Balance::Random => "random",
        })
    }
}

/// Reads and parses the config file at `path`; errors name the path as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|err| ConfigError::read(&origin, err))?;
    parse_bytes(&bytes, &origin)
}

/// Parses the bytes of a config file: like [`parse`], after checking that they are UTF-8
/// (the error then points at the first byte that is not).
pub fn parse_bytes(bytes: &[u8], origin: &str) -> Result<Config, ConfigError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, origin),
        Err(e) => Err(ConfigError::not_utf8(origin, bytes, &e)),
    }
}

/// Parses config `text`; `origin` (usually the file name) starts every error message.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|err| ConfigError::from_toml(origin, text, &err))?;
    convert::config(raw).map_err(|err| ConfigError::at(origin, text, err.offset, err.message))
}
