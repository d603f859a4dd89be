//! Network namespaces, one per test, so that tests can run in parallel on fixed ports and the
//! daemon's `/proc/net/sockstat` figures are its own.
//!
//! Peers are put inside a namespace by creating their sockets on a thread that called
//! `setns(CLONE_NEWNET)`: a socket keeps the namespace it was created in, whatever thread uses
//! it afterwards. [`NetNs::block_on`] runs a future on a tokio runtime all of whose threads are
//! in the namespace, so any socket the future creates is inside.
use std::future::Future;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// A named network namespace (`ip netns add`), deleted on drop, also when the test panics.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `ap-<pid>-<n>` with `lo` up, 127.0.0.1 and ::1 on it.
    pub fn new() -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(remove_stale);
        let name = format!(
            "ap-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name])?;
        // From here on the guard deletes the namespace whatever fails next.
        let ns = Self { name };
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ns.ensure_ipv6_loopback()?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file that `setns` opens.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A new namespace normally gets ::1 when lo comes up; make sure, since the tests use it.
    fn ensure_ipv6_loopback(&self) -> anyhow::Result<()> {
        let bound = self.run(|| std::net::TcpListener::bind("[::1]:0").map(drop));
        if bound.is_ok() {
            return Ok(());
        }
        self.run(|| std::fs::write("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "0"))
            .with_context(|| format!("enable IPv6 on lo in {}", self.name))?;
        let _ = run_ip(&["-n", &self.name, "addr", "add", "::1/128", "dev", "lo"]);
        self.run(|| std::net::TcpListener::bind("[::1]:0").map(drop))
            .with_context(|| format!("no usable ::1 in netns {}", self.name))
    }

    /// Moves the calling thread into this namespace. Only for threads the harness owns.
    pub fn enter_current_thread(&self) -> anyhow::Result<()> {
        enter(&self.path())
    }

    /// Runs `f` on a new thread that is inside the namespace, and returns its result (a panic
    /// in `f` is resumed on the caller).
    pub fn run<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        run_in(&self.path(), f)
    }

    /// Runs the future made by `make` to completion on a multi-thread tokio runtime whose
    /// threads are all inside the namespace, with an overall `limit`: a scenario that hangs
    /// fails with an error instead.
    pub fn block_on<F, Fut, R>(&self, limit: Duration, make: F) -> anyhow::Result<R>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = anyhow::Result<R>>,
        R: Send,
    {
        let path = self.path();
        self.run(move || {
            let worker_path = path.clone();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .on_thread_start(move || {
                    // A runtime thread outside the namespace would create sockets in the host's
                    // namespace, silently testing the wrong thing: better to abort.
                    if let Err(e) = enter(&worker_path) {
                        eprintln!("tokio thread cannot enter netns: {e:#}");
                        std::process::abort();
                    }
                })
                .build()
                .context("build tokio runtime")?;
            let result = rt.block_on(async {
                match tokio::time::timeout(limit, make()).await {
                    Ok(r) => r,
                    Err(_) => bail!("scenario did not finish within {limit:?}"),
                }
            });
            // Tasks still blocked on a socket must not keep the test alive.
            rt.shutdown_timeout(Duration::from_secs(2));
            result
        })
    }

    /// Reads a file of this namespace's /proc/net (e.g. "sockstat") through `pid`, a process
    /// inside it.
    pub fn proc_net(pid: u32, file: &str) -> anyhow::Result<String> {
        let path = format!("/proc/{pid}/net/{file}");
        std::fs::read_to_string(&path).with_context(|| format!("read {path}"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("warning: cannot delete netns {}: {e:#}", self.name);
        }
    }
}

/// Deletes `ap-PID-N` namespaces left by test processes that died without unwinding (SIGKILL,
/// abort): their PID no longer exists.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ap-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_ip(&["netns", "del", &name]);
        }
    }
}

/// Runs `f` on a new thread inside the namespace whose file is `path` (see [`NetNs::run`]).
pub fn run_in<R: Send, F: FnOnce() -> R + Send>(path: &Path, f: F) -> R {
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            enter(path).unwrap_or_else(|e| panic!("{e:#}"));
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn enter(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
