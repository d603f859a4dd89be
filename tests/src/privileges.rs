//! What a test needs from the machine before it can run: root-like capabilities (network
//! namespaces, eBPF), the `ip` tool, and enough file descriptors.
use std::io::Write as _;
use std::path::Path;

/// `CAP_NET_ADMIN`: network namespaces, `SO_SNDBUFFORCE`, attaching sockmap programs.
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_SYS_ADMIN`: `setns`, mounting the namespace files under /var/run/netns.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_BPF`: loading the programs and creating the maps.
const CAP_BPF: u32 = 39;

/// True when running in CI (`CI=true`), where a test that cannot run must fail, never skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Why this process cannot run the end-to-end tests, or `None` when it can.
fn missing_privileges() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("not running as root (euid {euid})"));
    }
    let caps = match effective_capabilities() {
        Ok(caps) => caps,
        Err(e) => return Some(format!("cannot read effective capabilities: {e}")),
    };
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_BPF, "CAP_BPF"),
    ]
    .into_iter()
    .filter(|(bit, _)| caps & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        return Some(format!("missing capabilities: {}", missing.join(", ")));
    }
    if which("ip").is_none() {
        return Some("the `ip` tool (iproute2) is not installed".to_owned());
    }
    None
}

/// `CapEff` from /proc/self/status.
fn effective_capabilities() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| anyhow::anyhow!("no CapEff line"))?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// Returns true when the test can run. Otherwise says loudly on stderr why `test` is skipped
/// and returns false, or panics when `CI=true`: in CI a test that cannot run is a failure.
pub fn require_root(test: &str) -> bool {
    let Some(why) = missing_privileges() else {
        return true;
    };
    if in_ci() {
        panic!(
            "{test}: cannot run in CI: {why}; end-to-end tests need root with CAP_BPF + CAP_NET_ADMIN"
        );
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and a
    // skip must be seen.
    let bar = "!".repeat(80);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! SKIPPED {test}: {why}.\n\
         !! End-to-end tests need root with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN.\n\
         !! (With CI=true this is a failure, not a skip.)\n{bar}\n"
    );
    false
}

/// Returns true when `tool` (found by `present`) is installed. Otherwise says loudly why `test`
/// is skipped and how to install it, or panics when `CI=true`: `cargo xtask test` installs it,
/// so in CI its absence is a failure.
pub fn require_tool(test: &str, tool: &str, present: bool, install: &str) -> bool {
    if present {
        return true;
    }
    let why = format!("{tool} is not installed ({install}; `cargo xtask test` does)");
    if in_ci() {
        panic!("{test}: cannot run in CI: {why}");
    }
    let bar = "!".repeat(80);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!! SKIPPED {test}: {why}.\n!! (With CI=true this is a failure, not a skip.)\n{bar}\n"
    );
    false
}

/// The first `name` found on `PATH`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| Path::new(p).is_file())
}

/// Raises this process's RLIMIT_NOFILE towards `want`; children, the daemon among them,
/// inherit it. The hard limit is raised too where allowed (CAP_SYS_RESOURCE, not always
/// granted in containers); otherwise the soft limit goes up to the hard one. Fails if the
/// result is below `need`. Returns the soft limit now in force.
pub fn raise_nofile(want: u64, need: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max.max(want),
    };
    let capped = libc::rlimit {
        rlim_cur: want.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    for new in [raised, capped] {
        // SAFETY: valid pointer to an rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            anyhow::ensure!(
                new.rlim_cur >= need,
                "RLIMIT_NOFILE is {} (hard limit {}), the tests need {need}",
                new.rlim_cur,
                new.rlim_max
            );
            return Ok(new.rlim_cur);
        }
    }
    Err(anyhow::anyhow!(
        "setrlimit(RLIMIT_NOFILE, {want}): {}",
        std::io::Error::last_os_error()
    ))
}
