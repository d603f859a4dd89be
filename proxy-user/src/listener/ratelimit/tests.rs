//! The limit per address and window, and what the table does at its bound.
use std::net::Ipv4Addr;
use std::time::Duration;

use super::*;

fn limit(connections: u32, per_ms: u64) -> RateLimit {
    RateLimit {
        connections,
        per: Duration::from_millis(per_ms),
    }
}

/// The `i`-th address of a flood.
fn source(i: u32) -> IpAddr {
    IpAddr::from(Ipv4Addr::from(0x0a00_0000 + i))
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
    // An IPv4-mapped IPv6 client is the same client.
    let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
    assert!(limiter.admit(mapped, t0));
    assert!(!limiter.admit(mapped, t0));
    assert!(
        limiter.admit(a, t0 + Duration::from_millis(1000)),
        "a new window"
    );
}

#[test]
fn memory_stays_bounded_under_a_flood_of_addresses() {
    let limiter = RateLimiter::with_capacity(limit(1, 1000), 100);
    let t0 = Instant::now();
    for i in 0..10_000 {
        assert!(limiter.admit(source(i), t0));
        assert!(limiter.tracked() <= 100);
    }
    assert_eq!(limiter.tracked(), 100);
    // Once the window has passed, the dead entries make room again.
    let later = t0 + Duration::from_secs(2);
    let fresh: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(limiter.admit(fresh, later));
    assert!(!limiter.admit(fresh, later));
    assert_eq!(limiter.tracked(), 1);
}

/// Past the bound, every address is still limited: the window that started first is
/// forgotten to make room, not the newcomer left untracked.
#[test]
fn past_the_bound_the_oldest_window_is_forgotten_and_every_address_stays_limited() {
    let limiter = RateLimiter::with_capacity(limit(1, 1000), 100);
    let t0 = Instant::now();
    for i in 0..1_000 {
        let at = t0 + Duration::from_micros(u64::from(i));
        assert!(limiter.admit(source(i), at), "first connection of {i}");
        assert!(
            !limiter.admit(source(i), at),
            "second connection of {i} in its window, with {} addresses tracked",
            limiter.tracked()
        );
    }
    assert_eq!(limiter.tracked(), 100);
    let now = t0 + Duration::from_millis(1);
    // The 100 newest are remembered and limited ...
    for i in 900..1_000 {
        assert!(!limiter.admit(source(i), now), "{i} was forgotten");
    }
    // ... and the oldest were forgotten: a new window each.
    assert!(limiter.admit(source(0), now));
    assert!(!limiter.admit(source(0), now));
    assert!(
        !limiter.admit(source(999), now),
        "{} tracked",
        limiter.tracked()
    );
    assert_eq!(limiter.tracked(), 100);
}

/// Under the bound nothing live is forgotten: a limited client stays limited whatever else
/// connects, and passed windows leave the table without it filling up.
#[test]
fn under_the_bound_windows_live_their_whole_length() {
    let limiter = RateLimiter::with_capacity(limit(2, 1000), 100);
    let t0 = Instant::now();
    let agent: IpAddr = "192.0.2.9".parse().unwrap();
    assert!(limiter.admit(agent, t0));
    assert!(limiter.admit(agent, t0));
    for i in 0..99 {
        assert!(limiter.admit(source(i), t0 + Duration::from_millis(500)));
    }
    assert_eq!(limiter.tracked(), 100);
    assert!(!limiter.admit(agent, t0 + Duration::from_millis(999)));
    // The agent's window has passed, the others' have not: only its entry goes.
    let later = t0 + Duration::from_millis(1000);
    assert!(limiter.admit(agent, later), "a new window");
    assert_eq!(limiter.tracked(), 100);
    // All passed: the table empties as connections come, without filling up first.
    let much_later = t0 + Duration::from_millis(2100);
    assert!(limiter.admit(agent, much_later));
    assert_eq!(limiter.tracked(), 1);
}

/// A caller that read the clock before another but took the lock after it still gets a
/// window, and the order of windows stays sorted (the sweep stays correct).
#[test]
fn an_earlier_clock_reading_after_a_later_one_is_counted() {
    let limiter = RateLimiter::with_capacity(limit(1, 1000), 10);
    let t0 = Instant::now();
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "192.0.2.2".parse().unwrap();
    assert!(limiter.admit(a, t0 + Duration::from_millis(10)));
    assert!(limiter.admit(b, t0));
    assert!(!limiter.admit(b, t0 + Duration::from_millis(5)));
    // b's window counts from a's start (10 ms): still live at 1005 ms, gone at 1010 ms.
    assert!(!limiter.admit(b, t0 + Duration::from_millis(1005)));
    assert!(limiter.admit(b, t0 + Duration::from_millis(1010)));
    assert_eq!(limiter.tracked(), 1, "a's window passed too");
}
