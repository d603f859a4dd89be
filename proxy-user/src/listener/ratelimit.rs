//! The per-client-IP limit on new connections (`rate_limit = { connections, per }` on a
//! frontend, in every mode): at most `connections` accepted from one IP address in each window
//! of `per`. A window starts with an address's first connection after the previous window has
//! passed.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked at once. Windows are kept
//! in the order they started, so the ones that have passed are dropped from the front as time
//! goes by (a few at each admission, never a scan of the table). Past the bound - more
//! addresses than that with a live window at once, which takes a flood from that many sources
//! within one `per` - the address whose window started first is forgotten to make room: its
//! next connection starts a new window. Every address, new ones included, thus stays limited;
//! the flood can only shorten the windows of the oldest entries, and each address it frees
//! that way gets at most `connections` more per 65,536 fresh sources. (Not tracking new
//! addresses past the bound, as an earlier version did, left every source past it unlimited;
//! refusing them would let the flood lock out every new client.)

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Addresses tracked at once: at most ~7 MiB (131,072 hash buckets of 49 bytes - the table
/// grows past 7/8 full - and 65,536 queue entries of 17 bytes).
pub(crate) const MAX_TRACKED: usize = 65_536;

pub(crate) use crate::config::RateLimit;

/// One address's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

/// The windows of one frontend: each tracked address once in `windows` and once in `order`.
#[derive(Debug, Default)]
struct Windows {
    windows: HashMap<IpAddr, Window>,
    /// The tracked addresses by the start of their window, oldest first.
    order: VecDeque<IpAddr>,
    /// The start of the newest window. Callers read the clock before taking the lock, so a
    /// later caller can come with an earlier `now`; a window never starts before this one,
    /// which keeps `order` sorted.
    newest: Option<Instant>,
}

impl Windows {
    /// Drops the front entry: the window that started first.
    fn forget_oldest(&mut self) {
        if let Some(ip) = self.order.pop_front() {
            self.windows.remove(&ip);
        }
    }
}

/// The state of one frontend's limit.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
    capacity: usize,
    state: Mutex<Windows>,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self::with_capacity(limit, MAX_TRACKED)
    }

    fn with_capacity(limit: RateLimit, capacity: usize) -> Self {
        Self {
            limit,
            capacity,
            state: Mutex::new(Windows::default()),
        }
    }

    /// Counts a new connection from `ip` at `now`; false when it is over the limit.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let per = self.limit.per;
        // Windows that have passed, oldest first; `order` is sorted by start, so the first
        // live one ends the sweep. An address's own passed window goes too: it starts anew.
        while let Some(oldest) = state.order.front()
            && state
                .windows
                .get(oldest)
                .is_none_or(|w| now.saturating_duration_since(w.started) >= per)
        {
            state.forget_oldest();
        }
        if let Some(window) = state.windows.get_mut(&ip) {
            if window.count >= self.limit.connections {
                return false;
            }
            window.count += 1;
            return true;
        }
        if state.windows.len() >= self.capacity {
            state.forget_oldest();
        }
        let started = state.newest.map_or(now, |newest| newest.max(now));
        state.newest = Some(started);
        state.windows.insert(ip, Window { started, count: 1 });
        state.order.push_back(ip);
        true
    }

    /// Addresses tracked now, checked against the order queue (for tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(
            state.windows.len(),
            state.order.len(),
            "table and queue agree"
        );
        state.windows.len()
    }
}

#[cfg(test)]
mod tests;
