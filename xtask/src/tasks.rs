//! `build`, `run`, `test` and `lint`: each is setup, then cargo or the binary.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{Cmd, describe, is_root, quote},
    setup,
};

/// The package that holds the `agent-proxy` binary.
const PACKAGE: &str = "proxy-user";
const BINARY: &str = "agent-proxy";
/// Built for the BPF target by proxy-user's build script; it has no host build, so host-side
/// cargo commands over the whole workspace leave it out.
const EBPF_PACKAGE: &str = "proxy-ebpf";
/// What `cargo xtask run` runs when no arguments are given.
const EXAMPLE_CONFIG: &str = "examples/agent-proxy.toml";

const KERNEL_NEEDS_ROOT: &str = "xtask: note: not root; the kernel data path needs root \
    (CAP_BPF, CAP_NET_ADMIN)";

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is a member of the workspace")
}

/// Setup, then `cargo build [--release] -p proxy-user`; returns the binary's absolute path.
pub(crate) fn build(debug: bool) -> Result<PathBuf> {
    setup::run()?;
    let mut cargo = Cmd::cargo().arg("build");
    if !debug {
        cargo = cargo.arg("--release");
    }
    cargo
        .args(["-p", PACKAGE])
        .current_dir(root())
        .run()
        .context("step `build`")?;
    let binary = target_dir()
        .join(if debug { "debug" } else { "release" })
        .join(BINARY);
    if !binary.is_file() {
        bail!(
            "step `build`: cargo succeeded but {} is missing",
            binary.display()
        );
    }
    println!("xtask: built {}", binary.display());
    Ok(binary)
}

/// Builds the release binary and replaces this process with it, so that signals (SIGTERM drain,
/// SIGHUP reload) reach the daemon directly.
pub(crate) fn run(args: Vec<OsString>) -> Result<()> {
    let binary = build(false)?;
    if !is_root() {
        println!(
            "{KERNEL_NEEDS_ROOT}; running anyway (dataplane = \"auto\" falls back to the userspace relay)"
        );
    }
    let binary = binary.to_string_lossy().into_owned();
    let args = if args.is_empty() {
        vec![
            "run".into(),
            "-c".into(),
            root().join(EXAMPLE_CONFIG).into(),
        ]
    } else {
        args
    };
    Err(Cmd::new(&binary).args(args).exec()).context("step `run`")
}

/// Builds the release binary, then `cargo test --release --workspace` with `AGENT_PROXY_BIN`
/// pointing at it; `args` go to cargo test. `--no-fail-fast`: one failing test binary must not
/// hide the results of the others. The exit code is cargo's.
pub(crate) fn test(args: Vec<OsString>) -> Result<ExitCode> {
    let binary = build(false)?;
    setup::test_tools()?;
    if !is_root() {
        println!(
            "{KERNEL_NEEDS_ROOT}; kernel and end-to-end tests will skip (or fail with CI=true)"
        );
    }
    let status = Cmd::cargo()
        .env("AGENT_PROXY_BIN", &binary)
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            EBPF_PACKAGE,
        ])
        .args(args)
        .current_dir(root())
        .status_tee()
        .context("step `test`")?;
    // One closing line over every test binary: cargo's own last line belongs to whichever
    // binary ran last (often one without tests) and says nothing about the run as a whole.
    let (passed, failed) = status
        .1
        .iter()
        .filter_map(|line| tally(line))
        .fold((0, 0), |(p, f), (lp, lf)| (p + lp, f + lf));
    // The bounded fuzz run counts as one more test in the closing line.
    let fuzz = crate::fuzz::run(crate::fuzz::TEST_SECONDS);
    if let Err(e) = &fuzz {
        eprintln!("xtask: step `fuzz` failed: {e:#}");
    }
    let (passed, failed) = if fuzz.is_ok() {
        (passed + 1, failed)
    } else {
        (passed, failed + 1)
    };
    // CI shows only the tail of a run: the failed tests' own output is repeated here, last,
    // so that the tail names what failed and why.
    for block in failure_blocks(&status.1) {
        println!("xtask: FAILED {}", block.join("\n"));
    }
    println!("xtask: {passed} passed, {failed} failed");
    let status = status.0;
    if status.success() && fuzz.is_ok() {
        return Ok(ExitCode::SUCCESS);
    }
    if status.success() {
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "xtask: step `test` failed: cargo test: {}",
        describe(status)
    );
    let code = status.code().unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The soak: its test binary and test (tests/tests/soak), and the variable that sets its length.
const SOAK_TEST: &str = "soak";
const SOAK_SECONDS_VAR: &str = "AGENT_PROXY_SOAK_SECONDS";

/// Builds the release binary, then runs the soak test alone for `minutes`, its output shown;
/// the exit code is cargo's.
pub(crate) fn soak(minutes: u64) -> Result<ExitCode> {
    let binary = build(false)?;
    if !is_root() {
        println!("{KERNEL_NEEDS_ROOT}; the soak will skip (or fail with CI=true)");
    }
    let status = Cmd::cargo()
        .env("AGENT_PROXY_BIN", &binary)
        .env(SOAK_SECONDS_VAR, (minutes * 60).to_string())
        .args([
            "test",
            "--release",
            "-p",
            "agent-proxy-tests",
            "--test",
            SOAK_TEST,
        ])
        .args(["--", "--exact", SOAK_TEST, "--nocapture"])
        .current_dir(root())
        .status()
        .context("step `soak`")?;
    Ok(exit_code("soak", status))
}

/// The exit code of a step that ran one child: its own, said when it failed.
fn exit_code(step: &str, status: std::process::ExitStatus) -> ExitCode {
    if status.success() {
        return ExitCode::SUCCESS;
    }
    eprintln!("xtask: step `{step}` failed: {}", describe(status));
    ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
}

/// Lines of each failed test's captured output, as libtest prints it (`---- name stdout ----`
/// up to the next such header or the `failures:` list): the header, then at most
/// `FAILURE_LINES` lines from the panic's message on (or the last ones, without a panic).
fn failure_blocks(lines: &[String]) -> Vec<Vec<String>> {
    const FAILURE_LINES: usize = 40;
    let mut blocks: Vec<Vec<String>> = Vec::new();
    let mut open = false;
    for line in lines {
        if line.starts_with("---- ") && line.ends_with(" stdout ----") {
            blocks.push(vec![line.clone()]);
            open = true;
        } else if line.trim() == "failures:" || line.starts_with("test result: ") {
            open = false;
        } else if open && let Some(block) = blocks.last_mut() {
            block.push(line.clone());
        }
    }
    for block in &mut blocks {
        let body = &block[1..];
        let from = body
            .iter()
            .position(|l| l.contains("panicked at"))
            .unwrap_or(body.len().saturating_sub(FAILURE_LINES));
        let kept: Vec<String> = body
            .iter()
            .skip(from)
            .take(FAILURE_LINES)
            .cloned()
            .collect();
        block.truncate(1);
        block.extend(kept);
    }
    blocks
}

/// Counts of a libtest summary line: `test result: ok. 3 passed; 0 failed; ...`.
fn tally(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |label: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .strip_suffix(label)
            })
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}

/// The benchmark suite's package and binary (bench/).
const BENCH_PACKAGE: &str = "agent-proxy-bench";

/// Installs the benchmark peers, builds agent-proxy and the bench in release, and runs the bench
/// with `args`; its exit code is ours. The bench measures; xtask only prepares.
pub(crate) fn bench(args: Vec<OsString>) -> Result<ExitCode> {
    let binary = build(false)?;
    setup::apt_packages(&[setup::BENCH_APT_PACKAGES]).context("setup step `bench peers`")?;
    Cmd::cargo()
        .args(["build", "--release", "-p", BENCH_PACKAGE])
        .current_dir(root())
        .run()
        .context("step `build bench`")?;
    if !is_root() {
        println!(
            "xtask: note: not root; the bench needs root (network namespaces, the kernel path)"
        );
    }
    let command = std::iter::once("cargo xtask bench".to_owned())
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ");
    let bench = target_dir().join("release").join(BENCH_PACKAGE);
    let status = Cmd::new(&bench.to_string_lossy())
        .env("AGENT_PROXY_BIN", &binary)
        .env("AP_BENCH_COMMAND", command)
        .args(args)
        .current_dir(root())
        .status()
        .context("step `bench`")?;
    Ok(exit_code("bench", status))
}

/// `cargo fmt --check`, clippy over the host crates, and clippy over the eBPF crate with the eBPF
/// nightly (as aya-template does: the crate is `no_std`, so its host check needs `panic=abort`,
/// which needs nightly's `-Zpanic_abort_tests`). Runs all three and names every one that failed.
pub(crate) fn lint() -> Result<()> {
    setup::run()?;
    setup::ebpf_component("clippy").context("setup step `clippy`")?;
    let steps = [
        ("fmt", Cmd::cargo().args(["fmt", "--all", "--check"])),
        (
            "clippy",
            Cmd::cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_PACKAGE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        (
            "clippy (eBPF)",
            Cmd::new("rustup").args([
                "run",
                setup::EBPF_TOOLCHAIN,
                "cargo",
                "clippy",
                "-p",
                EBPF_PACKAGE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
                "-C",
                "panic=abort",
                "-Zpanic_abort_tests",
            ]),
        ),
    ];
    let mut failed = Vec::new();
    for (name, cmd) in steps {
        if let Err(err) = cmd.current_dir(root()).run() {
            eprintln!("xtask: step `{name}` failed: {err:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint steps failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Where cargo puts its output: `$CARGO_TARGET_DIR` (relative to the root, where the child cargo
/// runs) or `target/`.
/// The workspace's target directory (`CARGO_TARGET_DIR` or `target/`).
pub(crate) fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |dir| root().join(dir))
}

#[cfg(test)]
mod tests {
    use super::{failure_blocks, tally};

    #[test]
    fn repeats_failed_tests_output() {
        let run: Vec<String> = [
            "test a ... ok",
            "test b ... FAILED",
            "",
            "failures:",
            "",
            "---- b stdout ----",
            "---- daemon log ----",
            "a log line",
            "thread 'b' panicked at tests/b.rs:3:5:",
            "bytes differ",
            "",
            "failures:",
            "    b",
            "",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        ]
        .iter()
        .map(|l| l.to_string())
        .collect();
        let blocks = failure_blocks(&run);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0][0], "---- b stdout ----");
        assert_eq!(blocks[0][2], "bytes differ");
        assert!(failure_blocks(&run[..2]).is_empty());
    }

    #[test]
    fn tallies_libtest_summaries() {
        let ok = "test result: ok. 45 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.20s";
        assert_eq!(tally(ok), Some((45, 0)));
        let bad = "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(tally(bad), Some((1, 2)));
        assert_eq!(tally("running 4 tests"), None);
    }
}
