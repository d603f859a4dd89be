//! Handing kernel-spliced connections to the process an upgrade started (SIGUSR2; the daemon's
//! `upgrade` module starts it and owns the socket between the two).
//!
//! A spliced connection's bytes never pass through the daemon: the verdict moves them between
//! the two sockets through the maps. So a connection survives the switch of processes if the
//! maps stay referenced and the two sockets are open in the successor before the predecessor
//! closes them. Over a Unix `SOCK_SEQPACKET` socket (one message per record, descriptors as
//! `SCM_RIGHTS`), the predecessor sends, in this order:
//!
//! 1. [`Message::Maps`] for each set of maps it holds (its own, and those it adopted itself),
//!    with the set's map descriptors ([`MAP_FDS`] of them) and its frontends' names by id, for
//!    the route counters;
//! 2. [`Message::Conn`] for each connection, with its client and upstream sockets: what the
//!    splice task knew (byte bases, bytes copied, hand-overs) and what the log line needs;
//! 3. [`Message::Event`]: a flow-control event the predecessor read from a set's ring buffer
//!    for a connection it handed over (the ring has one reader at a time);
//! 4. [`Message::Ring`] once it stopped reading a set's ring buffer (at its exit): the
//!    successor reads it from then on.
//!
//! A connection is handed over only in its steady state (both directions in the kernel, no FIN
//! seen, nothing carried in userspace, not a same-host agent's); the others finish in the
//! predecessor, bounded by its `drain_timeout`. The version of this exchange is the upgrade's
//! (`AGENT_PROXY_UPGRADE_VERSION`): a successor that speaks another refuses to start.
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Map descriptors of a set, in this order: `SPLICE_SOCKS`, `SPLICE_PEERS`, `SPLICE_CONNS`,
/// `SPLICE_LIMITS`, `ROUTE_COUNTERS`, `KERNEL_ERRORS`, `SPLICE_EVENTS`.
pub const MAP_FDS: usize = 7;
/// The largest record: a connection's state is a few hundred bytes of JSON.
const MAX_RECORD: usize = 64 * 1024;
/// At most this many descriptors per record.
const MAX_FDS: usize = MAP_FDS;

/// One record of the exchange.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// The successor serves: the predecessor stops accepting and hands over.
    Ready,
    /// A set of maps ([`MAP_FDS`] descriptors), known as `set` in the records that follow.
    Maps {
        set: u32,
        /// Frontend names by the id the set's route counters use.
        names: Vec<String>,
    },
    /// A spliced connection (two descriptors: client, upstream).
    Conn(Box<ConnState>),
    /// A ring-buffer event for a handed-over connection (`proxy_common::EVENT_*`).
    Event { set: u32, cookie: u64, event: u32 },
    /// The predecessor no longer reads this set's ring buffer.
    Ring { set: u32 },
}

/// A connection as handed over: its splice state and its log line's fields.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnState {
    pub set: u32,
    pub splice: SpliceState,
    pub frontend: String,
    pub peer: SocketAddr,
    /// Milliseconds since the connection was accepted.
    pub age_ms: u64,
    pub server: String,
    pub destination: String,
    pub host: String,
    pub status: String,
    /// Bytes copied upstream in userspace before the data path took over (a CONNECT
    /// request's early bytes).
    pub early_up: u64,
}

/// What a splice task knows of its connection beyond the maps.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct SpliceState {
    /// The set's frontend id (its route counters).
    pub frontend: u32,
    pub window: u64,
    /// Per side (client, upstream): bytes read by userspace before the splice, bytes queued
    /// for sending when it started, bytes copied to the peer in userspace.
    pub rcv_base: [u64; 2],
    pub snd_base: [u64; 2],
    pub copied: [u64; 2],
    pub pauses: [u32; 2],
    pub resumes: [u32; 2],
}

/// A record and the descriptors that go with it.
pub struct Outgoing {
    pub message: Message,
    pub fds: Vec<OwnedFd>,
}

/// The predecessor's side: asked by the daemon once the successor serves (which wakes every
/// splice task: `Wake::Handover`); each sends its connection through [`Handover::send`] once
/// it is steady.
#[derive(Default)]
pub struct Handover {
    requested: AtomicBool,
    tx: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
    /// The sets of maps the successor was given: only their connections can move.
    sets: Mutex<Vec<u32>>,
}

impl Handover {
    /// From now on, steady connections of these `sets` are sent to `tx`.
    pub fn request(&self, tx: mpsc::UnboundedSender<Outgoing>, sets: Vec<u32>) {
        *self.sets.lock().unwrap_or_else(|e| e.into_inner()) = sets;
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self.requested.store(true, Ordering::Release);
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Queues a record; gives it back if the exchange is closed (the caller keeps its
    /// connection).
    pub fn send(&self, outgoing: Outgoing) -> Result<(), Outgoing> {
        if let Message::Conn(state) = &outgoing.message
            && !self
                .sets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&state.set)
        {
            return Err(outgoing);
        }
        match self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(tx) => tx.send(outgoing).map_err(|e| e.0),
            None => Err(outgoing),
        }
    }

    /// Closes the exchange: records sent from now on are refused.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Sends one record with its descriptors (blocking).
pub fn send(socket: BorrowedFd<'_>, message: &Message, fds: &[OwnedFd]) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if fds.len() > MAX_FDS || body.len() > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "hand-over record too large",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut iov = libc::iovec {
        iov_base: body.as_ptr() as *mut libc::c_void,
        iov_len: body.len(),
    };
    let mut control = vec![0u8; cmsg_space(MAX_FDS)];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        let data_len = std::mem::size_of_val(raw.as_slice());
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(raw.len()) as _;
        // SAFETY: the control buffer holds CMSG_SPACE(data_len) bytes, so the first header
        // and its data fit; CMSG_* compute offsets inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                data_len,
            );
        }
    }
    loop {
        // SAFETY: a valid socket and a msghdr whose buffers are alive.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one record (blocking); `None` at end of stream (the predecessor closed).
pub fn recv(socket: BorrowedFd<'_>) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
    let mut body = vec![0u8; MAX_RECORD];
    let mut iov = libc::iovec {
        iov_base: body.as_mut_ptr().cast(),
        iov_len: body.len(),
    };
    let mut control = vec![0u8; cmsg_space(MAX_FDS)];
    // SAFETY: as in `send`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: a valid socket and buffers alive for the call; descriptors arrive with
        // close-on-exec set.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    // The kernel installed this descriptor for us alone.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "hand-over record truncated",
        ));
    }
    let message = serde_json::from_slice(&body[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((message, fds)))
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: a pure computation.
    unsafe { libc::CMSG_SPACE((fds * size_of::<RawFd>()) as u32) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_their_descriptors() {
        let mut pair = [0; 2];
        // SAFETY: socketpair writes two descriptors into the array.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: both just created.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fds = vec![OwnedFd::from(file.try_clone().unwrap())];
        let message = Message::Event {
            set: 7,
            cookie: 42,
            event: 3,
        };
        send(a.as_fd(), &message, &fds).unwrap();
        send(a.as_fd(), &Message::Ready, &[]).unwrap();
        drop(a);
        let (got, got_fds) = recv(b.as_fd()).unwrap().unwrap();
        assert!(matches!(
            got,
            Message::Event {
                set: 7,
                cookie: 42,
                event: 3
            }
        ));
        assert_eq!(got_fds.len(), 1);
        // The same file: same inode.
        let meta = |fd: &OwnedFd| {
            std::fs::File::from(fd.try_clone().unwrap())
                .metadata()
                .unwrap()
        };
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(meta(&got_fds[0]).ino(), file.metadata().unwrap().ino());
        let (ready, none) = recv(b.as_fd()).unwrap().unwrap();
        assert!(matches!(ready, Message::Ready) && none.is_empty());
        assert!(recv(b.as_fd()).unwrap().is_none());
    }

    use std::os::fd::AsFd as _;
}
