//! `cargo xtask fuzz [SECONDS]` and the bounded fuzz run at the end of `cargo xtask test`:
//! `cargo +nightly fuzz run TARGET` in `fuzz/` (its own workspace, libFuzzer with
//! AddressSanitizer), with `-max_total_time`. A crash fails the step; libFuzzer writes the
//! input to `fuzz/artifacts/TARGET/`, and `cargo +nightly fuzz run TARGET ARTIFACT` replays it.
//! Each target starts from its seeds in `fuzz/corpus/TARGET/` and, when there is one, uses the
//! dictionary `fuzz/dicts/TARGET.dict` (`-dict=`). The build goes to `target/fuzz/`, beside the
//! workspace's own builds (one directory to cache and clean), not to `fuzz/target/`.

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{Cmd, probe_stdout},
    tasks::{root, target_dir},
};

/// The fuzz targets (`fuzz/fuzz_targets/*.rs`).
pub(crate) const TARGETS: &[&str] = &[
    "connect_request",
    "config",
    "transparent_sniff",
    "http_request",
];
/// The toolchain cargo-fuzz runs with (sanitizers need nightly); the moving `nightly`, not the
/// eBPF pin, which has nothing to do with this.
pub(crate) const TOOLCHAIN: &str = "nightly";
/// Seconds per target in `cargo xtask test`: a minute of fuzzing for the four targets, a smoke
/// run that catches a new crash on the seeds' neighbourhood; longer runs are `cargo xtask fuzz`.
pub(crate) const TEST_SECONDS: u64 = 15;

/// Fuzzes every target for `seconds`, printing one line per target.
pub(crate) fn run(seconds: u64) -> Result<()> {
    crate::setup::cargo_fuzz()?;
    for target in TARGETS {
        println!("xtask: fuzzing {target} for {seconds} s");
        let fuzz = root().join("fuzz");
        let dict = fuzz.join("dicts").join(format!("{target}.dict"));
        let mut cargo = Cmd::new("rustup")
            .args(["run", TOOLCHAIN, "cargo", "fuzz", "run", target])
            .arg("--target-dir")
            .arg(target_dir().join("fuzz"))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"));
        if dict.is_file() {
            cargo = cargo.arg(format!("-dict={}", dict.display()));
        }
        let status = cargo
            .current_dir(&fuzz)
            .status()
            .with_context(|| format!("step `fuzz {target}`"))?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}); the crashing input is in fuzz/artifacts/{target}/"
            );
        }
        println!("xtask: fuzz {target}: {seconds} s, no crash");
    }
    Ok(())
}

/// Whether `cargo fuzz` answers on [`TOOLCHAIN`].
pub(crate) fn cargo_fuzz_works() -> bool {
    probe_stdout(Cmd::new("rustup").args(["run", TOOLCHAIN, "cargo", "fuzz", "--version"]))
        .is_some()
}
