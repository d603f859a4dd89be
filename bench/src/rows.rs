//! The rows of every table: the client straight to the server, HAProxy 2.6 (`mode tcp`, plain
//! and with `option splice-auto`) and agent-proxy on each data path. A proxy row starts its
//! proxy afresh for each run, so that peak RSS and the byte counters belong to that run alone.
//! In the TLS scenarios the proxies get TLS on one side ([`ProxyTls`]); agent-proxy then carries
//! every connection in its userspace relay whatever its `dataplane` (the kernel cannot splice
//! bytes it must encrypt), and HAProxy's splice-auto row is left out (OpenSSL's records cannot
//! be spliced either, so it would be the plain HAProxy row again).
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use agent_proxy_tests::metrics::Metrics;
use agent_proxy_tests::netns::NetNs;
use agent_proxy_tests::{Daemon, DaemonConfig, Dataplane};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::procs::Proc;
use crate::tls::ProxyTls;

/// Where every proxy listens inside the namespace (the daemon's admin is 127.0.0.1:9090).
pub(crate) const PROXY_LISTEN: &str = "127.0.0.1:7000";
pub(crate) const PROXY_PORT: u16 = 7000;
/// The address the transparent row's clients connect to: on the bench namespace's `lo`, with
/// nothing listening on it; the daemon's `OUTPUT` rule captures connections to it (loopback
/// destinations are never captured, so the backend's 127.0.0.1 cannot serve).
pub(crate) const TRANSPARENT_IP: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(11, 0, 0, 10));

/// Connections agent-proxy must admit: the 10,000-agent scenario plus headroom (HAProxy's
/// maxconn is derived from the fd limit instead, see [`haproxy_maxconn`]).
const MAX_CONNECTIONS: u32 = 30_000;
/// HAProxy's `maxpipes` with splice-auto: it reserves two fds per pipe up front, so the default
/// (maxconn / 4) would not fit 10,000 agents into a 20,000-fd limit; a few pipes serve the bulk
/// scenarios' 1-8 connections.
const HAPROXY_MAXPIPES: u64 = 64;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Row {
    /// Client to server, no proxy: the physical limit.
    Direct,
    /// HAProxy 2.6 `mode tcp`.
    Haproxy,
    /// HAProxy 2.6 `mode tcp` with `option splice-auto`.
    HaproxySplice,
    /// agent-proxy, `dataplane = "kernel"` (eBPF sockmap splice). The bench's clients run on
    /// the proxy's host, and `local_agents = "always"` sends their bytes straight into the
    /// upstream socket (sock_ops + sk_msg) even on a kernel whose FIONREAD self-test fails,
    /// where the default keeps them on the splice (the kernel-remote row's path).
    Kernel,
    /// agent-proxy, `dataplane = "kernel"` with `local_agents = false`: the path of agents on
    /// other hosts (every byte through the splice verdict).
    KernelRemote,
    /// agent-proxy, `dataplane = "userspace"` (the relay).
    Userspace,
    /// The kernel-remote row with `kernel_after = 65536`: each connection starts in the relay
    /// and moves to the kernel after 64 KiB. Measured where connections are short or many.
    KernelAfter,
    /// agent-proxy `mode = "transparent"` on the kernel path (`local_agents = false`): the
    /// clients connect to the intake's own address ([`TRANSPARENT_IP`]), the daemon's nat
    /// `OUTPUT` rule redirects them to the proxy, which checks the original destination and
    /// sends the connection to the backend. Measured in the DataKit and ping scenarios.
    Transparent,
    /// HAProxy 2.6 `mode http` (keep-alive both sides): what Datadog's HAProxy guide runs on
    /// its intake ports. Measured in the DataKit scenarios with HTTP to the proxy.
    HaproxyHttp,
    /// agent-proxy `mode = "http"` with its per-API metrics (the default): hyper on both sides,
    /// every request counted by `api`. Same scenarios as [`Row::HaproxyHttp`].
    Http,
    /// The same with `request_metrics = false`: what the per-API metrics cost.
    HttpBare,
}

impl Row {
    pub(crate) const ALL: [Row; 11] = [
        Row::Direct,
        Row::Haproxy,
        Row::HaproxySplice,
        Row::Kernel,
        Row::KernelRemote,
        Row::Userspace,
        Row::KernelAfter,
        Row::Transparent,
        Row::HaproxyHttp,
        Row::Http,
        Row::HttpBare,
    ];

    /// The rows of a proxy that reads each HTTP request.
    pub(crate) fn is_http(self) -> bool {
        matches!(self, Row::HaproxyHttp | Row::Http | Row::HttpBare)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Row::Direct => "direct",
            Row::Haproxy => "haproxy",
            Row::HaproxySplice => "haproxy-splice",
            Row::Kernel => "kernel",
            Row::KernelRemote => "kernel-remote",
            Row::Userspace => "userspace",
            Row::KernelAfter => "kernel-after",
            Row::Transparent => "transparent",
            Row::HaproxyHttp => "haproxy-http",
            Row::Http => "http",
            Row::HttpBare => "http-bare",
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Row::Direct => "direct (no proxy)",
            Row::Haproxy => "HAProxy 2.6 tcp",
            Row::HaproxySplice => "HAProxy 2.6 tcp splice-auto",
            Row::Kernel => "agent-proxy kernel",
            Row::KernelRemote => "agent-proxy kernel, remote agents",
            Row::Userspace => "agent-proxy userspace",
            Row::KernelAfter => "agent-proxy kernel, remote agents, kernel_after 64 KiB",
            Row::Transparent => "agent-proxy transparent (kernel, iptables OUTPUT)",
            Row::HaproxyHttp => "HAProxy 2.6 http",
            Row::Http => "agent-proxy http, per-API metrics",
            Row::HttpBare => "agent-proxy http, no per-API metrics",
        }
    }
}

/// A running proxy of one row.
pub(crate) enum Proxy {
    Haproxy(Proc),
    Agent(Box<Daemon>),
}

impl Proxy {
    /// Starts the proxy of `row` on `listen` in front of `backend`, with `tls` on one side;
    /// `None` for the direct row.
    pub(crate) fn start(
        row: Row,
        ns: &NetNs,
        listen: SocketAddr,
        backend: SocketAddr,
        dir: &Path,
        tls: Option<ProxyTls<'_>>,
    ) -> anyhow::Result<Option<Self>> {
        let proxy = match row {
            Row::Direct => return Ok(None),
            Row::Haproxy | Row::HaproxySplice | Row::HaproxyHttp => {
                let cfg = dir.join(format!("{}.cfg", row.name()));
                let maxconn = haproxy_maxconn(fd_limit()?);
                let mode = match row {
                    Row::HaproxySplice => HaproxyMode::TcpSplice,
                    Row::HaproxyHttp => HaproxyMode::Http,
                    _ => HaproxyMode::Tcp,
                };
                let text = haproxy_config(listen, backend, mode, cpus(), maxconn, tls);
                std::fs::write(&cfg, text)?;
                let log = dir.join(format!("{}.log", row.name()));
                // -db: foreground, no master process: the child's pid is the one worker process.
                let mut p =
                    Proc::spawn(ns, "haproxy", &["-db", "-f", &cfg.to_string_lossy()], &log)?;
                p.wait_listening(listen.port(), Duration::from_secs(10))?;
                Proxy::Haproxy(p)
            }
            Row::Kernel
            | Row::KernelRemote
            | Row::KernelAfter
            | Row::Userspace
            | Row::Http
            | Row::HttpBare => {
                let dataplane = match row {
                    Row::Kernel => Dataplane::Kernel,
                    Row::KernelRemote | Row::KernelAfter => Dataplane::KernelRemote,
                    _ => Dataplane::Userspace,
                };
                let mut config = DaemonConfig::new(dataplane, vec![backend]);
                config.listen = listen;
                config.max_connections = MAX_CONNECTIONS;
                config.frontend_max_connections = MAX_CONNECTIONS;
                config.connect_timeout = Duration::from_secs(5);
                if let Some(tls) = tls {
                    config.frontend_extra = tls.agent_frontend();
                    config.backend_extra = tls.agent_backend();
                }
                if row.is_http() {
                    config.mode = "http";
                }
                if row == Row::HttpBare {
                    config.frontend_extra += "request_metrics = false\n";
                }
                if row == Row::KernelAfter {
                    config.global_extra += "kernel_after = 65536\n";
                }
                let daemon = Daemon::start(ns, config).context("start agent-proxy")?;
                Proxy::Agent(Box::new(daemon))
            }
            Row::Transparent => {
                let mut config = DaemonConfig::new(Dataplane::KernelRemote, vec![backend]);
                config.listen = PROXY_LISTEN.parse().expect("valid address");
                config.toml_override = Some(transparent_config(&config, backend));
                let daemon = Daemon::start(ns, config).context("start agent-proxy")?;
                Proxy::Agent(Box::new(daemon))
            }
        };
        Ok(Some(proxy))
    }

    pub(crate) fn pid(&self) -> u32 {
        match self {
            Proxy::Haproxy(p) => p.pid(),
            Proxy::Agent(d) => d.pid(),
        }
    }

    pub(crate) fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self {
            Proxy::Haproxy(p) => p.ensure_running(),
            Proxy::Agent(d) => d.ensure_running(),
        }
    }

    /// agent-proxy's admin address, inside the proxy's namespace (`None` for HAProxy).
    pub(crate) fn admin(&self) -> Option<SocketAddr> {
        match self {
            Proxy::Haproxy(_) => None,
            Proxy::Agent(d) => Some(d.config.admin),
        }
    }

    /// agent-proxy's /metrics (`None` for HAProxy).
    pub(crate) fn metrics(&self) -> anyhow::Result<Option<Metrics>> {
        match self {
            Proxy::Haproxy(_) => Ok(None),
            Proxy::Agent(d) => d.metrics().map(Some),
        }
    }

    /// Stops the proxy; agent-proxy gets SIGTERM and must exit by itself.
    pub(crate) fn stop(self) -> anyhow::Result<()> {
        match self {
            Proxy::Haproxy(p) => drop(p),
            Proxy::Agent(mut d) => {
                let status = d.stop()?;
                d.passed();
                anyhow::ensure!(
                    status.success(),
                    "agent-proxy exited with {status} on SIGTERM"
                );
            }
        }
        Ok(())
    }
}

/// The transparent row's daemon: every connection to [`TRANSPARENT_IP`] on the backend's port,
/// captured by `OUTPUT`, goes to the backend.
fn transparent_config(config: &DaemonConfig, backend: SocketAddr) -> String {
    format!(
        "[global]\ndataplane = \"kernel\"\nadmin = \"{admin}\"\nlog_format = \"json\"\n\
         local_agents = false\nmax_connections = {MAX_CONNECTIONS}\n\
         [[frontend]]\nname = \"fe\"\nlisten = \"{PROXY_LISTEN}\"\nmode = \"transparent\"\n\
         max_connections = {MAX_CONNECTIONS}\nbackend = \"be\"\n\
         allow_destinations = [\"{TRANSPARENT_IP}:{port}\"]\n\
         intercept = {{ ports = [{port}], local = true }}\n\
         [[backend]]\nname = \"be\"\nservers = [\"{backend}\"]\nconnect_timeout = \"5s\"\n",
        admin = config.admin,
        port = backend.port(),
    )
}

/// Online CPUs (for HAProxy's nbthread).
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The soft RLIMIT_NOFILE of this process, which its children inherit.
pub(crate) fn fd_limit() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    Ok(lim.rlim_cur)
}

/// HAProxy refuses to start when maxconn needs more fds than the limit (2 per connection,
/// 2 per pipe, a few for listeners and logs): the largest maxconn that fits.
pub(crate) fn haproxy_maxconn(fd_limit: u64) -> u64 {
    fd_limit.saturating_sub(2 * HAPROXY_MAXPIPES + 256) / 2
}

/// How HAProxy runs in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HaproxyMode {
    Tcp,
    /// `mode tcp` with `option splice-auto`.
    TcpSplice,
    /// `mode http`, keep-alive on both sides (HAProxy 2.6's default), the server connection
    /// kept for the client's next request.
    Http,
}

/// HAProxy 2.6 with one thread per CPU, long timeouts (the many-agents scenario keeps
/// connections idle between requests), no logging (agent-proxy's own connection log goes to a
/// file: the rows pay for their logging as shipped); with `tls`, `ssl` on the bind or the
/// server line.
pub(crate) fn haproxy_config(
    listen: SocketAddr,
    backend: SocketAddr,
    mode: HaproxyMode,
    threads: usize,
    maxconn: u64,
    tls: Option<ProxyTls<'_>>,
) -> String {
    let mode = match mode {
        HaproxyMode::Tcp => "    mode tcp\n",
        HaproxyMode::TcpSplice => "    mode tcp\n    option splice-auto\n",
        HaproxyMode::Http => {
            "    mode http\n    timeout http-request 10s\n    timeout http-keep-alive 300s\n"
        }
    };
    let (bind, server) = tls.map_or((String::new(), String::new()), |t| {
        (t.haproxy_bind(), t.haproxy_server())
    });
    format!(
        "global\n    nbthread {threads}\n    maxconn {maxconn}\n    maxpipes {HAPROXY_MAXPIPES}\n\n\
         defaults\n{mode}    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n\n\
         frontend fe\n    bind {listen}{bind}\n    default_backend be\n\n\
         backend be\n    server s1 {backend}{server}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        PROXY_PORT,
    );

    #[test]
    fn haproxy_config_has_mode_tcp_threads_and_optional_splice() {
        let plain = haproxy_config(
            LO,
            "127.0.0.1:8000".parse().unwrap(),
            HaproxyMode::Tcp,
            2,
            9744,
            None,
        );
        assert!(plain.contains("maxconn 9744\n"));
        assert!(plain.contains("nbthread 2\n"));
        assert!(plain.contains("mode tcp\n"));
        assert!(plain.contains("bind 127.0.0.1:7000\n"));
        assert!(plain.contains("server s1 127.0.0.1:8000\n"));
        assert!(!plain.contains("splice"));
        let splice = haproxy_config(
            LO,
            "127.0.0.1:8000".parse().unwrap(),
            HaproxyMode::TcpSplice,
            2,
            9744,
            None,
        );
        assert!(splice.contains("mode tcp\n    option splice-auto\n"));
        let http = haproxy_config(
            LO,
            "127.0.0.1:8000".parse().unwrap(),
            HaproxyMode::Http,
            2,
            9744,
            None,
        );
        assert!(
            http.contains("mode http\n") && !http.contains("mode tcp"),
            "{http}"
        );
        assert!(http.contains("timeout http-keep-alive 300s\n"), "{http}");
        // 2 x 9744 + 2 x 64 pipes + 17 internal fds fit in 20,000.
        assert_eq!(haproxy_maxconn(20_000), 9_808);
        assert!(2 * haproxy_maxconn(20_000) + 2 * HAPROXY_MAXPIPES + 17 <= 20_000);
    }

    #[test]
    fn haproxy_config_puts_ssl_on_the_side_that_speaks_tls() {
        use crate::tls::{Pki, Side};
        let pki = Pki::names_in("/t");
        let tls = |side| Some(ProxyTls { side, pki: &pki });
        let orig = haproxy_config(
            LO,
            "127.0.0.1:8443".parse().unwrap(),
            HaproxyMode::Tcp,
            2,
            100,
            tls(Side::Origination),
        );
        assert!(orig.contains("bind 127.0.0.1:7000\n"), "{orig}");
        assert!(
            orig.contains(
                "server s1 127.0.0.1:8443 ssl verify required ca-file /t/ca.crt \
                 sni str(intake.test)\n"
            ),
            "{orig}"
        );
        let front = haproxy_config(
            LO,
            "127.0.0.1:8000".parse().unwrap(),
            HaproxyMode::Tcp,
            2,
            100,
            tls(Side::Frontend),
        );
        assert!(
            front.contains("bind 127.0.0.1:7000 ssl crt /t/proxy.pem prefer-client-ciphers\n"),
            "{front}"
        );
        assert!(front.contains("server s1 127.0.0.1:8000\n"), "{front}");
    }
}
