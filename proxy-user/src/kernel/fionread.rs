//! The start-up self-test of how this kernel reports readable bytes on a socket in a sockmap.
//!
//! Linux stable kernels since 6.18.14 (also 6.6.128, 6.12.75, 6.19) carry commit 929e30f9
//! "bpf, sockmap: Fix FIONREAD for sockmap": `ioctl(FIONREAD)` on a socket in a sockmap counts
//! only the psock's message queue. A same-host agent's socket is in `LOCAL_SOCKS` (for its
//! `sk_msg` program) with no verdict program, so what it receives stays in the TCP receive
//! queue and FIONREAD reads 0 while data is readable: clients that size their reads by it
//! (Java's `available()`, some C and Go libraries) read nothing or wait.
//!
//! The fix the upstream reports suggest - a no-op verdict on the map, which moves received bytes
//! into the message queue - was tried and measured here: the kernel frees that queue when the
//! socket leaves the map (the agent's `shutdown(SHUT_WR)`, the end of its connection) or is
//! reset, and an answer the agent had not read yet was lost, 20 of 20 times (see
//! docs/architecture.md, "Same-host agents and FIONREAD"). A proxy may not lose bytes to keep an
//! ioctl right, so instead the daemon asks the kernel at start, on a socket pair of its own,
//! and on a kernel that misreports keeps same-host agents on the splice (their sockets then
//! are in no sockmap) unless `local_agents = "always"`.
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;

use aya::maps::{MapData, SockHash};
use proxy_common::FlowKey;

use super::local::flow_key;

/// The probe the test's server end sends.
const PROBE: &[u8] = b"fionread?";

/// How long the probe may take to arrive on loopback.
const ARRIVAL_MS: i32 = 1000;

/// Whether `ioctl(FIONREAD)` counts the bytes queued on a TCP socket that is in `socks`.
pub(super) fn counts_queued_bytes(socks: &mut SockHash<MapData, FlowKey>) -> io::Result<bool> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .or_else(|_| TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    let key = flow_key(client.local_addr()?, client.peer_addr()?)
        .ok_or_else(|| io::Error::other("no flow key for the test socket"))?;
    socks
        .insert(key, client.as_raw_fd(), 0)
        .map_err(io::Error::other)?;
    let measured = (|| {
        server.write_all(PROBE)?;
        wait_readable(&client)?;
        fionread(&client)
    })();
    // Out of the map before the sockets close; nothing was ever read from the queue.
    let _ = socks.remove(&key);
    Ok(measured? == PROBE.len())
}

fn wait_readable(s: &TcpStream) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut p, 1, ARRIVAL_MS) } {
        1 => Ok(()),
        0 => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the probe did not arrive on loopback",
        )),
        _ => Err(io::Error::last_os_error()),
    }
}

fn fionread(s: &TcpStream) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}
