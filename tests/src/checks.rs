//! Assertions shared by scenarios: byte counters and per-connection log lines must agree,
//! to the byte, with what the peers sent.
use std::time::Duration;

use anyhow::ensure;

use crate::daemon::{Daemon, Dataplane, FRONTEND};
use crate::logs::ConnLog;
use crate::metrics::Metrics;

pub const BYTES_TOTAL: &str = "agent_proxy_bytes_total";

/// `agent_proxy_bytes_total{frontend="fe",direction,path}`.
/// Bytes same-host agents sent straight into upstream sockets (sock_ops + sk_msg).
pub const LOCAL_BYTES: &str = "agent_proxy_local_agent_bytes_total";

/// Retransmitted buffers that overlapped bytes the splice verdict had already forwarded:
/// (trimmed, kept). Kept ones would be duplicates (docs/architecture.md, "Duplicated bytes
/// under retransmissions").
pub fn overlaps(m: &Metrics) -> (u64, u64) {
    let n = |kind| m.count("agent_proxy_kernel_errors_total", &[("kind", kind)]);
    (n("overlap"), n("overlap_kept"))
}

/// Prints [`overlaps`] for `what` and fails if any overlap was forwarded untrimmed.
pub fn check_overlaps(m: &Metrics, what: &str) -> anyhow::Result<()> {
    let (trimmed, kept) = overlaps(m);
    eprintln!("{what}: overlapping buffers trimmed {trimmed}, kept {kept}");
    ensure!(kept == 0, "{kept} overlapping buffers could not be trimmed");
    Ok(())
}

pub fn local_bytes(m: &Metrics) -> u64 {
    m.count(LOCAL_BYTES, &[("frontend", FRONTEND)])
}

pub fn bytes(m: &Metrics, path: Dataplane, direction: &str) -> u64 {
    m.count(
        BYTES_TOTAL,
        &[
            ("frontend", FRONTEND),
            ("direction", direction),
            ("path", path.as_str()),
        ],
    )
}

/// Waits (at most 3 s: kernel counters are read at scrape) until the byte counters add up to
/// `up` and `down`, then asserts the split between the paths:
/// - userspace: everything under `path="userspace"`, nothing under `path="kernel"`;
/// - kernel: everything under `path="kernel"` except `tail`, the bytes the connections' log
///   lines say were copied in userspace (`userspace_up`/`userspace_down`: the tail of a direction
///   that ended while flow control had paused it, see docs/architecture.md). Scenarios pass the
///   sum over their log lines; 0 where no tail is possible.
pub fn assert_bytes(
    daemon: &Daemon,
    path: Dataplane,
    up: u64,
    down: u64,
    tail: (u64, u64),
) -> anyhow::Result<()> {
    let (expect_up, expect_down, other_up_ok, other_down_ok) = match path {
        Dataplane::Kernel | Dataplane::KernelRemote => (up - tail.0, down - tail.1, tail.0, tail.1),
        _ => (up, down, 0, 0),
    };
    let m = daemon.settle(Duration::from_secs(3), |m| {
        bytes(m, path, "upstream") == expect_up && bytes(m, path, "downstream") == expect_down
    })?;
    // The same-host path is part of the kernel's upstream bytes, and off in the remote variant.
    let local = local_bytes(&m);
    match path {
        Dataplane::KernelRemote | Dataplane::Userspace => ensure!(
            local == 0,
            "{LOCAL_BYTES} = {local} with local_agents off / on the {path} path"
        ),
        Dataplane::Kernel => ensure!(
            local <= expect_up,
            "{LOCAL_BYTES} = {local}, more than the kernel's upstream bytes {expect_up}"
        ),
    }
    let samples: Vec<String> = m
        .matching(BYTES_TOTAL, &[])
        .map(|s| format!("{:?} {}", s.labels, s.value))
        .collect();
    let (got_up, got_down) = (bytes(&m, path, "upstream"), bytes(&m, path, "downstream"));
    ensure!(
        got_up == expect_up && got_down == expect_down,
        "{BYTES_TOTAL}{{path=\"{path}\"}}: upstream {got_up}, downstream {got_down}; \
         expected {expect_up} up and {expect_down} down (the peers sent {up} and {down}, \
         userspace tail {tail:?}). All samples: {samples:?}"
    );
    let other = path.other();
    let (other_up, other_down) = (bytes(&m, other, "upstream"), bytes(&m, other, "downstream"));
    ensure!(
        other_up == other_up_ok && other_down == other_down_ok,
        "{BYTES_TOTAL}{{path=\"{other}\"}} counted {other_up} up, {other_down} down, \
         expected {other_up_ok} and {other_down_ok}. All samples: {samples:?}"
    );
    Ok(())
}

/// The userspace tail of a set of kernel-path log lines: (up, down).
pub fn tail(logs: &[ConnLog]) -> (u64, u64) {
    logs.iter()
        .filter(|l| l.path == "kernel")
        .fold((0, 0), |(u, d), l| {
            (u + l.userspace_up, d + l.userspace_down)
        })
}

/// The normal ends of a connection whose peers closed it.
pub const CLOSED: &[&str] = &["client_close", "upstream_close"];

/// Checks one "connection closed" line: path, byte counts and how it ended.
pub fn check_conn_log(
    log: &ConnLog,
    path: Dataplane,
    up: u64,
    down: u64,
    ends: &[&str],
) -> anyhow::Result<()> {
    ensure!(
        log.path == path.as_str(),
        "log line says path={:?}, expected {path}: {log:?}",
        log.path
    );
    ensure!(
        log.bytes_up == up && log.bytes_down == down,
        "log line says bytes_up={} bytes_down={}, the peers sent {up} up, {down} down: {log:?}",
        log.bytes_up,
        log.bytes_down
    );
    ensure!(
        ends.contains(&log.end.as_str()),
        "log line says end={:?}, expected one of {ends:?}: {log:?}",
        log.end
    );
    let copied = log.userspace_up.saturating_add(log.userspace_down);
    match path {
        Dataplane::Userspace => ensure!(
            log.userspace_up == up && log.userspace_down == down && log.pauses == 0,
            "a relayed connection copies every byte in userspace: {log:?}"
        ),
        _ => ensure!(
            log.userspace_up <= up && log.userspace_down <= down,
            "log line counts more userspace bytes than bytes: {log:?}"
        ),
    }
    // On the kernel path, bytes leave the kernel only for a direction handed to userspace
    // (flow control, or a client that closed before its socket could join the map), and the
    // log line counts those hand-overs.
    ensure!(
        copied == 0 || !path.is_kernel() || log.pauses > 0,
        "kernel-path connection copied {copied} bytes in userspace without a hand-over: {log:?}"
    );
    ensure!(
        log.duration_ms >= 0.0,
        "log line has no duration_ms: {log:?}"
    );
    ensure!(
        log.frontend == FRONTEND && log.backend == crate::daemon::BACKEND,
        "log line names frontend {:?} / backend {:?}: {log:?}",
        log.frontend,
        log.backend
    );
    Ok(())
}
