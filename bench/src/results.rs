//! What a bench run produced: one [`Sample`] per (scenario, row, run), the figures derived from
//! it ([`Metric`]), and the whole run as written to `target/bench/results.json`.
use serde::{Deserialize, Serialize};

use crate::parse::Latency;
use crate::rows::Row;
use crate::scenarios::Scenario;
use crate::stats::{Stat, ratio};
use crate::targets::Verdict;

/// One measured run of one row.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// In the scenario's unit ([`Scenario::unit`]).
    pub throughput: f64,
    pub latency: Option<Latency>,
    /// Payload bytes moved through the proxy during the measured interval.
    pub bytes: u64,
    /// Wall time of the measured interval.
    pub seconds: f64,
    /// Whole-machine busy CPU seconds (user+nice+system+irq+softirq+steal, all CPUs) over it.
    pub machine_cpu_seconds: f64,
    /// The whole machine's busy share over it (all CPUs = 100).
    #[serde(default)]
    pub machine_busy_percent: f64,
    /// utime+stime of the proxy process over it.
    pub proxy_cpu_seconds: Option<f64>,
    /// VmHWM of the proxy process at the end of the run.
    pub proxy_peak_rss_kib: Option<u64>,
    /// VmRSS of the proxy process at the end of the run (what `top` shows).
    #[serde(default)]
    pub proxy_rss_kib: Option<u64>,
    /// (VmRSS with the connections open and idle - VmRSS at fresh start) / connections.
    pub rss_per_idle_connection: Option<f64>,
    /// The same after every connection has been active.
    pub rss_per_active_connection: Option<f64>,
    /// Failed requests, connects, non-200 answers.
    pub errors: u64,
    /// Agents connected (many-agents scenarios; fewer than asked when the fd limit caps it).
    pub connections: Option<usize>,
    /// agent-proxy's `agent_proxy_bytes_total` by path, both directions.
    pub kernel_bytes: Option<u64>,
    pub userspace_bytes: Option<u64>,
    /// `agent_proxy_local_agent_bytes_total`: what same-host agents sent straight into the
    /// upstream socket (part of the kernel bytes). Absent in results of older runs.
    #[serde(default)]
    pub straight_bytes: Option<u64>,
    /// `agent_proxy_kernel_redirects_total`: buffers the splice verdict redirected.
    #[serde(default)]
    pub kernel_redirects: Option<u64>,
    /// Connections made and answered (the connection-rate scenarios: one request each).
    #[serde(default)]
    pub connections_made: Option<u64>,
    /// Median time of a `GET /metrics` and of a `GET /stats` on agent-proxy's admin endpoint,
    /// in milliseconds: with every agent connected and idle (many-agents scenarios), or during
    /// the ping-pong (`ping-64-scrape`).
    #[serde(default)]
    pub scrape_metrics_ms: Option<f64>,
    #[serde(default)]
    pub scrape_stats_ms: Option<f64>,
    /// `ping-64-scrape`: the ping-pong's p99 in the run without scrapes (the sample's own
    /// latency is the run with a scrape every 100 ms).
    #[serde(default)]
    pub p99_unscraped: Option<f64>,
}

/// A figure of a row, as the tables show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Metric {
    Throughput,
    LatAvg,
    LatP50,
    LatP90,
    LatP99,
    LatP999,
    CpuPerGb,
    ProxyCpuPerGb,
    PeakRss,
    Rss,
    RssIdle,
    RssActive,
    Errors,
    KernelShare,
    StraightShare,
    Connections,
    MachineBusy,
    ProxyCpuPercent,
    /// Whole-machine CPU microseconds per connection made (connection-rate scenarios).
    CpuPerConn,
    /// The proxy's own CPU microseconds per connection made.
    ProxyCpuPerConn,
    ScrapeMetrics,
    ScrapeStats,
    /// The ping-pong's p99 without scrapes (`ping-64-scrape`).
    LatP99Unscraped,
    /// Bytes the splice verdict redirected per buffer it saw: the size of what the proxy's
    /// sockets receive at once (up to 64 KiB on loopback, a segment on a link without GRO).
    BytesPerRedirect,
}

impl Metric {
    pub(crate) fn value(self, s: &Sample) -> Option<f64> {
        let gb = |cpu: f64| crate::procfs::seconds_per_gb(cpu, s.bytes);
        match self {
            Metric::Throughput => Some(s.throughput),
            Metric::LatAvg => s.latency.map(|l| l.avg),
            Metric::LatP50 => s.latency.map(|l| l.p50),
            Metric::LatP90 => s.latency.map(|l| l.p90),
            Metric::LatP99 => s.latency.map(|l| l.p99),
            Metric::LatP999 => s.latency.and_then(|l| l.p999),
            Metric::CpuPerGb => gb(s.machine_cpu_seconds),
            Metric::ProxyCpuPerGb => s.proxy_cpu_seconds.and_then(gb),
            Metric::PeakRss => s.proxy_peak_rss_kib.map(|k| k as f64 / 1024.0),
            Metric::Rss => s.proxy_rss_kib.map(|k| k as f64 / 1024.0),
            Metric::RssIdle => s.rss_per_idle_connection.map(|b| b / 1024.0),
            Metric::RssActive => s.rss_per_active_connection.map(|b| b / 1024.0),
            Metric::Errors => Some(s.errors as f64),
            Metric::Connections => s.connections.map(|c| c as f64),
            Metric::MachineBusy => Some(s.machine_busy_percent),
            Metric::ProxyCpuPercent => {
                let cpu = s.proxy_cpu_seconds?;
                (s.seconds > 0.0).then(|| 100.0 * cpu / s.seconds)
            }
            Metric::KernelShare => {
                let (k, u) = (s.kernel_bytes?, s.userspace_bytes?);
                (k + u > 0).then(|| 100.0 * k as f64 / (k + u) as f64)
            }
            Metric::StraightShare => {
                let (k, u, d) = (s.kernel_bytes?, s.userspace_bytes?, s.straight_bytes?);
                (k + u > 0).then(|| 100.0 * d as f64 / (k + u) as f64)
            }
            Metric::CpuPerConn => per_conn(s.machine_cpu_seconds, s.connections_made),
            Metric::ProxyCpuPerConn => per_conn(s.proxy_cpu_seconds?, s.connections_made),
            Metric::ScrapeMetrics => s.scrape_metrics_ms,
            Metric::ScrapeStats => s.scrape_stats_ms,
            Metric::LatP99Unscraped => s.p99_unscraped,
            Metric::BytesPerRedirect => {
                let spliced = s
                    .kernel_bytes?
                    .saturating_sub(s.straight_bytes.unwrap_or(0));
                let n = s.kernel_redirects?;
                (n > 0).then(|| spliced as f64 / n as f64)
            }
        }
    }

    /// Column header; `unit` is the scenario's throughput unit.
    pub(crate) fn header(self, unit: &str) -> String {
        match self {
            Metric::Throughput => unit.to_owned(),
            Metric::LatAvg => "avg us".into(),
            Metric::LatP50 => "p50 us".into(),
            Metric::LatP90 => "p90 us".into(),
            Metric::LatP99 => "p99 us".into(),
            Metric::LatP999 => "p99.9 us".into(),
            Metric::CpuPerGb => "machine CPU s/GB".into(),
            Metric::ProxyCpuPerGb => "proxy CPU s/GB".into(),
            Metric::PeakRss => "proxy peak RSS MiB".into(),
            Metric::Rss => "proxy RSS at end MiB".into(),
            Metric::RssIdle => "RSS/conn idle KiB".into(),
            Metric::RssActive => "RSS/conn active KiB".into(),
            Metric::Errors => "errors".into(),
            Metric::Connections => "agents".into(),
            Metric::MachineBusy => "machine busy %".into(),
            Metric::ProxyCpuPercent => "proxy CPU % of a core".into(),
            Metric::KernelShare => "kernel bytes %".into(),
            Metric::StraightShare => "straight %".into(),
            Metric::CpuPerConn => "machine CPU us/conn".into(),
            Metric::ProxyCpuPerConn => "proxy CPU us/conn".into(),
            Metric::ScrapeMetrics => "/metrics ms".into(),
            Metric::ScrapeStats => "/stats ms".into(),
            Metric::LatP99Unscraped => "p99 us, no scrape".into(),
            Metric::BytesPerRedirect => "B per redirect".into(),
        }
    }

    pub(crate) fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Throughput | Metric::KernelShare | Metric::StraightShare | Metric::Connections
        )
    }
}

/// CPU seconds over `connections`, in microseconds per connection.
fn per_conn(cpu_seconds: f64, connections: Option<u64>) -> Option<f64> {
    let n = connections?;
    (n > 0).then(|| cpu_seconds * 1e6 / n as f64)
}

/// Every run of one row in one scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RowResult {
    pub row: Row,
    pub samples: Vec<Sample>,
}

impl RowResult {
    pub(crate) fn stat(&self, metric: Metric) -> Option<Stat> {
        Stat::of(self.samples.iter().filter_map(|s| metric.value(s)))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioResult {
    pub scenario: Scenario,
    pub rows: Vec<RowResult>,
}

impl ScenarioResult {
    pub(crate) fn row(&self, row: Row) -> Option<&RowResult> {
        self.rows
            .iter()
            .find(|r| r.row == row && !r.samples.is_empty())
    }

    pub(crate) fn stat(&self, row: Row, metric: Metric) -> Option<Stat> {
        self.row(row)?.stat(metric)
    }

    /// Median of `row` over median of `base` for `metric`.
    pub(crate) fn ratio(&self, row: Row, base: Row, metric: Metric) -> Option<f64> {
        ratio(self.stat(row, metric), self.stat(base, metric))
    }
}

/// The machine the figures were taken on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub haproxy: String,
    /// Whole-machine busy share over a few seconds before the bench started, with nothing of
    /// the bench running: other users of the machine, whose work blurs every figure.
    pub background_busy_percent: f64,
}

/// The whole run, as written to `target/bench/results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Results {
    pub date: String,
    pub command: String,
    pub commit: String,
    pub machine: Machine,
    pub runs: usize,
    pub warmup: bool,
    pub quick: bool,
    pub note: Option<String>,
    pub scenarios: Vec<ScenarioResult>,
    pub targets: Vec<Verdict>,
    /// Runs that failed (a proxy that did not start, a client that errored), one line each.
    #[serde(default)]
    pub failures: Vec<String>,
}

impl Results {
    pub(crate) fn scenario(&self, scenario: Scenario) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|s| s.scenario == scenario)
    }
}

#[cfg(test)]
impl Results {
    /// A run of these scenarios and nothing else, for tests.
    pub(crate) fn of(scenarios: Vec<ScenarioResult>) -> Self {
        Self {
            date: String::new(),
            command: String::new(),
            commit: String::new(),
            machine: Machine::default(),
            runs: 1,
            warmup: false,
            quick: true,
            note: None,
            scenarios,
            targets: Vec::new(),
            failures: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_metrics() {
        let s = Sample {
            throughput: 2.0,
            bytes: 2_000_000_000,
            machine_cpu_seconds: 3.0,
            proxy_cpu_seconds: Some(1.0),
            proxy_peak_rss_kib: Some(2048),
            rss_per_idle_connection: Some(3072.0),
            kernel_bytes: Some(3),
            userspace_bytes: Some(1),
            straight_bytes: Some(2),
            kernel_redirects: Some(2),
            ..Sample::default()
        };
        assert_eq!(Metric::BytesPerRedirect.value(&s), Some(0.5));
        assert_eq!(Metric::CpuPerGb.value(&s), Some(1.5));
        assert_eq!(Metric::ProxyCpuPerGb.value(&s), Some(0.5));
        assert_eq!(Metric::PeakRss.value(&s), Some(2.0));
        assert_eq!(Metric::RssIdle.value(&s), Some(3.0));
        assert_eq!(Metric::RssActive.value(&s), None);
        assert_eq!(Metric::KernelShare.value(&s), Some(75.0));
        assert_eq!(Metric::StraightShare.value(&s), Some(50.0));
        assert_eq!(Metric::LatP99.value(&s), None);
        let none_moved = Sample::default();
        assert_eq!(Metric::CpuPerGb.value(&none_moved), None);
        assert_eq!(Metric::KernelShare.value(&none_moved), None);
        assert_eq!(Metric::CpuPerConn.value(&none_moved), None);
        let conns = Sample {
            machine_cpu_seconds: 0.5,
            proxy_cpu_seconds: Some(0.1),
            connections_made: Some(10_000),
            ..Sample::default()
        };
        assert_eq!(Metric::CpuPerConn.value(&conns), Some(50.0));
        assert_eq!(Metric::ProxyCpuPerConn.value(&conns), Some(10.0));
    }
}
