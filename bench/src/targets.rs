//! The kernel path's targets (issue 3), judged on the medians of one run: each is met, not met,
//! or not measured (its scenario or a row it compares with was not run).
use serde::{Deserialize, Serialize};

use crate::results::{Metric, Results, ScenarioResult};
use crate::rows::Row;
use crate::scenarios::Scenario;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Status {
    Met,
    NotMet,
    NotMeasured,
}

impl Status {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT MET",
            Status::NotMeasured => "not measured",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Verdict {
    pub workload: String,
    pub target: String,
    pub figures: String,
    pub status: Status,
}

/// Every target, in the order.
pub(crate) fn evaluate(results: &Results) -> Vec<Verdict> {
    let s = |sc| results.scenario(sc);
    let mut v = Vec::new();
    for (metric, what) in [(Metric::LatAvg, "avg"), (Metric::LatP99, "p99")] {
        v.push(latency(s(Scenario::Ping64), metric, what));
    }
    v.push(at_least(
        s(Scenario::Bulk1),
        "single-stream bulk (iperf3)",
        ">= 1.0x HAProxy GB/s",
        Metric::Throughput,
        1.0,
    ));
    v.push(datakit(s(Scenario::Datakit)));
    for sc in [Scenario::Datakit, Scenario::Bulk1, Scenario::Bulk8] {
        v.push(cpu(s(sc), sc));
    }
    v.push(idle_rss(s(Scenario::Agents10k)));
    v.extend(http(s(Scenario::Datakit), s(Scenario::DatakitTlsFrontend)));
    v
}

/// `mode = "http"` (issue 17): against HAProxy's `mode http`; what the per-API metrics cost;
/// and, behind a TLS frontend, what reading each request costs beyond the TLS termination
/// (DataKit's MITM mode lost 99% of its rate).
fn http(plain: Option<&ScenarioResult>, tls: Option<&ScenarioResult>) -> Vec<Verdict> {
    let mut v = Vec::new();
    let workload = "DataKit workload, mode http";
    let target = ">= 1.0x HAProxy http req/s, p99 <= HAProxy http's";
    let get = |sc: Option<&ScenarioResult>, row, m| sc.and_then(|sc| sc.stat(row, m));
    v.push(
        match (
            get(plain, Row::Http, Metric::Throughput),
            get(plain, Row::HaproxyHttp, Metric::Throughput),
            get(plain, Row::Http, Metric::LatP99),
            get(plain, Row::HaproxyHttp, Metric::LatP99),
        ) {
            (Some(a), Some(h), Some(ap), Some(hp)) => {
                let r = a.median / h.median;
                let figures = format!(
                    "http {:.0} req/s = {r:.2}x HAProxy http ({:.0}); p99 {:.0} us vs {:.0} us",
                    a.median, h.median, ap.median, hp.median
                );
                verdict(
                    workload,
                    target,
                    figures,
                    r >= 1.0 && ap.median <= hp.median,
                )
            }
            _ => not_measured(workload, target),
        },
    );
    let ratio = |sc, row, base, workload: &str, target: &str, min: f64| match (
        get(sc, row, Metric::Throughput),
        get(sc, base, Metric::Throughput),
    ) {
        (Some(a), Some(b)) => {
            let r = a.median / b.median;
            let figures = format!(
                "{:.0} req/s = {r:.2}x {} ({:.0})",
                a.median,
                base.name(),
                b.median
            );
            verdict(workload, target, figures, r >= min)
        }
        _ => not_measured(workload, target),
    };
    v.push(ratio(
        plain,
        Row::Http,
        Row::HttpBare,
        "per-API metrics (DataKit, mode http)",
        "req/s >= 0.9x the same mode without them",
        0.9,
    ));
    v.push(ratio(
        tls,
        Row::Http,
        Row::Userspace,
        "per-API metrics behind a TLS frontend (DataKit)",
        "req/s >= 0.9x agent-proxy tcp with the same TLS frontend",
        0.9,
    ));
    v
}

fn not_measured(workload: &str, target: &str) -> Verdict {
    Verdict {
        workload: workload.to_owned(),
        target: target.to_owned(),
        figures: "-".to_owned(),
        status: Status::NotMeasured,
    }
}

fn verdict(workload: &str, target: &str, figures: String, ok: bool) -> Verdict {
    Verdict {
        workload: workload.to_owned(),
        target: target.to_owned(),
        figures,
        status: if ok { Status::Met } else { Status::NotMet },
    }
}

fn latency(sc: Option<&ScenarioResult>, metric: Metric, what: &str) -> Verdict {
    let workload = format!("64 B ping-pong latency, {what}");
    let target = "<= 0.6x HAProxy, <= 1.1x direct";
    let Some(sc) = sc else {
        return not_measured(&workload, target);
    };
    let (Some(k), Some(h), Some(d)) = (
        sc.stat(Row::Kernel, metric),
        sc.stat(Row::Haproxy, metric),
        sc.stat(Row::Direct, metric),
    ) else {
        return not_measured(&workload, target);
    };
    let (rh, rd) = (k.median / h.median, k.median / d.median);
    let figures = format!(
        "kernel {:.1} us = {rh:.2}x HAProxy ({:.1} us), {rd:.2}x direct ({:.1} us)",
        k.median, h.median, d.median
    );
    verdict(&workload, target, figures, rh <= 0.6 && rd <= 1.1)
}

fn at_least(
    sc: Option<&ScenarioResult>,
    workload: &str,
    target: &str,
    metric: Metric,
    min: f64,
) -> Verdict {
    let Some(sc) = sc else {
        return not_measured(workload, target);
    };
    let (Some(k), Some(h)) = (sc.stat(Row::Kernel, metric), sc.stat(Row::Haproxy, metric)) else {
        return not_measured(workload, target);
    };
    let r = k.median / h.median;
    let unit = sc.scenario.unit();
    let figures = format!(
        "kernel {:.3} {unit} = {r:.2}x HAProxy ({:.3} {unit})",
        k.median, h.median
    );
    verdict(workload, target, figures, r >= min)
}

fn datakit(sc: Option<&ScenarioResult>) -> Verdict {
    let workload = "DataKit workload";
    let target = ">= 1.2x HAProxy req/s, p99 <= HAProxy's";
    let Some(sc) = sc else {
        return not_measured(workload, target);
    };
    let get = |row, m| sc.stat(row, m);
    let (Some(k), Some(h), Some(kp), Some(hp)) = (
        get(Row::Kernel, Metric::Throughput),
        get(Row::Haproxy, Metric::Throughput),
        get(Row::Kernel, Metric::LatP99),
        get(Row::Haproxy, Metric::LatP99),
    ) else {
        return not_measured(workload, target);
    };
    let r = k.median / h.median;
    let figures = format!(
        "kernel {:.0} req/s = {r:.2}x HAProxy ({:.0}); p99 {:.0} us vs HAProxy {:.0} us",
        k.median, h.median, kp.median, hp.median
    );
    verdict(
        workload,
        target,
        figures,
        r >= 1.2 && kp.median <= hp.median,
    )
}

fn cpu(sc: Option<&ScenarioResult>, scenario: Scenario) -> Verdict {
    let workload = format!("whole-machine CPU per GB ({})", scenario.name());
    let target = "<= 0.8x HAProxy";
    let Some(sc) = sc else {
        return not_measured(&workload, target);
    };
    let (Some(k), Some(h)) = (
        sc.stat(Row::Kernel, Metric::CpuPerGb),
        sc.stat(Row::Haproxy, Metric::CpuPerGb),
    ) else {
        return not_measured(&workload, target);
    };
    let r = k.median / h.median;
    let figures = format!(
        "kernel {:.3} s/GB = {r:.2}x HAProxy ({:.3} s/GB)",
        k.median, h.median
    );
    verdict(&workload, target, figures, r <= 0.8)
}

fn idle_rss(sc: Option<&ScenarioResult>) -> Verdict {
    let workload = "10,000 idle agent connections";
    let target = "proxy RSS growth <= 4 KiB per connection";
    let Some(k) = sc.and_then(|sc| sc.stat(Row::Kernel, Metric::RssIdle)) else {
        return not_measured(workload, target);
    };
    let haproxy = sc
        .and_then(|sc| sc.stat(Row::Haproxy, Metric::RssIdle))
        .map_or(String::new(), |h| format!(" (HAProxy {:.2} KiB)", h.median));
    let figures = format!("kernel {:.2} KiB per connection{haproxy}", k.median);
    verdict(workload, target, figures, k.median <= 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Latency;
    use crate::results::{RowResult, Sample};

    fn lat(avg: f64, p99: f64) -> Sample {
        Sample {
            latency: Some(Latency {
                avg,
                p99,
                ..Latency::default()
            }),
            ..Sample::default()
        }
    }

    fn results(scenarios: Vec<ScenarioResult>) -> Results {
        Results::of(scenarios)
    }

    #[test]
    fn latency_target_uses_both_ratios() {
        let ping = ScenarioResult {
            scenario: Scenario::Ping64,
            rows: vec![
                RowResult {
                    row: Row::Direct,
                    samples: vec![lat(20.0, 50.0)],
                },
                RowResult {
                    row: Row::Haproxy,
                    samples: vec![lat(40.0, 90.0)],
                },
                RowResult {
                    row: Row::Kernel,
                    samples: vec![lat(21.0, 56.0)],
                },
            ],
        };
        let v = evaluate(&results(vec![ping]));
        // avg: 21/40 = 0.525 <= 0.6 and 21/20 = 1.05 <= 1.1.
        assert_eq!(v[0].status, Status::Met, "{v:?}");
        // p99: 56/90 = 0.62 > 0.6.
        assert_eq!(v[1].status, Status::NotMet, "{v:?}");
        // Nothing else was run.
        assert!(
            v[2..].iter().all(|t| t.status == Status::NotMeasured),
            "{v:?}"
        );
    }

    #[test]
    fn datakit_target_needs_rate_and_p99() {
        let row = |row, rps, p99| RowResult {
            row,
            samples: vec![Sample {
                throughput: rps,
                latency: Some(Latency {
                    p99,
                    ..Latency::default()
                }),
                ..Sample::default()
            }],
        };
        let sc = |k_p99| ScenarioResult {
            scenario: Scenario::Datakit,
            rows: vec![
                row(Row::Haproxy, 8000.0, 3000.0),
                row(Row::Kernel, 9700.0, k_p99),
            ],
        };
        let met = evaluate(&results(vec![sc(2900.0)]));
        let dk = met
            .iter()
            .find(|v| v.workload == "DataKit workload")
            .unwrap();
        assert_eq!(dk.status, Status::Met);
        let not = evaluate(&results(vec![sc(3100.0)]));
        let dk = not
            .iter()
            .find(|v| v.workload == "DataKit workload")
            .unwrap();
        assert_eq!(dk.status, Status::NotMet);
    }
}
