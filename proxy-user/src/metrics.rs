//! Prometheus metrics of the proxy, served by [`crate::admin`] on `GET /metrics`.
//!
//! Every family lives in one [`Metrics`] value with its own [`Registry`] (not the process-global
//! default registry), so that tests and several proxies in one process never share counters.
//! Names and label names are part of the user-facing contract (`/work/shared/interface.md`):
//! extend, never rename.
//!
//! Two data paths feed the byte counters. The userspace relay increments
//! `agent_proxy_bytes_total{path="userspace"}` as it copies. Bytes the kernel moves with the
//! sockmap verdict never pass through userspace, so `path="kernel"` (and
//! `agent_proxy_kernel_redirects_total`, `agent_proxy_kernel_errors_total`) are copied from the
//! eBPF maps by the admin endpoint's `refresh` hook just before each scrape, with
//! `agent_proxy_kernel_map_entries` (counted by the daemon as it fills the maps, see
//! `kernel::registry`).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::outcome::{End, Reject};

/// Upper bounds of `agent_proxy_backend_connect_seconds`: from a loopback connect (sub-ms) to the
/// longest sensible `connect_timeout`.
const CONNECT_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of `agent_proxy_connection_duration_seconds`: agents open both one-shot
/// connections (milliseconds) and long-lived keep-alive ones (up to an hour and more).
const DURATION_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// Upper bounds of `agent_proxy_http_request_duration_seconds`: an intake answers in
/// milliseconds; a slow one or a long upload takes seconds.
const REQUEST_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All metric families of the proxy, registered in [`Metrics::registry`].
///
/// Cheap to share behind an `Arc`: every field is internally reference-counted and atomic.
#[derive(Debug)]
pub struct Metrics {
    /// The registry holding every family below; [`Metrics::render`] encodes it.
    pub registry: Registry,
    /// `agent_proxy_frontend_connections_total{frontend}`: connections accepted.
    pub frontend_connections_total: IntCounterVec,
    /// `agent_proxy_frontend_current_connections{frontend}`: connections open now.
    pub frontend_current_connections: IntGaugeVec,
    /// `agent_proxy_frontend_rejected_total{frontend,reason}`: connections refused.
    pub frontend_rejected_total: IntCounterVec,
    /// `agent_proxy_bytes_total{frontend,direction,path}`: bytes carried.
    pub bytes_total: IntCounterVec,
    /// `agent_proxy_kernel_redirects_total{frontend,direction}`: sockmap redirects.
    pub kernel_redirects_total: IntCounterVec,
    /// `agent_proxy_local_agent_bytes_total{frontend}` (extension): bytes same-host agents sent
    /// straight into upstream sockets (sk_msg); also in `bytes_total{path="kernel"}`.
    pub local_agent_bytes_total: IntCounterVec,
    /// `agent_proxy_kernel_errors_total{kind}`: errors counted by the eBPF programs.
    pub kernel_errors_total: IntCounterVec,
    /// `agent_proxy_kernel_map_entries{map}` (extension): entries in each eBPF map now.
    pub kernel_map_entries: IntGaugeVec,
    /// `agent_proxy_dataplane{path}` (extension): 1 for the data path in use, 0 for the other.
    pub dataplane: IntGaugeVec,
    /// `agent_proxy_backend_connect_errors_total{backend,server}`: failed dials.
    pub backend_connect_errors_total: IntCounterVec,
    /// `agent_proxy_backend_connect_seconds{backend}`: time to establish a server connection.
    pub backend_connect_seconds: HistogramVec,
    /// `agent_proxy_server_up{backend,server,address}`: health-check state.
    pub server_up: IntGaugeVec,
    /// `agent_proxy_tls_handshake_errors_total{side,name,reason}`: failed TLS handshakes.
    pub tls_handshake_errors_total: IntCounterVec,
    /// `agent_proxy_dns_resolutions_total{host,result}`: DNS lookups.
    pub dns_resolutions_total: IntCounterVec,
    /// `agent_proxy_connect_requests_total{frontend,status}`: HTTP CONNECT requests answered.
    pub connect_requests_total: IntCounterVec,
    /// `agent_proxy_http_requests_total{frontend,method,api,status}`: HTTP requests answered
    /// (plain requests of connect frontends), `api` the path with ids collapsed (bounded).
    pub http_requests_total: IntCounterVec,
    /// `agent_proxy_http_request_duration_seconds{frontend,api}`: from the request head to
    /// the end of the answer.
    pub http_request_duration_seconds: HistogramVec,
    /// `agent_proxy_http_request_bytes_total{frontend,api}` (extension): request body bytes.
    pub http_request_bytes_total: IntCounterVec,
    /// `agent_proxy_http_response_bytes_total{frontend,api}` (extension): answer body bytes.
    pub http_response_bytes_total: IntCounterVec,
    /// `agent_proxy_http_api_overflow_total{frontend}` (extension): requests counted as
    /// `api="other"` because the frontend's set of apis was full or the path too long.
    pub http_api_overflow_total: IntCounterVec,
    /// `agent_proxy_connection_duration_seconds{frontend}`: lifetime of finished connections.
    pub connection_duration_seconds: HistogramVec,
    /// `agent_proxy_connections_ended_total{frontend,path,end}` (extension): how connections ended.
    pub connections_ended_total: IntCounterVec,
    /// `agent_proxy_dns_stale{host}` (extension): 1 while the last resolution of a host failed
    /// and its last good answer is in use.
    pub dns_stale: IntGaugeVec,
    /// `agent_proxy_config_reloads_total{result}`: SIGHUP reloads, `ok` or `error`. Moved only
    /// by [`Metrics::record_reload`], with the gauge below.
    pub config_reloads_total: IntCounterVec,
    /// `agent_proxy_config_last_reload_successful`: 0 after a refused reload, until one succeeds.
    pub config_last_reload_successful: prometheus::IntGauge,
    /// Held while a reload's outcome is recorded and while a scrape gathers, so that a scrape
    /// never shows the new count with the old gauge (see [`Metrics::record_reload`]).
    reload_outcome: std::sync::Mutex<()>,
    /// `agent_proxy_build_info{version,commit}`: always 1, for joining on the version.
    pub build_info: IntGaugeVec,
    /// `agent_proxy_upgrades_total{result}`: SIGUSR2 upgrades this process started, `ok` (the
    /// new process serves) or `error` (this one kept serving).
    pub upgrades_total: IntCounterVec,
}

impl Metrics {
    /// Creates every family and registers it in a fresh [`Registry`].
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        Self {
            frontend_connections_total: counter(
                r,
                "agent_proxy_frontend_connections_total",
                "Client connections accepted, by frontend",
                &["frontend"],
            ),
            frontend_current_connections: gauge(
                r,
                "agent_proxy_frontend_current_connections",
                "Client connections open now, by frontend",
                &["frontend"],
            ),
            frontend_rejected_total: counter(
                r,
                "agent_proxy_frontend_rejected_total",
                &format!(
                    "Client connections refused, by frontend and reason ({}, address_CLASS)",
                    listed(Reject::ALL.map(Reject::as_str))
                ),
                &["frontend", "reason"],
            ),
            bytes_total: counter(
                r,
                "agent_proxy_bytes_total",
                "Bytes carried, by frontend, direction (upstream = client to server) and data \
                 path; path=\"kernel\" is read from the eBPF maps",
                &["frontend", "direction", "path"],
            ),
            kernel_redirects_total: counter(
                r,
                "agent_proxy_kernel_redirects_total",
                "Messages the eBPF sockmap verdict redirected between sockets, by frontend and \
                 direction; read from the eBPF maps",
                &["frontend", "direction"],
            ),
            local_agent_bytes_total: counter(
                r,
                "agent_proxy_local_agent_bytes_total",
                "Bytes agents on this host sent straight into the upstream socket (sock_ops + \
                 sk_msg, no loopback leg), by frontend; included in agent_proxy_bytes_total \
                 path=\"kernel\"; read from the eBPF maps",
                &["frontend"],
            ),
            kernel_errors_total: counter(
                r,
                "agent_proxy_kernel_errors_total",
                "Errors counted by the eBPF programs, by kind; read from the eBPF maps",
                &["kind"],
            ),
            kernel_map_entries: gauge(
                r,
                "agent_proxy_kernel_map_entries",
                "Entries in each eBPF map now",
                &["map"],
            ),
            dataplane: gauge(
                r,
                "agent_proxy_dataplane",
                "Data path in use: 1 for the active path (kernel or userspace), 0 for the other",
                &["path"],
            ),
            backend_connect_errors_total: counter(
                r,
                "agent_proxy_backend_connect_errors_total",
                "Failed connection attempts to a backend server, by backend and server",
                &["backend", "server"],
            ),
            backend_connect_seconds: histogram(
                r,
                "agent_proxy_backend_connect_seconds",
                "Seconds taken to connect to a backend server (TCP, plus TLS when originated), \
                 by backend",
                &["backend"],
                CONNECT_SECONDS_BUCKETS,
            ),
            server_up: gauge(
                r,
                "agent_proxy_server_up",
                "Health-check state of each backend server address: 1 up, 0 down",
                &["backend", "server", "address"],
            ),
            tls_handshake_errors_total: counter(
                r,
                "agent_proxy_tls_handshake_errors_total",
                "Failed TLS handshakes, by side (frontend = with clients, backend = with servers), \
                 frontend or backend name, and reason (timeout, shutdown, certificate, alert, \
                 protocol, closed, config)",
                &["side", "name", "reason"],
            ),
            dns_resolutions_total: counter(
                r,
                "agent_proxy_dns_resolutions_total",
                "DNS resolutions of server and destination hostnames, by host and result \
                 (ok, empty, error)",
                &["host", "result"],
            ),
            connect_requests_total: counter(
                r,
                "agent_proxy_connect_requests_total",
                "HTTP CONNECT requests answered, by frontend and response status code",
                &["frontend", "status"],
            ),
            http_requests_total: counter(
                r,
                "agent_proxy_http_requests_total",
                "HTTP requests answered, by frontend, method (the standard ones, else other), api \
                 (the path with ids collapsed to :id; at most 100 per frontend, then other) and \
                 status",
                &["frontend", "method", "api", "status"],
            ),
            http_request_duration_seconds: histogram(
                r,
                "agent_proxy_http_request_duration_seconds",
                "Seconds from an HTTP request's head to the end of its answer, by frontend and api",
                &["frontend", "api"],
                REQUEST_SECONDS_BUCKETS,
            ),
            http_request_bytes_total: counter(
                r,
                "agent_proxy_http_request_bytes_total",
                "Request body bytes of HTTP requests, by frontend and api",
                &["frontend", "api"],
            ),
            http_response_bytes_total: counter(
                r,
                "agent_proxy_http_response_bytes_total",
                "Answer body bytes of HTTP requests, by frontend and api",
                &["frontend", "api"],
            ),
            http_api_overflow_total: counter(
                r,
                "agent_proxy_http_api_overflow_total",
                "HTTP requests counted as api=\"other\": the frontend had 100 apis already, or the \
                 path was over 128 bytes",
                &["frontend"],
            ),
            connection_duration_seconds: histogram(
                r,
                "agent_proxy_connection_duration_seconds",
                "Seconds from accept to close of finished client connections, by frontend",
                &["frontend"],
                DURATION_SECONDS_BUCKETS,
            ),
            dns_stale: gauge(
                r,
                "agent_proxy_dns_stale",
                "1 while the last DNS resolution of a host failed and its last good answer is used",
                &["host"],
            ),
            connections_ended_total: counter(
                r,
                "agent_proxy_connections_ended_total",
                &format!(
                    "Finished client connections, by frontend, data path and how they ended ({})",
                    listed(End::ALL.map(End::as_str))
                ),
                &["frontend", "path", "end"],
            ),
            config_reloads_total: counter(
                r,
                "agent_proxy_config_reloads_total",
                "Configuration reloads (SIGHUP), by result (ok, error: the old config kept serving)",
                &["result"],
            ),
            config_last_reload_successful: {
                let g = prometheus::IntGauge::new(
                    "agent_proxy_config_last_reload_successful",
                    "1 when the last reload succeeded (or none was tried), 0 when it was refused",
                )
                .expect("valid gauge definition");
                r.register(Box::new(g.clone()))
                    .expect("gauge registered once");
                g.set(1);
                g
            },
            upgrades_total: counter(
                r,
                "agent_proxy_upgrades_total",
                "In-place upgrades (SIGUSR2) this process started, by result (ok: the new process \
                 serves; error: this one kept serving)",
                &["result"],
            ),
            build_info: {
                let info = gauge(
                    r,
                    "agent_proxy_build_info",
                    "Always 1; the labels say which build runs",
                    &["version", "commit"],
                );
                info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("AGENT_PROXY_COMMIT")])
                    .set(1);
                info
            },
            reload_outcome: std::sync::Mutex::new(()),
            registry: {
                // process_cpu_seconds_total, process_open_fds, process_max_fds,
                // process_resident_memory_bytes, process_virtual_memory_bytes,
                // process_start_time_seconds (Linux /proc).
                let process = prometheus::process_collector::ProcessCollector::for_self();
                registry
                    .register(Box::new(process))
                    .expect("process collector registered once");
                registry
            },
        }
    }

    /// Creates a frontend's labelled series at zero (every rejection reason), so that alert
    /// rules and rates see them before the first event.
    pub fn init_frontend(&self, frontend: &str) {
        for reason in Reject::ALL {
            self.frontend_rejected_total
                .with_label_values(&[frontend, reason.as_str()]);
        }
    }

    /// Counts a reload (`ok` or `error`) and sets `agent_proxy_config_last_reload_successful`
    /// as one step for scrapes. The registry gathers its collectors in hash order, some
    /// microseconds apart: without the lock a scrape could read the gauge before the update
    /// and the counter after it, e.g. the third `ok` with the gauge still 0 from a refused
    /// reload just before.
    pub fn record_reload(&self, ok: bool) {
        let _outcome = self
            .reload_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.config_last_reload_successful.set(i64::from(ok));
        self.config_reloads_total
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Encodes the registry in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let families = {
            let _outcome = self
                .reload_outcome
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.registry.gather()
        };
        let mut buf = Vec::new();
        // Encoding only fails on an I/O error of the writer (a Vec never fails) or a metric
        // family without samples, which `gather` already leaves out; log rather than panic.
        if let Err(err) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        // The text encoder only writes UTF-8 (names, labels and HELP are `String`s).
        String::from_utf8(buf).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// Registration only fails for an invalid name, duplicate name or inconsistent labels: all fixed
// at compile time above, and covered by the tests, so a failure is a programming error.

/// `a, b, c`: the values of a label, for a HELP text.
fn listed<const N: usize>(values: [&str; N]) -> String {
    values.join(", ")
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("counter registered once");
    vec
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("gauge registered once");
    vec
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, labels).expect("valid histogram definition");
    registry
        .register(Box::new(vec.clone()))
        .expect("histogram registered once");
    vec
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touches every family once, so that each appears in the output (empty vecs are omitted).
    fn observe_all(m: &Metrics) {
        m.frontend_connections_total
            .with_label_values(&["fe"])
            .inc();
        m.frontend_current_connections
            .with_label_values(&["fe"])
            .set(2);
        m.frontend_rejected_total
            .with_label_values(&["fe", "max_connections"])
            .inc();
        m.bytes_total
            .with_label_values(&["fe", "upstream", "kernel"])
            .inc_by(42);
        m.kernel_redirects_total
            .with_label_values(&["fe", "downstream"])
            .inc();
        m.kernel_errors_total.with_label_values(&["redirect"]).inc();
        m.kernel_map_entries.with_label_values(&["sockmap"]).set(4);
        m.dataplane.with_label_values(&["kernel"]).set(1);
        m.backend_connect_errors_total
            .with_label_values(&["be", "a:443"])
            .inc();
        m.backend_connect_seconds
            .with_label_values(&["be"])
            .observe(0.002);
        m.server_up
            .with_label_values(&["be", "a:443", "10.0.0.1:443"])
            .set(1);
        m.tls_handshake_errors_total
            .with_label_values(&["frontend", "fe", "certificate"])
            .inc();
        m.config_reloads_total.with_label_values(&["ok"]).inc();
        m.upgrades_total.with_label_values(&["ok"]).inc();
        m.dns_resolutions_total
            .with_label_values(&["a", "ok"])
            .inc();
        m.connect_requests_total
            .with_label_values(&["fe", "200"])
            .inc();
        m.connection_duration_seconds
            .with_label_values(&["fe"])
            .observe(1.5);
        m.connections_ended_total
            .with_label_values(&["fe", "kernel", "client_close"])
            .inc();
        m.dns_stale.with_label_values(&["a"]).set(1);
        m.http_requests_total
            .with_label_values(&["fe", "GET", "/x", "200"])
            .inc();
        m.http_request_duration_seconds
            .with_label_values(&["fe", "/x"])
            .observe(0.01);
        m.http_request_bytes_total
            .with_label_values(&["fe", "/x"])
            .inc();
        m.http_response_bytes_total
            .with_label_values(&["fe", "/x"])
            .inc();
        m.http_api_overflow_total.with_label_values(&["fe"]).inc();
    }

    const FAMILIES: &[(&str, &str)] = &[
        ("agent_proxy_frontend_connections_total", "counter"),
        ("agent_proxy_frontend_current_connections", "gauge"),
        ("agent_proxy_frontend_rejected_total", "counter"),
        ("agent_proxy_bytes_total", "counter"),
        ("agent_proxy_kernel_redirects_total", "counter"),
        ("agent_proxy_kernel_errors_total", "counter"),
        ("agent_proxy_kernel_map_entries", "gauge"),
        ("agent_proxy_dataplane", "gauge"),
        ("agent_proxy_backend_connect_errors_total", "counter"),
        ("agent_proxy_backend_connect_seconds", "histogram"),
        ("agent_proxy_server_up", "gauge"),
        ("agent_proxy_tls_handshake_errors_total", "counter"),
        ("agent_proxy_dns_resolutions_total", "counter"),
        ("agent_proxy_connect_requests_total", "counter"),
        ("agent_proxy_connection_duration_seconds", "histogram"),
        ("agent_proxy_connections_ended_total", "counter"),
        ("agent_proxy_http_requests_total", "counter"),
        ("agent_proxy_http_request_duration_seconds", "histogram"),
        ("agent_proxy_http_request_bytes_total", "counter"),
        ("agent_proxy_http_response_bytes_total", "counter"),
        ("agent_proxy_http_api_overflow_total", "counter"),
        ("agent_proxy_dns_stale", "gauge"),
        ("agent_proxy_config_reloads_total", "counter"),
        ("agent_proxy_config_last_reload_successful", "gauge"),
        ("agent_proxy_build_info", "gauge"),
        ("agent_proxy_upgrades_total", "counter"),
    ];

    #[test]
    fn render_has_every_family_with_help_and_type() {
        let m = Metrics::new();
        observe_all(&m);
        let text = m.render();
        for (name, kind) in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "missing TYPE of {name} in:\n{text}"
            );
            let help = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
                .unwrap_or_else(|| panic!("missing HELP of {name}"));
            assert!(help.len() > 10, "HELP of {name} too short: {help}");
        }
        let ours = m
            .registry
            .gather()
            .iter()
            .filter(|f| f.name().starts_with("agent_proxy_"))
            .count();
        assert_eq!(ours, FAMILIES.len());
        for process in [
            "process_start_time_seconds",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(text.contains(&format!("# TYPE {process} ")), "no {process}");
        }
        let build = format!(
            "agent_proxy_build_info{{commit=\"{}\",version=\"{}\"}} 1",
            env!("AGENT_PROXY_COMMIT"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "no {build} in:\n{text}");
    }

    #[test]
    fn render_has_label_names_and_values() {
        let m = Metrics::new();
        observe_all(&m);
        let text = m.render();
        for sample in [
            r#"agent_proxy_frontend_connections_total{frontend="fe"} 1"#,
            r#"agent_proxy_frontend_current_connections{frontend="fe"} 2"#,
            r#"agent_proxy_frontend_rejected_total{frontend="fe",reason="max_connections"} 1"#,
            r#"agent_proxy_bytes_total{direction="upstream",frontend="fe",path="kernel"} 42"#,
            r#"agent_proxy_kernel_redirects_total{direction="downstream",frontend="fe"} 1"#,
            r#"agent_proxy_kernel_errors_total{kind="redirect"} 1"#,
            r#"agent_proxy_kernel_map_entries{map="sockmap"} 4"#,
            r#"agent_proxy_dataplane{path="kernel"} 1"#,
            r#"agent_proxy_backend_connect_errors_total{backend="be",server="a:443"} 1"#,
            r#"agent_proxy_backend_connect_seconds_count{backend="be"} 1"#,
            r#"agent_proxy_server_up{address="10.0.0.1:443",backend="be",server="a:443"} 1"#,
            r#"agent_proxy_tls_handshake_errors_total{name="fe",reason="certificate",side="frontend"} 1"#,
            r#"agent_proxy_dns_resolutions_total{host="a",result="ok"} 1"#,
            r#"agent_proxy_connect_requests_total{frontend="fe",status="200"} 1"#,
            r#"agent_proxy_connection_duration_seconds_count{frontend="fe"} 1"#,
            r#"agent_proxy_connections_ended_total{end="client_close",frontend="fe",path="kernel"} 1"#,
        ] {
            assert!(text.contains(sample), "missing `{sample}` in:\n{text}");
        }
    }

    #[test]
    fn histogram_buckets_span_the_documented_range() {
        let m = Metrics::new();
        observe_all(&m);
        let text = m.render();
        for bucket in [
            r#"agent_proxy_backend_connect_seconds_bucket{backend="be",le="0.0005"}"#,
            r#"agent_proxy_backend_connect_seconds_bucket{backend="be",le="10"}"#,
            r#"agent_proxy_connection_duration_seconds_bucket{frontend="fe",le="0.001"}"#,
            r#"agent_proxy_connection_duration_seconds_bucket{frontend="fe",le="3600"}"#,
        ] {
            assert!(text.contains(bucket), "missing `{bucket}` in:\n{text}");
        }
    }

    #[test]
    fn registries_are_independent() {
        let a = Metrics::new();
        let b = Metrics::default();
        a.kernel_errors_total.with_label_values(&["x"]).inc();
        assert!(a.render().contains("agent_proxy_kernel_errors_total"));
        assert!(!b.render().contains("agent_proxy_kernel_errors_total"));
    }

    /// A scrape shows a reload's count and `last_reload_successful` from the same moment,
    /// while reloads are recorded from another thread: the gauge is 1 exactly when as many
    /// reloads succeeded as were refused (they alternate, refused first). The scrapes start
    /// once the recorder has recorded, and it runs until they are done.
    #[test]
    fn scrapes_see_reload_count_and_gauge_together() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        const SCRAPES: usize = 300;
        let m = Arc::new(Metrics::new());
        for result in ["ok", "error"] {
            m.config_reloads_total.with_label_values(&[result]);
        }
        let done = Arc::new(AtomicBool::new(false));
        let recorder = {
            let (m, done) = (Arc::clone(&m), Arc::clone(&done));
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    m.record_reload(false);
                    m.record_reload(true);
                }
            })
        };
        let value = |text: &str, sample: &str| -> i64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
                .unwrap_or_else(|| panic!("no `{sample}` in:\n{text}"));
            line[sample.len()..].trim().parse().expect("an integer")
        };
        // The scrapes start once the recorder runs (a loaded machine may start it late).
        let started = std::time::Instant::now();
        while m.config_reloads_total.with_label_values(&["ok"]).get() == 0 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the recorder thread never ran"
            );
            std::thread::yield_now();
        }
        for scrape in 0..SCRAPES {
            let text = m.render();
            let gauge = value(&text, "agent_proxy_config_last_reload_successful");
            let ok = value(&text, r#"agent_proxy_config_reloads_total{result="ok"}"#);
            let error = value(&text, r#"agent_proxy_config_reloads_total{result="error"}"#);
            assert_eq!(
                gauge,
                i64::from(ok == error),
                "scrape {scrape}: ok {ok}, error {error}, gauge {gauge}"
            );
        }
        done.store(true, Ordering::Relaxed);
        recorder.join().expect("recorder thread");
    }

    /// The HELP text of the handshake errors names exactly the reasons the code emits.
    #[test]
    fn handshake_reasons_are_the_help_texts() {
        use prometheus::core::Collector as _;
        let help = Metrics::new()
            .tls_handshake_errors_total
            .desc()
            .first()
            .map(|d| d.help.clone())
            .unwrap();
        let listed = help
            .rsplit_once("reason (")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no reason list in {help:?}"));
        let listed: Vec<&str> = listed.split(", ").collect();
        assert_eq!(listed, crate::tls::HANDSHAKE_REASONS, "{help}");
    }

    /// The HELP text of a family.
    fn help(family: &IntCounterVec) -> String {
        use prometheus::core::Collector as _;
        family.desc()[0].help.clone()
    }

    /// The values inside the last `(...)` of a HELP text.
    fn listed_in(help: &str) -> Vec<String> {
        let inner = help
            .rsplit_once('(')
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no list in {help:?}"));
        inner.split(", ").map(str::to_owned).collect()
    }

    /// The HELP texts of the labelled enums name exactly the values the code emits.
    #[test]
    fn help_texts_name_the_emitted_values() {
        let ends: Vec<String> = End::ALL.iter().map(|e| e.as_str().to_owned()).collect();
        let m = Metrics::new();
        assert_eq!(listed_in(&help(&m.connections_ended_total)), ends);
        let mut reasons: Vec<String> = Reject::ALL.iter().map(|r| r.as_str().to_owned()).collect();
        reasons.push("address_CLASS".to_owned());
        assert_eq!(listed_in(&help(&m.frontend_rejected_total)), reasons);
    }
}
