//! [`SpliceEvents`]: wakes the task of a spliced connection when the kernel has news for it.
//!
//! Spliced sockets are not registered in tokio's reactor: its interest includes `EPOLLIN`, and a
//! spliced socket signals readable for every buffer the verdict forwards, which would cost a
//! wake-up per packet for nothing. Instead they go into one epoll set of our own with
//! `EPOLLRDHUP` only (`EPOLLERR`/`EPOLLHUP` are implied): a FIN, a reset or an error. That epoll fd,
//! and the ring buffer the verdict posts flow-control events to, are themselves pollable and
//! driven by one tokio task.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use proxy_common::SpliceEvent;
use tokio::io::{Interest, unix::AsyncFd};

use super::wakes::Wakes;

/// What woke a connection; the index is the side (0 = client socket, 1 = upstream socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// FIN, reset or error on that side's socket.
    Socket(usize),
    /// That side crossed its flow-control mark.
    Mark(usize),
    /// That side reached its limit: the verdict passes its bytes from now on.
    Passing(usize),
    /// The same-host agent's gate needs a look (the client side's cookie routes it).
    Local,
}

type Routes = HashMap<u64, (Arc<Wakes>, usize)>;

pub struct SpliceEvents {
    epoll: OwnedFd,
    routes: Mutex<Routes>,
    /// Set if the driving task ever ends (an epoll or ring-buffer error): no spliced connection
    /// gets a wake-up from then on, so `/readyz` fails and the log says so.
    stopped: AtomicBool,
    /// Ring-buffer records of a kind this build does not know (counted, never taken for
    /// another kind).
    unknown: AtomicU64,
}

impl SpliceEvents {
    /// Creates the epoll set and spawns the task that drives it and the ring buffer.
    pub(super) fn start(ring: RingBuf<MapData>) -> io::Result<Arc<Self>> {
        // SAFETY: plain syscall; the fd is owned below.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        let hub = Arc::new(Self {
            epoll,
            routes: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            unknown: AtomicU64::new(0),
        });
        // SAFETY: the epoll fd is owned by `hub`, which the task holding this AsyncFd keeps
        // alive, so the fd stays open and the same for the AsyncFd's whole life.
        let epoll_async =
            unsafe { AsyncFd::register_with_interest(hub.epoll.as_raw_fd(), Interest::READABLE) }
                .map_err(io::Error::from)?;
        // SAFETY: the ring buffer owns its map fd and moves into the AsyncFd with it.
        let ring_async = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        let driven = Arc::clone(&hub);
        tokio::spawn(async move {
            let error = drive(&driven, epoll_async, ring_async).await;
            driven.stopped.store(true, Ordering::Release);
            tracing::error!(%error, "the kernel event task stopped: spliced connections get no \
                more FIN, reset or flow-control wake-ups; restart the daemon");
        });
        Ok(hub)
    }

    /// Whether the task that delivers wake-ups has stopped (see [`SpliceEvents::stopped`]).
    pub fn has_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Ring-buffer records of an unknown kind so far.
    pub fn unknown_events(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers wake-ups for these sockets (`[(cookie, fd); 2]`, client first) to `wakes` until
    /// the guard is dropped. Drop the guard before closing the sockets.
    pub fn watch(
        self: &Arc<Self>,
        sockets: [(u64, RawFd); 2],
        wakes: &Arc<Wakes>,
    ) -> io::Result<WatchGuard> {
        {
            let mut routes = self.routes();
            for (side, (cookie, _)) in sockets.iter().enumerate() {
                routes.insert(*cookie, (Arc::clone(wakes), side));
            }
        }
        let guard = WatchGuard {
            hub: Arc::clone(self),
            sockets,
        };
        for (cookie, fd) in sockets {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: cookie,
            };
            // SAFETY: valid epoll fd, socket fd and event struct. Adding a socket that is already
            // half-closed reports it at once, so no FIN can slip between splice and watch.
            let rc = unsafe {
                libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(guard)
    }

    fn dispatch(&self, cookie: u64, wake: impl FnOnce(usize) -> Wake) {
        if let Some((wakes, side)) = self.routes().get(&cookie) {
            wakes.post(wake(*side));
        }
    }
}

/// Stops the wake-ups of one connection.
pub struct WatchGuard {
    hub: Arc<SpliceEvents>,
    sockets: [(u64, RawFd); 2],
}

impl WatchGuard {
    /// Also wakes for side `side` when it turns readable and/or writable (for a direction that
    /// userspace carries for now); both false is the default, FIN/reset/error only.
    pub fn set_interest(&self, side: usize, readable: bool, writable: bool) -> io::Result<()> {
        let (cookie, fd) = self.sockets[side];
        let mut events = libc::EPOLLRDHUP | libc::EPOLLET;
        if readable {
            events |= libc::EPOLLIN;
        }
        if writable {
            events |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: events as u32,
            u64: cookie,
        };
        // SAFETY: valid epoll fd, registered socket fd and event struct. Changing the interest
        // re-checks readiness, so a socket already readable is reported at once.
        let rc = unsafe {
            libc::epoll_ctl(
                self.hub.epoll.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                fd,
                &mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut routes = self.hub.routes();
        for (cookie, fd) in self.sockets {
            routes.remove(&cookie);
            // SAFETY: removing a (possibly not added) fd from our epoll set; errors are harmless.
            unsafe {
                libc::epoll_ctl(
                    self.hub.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                );
            }
        }
    }
}

/// Delivers wake-ups until the epoll set or the ring buffer fails; returns that error.
async fn drive(
    hub: &SpliceEvents,
    epoll: AsyncFd<RawFd>,
    mut ring: AsyncFd<RingBuf<MapData>>,
) -> io::Error {
    const BATCH: usize = 256;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        tokio::select! {
            guard = epoll.readable() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(e) => return e,
                };
                loop {
                    // SAFETY: the buffer holds BATCH events; timeout 0 never blocks.
                    let n = unsafe {
                        libc::epoll_wait(*epoll.get_ref(), events.as_mut_ptr(), BATCH as i32, 0)
                    };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return e;
                        }
                        break;
                    }
                    if n == 0 {
                        break;
                    }
                    for event in &events[..n as usize] {
                        let cookie = event.u64;
                        hub.dispatch(cookie, Wake::Socket);
                    }
                    if (n as usize) < BATCH {
                        break;
                    }
                }
                guard.clear_ready();
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(guard) => guard,
                    Err(e) => return e,
                };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() >= size_of::<SpliceEvent>() {
                        // SAFETY: the verdict writes exactly one SpliceEvent per record;
                        // read_unaligned copes with the ring's 8-byte alignment.
                        let event: SpliceEvent =
                            unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        match event.kind {
                            proxy_common::EVENT_PASSING => {
                                hub.dispatch(event.cookie, Wake::Passing);
                            }
                            proxy_common::EVENT_LOCAL => hub.dispatch(event.cookie, |_| Wake::Local),
                            // A taken offer is looked at where marks are (`on_mark`).
                            proxy_common::EVENT_MARK | proxy_common::EVENT_RESUMED => {
                                hub.dispatch(event.cookie, Wake::Mark);
                            }
                            _ => {
                                hub.unknown.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                guard.clear_ready();
            }
        }
    }
}
