//! [`SpliceRegistry`]: the one owner of the splice maps.
//!
//! Order matters, and this type is where it is kept:
//! - insert: counters and flow-control marks first, then `SPLICE_PEERS` (both directions), and
//!   only then `SPLICE_SOCKS` - so a socket never runs the verdict while its peer is missing;
//! - remove: `SPLICE_SOCKS` first (verdicts stop), then the counters are read, then the rest.
//!   Removing a socket from its last map drops its psock and any bytes still queued in it, so the
//!   caller removes a pair only once both directions are drained (or the connection is reset).
//!
//! The lock that keeps those orders is on every connection's hot path (inserts, removes,
//! flow-control bounds). The `/metrics` and `/stats` scrape never takes it. The entries of the
//! connection maps are counted as this type inserts and removes them ([`EntryCount`]): walking
//! every key instead cost some 80,000 syscalls at 10,000 connections, on the 2 cores that also
//! carry the traffic. Only the per-CPU counters the verdict writes are read from the kernel,
//! through a second set of handles ([`Scrape`]) under a lock of their own.
use std::{
    os::fd::{AsFd as _, RawFd},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, SockHash};
use proxy_common::{
    DIRECTION_DOWNSTREAM, DIRECTION_UPSTREAM, KERNEL_ERROR_KINDS, RouteCounters, SpliceLimit,
    SpliceSide,
};

use super::KernelError;

pub(super) struct Maps {
    pub socks: SockHash<MapData, u64>,
    pub peers: SockHash<MapData, u64>,
    pub conns: HashMap<MapData, u64, SpliceSide>,
    pub limits: HashMap<MapData, u64, SpliceLimit>,
    pub routes: PerCpuArray<MapData, RouteCounters>,
    pub errors: PerCpuArray<MapData, u64>,
}

/// One connection's two sockets, as the maps know them.
#[derive(Clone, Copy, Debug)]
pub struct SplicePair {
    pub client_cookie: u64,
    pub client_fd: RawFd,
    pub upstream_cookie: u64,
    pub upstream_fd: RawFd,
    /// Frontend id (index into the route counters).
    pub frontend: u32,
    /// First flow-control bounds of each direction.
    pub first_limit: SpliceLimit,
}

/// Totals summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct KernelTotals {
    /// `(frontend id, direction, counters)` for every route that moved bytes.
    pub routes: Vec<(u32, u32, RouteCounters)>,
    /// Indexed by the `KERNEL_ERROR_*` kinds.
    pub errors: Vec<u64>,
}

pub struct SpliceRegistry {
    // Map operations are single syscalls; one short lock keeps the insert/remove orders atomic
    // with respect to each other.
    maps: Mutex<Maps>,
    /// The scrape's own handles (see the module doc).
    scrape: Mutex<Scrape>,
    /// Entries of each connection map, updated under `maps`' lock, read without it.
    socks: EntryCount,
    peers: EntryCount,
    conns: EntryCount,
    limits: EntryCount,
}

/// The entries the daemon holds in one map, counted as it inserts and removes them.
///
/// An entry counts from a successful insert until a removal finds it gone - removed then, or
/// already: a sockhash drops a socket's entry by itself when the socket closes. An entry that
/// could not be removed stays counted: it is still in the map.
#[derive(Debug, Default)]
pub(super) struct EntryCount(AtomicU64);

impl EntryCount {
    pub(super) fn added(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts the removal of an entry this count holds; `result` is the map's answer.
    pub(super) fn removed(&self, result: Result<(), MapError>) {
        if ignore_missing(result).is_ok() {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Handles to the per-CPU counter maps of [`Maps`], for the scrape.
struct Scrape {
    routes: PerCpuArray<MapData, RouteCounters>,
    errors: PerCpuArray<MapData, u64>,
}

impl Scrape {
    fn new(maps: &Maps) -> Result<Self, KernelError> {
        Ok(Self {
            routes: reopen(
                IterableMap::map(&maps.routes).fd().as_fd(),
                Map::PerCpuArray,
            )?,
            errors: reopen(
                IterableMap::map(&maps.errors).fd().as_fd(),
                Map::PerCpuArray,
            )?,
        })
    }
}

/// A second handle to the map behind `fd` (a duplicate of the fd), typed like the first.
pub(super) fn reopen<T>(
    fd: std::os::fd::BorrowedFd<'_>,
    kind: fn(MapData) -> Map,
) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let owned = fd.try_clone_to_owned().map_err(KernelError::Socket)?;
    let data = MapData::from_fd(owned).map_err(map_err("reopen map"))?;
    T::try_from(kind(data)).map_err(map_err("reopen map"))
}

pub(super) fn map_err(op: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { op, source }
}

pub(super) fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl SpliceRegistry {
    pub(super) fn new(maps: Maps) -> Result<Self, KernelError> {
        Ok(Self {
            scrape: Mutex::new(Scrape::new(&maps)?),
            maps: Mutex::new(maps),
            socks: EntryCount::default(),
            peers: EntryCount::default(),
            conns: EntryCount::default(),
            limits: EntryCount::default(),
        })
    }

    fn scrape(&self) -> std::sync::MutexGuard<'_, Scrape> {
        self.scrape.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave the kernel maps half-updated in a way the
        // next caller could not handle, so a poisoned lock is still usable.
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts forwarding a connection in the kernel: everything but the client socket's
    /// `SPLICE_SOCKS` entry, which the caller adds with [`Self::join`]. On error nothing of the
    /// pair is left in the maps and no byte has moved, so the caller can relay it in userspace.
    pub fn insert(&self, pair: &SplicePair) -> Result<(), KernelError> {
        let mut maps = self.lock();
        let result = Self::insert_locked(&mut maps, pair);
        match result {
            // Counted once whole: a failed insert is undone, and its undo counts nothing.
            Ok(()) => {
                self.conns.added(2);
                self.limits.added(2);
                self.peers.added(2);
                self.socks.added(1);
            }
            Err(_) => {
                let _ = Self::remove_locked(&mut maps, pair);
            }
        }
        result
    }

    fn insert_locked(maps: &mut Maps, pair: &SplicePair) -> Result<(), KernelError> {
        let sides = [
            (pair.client_cookie, DIRECTION_UPSTREAM),
            (pair.upstream_cookie, DIRECTION_DOWNSTREAM),
        ];
        for (cookie, direction) in sides {
            let side = SpliceSide {
                frontend: pair.frontend,
                direction,
                ..SpliceSide::default()
            };
            maps.conns
                .insert(cookie, side, 0)
                .map_err(map_err("insert conn"))?;
            maps.limits
                .insert(cookie, pair.first_limit, 0)
                .map_err(map_err("insert limit"))?;
        }
        maps.peers
            .insert(pair.client_cookie, pair.upstream_fd, 0)
            .map_err(map_err("insert peer"))?;
        maps.peers
            .insert(pair.upstream_cookie, pair.client_fd, 0)
            .map_err(map_err("insert peer"))?;
        // Only the upstream socket here: from this point bytes may move, so a failure must no
        // longer undo the pair. The upstream goes first because in request/response protocols
        // it says nothing until the client's request reaches it; so it cannot have closed yet
        // when it joins, while a client that sent its request and closed at once is common. The
        // client socket joins with `join`, and if the kernel refuses it (it is no longer
        // established) the caller copies that direction in userspace.
        maps.socks
            .insert(pair.upstream_cookie, pair.upstream_fd, 0)
            .map_err(map_err("insert sock"))?;
        Ok(())
    }

    /// Removes the pair and returns its final counters: (client side = bytes sent upstream,
    /// upstream side = bytes sent downstream). `client_joined`: [`Self::join`] took the client
    /// socket (else its `SPLICE_SOCKS` entry was never there to count).
    pub fn remove(&self, pair: &SplicePair, client_joined: bool) -> (SpliceSide, SpliceSide) {
        let mut maps = self.lock();
        let removed = Self::remove_locked(&mut maps, pair);
        let [client_sock, upstream_sock] = removed.socks;
        if client_joined {
            self.socks.removed(client_sock);
        }
        self.socks.removed(upstream_sock);
        for result in removed.conns {
            self.conns.removed(result);
        }
        for result in removed.limits {
            self.limits.removed(result);
        }
        for result in removed.peers {
            self.peers.removed(result);
        }
        removed.sides
    }

    fn remove_locked(maps: &mut Maps, pair: &SplicePair) -> Removed {
        let cookies = [pair.client_cookie, pair.upstream_cookie];
        let socks = cookies.map(|cookie| maps.socks.remove(&cookie));
        let sides = cookies.map(|cookie| maps.conns.get(&cookie, 0).unwrap_or_default());
        let conns = cookies.map(|cookie| maps.conns.remove(&cookie));
        let limits = cookies.map(|cookie| maps.limits.remove(&cookie));
        let peers = cookies.map(|cookie| maps.peers.remove(&cookie));
        Removed {
            socks,
            conns,
            limits,
            peers,
            sides: (sides[0], sides[1]),
        }
    }

    /// Adds a socket to `SPLICE_SOCKS` (the client socket of a pair, after [`Self::insert`]).
    pub fn join(&self, cookie: u64, fd: RawFd) -> Result<(), KernelError> {
        self.lock()
            .socks
            .insert(cookie, fd, 0)
            .map_err(map_err("join"))?;
        self.socks.added(1);
        Ok(())
    }

    /// The live counters of one side.
    pub fn side(&self, cookie: u64) -> Result<SpliceSide, KernelError> {
        self.lock()
            .conns
            .get(&cookie, 0)
            .map_err(map_err("read conn"))
    }

    /// Sets a direction's flow-control bounds.
    pub fn set_limit(&self, cookie: u64, bounds: SpliceLimit) -> Result<(), KernelError> {
        self.lock()
            .limits
            .insert(cookie, bounds, 0)
            .map_err(map_err("set limit"))
    }

    /// Route counters and error counts, summed over CPUs.
    pub fn totals(&self) -> KernelTotals {
        let maps = self.scrape();
        let mut totals = KernelTotals::default();
        for (index, values) in maps.routes.iter().enumerate() {
            let Ok(values) = values else { continue };
            let sum = super::sum_cpus(&values);
            if sum.segments > 0 {
                let index = index as u32;
                totals.routes.push((index / 2, index % 2, sum));
            }
        }
        totals.errors = (0..KERNEL_ERROR_KINDS)
            .map(|kind| {
                maps.errors
                    .get(&kind, 0)
                    .map(|values| values.iter().sum())
                    .unwrap_or(0)
            })
            .collect();
        totals
    }

    /// Copies of the map descriptors, in `crate::handover::MAP_FDS` order (the ring buffer is
    /// the events' and comes last).
    pub(super) fn map_fds(&self) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
        let maps = self.lock();
        [
            IterableMap::map(&maps.socks).fd().as_fd(),
            IterableMap::map(&maps.peers).fd().as_fd(),
            IterableMap::map(&maps.conns).fd().as_fd(),
            IterableMap::map(&maps.limits).fd().as_fd(),
            IterableMap::map(&maps.routes).fd().as_fd(),
            IterableMap::map(&maps.errors).fd().as_fd(),
        ]
        .into_iter()
        .map(|fd| fd.try_clone_to_owned())
        .collect()
    }

    /// A connection handed over from a predecessor joined this (adopted) set: its entries
    /// are in the maps already (both sockets, in the steady state), and count from now on.
    pub fn count_adopted(&self) {
        self.socks.added(2);
        self.peers.added(2);
        self.conns.added(2);
        self.limits.added(2);
    }

    /// A connection handed over to the successor: its entries stay in the maps, but are no
    /// longer this process's.
    pub fn count_handed_over(&self) {
        for count in [&self.socks, &self.peers, &self.conns, &self.limits] {
            count.0.fetch_sub(2, Ordering::Relaxed);
        }
    }

    /// `(map name, entries)` of each connection map, as counted (see `EntryCount`).
    pub fn entries(&self) -> [(&'static str, u64); 4] {
        [
            (proxy_common::SPLICE_SOCKS, self.socks.get()),
            (proxy_common::SPLICE_PEERS, self.peers.get()),
            (proxy_common::SPLICE_CONNS, self.conns.get()),
            (proxy_common::SPLICE_LIMITS, self.limits.get()),
        ]
    }
}

/// The maps' answers to removing a pair's entries (client socket first), and its last
/// counters.
struct Removed {
    socks: [Result<(), MapError>; 2],
    conns: [Result<(), MapError>; 2],
    limits: [Result<(), MapError>; 2],
    peers: [Result<(), MapError>; 2],
    sides: (SpliceSide, SpliceSide),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall_error(errno: i32) -> MapError {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn an_entry_counts_until_a_removal_finds_it_gone() {
        let count = EntryCount::default();
        count.added(3);
        count.removed(Ok(()));
        // Gone already: a sockhash dropped the entry of a socket that closed.
        count.removed(Err(syscall_error(libc::ENOENT)));
        assert_eq!(count.get(), 1);
        // Not removed: still in the map, still counted.
        count.removed(Err(syscall_error(libc::EINVAL)));
        assert_eq!(count.get(), 1);
        count.removed(Err(MapError::KeyNotFound));
        assert_eq!(count.get(), 0);
    }
}
