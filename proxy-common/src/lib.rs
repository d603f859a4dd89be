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
/// Number of error kinds (size of `KERNEL_ERRORS`).
pub const KERNEL_ERROR_KINDS: u32 = 5;

/// [`SpliceEvent::kind`]: the redirected count crossed the mark; userspace should look at the
/// backlog and raise the limit if the peer keeps up.
pub const EVENT_MARK: u32 = 0;
/// [`SpliceEvent::kind`]: the direction reached its limit and passes from now on (see
/// [`SpliceSide::passed`]); userspace carries the rest of it.
pub const EVENT_PASSING: u32 = 1;

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
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SpliceSide>() == 40);

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
}
const _: () = assert!(core::mem::size_of::<SpliceLimit>() == 16);

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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with no padding holes.
    unsafe impl aya::Pod for super::SpliceSide {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RouteCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpliceEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpliceLimit {}
}
