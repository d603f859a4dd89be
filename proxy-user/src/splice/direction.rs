//! One direction of a spliced connection (the bytes one socket receives, on their way to its
//! peer) as a state machine: who carries the bytes, and how far the direction's FIN has got.
//!
//! The two are separate enums because they change independently: a FIN can be seen while
//! either the verdict or userspace carries the bytes, and the carrier can still change after
//! it (bytes the verdict passed before the FIN are carried in userspace; an offer made before
//! it can be taken). Every change of either goes through one of the methods of [`Direction`],
//! each named for the event that causes it; the rest of the splice only asks questions.

use super::flow::Offer;

/// Who carries a direction's bytes.
#[derive(Clone, Copy, Debug)]
enum Carrier {
    /// The verdict redirects them into the peer. `recheck`: the backlog was high at the last
    /// mark, so the tick looks again.
    Kernel { recheck: bool },
    /// Userspace copies them: the verdict reached its limit and passes them to the socket's own
    /// queue. The copy starts once the redirect queue has `drained`, so that the copied bytes
    /// come after every redirected one.
    Carried { drained: bool },
    /// Carried and caught up: offered back to the verdict (see `flow`). Nothing is read until
    /// it is known whether the verdict took the offer. Only a drained direction is offered.
    Offered(Offer),
    /// Userspace copies them for good: the socket could not join `SPLICE_SOCKS` (it was no
    /// longer established), so the verdict never sees them and no offer is ever made.
    Detached { drained: bool },
}

/// How far a direction's FIN has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fin {
    /// None seen yet.
    Open,
    /// Seen on the socket; it is forwarded once every byte before it has been handed over.
    Seen,
    /// Forwarded to the peer (shutdown of the peer's write side).
    Forwarded,
}

/// One direction: its carrier, its FIN, and how often it changed hands (for the log line).
#[derive(Debug)]
pub(super) struct Direction {
    carrier: Carrier,
    fin: Fin,
    /// Times this direction was handed to userspace (flow control, or a socket that could not
    /// join the map).
    pauses: u32,
    /// Times the verdict took it back from userspace.
    resumes: u32,
}

impl Direction {
    /// A direction the verdict carries, no FIN seen.
    pub(super) fn new() -> Self {
        Self {
            carrier: Carrier::Kernel { recheck: false },
            fin: Fin::Open,
            pauses: 0,
            resumes: 0,
        }
    }

    // Transitions.

    /// The socket could not join `SPLICE_SOCKS`: userspace carries the direction for good.
    pub(super) fn detach(&mut self) {
        self.carrier = Carrier::Detached { drained: false };
        self.pauses = 1;
    }

    /// The verdict reached the limit and passes the bytes: userspace carries them, once the
    /// redirect queue has drained. Returns whether this changed hands (it may already be
    /// carried).
    pub(super) fn hand_to_userspace(&mut self) -> bool {
        if !matches!(self.carrier, Carrier::Kernel { .. }) {
            return false;
        }
        self.carrier = Carrier::Carried { drained: false };
        self.pauses += 1;
        true
    }

    /// At a mark: whether the tick must look at the backlog again. Only a kernel-carried
    /// direction has marks; for any other this is a no-op.
    pub(super) fn set_mark_recheck(&mut self, recheck: bool) {
        if let Carrier::Kernel { recheck: r } = &mut self.carrier {
            *r = recheck;
        }
    }

    /// The redirect queue was seen empty while userspace carries the direction: nothing is
    /// redirected any more, so it stays empty, and copying may go on.
    pub(super) fn set_drained(&mut self) {
        match &mut self.carrier {
            Carrier::Carried { drained } | Carrier::Detached { drained } => *drained = true,
            Carrier::Kernel { .. } | Carrier::Offered(_) => {}
        }
    }

    /// Offers the verdict to carry the direction again; only a drained, carried (not detached)
    /// direction without a FIN can be offered. Returns whether the offer was recorded.
    pub(super) fn make_offer(&mut self, offer: Offer) -> bool {
        if !self.may_offer() {
            return false;
        }
        self.carrier = Carrier::Offered(offer);
        true
    }

    /// The offer is withdrawn and was not taken: userspace carries on, the queue still drained.
    pub(super) fn withdraw_offer(&mut self) {
        if let Carrier::Offered(_) = self.carrier {
            self.carrier = Carrier::Carried { drained: true };
        }
    }

    /// The verdict took the offer. If it already passes this direction anew (`passing_again`),
    /// that is a new hand-over to userspace, which must wait for the redirect queue to drain
    /// again; otherwise the verdict carries it, and the bounds are looked at again as after a
    /// mark.
    pub(super) fn offer_taken(&mut self, passing_again: bool) {
        if !matches!(self.carrier, Carrier::Offered(_)) {
            return;
        }
        self.resumes += 1;
        if passing_again {
            self.pauses += 1;
            self.carrier = Carrier::Carried { drained: false };
        } else {
            self.carrier = Carrier::Kernel { recheck: true };
        }
    }

    /// A FIN was seen on the socket.
    pub(super) fn fin_seen(&mut self) {
        if self.fin == Fin::Open {
            self.fin = Fin::Seen;
        }
    }

    /// The FIN was forwarded to the peer.
    pub(super) fn fin_forwarded(&mut self) {
        self.fin = Fin::Forwarded;
    }

    // Questions.

    /// Userspace carries the bytes (flow control, an open offer, or for good).
    pub(super) fn is_carried(&self) -> bool {
        !matches!(self.carrier, Carrier::Kernel { .. })
    }

    /// The socket is in `SPLICE_SOCKS`.
    pub(super) fn is_joined(&self) -> bool {
        !matches!(self.carrier, Carrier::Detached { .. })
    }

    /// The open offer, if any.
    pub(super) fn offer(&self) -> Option<Offer> {
        match self.carrier {
            Carrier::Offered(offer) => Some(offer),
            _ => None,
        }
    }

    /// Carried, and the redirect queue was seen empty since.
    pub(super) fn is_drained(&self) -> bool {
        match self.carrier {
            Carrier::Carried { drained } | Carrier::Detached { drained } => drained,
            Carrier::Offered(_) => true,
            Carrier::Kernel { .. } => false,
        }
    }

    /// Whether an offer may be made now (see [`Self::make_offer`]).
    pub(super) fn may_offer(&self) -> bool {
        matches!(self.carrier, Carrier::Carried { drained: true }) && self.fin == Fin::Open
    }

    /// The tick must look at the backlog again (see [`Self::set_mark_recheck`]).
    pub(super) fn mark_recheck(&self) -> bool {
        matches!(self.carrier, Carrier::Kernel { recheck: true })
    }

    /// A FIN was seen (and perhaps forwarded).
    pub(super) fn fin_was_seen(&self) -> bool {
        self.fin != Fin::Open
    }

    /// The verdict carries it and no FIN was seen: nothing of it is in userspace's hands, so
    /// the connection may move to another process (`crate::handover`).
    pub(super) fn is_steady(&self) -> bool {
        matches!(self.carrier, Carrier::Kernel { .. }) && self.fin == Fin::Open
    }

    /// A direction handed over by a predecessor in the steady state, with its counts so far.
    pub(super) fn adopted(pauses: u32, resumes: u32) -> Self {
        Self {
            pauses,
            resumes,
            ..Self::new()
        }
    }

    /// The FIN was forwarded: nothing more moves in this direction.
    pub(super) fn is_finished(&self) -> bool {
        self.fin == Fin::Forwarded
    }

    pub(super) fn pauses(&self) -> u32 {
        self.pauses
    }

    pub(super) fn resumes(&self) -> u32 {
        self.resumes
    }
}

#[cfg(test)]
mod tests {
    use proxy_common::SpliceLimit;

    use super::*;

    fn offer() -> Offer {
        Offer::new(10, SpliceLimit::new(20, 30))
    }

    #[test]
    fn a_hand_over_waits_for_the_drain_before_an_offer() {
        let mut d = Direction::new();
        assert!(!d.is_carried() && d.is_joined());
        assert!(d.hand_to_userspace());
        assert!(!d.hand_to_userspace(), "already carried");
        assert_eq!(d.pauses(), 1);
        assert!(d.is_carried() && !d.is_drained());
        assert!(!d.make_offer(offer()), "not drained: no offer");
        d.set_drained();
        assert!(d.make_offer(offer()));
        assert!(d.offer().is_some() && d.is_carried() && d.is_drained());
        d.withdraw_offer();
        assert!(d.offer().is_none() && d.is_carried() && d.is_drained());
    }

    #[test]
    fn a_taken_offer_goes_back_to_the_kernel_or_is_a_new_hand_over() {
        let mut d = Direction::new();
        d.hand_to_userspace();
        d.set_drained();
        d.make_offer(offer());
        d.offer_taken(false);
        assert!(
            !d.is_carried() && d.mark_recheck(),
            "bounds looked at as after a mark"
        );
        assert_eq!((d.pauses(), d.resumes()), (1, 1));

        d.hand_to_userspace();
        d.set_drained();
        d.make_offer(offer());
        d.offer_taken(true);
        assert!(d.is_carried() && !d.is_drained(), "must drain again");
        assert_eq!((d.pauses(), d.resumes()), (3, 2));
        d.offer_taken(false);
        assert_eq!(d.resumes(), 2, "no offer open: nothing taken");
    }

    #[test]
    fn a_detached_direction_is_never_offered_and_a_fin_stops_offers() {
        let mut d = Direction::new();
        d.detach();
        assert!(d.is_carried() && !d.is_joined());
        assert_eq!(d.pauses(), 1);
        d.set_drained();
        assert!(!d.make_offer(offer()));
        assert!(!d.hand_to_userspace());

        let mut d = Direction::new();
        d.hand_to_userspace();
        d.set_drained();
        d.fin_seen();
        assert!(!d.make_offer(offer()), "no buffer follows a FIN");
    }

    #[test]
    fn marks_matter_only_while_the_kernel_carries() {
        let mut d = Direction::new();
        d.set_mark_recheck(true);
        assert!(d.mark_recheck());
        assert!(d.hand_to_userspace());
        assert!(!d.mark_recheck(), "a hand-over drops the recheck");
        d.set_mark_recheck(true);
        assert!(!d.mark_recheck());
    }

    #[test]
    fn the_fin_moves_forward_only() {
        let mut d = Direction::new();
        assert!(!d.fin_was_seen());
        d.fin_seen();
        assert!(d.fin_was_seen() && !d.is_finished());
        d.fin_forwarded();
        d.fin_seen();
        assert!(
            d.is_finished(),
            "seeing the FIN again does not undo its forwarding"
        );
    }
}
