//! Kernel half of agent-proxy: the splice verdict and its maps.
//!
//! A spliced connection is a pair of TCP sockets (client, upstream). Each socket is in
//! `SPLICE_SOCKS`, which runs `splice_verdict` on every buffer the socket receives, and the
//! verdict redirects that buffer to the egress of the socket's peer, found in `SPLICE_PEERS` under
//! the receiving socket's cookie. The bytes never reach userspace. The verdict also counts bytes
//! per connection side (`SPLICE_CONNS`), per frontend and direction (`ROUTE_COUNTERS`, per CPU),
//! and posts an event when a side crosses its flow-control mark (`SPLICE_LIMITS`).
//!
//! Same-host agents get a faster path still: see `local` (sock_ops + sk_msg).
//!
//! Map layouts and names live in `proxy-common`; the table of maps is in docs/architecture.md.
//!
//! Workspace-wide commands (`cargo clippy --workspace`) also compile this crate for the host;
//! there it is an empty program, and the real object is only ever built for the BPF target by
//! `proxy-user/build.rs`.

#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod local;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable loop without exit; no code path here can panic.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
