//! Serving one client connection of plain HTTP/1.1 requests with hyper, whatever the mode
//! does with each request: every head checked before hyper reads it ([`super::heads`]), the
//! time limits of a kept-alive connection, the bytes counted both ways, and what ended it.
//! The mode then writes the answer to a refused head ([`answer`]) and its log line.
//!
//! Time limits:
//! - the first head must be complete within `first_head` of the start (the mode's
//!   `request_timeout`; [`Served::first_head_timed_out`], answered 408): a client that says
//!   nothing, or trickles its head, holds a slot no longer;
//! - after that, a kept-alive connection may wait for its next head for the frontend's
//!   `idle_timeout` (`end=idle_timeout`): an agent's HTTP client keeps idle connections open
//!   (Go's 90 s) and knows when it will reuse them; closing them sooner only makes it reconnect.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::heads::{Heads, Verdict};
use super::request::{MAX_HEAD, RequestError};
use super::{Body, RequestMetrics, absolute};
use crate::outcome::{End, Outcome};
use crate::relay::RelayCounters;

/// The time limits of one connection (see the module doc).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The first head must be complete within this; `None`: it was read and checked before
    /// (a connect frontend's first head).
    pub first_head: Option<Duration>,
    /// The longest wait for a later head; `None`: no limit.
    pub idle: Option<Duration>,
}

/// The bytes through the client stream: totals for the log line, and live in
/// `agent_proxy_bytes_total{path="userspace"}`.
pub(crate) struct Tally {
    up: AtomicU64,
    down: AtomicU64,
    live_up: IntCounter,
    live_down: IntCounter,
}

impl Tally {
    /// Counting live in a connection's byte counters.
    pub(crate) fn new(live: RelayCounters) -> Self {
        Self {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            live_up: live.up,
            live_down: live.down,
        }
    }

    /// Client to proxy, proxy to client.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }

    /// The log line's outcome of a served connection: every byte went through userspace; the
    /// detail starts with `what: N` (the requests served), then `detail` if any.
    pub(crate) fn outcome(&self, end: End, what: &str, requests: u64, detail: &str) -> Outcome {
        let (up, down) = self.totals();
        let detail = if detail.is_empty() {
            format!("{what}: {requests}")
        } else {
            format!("{what}: {requests}; {detail}")
        };
        Outcome {
            bytes_up: up,
            bytes_down: down,
            copied_up: up,
            copied_down: down,
            ..Outcome::nothing(end, detail)
        }
    }

    fn add_up(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
        self.live_up.inc_by(n);
    }

    fn add_down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
        self.live_down.inc_by(n);
    }
}

/// Futures that run in the client connection's own task beside its HTTP server: the upstream
/// connections hyper's client needs driven. Spawned as tasks of their own, every body chunk
/// would wake another task, often on the other CPU, twice (measured: a tenth of the daemon's
/// CPU in task switches under the DataKit workload); here the server and its upstream
/// connections are polled by one task.
#[derive(Default)]
pub(crate) struct Drivers {
    set: std::sync::Mutex<FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    /// The task to wake when a future is added.
    waker: std::sync::Mutex<Option<Waker>>,
}

impl Drivers {
    /// Runs `future` in the connection's task until it ends or the connection does.
    pub(crate) fn run(&self, future: impl Future<Output = ()> + Send + 'static) {
        lock(&self.set).push(Box::pin(future));
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }

    /// Polls the futures; never ready (the connection's end drops them).
    fn poll_all(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut set = lock(&self.set);
        while let Poll::Ready(Some(())) = set.poll_next_unpin(cx) {}
        *lock(&self.waker) = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How serving a connection ended.
pub(crate) struct Served {
    pub end: End,
    pub detail: String,
    /// A head that failed the checks stopped the connection: why, and its first bytes. The
    /// requests before it were answered; it is to be answered with [`answer`].
    pub refused: Option<(RequestError, Vec<u8>)>,
    /// No first head within [`Limits::first_head`]: to be answered 408.
    pub first_head_timed_out: bool,
}

/// Serves `client`, whose first bytes are `prefix`, until it closes, fails, breaks a rule, a
/// time limit passes or `abort` fires; `service` answers each request, and what it gives
/// `drivers` runs beside it.
pub(crate) async fn serve<S, F, Fut>(
    client: &mut S,
    prefix: Vec<u8>,
    service: F,
    drivers: &Drivers,
    limits: Limits,
    abort: &CancellationToken,
    tally: &Tally,
) -> Served
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request<Incoming>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, Infallible>>,
{
    let verdict = Verdict::default();
    let first_seen = AtomicBool::new(limits.first_head.is_none());
    let io = Counted {
        inner: Heads::new(client, prefix, &verdict),
        tally,
    };
    let service = hyper::service::service_fn(|request| {
        first_seen.store(true, Ordering::Relaxed);
        service(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEAD.max(8192) * 4);
    if let Some(idle) = limits.idle {
        builder.header_read_timeout(idle);
    }
    let served = builder.serve_connection(TokioIo::new(io), service);
    let mut served = std::pin::pin!(served);
    // A refused head: hyper finishes the request before it, then stops.
    let ended = async {
        tokio::select! {
            result = served.as_mut() => return result,
            () = verdict.wait() => {}
        }
        served.as_mut().graceful_shutdown();
        served.await
    };
    let first_head_late = async {
        match limits.first_head {
            Some(within) => {
                tokio::time::sleep(within).await;
                if first_seen.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let mut first_head_timed_out = false;
    let (end, detail) = tokio::select! {
        result = ended => match result {
            Ok(()) => (End::ClientClose, String::new()),
            Err(e) if e.is_timeout() => (
                End::IdleTimeout,
                format!(
                    "no request head within {:?}",
                    limits.idle.unwrap_or_default()
                ),
            ),
            Err(e) if e.is_incomplete_message() => (End::ClientClose, format!("client: {e}")),
            Err(e) => (End::ClientReset, format!("client: {e}")),
        },
        () = first_head_late => {
            first_head_timed_out = true;
            (
                End::Refused,
                format!(
                    "request head not complete within {:?}",
                    limits.first_head.unwrap_or_default()
                ),
            )
        }
        () = abort.cancelled() => (End::Shutdown, "cut at shutdown".to_owned()),
        () = std::future::poll_fn(|cx| drivers.poll_all(cx)) => unreachable_end(),
    };
    let refused = verdict.refused().cloned().filter(|_| end != End::Shutdown);
    Served {
        end,
        detail,
        refused,
        first_head_timed_out,
    }
}

/// An answer the proxy owes the client when serving ended (see [`Served::owed`]).
struct Owed {
    pub status: StatusCode,
    /// The head's method and path as far as its request line reads ([`request_line`]).
    pub method: String,
    pub origin: String,
    pub why: String,
}

impl Served {
    /// The answer owed: 400 or 431 for a refused head, 408 when the first head was late.
    fn owed(&self) -> Option<Owed> {
        if let Some((error, head)) = &self.refused {
            let status = match error {
                RequestError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                RequestError::Malformed(_) | RequestError::Duplicate(_) => StatusCode::BAD_REQUEST,
            };
            let (method, origin) = request_line(head);
            let why = error.to_string();
            return Some(Owed {
                status,
                method,
                origin,
                why,
            });
        }
        self.first_head_timed_out.then(|| Owed {
            status: StatusCode::REQUEST_TIMEOUT,
            method: String::new(),
            origin: "/".to_owned(),
            why: self.detail.clone(),
        })
    }
}

/// How a served connection ends, for its log line, once the answer it owed is written.
pub(crate) struct Concluded {
    pub end: End,
    pub detail: String,
    /// The status of the proxy's own answer to a refused or late head, if it owed one.
    pub answered: Option<u16>,
}

impl Served {
    /// Writes the answer owed ([`Served::owed`]), if any - its bytes made by `text` from its
    /// status and why, counted in `metrics` when its head named a method and in `requests` -
    /// and says how the connection ended.
    pub(crate) async fn conclude<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        client: S,
        text: impl FnOnce(StatusCode, &str) -> String,
        metrics: Option<&RequestMetrics>,
        tally: &Tally,
        requests: &mut u64,
    ) -> Concluded {
        let Some(owed) = self.owed() else {
            return Concluded {
                end: self.end,
                detail: self.detail,
                answered: None,
            };
        };
        let status = owed.status.as_u16();
        if let Some(metrics) = metrics
            && !owed.method.is_empty()
        {
            metrics.start(&owed.method, &owed.origin).finish(status);
        }
        answer(client, &text(owed.status, &owed.why), tally).await;
        *requests += 1;
        Concluded {
            end: End::Refused,
            detail: format!("request {requests}: {}", owed.why),
            answered: Some(status),
        }
    }
}

/// [`Drivers::poll_all`] is never ready; a select arm still needs a value.
fn unreachable_end() -> (End, String) {
    (End::Error, "upstream drivers ended".to_owned())
}

/// The method and target path of a refused head, as far as its request line reads, for the
/// metrics' labels (which bound them): an absolute-form target's path, an origin-form one as it
/// is, else `/`.
pub(crate) fn request_line(head: &[u8]) -> (String, String) {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let method = words.next().unwrap_or_default().to_owned();
    let origin = match words.next() {
        Some(target) if target.starts_with('/') => target.to_owned(),
        Some(target) => absolute::parse(target).map_or_else(|_| "/".to_owned(), |a| a.origin),
        None => "/".to_owned(),
    };
    (method, origin)
}

/// How long an answer the proxy writes itself may take to write, and how long the client then
/// gets to read it and close (see [`linger_close`]).
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes an answer the proxy wrote itself, counted in `tally`, then closes gently
/// ([`linger_close`]).
pub(crate) async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    text: &str,
    tally: &Tally,
) {
    if tokio::time::timeout(ANSWER_TIMEOUT, client.write_all(text.as_bytes()))
        .await
        .is_ok_and(|written| written.is_ok())
    {
        tally.add_down(text.len() as u64);
    }
    linger_close(client).await;
}

/// Closes after an error answer without resetting it away: closing a socket with unread bytes
/// (say, a pipelined ClientHello) sends a RST, and a RST can discard the answer before the
/// client reads it. So: shut down the write side (a TLS close_notify, then a FIN after the
/// answer), discard what the client sends until it closes, at most [`ANSWER_TIMEOUT`] and
/// 1 MiB, then close.
pub(crate) async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(mut client: S) {
    const MAX_DISCARD: usize = 1 << 20;
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, client.shutdown()).await;
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        let mut discarded = 0;
        while discarded < MAX_DISCARD {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

/// The client stream, counting what it carries in a [`Tally`].
struct Counted<'a, S> {
    inner: S,
    tally: &'a Tally,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.tally.add_up(n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.tally.add_down(n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.tally.add_down(n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
