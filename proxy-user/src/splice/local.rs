//! The gate of a same-host agent (see proxy-ebpf's `local` module and `LocalGate`).
//!
//! The agent's socket sends each message either over its own TCP connection to our accepted
//! socket (where the verdict forwards it like any client's bytes) or, through the gate, straight
//! into the upstream socket's send queue inside its `sendmsg`. Two rules keep that correct:
//!
//! - **Order.** A message may go straight only when every byte that took the TCP path has already
//!   reached the upstream socket's send queue; otherwise it would overtake them. The program
//!   counts what it left to TCP (`passed`); this task opens the gate by publishing `tcp_landed`
//!   = the count it has seen arrive *and* land, and the program compares the two. Every count
//!   this task reads can only lag the truth, so a stale read keeps the gate closed - never opens
//!   it early.
//! - **Room.** A message that goes straight is queued on the upstream socket, which the agent
//!   does not own: if it were full the agent would get `EAGAIN` and then wait on its own socket,
//!   whose space never changes - a hang for edge-triggered event loops. So the gate only lets
//!   through what the upstream socket has room for now (its send buffer minus its queue, in the
//!   kernel's own accounting), charging each message more than it can cost; past the limit the
//!   messages take the TCP path, where TCP's own flow control pushes back on the agent.
use proxy_common::{FlowKey, LocalGate};

use super::{Splice, SplicePair, Step, internal, reset_end};
use crate::net;
use crate::outcome::End;

/// Send-queue memory left unused as a margin: one message in flight while the room is read
/// (at most 17 pages of 32 KiB), and the socket's own slack.
const ROOM_MARGIN: u64 = 1024 * 1024;

/// Looks at the landing counts per refresh before leaving the next one to the tick.
const QUICK_LOOKS: u32 = 8;

impl Splice<'_> {
    /// Pairs the agent socket behind the client socket with the upstream socket, if the agent
    /// is on this host and the `sock_ops` program took its socket; the gate opens when the
    /// bytes it sent so far have landed.
    pub(super) fn pair_local(&mut self, pair: &SplicePair) {
        let Some(local) = &self.kernel.local else {
            return;
        };
        match local.pair(
            &self.sides[0].stream,
            pair.upstream_fd,
            pair.client_cookie,
            pair.frontend,
        ) {
            Ok(Some(key)) => {
                self.local = Some(Box::new(super::LocalPairing {
                    key,
                    gate: LocalGate {
                        tcp_landed: u64::MAX,
                        cookie: pair.client_cookie,
                        frontend: pair.frontend,
                        ..LocalGate::default()
                    },
                    last: Default::default(),
                    recheck: true,
                    looked: 0,
                    moved: false,
                }));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "same-host agent not paired; it uses the splice");
            }
        }
    }

    /// Undoes the pairing (no message goes straight after this) and returns the bytes that went
    /// straight.
    pub(super) fn unpair_local(&mut self) -> u64 {
        let (Some(local), Some(pairing)) = (&self.kernel.local, self.local.take()) else {
            return 0;
        };
        let last = local.unpair(&pairing.key).unwrap_or(pairing.last);
        last.redirected.max(pairing.last.redirected)
    }

    /// Bytes side `i`'s direction carried straight, outside the splice: what a same-host agent
    /// sent into the upstream socket (client side only; 0 when not paired).
    pub(super) fn straight(&mut self, i: usize) -> u64 {
        if i == 0 { self.local_redirected() } else { 0 }
    }

    /// Bytes the agent sent straight to the upstream socket so far (0 when not paired).
    fn local_redirected(&mut self) -> u64 {
        let (Some(local), Some(pairing)) = (&self.kernel.local, self.local.as_mut()) else {
            return 0;
        };
        if let Some(now) = local.state(&pairing.key) {
            pairing.last = now;
        }
        pairing.last.redirected
    }

    /// Opens the gate once the TCP-path bytes have landed, and sets its limit to what the
    /// upstream socket has room for.
    pub(super) fn refresh_local(&mut self) -> Step {
        let kernel = self.kernel;
        let (Some(local), Some(pairing)) = (&kernel.local, self.local.as_ref()) else {
            return Ok(());
        };
        let key = pairing.key;
        let mut gate = pairing.gate;
        if self.sides.iter().any(|s| s.dir.pauses() > 0) {
            // A direction is (or was) carried in userspace: the gate closes for good (see the
            // module docs), so that nothing is queued on the upstream socket but by the splice
            // and the copy from here on.
            if gate.limit != 0 || gate.tcp_landed != u64::MAX {
                gate = LocalGate {
                    tcp_landed: u64::MAX,
                    mark: u64::MAX,
                    limit: 0,
                    ..gate
                };
                local.set_gate(&key, gate).map_err(internal)?;
                if let Some(pairing) = &mut self.local {
                    pairing.gate = gate;
                }
            }
            self.set_recheck(false);
            return Ok(());
        }
        let Some(before) = local.state(&key) else {
            // The agent socket closed: nothing more will come from it.
            self.set_recheck(false);
            return Ok(());
        };
        if self.sides[0].dir.fin_was_seen() {
            self.set_recheck(false);
            return Ok(());
        }
        if before.passed != gate.tcp_landed {
            let Some(landed) = self.tcp_landed(&key)? else {
                return Ok(());
            };
            gate.tcp_landed = landed;
        }
        let charged = local.state(&key).map_or(before.charged, |s| s.charged);
        let room = net::send_room(self.sides[1].fd())
            .map_err(|e| reset_end(1, &e))?
            .saturating_sub(ROOM_MARGIN);
        gate.limit = charged + room;
        // Early enough that the limit moves on before a fast sender reaches it.
        gate.mark = charged + room / 4;
        if let Some(pairing) = &mut self.local
            && gate != pairing.gate
        {
            local.set_gate(&key, gate).map_err(internal)?;
            pairing.gate = gate;
        }
        // The program may have left more bytes to TCP while the gate was being written (it was
        // closed until then): those it will not report, so look again.
        let now = local.state(&key);
        self.set_recheck(now.is_some_and(|s| s.passed != gate.tcp_landed));
        Ok(())
    }

    /// The agent socket's received count once every byte it left to the TCP path has reached
    /// the upstream socket's send queue; `None` (and a recheck) while some are still on their
    /// way, or when the agent socket is gone.
    ///
    /// The bytes in flight are normally in the kernel's redirect worker for microseconds, while
    /// a chatty agent sends a request every ~100 us on a fast host - and every message sent
    /// while the gate is closed takes the TCP path. So a look that finds bytes in flight looks
    /// again at once a few times, yielding the CPU in between (the worker may be waiting for
    /// it), before it leaves the next look to the tick (1 ms or more).
    fn tcp_landed(&mut self, key: &FlowKey) -> Result<Option<u64>, (End, String)> {
        let kernel = self.kernel;
        let Some(local) = &kernel.local else {
            return Ok(None);
        };
        let mut looks = 0;
        loop {
            let (client, upstream) = (self.sides[0].fd(), self.sides[1].fd());
            // Read in this order: what arrived, what the verdict forwarded, what reached the
            // upstream queue, then what the program did. Each read can only lag the ones after
            // it, so the equalities below hold only if nothing is in flight.
            let own = net::tcp_bytes(client).map_err(|e| reset_end(0, &e))?;
            let counted = kernel
                .registry
                .side(self.sides[0].cookie)
                .map_err(internal)?;
            let peer = net::tcp_bytes(upstream).map_err(|e| reset_end(1, &e))?;
            let Some(after) = local.state(key) else {
                self.set_recheck(false);
                return Ok(None);
            };
            let forwarded = counted.bytes + self.sides[0].copied;
            if own.received == after.passed
                && forwarded == own.received - self.sides[0].rcv_base
                && peer.queued_for_send - self.sides[1].snd_base == forwarded + after.redirected
            {
                return Ok(Some(own.received));
            }
            looks += 1;
            if looks == QUICK_LOOKS {
                if let Some(pairing) = &mut self.local {
                    // The agent is still sending: the tick must not back off (see `run`).
                    pairing.moved = after.passed != pairing.looked;
                    pairing.looked = after.passed;
                }
                self.set_recheck(true);
                return Ok(None);
            }
            std::thread::yield_now();
        }
    }

    /// True once after a look found the agent still sending through the TCP path.
    pub(super) fn take_local_moved(&mut self) -> bool {
        self.local
            .as_mut()
            .is_some_and(|pairing| std::mem::take(&mut pairing.moved))
    }

    fn set_recheck(&mut self, recheck: bool) {
        if let Some(pairing) = &mut self.local {
            pairing.recheck = recheck;
        }
    }
}
