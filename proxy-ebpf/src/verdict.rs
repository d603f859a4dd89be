//! The splice verdict and its maps (see the crate docs).
use aya_ebpf::{
    EbpfContext as _,
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::{
        bpf_get_socket_cookie,
        generated::{bpf_probe_read_kernel, bpf_skb_adjust_room},
    },
    macros::{map, stream_verdict},
    maps::{HashMap, PerCpuArray, RingBuf, SockHash},
    programs::SkBuffContext,
};
use proxy_common::{
    EVENT_MARK, EVENT_PASSING, EVENT_RESUMED, KERNEL_ERROR_BAD_ROUTE, KERNEL_ERROR_EVENT_LOST,
    KERNEL_ERROR_KINDS, KERNEL_ERROR_NO_CONN, KERNEL_ERROR_NO_LIMIT, KERNEL_ERROR_NO_PEER,
    KERNEL_ERROR_OVERLAP, KERNEL_ERROR_OVERLAP_KEPT, MAX_FRONTENDS, MAX_SPLICED_SOCKETS,
    RouteCounters, SPLICE_EVENTS_BYTES, SpliceEvent, SpliceLimit, SpliceSide, route_index,
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

/// Offset of `cb` in `struct sk_buff`, from the running kernel's BTF (set by the daemon before
/// loading, `proxy_common::GLOBAL_SKB_CB`): TCP keeps a received buffer's sequence number there
/// (`struct tcp_skb_cb`, first field). 0: unknown, overlaps are not trimmed.
#[unsafe(no_mangle)]
static OFF_SKB_CB: u32 = 0;

/// `bpf_skb_adjust_room` on an `sk_skb` buffer removes at most this many bytes per call.
const TRIM_STEP: u32 = 0xfff;
/// Calls per buffer: an overlap up to 64 x 4095 bytes (more than a 64 KiB GRO buffer) is trimmed.
const TRIM_CALLS: u32 = 64;

#[stream_verdict]
fn splice_verdict(ctx: SkBuffContext) -> u32 {
    try_splice_verdict(&ctx)
}

#[inline(always)]
fn try_splice_verdict(ctx: &SkBuffContext) -> u32 {
    let mut len = u64::from(ctx.len());
    if len == 0 {
        return ON_EMPTY;
    }
    // SAFETY: the helper only reads the socket behind the context.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(side) = SPLICE_CONNS.get_ptr_mut(&cookie) else {
        count_error(KERNEL_ERROR_NO_CONN);
        return redirect_or_pass(ctx, &mut cookie);
    };
    match trim_overlap(ctx, side, len) {
        Some(0) => return ON_SEEN,
        Some(left) => len = left,
        None => {}
    }
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

/// What happens to a buffer whose every byte the verdict has already seen (forwarded or passed):
/// nothing new in it, so it is dropped. (TCP itself never queues such a buffer; see
/// [`trim_overlap`].)
const ON_SEEN: u32 = SK_DROP;

/// Removes from the front of the buffer the bytes the verdict already saw on this socket, and
/// returns how many bytes are left (0: nothing new, drop it), or `None` when nothing was
/// trimmed.
///
/// TCP queues a retransmitted segment that partly overlaps bytes it already received whole,
/// with its own sequence number (`tcp_data_queue`, "partial packet", and the out-of-order
/// queue's segments when they are moved in order): a normal reader skips the overlap by the
/// socket's read position (`copied_seq`). The sockmap verdict path does not: `tcp_read_skb`
/// unlinks each queued buffer and hands it to the verdict whole, so without this trim the
/// overlap is forwarded (or passed to userspace) a second time - the duplicated bytes the
/// kernel path delivered under retransmissions (docs/architecture.md, "Duplicated bytes").
/// The verdict runs under the receiving socket's lock, so `next_seq` has one writer at a time.
#[inline(always)]
fn trim_overlap(ctx: &SkBuffContext, side: *mut SpliceSide, len: u64) -> Option<u64> {
    // SAFETY: a plain u32 global; the verifier knows its value (frozen read-only map).
    let cb = unsafe { core::ptr::read_volatile(&OFF_SKB_CB) };
    if cb == 0 {
        return None;
    }
    let mut seq: u32 = 0;
    // SAFETY: reads 4 bytes of the kernel's `struct sk_buff` behind the context (its `cb`,
    // where TCP keeps the buffer's sequence number); the helper faults safely on a bad address.
    let read = unsafe {
        bpf_probe_read_kernel(
            (&mut seq as *mut u32).cast(),
            4,
            ctx.as_ptr().cast::<u8>().add(cb as usize).cast(),
        )
    };
    if read != 0 {
        return None;
    }
    // The verdict sees a buffer's payload only (a FIN-only buffer never gets here).
    let end = seq.wrapping_add(len as u32);
    // SAFETY: a valid map value pointer, written under the receiving socket's lock.
    let (known, next) = unsafe { ((*side).seq_known, (*side).next_seq) };
    let overlap = next.wrapping_sub(seq) as i32;
    if known == 0 || overlap <= 0 {
        // SAFETY: as above.
        unsafe {
            (*side).next_seq = end;
            (*side).seq_known = 1;
        }
        return None;
    }
    count_error(KERNEL_ERROR_OVERLAP);
    let overlap = overlap as u32;
    if u64::from(overlap) >= len {
        return Some(0);
    }
    let mut left = overlap;
    for _ in 0..TRIM_CALLS {
        if left == 0 {
            break;
        }
        let step = if left > TRIM_STEP { TRIM_STEP } else { left };
        // SAFETY: the helper shrinks the buffer behind the context from its front.
        if unsafe { bpf_skb_adjust_room(ctx.as_ptr().cast(), -(step as i32), 0, 0) } != 0 {
            break;
        }
        left -= step;
    }
    if left != 0 {
        count_error(KERNEL_ERROR_OVERLAP_KEPT);
    }
    // SAFETY: as above.
    unsafe { (*side).next_seq = end };
    Some(u64::from(ctx.len()))
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
