//! The machine under test: what it is (for the report), whether the bench can run on it, and
//! the namespace settings the scenarios need.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent_proxy_tests::netns::NetNs;
use anyhow::{Context as _, bail};

use crate::procfs::CpuTimes;
use crate::results::Machine;

/// The external programs the scenarios run (installed by `cargo xtask bench`).
const TOOLS: &[&str] = &["ip", "nginx", "haproxy", "hey", "sockperf", "iperf3"];

/// Root, the tools, and the agent-proxy release binary.
pub(crate) fn preflight() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench needs root (network namespaces, the eBPF kernel path); run it as root");
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| agent_proxy_tests::privileges::which(t).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (`cargo xtask bench` installs them)",
            missing.join(" ")
        );
    }
    let bin = agent_proxy_tests::daemon::binary();
    if !bin.is_file() {
        bail!(
            "agent-proxy binary not found at {} (cargo build --release -p proxy-user, or set \
             AGENT_PROXY_BIN)",
            bin.display()
        );
    }
    Ok(())
}

/// Per-namespace sysctls: room for 10,000 agents' connections twice over (client to proxy and
/// proxy to intake share the namespace's ephemeral ports), reuse of TIME-WAIT ports between
/// runs, and listen backlogs that a connection ramp does not overflow.
pub(crate) fn tune_namespace(ns: &NetNs) -> anyhow::Result<()> {
    ns.run(|| -> anyhow::Result<()> {
        for (key, value) in [
            ("net/ipv4/ip_local_port_range", "10000 65000"),
            ("net/ipv4/tcp_tw_reuse", "1"),
            ("net/core/somaxconn", "16384"),
            ("net/ipv4/tcp_max_syn_backlog", "16384"),
        ] {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, value).with_context(|| format!("write {path}"))?;
        }
        Ok(())
    })
}

/// CPU, memory, kernel, HAProxy version, and how busy the machine is over `sample` with the
/// bench idle.
pub(crate) fn describe(sample: Duration) -> anyhow::Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let haproxy = output("haproxy", &["-v"])
        .lines()
        .next()
        .map_or("HAProxy ?".to_owned(), |l| {
            l.split(" - ").next().unwrap_or(l).trim().to_owned()
        });
    let before = CpuTimes::read()?;
    std::thread::sleep(sample);
    let busy = before.until(&CpuTimes::read()?).busy_fraction();
    Ok(Machine {
        cpu_model,
        cpus: crate::rows::cpus(),
        kernel,
        memory_gib,
        haproxy,
        background_busy_percent: busy * 100.0,
    })
}

/// The commit measured, with `-dirty` when the tree has changes.
pub(crate) fn commit(root: &Path) -> String {
    let rev = output_in(root, "git", &["rev-parse", "--short=12", "HEAD"]);
    let rev = rev.trim();
    if rev.is_empty() {
        return "unknown".to_owned();
    }
    let dirty = !output_in(
        root,
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
    )
    .trim()
    .is_empty();
    format!("{rev}{}", if dirty { "-dirty" } else { "" })
}

/// Now, UTC, to the second.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn output(program: &str, args: &[&str]) -> String {
    output_in(Path::new("."), program, args)
}

fn output_in(dir: &Path, program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
