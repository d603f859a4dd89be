//! The kernel path's targets (issue 3), judged on the medians of one run: each is met, not met,
//! or not measured (its scenario or a row it compares with was not run).
use serde::{Deserialize, Serialize};

use crate::results::{Metric, Results, ScenarioResult};
use crate::rows::Row;
use crate::scenarios::Scenario;
use crate::stats::Stat;

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

/// The two cases the targets are judged on: agents on other hosts (the veth family, the
/// `kernel-remote` row: every byte through the splice verdict; the headline, since that is
/// where most agents are), and agents on the proxy's host (the loopback scenarios, the `kernel`
/// row with its same-host path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    Remote,
    SameHost,
}

impl Case {
    pub(crate) const ALL: [Case; 2] = [Case::Remote, Case::SameHost];

    fn label(self) -> &'static str {
        match self {
            Case::Remote => "remote agents (veth)",
            Case::SameHost => "same host (loopback)",
        }
    }

    /// The agent-proxy row judged in this case.
    pub(crate) fn row(self) -> Row {
        match self {
            Case::Remote => Row::KernelRemote,
            Case::SameHost => Row::Kernel,
        }
    }

    /// This case's scenario of the workload of `base` (a loopback scenario).
    fn scenario(self, base: Scenario) -> Option<Scenario> {
        match self {
            Case::Remote => base.remote(),
            Case::SameHost => Some(base),
        }
    }
}

/// Every target, the remote case first, each in the order.
pub(crate) fn evaluate(results: &Results) -> Vec<Verdict> {
    let mut v: Vec<Verdict> = Case::ALL
        .into_iter()
        .flat_map(|case| evaluate_case(results, case))
        .collect();
    // mode http's targets: the loopback DataKit scenarios carry its rows.
    v.extend(http(
        results.scenario(Scenario::Datakit),
        results.scenario(Scenario::DatakitTlsFrontend),
    ));
    v
}

fn evaluate_case(results: &Results, case: Case) -> Vec<Verdict> {
    let s = |base| case.scenario(base).and_then(|sc| results.scenario(sc));
    let row = case.row();
    let w = |what: &str| format!("{}: {what}", case.label());
    let mut v = Vec::new();
    match case {
        // Issue 3's bounds for the same-host path; issue 19's for remote agents (no bound
        // against direct: direct crosses the links without any stack in between).
        Case::SameHost => {
            for (metric, what) in [(Metric::LatAvg, "avg"), (Metric::LatP99, "p99")] {
                let workload = w(&format!("64 B ping-pong latency, {what}"));
                v.push(latency(
                    s(Scenario::Ping64),
                    row,
                    metric,
                    &workload,
                    0.6,
                    Some(1.1),
                ));
            }
        }
        Case::Remote => {
            let workload = w("64 B ping-pong latency, avg");
            v.push(latency(
                s(Scenario::Ping64),
                row,
                Metric::LatAvg,
                &workload,
                0.8,
                None,
            ));
        }
    }
    v.push(at_least(
        s(Scenario::Bulk1),
        row,
        &w("single-stream bulk (iperf3)"),
        ">= 1.0x HAProxy GB/s",
        Metric::Throughput,
        1.0,
    ));
    v.push(datakit(s(Scenario::Datakit), row, &w("DataKit workload")));
    for sc in [Scenario::Datakit, Scenario::Bulk1, Scenario::Bulk8] {
        let workload = w(&format!("whole-machine CPU per GB ({})", sc.name()));
        v.push(cpu(s(sc), row, &workload));
    }
    v.push(connrate(s(Scenario::ConnRate), row, &w("new connections")));
    v.push(idle_rss(
        s(Scenario::Agents10k),
        row,
        &w("10,000 idle agent connections"),
    ));
    v
}

/// `mode = "http"` (issue 17): against HAProxy's `mode http`; what the per-API metrics cost;
/// and, behind a TLS frontend, what reading each request costs beyond the TLS termination
/// (DataKit's MITM mode lost 99% of its rate).
fn http(plain: Option<&ScenarioResult>, tls: Option<&ScenarioResult>) -> Vec<Verdict> {
    let mut v = Vec::new();
    let workload = "same host (loopback): DataKit workload, mode http";
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
        "same host (loopback): per-API metrics (DataKit, mode http)",
        "req/s >= 0.9x the same mode without them",
        0.9,
    ));
    v.push(ratio(
        tls,
        Row::Http,
        Row::Userspace,
        "same host (loopback): per-API metrics behind a TLS frontend (DataKit)",
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

/// `row`'s `metric` at most `max_haproxy` x HAProxy's and, if given, `max_direct` x direct's.
fn latency(
    sc: Option<&ScenarioResult>,
    row: Row,
    metric: Metric,
    workload: &str,
    max_haproxy: f64,
    max_direct: Option<f64>,
) -> Verdict {
    let target = match max_direct {
        Some(d) => format!("<= {max_haproxy}x HAProxy, <= {d}x direct"),
        None => format!("<= {max_haproxy}x HAProxy"),
    };
    let Some(sc) = sc else {
        return not_measured(workload, &target);
    };
    let (Some(k), Some(h), Some(d)) = (
        sc.stat(row, metric),
        sc.stat(Row::Haproxy, metric),
        sc.stat(Row::Direct, metric),
    ) else {
        return not_measured(workload, &target);
    };
    let (rh, rd) = (k.median / h.median, k.median / d.median);
    let figures = format!(
        "{} {:.1} us = {rh:.2}x HAProxy ({:.1} us), {rd:.2}x direct ({:.1} us)",
        row.name(),
        k.median,
        h.median,
        d.median
    );
    let ok = rh <= max_haproxy && max_direct.is_none_or(|m| rd <= m);
    verdict(workload, &target, figures, ok)
}

fn at_least(
    sc: Option<&ScenarioResult>,
    row: Row,
    workload: &str,
    target: &str,
    metric: Metric,
    min: f64,
) -> Verdict {
    let Some(sc) = sc else {
        return not_measured(workload, target);
    };
    let (Some(k), Some(h)) = (sc.stat(row, metric), sc.stat(Row::Haproxy, metric)) else {
        return not_measured(workload, target);
    };
    let r = k.median / h.median;
    let unit = sc.scenario.unit();
    let figures = format!(
        "{} {:.3} {unit} = {r:.2}x HAProxy ({:.3} {unit})",
        row.name(),
        k.median,
        h.median
    );
    verdict(workload, target, figures, r >= min)
}

/// `row`'s and HAProxy's medians of `a`, then of `b`; `None` if any is missing.
fn against_haproxy(sc: &ScenarioResult, row: Row, a: Metric, b: Metric) -> Option<[Stat; 4]> {
    Some([
        sc.stat(row, a)?,
        sc.stat(Row::Haproxy, a)?,
        sc.stat(row, b)?,
        sc.stat(Row::Haproxy, b)?,
    ])
}

fn datakit(sc: Option<&ScenarioResult>, row: Row, workload: &str) -> Verdict {
    let target = ">= 1.2x HAProxy req/s, p99 <= HAProxy's";
    let Some(sc) = sc else {
        return not_measured(workload, target);
    };
    let Some([k, h, kp, hp]) = against_haproxy(sc, row, Metric::Throughput, Metric::LatP99) else {
        return not_measured(workload, target);
    };
    let r = k.median / h.median;
    let figures = format!(
        "{} {:.0} req/s = {r:.2}x HAProxy ({:.0}); p99 {:.0} us vs HAProxy {:.0} us",
        row.name(),
        k.median,
        h.median,
        kp.median,
        hp.median
    );
    verdict(
        workload,
        target,
        figures,
        r >= 1.2 && kp.median <= hp.median,
    )
}

fn cpu(sc: Option<&ScenarioResult>, row: Row, workload: &str) -> Verdict {
    let target = "<= 0.8x HAProxy";
    let Some(sc) = sc else {
        return not_measured(workload, target);
    };
    let (Some(k), Some(h)) = (
        sc.stat(row, Metric::CpuPerGb),
        sc.stat(Row::Haproxy, Metric::CpuPerGb),
    ) else {
        return not_measured(workload, target);
    };
    let r = k.median / h.median;
    let figures = format!(
        "{} {:.3} s/GB = {r:.2}x HAProxy ({:.3} s/GB)",
        row.name(),
        k.median,
        h.median
    );
    verdict(workload, target, figures, r <= 0.8)
}

/// Issue 19: at least HAProxy's connections/s, and no more whole-machine CPU per connection.
fn connrate(sc: Option<&ScenarioResult>, row: Row, workload: &str) -> Verdict {
    let target = ">= 1.0x HAProxy conn/s, CPU per connection <= 1.0x HAProxy";
    let Some(sc) = sc else {
        return not_measured(workload, target);
    };
    let Some([k, h, kc, hc]) = against_haproxy(sc, row, Metric::Throughput, Metric::CpuPerConn)
    else {
        return not_measured(workload, target);
    };
    let (r, rc) = (k.median / h.median, kc.median / hc.median);
    let figures = format!(
        "{} {:.0} conn/s = {r:.2}x HAProxy ({:.0}); {:.0} us CPU/conn = {rc:.2}x HAProxy ({:.0} us)",
        row.name(),
        k.median,
        h.median,
        kc.median,
        hc.median
    );
    verdict(workload, target, figures, r >= 1.0 && rc <= 1.0)
}

fn idle_rss(sc: Option<&ScenarioResult>, row: Row, workload: &str) -> Verdict {
    let target = "proxy RSS growth <= 4 KiB per connection";
    let Some(k) = sc.and_then(|sc| sc.stat(row, Metric::RssIdle)) else {
        return not_measured(workload, target);
    };
    let haproxy = sc
        .and_then(|sc| sc.stat(Row::Haproxy, Metric::RssIdle))
        .map_or(String::new(), |h| format!(" (HAProxy {:.2} KiB)", h.median));
    let figures = format!("{} {:.2} KiB per connection{haproxy}", row.name(), k.median);
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
        let all = evaluate(&results(vec![ping]));
        // No veth scenario ran: every remote-agent target is not measured.
        let (remote, v): (Vec<Verdict>, Vec<Verdict>) = all
            .into_iter()
            .partition(|t| t.workload.starts_with("remote agents"));
        assert!(!remote.is_empty());
        assert!(
            remote.iter().all(|t| t.status == Status::NotMeasured),
            "{remote:?}"
        );
        assert!(v.iter().all(|t| t.workload.starts_with("same host")));
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
            .find(|v| v.workload == "same host (loopback): DataKit workload")
            .unwrap();
        assert_eq!(dk.status, Status::Met);
        let not = evaluate(&results(vec![sc(3100.0)]));
        let dk = not
            .iter()
            .find(|v| v.workload == "same host (loopback): DataKit workload")
            .unwrap();
        assert_eq!(dk.status, Status::NotMet);
    }

    #[test]
    fn remote_case_judges_the_veth_scenarios_on_the_kernel_remote_row() {
        let row = |row, rps, p99, cpu_conn| RowResult {
            row,
            samples: vec![Sample {
                throughput: rps,
                latency: Some(Latency {
                    p99,
                    ..Latency::default()
                }),
                machine_cpu_seconds: cpu_conn * 1e-6 * 1000.0,
                connections_made: Some(1000),
                ..Sample::default()
            }],
        };
        let datakit = ScenarioResult {
            scenario: Scenario::DatakitVeth,
            rows: vec![
                row(Row::Haproxy, 8000.0, 3000.0, 0.0),
                row(Row::KernelRemote, 9700.0, 2900.0, 0.0),
            ],
        };
        let conns = ScenarioResult {
            scenario: Scenario::ConnRateVeth,
            rows: vec![
                row(Row::Haproxy, 5000.0, 0.0, 200.0),
                row(Row::KernelRemote, 4000.0, 0.0, 250.0),
            ],
        };
        let v = evaluate(&results(vec![datakit, conns]));
        let find = |w: &str| v.iter().find(|t| t.workload == w).unwrap();
        assert_eq!(
            find("remote agents (veth): DataKit workload").status,
            Status::Met
        );
        let c = find("remote agents (veth): new connections");
        assert_eq!(c.status, Status::NotMet, "{c:?}");
        assert!(c.figures.contains("0.80x HAProxy"), "{c:?}");
        assert!(c.figures.contains("1.25x HAProxy"), "{c:?}");
        // The loopback scenarios did not run.
        assert_eq!(
            find("same host (loopback): DataKit workload").status,
            Status::NotMeasured
        );
    }
}
