//! `cargo xtask fuzz [SECONDS]` and the bounded fuzz run at the end of `cargo xtask test`:
//! `cargo +nightly fuzz run TARGET` in `fuzz/` (its own workspace, libFuzzer with
//! AddressSanitizer), with `-max_total_time`. A crash fails the step; libFuzzer writes the
//! input to `fuzz/artifacts/TARGET/`, and `cargo +nightly fuzz run TARGET ARTIFACT` replays it.

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{Cmd, probe_stdout},
    tasks::root,
};

/// The fuzz targets (`fuzz/fuzz_targets/*.rs`).
pub(crate) const TARGETS: &[&str] = &["connect_request"];
/// The toolchain cargo-fuzz runs with (sanitizers need nightly); the moving `nightly`, not the
/// eBPF pin, which has nothing to do with this.
pub(crate) const TOOLCHAIN: &str = "nightly";
/// Seconds per target in `cargo xtask test`.
pub(crate) const TEST_SECONDS: u64 = 20;

/// Fuzzes every target for `seconds`, printing one line per target.
pub(crate) fn run(seconds: u64) -> Result<()> {
    crate::setup::cargo_fuzz()?;
    for target in TARGETS {
        println!("xtask: fuzzing {target} for {seconds} s");
        let status = Cmd::new("rustup")
            .args(["run", TOOLCHAIN, "cargo", "fuzz", "run", target])
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(&root().join("fuzz"))
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
