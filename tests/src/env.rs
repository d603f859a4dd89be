//! What every scenario does around its traffic: skip or fail without privileges, start the
//! daemon, take the idle baseline, and at the end check it is clean and exits 0 on SIGTERM.
use anyhow::{Context as _, ensure};

use crate::clean::assert_clean;
use crate::daemon::{Daemon, DaemonConfig, Dataplane, tail};
use crate::netns::NetNs;
use crate::privileges::{raise_nofile, require_root};

/// File descriptors the test process (and so the daemon it starts) should be allowed.
pub const NOFILE: u64 = 65_536;
/// What it must be allowed at least: 1,000 concurrent connections are 2,000 sockets in the
/// test process (client and upstream ends) and 2,000 in the daemon, plus some slack.
pub const NOFILE_NEEDED: u64 = 4_096;

/// Runs `scenario` on `dataplane` as test `name::dataplane`: skipped loudly without root (a
/// failure in CI), a panic with the whole error chain when it fails.
pub fn run_scenario(
    name: &str,
    dataplane: Dataplane,
    scenario: fn(Dataplane) -> anyhow::Result<()>,
) {
    let test = format!("{name}::{dataplane}");
    if !require_root(&test) {
        return;
    }
    let started = std::time::Instant::now();
    match scenario(dataplane) {
        Ok(()) => eprintln!("{test}: passed in {:.1?}", started.elapsed()),
        Err(e) => panic!("{test} failed after {:.1?}: {e:?}", started.elapsed()),
    }
}

/// A daemon started for a scenario, with its idle fd count.
pub struct TestEnv {
    pub daemon: Daemon,
    /// Open fds of the idle daemon, right after start-up and a first scrape.
    pub baseline_fds: usize,
}

impl TestEnv {
    /// Starts the daemon in `ns` with `config`, waits for /readyz, scrapes /metrics once and
    /// records the idle fd count.
    pub fn start(ns: &NetNs, config: DaemonConfig) -> anyhow::Result<Self> {
        raise_nofile(NOFILE, NOFILE_NEEDED)?;
        Self::with(Daemon::start(ns, config)?)
    }

    /// Like [`TestEnv::start`] for a daemon meant to start not ready (`/readyz` 503).
    pub fn start_answering(ns: &NetNs, config: DaemonConfig) -> anyhow::Result<Self> {
        raise_nofile(NOFILE, NOFILE_NEEDED)?;
        Self::with(Daemon::start_answering(ns, config)?)
    }

    fn with(daemon: Daemon) -> anyhow::Result<Self> {
        let m = daemon.metrics().context("first scrape")?;
        let dp = daemon.config.dataplane;
        let active = m.get("agent_proxy_dataplane", &[("path", dp.as_str())]);
        ensure!(
            active == Some(1.0),
            "agent_proxy_dataplane{{path=\"{dp}\"}} is {active:?} after start-up, expected 1"
        );
        // Give the admin connection of the scrape time to close before counting.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let baseline_fds = daemon.fd_count()?;
        Ok(Self {
            daemon,
            baseline_fds,
        })
    }

    /// The end of every scenario: [`assert_clean`], then SIGTERM must make the daemon exit 0
    /// within its drain timeout, with no panic in its log.
    pub fn finish(mut self) -> anyhow::Result<()> {
        assert_clean(&mut self.daemon, self.baseline_fds)?;
        let status = self.daemon.stop()?;
        let log = self.daemon.stderr_text();
        ensure!(
            status.success(),
            "daemon exited with {status} after SIGTERM; stderr tail:\n{}",
            tail(&log, 20)
        );
        ensure!(
            !log.contains("panicked at"),
            "the daemon panicked; stderr tail:\n{}",
            tail(&log, 30)
        );
        self.daemon.passed();
        Ok(())
    }
}
