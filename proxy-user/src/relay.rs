//! The userspace data path: copy both directions with tokio, with the kernel path's semantics.
//!
//! [`relay`] carries two plain TCP sockets; [`relay_streams`] carries any two byte streams,
//! which is how a connection with TLS on either side travels (see its docs for what half-close
//! and reset mean through TLS).
//!
//! - Each direction reads until EOF and then shuts the other socket's write side, while the other
//!   direction keeps flowing (half-close).
//! - A read or write error on one socket resets the other (close with `SO_LINGER` 0).
//! - Buffers exist only while bytes flow: a direction allocates when its socket turns readable
//!   and frees the buffer once the socket has nothing more, so idle connections hold none. A
//!   peer that stops reading stops its direction at one buffer (`write_all` waits), so memory
//!   stays bounded by the socket buffers plus one buffer.
use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    pin::Pin,
    task::{Context, Poll, ready},
};

use prometheus::IntCounter;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
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
}

impl From<DirectionError> for Stop {
    fn from(error: DirectionError) -> Self {
        Stop::Failed(error)
    }
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
    let mut up = Pump::new(Side::Client, Side::Upstream);
    let mut down = Pump::new(Side::Upstream, Side::Client);
    let mut first_eof = None;
    let mut idle = cutoff.idle_timer();
    let both = std::future::poll_fn(|cx| {
        if !up.done
            && let Poll::Ready(r) = up.poll(cx, &client, &upstream, &counters.up)
        {
            r?;
            first_eof.get_or_insert(Side::Client);
        }
        if !down.done
            && let Poll::Ready(r) = down.poll(cx, &upstream, &client, &counters.down)
        {
            r?;
            first_eof.get_or_insert(Side::Upstream);
        }
        let fds = [client.as_fd(), upstream.as_fd()];
        both_done(up.done, down.done, cx, &mut idle, fds)
    });
    let result = tokio::select! {
        r = both => r,
        () = cutoff.abort.cancelled() => Err(Stop::Drain),
    };
    let fds = [client.as_fd(), upstream.as_fd()];
    outcome(result, first_eof, fds, [up.total, down.total], &cutoff)
}

/// Bytes read per call on [`relay_streams`]: 4 TLS records of plaintext (see docs/tls.md for
/// the measurements behind the size).
const STREAM_CHUNK: usize = 64 * 1024;

/// One direction of [`relay_streams`].
struct Flow {
    /// Held while bytes flow; freed when the reader has nothing and nothing waits to be written.
    buf: Option<Box<[u8]>>,
    /// `buf[pos..len]` is read but not yet written.
    pos: usize,
    len: usize,
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
            buf: None,
            pos: 0,
            len: 0,
            read_done: false,
            unflushed: false,
            done: false,
            total: 0,
            from,
            to,
        }
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
            if self.pos == self.len && !self.read_done {
                let buf = self
                    .buf
                    .get_or_insert_with(|| vec![0; STREAM_CHUNK].into_boxed_slice());
                let mut read = ReadBuf::new(buf);
                match r.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) if read.filled().is_empty() => self.read_done = true,
                    Poll::Ready(Ok(())) => {
                        self.len = read.filled().len();
                        self.pos = 0;
                    }
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
                        self.buf = None;
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.len {
                let buf = self.buf.as_deref().unwrap_or_default();
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.len]))
                    .map_err(write_err)?;
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
                self.buf = None;
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
