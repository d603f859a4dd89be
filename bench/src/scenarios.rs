//! The scenarios of shared/benchmarks.md and how one run of one row is measured.
//!
//! Scenario 5 (TLS) is the DataKit workload with TLS on one side of the proxy
//! (`datakit-tls-origination`, `datakit-tls-frontend`): its server is the nginx intake with a
//! second, `ssl` listener ([`ServerKind::IntakeTls`]), its proxies get the TLS lines of
//! [`crate::tls`], and hey speaks `https://` where the proxy (or, in the direct row, nginx)
//! expects TLS. agent-proxy carries TLS in its userspace relay only, so its kernel row measures
//! the same path as its userspace row (kept to show it); HAProxy's splice-auto row is left out
//! ([`Scenario::has_row`]).
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_proxy_tests::netns::NetNs;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::agents;
use crate::parse;
use crate::procfs::{CpuTimes, Memory, process_ticks, ticks_per_second};
use crate::procs::run_client;
use crate::results::{Metric, Sample};
use crate::rows::{Proxy, Row, TRANSPARENT_IP};
use crate::scrape::Admin;
use crate::servers::ServerKind;
use crate::tls::{INTAKE_NAME, PROXY_NAME, Pki, ProxyTls, Side};

/// The DataKit workload of seed 004: 16 clients x 100 POSTs of metric.data, whose size is
/// DataKit's api_post_bytes_total / 1600 = 276,459,200 / 1600.
pub(crate) const DATAKIT_CLIENTS: usize = 16;
pub(crate) const DATAKIT_REQUESTS: usize = 1600;
pub(crate) const DATAKIT_BODY: usize = 172_787;
/// A many-agents POST: a few KiB of metrics, like an agent's periodic flush.
pub(crate) const AGENT_BODY: usize = 2048;
pub(crate) const AGENT_PERIOD: Duration = Duration::from_secs(1);
/// Concurrent clients of the connection-rate scenario (issue 19: 16-64).
pub(crate) const CONNRATE_CLIENTS: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// 16 clients x 100 POSTs of 170 KB to an intake answering 200 (hey -> nginx).
    #[value(name = "datakit")]
    #[serde(rename = "datakit")]
    Datakit,
    /// 1,000 keep-alive agents, one small POST per second each.
    #[value(name = "agents-1000")]
    #[serde(rename = "agents-1000")]
    Agents1k,
    /// 10,000 keep-alive agents, one small POST per second each; idle RSS per connection.
    #[value(name = "agents-10000")]
    #[serde(rename = "agents-10000")]
    Agents10k,
    /// sockperf ping-pong, 64 B messages.
    #[value(name = "ping-64")]
    #[serde(rename = "ping-64")]
    Ping64,
    /// sockperf ping-pong, 16 KiB messages.
    #[value(name = "ping-16k")]
    #[serde(rename = "ping-16k")]
    Ping16k,
    /// iperf3, one stream.
    #[value(name = "bulk-1")]
    #[serde(rename = "bulk-1")]
    Bulk1,
    /// iperf3, 8 parallel streams.
    #[value(name = "bulk-8")]
    #[serde(rename = "bulk-8")]
    Bulk8,
    /// The DataKit workload in plain HTTP to the proxy, which originates verified TLS to an
    /// nginx intake listening with `ssl`.
    #[value(name = "datakit-tls-origination")]
    #[serde(rename = "datakit-tls-origination")]
    DatakitTlsOrigination,
    /// The DataKit workload over HTTPS to the proxy, which terminates TLS and forwards plain
    /// HTTP to the intake.
    #[value(name = "datakit-tls-frontend")]
    #[serde(rename = "datakit-tls-frontend")]
    DatakitTlsFrontend,
    /// New connections: 32 clients, each connection one small GET and its answer, then closed
    /// (hey -disable-keepalive -> nginx); connections/s, latency, CPU per connection.
    #[value(name = "connrate")]
    #[serde(rename = "connrate")]
    ConnRate,
    /// sockperf ping-pong, 64 B, once quiet and once while agent-proxy's /metrics and /stats
    /// are scraped every 100 ms (agent-proxy rows only).
    #[value(name = "ping-64-scrape")]
    #[serde(rename = "ping-64-scrape")]
    Ping64Scrape,
    // The veth family (`Scenario::veth`): the same workloads with the clients, the proxy and
    // the servers in three namespaces joined by veth pairs, as agents on other hosts reach it.
    /// datakit with clients, proxy and servers in three namespaces joined by veth pairs.
    #[value(name = "datakit-veth")]
    #[serde(rename = "datakit-veth")]
    DatakitVeth,
    /// connrate on the veth topology.
    #[value(name = "connrate-veth")]
    #[serde(rename = "connrate-veth")]
    ConnRateVeth,
    /// agents-1000 on the veth topology.
    #[value(name = "agents-1000-veth")]
    #[serde(rename = "agents-1000-veth")]
    Agents1kVeth,
    /// agents-10000 on the veth topology.
    #[value(name = "agents-10000-veth")]
    #[serde(rename = "agents-10000-veth")]
    Agents10kVeth,
    /// ping-64 on the veth topology.
    #[value(name = "ping-64-veth")]
    #[serde(rename = "ping-64-veth")]
    Ping64Veth,
    /// bulk-1 on the veth topology.
    #[value(name = "bulk-1-veth")]
    #[serde(rename = "bulk-1-veth")]
    Bulk1Veth,
    /// bulk-8 on the veth topology.
    #[value(name = "bulk-8-veth")]
    #[serde(rename = "bulk-8-veth")]
    Bulk8Veth,
}

impl Scenario {
    /// Every scenario, in the report's order: the remote-agent (veth) family first, the
    /// headline, then the same-host (loopback) one.
    pub(crate) const ALL: [Scenario; 18] = [
        Scenario::DatakitVeth,
        Scenario::ConnRateVeth,
        Scenario::Agents1kVeth,
        Scenario::Agents10kVeth,
        Scenario::Ping64Veth,
        Scenario::Bulk1Veth,
        Scenario::Bulk8Veth,
        Scenario::Datakit,
        Scenario::ConnRate,
        Scenario::Agents1k,
        Scenario::Agents10k,
        Scenario::Ping64,
        Scenario::Ping64Scrape,
        Scenario::Ping16k,
        Scenario::Bulk1,
        Scenario::Bulk8,
        Scenario::DatakitTlsOrigination,
        Scenario::DatakitTlsFrontend,
    ];
    /// What `--quick` runs: the TLS scenarios add 2-3 s to it (1,600 requests per row, no
    /// warm-up) and are the only check of the TLS lines of every peer's config; one scenario
    /// of each kind of the veth family checks that topology.
    pub(crate) const QUICK: [Scenario; 10] = [
        Scenario::DatakitVeth,
        Scenario::Agents1kVeth,
        Scenario::Datakit,
        Scenario::ConnRate,
        Scenario::Agents1k,
        Scenario::Ping64,
        Scenario::Ping64Scrape,
        Scenario::Bulk1,
        Scenario::DatakitTlsOrigination,
        Scenario::DatakitTlsFrontend,
    ];

    /// The veth family: clients, proxy and servers in three namespaces joined by veth pairs.
    pub(crate) fn veth(self) -> bool {
        self != self.base()
    }

    /// The loopback scenario whose workload a veth scenario runs (itself for the others).
    pub(crate) fn base(self) -> Scenario {
        match self {
            Scenario::DatakitVeth => Scenario::Datakit,
            Scenario::ConnRateVeth => Scenario::ConnRate,
            Scenario::Agents1kVeth => Scenario::Agents1k,
            Scenario::Agents10kVeth => Scenario::Agents10k,
            Scenario::Ping64Veth => Scenario::Ping64,
            Scenario::Bulk1Veth => Scenario::Bulk1,
            Scenario::Bulk8Veth => Scenario::Bulk8,
            other => other,
        }
    }

    /// The veth scenario of the same workload, if there is one.
    pub(crate) fn remote(self) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.veth() && s.base() == self)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Datakit => "datakit",
            Scenario::Agents1k => "agents-1000",
            Scenario::Agents10k => "agents-10000",
            Scenario::Ping64 => "ping-64",
            Scenario::Ping16k => "ping-16k",
            Scenario::Bulk1 => "bulk-1",
            Scenario::Bulk8 => "bulk-8",
            Scenario::DatakitTlsOrigination => "datakit-tls-origination",
            Scenario::DatakitTlsFrontend => "datakit-tls-frontend",
            Scenario::ConnRate => "connrate",
            Scenario::Ping64Scrape => "ping-64-scrape",
            Scenario::DatakitVeth => "datakit-veth",
            Scenario::ConnRateVeth => "connrate-veth",
            Scenario::Agents1kVeth => "agents-1000-veth",
            Scenario::Agents10kVeth => "agents-10000-veth",
            Scenario::Ping64Veth => "ping-64-veth",
            Scenario::Bulk1Veth => "bulk-1-veth",
            Scenario::Bulk8Veth => "bulk-8-veth",
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Scenario::Datakit => {
                "DataKit workload: 16 clients x 100 POSTs of 172,787 B (hey -> nginx)"
            }
            Scenario::Agents1k => {
                "Many agents: 1,000 keep-alive connections, a 2 KiB POST per second each"
            }
            Scenario::Agents10k => {
                "Many agents: 10,000 keep-alive connections, a 2 KiB POST per second each"
            }
            Scenario::Ping64 => "Latency: TCP ping-pong, 64 B (sockperf), half round trip",
            Scenario::Ping16k => "Latency: TCP ping-pong, 16 KiB (sockperf), half round trip",
            Scenario::Bulk1 => "Bulk: iperf3, one stream",
            Scenario::Bulk8 => "Bulk: iperf3, 8 streams",
            Scenario::DatakitTlsOrigination => {
                "TLS origination: the DataKit workload, hey (HTTP) -> proxy -> nginx (HTTPS, \
                 verified by the proxy)"
            }
            Scenario::DatakitTlsFrontend => {
                "TLS frontend: the DataKit workload, hey (HTTPS) -> proxy (terminates) -> nginx \
                 (HTTP)"
            }
            Scenario::ConnRate => {
                "New connections: 32 clients, one small GET per connection (hey \
                 -disable-keepalive -> nginx)"
            }
            Scenario::Ping64Scrape => {
                "Scrapes: TCP ping-pong, 64 B, quiet and with /metrics and /stats scraped every \
                 100 ms"
            }
            Scenario::DatakitVeth => "Remote agents (veth): the DataKit workload",
            Scenario::ConnRateVeth => "Remote agents (veth): new connections, one GET each",
            Scenario::Agents1kVeth => "Remote agents (veth): 1,000 keep-alive connections",
            Scenario::Agents10kVeth => "Remote agents (veth): 10,000 keep-alive connections",
            Scenario::Ping64Veth => "Remote agents (veth): TCP ping-pong, 64 B, half round trip",
            Scenario::Bulk1Veth => "Remote agents (veth): iperf3, one stream",
            Scenario::Bulk8Veth => "Remote agents (veth): iperf3, 8 streams",
        }
    }

    /// Which side of the proxy speaks TLS (`None`: plaintext scenarios).
    pub(crate) fn tls_side(self) -> Option<Side> {
        match self {
            Scenario::DatakitTlsOrigination => Some(Side::Origination),
            Scenario::DatakitTlsFrontend => Some(Side::Frontend),
            _ => None,
        }
    }

    /// Whether `row` is measured in this scenario. HAProxy's splice-auto is left out of the TLS
    /// scenarios: HAProxy cannot splice what OpenSSL encrypts or decrypts, so the row would
    /// repeat the plain HAProxy row; so is agent-proxy's remote-agents row (TLS always takes the
    /// userspace relay, local agents or not).
    pub(crate) fn has_row(self, row: Row) -> bool {
        if row.is_http() {
            // The proxies that read each request: the DataKit workload, in plain HTTP and
            // behind a TLS frontend (the per-API view of agents' HTTPS without MITM).
            return matches!(self, Scenario::Datakit | Scenario::DatakitTlsFrontend);
        }
        if row == Row::KernelAfter {
            // Where a connection's set-up weighs: short connections, and the workloads whose
            // figures it must not lose (DataKit, ping-pong latency).
            return matches!(
                self.base(),
                Scenario::ConnRate | Scenario::Datakit | Scenario::Ping64
            ) && self.tls_side().is_none();
        }
        if self.veth() {
            // Across namespaces the same-host path (sock_ops + sk_msg) never applies: the kernel
            // row would be the kernel-remote row again. Transparent mode is measured on the
            // loopback only.
            return !matches!(row, Row::Kernel | Row::Transparent);
        }
        if self == Scenario::Ping64Scrape {
            // Only agent-proxy has /metrics and /stats to scrape.
            return matches!(row, Row::Kernel | Row::KernelRemote | Row::Userspace);
        }
        if row == Row::Transparent {
            // Transparent mode beside the tcp rows where agents are: the DataKit workload and
            // latency (its TLS passes through, so the TLS scenarios would not differ).
            return matches!(
                self,
                Scenario::Datakit | Scenario::Ping64 | Scenario::Ping16k
            );
        }
        !(self.tls_side().is_some() && matches!(row, Row::HaproxySplice | Row::KernelRemote))
    }

    /// The row's name in this scenario's table: the TLS scenarios say what the rows do there.
    pub(crate) fn row_title(self, row: Row) -> &'static str {
        match (self.tls_side(), row) {
            (None, _) => row.title(),
            (Some(_), Row::Direct) => "direct (hey HTTPS to nginx)",
            (Some(_), Row::Haproxy) => "HAProxy 2.6 tcp + ssl",
            (Some(_), Row::HaproxyHttp) => "HAProxy 2.6 http + ssl",
            (Some(_), Row::Http) => "agent-proxy http + TLS, per-API metrics",
            (Some(_), Row::HttpBare) => "agent-proxy http + TLS, no per-API metrics",
            (Some(_), Row::Kernel) => "agent-proxy kernel (TLS: userspace relay)",
            (Some(_), _) => row.title(),
        }
    }

    /// The unit of [`Sample::throughput`].
    pub(crate) fn unit(self) -> &'static str {
        match self.base() {
            Scenario::ConnRate => "conn/s",
            Scenario::Datakit
            | Scenario::Agents1k
            | Scenario::Agents10k
            | Scenario::DatakitTlsOrigination
            | Scenario::DatakitTlsFrontend => "req/s",
            Scenario::Ping64 | Scenario::Ping16k | Scenario::Ping64Scrape => "round trips/s",
            _ => "GB/s",
        }
    }

    pub(crate) fn server(self) -> ServerKind {
        match self.base() {
            Scenario::Datakit | Scenario::ConnRate | Scenario::Agents1k | Scenario::Agents10k => {
                ServerKind::Intake
            }
            Scenario::Ping64 | Scenario::Ping16k | Scenario::Ping64Scrape => ServerKind::Sockperf,
            Scenario::DatakitTlsOrigination | Scenario::DatakitTlsFrontend => ServerKind::IntakeTls,
            _ => ServerKind::Iperf3,
        }
    }

    /// The columns of this scenario's table.
    pub(crate) fn metrics(self) -> &'static [Metric] {
        use Metric::*;
        match self.base() {
            Scenario::Datakit | Scenario::DatakitTlsOrigination | Scenario::DatakitTlsFrontend => {
                &[
                    Throughput,
                    LatP50,
                    LatP90,
                    LatP99,
                    CpuPerGb,
                    ProxyCpuPerGb,
                    PeakRss,
                    Rss,
                    Errors,
                    KernelShare,
                    StraightShare,
                    BytesPerRedirect,
                ]
            }
            Scenario::Agents1k | Scenario::Agents10k => &[
                Connections,
                Throughput,
                LatP50,
                LatP99,
                LatP999,
                MachineBusy,
                ProxyCpuPercent,
                PeakRss,
                Rss,
                RssIdle,
                RssActive,
                ScrapeMetrics,
                ScrapeStats,
                Errors,
                KernelShare,
                StraightShare,
            ],
            Scenario::ConnRate => &[
                Throughput,
                LatP50,
                LatP90,
                LatP99,
                CpuPerConn,
                ProxyCpuPerConn,
                PeakRss,
                Rss,
                Errors,
                KernelShare,
                StraightShare,
            ],
            Scenario::Ping64Scrape => &[
                LatP99Unscraped,
                LatP99,
                LatAvg,
                LatP999,
                ScrapeMetrics,
                ScrapeStats,
                Throughput,
                PeakRss,
                Rss,
            ],
            Scenario::Ping64 | Scenario::Ping16k => &[
                LatAvg,
                LatP50,
                LatP99,
                LatP999,
                Throughput,
                CpuPerGb,
                PeakRss,
                Rss,
                KernelShare,
                StraightShare,
            ],
            _ => &[
                Throughput,
                CpuPerGb,
                ProxyCpuPerGb,
                PeakRss,
                Rss,
                KernelShare,
                StraightShare,
                BytesPerRedirect,
            ],
        }
    }

    /// The figure the ratio columns compare.
    pub(crate) fn headline(self) -> Metric {
        match self.base() {
            Scenario::Ping64 | Scenario::Ping16k => Metric::LatAvg,
            Scenario::Ping64Scrape => Metric::LatP99,
            Scenario::Agents1k | Scenario::Agents10k => Metric::LatP99,
            _ => Metric::Throughput,
        }
    }
}

/// How long each kind of run lasts.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct Durations {
    /// sockperf and iperf3 runs.
    pub tool: Duration,
    /// The active phase of the many-agents scenarios.
    pub agents: Duration,
}

/// Everything a run needs besides the row.
pub(crate) struct Context<'a> {
    /// What the file-descriptor limit allows (two sockets per agent in the proxy).
    pub max_agents: usize,
    /// The namespace the clients run in.
    pub clients: &'a NetNs,
    /// The namespace the proxy runs in, and the address it listens on.
    pub proxy_ns: &'a NetNs,
    pub proxy_listen: SocketAddr,
    /// The server's plaintext listener.
    pub server: SocketAddr,
    /// The server's TLS listener and the certificates (TLS scenarios).
    pub tls_server: Option<SocketAddr>,
    pub pki: Option<&'a Pki>,
    pub dir: &'a Path,
    pub datakit_body: &'a Path,
    pub durations: Durations,
}

/// One run of `row` in `scenario`: starts the row's proxy, drives the load, reads the figures,
/// stops the proxy.
pub(crate) fn measure(scenario: Scenario, row: Row, cx: &Context<'_>) -> anyhow::Result<Sample> {
    let side = scenario.tls_side();
    let (backend, direct, tls) = match side {
        None => (cx.server, cx.server, None),
        Some(side) => {
            let (Some(tls_server), Some(pki)) = (cx.tls_server, cx.pki) else {
                anyhow::bail!("{} needs the TLS intake and certificates", scenario.name());
            };
            let backend = match side {
                Side::Origination => tls_server,
                Side::Frontend => cx.server,
            };
            (backend, tls_server, Some(ProxyTls { side, pki }))
        }
    };
    let mut proxy = Proxy::start(row, cx.proxy_ns, cx.proxy_listen, backend, cx.dir, tls)?;
    // hey speaks TLS to whoever expects it (nginx's TLS listener, a TLS frontend), naming the
    // server its certificate is for.
    let (target, tls_name): (SocketAddr, Option<&str>) = match proxy {
        // The client knows nothing of the proxy: it connects to the intake's address.
        Some(_) if row == Row::Transparent => {
            (SocketAddr::new(TRANSPARENT_IP, backend.port()), None)
        }
        Some(_) => (
            cx.proxy_listen,
            (side == Some(Side::Frontend)).then_some(PROXY_NAME),
        ),
        None => (direct, side.map(|_| INTAKE_NAME)),
    };
    let pid = proxy.as_ref().map(Proxy::pid);
    let admin = proxy.as_ref().and_then(Proxy::admin).map(|addr| Admin {
        ns: cx.proxy_ns.path(),
        addr,
    });
    let mut sample = match scenario.base() {
        Scenario::Agents1k | Scenario::Agents10k => agents_run(scenario, target, pid, admin, cx)?,
        Scenario::Ping64Scrape => {
            let admin = admin.context("ping-64-scrape measures agent-proxy rows only")?;
            scrape_run(row, target, pid, &admin, cx)?
        }
        _ => tool_run(scenario, target, tls_name, pid, cx)?,
    };
    if let Some(p) = proxy.as_mut() {
        p.ensure_running()?;
        let mem = Memory::read(p.pid())?;
        sample.proxy_peak_rss_kib = Some(mem.hwm_kib);
        sample.proxy_rss_kib = Some(mem.rss_kib);
        if let Some(m) = p.metrics()? {
            let path = |path: &str| m.count("agent_proxy_bytes_total", &[("path", path)]);
            sample.kernel_bytes = Some(path("kernel"));
            sample.userspace_bytes = Some(path("userspace"));
            sample.straight_bytes = Some(m.count("agent_proxy_local_agent_bytes_total", &[]));
            sample.kernel_redirects = Some(m.count("agent_proxy_kernel_redirects_total", &[]));
        }
    }
    if let Some(p) = proxy {
        p.stop()?;
    }
    Ok(sample)
}

/// DataKit (plain or TLS), ping-pong and bulk: one external client process; CPU over its whole
/// life. With `tls_name`, hey speaks HTTPS to `target`, see [`hey_args`].
fn tool_run(
    scenario: Scenario,
    target: SocketAddr,
    tls_name: Option<&str>,
    pid: Option<u32>,
    cx: &Context<'_>,
) -> anyhow::Result<Sample> {
    let port = target.port().to_string();
    let host = target.ip().to_string();
    let secs = cx.durations.tool.as_secs().max(1).to_string();
    let scenario = scenario.base();
    let (program, args): (&str, Vec<String>) = match scenario {
        Scenario::Datakit | Scenario::DatakitTlsOrigination | Scenario::DatakitTlsFrontend => {
            ("hey", hey_args(target, tls_name, cx.datakit_body))
        }
        Scenario::ConnRate => ("hey", connrate_args(target, cx.durations.tool)),
        Scenario::Ping64 | Scenario::Ping16k | Scenario::Ping64Scrape => {
            let size = if scenario == Scenario::Ping16k {
                16384
            } else {
                64
            };
            let a = [
                "ping-pong",
                "--tcp",
                "-i",
                &host,
                "-p",
                &port,
                "-m",
                &size.to_string(),
                "-t",
                &secs,
            ];
            ("sockperf", a.map(str::to_owned).to_vec())
        }
        Scenario::Bulk1 | Scenario::Bulk8 => {
            let mut a: Vec<String> = ["-c", &host, "-p", &port, "-t", &secs, "-J"]
                .map(str::to_owned)
                .to_vec();
            if scenario == Scenario::Bulk8 {
                a.extend(["-P".to_owned(), "8".to_owned()]);
            }
            ("iperf3", a)
        }
        _ => unreachable!("{} has a run of its own", scenario.name()),
    };
    let limit = cx.durations.tool + Duration::from_secs(120);
    let ticks_before = pid.map(process_ticks).transpose()?;
    let cpu_before = CpuTimes::read()?;
    let started = Instant::now();
    let out = run_client(cx.clients, program, &args, limit)?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_before.until(&CpuTimes::read()?);
    let proxy_cpu_seconds = match (ticks_before, pid) {
        (Some(before), Some(pid)) => Some(ticks(process_ticks(pid)?.saturating_sub(before))),
        _ => None,
    };
    let mut sample = Sample {
        seconds,
        machine_cpu_seconds: cpu.busy_seconds(ticks_per_second()),
        machine_busy_percent: cpu.busy_fraction() * 100.0,
        proxy_cpu_seconds,
        ..Sample::default()
    };
    match scenario {
        Scenario::Datakit | Scenario::DatakitTlsOrigination | Scenario::DatakitTlsFrontend => {
            let r = parse::hey(&out)?;
            sample.throughput = r.requests_per_second;
            sample.latency = Some(r.latency);
            sample.bytes = r.ok * DATAKIT_BODY as u64;
            // Requests hey never got an answer for at all count as errors too.
            sample.errors = (DATAKIT_REQUESTS as u64).saturating_sub(r.ok).max(r.errors);
        }
        Scenario::ConnRate => {
            let r = parse::hey(&out)?;
            sample.throughput = r.requests_per_second;
            sample.latency = Some(r.latency);
            sample.connections_made = Some(r.ok);
            sample.errors = r.errors;
        }
        Scenario::Ping64 | Scenario::Ping16k | Scenario::Ping64Scrape => {
            let size = if scenario == Scenario::Ping16k {
                16384
            } else {
                64
            };
            let r = parse::sockperf(&out)?;
            sample.throughput = r.round_trips_per_second;
            sample.latency = Some(r.latency);
            sample.bytes = r.total_messages * size * 2;
        }
        _ => {
            let r = parse::iperf3(&out)?;
            sample.throughput = r.gigabytes_per_second();
            sample.bytes = r.bytes;
        }
    }
    Ok(sample)
}

/// hey's arguments for the DataKit workload to `target`. With `tls_name`, over HTTPS and with
/// `-host NAME`: hey 0.1.4 sends its Host (by default `IP:port`) as the TLS SNI, which rustls
/// refuses as not a host name (RFC 6066: `illegal_parameter`) where OpenSSL ignores it; a
/// name fixes both. hey never verifies the certificate (no option to trust a CA).
fn hey_args(target: SocketAddr, tls_name: Option<&str>, body: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-n".into(),
        DATAKIT_REQUESTS.to_string(),
        "-c".into(),
        DATAKIT_CLIENTS.to_string(),
        "-m".into(),
        "POST".into(),
        "-T".into(),
        "text/plain".into(),
        "-D".into(),
        body.display().to_string(),
    ];
    let scheme = match tls_name {
        Some(name) => {
            args.extend(["-host".to_owned(), name.to_owned()]);
            "https"
        }
        None => "http",
    };
    args.push(format!("{scheme}://{target}/v1/write/metric"));
    args
}

/// hey's arguments for the connection-rate scenario: [`CONNRATE_CLIENTS`] clients for
/// `duration`, each request on a connection of its own (`Connection: close`), a GET that nginx
/// answers with 3 bytes.
fn connrate_args(target: SocketAddr, duration: Duration) -> Vec<String> {
    vec![
        "-z".into(),
        format!("{}s", duration.as_secs().max(1)),
        "-c".into(),
        CONNRATE_CLIENTS.to_string(),
        "-disable-keepalive".into(),
        format!("http://{target}/"),
    ]
}

/// `ping-64-scrape`: the 64 B ping-pong once quiet and once while a thread scrapes `/metrics`
/// and `/stats` every 100 ms, in turn first and second from one run to the next (the first
/// sockperf after the proxy's start is not the same as the second); the sample is the scraped
/// run's, with the quiet run's p99 beside it and the scrapes' median times.
fn scrape_run(
    row: Row,
    target: SocketAddr,
    pid: Option<u32>,
    admin: &Admin,
    cx: &Context<'_>,
) -> anyhow::Result<Sample> {
    // Each row's own count of runs (warm-up included), whatever the other rows do.
    static TURNS: [AtomicUsize; Row::ALL.len()] = [const { AtomicUsize::new(0) }; Row::ALL.len()];
    let turn = Row::ALL.iter().position(|&r| r == row).unwrap_or(0);
    let ping = || tool_run(Scenario::Ping64Scrape, target, None, pid, cx);
    let scraped_first = TURNS[turn].fetch_add(1, Ordering::Relaxed) % 2 == 1;
    let (quiet, (scraped, times)) = if scraped_first {
        let scraped = admin.scraping(ping);
        (ping()?, scraped)
    } else {
        let quiet = ping()?;
        (quiet, admin.scraping(ping))
    };
    let (mut sample, times) = (scraped?, times?);
    sample.p99_unscraped = quiet.latency.map(|l| l.p99);
    sample.scrape_metrics_ms = Some(times.metrics_ms);
    sample.scrape_stats_ms = Some(times.stats_ms);
    Ok(sample)
}

fn agents_run(
    scenario: Scenario,
    target: SocketAddr,
    pid: Option<u32>,
    admin: Option<Admin>,
    cx: &Context<'_>,
) -> anyhow::Result<Sample> {
    let n = if scenario.base() == Scenario::Agents1k {
        1_000
    } else {
        10_000
    };
    let n = n.min(cx.max_agents);
    let plan = agents::Plan {
        target,
        agents: n,
        body_len: AGENT_BODY,
        period: AGENT_PERIOD,
        active: cx.durations.agents,
        proxy_pid: pid,
        admin,
    };
    let limit = cx.durations.agents + Duration::from_secs(180);
    let o = cx
        .clients
        .block_on(limit, move || agents::run(plan))
        .with_context(|| format!("{} agents", n))?;
    let per_conn = |m: Option<Memory>| -> Option<f64> {
        let (start, now) = (o.mem_start?, m?);
        Some((now.rss_kib as f64 - start.rss_kib as f64) * 1024.0 / o.connected as f64)
    };
    Ok(Sample {
        throughput: o.requests as f64 / o.active_seconds,
        latency: o.latency,
        bytes: o.requests * AGENT_BODY as u64,
        seconds: o.active_seconds,
        machine_cpu_seconds: o.cpu.busy_seconds(ticks_per_second()),
        machine_busy_percent: o.cpu.busy_fraction() * 100.0,
        proxy_cpu_seconds: o.proxy_ticks.map(ticks),
        rss_per_idle_connection: per_conn(o.mem_idle),
        rss_per_active_connection: per_conn(o.mem_active),
        errors: o.errors,
        connections: Some(o.connected),
        scrape_metrics_ms: o.scrape.map(|t| t.metrics_ms),
        scrape_stats_ms: o.scrape.map(|t| t.stats_ms),
        ..Sample::default()
    })
}

fn ticks(t: u64) -> f64 {
    t as f64 / ticks_per_second() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_cli_and_json_spellings() {
        for s in Scenario::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
            let cli = clap::ValueEnum::to_possible_value(&s).unwrap();
            assert_eq!(cli.get_name(), s.name());
        }
    }

    #[test]
    fn connrate_closes_every_connection() {
        let args = connrate_args("10.77.0.1:7000".parse().unwrap(), Duration::from_secs(5));
        assert_eq!(
            args.join(" "),
            "-z 5s -c 32 -disable-keepalive http://10.77.0.1:7000/"
        );
    }

    #[test]
    fn hey_speaks_https_with_a_host_name_only_when_asked() {
        let target = "127.0.0.1:7000".parse().unwrap();
        let body = Path::new("/w/metric.data");
        let plain = hey_args(target, None, body);
        assert_eq!(
            plain.join(" "),
            "-n 1600 -c 16 -m POST -T text/plain -D /w/metric.data \
             http://127.0.0.1:7000/v1/write/metric"
        );
        let tls = hey_args(target, Some("proxy.test"), body);
        assert_eq!(
            tls.join(" "),
            "-n 1600 -c 16 -m POST -T text/plain -D /w/metric.data -host proxy.test \
             https://127.0.0.1:7000/v1/write/metric"
        );
    }

    #[test]
    fn tls_scenarios_drop_splice_auto_and_say_what_the_rows_do() {
        for s in [
            Scenario::DatakitTlsOrigination,
            Scenario::DatakitTlsFrontend,
        ] {
            assert!(s.tls_side().is_some());
            assert_eq!(s.server(), ServerKind::IntakeTls);
            assert_eq!(s.metrics(), Scenario::Datakit.metrics());
            assert!(!s.has_row(Row::HaproxySplice));
            assert!(s.has_row(Row::Kernel) && s.has_row(Row::Userspace));
            assert_eq!(s.row_title(Row::Haproxy), "HAProxy 2.6 tcp + ssl");
            assert!(s.row_title(Row::Kernel).contains("userspace relay"));
        }
        assert_eq!(
            Scenario::DatakitTlsOrigination.tls_side(),
            Some(Side::Origination)
        );
        assert_eq!(
            Scenario::DatakitTlsFrontend.tls_side(),
            Some(Side::Frontend)
        );
        for s in Scenario::ALL.into_iter().filter(|s| s.tls_side().is_none()) {
            let transparent = matches!(s, Scenario::Datakit | Scenario::Ping64 | Scenario::Ping16k);
            assert_eq!(s.has_row(Row::Transparent), transparent, "{s:?}");
            let http = s == Scenario::Datakit;
            assert!(
                Row::ALL
                    .into_iter()
                    .filter(|r| r.is_http())
                    .all(|r| s.has_row(r) == http),
                "{s:?}"
            );
            let after = matches!(
                s.base(),
                Scenario::ConnRate | Scenario::Datakit | Scenario::Ping64
            );
            assert_eq!(s.has_row(Row::KernelAfter), after, "{s:?}");
            let others = Row::ALL
                .into_iter()
                .filter(|&r| r != Row::Transparent && r != Row::KernelAfter && !r.is_http());
            if s.veth() {
                // No same-host path across namespaces: the kernel row is kernel-remote there.
                assert!(!s.has_row(Row::Kernel), "{s:?}");
                assert!(others.filter(|&r| r != Row::Kernel).all(|r| s.has_row(r)));
                assert!(!s.base().veth());
                assert_eq!(s.base().remote(), Some(s));
                assert_eq!(s.server(), s.base().server());
                assert_eq!(s.metrics(), s.base().metrics());
            } else if s == Scenario::Ping64Scrape {
                let scraped: Vec<Row> = Row::ALL.into_iter().filter(|&r| s.has_row(r)).collect();
                assert_eq!(scraped, [Row::Kernel, Row::KernelRemote, Row::Userspace]);
            } else {
                assert!(others.clone().all(|r| s.has_row(r)), "{s:?}");
            }
            assert!(Row::ALL.into_iter().all(|r| s.row_title(r) == r.title()));
        }
    }
}
