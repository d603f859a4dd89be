//! Layout shared by the kernel programs (`proxy-ebpf`) and the daemon (`proxy-user`).
//!
//! Everything here is plain data: `#[repr(C)]`, fixed-width integers, explicit padding, host
//! byte order (both sides run on the same machine), and a size assertion beside each type so
//! that a layout change on one side cannot go unnoticed on the other.
#![no_std]

/// SOCKHASH with the `stream_verdict` program attached. Key: the socket's own cookie
/// (`SO_COOKIE`, `bpf_get_socket_cookie`); value: that socket. Membership means "the kernel
/// forwards what this socket receives". Removing a socket pauses forwarding for it.
pub const SPLICE_SOCKS: &str = "SPLICE_SOCKS";

/// SOCKHASH with no program attached. Key: the cookie of a receiving socket; value: its peer, the
/// socket whose egress gets those bytes. Filled *before* `SPLICE_SOCKS`, so that a socket never
/// runs the verdict while its peer is missing.
pub const SPLICE_PEERS: &str = "SPLICE_PEERS";

/// HASH: receiving socket cookie -> [`SpliceSide`]. Written by userspace at insert, counters
/// advanced in place by the verdict, read and deleted by userspace when the connection ends.
pub const SPLICE_CONNS: &str = "SPLICE_CONNS";

/// HASH: receiving socket cookie -> [`SpliceLimit`], the flow-control bounds of that direction.
/// Written only by userspace (whole values, which the kernel swaps atomically).
pub const SPLICE_LIMITS: &str = "SPLICE_LIMITS";

/// PERCPU_ARRAY of [`RouteCounters`], index [`route_index`]`(frontend, direction)`.
pub const ROUTE_COUNTERS: &str = "ROUTE_COUNTERS";

/// PERCPU_ARRAY of `u64`, index: one of the `KERNEL_ERROR_*` kinds.
pub const KERNEL_ERRORS: &str = "KERNEL_ERRORS";

/// RINGBUF of [`SpliceEvent`].
pub const SPLICE_EVENTS: &str = "SPLICE_EVENTS";

/// HASH: [`ListenKey`] -> frontend id. The listen addresses of frontends that may use the kernel
/// path, in the daemon's network namespace; written by userspace at start. The `sock_ops`
/// program only takes client sockets that connect to one of them.
pub const LOCAL_LISTENERS: &str = "LOCAL_LISTENERS";

/// SOCKHASH with the `sk_msg` program attached. Key: [`FlowKey`] of a same-host agent's socket
/// (as that socket sees it); value: that socket. Filled by the `sock_ops` program when the agent
/// connects to a [`LOCAL_LISTENERS`] address; a socket leaves it when it closes or when the daemon
/// ends the connection.
pub const LOCAL_SOCKS: &str = "LOCAL_SOCKS";

/// SOCKHASH with no program. Key: an agent socket's [`FlowKey`]; value: the upstream socket the
/// daemon dialed for it, where the `sk_msg` program sends the agent's bytes. Written by userspace.
pub const LOCAL_TARGETS: &str = "LOCAL_TARGETS";

/// LRU_HASH: agent socket [`FlowKey`] -> [`LocalSend`]: what the `sk_msg` program did with the
/// socket's bytes. Created by `sock_ops` at connect, advanced by `sk_msg`, deleted by `sock_ops`
/// when the socket closes (and by userspace when the connection ends).
pub const LOCAL_STATE: &str = "LOCAL_STATE";

/// HASH: agent socket [`FlowKey`] -> [`LocalGate`]: when the `sk_msg` program may send straight
/// to the upstream socket. Written only by userspace (whole values).
pub const LOCAL_GATES: &str = "LOCAL_GATES";

/// PERCPU_ARRAY of [`RouteCounters`], index: frontend id. Bytes (and messages) that same-host
/// agents sent straight into upstream sockets; also counted in [`ROUTE_COUNTERS`] upstream.
pub const LOCAL_COUNTERS: &str = "LOCAL_COUNTERS";

/// Capacity of the same-host agent maps (one entry per agent socket).
pub const MAX_LOCAL_SOCKETS: u32 = 65_536;
/// Listen addresses in [`LOCAL_LISTENERS`] (two per frontend at most).
pub const MAX_LOCAL_LISTENERS: u32 = MAX_FRONTENDS * 2;

/// Capacity of the connection maps (sockets, so two per connection).
pub const MAX_SPLICED_SOCKETS: u32 = 131_072;
/// Frontend ids are `0..MAX_FRONTENDS`.
pub const MAX_FRONTENDS: u32 = 256;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const SPLICE_EVENTS_BYTES: u32 = 256 * 1024;

/// Bytes received on the client socket, sent to the upstream.
pub const DIRECTION_UPSTREAM: u32 = 0;
/// Bytes received on the upstream socket, sent to the client.
pub const DIRECTION_DOWNSTREAM: u32 = 1;

/// A socket was in `SPLICE_SOCKS` without a `SPLICE_CONNS` entry (its bytes were forwarded but
/// not counted per connection).
pub const KERNEL_ERROR_NO_CONN: u32 = 0;
/// The peer was missing from `SPLICE_PEERS`: the bytes were passed to the receiving socket's own
/// queue (never dropped), where the daemon finds them.
pub const KERNEL_ERROR_NO_PEER: u32 = 1;
/// The event ring buffer was full; the daemon's periodic check covers for the lost event.
pub const KERNEL_ERROR_EVENT_LOST: u32 = 2;
/// A frontend id out of range; the route counters missed these bytes.
pub const KERNEL_ERROR_BAD_ROUTE: u32 = 3;
/// A socket in `SPLICE_SOCKS` had no `SPLICE_LIMITS` entry; it was forwarded without a bound.
pub const KERNEL_ERROR_NO_LIMIT: u32 = 4;
/// `sock_ops` could not put a same-host agent socket in `LOCAL_SOCKS` (map full?); its bytes
/// take the loopback path.
pub const KERNEL_ERROR_LOCAL_INSERT: u32 = 5;
/// The `sk_msg` program found a gate but no target socket; the bytes took the loopback path.
pub const KERNEL_ERROR_LOCAL_NO_TARGET: u32 = 6;
/// A buffer began before the end of the bytes the verdict had already seen on its socket (a
/// retransmitted segment that overlaps data TCP had received, queued whole; the kernel's
/// `tcp_read_skb` hands the verdict whole buffers and ignores how far the socket was read):
/// the verdict trimmed the overlap off (or dropped a buffer with nothing new), so no byte is
/// forwarded twice. Not an error: counted to show it happens.
pub const KERNEL_ERROR_OVERLAP: u32 = 7;
/// An overlapping buffer could not be trimmed (`bpf_skb_adjust_room` failed): its overlap was
/// forwarded again, a duplicate downstream.
pub const KERNEL_ERROR_OVERLAP_KEPT: u32 = 8;
/// Number of error kinds (size of `KERNEL_ERRORS`).
pub const KERNEL_ERROR_KINDS: u32 = 9;

/// [`SpliceEvent::kind`]: the redirected count crossed the mark; userspace should look at the
/// backlog and raise the limit if the peer keeps up.
pub const EVENT_MARK: u32 = 0;
/// [`SpliceEvent::kind`]: the direction reached its limit and passes from now on (see
/// [`SpliceSide::passed`]); userspace carries the rest of it.
pub const EVENT_PASSING: u32 = 1;
/// [`SpliceEvent::kind`]: a same-host agent's sends crossed the gate's mark, or the gate was open
/// and a message took the TCP path (it did not fit under the limit, or the target was missing),
/// which closes the gate until userspace sees those bytes land; userspace should look at the
/// gate. The cookie is [`LocalGate::cookie`].
pub const EVENT_LOCAL: u32 = 2;
/// [`SpliceEvent::kind`]: a passing direction took userspace's offer ([`SpliceLimit::resume`])
/// and redirects again; userspace stops carrying it and keeps its bounds as after a mark.
pub const EVENT_RESUMED: u32 = 3;

/// `sk_msg` charges each message `len + len / LOCAL_CHARGE_DIV + LOCAL_CHARGE_MSG` against the
/// gate, an upper bound of the upstream socket's send-queue memory that message takes (payload,
/// plus socket-buffer overhead per message and per 64 KiB).
pub const LOCAL_CHARGE_MSG: u64 = 1024;
pub const LOCAL_CHARGE_DIV: u64 = 32;

/// Index into `ROUTE_COUNTERS`.
#[inline(always)]
pub const fn route_index(frontend: u32, direction: u32) -> u32 {
    frontend * 2 + direction
}

/// One direction of one spliced connection, keyed by the receiving socket's cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceSide {
    /// Bytes the verdict redirected from this socket to its peer.
    pub bytes: u64,
    /// Socket buffers (skbs) redirected.
    pub segments: u64,
    /// Bytes the verdict passed to this socket's own queue instead, for userspace to carry
    /// (cumulative).
    pub passed: u64,
    /// Frontend id, below [`MAX_FRONTENDS`].
    pub frontend: u32,
    /// [`DIRECTION_UPSTREAM`] or [`DIRECTION_DOWNSTREAM`].
    pub direction: u32,
    /// 1 once the direction passes: set by the verdict at the limit, and from then on every
    /// buffer is passed, so that none overtakes bytes waiting in the socket's queue.
    pub passing: u32,
    /// The TCP sequence number just past the last byte the verdict saw on this socket (valid
    /// once `seq_known` is 1): a buffer that starts before it overlaps bytes already forwarded
    /// and is trimmed first (see [`KERNEL_ERROR_OVERLAP`]).
    pub next_seq: u32,
    /// 1 once `next_seq` holds a sequence number (set by the verdict's first buffer).
    pub seq_known: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SpliceSide>() == 48);

/// Flow-control bounds of one direction, in redirected bytes ([`SpliceSide::bytes`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceLimit {
    /// Crossing it posts an [`EVENT_MARK`].
    pub mark: u64,
    /// A buffer that would take the count past it is passed instead of redirected, and the
    /// direction passes from then on ([`EVENT_PASSING`]). This caps what waits in the peer's
    /// redirect queue, which has no back-pressure of its own.
    pub limit: u64,
    /// While the direction passes: userspace has read, and written to the peer, this many passed
    /// bytes ([`SpliceSide::passed`]). A buffer that finds `passed` equal to it (nothing passed
    /// waits anywhere) and fits under `limit` is redirected again ([`EVENT_RESUMED`]).
    /// `u64::MAX`: no offer.
    pub resume: u64,
}
const _: () = assert!(core::mem::size_of::<SpliceLimit>() == 24);

impl SpliceLimit {
    /// Bounds without an offer to resume.
    pub const fn new(mark: u64, limit: u64) -> Self {
        Self {
            mark,
            limit,
            resume: u64::MAX,
        }
    }
}

/// Per-CPU totals for one frontend and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    pub bytes: u64,
    pub segments: u64,
}
const _: () = assert!(core::mem::size_of::<RouteCounters>() == 16);

/// Posted by the verdict for flow control.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceEvent {
    /// Cookie of the receiving socket.
    pub cookie: u64,
    /// Its redirected byte count at the time.
    pub bytes: u64,
    /// [`EVENT_MARK`] or [`EVENT_PASSING`].
    pub kind: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SpliceEvent>() == 24);

/// A TCP connection as one of its sockets sees it. IPv4 addresses are in `[0]` of the arrays,
/// the rest zero; addresses in network byte order (as the kernel stores them), ports in host
/// byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    pub local_port: u32,
    pub remote_port: u32,
    pub _pad: u32,
    pub local_ip: [u32; 4],
    pub remote_ip: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);

/// A listen address in a network namespace; an unspecified address (all zero) stands for every
/// address of that family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// `SO_NETNS_COOKIE` of the namespace.
    pub netns: u64,
    pub family: u32,
    pub port: u32,
    pub ip: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<ListenKey>() == 32);

/// What `sk_msg` did with one agent socket's bytes; written only by the program (under the
/// socket's lock), read by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalSend {
    /// Bytes left to the socket's own TCP path (to the proxy's accepted socket over loopback).
    pub passed: u64,
    /// Bytes sent straight into the upstream socket.
    pub redirected: u64,
    /// Sum of the charges of those messages (see [`LOCAL_CHARGE_MSG`]).
    pub charged: u64,
    /// Messages sent straight.
    pub messages: u64,
    /// Messages left to the TCP path.
    pub tcp_messages: u64,
}
const _: () = assert!(core::mem::size_of::<LocalSend>() == 40);

/// Byte offsets of the kernel-structure fields `local_msg` reads to tell whether the sending
/// socket blocks (its file has no `O_NONBLOCK` and the socket no send timeout). The daemon
/// reads them from the running kernel's BTF (/sys/kernel/btf/vmlinux) and sets them as the
/// program's read-only globals before loading; the verifier checks every such read against
/// the same BTF. 0 (the compiled default) turns the check off: every sender is then treated
/// as non-blocking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock`, `sk_socket`.
    pub sock_socket: u32,
    /// `struct sock`, `sk_sndtimeo`.
    pub sock_sndtimeo: u32,
    /// `struct socket`, `file`.
    pub socket_file: u32,
    /// `struct file`, `f_flags`.
    pub file_flags: u32,
}

/// Names of the program globals that hold [`KernelOffsets`].
pub const GLOBAL_SOCK_SOCKET: &str = "OFF_SOCK_SOCKET";
pub const GLOBAL_SOCK_SNDTIMEO: &str = "OFF_SOCK_SNDTIMEO";
pub const GLOBAL_SOCKET_FILE: &str = "OFF_SOCKET_FILE";
pub const GLOBAL_FILE_FLAGS: &str = "OFF_FILE_FLAGS";
/// Name of the splice verdict's global holding the offset of `cb` in `struct sk_buff` (where
/// TCP keeps a buffer's sequence number, `struct tcp_skb_cb`'s first field), from the running
/// kernel's BTF; 0 (the compiled default) turns the overlap trim off.
pub const GLOBAL_SKB_CB: &str = "OFF_SKB_CB";

/// When an agent socket's messages may go straight to the upstream socket: only when every
/// byte that took the TCP path has reached the upstream socket's send queue (nothing may
/// overtake it), and while the upstream socket has room (a sender must never see `EAGAIN` from
/// a socket it does not own: it would wait on its own socket for space that never frees).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalGate {
    /// Open only while [`LocalSend::passed`] equals this: userspace saw that many TCP-path bytes
    /// reach the upstream socket.
    pub tcp_landed: u64,
    /// Crossing it (in [`LocalSend::charged`]) posts an [`EVENT_LOCAL`].
    pub mark: u64,
    /// A message whose charge would take [`LocalSend::charged`] past it takes the TCP path.
    pub limit: u64,
    /// Cookie of the proxy's accepted socket (the daemon's event routing key).
    pub cookie: u64,
    /// Frontend id, for the counters.
    pub frontend: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LocalGate>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: as below.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as below.
    unsafe impl aya::Pod for super::ListenKey {}
    // SAFETY: as below.
    unsafe impl aya::Pod for super::LocalSend {}
    // SAFETY: as below.
    unsafe impl aya::Pod for super::LocalGate {}
    // SAFETY: plain #[repr(C)] integers with no padding holes.
    unsafe impl aya::Pod for super::SpliceSide {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RouteCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpliceEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpliceLimit {}
}
