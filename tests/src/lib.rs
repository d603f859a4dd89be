//! End-to-end test harness for agent-proxy.
//!
//! Every scenario runs the real `agent-proxy` binary in a network namespace of its own
//! ([`netns::NetNs`]), with peers (clients, upstream servers) that the test creates inside that
//! namespace, and judges the proxy on the bytes: each side hashes what it sends and what it
//! receives ([`pattern`]), and the hashes must match. After each scenario [`clean::assert_clean`]
//! checks that nothing of the connections outlived them: no eBPF map entry, no open connection,
//! no leaked file descriptor.
//!
//! A scenario is written once and run on both data paths (`kernel`: sockmap splice,
//! `userspace`: the relay) by [`dataplane_tests!`]. Scenarios that need root skip loudly without
//! it ([`privileges::require_root`]), and fail instead of skipping when `CI=true`.
//!
//! Heavy scenarios (1 GiB transfers, 1,000 connections) take [`heavy::heavy`] so that two of
//! them never compete for the machine's two cores within one test binary; cargo runs the test
//! binaries one after another.
pub mod admin;
pub mod bpftool;
pub mod checks;
pub mod clean;
pub mod config;
pub mod connect;
pub mod connect_cases;
pub mod daemon;
pub mod dnsmasq;
pub mod echo;
pub mod env;
pub mod gateway;
pub mod heavy;
pub mod http;
pub mod http_cases;
pub mod impair;
pub mod intake;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod pattern;
pub mod peers;
pub mod privileges;
pub mod squid;
pub mod tls;

pub use daemon::{Daemon, DaemonConfig, Dataplane};
pub use env::{TestEnv, run_scenario};

/// Generates, for each named scenario `fn NAME(dataplane: Dataplane) -> anyhow::Result<()>`,
/// a module `NAME` with two tests, `NAME::kernel` and `NAME::userspace`.
#[macro_export]
macro_rules! dataplane_tests {
    ($($scenario:ident),+ $(,)?) => {
        $(
            mod $scenario {
                #[test]
                fn kernel() {
                    $crate::run_scenario(
                        stringify!($scenario),
                        $crate::Dataplane::Kernel,
                        super::$scenario,
                    );
                }

                #[test]
                fn kernel_remote() {
                    $crate::run_scenario(
                        stringify!($scenario),
                        $crate::Dataplane::KernelRemote,
                        super::$scenario,
                    );
                }

                #[test]
                fn userspace() {
                    $crate::run_scenario(
                        stringify!($scenario),
                        $crate::Dataplane::Userspace,
                        super::$scenario,
                    );
                }
            }
        )+
    };
}
