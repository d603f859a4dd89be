//! [`Wakes`]: the slot through which the event hub ([`super::SpliceEvents`]) wakes one spliced
//! connection's task.
//!
//! It replaced an unbounded channel. A kernel-path connection is idle most of its life, and the
//! channel's shared state and first block of 32 slots (allocated with the channel) cost ~1 KiB
//! per connection, where this costs one 64-byte allocation (docs/benchmarks.md, "Idle
//! connection memory"). Wake-ups of one kind for one side coalesce while they wait, which loses
//! nothing: every handler re-reads the kernel and socket state it acts on.
use std::{
    sync::atomic::{AtomicU32, Ordering},
    task::Poll,
};

use atomic_waker::AtomicWaker;

use super::events::Wake;

impl Wake {
    /// Its bit in [`Wakes`]: one per kind and side.
    fn bit(self) -> u32 {
        match self {
            Wake::Socket(side) => 1 << side,
            Wake::Mark(side) => 1 << (2 + side),
            Wake::Passing(side) => 1 << (4 + side),
            Wake::Local => 1 << 6,
            Wake::Handover => 1 << 7,
        }
    }

    /// Every wake-up, in the order [`Wakes::next`] hands them out.
    const ALL: [Wake; 8] = [
        Wake::Passing(0),
        Wake::Passing(1),
        Wake::Mark(0),
        Wake::Mark(1),
        Wake::Local,
        Wake::Socket(0),
        Wake::Socket(1),
        Wake::Handover,
    ];
}

/// The wake-ups posted for one connection and not yet taken (a bit per [`Wake`]), and the waker
/// of the task that takes them. Any number of threads post; one task takes.
#[derive(Default)]
pub struct Wakes {
    pending: AtomicU32,
    waker: AtomicWaker,
}

impl Wakes {
    /// Marks `wake` pending and wakes the taker.
    pub fn post(&self, wake: Wake) {
        self.pending.fetch_or(wake.bit(), Ordering::Release);
        self.waker.wake();
    }

    /// Waits for the next pending wake-up and takes it: flow-control hand-overs first, then
    /// marks, the same-host agent's gate, then socket events.
    pub async fn next(&self) -> Wake {
        std::future::poll_fn(|cx| {
            if let Some(wake) = self.take() {
                return Poll::Ready(wake);
            }
            self.waker.register(cx.waker());
            // A wake-up posted before the registration did not wake us: look again.
            self.take().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    fn take(&self) -> Option<Wake> {
        let pending = self.pending.load(Ordering::Acquire);
        let wake = Wake::ALL.into_iter().find(|w| pending & w.bit() != 0)?;
        // Only the taker clears bits, so the one found is still set.
        self.pending.fetch_and(!wake.bit(), Ordering::AcqRel);
        Some(wake)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[tokio::test]
    async fn hands_out_each_pending_wake_once_in_order() {
        let wakes = Wakes::default();
        for wake in [
            Wake::Socket(1),
            Wake::Mark(0),
            Wake::Socket(1),
            Wake::Passing(1),
            Wake::Socket(0),
            Wake::Local,
            Wake::Local,
        ] {
            wakes.post(wake);
        }
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(wakes.next().await);
        }
        assert_eq!(
            got,
            [
                Wake::Passing(1),
                Wake::Mark(0),
                Wake::Local,
                Wake::Socket(0),
                Wake::Socket(1)
            ]
        );
        // Nothing left: next() waits.
        let waited = tokio::time::timeout(Duration::from_millis(20), wakes.next()).await;
        assert!(waited.is_err(), "got {waited:?} from an empty slot");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_post_from_another_thread_wakes_the_waiting_task() {
        let wakes = Arc::new(Wakes::default());
        let taker = tokio::spawn({
            let wakes = Arc::clone(&wakes);
            async move {
                let mut got = Vec::new();
                for _ in 0..100 {
                    got.push(wakes.next().await);
                }
                got
            }
        });
        for i in 0..100 {
            // One at a time, so that none coalesces: the taker must see every one.
            while wakes.pending.load(Ordering::Acquire) != 0 {
                tokio::task::yield_now().await;
            }
            std::thread::scope(|s| {
                s.spawn(|| wakes.post(Wake::Mark(i % 2)));
            });
        }
        // Liveness bound only: a lost wake-up would hang here.
        let got = tokio::time::timeout(Duration::from_secs(10), taker)
            .await
            .expect("every posted wake-up woke the taker")
            .expect("taker did not panic");
        assert_eq!(got, (0..100).map(|i| Wake::Mark(i % 2)).collect::<Vec<_>>());
    }
}
