//! Peer processes started inside the bench's namespace (`ip netns exec NS PROG ...`: `ip` execs
//! the program after `setns`, so the child's pid is the program's and /proc/PID describes it).
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_proxy_tests::netns::NetNs;
use anyhow::{Context as _, bail};

/// A server or proxy process; SIGTERM on drop, SIGKILL if it lingers.
pub(crate) struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args` in `ns` with stdout and stderr going to `log`.
    pub(crate) fn spawn(
        ns: &NetNs,
        program: &str,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {program} in netns {}", ns.name()))?;
        Ok(Self {
            child,
            name: program.to_owned(),
            log: log.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process listens on `port` (read from its namespace's /proc/net/tcp, so
    /// that no probe connection reaches a peer such as iperf3 that would take it for a client).
    pub(crate) fn wait_listening(&mut self, port: u16, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            let tcp = NetNs::proc_net(self.pid(), "tcp")? + &NetNs::proc_net(self.pid(), "tcp6")?;
            if listening(&tcp, port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} does not listen on port {port} after {within:?}; its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails if the process has exited.
    pub(crate) fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.output()
            );
        }
        Ok(())
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child, not yet reaped (its pid cannot have been reused).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client program in `ns` to completion (killed after `limit`) and returns its stdout;
/// a non-zero exit is an error carrying its stderr.
pub(crate) fn run_client(
    ns: &NetNs,
    program: &str,
    args: &[String],
    limit: Duration,
) -> anyhow::Result<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {program}"))?;
    // Drain both pipes on threads so that a chatty client never blocks on a full pipe.
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{program} {} did not finish within {limit:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if !status.success() {
        bail!(
            "`{program} {}` failed ({status}):\n{}{}",
            args.join(" "),
            out.trim_end(),
            err.trim_end()
        );
    }
    Ok(out + &err)
}

/// Whether /proc/net/tcp text shows a socket in LISTEN state (0A) on `port`, any address.
pub(crate) fn listening(proc_net_tcp: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    proc_net_tcp.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 3 && f[3] == "0A" && f[1].rsplit_once(':').is_some_and(|(_, p)| p == want)
    })
}

#[cfg(test)]
mod tests {
    use super::listening;

    #[test]
    fn finds_listeners_by_port_and_state() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
            1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        assert!(listening(tcp, 7000)); // 0x1B58
        assert!(!listening(tcp, 8000)); // 0x1F40 is established, not listening
        assert!(!listening(tcp, 5201));
    }
}
