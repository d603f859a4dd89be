//! The kernel path for one connection: put the socket pair in the maps, then only watch.
//!
//! After [`start`] inserts the pair, the verdict forwards every byte; this task sleeps until the
//! kernel reports a FIN, a reset or a flow-control event ([`Wake`]). It reads bytes only when flow
//! control hands it a direction (below).
//!
//! - **Queued bytes.** Bytes that reached a socket before it joined the map sit in its receive
//!   queue. Peeking right after the insert makes the sockmap `recvmsg` run the verdict over them
//!   (see [`net::peek`]), so a client that sent its request on connect is served at once.
//! - **Half-close.** A FIN on one socket is forwarded as `shutdown(SHUT_WR)` on the other, but
//!   only once every byte before it has left the kernel's redirect queue for the peer's send
//!   queue: the verdict's byte count must equal what TCP received, and what was queued on the
//!   peer must equal the verdict's count. Shutting earlier would put the FIN ahead of bytes.
//! - **Flow control.** Redirects into the peer have no back-pressure in the kernel; a peer that
//!   stops reading would let them pile up without bound. Each direction has a limit in
//!   `SPLICE_LIMITS`: the verdict never lets the redirected count pass it, and posts an event at
//!   a mark before it. At the mark the task looks at the backlog (redirected minus handed to the
//!   peer's send queue) and, while the peer keeps up, moves both forward. If the peer falls
//!   behind, the verdict reaches the limit and from then on passes that direction's bytes to the
//!   receiving socket's own queue - charged to its receive buffer, so TCP's window closes on the
//!   sender - and the task carries that direction in userspace, after the redirect queue has
//!   drained. Once it has caught up it offers the direction back (`SpliceLimit::resume`, see
//!   `flow`), and reads nothing until it knows whether the verdict took it. No map entry changes
//!   while bytes flow: detaching a verdict from a socket that is receiving can lose a buffer in
//!   the kernel.
//! - **Same-host agents** (`local`): when the client is an agent on this host whose socket the
//!   `sock_ops` program took, its `sendmsg` can hand bytes straight to the upstream socket. The
//!   task keeps that gate: open only once every byte the agent sent over TCP has reached the
//!   upstream socket's send queue, and only for as much as that socket has room for.
//! - **Resets** on either side reset the other; all map entries go before the fds are closed.
mod direction;
mod flow;
mod local;

use std::{
    future::Future as _,
    io,
    net::TcpStream as StdStream,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prometheus::IntCounter;
use tokio::net::TcpStream;

use proxy_common::{FlowKey, LocalGate, LocalSend, SpliceLimit};

use crate::{
    cutoff::Cutoff,
    handover::SpliceState,
    kernel::{Kernel, KernelError, SplicePair, Wake, Wakes, WatchGuard},
    net::{self, Peek},
    outcome::{self, End, Outcome},
    relay::RelayCounters,
};

/// Per-frontend settings of the kernel path.
#[derive(Clone, Copy, Debug)]
pub struct SpliceSettings {
    pub frontend: u32,
    /// Bytes allowed in the kernel's redirect queue per direction.
    pub window: u64,
    /// Send buffer forced on both sockets; 0 leaves the kernel default.
    pub sndbuf: u32,
    /// Bytes userspace read from the client socket before the splice (a CONNECT request
    /// head); 0 in tcp mode. TCP counts them as received, the verdict never sees them.
    pub client_consumed: u64,
    /// Bytes userspace read from the upstream socket before the splice (a connection that
    /// started in the relay, `kernel_after`).
    pub upstream_consumed: u64,
    /// The connection started in the relay. A same-host agent's sends then never go straight
    /// to the upstream socket (the direct path's gate does not start from such sockets' counts:
    /// the bytes came out wrong in a test); it uses the splice like a remote agent.
    pub relayed_first: bool,
}

/// How a spliced connection left [`Started::run`].
pub enum Spliced {
    Ended(Outcome),
    /// Asked to by an upgrade, in its steady state: the maps keep carrying it, and these are
    /// what the successor needs ([`adopt`] there).
    HandedOver(HandedOver),
}

pub struct HandedOver {
    pub state: SpliceState,
    /// Client, upstream.
    pub sockets: [StdStream; 2],
}

/// The kernel would not take the pair; the streams come back untouched for the userspace relay.
pub struct Declined {
    pub client: TcpStream,
    pub upstream: TcpStream,
    pub error: KernelError,
}

/// How many times a socket may show bytes in its own queue, while this task does not carry it, before the
/// connection is failed; each retry is one tick (1-50 ms) apart.
const MAX_STRAY_RECHECKS: u32 = 200;
const TICK_MIN: Duration = Duration::from_millis(1);
const TICK_MAX: Duration = Duration::from_millis(50);

struct Side {
    stream: StdStream,
    cookie: u64,
    /// Bytes userspace read from this socket before the splice: every received byte past them
    /// goes through the verdict (0 for plain TCP frontends, which read nothing; the request
    /// head on a CONNECT client).
    rcv_base: u64,
    /// Bytes ever queued for sending on this socket when the splice started.
    snd_base: u64,
    /// The direction of the bytes this socket receives: who carries them, and its FIN.
    dir: direction::Direction,
    /// Bytes of this side copied to the peer in userspace (the tail).
    copied: u64,
    /// Tail bytes read but not yet written to the peer.
    carry: flow::Carry,
    /// Bytes seen in the socket's own queue while the kernel should be carrying it: look again on the next tick.
    stray_rechecks: u32,
}

impl Side {
    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

struct Splice<'k> {
    kernel: &'k Kernel,
    /// Userspace byte counters, for the tail of a direction that could not stay in the kernel.
    copied_metric: [IntCounter; 2],
    sides: [Side; 2],
    window: u64,
    first_eof: Option<usize>,
    /// The connection's wake-ups; dropped before the sockets are closed.
    watch: WatchGuard,
    /// (readable, writable) wake-ups currently asked for, per side.
    interest: [(bool, bool); 2],
    /// The client is a same-host agent paired with the upstream socket. Boxed: 136 B that
    /// connections from other hosts, most of them, would otherwise carry for their whole life.
    local: Option<Box<LocalPairing>>,
}

/// A same-host agent socket paired with the upstream socket (see the `local` module).
struct LocalPairing {
    key: FlowKey,
    /// The gate as last written.
    gate: LocalGate,
    /// The program's counters as last read (they outlive the agent socket's entry).
    last: LocalSend,
    /// Bytes that took the TCP path are not yet seen landed: look again on the next tick.
    recheck: bool,
    /// The program's `passed` count at the last look that found bytes in flight.
    looked: u64,
    /// That look found `passed` moved since the one before: the agent is sending.
    moved: bool,
}

/// [`reset_end`] with what failed in the detail ("socket error", "read", "write"), so that the
/// log line tells a pending socket error (set by the kernel, e.g. its redirect worker) from a
/// failed call of ours.
fn reset_end_at(side: usize, what: &str, err: &io::Error) -> (End, String) {
    let (end, detail) = reset_end(side, err);
    (end, format!("{what}: {detail}"))
}

fn reset_end(side: usize, err: &io::Error) -> (End, String) {
    (
        End::reset_by(outcome::Side::from_index(side)),
        err.to_string(),
    )
}

fn internal(err: impl std::fmt::Display) -> (End, String) {
    (End::Error, err.to_string())
}

type Step = Result<(), (End, String)>;

/// Why [`start`] did not start a splice.
pub enum NotStarted {
    /// The sockets failed before the maps were touched (an ended connection).
    Failed(Outcome),
    /// The kernel would not take them; the relay can (boxed: rare, and large).
    Declined(Box<Declined>),
}

/// A connection in the kernel's maps, to be carried by [`Started::run`]. Set up by a plain
/// function ([`start`], [`adopt`]) so that the future that lives as long as the connection
/// holds only this, not the set-up's arguments and locals (docs/benchmarks.md, "Idle
/// connection memory").
pub struct Started<'k> {
    splice: Splice<'k>,
    wakes: Arc<Wakes>,
    pair: SplicePair,
    frontend: u32,
}

impl<'k> Started<'k> {
    /// Carries the connection in the kernel until it ends, is reset, or the `cutoff` ends it
    /// (idle: both sockets closed with a FIN once out of the maps; the drain timeout: reset),
    /// or an upgrade takes it. A block, not an `async fn` (see `Conn::carry`): the whole
    /// `Splice` would be kept twice.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of each argument in its future"
    )]
    pub fn run<'c>(
        mut self,
        cutoff: Cutoff<'c>,
    ) -> impl Future<Output = Spliced> + Send + use<'k, 'c> {
        async move {
            let span = tracing::trace_span!(
                "splice",
                client = self.pair.client_cookie,
                upstream = self.pair.upstream_cookie
            );
            let run = self.splice.run(&self.wakes, cutoff);
            let result = tracing::Instrument::instrument(run, span).await;
            if let Ok(End::HandedOver) = result {
                return Spliced::HandedOver(self.splice.hand_over(self.frontend));
            }
            Spliced::Ended(self.splice.end(&self.pair, result, cutoff))
        }
    }
}

/// [`start`], then [`Started::run`]: the whole kernel path of a connection in one future (its
/// set-up's arguments stay in it; the daemon calls the two itself).
pub async fn splice(
    kernel: &Kernel,
    client: TcpStream,
    upstream: TcpStream,
    settings: SpliceSettings,
    counters: &RelayCounters,
    cutoff: Cutoff<'_>,
) -> Result<Spliced, Declined> {
    match start(kernel, client, upstream, settings, counters) {
        Ok(started) => Ok(started.run(cutoff).await),
        Err(NotStarted::Failed(outcome)) => Ok(Spliced::Ended(outcome)),
        Err(NotStarted::Declined(declined)) => Err(*declined),
    }
}

/// Puts the connection's sockets in the kernel's maps, for [`Started::run`] to carry.
pub fn start<'k>(
    kernel: &'k Kernel,
    client: TcpStream,
    upstream: TcpStream,
    settings: SpliceSettings,
    counters: &RelayCounters,
) -> Result<Started<'k>, NotStarted> {
    // Out of tokio's reactor: it would be woken for every forwarded buffer (see kernel::events).
    let (client, upstream) = both(
        client.into_std(),
        upstream.into_std(),
        "leaving the reactor",
    )
    .map_err(NotStarted::Failed)?;
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let (client, upstream) = both(
        new_side(client, settings.sndbuf),
        new_side(upstream, settings.sndbuf),
        "reading socket state",
    )
    .map_err(NotStarted::Failed)?;
    let mut sides = [client, upstream];
    sides[0].rcv_base = settings.client_consumed;
    sides[1].rcv_base = settings.upstream_consumed;
    let pair = SplicePair {
        client_cookie: sides[0].cookie,
        client_fd: fds[0],
        upstream_cookie: sides[1].cookie,
        upstream_fd: fds[1],
        frontend: settings.frontend,
        first_limit: SpliceLimit::new(settings.window / 2, settings.window),
    };
    let wakes = Arc::new(Wakes::default());
    let watch = match kernel.events.watch(
        [
            (pair.client_cookie, pair.client_fd),
            (pair.upstream_cookie, pair.upstream_fd),
        ],
        &wakes,
    ) {
        Ok(watch) => watch,
        Err(e) => {
            return Err(NotStarted::Declined(Box::new(decline(
                sides,
                KernelError::Socket(e),
            ))));
        }
    };
    if let Err(error) = kernel.registry.insert(&pair) {
        drop(watch);
        return Err(NotStarted::Declined(Box::new(decline(sides, error))));
    }

    // The client socket joins separately (see SpliceRegistry::insert): bytes may already move,
    // so a refusal (the client closed in the meantime, and the kernel only takes established
    // sockets) leaves that one direction to the userspace tail instead of undoing the pair.
    let mut splice = Splice {
        kernel,
        copied_metric: [counters.up.clone(), counters.down.clone()],
        sides,
        window: settings.window,
        first_eof: None,
        watch,
        interest: [(false, false); 2],
        local: None,
    };
    if let Err(e) = kernel.registry.join(pair.client_cookie, pair.client_fd) {
        tracing::debug!(error = %e, "client socket cannot join the kernel path; copying its side");
        splice.sides[0].dir.detach();
    }
    if splice.sides[0].dir.is_joined() && !settings.relayed_first {
        splice.pair_local(&pair);
    }
    Ok(Started {
        splice,
        wakes,
        pair,
        frontend: settings.frontend,
    })
}

/// Takes a connection a predecessor handed over (see `crate::handover`) in `kernel`, the set
/// of maps it is in, for [`Started::run`] to carry like one of [`start`].
pub fn adopt<'k>(
    kernel: &'k Kernel,
    state: &SpliceState,
    sockets: [StdStream; 2],
    counters: &RelayCounters,
) -> Result<Started<'k>, (End, String)> {
    let fds = [sockets[0].as_raw_fd(), sockets[1].as_raw_fd()];
    let mut sides = Vec::with_capacity(2);
    for (i, stream) in sockets.into_iter().enumerate() {
        let cookie = net::socket_cookie(stream.as_fd()).map_err(internal)?;
        sides.push(Side {
            stream,
            cookie,
            rcv_base: state.rcv_base[i],
            snd_base: state.snd_base[i],
            dir: direction::Direction::adopted(state.pauses[i], state.resumes[i]),
            copied: state.copied[i],
            carry: flow::Carry::default(),
            stray_rechecks: 0,
        });
    }
    let [client, upstream]: [Side; 2] = sides.try_into().map_err(|_| internal("two sides"))?;
    let pair = SplicePair {
        client_cookie: client.cookie,
        client_fd: fds[0],
        upstream_cookie: upstream.cookie,
        upstream_fd: fds[1],
        frontend: state.frontend,
        first_limit: SpliceLimit::new(state.window / 2, state.window),
    };
    let wakes = Arc::new(Wakes::default());
    let watch = kernel
        .events
        .watch(
            [
                (pair.client_cookie, pair.client_fd),
                (pair.upstream_cookie, pair.upstream_fd),
            ],
            &wakes,
        )
        .map_err(internal)?;
    kernel.registry.count_adopted();
    let mut splice = Splice {
        kernel,
        copied_metric: [counters.up.clone(), counters.down.clone()],
        sides: [client, upstream],
        window: state.window,
        first_eof: None,
        watch,
        interest: [(false, false); 2],
        local: None,
    };
    // Events the predecessor read but could not forward may be lost: look at both marks once.
    splice.on_mark(0)?;
    splice.on_mark(1)?;
    Ok(Started {
        splice,
        wakes,
        pair,
        frontend: state.frontend,
    })
}

impl Splice<'_> {
    /// Leaves the connection in the maps for the successor: stops watching it, forwards its
    /// ring-buffer events, and gives back what the successor needs.
    fn hand_over(self, frontend: u32) -> HandedOver {
        let Self {
            kernel,
            sides,
            window,
            watch,
            ..
        } = self;
        drop(watch);
        kernel.events.forward([sides[0].cookie, sides[1].cookie]);
        kernel.registry.count_handed_over();
        let state = SpliceState {
            frontend,
            window,
            rcv_base: [sides[0].rcv_base, sides[1].rcv_base],
            snd_base: [sides[0].snd_base, sides[1].snd_base],
            copied: [sides[0].copied, sides[1].copied],
            pauses: [sides[0].dir.pauses(), sides[1].dir.pauses()],
            resumes: [sides[0].dir.resumes(), sides[1].dir.resumes()],
        };
        let [client, upstream] = sides;
        HandedOver {
            state,
            sockets: [client.stream, upstream.stream],
        }
    }

    /// Whether the connection may move to another process now (`crate::handover`).
    fn steady(&self) -> bool {
        self.local.is_none()
            && self
                .sides
                .iter()
                .all(|s| s.dir.is_steady() && s.carry.is_empty() && s.stray_rechecks == 0)
    }

    /// Takes the pair out of the maps and reports the connection's end.
    fn end(
        mut self,
        pair: &SplicePair,
        result: Result<End, (End, String)>,
        cutoff: Cutoff<'_>,
    ) -> Outcome {
        let kernel = self.kernel;
        // The agent's messages stop going to the upstream socket before anything else is undone.
        let local_up = self.unpair_local();
        drop(self.watch);
        let (up, down) = kernel.registry.remove(pair, self.sides[0].dir.is_joined());
        let (end, detail) = match result {
            Ok(End::IdleTimeout) => (End::IdleTimeout, cutoff.idle_detail()),
            Ok(end) => (end, String::new()),
            Err((end, detail)) => {
                // Abortive ends: make the close a reset on whichever side is still there.
                for side in &self.sides {
                    let _ = net::set_linger_zero(side.fd());
                }
                (end, detail)
            }
        };
        let [client, upstream] = &self.sides;
        Outcome {
            bytes_up: up.bytes + client.copied + local_up,
            bytes_down: down.bytes + upstream.copied,
            end,
            detail,
            copied_up: client.copied,
            copied_down: upstream.copied,
            pauses: client.dir.pauses() + upstream.dir.pauses(),
            resumes: client.dir.resumes() + upstream.dir.resumes(),
            direct_up: local_up,
        }
    }
}

/// Both results, or the outcome of a connection that failed at `what`.
fn both<T>(a: io::Result<T>, b: io::Result<T>, what: &str) -> Result<(T, T), Outcome> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(e), _) | (_, Err(e)) => Err(Outcome::nothing(End::Error, format!("{what}: {e}"))),
    }
}

fn new_side(stream: StdStream, sndbuf: u32) -> io::Result<Side> {
    let fd = stream.as_fd();
    if sndbuf > 0 {
        // Best effort: a larger send buffer lets the redirect worker move more per run; without
        // CAP_NET_ADMIN the kernel caps it at wmem_max, which is still correct.
        let _ = net::force_sndbuf(fd, sndbuf);
    }
    let bytes = net::tcp_bytes(fd)?;
    Ok(Side {
        cookie: net::socket_cookie(fd)?,
        rcv_base: 0,
        snd_base: bytes.queued_for_send,
        stream,
        dir: direction::Direction::new(),
        copied: 0,
        carry: flow::Carry::default(),
        stray_rechecks: 0,
    })
}

fn decline(sides: [Side; 2], error: KernelError) -> Declined {
    let [client, upstream] = sides;
    // Back into the reactor for the relay. from_std cannot fail inside a runtime with IO enabled,
    // which is where every connection task runs.
    let to_tokio = |s: StdStream| TcpStream::from_std(s).expect("tokio runtime with IO enabled");
    Declined {
        client: to_tokio(client.stream),
        upstream: to_tokio(upstream.stream),
        error,
    }
}

/// The tick's timer, boxed on first use and re-armed after: most connections never have
/// anything pending, and an idle connection's future should not carry a timer (112 B).
#[derive(Default)]
struct Ticker(Option<Pin<Box<tokio::time::Sleep>>>);

impl Ticker {
    /// Fires `after` from now.
    fn arm(&mut self, after: Duration) {
        let deadline = tokio::time::Instant::now() + after;
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Splice<'_> {
    /// A block, not an `async fn`, as [`Started::run`].
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of each argument in its future"
    )]
    fn run<'s>(
        &'s mut self,
        wakes: &'s Wakes,
        cutoff: Cutoff<'s>,
    ) -> impl Future<Output = Result<End, (End, String)>> + Send + 's {
        async move {
            // Forward whatever arrived before the insert, and catch a FIN that came with it.
            self.on_socket(0)?;
            self.on_socket(1)?;
            self.refresh_local()?;
            let mut tick = TICK_MIN;
            let mut ticker = Ticker::default();
            let mut idle = cutoff.idle_timer();
            let handover = cutoff.handover;
            let asked = || handover.is_some_and(crate::handover::Handover::is_requested);
            loop {
                if let Some(end) = self.finished() {
                    return Ok(end);
                }
                if asked() && self.steady() {
                    return Ok(End::HandedOver);
                }
                self.sync_interest()?;
                let pending = self.has_pending();
                if pending {
                    ticker.arm(tick);
                }
                tokio::select! {
                    wake = wakes.next() => {
                        match wake {
                            Wake::Socket(i) => {
                                tracing::trace!(side = i, "socket event");
                                if self.sides[i].dir.is_carried() {
                                    // Readable (or FIN, reset): the read in copy_tail tells.
                                    self.copy_tail(i)?;
                                } else {
                                    self.on_socket(i)?;
                                }
                                // Writable, for the direction carried towards this socket.
                                let o = 1 - i;
                                if self.sides[o].dir.is_carried() && !self.sides[o].carry.is_empty() {
                                    self.copy_tail(o)?;
                                }
                            }
                            Wake::Mark(i) => self.on_mark(i)?,
                            Wake::Passing(i) => self.on_passing(i)?,
                            Wake::Local => self.refresh_local()?,
                            // The top of the loop looks.
                            Wake::Handover => {}
                        }
                        tick = TICK_MIN;
                    }
                    () = std::future::poll_fn(|cx| ticker.poll_fired(cx)), if pending => {
                        let copied = self.sides[0].copied + self.sides[1].copied;
                        self.on_tick()?;
                        // Back off while nothing moves; stay quick while a tail is being copied
                        // or a same-host agent sends through the TCP path, waiting for the gate.
                        let moved = self.take_local_moved();
                        tick = if self.sides[0].copied + self.sides[1].copied > copied || moved {
                            TICK_MIN
                        } else {
                            (tick * 2).min(TICK_MAX)
                        };
                    }
                    () = std::future::poll_fn(|cx| {
                        idle.poll_expired(cx, [self.sides[0].fd(), self.sides[1].fd()])
                    }) => {
                        // Nothing in flight, nothing queued: a clean close on both sides.
                        return Ok(End::IdleTimeout);
                    }
                    () = cutoff.abort.cancelled() => {
                        return Err((End::Shutdown, "drain timeout".into()));
                    }
                }
            }
        }
    }

    fn finished(&self) -> Option<End> {
        let done = self.sides.iter().all(|s| s.dir.is_finished());
        let end = End::closed(self.first_eof.map(outcome::Side::from_index));
        done.then_some(end)
    }

    /// Asks epoll for readable wake-ups on a carried socket, and writable ones on the peer a
    /// carried direction is blocked on; FIN/reset/error only otherwise.
    fn sync_interest(&mut self) -> Step {
        for i in 0..2 {
            let carried = |s: &Side| s.dir.is_carried() && !s.dir.is_finished();
            let o = &self.sides[1 - i];
            let want = (carried(&self.sides[i]), carried(o) && !o.carry.is_empty());
            if want != self.interest[i] {
                self.watch
                    .set_interest(i, want.0, want.1)
                    .map_err(internal)?;
                self.interest[i] = want;
            }
        }
        Ok(())
    }

    fn has_pending(&self) -> bool {
        self.local.as_ref().is_some_and(|l| l.recheck)
            || self.sides.iter().any(|s| {
                s.dir.mark_recheck()
                    || s.dir.is_carried() && !s.dir.is_finished()
                    || s.stray_rechecks > 0
                    || (s.dir.fin_was_seen() && !s.dir.is_finished())
            })
    }

    /// A FIN, reset or error may have happened on side `i`.
    fn on_socket(&mut self, i: usize) -> Step {
        let fd = self.sides[i].fd();
        if let Some(err) = net::take_error(fd).map_err(internal)? {
            return Err(reset_end_at(i, "socket error", &err));
        }
        if self.sides[i].dir.fin_was_seen() {
            return Ok(());
        }
        match net::peek(fd) {
            Err(err) => return Err(reset_end(i, &err)),
            Ok(Peek::Empty) => {
                self.sides[i].stray_rechecks = 0;
                return Ok(());
            }
            Ok(Peek::Data) if self.sides[i].dir.is_carried() => return Ok(()),
            Ok(Peek::Data) => {
                // Bytes in the socket's own queue while the verdict is attached: it passed them
                // (flow control, its event not handled yet) or has not run yet.
                let counted = self
                    .kernel
                    .registry
                    .side(self.sides[i].cookie)
                    .map_err(internal)?;
                if counted.passing != 0 {
                    self.on_passing(i)?;
                    return Ok(());
                }
                let side = &mut self.sides[i];
                side.stray_rechecks += 1;
                if side.stray_rechecks > MAX_STRAY_RECHECKS {
                    return Err(internal("bytes stuck in a spliced socket's own queue"));
                }
                return Ok(());
            }
            Ok(Peek::Eof) => {
                // A reset also reads as end-of-stream once its error has been taken - and a
                // same-host agent's send straight into the upstream socket takes it (the agent
                // gets the reset). A socket we have not shut down ourselves is closed only by a
                // reset: end the connection as one. (After our FIN, a clean close is CLOSE as
                // well: the kernel moves the connection to a time-wait socket and closes ours.)
                if !self.sides[1 - i].dir.is_finished() && net::is_closed(fd).map_err(internal)? {
                    let reset = io::Error::from(io::ErrorKind::ConnectionReset);
                    return Err(reset_end_at(i, "closed without FIN", &reset));
                }
            }
        }
        tracing::trace!(side = i, "fin");
        let side = &mut self.sides[i];
        side.dir.fin_seen();
        side.stray_rechecks = 0;
        self.first_eof.get_or_insert(i);
        self.forward_fin(i)
    }

    /// Forwards side `i`'s FIN to its peer once every byte before it has been handed over.
    fn forward_fin(&mut self, i: usize) -> Step {
        let p = 1 - i;
        if self.sides[i].dir.is_finished() {
            // Forwarded already (a carried direction reads its end-of-stream again): the
            // peer's count now includes our FIN, and there is nothing left to wait for.
            return Ok(());
        }
        let counted = self
            .kernel
            .registry
            .side(self.sides[i].cookie)
            .map_err(internal)?;
        let own = net::tcp_bytes(self.sides[i].fd()).map_err(internal)?;
        let peer = match net::tcp_bytes(self.sides[p].fd()) {
            Ok(bytes) => bytes,
            Err(err) => return Err(reset_end(p, &err)),
        };
        // Bytes the agent sent straight to the upstream socket reached its send queue within the
        // agent's sendmsg, which returned before the agent's FIN was sent.
        let direct = self.straight(i);
        let received = own.received - self.sides[i].rcv_base + direct;
        let handed_over = peer.queued_for_send - self.sides[p].snd_base;
        let forwarded = counted.bytes + self.sides[i].copied + direct;
        // What was taken for a FIN may be a reset whose error was read elsewhere (the kernel's
        // redirect worker, a carried read). A socket in CLOSE was reset unless it closed in
        // order: that needs our own FIN sent (the other direction finished) and acknowledged
        // with every byte before it (nothing unacknowledged), and its peer's FIN received -
        // which `received` assumes for a closed socket, so a count one above it means every
        // byte it sent was forwarded and no FIN came. (Forwarding a FIN here would tell the
        // peer a cut stream was complete; waiting would never end: the counts cannot meet.)
        if own.closed
            && (!self.sides[p].dir.is_finished() || own.unacked > 0 || forwarded == received + 1)
        {
            let reset = io::Error::from(io::ErrorKind::ConnectionReset);
            return Err(reset_end_at(i, "closed without FIN", &reset));
        }
        if forwarded != received || handed_over != forwarded {
            if counted.passing != 0 {
                // Passed bytes wait for us; normally the event said so already, but it may
                // have been lost (ring buffer full).
                self.on_passing(i)?;
            }
            tracing::trace!(
                side = i,
                forwarded,
                received,
                handed_over,
                "fin waits for the bytes before it"
            );
            // Still in flight: the verdict has not seen the last bytes yet, or they wait in the
            // peer's redirect queue. The tick looks again - unless the peer is gone.
            // Nothing of this direction can reach a closed peer: not the bytes in flight, nor
            // those the verdict could not redirect to it (it left the map when it closed).
            flow::peer_alive(p, peer.closed)?;
            return Ok(());
        }
        if let Err(err) = net::shutdown_write(self.sides[p].fd()) {
            return Err(reset_end(p, &err));
        }
        self.sides[i].dir.fin_forwarded();
        Ok(())
    }

    /// Bytes side `i` forwarded that the peer's send queue has not taken yet.
    fn on_tick(&mut self) -> Step {
        if self.local.as_ref().is_some_and(|l| l.recheck) {
            self.refresh_local()?;
        }
        for i in 0..2 {
            if self.sides[i].dir.mark_recheck() {
                self.on_mark(i)?;
            }
            // Also after a FIN: the FIN can be seen while passed bytes are still on their way
            // into the socket's queue (the kernel's worker moves them), so only a read that
            // returns end-of-stream, with everything accounted for, ends a carried direction.
            if self.sides[i].dir.is_carried() && !self.sides[i].dir.is_finished() {
                self.copy_tail(i)?;
            }
            if self.sides[i].stray_rechecks > 0 {
                self.on_socket(i)?;
            }
            if self.sides[i].dir.fin_was_seen() && !self.sides[i].dir.is_finished() {
                self.forward_fin(i)?;
            }
        }
        Ok(())
    }
}
