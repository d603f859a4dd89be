//! Serialises heavy scenarios (1 GiB transfers, 1,000 connections, memory measurements) within
//! a test binary: run side by side on two cores they would slow each other past their time
//! limits and blur each other's memory figures. Cargo runs the test binaries one at a time.
use std::sync::{Mutex, MutexGuard};

static HEAVY: Mutex<()> = Mutex::new(());

/// Holds the machine for one heavy scenario until dropped. A scenario that panicked while
/// holding it does not block the others (the poison is ignored: the lock guards no data).
pub fn heavy() -> MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes each way of the 1 GiB scenarios: 1 GiB, or `AP_BULK_BYTES` for a quick run of an
/// unoptimised build.
pub fn bulk_len() -> u64 {
    std::env::var("AP_BULK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}
