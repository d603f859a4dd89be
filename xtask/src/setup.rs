//! `cargo xtask setup`: installs what building and testing agent-proxy needs, and only what is
//! missing. Each step checks first and prints one `setup: ...` line; a step that has to install
//! something also prints the commands it runs.
//!
//! Why each piece is needed:
//! - the eBPF program (`proxy-ebpf`) is compiled by `proxy-user/build.rs` (aya-build) with
//!   `rustup run <nightly> cargo build -Z build-std=core --target bpfel-unknown-none`: that needs
//!   a nightly toolchain and its `rust-src` component (to build `core` for the BPF target);
//! - the BPF object is linked by `bpf-linker` 0.13, built against LLVM 22, hence the LLVM 22
//!   development packages. bpf-linker reads the compiler's LLVM bitcode, so the nightly's LLVM
//!   must not be newer than bpf-linker's: that is why the nightly is pinned ([`EBPF_TOOLCHAIN`]);
//! - the end-to-end tests drive network namespaces, iptables, curl and small Python peers; the
//!   deploy tests systemd-analyze, setpriv, podman and kubernetes-validate.

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Cmd, is_root, probe_stdout, which};

/// Debian packages for the build. `build-essential`: `cc`, the linker rustc uses for host
/// binaries, and the C/C++ toolchain llvm-sys compiles its wrapper and links libLLVM with.
/// `llvm-22-dev` and `libpolly-22-dev`: bpf-linker links against LLVM 22 (llvm-sys asks
/// `llvm-config`, whose LLVM 22 build also lists Polly); `libzstd-dev`, `zlib1g-dev`: LLVM's own
/// link dependencies.
///
/// On Debian 12 the LLVM 22 packages come from the stock `bookworm-security` suite
/// (source package llvm-toolchain-22, version `1:22.1.x-1~deb12u1`), not from bookworm itself.
pub(crate) const BUILD_APT_PACKAGES: &[&str] = &[
    "build-essential",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages the tests use: `iproute2` (`ip netns`, veth), `iptables` (transparent-mode
/// redirect rules), `bpftool` (inspecting the loaded programs and maps), `curl` (the admin
/// endpoints, and a TLS client of the TLS tests), `openssl` (`s_client` in the TLS tests),
/// `python3` (small test peers), `procps` (`sysctl`, `ps`), `chromium` (the stats page, as a
/// browser renders it), `prometheus` (`promtool check metrics` on `/metrics`).
///
/// Benchmark peers (haproxy, iperf3, ...) are in [`BENCH_APT_PACKAGES`], which only `bench`
/// installs.
pub(crate) const TEST_APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "bpftool",
    "curl",
    "openssl",
    "python3",
    "procps",
    "dnsmasq-base",
    "chromium",
    "prometheus",
];

/// What the CONNECT-mode tests add: `squid` (the reference forward proxy docs/connect.md
/// compares against), `openssl` (a certificate for the local HTTPS intake).
pub(crate) const CONNECT_TEST_APT_PACKAGES: &[&str] = &["squid", "openssl"];
/// Python packages the tests use, as (PyPI name, module to import): the CONNECT-mode tests
/// drive `requests` with `proxies=` and `datadog` (the Datadog API client) as real agent
/// clients; the deploy tests validate the Kubernetes manifests with `kubernetes-validate`
/// (bundled schemas, offline).
pub(crate) const TEST_PIP_PACKAGES: &[(&str, &str)] = &[
    ("requests", "requests"),
    ("datadog", "datadog"),
    ("kubernetes-validate", "kubernetes_validate"),
];
/// What the deploy tests (tests/tests/deploy.rs) add: `systemd` (`systemd-analyze verify` of
/// the unit), `util-linux` (`setpriv`: the daemon as `nobody` with the unit's capabilities),
/// `podman` and `runc` (building and running the container image; podman runs here only with
/// `--runtime runc`).
pub(crate) const DEPLOY_TEST_APT_PACKAGES: &[&str] = &["systemd", "util-linux", "podman", "runc"];
/// Debian packages `cargo xtask bench` measures with: `haproxy` (2.6 on Debian 12, the peer to
/// beat), `nginx` (the intake answering 200), `hey` (the DataKit workload's HTTP client),
/// `sockperf` (ping-pong latency), `iperf3` (bulk throughput), `ethtool` (`--veth-gro`: GRO on
/// the veth topology's links).
pub(crate) const BENCH_APT_PACKAGES: &[&str] =
    &["haproxy", "nginx", "hey", "sockperf", "iperf3", "ethtool"];

/// The toolchain aya-build runs (`rustup run EBPF_TOOLCHAIN ...`); `proxy-user/build.rs` must name
/// the same one. Pinned to rustc 1.97.0-nightly (e50aa6fba 2026-05-19), LLVM 22.1: the nightly the
/// project was developed with, and verified to build proxy-ebpf with bpf-linker 0.13 for LLVM 22.
/// The moving `nightly` has since gone to LLVM 23 (1.101.0-nightly of 2026-10-29), whose bitcode
/// that bpf-linker rejects ("ERROR llvm: Invalid record").
pub(crate) const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
/// The LLVM major version of [`EBPF_TOOLCHAIN`] and of the bpf-linker build; they must agree.
const LLVM_MAJOR: &str = "22";

/// bpf-linker releases that work with aya-ebpf 0.2 and LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_BIN_DIR: &str = "/usr/lib/llvm-22/bin";

/// Every step, in order: apt packages, the eBPF toolchain, its rust-src, bpf-linker.
pub(crate) fn run() -> Result<()> {
    apt_packages(&[BUILD_APT_PACKAGES, TEST_APT_PACKAGES]).context("setup step `apt packages`")?;
    ebpf_toolchain().context("setup step `eBPF toolchain`")?;
    ebpf_component("rust-src").context("setup step `rust-src`")?;
    bpf_linker().context("setup step `bpf-linker`")?;
    Ok(())
}

/// Installs the missing ones of `lists` with apt-get (root only; otherwise says what to run).
pub(crate) fn apt_packages(lists: &[&[&str]]) -> Result<()> {
    let wanted: Vec<&str> = lists.iter().flat_map(|list| list.iter().copied()).collect();
    let mut missing = Vec::new();
    for &package in &wanted {
        if !dpkg_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        println!(
            "setup: apt packages already installed: {}",
            wanted.join(" ")
        );
        return Ok(());
    }
    let missing_list = missing.join(" ");
    if !is_root() {
        bail!(
            "apt packages missing: {missing_list}; installing them needs root, run:\n  \
             sudo apt-get update && sudo apt-get install -y {missing_list}\n\
             then run this command again"
        );
    }
    println!("setup: installing apt packages: {missing_list}");
    Cmd::new("apt-get").args(["update", "-qq"]).run()?;
    let unavailable: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|package| !apt_has_candidate(package))
        .collect();
    if !unavailable.is_empty() {
        bail!(
            "apt has no installable version of: {}{}",
            unavailable.join(" "),
            if unavailable.iter().any(|p| p.contains("-22")) {
                LLVM_22_HINT
            } else {
                ""
            }
        );
    }
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .run()
}

const LLVM_22_HINT: &str = "\n\
    LLVM 22 is not in Debian 12's main suite: it comes from `bookworm-security` \
    (URIs: http://deb.debian.org/debian-security, Suites: bookworm-security, Components: main), \
    which a stock install has in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list. \
    Enable that suite; on other distributions add apt.llvm.org's repository for LLVM 22. \
    Then run this command again.";

/// `dpkg-query -W -f='${Status}' PKG` says "install ok installed".
fn dpkg_installed(package: &str) -> Result<bool> {
    let out = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .probe()
        .context(
            "cannot run dpkg-query: the automatic setup supports Debian and Ubuntu only; \
             install a C toolchain, LLVM 22 (dev), zstd and zlib headers, iproute2, iptables, \
             bpftool, curl, python3 and procps by hand",
        )?;
    Ok(out.status.success() && out.stdout.trim_ascii() == b"install ok installed")
}

/// `apt-cache policy PKG` names a candidate other than "(none)".
fn apt_has_candidate(package: &str) -> bool {
    probe_stdout(Cmd::new("apt-cache").args(["policy", package])).is_some_and(|policy| {
        policy
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .is_some_and(|c| c.trim() != "(none)")
    })
}

/// Installs [`EBPF_TOOLCHAIN`] (minimal profile) unless present, then checks its LLVM version.
fn ebpf_toolchain() -> Result<()> {
    let list = Cmd::new("rustup")
        .args(["toolchain", "list"])
        .probe()
        .context("cannot run rustup: the eBPF build needs rustup (https://rustup.rs)")?;
    let list = String::from_utf8_lossy(&list.stdout);
    // Listed with the host triple: "nightly-2026-05-20-x86_64-unknown-linux-gnu". A triple
    // starts with a letter, so "nightly" does not match "nightly-2026-05-20-...".
    let present = list.lines().any(|line| {
        line.split_whitespace().next().is_some_and(|name| {
            name == EBPF_TOOLCHAIN
                || name
                    .strip_prefix(EBPF_TOOLCHAIN)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|triple| triple.starts_with(|c: char| c.is_ascii_alphabetic()))
        })
    });
    if !present {
        println!("setup: installing the {EBPF_TOOLCHAIN} toolchain (minimal profile)");
        Cmd::new("rustup")
            .args(["toolchain", "install", EBPF_TOOLCHAIN])
            .args(["--profile", "minimal", "--no-self-update"])
            .run()?;
    }
    let version = probe_stdout(Cmd::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "-vV"]))
        .with_context(|| format!("`rustup run {EBPF_TOOLCHAIN} rustc -vV` failed"))?;
    let field = |key: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map_or("?", str::trim)
            .to_owned()
    };
    let (release, llvm) = (field("release:"), field("LLVM version:"));
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "{EBPF_TOOLCHAIN} is rustc {release} with LLVM {llvm}, but bpf-linker is built for \
             LLVM {LLVM_MAJOR}; pin a nightly with LLVM {LLVM_MAJOR}"
        );
    }
    if present {
        println!("setup: {EBPF_TOOLCHAIN} toolchain (rustc {release}, LLVM {llvm}): ok");
    }
    Ok(())
}

/// Adds `component` to [`EBPF_TOOLCHAIN`] unless it is there.
pub(crate) fn ebpf_component(component: &str) -> Result<()> {
    let installed = Cmd::new("rustup")
        .args([
            "component",
            "list",
            "--toolchain",
            EBPF_TOOLCHAIN,
            "--installed",
        ])
        .probe()
        .context("cannot run rustup")?;
    let installed = String::from_utf8_lossy(&installed.stdout);
    // Listed as "rust-src" or "clippy-x86_64-unknown-linux-gnu".
    let present = installed.lines().any(|line| {
        let line = line.trim();
        line == component
            || line
                .strip_prefix(component)
                .is_some_and(|rest| rest.starts_with('-'))
    });
    if present {
        println!("setup: {component} for {EBPF_TOOLCHAIN}: ok");
        return Ok(());
    }
    println!("setup: adding {component} to {EBPF_TOOLCHAIN}");
    Cmd::new("rustup")
        .args(["component", "add", component, "--toolchain", EBPF_TOOLCHAIN])
        .run()
}

/// What the installed bpf-linker is, as far as setup cares.
enum Linker {
    Ok {
        llvm: &'static str,
    },
    Missing,
    /// Installed but unusable; the reason is shown.
    Wrong(String),
}

fn bpf_linker() -> Result<()> {
    let reason = match inspect_bpf_linker() {
        Linker::Ok { llvm } => {
            println!("setup: bpf-linker {BPF_LINKER_VERSION} ({llvm}): already installed");
            return Ok(());
        }
        Linker::Missing => "not found".to_owned(),
        Linker::Wrong(reason) => reason,
    };
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} for LLVM 22 ({reason}; \
         this compiles for a few minutes)"
    );
    // Without LLVM 22's bin directory first in PATH, llvm-sys finds Debian's default LLVM 14
    // llvm-config and the build fails. --force replaces a wrong version in place.
    Cmd::cargo()
        .path_prepend(LLVM_BIN_DIR)
        .args(["install", "bpf-linker", "--version"])
        .arg(format!("^{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22", "--force"])
        .run()?;
    match inspect_bpf_linker() {
        Linker::Ok { .. } => Ok(()),
        Linker::Missing => bail!("bpf-linker is still not found in PATH after installing it"),
        Linker::Wrong(reason) => {
            bail!("bpf-linker is still unusable after installing it: {reason}")
        }
    }
}

fn inspect_bpf_linker() -> Linker {
    let Some(path) = which("bpf-linker") else {
        return Linker::Missing;
    };
    let Some(version) = probe_stdout(Cmd::new("bpf-linker").arg("--version")) else {
        return Linker::Wrong(format!("`{} --version` failed", path.display()));
    };
    // "bpf-linker 0.13.0"
    let version = version.split_whitespace().nth(1).unwrap_or("").to_owned();
    if !version.starts_with(&format!("{BPF_LINKER_VERSION}.")) {
        return Linker::Wrong(format!("found version {version:?}"));
    }
    // bpf-linker links libLLVM dynamically when built against Debian's packages; ldd shows which.
    let ldd = probe_stdout(Cmd::new("ldd").arg(&path)).unwrap_or_default();
    let Some(llvm) = ldd.lines().find(|l| l.contains("libLLVM")) else {
        return Linker::Ok {
            llvm: "LLVM linked statically, version not checked",
        };
    };
    let llvm = llvm.trim();
    if llvm.contains("not found") {
        Linker::Wrong(format!("its LLVM library is gone: {llvm}"))
    } else if llvm.contains("libLLVM.so.22") || llvm.contains("libLLVM-22") {
        Linker::Ok { llvm: "LLVM 22" }
    } else {
        Linker::Wrong(format!("built against another LLVM: {llvm}"))
    }
}

/// The tools the CONNECT-mode and deploy tests use beyond [`TEST_APT_PACKAGES`]: see
/// [`CONNECT_TEST_APT_PACKAGES`], [`DEPLOY_TEST_APT_PACKAGES`] and [`TEST_PIP_PACKAGES`].
pub(crate) fn test_tools() -> Result<()> {
    apt_packages(&[CONNECT_TEST_APT_PACKAGES, DEPLOY_TEST_APT_PACKAGES])
        .context("setup step `test packages`")?;
    let missing: Vec<&str> = TEST_PIP_PACKAGES
        .iter()
        .filter(|(_, module)| {
            !Cmd::new("python3")
                .args(["-c", &format!("import {module}")])
                .probe()
                .is_ok_and(|out| out.status.success())
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        let all: Vec<&str> = TEST_PIP_PACKAGES
            .iter()
            .map(|(package, _)| *package)
            .collect();
        println!(
            "setup: python packages already installed: {}",
            all.join(" ")
        );
        return Ok(());
    }
    println!("setup: installing python packages: {}", missing.join(" "));
    Cmd::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(&missing)
        .run()
        .context("setup step `python packages`")
}

/// cargo-fuzz, installed with the moving `nightly` toolchain's cargo (the fuzz targets build
/// with it; sanitizers need nightly).
pub(crate) fn cargo_fuzz() -> Result<()> {
    use crate::fuzz::{TOOLCHAIN, cargo_fuzz_works};
    if cargo_fuzz_works() {
        println!("setup: cargo-fuzz on {TOOLCHAIN}: ok");
        return Ok(());
    }
    let installed = Cmd::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--version"])
        .probe()
        .is_ok_and(|out| out.status.success());
    if !installed {
        println!("setup: installing the {TOOLCHAIN} toolchain (minimal profile) for cargo-fuzz");
        Cmd::new("rustup")
            .args(["toolchain", "install", TOOLCHAIN, "--profile", "minimal"])
            .args(["--no-self-update"])
            .run()?;
    }
    println!("setup: installing cargo-fuzz (compiles for a minute or two)");
    Cmd::cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .run()
        .context("setup step `cargo-fuzz`")?;
    if !cargo_fuzz_works() {
        bail!(
            "cargo-fuzz is still not usable with `rustup run {TOOLCHAIN} cargo fuzz` after installing it"
        );
    }
    Ok(())
}
