//! The daemon under test: a generated config, the `agent-proxy run` child process inside the
//! test's namespace, and what can be observed of it from outside (admin endpoints, log lines,
//! file descriptors, memory).
//!
//! The child is `ip netns exec NS agent-proxy run -c CFG`; `ip` execs the binary after `setns`,
//! so the child's pid is the daemon's and /proc/PID describes the daemon.
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub use crate::config::{BACKEND, DaemonConfig, Dataplane, FRONTEND};

use crate::admin::http_get;
use crate::logs::{self, ConnLog};
use crate::metrics::Metrics;
use crate::netns::{NetNs, run_in};

/// The binary under test: `AGENT_PROXY_BIN`, else the workspace's release build.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENT_PROXY_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target/release/agent-proxy")
}

/// [`binary`], checked to exist; a missing binary fails the test with the command to build it.
pub fn require_binary() -> PathBuf {
    let bin = binary();
    assert!(
        bin.is_file(),
        "agent-proxy binary not found at {} (set AGENT_PROXY_BIN, or build it: \
         cargo build --release -p proxy-user)",
        bin.display()
    );
    bin
}

/// A scratch directory for one daemon (config, stderr); removed on drop when the scenario
/// passed, kept for the post-mortem otherwise.
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // AP_KEEP_LOGS=1 keeps them after a pass too, for looking at a daemon's trace.
        if self.keep || std::env::var_os("AP_KEEP_LOGS").is_some() {
            eprintln!("daemon files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running daemon; killed and reaped on drop.
pub struct Daemon {
    pub config: DaemonConfig,
    child: Child,
    pid: u32,
    netns: PathBuf,
    stderr_path: PathBuf,
    config_path: PathBuf,
    exited: Option<ExitStatus>,
    /// Set by [`Daemon::passed`]: a daemon dropped without it belongs to a failed scenario,
    /// and its log is printed.
    passed: bool,
    scratch: Scratch,
}

impl Daemon {
    /// Writes the config, starts the daemon in `ns` and waits (at most 20 s) for /readyz.
    pub fn start(ns: &NetNs, config: DaemonConfig) -> anyhow::Result<Self> {
        Self::start_until(ns, config, |code| code == 200)
    }

    /// Like [`Daemon::start`], but only waits for the admin endpoint to answer `/readyz` at
    /// all (200 or 503): for scenarios where the daemon is meant to start not ready.
    pub fn start_answering(ns: &NetNs, config: DaemonConfig) -> anyhow::Result<Self> {
        Self::start_until(ns, config, |code| code == 200 || code == 503)
    }

    fn start_until(
        ns: &NetNs,
        config: DaemonConfig,
        answered: fn(u16) -> bool,
    ) -> anyhow::Result<Self> {
        let bin = config.binary.clone().unwrap_or_else(require_binary);
        // Named by the admin port too: two daemons of one namespace (the soak) keep apart.
        let dir = std::env::temp_dir().join(format!(
            "agent-proxy-test-{}-{}",
            ns.name(),
            config.admin.port()
        ));
        std::fs::create_dir_all(&dir)?;
        let scratch = Scratch {
            dir: dir.clone(),
            keep: false,
        };
        let config_path = dir.join("agent-proxy.toml");
        std::fs::write(&config_path, config.to_toml())?;
        let stderr_path = dir.join("stderr.log");
        let stderr = File::create(&stderr_path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(&config.exec_prefix)
            .arg(&bin)
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawn ip netns exec {} {}", ns.name(), bin.display()))?;
        let pid = child.id();
        let mut daemon = Self {
            config,
            child,
            pid,
            netns: ns.path(),
            stderr_path,
            config_path,
            exited: None,
            passed: false,
            scratch,
        };
        daemon.wait_ready(Duration::from_secs(20), answered)?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        if exe.file_name() != bin.file_name() {
            bail!(
                "pid {pid} runs {} rather than the daemon: fd and memory figures would be wrong",
                exe.display()
            );
        }
        Ok(daemon)
    }

    fn wait_ready(&mut self, within: Duration, answered: fn(u16) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                bail!(
                    "daemon exited during start-up ({status}); config:\n{}\nstderr:\n{}",
                    self.config.to_toml(),
                    self.stderr_text()
                );
            }
            match self.get("/readyz") {
                Ok((code, _)) if answered(code) => return Ok(()),
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon not ready within {within:?} (last /readyz: {last}); stderr:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A GET on the admin listener (from inside the namespace); returns status and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let admin = self.config.admin;
        run_in(&self.netns, || http_get(admin, path))
    }

    /// Scrapes /metrics.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            bail!("GET /metrics: HTTP {code}: {body}");
        }
        Metrics::parse(&body)
    }

    /// Scrapes /metrics until `done` holds or `within` passes, and returns the last scrape
    /// either way: the caller asserts on it with its own message.
    pub fn settle(
        &self,
        within: Duration,
        done: impl Fn(&Metrics) -> bool,
    ) -> anyhow::Result<Metrics> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.metrics()?;
            if done(&m) || Instant::now() > deadline {
                return Ok(m);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Current connections and map entries as the daemon reports them, for error messages.
    pub fn state_summary(&self) -> String {
        let m = match self.metrics() {
            Ok(m) => m,
            Err(e) => return format!("(metrics unavailable: {e:#})"),
        };
        let mut parts = vec![format!(
            "current_connections={}",
            m.sum("agent_proxy_frontend_current_connections", &[])
        )];
        for s in m.matching("agent_proxy_kernel_map_entries", &[]) {
            parts.push(format!(
                "{}={}",
                s.labels.get("map").map_or("?", String::as_str),
                s.value
            ));
        }
        parts.push(format!("fds={}", self.fd_count().unwrap_or(0)));
        parts.push(format!(
            "TCP sockets in the namespace: {}",
            self.tcp_sockets()
        ));
        parts.join(" ")
    }

    /// `ss -tan` in the daemon's namespace, without listeners and TIME-WAIT, for error
    /// messages: shows in which TCP state a stuck connection sits.
    pub fn tcp_sockets(&self) -> String {
        let name = self
            .netns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = Command::new("ip")
            .args(["netns", "exec", &name, "ss", "-tanpH"])
            .stdin(Stdio::null())
            .output();
        let Ok(out) = out else {
            return "(ss failed)".to_owned();
        };
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("LISTEN") && !l.starts_with("TIME-WAIT"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .take(40)
            .collect();
        if lines.is_empty() {
            "none".to_owned()
        } else {
            format!("[{}]", lines.join("; "))
        }
    }

    /// Open file descriptors of the daemon.
    pub fn fd_count(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .context("list the daemon's fds")?
            .count())
    }

    /// The daemon's file descriptors with what they point at, for error messages.
    pub fn fd_listing(&self) -> String {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) else {
            return "(cannot list)".to_owned();
        };
        let mut fds: Vec<(u32, String)> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((fd, target.display().to_string()))
            })
            .collect();
        fds.sort();
        fds.iter()
            .map(|(fd, t)| format!("{fd}->{t}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Resident memory of the daemon (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmRSS:")
    }

    /// The most resident memory the daemon ever had (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmHWM:")
    }

    /// A `kB` field of /proc/PID/status, in bytes.
    fn status_bytes(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid))?
            .parse::<u64>()?;
        Ok(kb * 1024)
    }

    /// Everything the daemon wrote on stderr (and stdout) so far.
    pub fn stderr_text(&self) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.stderr_path) {
            let _ = f.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The "connection closed" lines so far.
    pub fn conn_logs(&self) -> Vec<ConnLog> {
        logs::conn_logs(&self.stderr_text())
    }

    /// Waits (at most `within`) until there are at least `n` "connection closed" lines.
    pub fn wait_conn_logs(&self, n: usize, within: Duration) -> anyhow::Result<Vec<ConnLog>> {
        let deadline = Instant::now() + within;
        loop {
            let logs = self.conn_logs();
            if logs.len() >= n {
                return Ok(logs);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} \"connection closed\" log lines after {within:?}, expected {n}; \
                     daemon state: {}; stderr tail:\n{}",
                    logs.len(),
                    self.state_summary(),
                    tail(&self.stderr_text(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Marks the scenario passed: the log is not printed and the scratch files go on drop.
    pub fn passed(&mut self) {
        self.passed = true;
    }

    /// Fails if the daemon has exited (crashed) already.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.exited = Some(status);
            bail!(
                "daemon exited unexpectedly ({status}); stderr tail:\n{}",
                tail(&self.stderr_text(), 30)
            );
        }
        Ok(())
    }

    /// Waits (at most `within`) for the daemon to exit by itself, as it does after handing over
    /// to an upgraded process; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        match self.exit_within(within)? {
            Some(status) => Ok(status),
            None => bail!(
                "daemon (pid {}) still running {within:?} later; stderr tail:\n{}",
                self.pid,
                tail(&self.stderr_text(), 30)
            ),
        }
    }

    /// The exit status once the daemon exited, or `None` if it still runs after `within`.
    fn exit_within(&mut self, within: Duration) -> anyhow::Result<Option<ExitStatus>> {
        if let Some(status) = self.exited {
            return Ok(Some(status));
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit (at most drain_timeout + 5 s; SIGKILL after that).
    /// Returns the exit status; the caller decides whether it is right.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        self.ensure_running()?;
        // SAFETY: signalling our own child, which has not been reaped (pid not reused).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let within = self.config.drain_timeout + Duration::from_secs(5);
        if let Some(status) = self.exit_within(within)? {
            return Ok(status);
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exited = Some(status);
        bail!("daemon did not exit within {within:?} of SIGTERM; killed ({status})");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut state = "still running at the end of the scenario (killed now)".to_owned();
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                state = format!("had EXITED on its own: {status}");
            } else {
                if !self.passed {
                    state = format!("{state}; its state then: {}", self.state_summary());
                }
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        } else if let Some(status) = self.exited {
            state = format!("exited: {status}");
        }
        if !self.passed {
            self.scratch.keep = true;
            let text = self.stderr_text();
            let warnings: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("\"level\":\"INFO\"") && !l.contains("\"level\":\"DEBUG\""))
                .take(20)
                .collect();
            eprintln!(
                "---- daemon (pid {}) of a failed scenario, {state}; first warnings and errors \
                 ----\n{}\n---- last lines ----\n{}\n---- end ----",
                self.pid,
                warnings.join("\n"),
                tail(&text, 30)
            );
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
