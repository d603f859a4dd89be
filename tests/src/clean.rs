//! "Nothing of a connection may outlive it": after a scenario the daemon must be back to its
//! idle state, seen three ways - its own gauges (map entries, current connections), its file
//! descriptors, and the eBPF maps as the kernel shows them through bpftool.
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::bpftool;
use crate::daemon::Daemon;

/// The per-connection maps, empty when no connection is open.
/// `LOCAL_*`: same-host agent sockets (the test's clients are all closed at the end of a
/// scenario, and a closed agent socket leaves every one of them).
pub const CONNECTION_MAPS: [&str; 8] = [
    "SPLICE_SOCKS",
    "SPLICE_PEERS",
    "SPLICE_CONNS",
    "SPLICE_LIMITS",
    "LOCAL_SOCKS",
    "LOCAL_TARGETS",
    "LOCAL_STATE",
    "LOCAL_GATES",
];

/// How long the daemon gets to tidy up after the last connection closed.
pub const CLEAN_WITHIN: Duration = Duration::from_secs(5);

/// Waits (at most [`CLEAN_WITHIN`]) until every SPLICE_* map-entry gauge is 0,
/// `agent_proxy_frontend_current_connections` is 0 and the daemon has `baseline_fds` open fds,
/// and bpftool shows the daemon's SPLICE_* maps empty. Fails listing every remaining problem.
pub fn assert_clean(daemon: &mut Daemon, baseline_fds: usize) -> anyhow::Result<()> {
    daemon.ensure_running()?;
    let deadline = Instant::now() + CLEAN_WITHIN;
    loop {
        let problems = problems(daemon, baseline_fds)?;
        if problems.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "daemon not clean {CLEAN_WITHIN:?} after the scenario:\n  {}\n  \
                 TCP sockets in the namespace: {}",
                problems.join("\n  "),
                daemon.tcp_sockets()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn problems(daemon: &Daemon, baseline_fds: usize) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let m = daemon.metrics()?;
    let kernel = daemon.config.dataplane.is_kernel();
    if kernel && !m.has("agent_proxy_kernel_map_entries") {
        problems.push("metric agent_proxy_kernel_map_entries missing on the kernel path".into());
    }
    for map in CONNECTION_MAPS {
        let n = m.sum("agent_proxy_kernel_map_entries", &[("map", map)]);
        if n != 0.0 {
            problems.push(format!(
                "agent_proxy_kernel_map_entries{{map=\"{map}\"}} = {n}"
            ));
        }
    }
    let current = m.sum("agent_proxy_frontend_current_connections", &[]);
    if current != 0.0 {
        problems.push(format!(
            "agent_proxy_frontend_current_connections = {current}"
        ));
    }
    let fds = daemon.fd_count()?;
    if fds != baseline_fds {
        problems.push(format!(
            "{fds} open fds, {baseline_fds} after start-up: {}",
            daemon.fd_listing()
        ));
    }
    let maps = bpftool::maps_of(daemon.pid())?;
    for name in CONNECTION_MAPS {
        let found: Vec<_> = maps.iter().filter(|m| m.name == name).collect();
        if found.is_empty() && kernel && name.starts_with("SPLICE_") && name != "SPLICE_LIMITS" {
            problems.push(format!("bpftool shows no {name} map held by the daemon"));
        }
        for map in found {
            let n = bpftool::entry_count(map.id)?;
            if n != 0 {
                problems.push(format!(
                    "bpftool: {name} (id {}, {}) has {n} entries",
                    map.id, map.kind
                ));
            }
        }
    }
    Ok(problems)
}
