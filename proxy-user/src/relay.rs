//! The userspace data path: copy both directions with tokio, with the kernel path's semantics.
//!
//! [`relay`] carries two plain TCP sockets; [`relay_streams`] carries any two byte streams,
//! which is how a connection with TLS on either side travels (see its docs for what half-close
//! and reset mean through TLS).
//!
//! - Each direction reads until EOF and then shuts the other socket's write side, while the other
//!   direction keeps flowing (half-close).
//! - A read or write error on one socket resets the other (close with `SO_LINGER` 0), and so
//!   does an error that comes while neither direction touches that socket: each socket's error
//!   readiness is watched once a direction waits to write or has finished ([`ResetWatch`]).
//!   Without it, a reset went unseen while the direction reading that socket was blocked
//!   writing to the other one (or had finished, after a half-close) and the direction writing
//!   to it had nothing to write: the other peer then waited for good, unless it moved bytes.
//! - Buffers exist only while bytes flow: a direction allocates when its socket turns readable
//!   and frees the buffer once the socket has nothing more, so idle connections hold none. A
//!   peer that stops reading stops its direction at one buffer (`write_all` waits), so memory
//!   stays bounded by the socket buffers plus one buffer.
use std::{
    future::Future,
    io,
    os::fd::{AsFd, BorrowedFd},
    pin::Pin,
    task::{Context, Poll, ready},
};

use prometheus::IntCounter;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, Interest, unix::AsyncFd},
    net::TcpStream,
};

use crate::{
    cutoff::Cutoff,
    net,
    outcome::{End, Outcome, Side},
};

/// Bytes read per system call.
const CHUNK: usize = 64 * 1024;

/// The byte counters of one connection's two directions.
pub struct RelayCounters {
    pub up: IntCounter,
    pub down: IntCounter,
}

struct DirectionError {
    failed: Side,
    error: io::Error,
}

/// Why a relay stopped before both directions finished.
enum Stop {
    /// A read or write failed on one side.
    Failed(DirectionError),
    /// No byte moved for the idle timeout.
    Idle,
    /// The drain timeout expired at shutdown.
    Drain,
    /// [`relay_until`]'s budget was carried, and nothing read waits to be written.
    Budget,
}

impl From<DirectionError> for Stop {
    fn from(error: DirectionError) -> Self {
        Stop::Failed(error)
    }
}

/// The error (a reset, or a keepalive or retransmission timeout) of one socket, found once the
/// socket reports it: the future of a [`ResetWatch`].
type ErrorFuture<'a> = Pin<Box<dyn Future<Output = Option<io::Error>> + Send + 'a>>;

/// Watches one socket for an error whatever the relay's two directions are doing: a reset ends
/// the relay at once, as a failure of that side. The directions read and write a socket only
/// while they have something to do with it, so on their own they miss a reset on a socket whose
/// reading direction waits to write elsewhere (or has finished) while its writing direction
/// waits for bytes from the other side.
///
/// Armed (boxed) only once a direction waits to write or has finished: while both directions
/// wait to read, each socket's reader sees its reset, and an idle connection holds no watch.
/// The future waits for the socket's error readiness (`EPOLLERR`: never for bytes or a FIN),
/// then takes the error.
struct ResetWatch<'a> {
    /// `None` once fired (or if the socket could not be watched).
    error: Option<ErrorFuture<'a>>,
    side: Side,
}

impl ResetWatch<'_> {
    /// `Ready` with the socket's error once it has one. An error that a direction read first
    /// (it reports it itself) leaves nothing to take: the watch is then spent, the socket being
    /// closed for good.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<DirectionError> {
        let Some(error) = &mut self.error else {
            return Poll::Pending;
        };
        let found = ready!(error.as_mut().poll(cx));
        self.error = None;
        match found {
            Some(error) => Poll::Ready(DirectionError {
                failed: self.side,
                error,
            }),
            None => Poll::Pending,
        }
    }
}

/// Both sockets' [`ResetWatch`]es, boxed together once armed: an idle connection's future holds
/// one pointer for them.
type Watches<'a> = Option<Box<[ResetWatch<'a>; 2]>>;

/// Arms the [`ResetWatch`]es when `needed` (see there), with `watch`'s future for each side,
/// then polls them: `Err` with the first error found.
fn poll_watches<'a>(
    cx: &mut Context<'_>,
    needed: bool,
    watches: &mut Watches<'a>,
    watch: impl Fn(Side) -> Option<ErrorFuture<'a>>,
) -> Result<(), DirectionError> {
    if needed && watches.is_none() {
        let armed = [Side::Client, Side::Upstream].map(|side| ResetWatch {
            error: watch(side),
            side,
        });
        *watches = Some(Box::new(armed));
    }
    for w in watches.iter_mut().flat_map(|w| w.iter_mut()) {
        if let Poll::Ready(error) = w.poll(cx) {
            return Err(error);
        }
    }
    Ok(())
}

/// The [`ResetWatch`] future of a plain socket.
fn socket_error(socket: &TcpStream) -> Option<ErrorFuture<'_>> {
    Some(Box::pin(async move {
        let _ = socket.ready(Interest::ERROR).await;
        net::take_error(socket.as_fd()).ok().flatten()
    }))
}

/// The [`ResetWatch`] future of a socket that a stream owns (a TLS session's): a second
/// registration of its own descriptor (a `dup`), so that the watch does not borrow the stream.
/// `None` if the descriptor cannot be had (out of descriptors): the relay then goes without.
fn stream_error(fd: BorrowedFd<'_>) -> Option<ErrorFuture<'static>> {
    let owned = fd.try_clone_to_owned().ok()?;
    // SAFETY: an `OwnedFd` stays open, and names the same descriptor, for as long as it lives,
    // which is as long as the registration that owns it.
    let registration = unsafe { AsyncFd::register_with_interest(owned, Interest::ERROR) }.ok()?;
    Some(Box::pin(async move {
        let _ = registration.ready(Interest::ERROR).await;
        net::take_error(registration.get_ref().as_fd())
            .ok()
            .flatten()
    }))
}

/// One direction of [`relay`]: reads `from` into a buffer and writes it to `to`, until EOF.
///
/// Driven by polling rather than as an `async fn` so that an idle connection's task holds
/// two of these (a few dozen bytes each) instead of two suspended copy loops with their
/// readiness and write futures (docs/benchmarks.md, "Idle connection memory").
struct Pump {
    /// Held while bytes flow: allocated (not zeroed) when the socket turns readable, freed
    /// when it has nothing more and everything read was written.
    buf: Vec<u8>,
    /// `buf[written..]` is read but not yet written.
    written: usize,
    /// EOF read: once `buf` is written, shut `to`'s write side.
    read_done: bool,
    done: bool,
    total: u64,
    from: Side,
    to: Side,
}

impl Pump {
    fn new(from: Side, to: Side) -> Self {
        Self {
            buf: Vec::new(),
            written: 0,
            read_done: false,
            done: false,
            total: 0,
            from,
            to,
        }
    }

    /// Waits to write to `to`, or has finished: it does not read `from` meanwhile.
    fn away(&self) -> bool {
        self.done || self.written < self.buf.len()
    }

    /// Open (no end-of-stream read), with every byte it read written.
    fn drained(&self) -> bool {
        !self.read_done && self.written >= self.buf.len()
    }

    /// Moves bytes from `from` to `to` until both would block; `Ready(Ok)` once EOF was read
    /// and passed on as a shutdown of `to`'s write side.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        metric: &IntCounter,
    ) -> Poll<Result<(), DirectionError>> {
        let (from_side, to_side) = (self.from, self.to);
        let read_err = |error| DirectionError {
            failed: from_side,
            error,
        };
        let write_err = |error| DirectionError {
            failed: to_side,
            error,
        };
        loop {
            while self.written < self.buf.len() {
                ready!(to.poll_write_ready(cx)).map_err(write_err)?;
                match to.try_write(&self.buf[self.written..]) {
                    Ok(0) => return Poll::Ready(Err(write_err(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => {
                        self.written += n;
                        self.total += n as u64;
                        metric.inc_by(n as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(write_err(e))),
                }
            }
            if self.read_done {
                net::shutdown_write(to.as_fd()).map_err(write_err)?;
                self.buf = Vec::new();
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if from.poll_read_ready(cx).map_err(read_err)?.is_pending() {
                // Idle: give the buffer back until the socket turns readable.
                self.buf = Vec::new();
                return Poll::Pending;
            }
            self.buf.clear();
            self.written = 0;
            self.buf.reserve_exact(CHUNK);
            match from.try_read_buf(&mut self.buf) {
                Ok(0) => self.read_done = true,
                Ok(_) => {}
                // Readiness was stale: poll_read_ready registers for the next wake-up.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(read_err(e))),
            }
        }
    }
}

/// `Ready` once both directions are done, or once the connection has been idle for the
/// timeout (`idle`, over the two sockets `fds`).
fn both_done(
    up: bool,
    down: bool,
    cx: &mut Context<'_>,
    idle: &mut crate::cutoff::IdleTimer,
    fds: [BorrowedFd<'_>; 2],
) -> Poll<Result<(), Stop>> {
    if up && down {
        Poll::Ready(Ok(()))
    } else {
        idle.poll_expired(cx, fds).map(|()| Err(Stop::Idle))
    }
}

/// The outcome of a relayed connection: `result` is `Ok` when both directions finished (the side
/// whose EOF came first, `first_eof`, names the end), else why it stopped. An abortive end
/// resets both sockets (`fds`), so the survivor's peer learns at once; an idle one closes them
/// (FIN). `totals`: bytes relayed up and down.
fn outcome(
    result: Result<(), Stop>,
    first_eof: Option<Side>,
    fds: [BorrowedFd<'_>; 2],
    [up, down]: [u64; 2],
    cutoff: &Cutoff<'_>,
) -> Outcome {
    let (end, detail) = ending(result, first_eof, fds, cutoff);
    Outcome {
        bytes_up: up,
        bytes_down: down,
        end,
        detail,
        copied_up: up,
        copied_down: down,
        pauses: 0,
        resumes: 0,
        direct_up: 0,
    }
}

fn ending(
    result: Result<(), Stop>,
    first_eof: Option<Side>,
    fds: [BorrowedFd<'_>; 2],
    cutoff: &Cutoff<'_>,
) -> (End, String) {
    let reset_both = || {
        for fd in fds {
            let _ = net::set_linger_zero(fd);
        }
    };
    match result {
        Ok(()) => (End::closed(first_eof), String::new()),
        Err(Stop::Idle) => (End::IdleTimeout, cutoff.idle_detail()),
        Err(Stop::Failed(DirectionError { failed, error })) => {
            reset_both();
            (End::reset_by(failed), error.to_string())
        }
        Err(Stop::Drain) => {
            reset_both();
            (End::Shutdown, "drain timeout".to_string())
        }
        // relay_until returns the sockets instead.
        Err(Stop::Budget) => (End::Error, "relay budget reached".to_string()),
    }
}

/// Relays until both directions finished, one side failed, or the `cutoff` ends it (idle, or
/// the drain timeout); both directions run in this one task.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    counters: &RelayCounters,
    cutoff: Cutoff<'_>,
) -> Outcome {
    let mut relaying = Relaying::new(&cutoff);
    let both = std::future::poll_fn(|cx| relaying.poll(cx, &client, &upstream, counters, None));
    let result = tokio::select! {
        r = both => r,
        () = cutoff.abort.cancelled() => Err(Stop::Drain),
    };
    relaying.outcome(result, [client.as_fd(), upstream.as_fd()], &cutoff)
}

/// Where [`relay_until`] stopped.
pub enum Relayed {
    Ended(Outcome),
    /// The budget was carried with both directions open and every byte read written: the
    /// sockets, and the bytes relayed each way, for the kernel path to take over.
    Carried {
        client: TcpStream,
        upstream: TcpStream,
        up: u64,
        down: u64,
    },
}

/// [`relay`] until the connection ends, or until it has carried `budget` bytes (both ways
/// together) while both directions are open, nothing read waits to be written and nothing
/// waits in either socket's receive queue ([`nothing_queued`]).
pub async fn relay_until(
    client: TcpStream,
    upstream: TcpStream,
    counters: &RelayCounters,
    cutoff: Cutoff<'_>,
    budget: u64,
) -> Relayed {
    let mut relaying = Relaying::new(&cutoff);
    let both =
        std::future::poll_fn(|cx| relaying.poll(cx, &client, &upstream, counters, Some(budget)));
    let result = tokio::select! {
        r = both => r,
        () = cutoff.abort.cancelled() => Err(Stop::Drain),
    };
    if let Err(Stop::Budget) = result {
        let (up, down) = (relaying.up.total, relaying.down.total);
        drop(relaying);
        return Relayed::Carried {
            client,
            upstream,
            up,
            down,
        };
    }
    Relayed::Ended(relaying.outcome(result, [client.as_fd(), upstream.as_fd()], &cutoff))
}

/// Whether both sockets' receive queues are empty, so that the connection may move to the
/// kernel. A socket whose queue holds a buffer the relay read only part of must not join the
/// splice: the verdict is handed each queued buffer whole (`tcp_read_skb` ignores the read
/// position), so the part already relayed would be forwarded again - a CI run of
/// `kernel_after::long_exchange_moves_to_the_kernel` saw a client receive such bytes twice.
/// Buffers that arrive after this look have never been read and are whole. Not empty: the
/// pumps read on (their readiness wakes them) and the move waits for the next look.
fn nothing_queued(sockets: [&TcpStream; 2]) -> bool {
    sockets
        .iter()
        .all(|s| matches!(net::peek(s.as_fd()), Ok(net::Peek::Empty)))
}

/// The state of [`relay`]: both directions, which side's EOF came first, the idle timer and
/// the reset watches.
struct Relaying<'a> {
    up: Pump,
    down: Pump,
    first_eof: Option<Side>,
    idle: crate::cutoff::IdleTimer,
    watches: Watches<'a>,
}

impl<'a> Relaying<'a> {
    fn new(cutoff: &Cutoff<'_>) -> Self {
        Self {
            up: Pump::new(Side::Client, Side::Upstream),
            down: Pump::new(Side::Upstream, Side::Client),
            first_eof: None,
            idle: cutoff.idle_timer(),
            watches: None,
        }
    }

    /// Moves bytes both ways; `Ready` when both directions finished, a side failed, the
    /// connection was idle for the timeout, or (with a `budget`) `Stop::Budget`.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        client: &'a TcpStream,
        upstream: &'a TcpStream,
        counters: &RelayCounters,
        budget: Option<u64>,
    ) -> Poll<Result<(), Stop>> {
        let (up, down) = (&mut self.up, &mut self.down);
        if !up.done
            && let Poll::Ready(r) = up.poll(cx, client, upstream, &counters.up)
        {
            r?;
            self.first_eof.get_or_insert(Side::Client);
        }
        if !down.done
            && let Poll::Ready(r) = down.poll(cx, upstream, client, &counters.down)
        {
            r?;
            self.first_eof.get_or_insert(Side::Upstream);
        }
        if budget.is_some_and(|b| up.total + down.total >= b)
            && up.drained()
            && down.drained()
            && nothing_queued([client, upstream])
        {
            return Poll::Ready(Err(Stop::Budget));
        }
        // Both directions finished: the connection ended in order, whatever error a socket
        // reports after that (a peer that closed answers our last bytes with a reset).
        if up.done && down.done {
            return Poll::Ready(Ok(()));
        }
        let needed = up.away() || down.away();
        poll_watches(cx, needed, &mut self.watches, |side| match side {
            Side::Client => socket_error(client),
            Side::Upstream => socket_error(upstream),
        })?;
        let fds = [client.as_fd(), upstream.as_fd()];
        both_done(up.done, down.done, cx, &mut self.idle, fds)
    }

    fn outcome(
        self,
        result: Result<(), Stop>,
        fds: [BorrowedFd<'_>; 2],
        cutoff: &Cutoff<'_>,
    ) -> Outcome {
        let totals = [self.up.total, self.down.total];
        outcome(result, self.first_eof, fds, totals, cutoff)
    }
}

/// Bytes read per call on [`relay_streams`]: 4 TLS records of plaintext (see docs/tls.md for
/// the measurements behind the size).
const STREAM_CHUNK: usize = 64 * 1024;

/// One direction of [`relay_streams`].
struct Flow {
    /// Held while bytes flow; freed when the reader has nothing and nothing waits to be written.
    /// Read into without being zeroed first (a 64-KiB memset each time bytes start to flow).
    buf: Vec<u8>,
    /// `buf[pos..]` is read but not yet written.
    pos: usize,
    read_done: bool,
    /// Bytes were written since the last flush (TLS buffers records until flushed).
    unflushed: bool,
    done: bool,
    total: u64,
    from: Side,
    to: Side,
}

impl Flow {
    fn new(from: Side, to: Side) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            read_done: false,
            unflushed: false,
            done: false,
            total: 0,
            from,
            to,
        }
    }

    /// Waits to write (or flush) to `w`, or has finished: it does not read `r` meanwhile.
    fn away(&self) -> bool {
        self.done || self.pos < self.buf.len() || self.unflushed
    }

    /// Moves bytes from `r` to `w` until both would block; `Ready(Ok)` once EOF was read and
    /// passed on as a shutdown of `w` (a close_notify then a FIN, when `w` is TLS).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        metric: &IntCounter,
    ) -> Poll<Result<(), DirectionError>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let (from, to) = (self.from, self.to);
        let write_err = |error| DirectionError { failed: to, error };
        loop {
            if self.pos == self.buf.len() && !self.read_done {
                self.buf.clear();
                self.pos = 0;
                self.buf.reserve_exact(STREAM_CHUNK);
                match tokio_util::io::poll_read_buf(r.as_mut(), cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) => self.read_done = true,
                    Poll::Ready(Ok(_)) => {}
                    // A TLS peer that closed TCP without close_notify: rustls reports it as
                    // an unexpected EOF. Agents and intakes do it routinely; it is the end of
                    // that direction, passed on as such.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.read_done = true;
                    }
                    Poll::Ready(Err(error)) => {
                        return Poll::Ready(Err(DirectionError {
                            failed: from,
                            error,
                        }));
                    }
                    Poll::Pending => {
                        if self.unflushed {
                            ready!(w.as_mut().poll_flush(cx)).map_err(write_err)?;
                            self.unflushed = false;
                        }
                        // Idle: give the buffer back until the reader wakes up.
                        self.buf = Vec::new();
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.buf.len() {
                let n =
                    ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..])).map_err(write_err)?;
                if n == 0 {
                    return Poll::Ready(Err(write_err(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.total += n as u64;
                metric.inc_by(n as u64);
                self.unflushed = true;
            }
            if self.read_done {
                ready!(w.as_mut().poll_shutdown(cx)).map_err(write_err)?;
                self.buf = Vec::new();
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Relays between two byte streams (TLS or plain) until both directions finished, one side
/// failed, or the `cutoff` ends it; both directions run in this one task. An idle connection
/// is closed cleanly: a close_notify then a FIN on each TLS side (given a second), a FIN on a
/// plain one.
///
/// Through TLS, half-close works per direction as TLS allows: EOF read on one side (a
/// close_notify, or a TCP FIN without one) becomes a close_notify followed by a FIN on the
/// other side if that side is TLS, a FIN if it is plain, while the other direction keeps
/// flowing (TLS 1.3 allows it; a TLS 1.2 peer may stop reading after its close_notify, which is
/// its choice). A reset cannot be relayed inside TLS: a TCP reset, a fatal alert or a corrupt
/// record on one side ends the connection, and the other side's socket is closed with
/// `SO_LINGER` 0, so its peer sees a TCP reset - without a close_notify, so a TLS peer also
/// knows the stream was cut.
pub async fn relay_streams<C, U>(
    mut client: C,
    mut upstream: U,
    counters: &RelayCounters,
    cutoff: Cutoff<'_>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + TcpUnder + Unpin,
    U: AsyncRead + AsyncWrite + TcpUnder + Unpin,
{
    let mut up = Flow::new(Side::Client, Side::Upstream);
    let mut down = Flow::new(Side::Upstream, Side::Client);
    let mut first_eof = None;
    let mut idle = cutoff.idle_timer();
    let mut watches = None;
    let both = std::future::poll_fn(|cx| {
        if !up.done
            && let Poll::Ready(r) = up.poll(
                cx,
                Pin::new(&mut client),
                Pin::new(&mut upstream),
                &counters.up,
            )
        {
            r?;
            first_eof.get_or_insert(Side::Client);
        }
        if !down.done
            && let Poll::Ready(r) = down.poll(
                cx,
                Pin::new(&mut upstream),
                Pin::new(&mut client),
                &counters.down,
            )
        {
            r?;
            first_eof.get_or_insert(Side::Upstream);
        }
        // Both directions finished: the connection ended in order, whatever error a socket
        // reports after that (a peer that closed answers our last bytes with a reset).
        if up.done && down.done {
            return Poll::Ready(Ok(()));
        }
        let needed = up.away() || down.away();
        // The streams are polled mutably: their watches register descriptors of their own.
        poll_watches(cx, needed, &mut watches, |side| match side {
            Side::Client => stream_error(client.tcp()),
            Side::Upstream => stream_error(upstream.tcp()),
        })?;
        let fds = [client.tcp(), upstream.tcp()];
        both_done(up.done, down.done, cx, &mut idle, fds)
    });
    let result = tokio::select! {
        r = both => r,
        () = cutoff.abort.cancelled() => Err(Stop::Drain),
    };
    if let Err(Stop::Idle) = result {
        // Nothing is in flight: say goodbye as TLS would, but never wait on a peer for long.
        let close = async {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close).await;
    }
    let fds = [client.tcp(), upstream.tcp()];
    outcome(result, first_eof, fds, [up.total, down.total], &cutoff)
}

/// The TCP socket under a stream the relay carries: its own, or the one its TLS session runs
/// over (for the resets that end a connection abortively).
pub trait TcpUnder {
    fn tcp(&self) -> BorrowedFd<'_>;
}

impl TcpUnder for TcpStream {
    fn tcp(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

impl TcpUnder for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> BorrowedFd<'_> {
        self.get_ref().0.as_fd()
    }
}

impl TcpUnder for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> BorrowedFd<'_> {
        self.get_ref().0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::time::timeout;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::outcome::End;

    /// How long a peer waits for the reset it must get. Only a guard, so that a relay that
    /// never passes the reset on fails the test instead of hanging it; a correct relay passes it
    /// on as soon as it runs.
    const GUARD: Duration = Duration::from_secs(10);
    /// A sender that could not write for this long has filled every buffer on its way: the
    /// relay is blocked writing to the far peer, which reads nothing.
    const STALLED: Duration = Duration::from_millis(200);

    /// Which relay carries the connection.
    #[derive(Clone, Copy, Debug)]
    enum Carrier {
        Sockets,
        Streams,
    }

    /// The relay's two sockets and their peers.
    struct Rig {
        client_peer: TcpStream,
        client: TcpStream,
        upstream: TcpStream,
        upstream_peer: TcpStream,
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (dialed, accepted)
    }

    async fn rig() -> Rig {
        let (client_peer, client) = pair().await;
        let (upstream, upstream_peer) = pair().await;
        Rig {
            client_peer,
            client,
            upstream,
            upstream_peer,
        }
    }

    /// Runs `carrier` over the rig's relay sockets while `peers` acts on the two peers; the
    /// relay's outcome (`None`: it had not ended within [`GUARD`] of the peers' end) and what
    /// the peers returned.
    async fn run<T>(
        carrier: Carrier,
        rig: Rig,
        peers: impl AsyncFnOnce(TcpStream, TcpStream) -> T,
    ) -> (Option<Outcome>, T) {
        let Rig {
            client_peer,
            client,
            upstream,
            upstream_peer,
        } = rig;
        let abort = CancellationToken::new();
        let cutoff = Cutoff {
            abort: &abort,
            idle: None,
            handover: None,
        };
        let counters = RelayCounters {
            up: IntCounter::new("up", "up").unwrap(),
            down: IntCounter::new("down", "down").unwrap(),
        };
        let relayed = async {
            let relayed: Pin<Box<dyn Future<Output = Outcome> + '_>> = match carrier {
                Carrier::Sockets => Box::pin(relay(client, upstream, &counters, cutoff)),
                Carrier::Streams => Box::pin(relay_streams(client, upstream, &counters, cutoff)),
            };
            relayed.await
        };
        let mut relayed = std::pin::pin!(relayed);
        let mut outcome = None;
        let acted = async { peers(client_peer, upstream_peer).await };
        let mut acted = std::pin::pin!(acted);
        let result = loop {
            tokio::select! {
                o = &mut relayed, if outcome.is_none() => outcome = Some(o),
                r = &mut acted => break r,
            }
        };
        if outcome.is_none() {
            outcome = timeout(GUARD, relayed).await.ok();
        }
        (outcome, result)
    }

    /// Writes until nothing more can be written for [`STALLED`].
    async fn fill(sender: &TcpStream) {
        let chunk = vec![7u8; 64 * 1024];
        while let Ok(ready) = timeout(STALLED, sender.writable()).await {
            ready.unwrap();
            match sender.try_write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write failed while filling: {e}"),
            }
        }
    }

    /// Closes `peer` with a reset.
    fn reset(peer: TcpStream) {
        net::set_linger_zero(peer.as_fd()).unwrap();
        drop(peer);
    }

    /// The error `peer` gets, without reading or writing anything: `None` if none comes
    /// within [`GUARD`].
    async fn error_seen(peer: &TcpStream) -> Option<io::Error> {
        timeout(GUARD, peer.ready(Interest::ERROR))
            .await
            .ok()?
            .ok()?;
        net::take_error(peer.as_fd()).unwrap()
    }

    fn is_reset(error: Option<&io::Error>) -> bool {
        error.is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
        })
    }

    /// Runs `peers` through each relay: the relay must end with `end` and the peer that did not
    /// reset must have seen the reset (the error `peers` returns).
    async fn reset_passed_on(
        end: End,
        peers: impl AsyncFn(TcpStream, TcpStream) -> Option<io::Error>,
    ) {
        for carrier in [Carrier::Sockets, Carrier::Streams] {
            let (outcome, seen) = run(carrier, rig().await, &peers).await;
            assert!(
                is_reset(seen.as_ref()),
                "{carrier:?}: the other peer saw {seen:?}"
            );
            assert_eq!(outcome.map(|o| o.end), Some(end), "{carrier:?}");
        }
    }

    /// The client resets while the relay waits to write its bytes to an upstream that reads
    /// nothing (and sends nothing): no direction reads the client's socket, yet the upstream
    /// must be reset.
    #[tokio::test]
    async fn client_reset_while_blocked_writing_upstream_resets_upstream() {
        reset_passed_on(End::ClientReset, async |client, upstream| {
            fill(&client).await;
            reset(client);
            error_seen(&upstream).await
        })
        .await;
    }

    /// The opposite way: the upstream resets while the relay waits to write to a client that
    /// reads nothing (and sends nothing).
    #[tokio::test]
    async fn upstream_reset_while_blocked_writing_client_resets_client() {
        reset_passed_on(End::UpstreamReset, async |client, upstream| {
            fill(&upstream).await;
            reset(upstream);
            error_seen(&client).await
        })
        .await;
    }

    /// A client that half-closed (its FIN passed on) and then resets while the upstream, still
    /// open, sends nothing: the direction reading the client has finished, the other has
    /// nothing to write to it, and the upstream must still be reset.
    #[tokio::test]
    async fn reset_after_half_close_resets_the_other_side() {
        reset_passed_on(End::ClientReset, async |client, mut upstream| {
            net::shutdown_write(client.as_fd()).unwrap();
            let mut byte = [0u8; 1];
            let eof = tokio::io::AsyncReadExt::read(&mut upstream, &mut byte).await;
            assert_eq!(eof.unwrap(), 0, "the FIN came through");
            reset(client);
            error_seen(&upstream).await
        })
        .await;
    }
}
