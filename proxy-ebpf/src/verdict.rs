//! The splice verdict and its maps (see the crate docs).
use aya_ebpf::{
    EbpfContext as _,
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::bpf_get_socket_cookie,
    macros::{map, stream_verdict},
    maps::{HashMap, PerCpuArray, RingBuf, SockHash},
    programs::SkBuffContext,
};
use proxy_common::{
    KERNEL_ERROR_BAD_ROUTE, KERNEL_ERROR_EVENT_LOST, KERNEL_ERROR_KINDS, KERNEL_ERROR_NO_CONN,
    KERNEL_ERROR_NO_PEER, MAX_FRONTENDS, MAX_SPLICED_SOCKETS, RouteCounters, SPLICE_EVENTS_BYTES,
    SpliceEvent, SpliceSide, route_index,
};

#[map(name = "SPLICE_SOCKS")]
static SPLICE_SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map(name = "SPLICE_PEERS")]
static SPLICE_PEERS: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map(name = "SPLICE_CONNS")]
static SPLICE_CONNS: HashMap<u64, SpliceSide> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map(name = "SPLICE_LIMITS")]
static SPLICE_LIMITS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map(name = "ROUTE_COUNTERS")]
static ROUTE_COUNTERS: PerCpuArray<RouteCounters> =
    PerCpuArray::with_max_entries(MAX_FRONTENDS * 2, 0);

#[map(name = "KERNEL_ERRORS")]
static KERNEL_ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_ERROR_KINDS, 0);

#[map(name = "SPLICE_EVENTS")]
static SPLICE_EVENTS: RingBuf = RingBuf::with_byte_size(SPLICE_EVENTS_BYTES, 0);

/// What happens to a buffer with no payload: a segment that only carries the FIN reaches the
/// verdict as a zero-length buffer. Redirected, the peer's transmit worker would send zero bytes,
/// take that for a broken pipe and fail the peer socket with EPIPE. The FIN itself is already
/// recorded on the receiving socket (the daemon forwards it as a shutdown), so the empty buffer
/// carries nothing and is dropped.
const ON_EMPTY: u32 = SK_DROP;

/// What happens to a buffer whose peer is missing: it is passed to the receiving socket's own
/// queue, where the daemon reads it, rather than dropped. Losing agent data silently is the one
/// outcome a proxy must never choose; the case is counted as `KERNEL_ERROR_NO_PEER`.
const ON_MISSING_PEER: u32 = SK_PASS;

#[stream_verdict]
pub fn splice_verdict(ctx: SkBuffContext) -> u32 {
    try_splice_verdict(&ctx)
}

#[inline(always)]
fn try_splice_verdict(ctx: &SkBuffContext) -> u32 {
    if ctx.len() == 0 {
        return ON_EMPTY;
    }
    // SAFETY: the helper only reads the socket behind the context.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    count(ctx, cookie);
    let verdict = SPLICE_PEERS.redirect_skb(ctx, &mut cookie, 0);
    if verdict == i64::from(SK_DROP) {
        count_error(KERNEL_ERROR_NO_PEER);
        return ON_MISSING_PEER;
    }
    SK_PASS
}

/// Advances the per-connection and per-route counters, and posts an event when the side crosses
/// its flow-control mark. The verdict runs under the receiving socket's lock, so one side's
/// counters have a single writer at a time; the route counters are per CPU.
#[inline(always)]
fn count(ctx: &SkBuffContext, cookie: u64) {
    let len = u64::from(ctx.len());
    let Some(side) = SPLICE_CONNS.get_ptr_mut(&cookie) else {
        count_error(KERNEL_ERROR_NO_CONN);
        return;
    };
    // SAFETY: a valid map value pointer; see the locking note above.
    let (before, frontend, direction) = unsafe {
        let before = (*side).bytes;
        (*side).bytes = before + len;
        (*side).segments += 1;
        ((before), (*side).frontend, (*side).direction)
    };
    if frontend < MAX_FRONTENDS {
        if let Some(route) = ROUTE_COUNTERS.get_ptr_mut(route_index(frontend, direction)) {
            // SAFETY: per-CPU value, this CPU is its only writer.
            unsafe {
                (*route).bytes += len;
                (*route).segments += 1;
            }
        }
    } else {
        count_error(KERNEL_ERROR_BAD_ROUTE);
    }
    // SAFETY: plain u64 read from a map value.
    if let Some(&mark) = unsafe { SPLICE_LIMITS.get(&cookie) } {
        let after = before + len;
        if before < mark && after >= mark {
            let event = SpliceEvent {
                cookie,
                bytes: after,
            };
            if SPLICE_EVENTS.output::<SpliceEvent>(&event, 0).is_err() {
                count_error(KERNEL_ERROR_EVENT_LOST);
            }
        }
    }
}

#[inline(always)]
fn count_error(kind: u32) {
    if let Some(counter) = KERNEL_ERRORS.get_ptr_mut(kind) {
        // SAFETY: per-CPU value, this CPU is its only writer.
        unsafe { *counter += 1 };
    }
}
