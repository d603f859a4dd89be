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
    /// An upgrade asks for the connection (`crate::handover`).
    Handover,
}

/// Where a cookie's wake-ups go.
enum Route {
    /// To the task carrying the connection; the side.
    Task(Arc<Wakes>, usize),
    /// Handed over to the successor (see `crate::handover`): its ring-buffer events are sent
    /// there.
    Forward,
}

type Routes = HashMap<u64, Route>;

/// Sends a handed-over connection's ring-buffer event to the successor.
pub type Forward = Box<dyn Fn(u64, u32) + Send + Sync>;

pub struct SpliceEvents {
    epoll: OwnedFd,
    routes: Mutex<Routes>,
    /// A copy of the ring buffer's map descriptor, for a hand-over.
    ring_fd: Mutex<Option<OwnedFd>>,
    /// The task reading the ring buffer, while this process reads it.
    ring_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where the ring-buffer events of handed-over connections go: `(cookie, event kind)`.
    forward: Mutex<Option<Forward>>,
    /// Set if the driving task ever ends (an epoll or ring-buffer error): no spliced connection
    /// gets a wake-up from then on, so `/readyz` fails and the log says so.
    stopped: AtomicBool,
    /// Ring-buffer records of a kind this build does not know (counted, never taken for
    /// another kind).
    unknown: AtomicU64,
}

impl SpliceEvents {
    /// Creates the epoll set and spawns the tasks that drive it and the ring buffer.
    pub(super) fn start(ring: RingBuf<MapData>) -> io::Result<Arc<Self>> {
        let hub = Self::start_without_ring()?;
        hub.take_ring(ring)?;
        Ok(hub)
    }

    /// Creates the epoll set and spawns its task; the ring buffer comes later
    /// ([`Self::take_ring`]): a set of maps adopted from a predecessor that still reads it.
    pub(super) fn start_without_ring() -> io::Result<Arc<Self>> {
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
            ring_fd: Mutex::new(None),
            ring_task: Mutex::new(None),
            forward: Mutex::new(None),
            stopped: AtomicBool::new(false),
            unknown: AtomicU64::new(0),
        });
        // SAFETY: the epoll fd is owned by `hub`, which the task holding this AsyncFd keeps
        // alive, so the fd stays open and the same for the AsyncFd's whole life.
        let epoll_async =
            unsafe { AsyncFd::register_with_interest(hub.epoll.as_raw_fd(), Interest::READABLE) }
                .map_err(io::Error::from)?;
        let driven = Arc::clone(&hub);
        tokio::spawn(async move {
            let error = drive_epoll(&driven, epoll_async).await;
            driven.event_task_failed(&error);
        });
        Ok(hub)
    }

    /// Starts reading the ring buffer (once per hub).
    pub(super) fn take_ring(self: &Arc<Self>, ring: RingBuf<MapData>) -> io::Result<()> {
        let copy = std::os::fd::AsFd::as_fd(&ring).try_clone_to_owned()?;
        // SAFETY: the ring buffer owns its map fd and moves into the AsyncFd with it.
        let ring_async = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(io::Error::from)?;
        *lock(&self.ring_fd) = Some(copy);
        let driven = Arc::clone(self);
        *lock(&self.ring_task) = Some(tokio::spawn(async move {
            let error = drive_ring(&driven, ring_async).await;
            driven.event_task_failed(&error);
        }));
        Ok(())
    }

    /// Stops reading the ring buffer and waits until the task has stopped, so that another
    /// process can read it from now on.
    pub async fn stop_ring(&self) {
        let task = lock(&self.ring_task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// A copy of the ring buffer's map descriptor (for a hand-over).
    pub(super) fn ring_fd(&self) -> io::Result<OwnedFd> {
        lock(&self.ring_fd)
            .as_ref()
            .ok_or_else(|| io::Error::other("the ring buffer is not read here"))?
            .try_clone()
    }

    /// Ring-buffer events of handed-over connections go to `forward` from now on (called in
    /// the task reading the ring, so in the ring's order).
    pub fn forward_to(&self, forward: Forward) {
        *lock(&self.forward) = Some(forward);
    }

    /// No more forwarding (the exchange is closing).
    pub fn stop_forwarding(&self) {
        lock(&self.forward).take();
    }

    /// The connection of these cookies was handed over: its ring-buffer events are forwarded.
    pub fn forward(&self, cookies: [u64; 2]) {
        let mut routes = self.routes();
        for cookie in cookies {
            routes.insert(cookie, Route::Forward);
        }
    }

    /// Wakes every connection watched here (an upgrade asks for them).
    pub fn wake_all(&self, wake: Wake) {
        for route in self.routes().values() {
            if let Route::Task(wakes, _) = route {
                wakes.post(wake);
            }
        }
    }

    /// A ring-buffer event the predecessor read and forwarded (see `crate::handover`).
    pub fn inject(&self, cookie: u64, event: u32) {
        self.on_ring_event(cookie, event);
    }

    fn event_task_failed(&self, error: &io::Error) {
        self.stopped.store(true, Ordering::Release);
        tracing::error!(%error, "the kernel event task stopped: spliced connections get no \
            more FIN, reset or flow-control wake-ups; restart the daemon");
    }

    fn on_ring_event(&self, cookie: u64, event: u32) {
        let wake: fn(usize) -> Wake = match event {
            proxy_common::EVENT_PASSING => Wake::Passing,
            proxy_common::EVENT_LOCAL => |_| Wake::Local,
            // A taken offer is looked at where marks are (`on_mark`).
            proxy_common::EVENT_MARK | proxy_common::EVENT_RESUMED => Wake::Mark,
            _ => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match self.routes().get(&cookie) {
            Some(Route::Task(wakes, side)) => wakes.post(wake(*side)),
            Some(Route::Forward) => {
                if let Some(forward) = lock(&self.forward).as_ref() {
                    forward(cookie, event);
                }
            }
            None => {}
        }
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
                routes.insert(*cookie, Route::Task(Arc::clone(wakes), side));
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
        if let Some(Route::Task(wakes, side)) = self.routes().get(&cookie) {
            wakes.post(wake(*side));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
            if let Some(Route::Task(..)) = routes.get(&cookie) {
                routes.remove(&cookie);
            }
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

/// Delivers FIN, reset and error wake-ups until the epoll set fails; returns that error.
async fn drive_epoll(hub: &SpliceEvents, epoll: AsyncFd<RawFd>) -> io::Error {
    const BATCH: usize = 256;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        let mut guard = match epoll.readable().await {
            Ok(guard) => guard,
            Err(e) => return e,
        };
        loop {
            // SAFETY: the buffer holds BATCH events; timeout 0 never blocks.
            let n =
                unsafe { libc::epoll_wait(*epoll.get_ref(), events.as_mut_ptr(), BATCH as i32, 0) };
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
}

/// Delivers the verdict's flow-control events until the ring buffer fails; returns that error.
async fn drive_ring(hub: &SpliceEvents, mut ring: AsyncFd<RingBuf<MapData>>) -> io::Error {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => return e,
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<SpliceEvent>() {
                // SAFETY: the verdict writes exactly one SpliceEvent per record;
                // read_unaligned copes with the ring's 8-byte alignment.
                let event: SpliceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                hub.on_ring_event(event.cookie, event.kind);
            }
        }
        guard.clear_ready();
    }
}
