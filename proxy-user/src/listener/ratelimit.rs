//! The per-client-IP limit on new connections (`rate_limit = { connections, per }` on a
//! frontend, in every mode): at most `connections` accepted from one IP address in each window
//! of `per`.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked. An entry whose window has
//! passed is dead and is swept when the table fills up; a flood from more live addresses than
//! that within one window is not tracked past the bound (those connections are admitted and
//! still meet the connection limits), so no number of source addresses can grow the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Addresses tracked at once, ~48 bytes each: ~3 MiB at most.
pub(crate) const MAX_TRACKED: usize = 65_536;

pub(crate) use crate::config::RateLimit;

/// One address's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

/// The state of one frontend's limit.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
    capacity: usize,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self::with_capacity(limit, MAX_TRACKED)
    }

    fn with_capacity(limit: RateLimit, capacity: usize) -> Self {
        Self {
            limit,
            capacity,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `ip` at `now`; false when it is over the limit.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = ip.to_canonical();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let per = self.limit.per;
        if let Some(window) = windows.get_mut(&ip) {
            if now.duration_since(window.started) >= per {
                *window = Window {
                    started: now,
                    count: 1,
                };
                return true;
            }
            if window.count >= self.limit.connections {
                return false;
            }
            window.count += 1;
            return true;
        }
        if windows.len() >= self.capacity {
            windows.retain(|_, w| now.duration_since(w.started) < per);
            if windows.len() >= self.capacity {
                return true;
            }
        }
        windows.insert(
            ip,
            Window {
                started: now,
                count: 1,
            },
        );
        true
    }

    /// Addresses tracked now (for tests).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(connections: u32, per_ms: u64) -> RateLimit {
        RateLimit {
            connections,
            per: Duration::from_millis(per_ms),
        }
    }

    #[test]
    fn counts_per_address_and_window() {
        let limiter = RateLimiter::new(limit(2, 1000));
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limiter.admit(a, t0));
        assert!(limiter.admit(a, t0));
        assert!(!limiter.admit(a, t0 + Duration::from_millis(999)));
        assert!(limiter.admit(b, t0), "another address has its own budget");
        assert!(limiter.admit(a, t0 + Duration::from_millis(1000)));
        // An IPv4-mapped IPv6 client is the same client.
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert!(limiter.admit(mapped, t0));
        assert!(!limiter.admit(mapped, t0));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let limiter = RateLimiter::with_capacity(limit(1, 1000), 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(limiter.admit(ip, t0));
        }
        assert_eq!(limiter.tracked(), 100);
        // Once the window has passed, the dead entries make room again.
        let later = t0 + Duration::from_secs(2);
        let fresh: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.admit(fresh, later));
        assert!(!limiter.admit(fresh, later));
        assert_eq!(limiter.tracked(), 1);
    }
}
