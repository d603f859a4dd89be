//! Flow control of a spliced connection: the bounds the verdict enforces, and carrying a
//! direction in userspace while the verdict passes it (see the parent module's docs).
use std::io::{self, Read as _, Write as _};

use proxy_common::SpliceLimit;

use super::{Splice, Step, internal, reset_end, reset_end_at};
use crate::{net, outcome::End};

impl Splice<'_> {
    /// Where side `i`'s direction stands.
    fn progress(&mut self, i: usize) -> Result<Progress, (End, String)> {
        let p = 1 - i;
        let side = self
            .kernel
            .registry
            .side(self.sides[i].cookie)
            .map_err(internal)?;
        let peer = match net::tcp_bytes(self.sides[p].fd()) {
            Ok(bytes) => bytes,
            Err(err) => return Err(reset_end(p, &err)),
        };
        let direct = self.straight(i);
        Ok(Progress {
            redirected: side.bytes,
            passing: side.passing != 0,
            forwarded: side.bytes + self.sides[i].copied + direct,
            handed_over: peer.queued_for_send - self.sides[p].snd_base,
            peer_closed: peer.closed,
        })
    }

    /// Side `i` crossed its flow-control mark (or is due for another look).
    pub(super) fn on_mark(&mut self, i: usize) -> Step {
        if self.sides[i].dir.offer().is_some() {
            // Also how a taken offer is reported (EVENT_RESUMED).
            self.check_offer(i)?;
        }
        let dir = &mut self.sides[i].dir;
        if dir.is_carried() || dir.fin_was_seen() {
            dir.set_mark_recheck(false);
            return Ok(());
        }
        loop {
            let now = self.progress(i)?;
            let backlog = now.backlog();
            let window = self.window_now(i, backlog)?;
            // The new limit leaves `window - backlog` of room, so the redirect queue never holds
            // more than `window` whatever the peer does. With little room left, moving the
            // bounds would only bring the next event closer: leave them, and either the peer
            // catches up (the tick looks again) or the verdict reaches the limit and hands the
            // direction to userspace.
            if backlog > window - window / 8 {
                self.sides[i].dir.set_mark_recheck(true);
                return Ok(());
            }
            self.sides[i].dir.set_mark_recheck(false);
            let bounds = Self::bounds(window, now.redirected, backlog);
            self.kernel
                .registry
                .set_limit(self.sides[i].cookie, bounds)
                .map_err(internal)?;
            // If the count passed the new mark before it was set, no event will come for it.
            let after = self.progress(i)?;
            if after.redirected < bounds.mark || after.passing {
                return Ok(());
            }
        }
    }

    /// The window side `i`'s direction may have now, with `backlog` bytes in the redirect queue.
    /// The redirect queue may not hold more than `kernel_window`, nor more than half of what
    /// the peer's send buffer has room for: the kernel's redirect worker must never find that
    /// buffer full in the middle of a buffer. When it did (a slow reader on both sides of a
    /// bulk exchange), the worker's resumed partial send failed with EFAULT, which it reports as
    /// the peer socket's error, and the connection was reset (see docs/architecture.md, "Flow
    /// control").
    fn window_now(&self, i: usize, backlog: u64) -> Result<u64, (End, String)> {
        let p = 1 - i;
        let room = net::send_room(self.sides[p].fd()).map_err(|e| reset_end(p, &e))?;
        Ok(self.window.min(room / 2 + backlog))
    }

    /// Bounds in redirected-count space that allow `window - backlog` more bytes in flight.
    fn bounds(window: u64, redirected: u64, backlog: u64) -> SpliceLimit {
        let room = window.saturating_sub(backlog);
        SpliceLimit::new(redirected + room / 2, redirected + room)
    }

    /// The verdict reached side `i`'s limit: the rest of that direction goes through userspace.
    pub(super) fn on_passing(&mut self, i: usize) -> Step {
        if self.sides[i].dir.hand_to_userspace() {
            tracing::trace!(side = i, "direction handed to userspace");
            // Closes a same-host agent's gate for good.
            self.refresh_local()?;
        }
        Ok(())
    }

    /// Carries side `i`'s bytes to its peer, without blocking, once the redirect queue has
    /// drained (so the copied bytes come after the redirected ones), until end-of-stream.
    pub(super) fn copy_tail(&mut self, i: usize) -> Step {
        let p = 1 - i;
        if self.sides[i].dir.offer().is_some() {
            // Nothing is read while the verdict may take the direction back.
            return self.check_offer(i);
        }
        if self.sides[i].carry.is_empty() && !self.sides[i].dir.is_drained() {
            // Nothing is redirected any more in this direction, so once the redirect queue is
            // seen empty it stays empty, and the copied bytes come after every redirected one.
            let now = self.progress(i)?;
            if now.handed_over < now.forwarded {
                return peer_alive(p, now.peer_closed);
            }
            self.sides[i].dir.set_drained();
        }
        loop {
            if !self.sides[i].carry.is_empty() {
                match (&self.sides[p].stream).write(self.sides[i].carry.pending()) {
                    Ok(n) => {
                        let side = &mut self.sides[i];
                        side.carry.consume(n);
                        side.copied += n as u64;
                        self.copied_metric[i].inc_by(n as u64);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(reset_end_at(p, "write", &e)),
                }
            }
            let side = &mut self.sides[i];
            match side.carry.fill_from(&side.stream) {
                Ok(0) => {
                    side.dir.fin_seen();
                    self.first_eof.get_or_insert(i);
                    return self.forward_fin(i);
                }
                Ok(_) => {}
                // Caught up: everything passed so far is in the peer's send queue.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.offer(i),
                Err(e) => return Err(reset_end_at(i, "read", &e)),
            }
        }
    }

    /// Side `i` is carried and caught up (every byte read was written, the socket's queue is
    /// empty): offer the verdict to redirect again. It takes the offer with the next buffer if
    /// by then it has passed nothing more than userspace carried, so that buffer queues behind
    /// every carried byte. Until the outcome is known, nothing is read (see [`Self::check_offer`]).
    fn offer(&mut self, i: usize) -> Step {
        // Called with the carry buffer empty and no offer open (see copy_tail); a detached
        // direction, or one whose FIN was seen, is never offered.
        if !self.sides[i].dir.may_offer() {
            return Ok(());
        }
        let now = self.progress(i)?;
        let backlog = now.backlog();
        let window = self.window_now(i, backlog)?;
        if !now.passing || window.saturating_sub(backlog) < self.window / 4 {
            // The peer's send buffer is still full of what it was given: the verdict would
            // reach its limit again within a few buffers. Carrying on costs nothing extra, and
            // the next read that finds the queue empty (every tick while carried) asks again.
            return Ok(());
        }
        let bounds = SpliceLimit {
            resume: self.sides[i].copied,
            ..Self::bounds(window, now.redirected, backlog)
        };
        self.kernel
            .registry
            .set_limit(self.sides[i].cookie, bounds)
            .map_err(internal)?;
        self.sides[i]
            .dir
            .make_offer(Offer::new(now.redirected, bounds));
        Ok(())
    }

    /// What became of side `i`'s offer: taken (the kernel carries the direction again, or
    /// already passes it anew, a new hand-over), overtaken (more bytes were passed first, so it
    /// can never be taken: carry on), or still open. An open offer is withdrawn when the socket
    /// shows something to read (end-of-stream, which no buffer will follow), since reading
    /// while the verdict may still take the offer would let its next redirect overtake.
    pub(super) fn check_offer(&mut self, i: usize) -> Step {
        let Some(offer) = self.sides[i].dir.offer() else {
            return Ok(());
        };
        let cookie = self.sides[i].cookie;
        let counted = self.kernel.registry.side(cookie).map_err(internal)?;
        if counted.bytes != offer.redirected {
            return self.offer_taken(i, counted.passing != 0);
        }
        if counted.passed == offer.bounds.resume
            && let Ok(net::Peek::Empty) = net::peek(self.sides[i].fd())
        {
            return Ok(());
        }
        // Withdraw the offer, then look once more: the verdict may have taken it meanwhile.
        let bounds = SpliceLimit {
            resume: u64::MAX,
            ..offer.bounds
        };
        self.kernel
            .registry
            .set_limit(cookie, bounds)
            .map_err(internal)?;
        let counted = self.kernel.registry.side(cookie).map_err(internal)?;
        if counted.bytes != offer.redirected {
            return self.offer_taken(i, counted.passing != 0);
        }
        self.sides[i].dir.withdraw_offer();
        self.copy_tail(i)
    }

    fn offer_taken(&mut self, i: usize, passing_again: bool) -> Step {
        tracing::trace!(side = i, passing_again, "direction back in the kernel");
        // Passing again: whatever was redirected must reach the peer before the next carried
        // byte, so the copy waits for a drain again. Otherwise the offer's bounds hold as after
        // a mark; `on_mark` (now, when it is the caller, or on the next tick) looks at them.
        self.sides[i].dir.offer_taken(passing_again);
        Ok(())
    }
}

/// Bytes are on their way to side `p`'s send queue: fine while `p` is open, a reset if it is
/// closed (`closed`: reset by its peer), since they can never be delivered - nothing else
/// would end the wait, and the connection would stay with its map entries and fds.
pub(super) fn peer_alive(p: usize, closed: bool) -> Step {
    if closed {
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        return Err(reset_end_at(
            p,
            "closed with bytes on their way to it",
            &reset,
        ));
    }
    Ok(())
}

/// An offer to the verdict to redirect a carried direction again ([`SpliceLimit::resume`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Offer {
    /// The verdict's redirected count when the offer was made: it moves once the offer is taken.
    redirected: u64,
    /// The bounds written with it; `resume` is the bytes carried (all that was passed) then.
    bounds: SpliceLimit,
}

impl Offer {
    pub(super) fn new(redirected: u64, bounds: SpliceLimit) -> Self {
        Self { redirected, bounds }
    }
}

/// The bytes of a carried direction between a read and the write that passes them on: one
/// buffer, allocated when the direction is first carried (most connections never are), read
/// into and written from in place - no zeroing, no shifting.
#[derive(Default)]
pub(super) struct Carry {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Carry {
    /// Large enough that a bulk stream moves in few system calls.
    const SIZE: usize = 256 * 1024;

    pub(super) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// One read into the empty buffer; `Ok(0)` is end-of-stream.
    fn fill_from(&mut self, mut from: &std::net::TcpStream) -> io::Result<usize> {
        debug_assert!(self.is_empty());
        if self.buf.is_empty() {
            self.buf = vec![0; Self::SIZE].into_boxed_slice();
        }
        let n = from.read(&mut self.buf)?;
        self.start = 0;
        self.end = n;
        Ok(n)
    }
}

/// One direction's counters, see [`Splice::progress`].
struct Progress {
    /// Bytes the verdict redirected.
    redirected: u64,
    /// The verdict passes this direction's bytes now.
    passing: bool,
    /// Redirected plus copied in userspace.
    forwarded: u64,
    /// Bytes that reached the peer's send queue since the splice started.
    handed_over: u64,
    /// The peer's TCP state is `CLOSE`.
    peer_closed: bool,
}

impl Progress {
    /// Bytes waiting in the peer's redirect queue.
    fn backlog(&self) -> u64 {
        self.forwarded.saturating_sub(self.handed_over)
    }
}
