//! `cargo xtask bench`: agent-proxy (kernel and userspace paths) against a direct connection
//! and HAProxy 2.6 (`mode tcp`, plain and `option splice-auto`), every row in the same run,
//! interleaved, after a warm-up; medians and spread; a terminal table,
//! `target/bench/results.json`, and `docs/benchmarks.md` with a chart.
//!
//! Everything runs in a network namespace the bench creates and deletes, over its loopback.
//! Peers are Debian's tools (nginx as the intake, hey, sockperf, iperf3) plus the many-agents
//! generator of [`agents`]; the TLS scenarios' certificates are made at start ([`tls`]).
//! Method and scenarios: shared/benchmarks.md and docs/benchmarks.md.
mod agents;
mod chart;
mod docs;
mod machine;
mod parse;
mod procfs;
mod procs;
mod report;
mod results;
mod rows;
mod scenarios;
mod scrape;
mod servers;
mod stats;
mod targets;
mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use agent_proxy_tests::gateway::{self, Gateway};
use agent_proxy_tests::netns::NetNs;
use anyhow::Context as _;
use clap::Parser;

use crate::results::{Metric, Results, RowResult, Sample, ScenarioResult};
use crate::rows::Row;
use crate::scenarios::{Context, DATAKIT_BODY, Durations, Scenario};
use crate::servers::Server;
use crate::tls::Pki;

#[derive(Parser, Debug)]
#[command(
    name = "agent-proxy-bench",
    about = "Benchmarks agent-proxy against direct and HAProxy 2.6"
)]
struct Cli {
    /// A sanity check in about two minutes: one short run of datakit, connrate, agents-1000,
    /// ping-64, ping-64-scrape, bulk-1, the two TLS scenarios, datakit-veth and
    /// agents-1000-veth, no warm-up. Its figures are not for quoting.
    #[arg(long)]
    quick: bool,
    /// Measured runs per row (default 5; 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Run only these scenarios (repeatable).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Run only these rows (repeatable), e.g. `--only kernel --only haproxy`.
    #[arg(long, value_enum)]
    only: Vec<Row>,
    /// Seconds of each sockperf, iperf3 and connection-rate run (default 5; 1 with --quick).
    #[arg(long)]
    duration: Option<u64>,
    /// Seconds of the active phase of the many-agents scenarios (default 5; 1 with --quick).
    #[arg(long)]
    agents_duration: Option<u64>,
    /// Turn GRO on for the veth family's four veth ends (`ethtool -K DEV gro on`, which also
    /// gives them NAPI), as a host's NIC has it: each stack then receives GRO-merged packets.
    #[arg(long)]
    veth_gro: bool,
    /// Skip the warm-up round.
    #[arg(long)]
    no_warmup: bool,
    /// A remark printed in docs/benchmarks.md (e.g. what else ran on the machine).
    #[arg(long)]
    note: Option<String>,
    /// Write docs/benchmarks.md even for a partial (--quick, --scenario, --only) run.
    #[arg(long)]
    write_docs: bool,
    /// Do not measure: rebuild the tables, targets, docs and chart from target/bench/results.json.
    #[arg(long)]
    report_only: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this crate lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench is a member of the workspace")
        .to_owned()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let json_path = out_dir.join("results.json");
    let partial = cli.quick || !cli.scenarios.is_empty() || !cli.only.is_empty();
    let mut results = if cli.report_only {
        let text = std::fs::read_to_string(&json_path)
            .with_context(|| format!("read {} (run the bench first)", json_path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", json_path.display()))?
    } else {
        measure_all(&cli, &out_dir)?
    };
    results.targets = targets::evaluate(&results);
    println!("{}", report::terminal(&results));
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    println!("bench: wrote {}", json_path.display());
    if partial && !cli.write_docs && !cli.report_only {
        println!(
            "bench: docs/benchmarks.md left as it is (partial run; --write-docs writes it anyway)"
        );
    } else {
        write_docs(&results)?;
    }
    if !results.failures.is_empty() {
        eprintln!("bench: {} measurement(s) failed:", results.failures.len());
        for f in &results.failures {
            eprintln!("  {f}");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn write_docs(results: &Results) -> anyhow::Result<()> {
    let docs = root().join("docs");
    let chart_name = "benchmarks.svg";
    let chart = chart::svg(results)?;
    if let Some(svg) = &chart {
        std::fs::write(docs.join(chart_name), svg)?;
    }
    let path = docs.join("benchmarks.md");
    let existing = std::fs::read_to_string(&path).ok();
    let generated = docs::generate(results, chart.as_ref().map(|_| chart_name));
    std::fs::write(&path, docs::splice(existing.as_deref(), &generated)?)?;
    println!("bench: wrote {}", path.display());
    Ok(())
}

fn measure_all(cli: &Cli, out_dir: &Path) -> anyhow::Result<Results> {
    machine::preflight()?;
    // A proxy holds two sockets per agent: the 10,000-agent scenario needs 20,000 fds and more.
    // Without CAP_SYS_RESOURCE the hard limit caps it, and the scenario shrinks to fit (the
    // tables say how many agents connected).
    let nofile = agent_proxy_tests::privileges::raise_nofile(1 << 20, 4_096)?;
    let max_agents = usize::try_from(nofile.saturating_sub(512) / 2).unwrap_or(usize::MAX);
    let scenarios: Vec<Scenario> = match (cli.scenarios.is_empty(), cli.quick) {
        (false, _) => cli.scenarios.clone(),
        (true, true) => Scenario::QUICK.to_vec(),
        (true, false) => Scenario::ALL.to_vec(),
    };
    let rows: Vec<Row> = if cli.only.is_empty() {
        Row::ALL.to_vec()
    } else {
        Row::ALL
            .into_iter()
            .filter(|r| cli.only.contains(r))
            .collect()
    };
    let default_secs = if cli.quick { 1 } else { 5 };
    let durations = Durations {
        tool: Duration::from_secs(cli.duration.unwrap_or(default_secs)),
        agents: Duration::from_secs(cli.agents_duration.unwrap_or(default_secs)),
    };
    let runs = cli.runs.unwrap_or(if cli.quick { 1 } else { 5 }).max(1);
    let warmup = !cli.quick && !cli.no_warmup;

    println!("bench: measuring how busy the machine is without the bench (3 s)");
    let machine = machine::describe(Duration::from_secs(if cli.quick { 1 } else { 3 }))?;
    let work = out_dir.join("work");
    std::fs::create_dir_all(&work)?;
    let body = work.join("metric.data");
    std::fs::write(&body, agents::body(DATAKIT_BODY))?;
    let pki = if scenarios.iter().any(|s| s.tls_side().is_some()) {
        Some(Pki::generate(&work.join("tls")).context("make the TLS scenarios' certificates")?)
    } else {
        None
    };

    let ns = NetNs::new().context("create the bench's network namespace")?;
    machine::tune_namespace(&ns)?;
    // The transparent row's clients connect to this address, which nothing serves: the
    // daemon's OUTPUT rule redirects them (loopback destinations are never captured).
    agent_proxy_tests::connect::add_loopback_address(&ns, &format!("{}/32", rows::TRANSPARENT_IP))?;
    // The veth family's three namespaces (clients, proxy, servers), made only when needed.
    let veth = if scenarios.iter().any(|s| s.veth()) {
        let gw = Gateway::new().context("create the veth topology's namespaces")?;
        for n in [&gw.agent, &gw.proxy, &gw.intake] {
            machine::tune_namespace(n)?;
        }
        if cli.veth_gro {
            for (n, dev) in [
                (&gw.agent, "va"),
                (&gw.proxy, "vp"),
                (&gw.proxy, "vo"),
                (&gw.intake, "vi"),
            ] {
                agent_proxy_tests::connect::run(&[
                    "ip",
                    "netns",
                    "exec",
                    n.name(),
                    "ethtool",
                    "-K",
                    dev,
                    "gro",
                    "on",
                ])
                .with_context(|| format!("GRO on {dev} (is ethtool installed?)"))?;
            }
        }
        Some(gw)
    } else {
        None
    };
    println!(
        "bench: namespace {}{}; {} run(s) x {} row(s) x {} scenario(s)",
        ns.name(),
        veth.as_ref().map_or(String::new(), |gw| format!(
            ", veth topology {} -> {} -> {}",
            gw.agent.name(),
            gw.proxy.name(),
            gw.intake.name()
        )),
        runs,
        rows.len(),
        scenarios.len()
    );
    let mut failures = Vec::new();
    let mut done = Vec::new();
    for &scenario in &scenarios {
        let rows: Vec<Row> = rows
            .iter()
            .copied()
            .filter(|&r| scenario.has_row(r))
            .collect();
        if rows.is_empty() {
            println!(
                "bench: {}: none of the rows asked for applies",
                scenario.name()
            );
            continue;
        }
        let site = match (&veth, scenario.veth()) {
            (Some(gw), true) => Site {
                clients: &gw.agent,
                proxy: &gw.proxy,
                servers: &gw.intake,
                proxy_listen: SocketAddr::new(parse_ip(gateway::PROXY_INNER), rows::PROXY_PORT),
                server_ip: parse_ip(gateway::INTAKE),
            },
            _ => Site {
                clients: &ns,
                proxy: &ns,
                servers: &ns,
                proxy_listen: rows::PROXY_LISTEN.parse().expect("valid address"),
                server_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            },
        };
        let mut server = Server::start(
            scenario.server(),
            site.servers,
            site.server_ip,
            &work,
            pki.as_ref(),
        )
        .with_context(|| format!("start the server of {}", scenario.name()))?;
        let cx = |durations| Context {
            max_agents,
            clients: site.clients,
            proxy_ns: site.proxy,
            proxy_listen: site.proxy_listen,
            server: server.addr,
            tls_server: server.tls_addr,
            pki: pki.as_ref(),
            dir: &work,
            datakit_body: &body,
            durations,
        };
        if warmup {
            let short = Durations {
                tool: Duration::from_secs(1),
                agents: Duration::from_secs(1),
            };
            for &row in &rows {
                match scenarios::measure(scenario, row, &cx(short)) {
                    Ok(s) => println!(
                        "bench: {} warm-up {}: {}",
                        scenario.name(),
                        row.name(),
                        brief(scenario, &s)
                    ),
                    Err(e) => println!(
                        "bench: {} warm-up {}: FAILED: {e:#}",
                        scenario.name(),
                        row.name()
                    ),
                }
            }
        }
        let mut result = ScenarioResult {
            scenario,
            rows: rows
                .iter()
                .map(|&row| RowResult {
                    row,
                    samples: Vec::new(),
                })
                .collect(),
        };
        for run in 0..runs {
            // Rotate the order each run so that no row always follows the same one.
            for k in 0..rows.len() {
                let row = rows[(k + run) % rows.len()];
                match scenarios::measure(scenario, row, &cx(durations)) {
                    Ok(s) => {
                        println!(
                            "bench: {} run {}/{runs} {}: {}",
                            scenario.name(),
                            run + 1,
                            row.name(),
                            brief(scenario, &s)
                        );
                        result
                            .rows
                            .iter_mut()
                            .find(|r| r.row == row)
                            .expect("row")
                            .samples
                            .push(s);
                    }
                    Err(e) => {
                        let f =
                            format!("{} run {} {}: {e:#}", scenario.name(), run + 1, row.name());
                        println!("bench: FAILED {f}");
                        failures.push(f);
                    }
                }
            }
        }
        server.ensure_running()?;
        drop(server);
        done.push(result);
    }
    drop(veth);
    drop(ns);
    Ok(Results {
        date: machine::now(),
        command: std::env::var("AP_BENCH_COMMAND")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        commit: machine::commit(&root()),
        machine,
        runs,
        warmup,
        quick: cli.quick,
        note: cli.note.clone(),
        scenarios: done,
        targets: Vec::new(),
        failures,
    })
}

/// Where a scenario's processes run: one namespace for everything (loopback), or the veth
/// topology's three.
struct Site<'a> {
    clients: &'a NetNs,
    proxy: &'a NetNs,
    servers: &'a NetNs,
    proxy_listen: SocketAddr,
    server_ip: IpAddr,
}

fn parse_ip(text: &str) -> IpAddr {
    text.parse().expect("the gateway's addresses are valid")
}

/// One progress line.
fn brief(scenario: Scenario, s: &Sample) -> String {
    let mut parts = vec![format!("{} {}", report::num(s.throughput), scenario.unit())];
    if let Some(l) = s.latency {
        parts.push(format!(
            "avg {} us p99 {} us",
            report::num(l.avg),
            report::num(l.p99)
        ));
    }
    if let Some(v) = Metric::CpuPerGb.value(s) {
        parts.push(format!("machine CPU {} s/GB", report::num(v)));
    }
    if let Some(v) = Metric::CpuPerConn.value(s) {
        parts.push(format!("machine CPU {} us/conn", report::num(v)));
    }
    if let Some(v) = Metric::LatP99Unscraped.value(s) {
        parts.push(format!("p99 without scrapes {} us", report::num(v)));
    }
    if let (Some(m), Some(st)) = (s.scrape_metrics_ms, s.scrape_stats_ms) {
        parts.push(format!(
            "/metrics {} ms /stats {} ms",
            report::num(m),
            report::num(st)
        ));
    }
    if let Some(v) = Metric::RssIdle.value(s) {
        parts.push(format!("RSS/idle conn {} KiB", report::num(v)));
    }
    if let Some(v) = Metric::KernelShare.value(s) {
        parts.push(format!("kernel bytes {v:.0}%"));
    }
    if let Some(v) = Metric::StraightShare.value(s) {
        parts.push(format!("straight {v:.0}%"));
    }
    if s.errors > 0 {
        parts.push(format!("{} ERRORS", s.errors));
    }
    parts.join(", ")
}
