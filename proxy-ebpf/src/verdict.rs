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
    EVENT_MARK, EVENT_PASSING, EVENT_RESUMED, KERNEL_ERROR_BAD_ROUTE, KERNEL_ERROR_EVENT_LOST,
    KERNEL_ERROR_KINDS, KERNEL_ERROR_NO_CONN, KERNEL_ERROR_NO_LIMIT, KERNEL_ERROR_NO_PEER,
    MAX_FRONTENDS, MAX_SPLICED_SOCKETS, RouteCounters, SPLICE_EVENTS_BYTES, SpliceEvent,
    SpliceLimit, SpliceSide, route_index,
};

#[map(name = "SPLICE_SOCKS")]
static SPLICE_SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map(name = "SPLICE_PEERS")]
static SPLICE_PEERS: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map(name = "SPLICE_CONNS")]
static SPLICE_CONNS: HashMap<u64, SpliceSide> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

#[map(name = "SPLICE_LIMITS")]
static SPLICE_LIMITS: HashMap<u64, SpliceLimit> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

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

/// What happens to a buffer that is not redirected (the direction reached its limit, or the peer
/// is missing): it is passed to the receiving socket's own queue, where the daemon reads it. That
/// queue is charged to the socket's receive buffer, so TCP's window closes on the sender: the
/// back-pressure the redirect itself does not have. Never dropped: losing agent data silently
/// is the one outcome a proxy must not choose.
const ON_NOT_REDIRECTED: u32 = SK_PASS;

#[stream_verdict]
pub fn splice_verdict(ctx: SkBuffContext) -> u32 {
    try_splice_verdict(&ctx)
}

#[inline(always)]
fn try_splice_verdict(ctx: &SkBuffContext) -> u32 {
    let len = u64::from(ctx.len());
    if len == 0 {
        return ON_EMPTY;
    }
    // SAFETY: the helper only reads the socket behind the context.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(side) = SPLICE_CONNS.get_ptr_mut(&cookie) else {
        count_error(KERNEL_ERROR_NO_CONN);
        return redirect_or_pass(ctx, &mut cookie);
    };
    // The verdict runs under the receiving socket's lock, so one side's counters have a single
    // writer at a time.
    // SAFETY: a valid map value pointer; see above.
    let (before, passed, passing) = unsafe { ((*side).bytes, (*side).passed, (*side).passing) };
    // SAFETY: plain struct read from a map value.
    let bounds = unsafe { SPLICE_LIMITS.get(&cookie) }.copied();
    let bounds = bounds.unwrap_or_else(|| {
        count_error(KERNEL_ERROR_NO_LIMIT);
        SpliceLimit::new(u64::MAX, u64::MAX)
    });
    let after = before + len;
    let mut resumed = false;
    if passing != 0 {
        if passed != bounds.resume || after > bounds.limit {
            // Bytes may wait in this socket's queue (or on their way into it), and nothing may
            // overtake them.
            // SAFETY: as above.
            unsafe { (*side).passed = passed + len };
            return ON_NOT_REDIRECTED;
        }
        // Userspace has read every passed byte and written it to the peer: nothing waits, so
        // this buffer may go the kernel's way again, behind them in the peer's send queue.
        // SAFETY: as above.
        unsafe { (*side).passing = 0 };
        resumed = true;
    } else if after > bounds.limit {
        start_passing(side, passed, len);
        post(cookie, before, EVENT_PASSING);
        return ON_NOT_REDIRECTED;
    }
    if SPLICE_PEERS.redirect_skb(ctx, &mut cookie, 0) == i64::from(SK_DROP) {
        count_error(KERNEL_ERROR_NO_PEER);
        start_passing(side, passed, len);
        post(cookie, before, EVENT_PASSING);
        return ON_NOT_REDIRECTED;
    }
    // SAFETY: as above.
    let (frontend, direction) = unsafe {
        (*side).bytes = after;
        (*side).segments += 1;
        ((*side).frontend, (*side).direction)
    };
    count_route(frontend, direction, len);
    if resumed {
        post(cookie, after, EVENT_RESUMED);
    } else if before < bounds.mark && after >= bounds.mark {
        post(cookie, after, EVENT_MARK);
    }
    SK_PASS
}

#[inline(always)]
fn start_passing(side: *mut SpliceSide, passed: u64, len: u64) {
    // SAFETY: a valid map value pointer, written under the receiving socket's lock.
    unsafe {
        (*side).passing = 1;
        (*side).passed = passed + len;
    }
}

/// For a socket without counters (should not happen): forward without accounting.
#[inline(always)]
fn redirect_or_pass(ctx: &SkBuffContext, cookie: &mut u64) -> u32 {
    if SPLICE_PEERS.redirect_skb(ctx, cookie, 0) == i64::from(SK_DROP) {
        count_error(KERNEL_ERROR_NO_PEER);
        return ON_NOT_REDIRECTED;
    }
    SK_PASS
}

#[inline(always)]
pub(crate) fn count_route(frontend: u32, direction: u32, len: u64) {
    if frontend >= MAX_FRONTENDS {
        count_error(KERNEL_ERROR_BAD_ROUTE);
        return;
    }
    if let Some(route) = ROUTE_COUNTERS.get_ptr_mut(route_index(frontend, direction)) {
        // SAFETY: per-CPU value, this CPU is its only writer.
        unsafe {
            (*route).bytes += len;
            (*route).segments += 1;
        }
    }
}

#[inline(always)]
pub(crate) fn post(cookie: u64, bytes: u64, kind: u32) {
    let event = SpliceEvent {
        cookie,
        bytes,
        kind,
        _pad: 0,
    };
    if SPLICE_EVENTS.output::<SpliceEvent>(&event, 0).is_err() {
        count_error(KERNEL_ERROR_EVENT_LOST);
    }
}

#[inline(always)]
pub(crate) fn count_error(kind: u32) {
    if let Some(counter) = KERNEL_ERRORS.get_ptr_mut(kind) {
        // SAFETY: per-CPU value, this CPU is its only writer.
        unsafe { *counter += 1 };
    }
}
