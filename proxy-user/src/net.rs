//! Socket options and TCP state the data paths need, on raw fds (Linux only).
//!
//! The kernel path never reads the bytes it forwards, so it learns where a connection stands from
//! TCP's own counters: how much a socket received (`tcpi_bytes_received`) and how much was ever
//! queued for sending on it (`tcpi_bytes_acked` + the unacknowledged send queue).
use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd as _, BorrowedFd, RawFd},
    sync::atomic::{AtomicU32, Ordering},
};

use tokio::net::{TcpSocket, TcpStream};

use crate::config::TcpKeepalive;

/// `SO_COOKIE` (include/uapi/asm-generic/socket.h): the 64-bit id the eBPF maps use as key.
const SO_COOKIE: libc::c_int = 57;
/// `SO_SNDBUFFORCE`: like `SO_SNDBUF` but above `net.core.wmem_max`; needs CAP_NET_ADMIN.
const SO_SNDBUFFORCE: libc::c_int = 32;
/// `SIOCOUTQ` (= `TIOCOUTQ`): bytes in the send queue not yet acknowledged.
const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn getsockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    // SAFETY: T is a plain C value type; the kernel writes at most `len` bytes.
    unsafe {
        let mut value: T = mem::zeroed();
        let mut len = mem::size_of::<T>() as libc::socklen_t;
        cvt(libc::getsockopt(
            fd,
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        ))?;
        Ok(value)
    }
}

fn setsockopt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn ioctl_int(fd: RawFd, request: libc::Ioctl) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: both requests write one int.
    cvt(unsafe { libc::ioctl(fd, request, &mut value) })?;
    Ok(u64::try_from(value).unwrap_or(0))
}

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h): both 80, at `SOL_IP` and `SOL_IPV6`.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// The `SO_MARK` every socket the proxy dials carries; 0: none. Set once at start
/// ([`set_outgoing_mark`]) when a transparent frontend captures this host's own connections
/// (nat `OUTPUT`): its rules skip packets with this mark, so the proxy's own connections to an
/// intercepted port are never sent back to itself. Process-wide because it is: every dial site
/// (pools, health checks, CONNECT and transparent destinations) must carry it.
static OUTGOING_MARK: AtomicU32 = AtomicU32::new(0);

/// Sets the mark of every socket dialed from now on (0: none).
pub(crate) fn set_outgoing_mark(mark: u32) {
    OUTGOING_MARK.store(mark, Ordering::Relaxed);
}

/// Dials `addr` from a socket carrying the outgoing mark (see [`set_outgoing_mark`]). Setting
/// the mark needs CAP_NET_ADMIN: without it the dial fails rather than risk a loop.
pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let mark = OUTGOING_MARK.load(Ordering::Relaxed);
    if mark != 0 {
        setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            mark as libc::c_int,
        )
        .map_err(|e| io::Error::new(e.kind(), format!("setting SO_MARK {mark:#x}: {e}")))?;
    }
    socket.connect(addr).await
}

/// The destination a connection redirected by iptables (nat `REDIRECT`/`DNAT`) was addressed
/// to before the rewrite, from conntrack. `ipv4`: the connection is IPv4 (also when accepted
/// on a dual-stack IPv6 socket, as an IPv4-mapped peer). A connection that was not rewritten
/// answers its own local address; one conntrack does not know fails (`ENOENT`).
pub(crate) fn original_destination(fd: BorrowedFd<'_>, ipv4: bool) -> io::Result<SocketAddr> {
    let fd = fd.as_raw_fd();
    if ipv4 {
        let sa = getsockopt::<libc::sockaddr_in>(fd, libc::SOL_IP, SO_ORIGINAL_DST)?;
        let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(sa.sin_port),
        )))
    } else {
        let sa = getsockopt::<libc::sockaddr_in6>(fd, libc::SOL_IPV6, SO_ORIGINAL_DST)?;
        let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(sa.sin6_port),
            0,
            0,
        )))
    }
}

/// The socket's cookie, stable for its lifetime and unique per boot.
pub(crate) fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let fd = fd.as_raw_fd();
    getsockopt::<u64>(fd, libc::SOL_SOCKET, SO_COOKIE)
}

/// Raises the send buffer to `bytes` (forced past `wmem_max` when we have CAP_NET_ADMIN).
pub(crate) fn force_sndbuf(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt(fd, libc::SOL_SOCKET, SO_SNDBUFFORCE, bytes)
        .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes))
}

/// Disables Nagle: the proxy forwards what it gets at once, as the peers wrote it.
pub(crate) fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Turns on TCP keepalive probes and `TCP_USER_TIMEOUT` at their total, as `keepalive` says
/// (see [`TcpKeepalive`]). On a listening socket, the accepted sockets inherit both.
pub(crate) fn set_keepalive(fd: BorrowedFd<'_>, keepalive: &TcpKeepalive) -> io::Result<()> {
    let socket = socket2::SockRef::from(&fd);
    let probes = socket2::TcpKeepalive::new()
        .with_time(keepalive.idle)
        .with_interval(keepalive.interval)
        .with_retries(keepalive.count);
    socket.set_tcp_keepalive(&probes)?;
    socket.set_tcp_user_timeout(Some(keepalive.detection()))
}

/// How long ago the socket last received or sent a data segment (`tcpi_last_data_recv`,
/// `tcpi_last_data_sent`: TCP's own timestamps, kept whichever path moves the bytes - the
/// verdict, a same-host agent's `sendmsg` into the socket, or userspace). Keepalive probes and
/// bare ACKs are not data and do not count; a retransmission does.
pub(crate) fn quiet_for(fd: BorrowedFd<'_>) -> io::Result<std::time::Duration> {
    let info = tcp_info(fd.as_raw_fd())?;
    let ms = info.tcpi_last_data_recv.min(info.tcpi_last_data_sent);
    Ok(std::time::Duration::from_millis(u64::from(ms)))
}

/// Makes the next close send a reset instead of a FIN (used to propagate a reset).
pub(crate) fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a pointer to a live struct linger and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The pending socket error (`SO_ERROR`), cleared by reading it.
pub(crate) fn take_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    let fd = fd.as_raw_fd();
    let err = getsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// Shuts the socket's write side: the peer reads EOF after the queued bytes.
pub(crate) fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
}

/// What a non-consuming read found on the socket.
#[derive(Debug)]
pub(crate) enum Peek {
    /// The peer shut its write side and every byte before the FIN has been consumed.
    Eof,
    /// Bytes are waiting in the socket's own receive queue.
    Data,
    /// Nothing to read yet.
    Empty,
}

/// Looks at the receive side without consuming anything.
///
/// On a socket with a verdict attached, this is also how bytes that were queued before the
/// socket joined the map get forwarded: the sockmap `recvmsg` takes the socket lock and, finding
/// the receive queue non-empty, runs `sk_data_ready` (the verdict) over it first.
pub(crate) fn peek(fd: BorrowedFd<'_>) -> io::Result<Peek> {
    let fd = fd.as_raw_fd();
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into a live buffer.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Ok(Peek::Eof),
        n if n > 0 => Ok(Peek::Data),
        _ => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                Ok(Peek::Empty)
            } else {
                Err(err)
            }
        }
    }
}

/// TCP byte counters of one socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpBytes {
    /// Every byte the peer sent us that TCP accepted in order (read or not), not counting the
    /// FIN, which `tcpi_bytes_received` counts as one.
    pub received: u64,
    /// Every byte ever queued for sending on this socket: acknowledged plus still queued (the
    /// connecting side's acknowledged SYN counts as one; callers work from a baseline).
    pub queued_for_send: u64,
    /// The TCP state is `CLOSE`: reset, or both directions closed and acknowledged.
    pub closed: bool,
    /// Bytes queued for sending that the peer has not acknowledged (`SIOCOUTQ`; our FIN counts
    /// as one). An orderly close leaves none - `CLOSE` is reached only once our FIN is
    /// acknowledged - so a closed socket with some was aborted (reset, or timed out).
    pub unacked: u64,
}

fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
    getsockopt::<libc::tcp_info>(fd, libc::IPPROTO_TCP, libc::TCP_INFO)
}

/// Reads [`TcpBytes`]. `TCP_INFO` takes the socket's spinlock (`lock_sock_fast`), so when this
/// returns no verdict is mid-run on the socket.
///
/// `queued_for_send` is the bytes acknowledged plus the send queue (`SIOCOUTQ`: sent but not
/// acknowledged, and not sent yet). On an open socket with nothing in flight
/// (`tcpi_unacked`, the segments sent and not acknowledged, is 0) the queue is only what was
/// not sent yet, `tcpi_notsent_bytes`, and the one `TCP_INFO` snapshot gives the sum: one
/// system call, as for most sockets of a connection being set up or ended.
///
/// Otherwise the sum takes two reads (`tcpi_bytes_acked`, then `SIOCOUTQ`). An acknowledgement
/// landing between them would make the sum come out short, and a short baseline would later
/// show bytes as handed over that never were; so the sum is taken only when a second `TCP_INFO`
/// shows the same acknowledged count as the first.
pub(crate) fn tcp_bytes(fd: BorrowedFd<'_>) -> io::Result<TcpBytes> {
    let info = tcp_info(fd.as_raw_fd())?;
    if nothing_in_flight(&info) {
        return Ok(TcpBytes::from_info(
            &info,
            u64::from(info.tcpi_notsent_bytes),
        ));
    }
    tcp_bytes_read_twice(fd, info)
}

/// An open socket (`ESTABLISHED`, or `CLOSE_WAIT` after the peer's FIN) with no segment in
/// flight. Not a closed one: an aborted socket's write queue is purged (no segment in flight)
/// while `SIOCOUTQ` still counts what was never acknowledged, which says it was aborted.
fn nothing_in_flight(info: &libc::tcp_info) -> bool {
    const ESTABLISHED: u8 = 1;
    const CLOSE_WAIT: u8 = 8;
    info.tcpi_unacked == 0 && matches!(info.tcpi_state, ESTABLISHED | CLOSE_WAIT)
}

/// [`tcp_bytes`] with the queue read by `SIOCOUTQ`, from a first `TCP_INFO` snapshot.
fn tcp_bytes_read_twice(fd: BorrowedFd<'_>, mut info: libc::tcp_info) -> io::Result<TcpBytes> {
    let fd = fd.as_raw_fd();
    const ATTEMPTS: usize = 16;
    let mut outq = 0;
    for _ in 0..ATTEMPTS {
        outq = ioctl_int(fd, SIOCOUTQ)?;
        let again = tcp_info(fd)?;
        let stable = again.tcpi_bytes_acked == info.tcpi_bytes_acked;
        info = again;
        if stable {
            break;
        }
        // Still moving: the last pair (acked read after outq) errs on the short side, which is
        // the safe side for every caller but a baseline; a baseline is taken before the socket
        // carries anything, when the loop settles at once.
    }
    Ok(TcpBytes::from_info(&info, outq))
}

impl TcpBytes {
    /// From a `TCP_INFO` snapshot and the send queue's length (`outq`).
    fn from_info(info: &libc::tcp_info, outq: u64) -> Self {
        // States in which the peer's FIN has been received (include/net/tcp_states.h). CLOSE is
        // also where a reset leads; callers do not count bytes on a reset connection.
        const TIME_WAIT: u8 = 6;
        const CLOSE: u8 = 7;
        const CLOSE_WAIT: u8 = 8;
        const LAST_ACK: u8 = 9;
        const CLOSING: u8 = 11;
        let fin = matches!(
            info.tcpi_state,
            TIME_WAIT | CLOSE | CLOSE_WAIT | LAST_ACK | CLOSING
        );
        Self {
            received: info.tcpi_bytes_received.saturating_sub(u64::from(fin)),
            queued_for_send: info.tcpi_bytes_acked + outq,
            closed: info.tcpi_state == CLOSE,
            unacked: outq,
        }
    }
}

/// The socket's TCP state is `TCP_CLOSE`: reset, or both directions closed and acknowledged.
pub(crate) fn is_closed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let fd = fd.as_raw_fd();
    const TCP_CLOSE: u8 = 7;
    Ok(tcp_info(fd)?.tcpi_state == TCP_CLOSE)
}

/// Memory the socket may still queue for sending: its send buffer minus what its write queue
/// holds now, both in the kernel's own accounting (`SO_MEMINFO`: skb overhead included).
pub(crate) fn send_room(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let fd = fd.as_raw_fd();
    const SK_MEMINFO_SNDBUF: usize = 3;
    const SK_MEMINFO_WMEM_QUEUED: usize = 5;
    const SK_MEMINFO_VARS: usize = 9;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: valid fd, output buffer of the advertised size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(info[SK_MEMINFO_SNDBUF]).saturating_sub(u64::from(info[SK_MEMINFO_WMEM_QUEUED])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        net::{Shutdown, TcpListener, TcpStream},
        os::fd::AsFd,
    };

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn counters_follow_the_bytes() {
        let (mut a, mut b) = pair();
        // The connecting side's count includes its acknowledged SYN: callers take a baseline.
        let base = tcp_bytes(a.as_fd()).unwrap().queued_for_send;
        a.write_all(&[7u8; 1000]).unwrap();
        let mut buf = [0u8; 400];
        b.read_exact(&mut buf).unwrap();
        // Wait for the acknowledgement to come back on loopback.
        for _ in 0..100 {
            if tcp_bytes(a.as_fd()).unwrap().queued_for_send == base + 1000
                && tcp_bytes(b.as_fd()).unwrap().received == 1000
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(tcp_bytes(a.as_fd()).unwrap().queued_for_send, base + 1000);
        assert_eq!(tcp_bytes(b.as_fd()).unwrap().received, 1000);
    }

    #[test]
    fn one_snapshot_agrees_with_two_reads() {
        let (mut a, b) = pair();
        let base = tcp_bytes(a.as_fd()).unwrap().queued_for_send;
        // Fill the path: b never reads, so its window closes and the rest waits unsent in a's
        // queue, with nothing in flight once the last segments are acknowledged.
        a.set_nonblocking(true).unwrap();
        let mut sent = 0u64;
        let chunk = [5u8; 64 * 1024];
        loop {
            match a.write(&chunk) {
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let mut info = tcp_info(a.as_raw_fd()).unwrap();
        for _ in 0..400 {
            if nothing_in_flight(&info) && info.tcpi_notsent_bytes > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            info = tcp_info(a.as_raw_fd()).unwrap();
        }
        assert!(
            nothing_in_flight(&info) && info.tcpi_notsent_bytes > 0,
            "{} segments in flight, {} bytes unsent",
            info.tcpi_unacked,
            info.tcpi_notsent_bytes
        );
        let one = tcp_bytes(a.as_fd()).unwrap();
        let two = tcp_bytes_read_twice(a.as_fd(), tcp_info(a.as_raw_fd()).unwrap()).unwrap();
        assert_eq!(one, two);
        assert_eq!(one.queued_for_send, base + sent);
        assert!(one.unacked > 0 && !one.closed);
        drop(b);
    }

    #[test]
    fn quiet_time_restarts_with_data_not_with_keepalive() {
        let (mut a, mut b) = pair();
        let keepalive = TcpKeepalive {
            idle: std::time::Duration::from_secs(1),
            interval: std::time::Duration::from_secs(1),
            count: 3,
        };
        set_keepalive(a.as_fd(), &keepalive).unwrap();
        let socket = socket2::SockRef::from(&a);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), keepalive.idle);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(std::time::Duration::from_secs(4))
        );
        // Probes go out after 1 s and are answered; they are not data.
        std::thread::sleep(std::time::Duration::from_millis(1600));
        let quiet = quiet_for(a.as_fd()).unwrap();
        assert!(quiet >= std::time::Duration::from_millis(1400), "{quiet:?}");
        a.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        b.read_exact(&mut byte).unwrap();
        assert!(quiet_for(a.as_fd()).unwrap() < std::time::Duration::from_millis(500));
        assert!(quiet_for(b.as_fd()).unwrap() < std::time::Duration::from_millis(500));
    }

    #[test]
    fn cookies_differ_and_peek_sees_eof() {
        let (a, b) = pair();
        let (ca, cb) = (
            socket_cookie(a.as_fd()).unwrap(),
            socket_cookie(b.as_fd()).unwrap(),
        );
        assert_ne!(ca, cb);
        b.set_nonblocking(true).unwrap();
        assert!(matches!(peek(b.as_fd()).unwrap(), Peek::Empty));
        a.shutdown(Shutdown::Write).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(matches!(peek(b.as_fd()).unwrap(), Peek::Eof));
        // The FIN is not a byte.
        assert_eq!(tcp_bytes(b.as_fd()).unwrap().received, 0);
        assert!(take_error(b.as_fd()).unwrap().is_none());
    }
}
