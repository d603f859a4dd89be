//! Same-host agents: their sends go straight into the upstream socket.
//!
//! `local_sock_ops` runs (attached to the cgroup v2 root) for every TCP socket of the host; when a
//! socket finishes connecting to one of the daemon's listen addresses (`LOCAL_LISTENERS`, in the
//! daemon's network namespace) it is put in `LOCAL_SOCKS`, which runs `local_msg` on every
//! `sendmsg` of that socket, and gets a `LOCAL_STATE` entry. Once the daemon has dialed the
//! upstream for that connection it adds the upstream socket to `LOCAL_TARGETS` and opens a gate
//! (`LOCAL_GATES`); from then on `local_msg` hands each message to the upstream socket's send
//! path in the agent's own `sendmsg` - no loopback leg, no kernel worker - as long as the gate
//! allows it (see `LocalGate`). A message the gate does not allow takes the socket's own TCP path
//! to the daemon's accepted socket, where the splice verdict forwards it as for any client.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, sk_action::SK_PASS,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_map_delete_elem, bpf_skc_to_tcp_sock},
    macros::{map, sk_msg, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use proxy_common::{
    DIRECTION_UPSTREAM, EVENT_LOCAL, FlowKey, KERNEL_ERROR_LOCAL_INSERT,
    KERNEL_ERROR_LOCAL_NO_TARGET, LOCAL_CHARGE_DIV, LOCAL_CHARGE_MSG, ListenKey, LocalGate,
    LocalSend, MAX_FRONTENDS, MAX_LOCAL_LISTENERS, MAX_LOCAL_SOCKETS, RouteCounters,
};

use crate::verdict::{count_error, count_route, post};

#[map(name = "LOCAL_LISTENERS")]
static LOCAL_LISTENERS: HashMap<ListenKey, u32> = HashMap::with_max_entries(MAX_LOCAL_LISTENERS, 0);

#[map(name = "LOCAL_SOCKS")]
static LOCAL_SOCKS: SockHash<FlowKey> = SockHash::with_max_entries(MAX_LOCAL_SOCKETS, 0);

#[map(name = "LOCAL_TARGETS")]
static LOCAL_TARGETS: SockHash<FlowKey> = SockHash::with_max_entries(MAX_LOCAL_SOCKETS, 0);

#[map(name = "LOCAL_STATE")]
static LOCAL_STATE: LruHashMap<FlowKey, LocalSend> =
    LruHashMap::with_max_entries(MAX_LOCAL_SOCKETS, 0);

#[map(name = "LOCAL_GATES")]
static LOCAL_GATES: HashMap<FlowKey, LocalGate> = HashMap::with_max_entries(MAX_LOCAL_SOCKETS, 0);

#[map(name = "LOCAL_COUNTERS")]
static LOCAL_COUNTERS: PerCpuArray<RouteCounters> = PerCpuArray::with_max_entries(MAX_FRONTENDS, 0);

// Offsets of kernel-structure fields (see `proxy_common::KernelOffsets`), set by the daemon
// from the kernel's BTF before loading; read with `read_volatile` so that the compiler keeps
// the loads (the verifier knows their values: the globals are in a frozen read-only map).
#[unsafe(no_mangle)]
static OFF_SOCK_SOCKET: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SOCK_SNDTIMEO: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SOCKET_FILE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_FILE_FLAGS: u32 = 0;

const O_NONBLOCK: u32 = 0o4000;
/// `MAX_SCHEDULE_TIMEOUT`: a socket without a send timeout.
const NO_TIMEOUT: i64 = i64::MAX;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_CLOSE: u32 = 7;
const TCP_LAST_ACK: u32 = 9;

/// Ports as the context gives them: the local one in host byte order, the remote one as the
/// network-order 16 bits in the upper half of the word (so `from_be` yields host order).
#[inline(always)]
fn flow(
    family: u32,
    local: [u32; 4],
    remote: [u32; 4],
    local_port: u32,
    remote_port: u32,
) -> FlowKey {
    FlowKey {
        family,
        local_port,
        remote_port: u32::from_be(remote_port),
        _pad: 0,
        local_ip: local,
        remote_ip: remote,
    }
}

#[inline(always)]
fn v4(addr: u32) -> [u32; 4] {
    [addr, 0, 0, 0]
}

/// Reads an IPv6 address field of a program context one word at a time: the verifier only
/// accepts context loads at a constant offset from the context pointer, and a copy of the whole
/// array would be a load through a moved pointer.
#[inline(always)]
fn ip6(field: *const [u32; 4]) -> [u32; 4] {
    let word = field.cast::<u32>();
    // SAFETY: `field` points into the program's context; each read is a plain context load.
    unsafe {
        [
            core::ptr::read_volatile(word),
            core::ptr::read_volatile(word.add(1)),
            core::ptr::read_volatile(word.add(2)),
            core::ptr::read_volatile(word.add(3)),
        ]
    }
}

#[sock_ops]
fn local_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let family = ctx.family();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB {
        return 0;
    }
    let key = match family {
        AF_INET => flow(
            family,
            v4(ctx.local_ip4()),
            v4(ctx.remote_ip4()),
            ctx.local_port(),
            ctx.remote_port(),
        ),
        AF_INET6 => flow(
            family,
            // SAFETY: addresses of fields of the context.
            ip6(unsafe { &raw const (*ctx.ops).local_ip6 }),
            ip6(unsafe { &raw const (*ctx.ops).remote_ip6 }),
            ctx.local_port(),
            ctx.remote_port(),
        ),
        _ => return 0,
    };
    if op == BPF_SOCK_OPS_STATE_CB {
        let new_state = ctx.arg(1);
        if new_state == TCP_FIN_WAIT1 || new_state == TCP_LAST_ACK {
            // The agent shut its sending side: no `sendmsg` will come, so the socket leaves
            // LOCAL_SOCKS now (its state stays for the daemon). That also gives its reads back
            // to plain TCP: while in the map they go through the sockmap's receive path, which
            // returns EAGAIN to a *blocking* reader woken without data - as the ACK of this very
            // FIN does, so a blocking agent's read right after shutdown(SHUT_WR) would fail.
            // SAFETY: deleting this socket's own key; the map is repr(transparent) over its def.
            unsafe {
                bpf_map_delete_elem(
                    (&raw const LOCAL_SOCKS).cast_mut().cast(),
                    (&raw const key).cast(),
                );
            }
        }
        // args: old state, new state. The socket is going away: so does its state - unless
        // the daemon paired it (a gate exists), which reads the final counters and deletes it.
        // SAFETY: plain read of a map value.
        if new_state == TCP_CLOSE && unsafe { LOCAL_GATES.get(&key) }.is_none() {
            let _ = LOCAL_STATE.remove(&key);
        }
        return 0;
    }
    // SAFETY: the helper only reads the socket's namespace.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let mut listen = ListenKey {
        netns,
        family,
        port: key.remote_port,
        ip: key.remote_ip,
    };
    // SAFETY: plain read of a map value.
    if unsafe { LOCAL_LISTENERS.get(&listen) }.is_none() {
        listen.ip = [0; 4];
        // SAFETY: as above.
        if unsafe { LOCAL_LISTENERS.get(&listen) }.is_none() {
            return 0;
        }
    }
    // State first: the socket runs `local_msg` as soon as it is in LOCAL_SOCKS. BPF_ANY: a
    // reused 4-tuple starts afresh.
    if LOCAL_STATE
        .insert(&key, &LocalSend::default(), u64::from(BPF_ANY))
        .is_err()
    {
        count_error(KERNEL_ERROR_LOCAL_INSERT);
        return 0;
    }
    // SAFETY: the context's own socket; the helper takes a reference in the map.
    if LOCAL_SOCKS
        .update(key, unsafe { &mut *ctx.ops }, u64::from(BPF_ANY))
        .is_err()
    {
        let _ = LOCAL_STATE.remove(&key);
        count_error(KERNEL_ERROR_LOCAL_INSERT);
        return 0;
    }
    // Ask for state changes of this socket, to drop its state when it closes.
    let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
    let _ = ctx.set_cb_flags(flags as i32);
    0
}

#[sk_msg]
fn local_msg(ctx: SkMsgContext) -> u32 {
    let md = ctx.msg;
    // SAFETY (all reads below): fields of the context, loaded one at a time.
    let field = |f: *const u32| unsafe { core::ptr::read_volatile(f) };
    let family = field(unsafe { &raw const (*md).family });
    let local_port = field(unsafe { &raw const (*md).local_port });
    let remote_port = field(unsafe { &raw const (*md).remote_port });
    let key = match family {
        AF_INET => flow(
            family,
            v4(field(unsafe { &raw const (*md).local_ip4 })),
            v4(field(unsafe { &raw const (*md).remote_ip4 })),
            local_port,
            remote_port,
        ),
        AF_INET6 => flow(
            family,
            ip6(unsafe { &raw const (*md).local_ip6 }),
            ip6(unsafe { &raw const (*md).remote_ip6 }),
            local_port,
            remote_port,
        ),
        _ => return SK_PASS,
    };
    let len = u64::from(ctx.size());
    // The program runs under the sending socket's lock: one writer of its state at a time.
    let Some(state) = LOCAL_STATE.get_ptr_mut(&key) else {
        return SK_PASS;
    };
    // SAFETY: a valid map value pointer; see above.
    let state = unsafe { &mut *state };
    // SAFETY: plain struct read from a map value (written whole by userspace).
    let Some(gate) = (unsafe { LOCAL_GATES.get(&key) }).copied() else {
        state.passed += len;
        state.tcp_messages += 1;
        return SK_PASS;
    };
    let charge = len + len / LOCAL_CHARGE_DIV + LOCAL_CHARGE_MSG;
    let before = state.charged;
    if state.passed != gate.tcp_landed {
        return take_tcp_path(state, &gate, len);
    }
    // Past the room limit only a sender that blocks may go straight: it then waits in the
    // upstream socket's send path until that socket has room (the agent's own send timeout
    // would not apply there, hence none allowed). A non-blocking one would get EAGAIN from a
    // socket it does not own and wait on its own, whose space never changes.
    if before + charge > gate.limit && !sender_blocks(md) {
        return take_tcp_path(state, &gate, len);
    }
    if LOCAL_TARGETS.redirect_msg(&ctx, key, 0) != i64::from(SK_PASS) {
        count_error(KERNEL_ERROR_LOCAL_NO_TARGET);
        return take_tcp_path(state, &gate, len);
    }
    state.redirected += len;
    state.charged = before + charge;
    state.messages += 1;
    count_route(gate.frontend, DIRECTION_UPSTREAM, len);
    if gate.frontend < MAX_FRONTENDS {
        if let Some(counters) = LOCAL_COUNTERS.get_ptr_mut(gate.frontend) {
            // SAFETY: per-CPU value, this CPU is its only writer.
            unsafe {
                (*counters).bytes += len;
                (*counters).segments += 1;
            }
        }
    }
    if before < gate.mark && before + charge >= gate.mark {
        post(gate.cookie, state.charged, EVENT_LOCAL);
    }
    SK_PASS
}

/// True when the socket sending `md` blocks in `sendmsg`: its file has no `O_NONBLOCK` and the
/// socket no send timeout. False when the daemon did not find the offsets (see
/// `proxy_common::KernelOffsets`) or any read fails. A per-call `MSG_DONTWAIT` on a blocking
/// socket cannot be seen here; such a caller gets `EAGAIN` and finds its own socket writable,
/// so it retries at once until the upstream socket has room - a busy wait, never a hang.
#[inline(always)]
fn sender_blocks(md: *mut aya_ebpf::bindings::sk_msg_md) -> bool {
    // SAFETY: the globals are plain u32 statics; see their declaration.
    let (sock_socket, sock_sndtimeo, socket_file, file_flags) = unsafe {
        (
            core::ptr::read_volatile(&raw const OFF_SOCK_SOCKET),
            core::ptr::read_volatile(&raw const OFF_SOCK_SNDTIMEO),
            core::ptr::read_volatile(&raw const OFF_SOCKET_FILE),
            core::ptr::read_volatile(&raw const OFF_FILE_FLAGS),
        )
    };
    if sock_socket == 0 || sock_sndtimeo == 0 || socket_file == 0 || file_flags == 0 {
        return false;
    }
    // SAFETY: `sk` is the context's socket pointer; the helper returns a BTF-typed pointer (or
    // null), and every load through it and the pointers read from it is checked by the
    // verifier against the kernel's BTF and guarded against faults.
    unsafe {
        let sk = core::ptr::read_volatile(&raw const (*md).__bindgen_anon_3.sk);
        let tp = bpf_skc_to_tcp_sock(sk.cast()).cast::<u8>();
        if tp.is_null() {
            return false;
        }
        let timeout = core::ptr::read_volatile(tp.add(sock_sndtimeo as usize).cast::<i64>());
        let socket = core::ptr::read_volatile(tp.add(sock_socket as usize).cast::<*const u8>());
        if timeout != NO_TIMEOUT || socket.is_null() {
            return false;
        }
        let file = core::ptr::read_volatile(socket.add(socket_file as usize).cast::<*const u8>());
        if file.is_null() {
            return false;
        }
        let flags = core::ptr::read_volatile(file.add(file_flags as usize).cast::<u32>());
        flags & O_NONBLOCK == 0
    }
}

/// Leaves the message to the socket's own TCP path. If the gate was open, this closes it (the
/// passed count moves past `tcp_landed`), and userspace is told, so that it opens it again once
/// these bytes have reached the upstream socket.
#[inline(always)]
fn take_tcp_path(state: &mut LocalSend, gate: &LocalGate, len: u64) -> u32 {
    let was_open = state.passed == gate.tcp_landed;
    state.passed += len;
    state.tcp_messages += 1;
    if was_open {
        post(gate.cookie, state.charged, EVENT_LOCAL);
    }
    SK_PASS
}
