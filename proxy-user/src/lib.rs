//! agent-proxy: a transparent proxy for monitoring-agent traffic.
//!
//! A connection is accepted by a [`listener`], checked (client CIDRs, connection limits, rate
//! limit), and handed to its frontend's mode: [`tcp`] dials a server of its backend's [`pool`],
//! [`connect`] learns the destination from an HTTP CONNECT request first. The connection layer
//! ([`conn`]) then carries it, either by the kernel ([`splice`]: an eBPF sockmap verdict moves
//! the bytes, see [`kernel`]) or by the userspace [`relay`], and writes its one log line. The
//! layers and their dependency rule are in [`conn`]'s documentation. Both paths give the same semantics: nothing lost or reordered, half-close
//! propagated per direction, resets propagated, bounded memory under a slow reader.
pub mod address_class;
pub mod admin;
pub mod config;
pub mod conn;
pub mod connect;
pub mod daemon;
pub mod destination;
pub mod dial;
pub mod dns;
pub mod health;
pub mod kernel;
pub mod listener;
pub mod metrics;
pub mod net;
pub mod outcome;
pub mod peek;
pub mod pool;
pub mod redirect;
pub mod relay;
pub mod report;
pub mod splice;
pub mod tcp;
pub mod tls;
pub mod transparent;
