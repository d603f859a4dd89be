//! `cargo xtask`: the developer entry points of agent-proxy.
//!
//! `run` and `test` are the two commands a newcomer needs; both install what is missing first
//! (see [`setup`]), so a fresh Debian/Ubuntu machine goes from clone to running in one command.
//! xtask holds no product logic: it calls apt-get, rustup, cargo and the `agent-proxy` binary.

mod cmd;
mod fuzz;
mod setup;
mod tasks;

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run and test agent-proxy"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages (LLVM 22, test tools), the pinned nightly
    /// toolchain with rust-src, bpf-linker 0.13 for LLVM 22.
    Setup,
    /// Setup, then build agent-proxy (release unless --debug) and print the binary's path.
    Build {
        /// Build the debug profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Setup, build, then run `agent-proxy run -c examples/agent-proxy.toml`, or
    /// `agent-proxy ARGS...` when arguments follow `--`.
    Run {
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Setup, build, then run every test (unit, kernel, end-to-end) with `AGENT_PROXY_BIN` set;
    /// arguments after `--` go to `cargo test`. Kernel and end-to-end tests need root.
    Test {
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        args: Vec<OsString>,
    },
    /// Setup, build, then run the soak test alone (`tests/tests/soak`) for MINUTES with its
    /// figures shown: every client class through both data paths and every frontend mode over
    /// lossy links, with faults injected (needs root). `cargo xtask test` runs it for 60 s.
    /// `AGENT_PROXY_SOAK_KERNEL_RESETS=0` (or `_BULK=0`, `_SLOW_READERS=0`) leaves those clients
    /// off the kernel path; `AGENT_PROXY_SOAK_CLASSES=Reset,Bulk` runs only the classes named.
    Soak {
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
    },
    /// Fuzz the parsers of untrusted input (`fuzz/`) for SECONDS per target (default 600);
    /// `cargo xtask test` runs them for 15 s each.
    Fuzz {
        #[arg(default_value_t = 600)]
        seconds: u64,
    },
    /// Setup (with the benchmark peers: haproxy, nginx, hey, sockperf, iperf3), build the
    /// release binaries, run the benchmark suite (needs root). Arguments go to the bench, e.g.
    /// `--quick`, `--runs 3`, `--scenario ping-64`, `--only kernel`; `cargo xtask bench --help`
    /// lists them.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "BENCH_ARGS"
        )]
        args: Vec<OsString>,
    },
    /// cargo fmt --check and clippy -D warnings (host crates, and the eBPF crate with the pinned
    /// nightly).
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build { debug } => tasks::build(debug).map(drop),
        Task::Run { args } => tasks::run(args),
        Task::Test { args } => match tasks::test(args) {
            Ok(code) => return code,
            Err(err) => Err(err),
        },
        Task::Soak { minutes } => match tasks::soak(minutes) {
            Ok(code) => return code,
            Err(err) => Err(err),
        },
        Task::Fuzz { seconds } => fuzz::run(seconds),
        Task::Bench { args } => match tasks::bench(args) {
            Ok(code) => return code,
            Err(err) => Err(err),
        },
        Task::Lint => tasks::lint(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}
