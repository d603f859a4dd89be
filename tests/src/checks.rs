//! Assertions shared by scenarios: byte counters and per-connection log lines must agree,
//! to the byte, with what the peers sent.
use std::time::Duration;

use anyhow::ensure;

use crate::daemon::{Daemon, Dataplane, FRONTEND};
use crate::logs::ConnLog;
use crate::metrics::Metrics;

pub const BYTES_TOTAL: &str = "agent_proxy_bytes_total";

/// `agent_proxy_bytes_total{frontend="fe",direction,path}`.
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

/// Waits (at most 3 s: kernel counters may be collected periodically) until the byte counters
/// of `path` equal `up` and `down`, then asserts that, and that the other path counted nothing.
pub fn assert_bytes(daemon: &Daemon, path: Dataplane, up: u64, down: u64) -> anyhow::Result<()> {
    let m = daemon.settle(Duration::from_secs(3), |m| {
        bytes(m, path, "upstream") == up && bytes(m, path, "downstream") == down
    })?;
    let samples: Vec<String> = m
        .matching(BYTES_TOTAL, &[])
        .map(|s| format!("{:?} {}", s.labels, s.value))
        .collect();
    let (got_up, got_down) = (bytes(&m, path, "upstream"), bytes(&m, path, "downstream"));
    ensure!(
        got_up == up && got_down == down,
        "{BYTES_TOTAL}{{path=\"{path}\"}}: upstream {got_up}, downstream {got_down}; \
         the peers sent {up} up and {down} down. All samples: {samples:?}"
    );
    let other = path.other();
    let (other_up, other_down) = (bytes(&m, other, "upstream"), bytes(&m, other, "downstream"));
    ensure!(
        other_up == 0 && other_down == 0,
        "{BYTES_TOTAL}{{path=\"{other}\"}} counted {other_up} up, {other_down} down, \
         though every connection should be on {path}. All samples: {samples:?}"
    );
    Ok(())
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
