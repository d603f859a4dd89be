//! agent-proxy: a transparent proxy for monitoring-agent traffic.
//!
//! A connection is accepted by a [`listener`], checked (client CIDRs, connection limits, rate
//! limit), and handed to its frontend's mode: [`tcp`] dials a server of its backend's [`pool`],
//! [`connect`] learns the destination from an HTTP CONNECT request first. The connection layer
//! ([`conn`]) then carries it, either by the kernel ([`splice`]: an eBPF sockmap verdict moves
//! the bytes, see [`kernel`]) or by the userspace [`relay`], and writes its one log line. The
//! layers and their dependency rule are in [`conn`]'s documentation. Both paths give the same semantics: nothing lost or reordered, half-close
//! propagated per direction, resets propagated, bounded memory under a slow reader.
//!
//! The public surface is what the `agent-proxy` binary and the kernel tests use: [`config`],
//! [`daemon`], [`redirect`], and the data path pieces the kernel tests drive directly ([`conn`],
//! [`kernel`], [`relay`], [`splice`]); every other module is private to the crate, and
//! `unreachable_pub` keeps `pub` for what is reachable.
/// The version `--version` and `/stats` show: the package's, and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("AGENT_PROXY_COMMIT"),
    ")"
);

mod address_class;
mod admin;
pub mod config;
pub mod conn;
mod connect;
mod cutoff;
pub mod daemon;
mod destination;
mod dial;
mod dns;
pub mod handover;
mod health;
mod http;
pub mod kernel;
mod listener;
mod metrics;
mod net;
mod outcome;
mod peek;
mod pool;
pub mod preset;
pub mod redirect;
pub mod relay;
mod report;
mod reverse;
pub mod splice;
mod tcp;
mod tls;
mod transparent;
mod upstream;
