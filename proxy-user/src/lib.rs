//! agent-proxy: a transparent proxy for monitoring-agent traffic.
//!
//! A connection is accepted by a [`proxy`] listener, checked (client CIDRs, connection limits),
//! dialed to a server of its backend's [`pool`], and then carried either by the kernel
//! ([`splice`]: an eBPF sockmap verdict moves the bytes, see [`kernel`]) or by the userspace
//! [`relay`]. A [`connect`] frontend learns each connection's destination from an HTTP CONNECT
//! request first. Both paths give the same semantics: nothing lost or reordered, half-close
//! propagated per direction, resets propagated, bounded memory under a slow reader.
pub mod address_class;
pub mod admin;
pub mod config;
pub mod conn;
pub mod connect;
pub mod daemon;
pub mod dns;
pub mod health;
pub mod kernel;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod proxy;
pub mod relay;
pub mod splice;
pub mod tls;
