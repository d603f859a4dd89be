//! What ends a carried connection from outside its two peers: the drain's abort at shutdown,
//! and idleness (a frontend's `idle_timeout`). Both data paths take a [`Cutoff`].
//!
//! Idleness is read from TCP itself rather than counted per byte: each socket keeps the time it
//! last received and last sent a data segment (`tcpi_last_data_recv`, `tcpi_last_data_sent`),
//! whichever path moved the bytes - the kernel's verdict, a same-host agent's `sendmsg` into the
//! upstream socket, or the userspace relay. An [`IdleTimer`] sleeps until the timeout could first
//! expire, reads both sockets' timestamps (two `getsockopt` calls), and either reports the
//! connection idle or sleeps again until the new earliest expiry. A busy connection costs one
//! wake-up per timeout period, and no work at all per byte.
use std::{
    future::Future as _,
    os::fd::BorrowedFd,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::net;

/// TCP keeps the times of the last data segments in jiffies (1 to 10 ms, by the kernel's
/// `HZ`), so the quiet time it reports can exceed the time that really passed by up to one
/// jiffy: a connection was closed 998 ms after its last byte against a 1-s timeout (CI,
/// `timeouts::idle_closed_busy_stays`). Counting one jiffy of the longest kind less never
/// closes a connection before its timeout, and at most 10 ms after it.
const JIFFY: Duration = Duration::from_millis(10);

/// What may end a carried connection besides its peers.
#[derive(Clone, Copy)]
pub struct Cutoff<'a> {
    /// Cancelled when the drain timeout expires at shutdown.
    pub abort: &'a CancellationToken,
    /// No byte in either direction for this long closes the connection; `None`: never.
    pub idle: Option<Duration>,
    /// An upgrade asks kernel-spliced connections to move to the new process
    /// ([`crate::handover`]); `None` in tests and where nothing can be handed over.
    pub handover: Option<&'a crate::handover::Handover>,
}

impl Cutoff<'_> {
    /// The idle timer of one connection (nothing is armed before its first poll).
    pub(crate) fn idle_timer(&self) -> IdleTimer {
        IdleTimer {
            timeout: self.idle,
            sleep: None,
        }
    }

    /// The `detail` of a connection closed for idleness.
    pub(crate) fn idle_detail(&self) -> String {
        let timeout = self.idle.unwrap_or_default();
        format!(
            "no byte in either direction for {}",
            humantime::format_duration(timeout)
        )
    }
}

/// The idle timeout of one connection (see the module doc).
///
/// The sleep is boxed: a connection's future keeps its largest state for its whole life, and
/// an idle connection should hold no more than a pointer for its timer.
pub(crate) struct IdleTimer {
    timeout: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    /// `Ready` once neither socket of `fds` has received or sent a data segment for the
    /// timeout; never, without one. A socket whose state cannot be read counts as busy: the
    /// data path sees its error itself.
    pub(crate) fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        fds: [BorrowedFd<'_>; 2],
    ) -> Poll<()> {
        let Some(timeout) = self.timeout else {
            return Poll::Pending;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        loop {
            ready!(sleep.as_mut().poll(cx));
            let quiet = fds
                .iter()
                .map(|&fd| net::quiet_for(fd).unwrap_or_default())
                .min()
                .unwrap_or_default()
                .saturating_sub(JIFFY);
            if quiet >= timeout {
                return Poll::Ready(());
            }
            // The earliest moment the connection can have been quiet for the whole timeout.
            let wait = (timeout - quiet).max(Duration::from_millis(1));
            sleep.as_mut().reset(Instant::now() + wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        os::fd::AsFd as _,
    };

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    /// A connection that keeps moving a byte every 100 ms outlives a 300 ms timeout; once it
    /// stops, the timer fires about one timeout after the last byte.
    #[tokio::test]
    async fn fires_only_after_a_quiet_timeout() {
        let (mut a, mut b) = pair();
        let abort = CancellationToken::new();
        let cutoff = Cutoff {
            abort: &abort,
            idle: Some(Duration::from_millis(300)),
            handover: None,
        };
        let mut timer = cutoff.idle_timer();
        let start = std::time::Instant::now();
        let mut last_byte = start;
        let mut fired = false;
        while !fired {
            let elapsed = start.elapsed();
            if elapsed < Duration::from_millis(1000) {
                a.write_all(b"x").unwrap();
                b.read_exact(&mut [0u8; 1]).unwrap();
                last_byte = std::time::Instant::now();
            }
            assert!(elapsed < Duration::from_secs(5), "never fired");
            let poll = std::future::poll_fn(|cx| {
                Poll::Ready(timer.poll_expired(cx, [a.as_fd(), b.as_fd()]))
            })
            .await;
            fired = poll.is_ready();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let quiet = last_byte.elapsed();
        assert!(
            start.elapsed() >= Duration::from_millis(1200),
            "fired while bytes moved"
        );
        assert!(
            quiet >= Duration::from_millis(300) && quiet < Duration::from_millis(900),
            "fired {quiet:?} after the last byte"
        );
    }

    #[tokio::test]
    async fn no_timeout_never_fires() {
        let (a, b) = pair();
        let abort = CancellationToken::new();
        let cutoff = Cutoff {
            abort: &abort,
            idle: None,
            handover: None,
        };
        let mut timer = cutoff.idle_timer();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let poll =
            std::future::poll_fn(|cx| Poll::Ready(timer.poll_expired(cx, [a.as_fd(), b.as_fd()])))
                .await;
        assert!(poll.is_pending());
        assert!(timer.sleep.is_none());
    }
}
