//! The client stream of plain requests ([`super::serve`]) as hyper's server reads it: every
//! request head of the connection passes [`super::request::parse`]'s checks - the same as the first
//! head and a CONNECT's - before hyper sees a byte of it.
//!
//! hyper reads a kept-alive connection's later heads itself, and more leniently than the first
//! (a bare LF, both `Content-Length` and `Transfer-Encoding`, two equal `Content-Length`s pass
//! it). So the stream finds where each head starts ([`super::scan`]) and hands a head over
//! only once it is complete and checked - hyper still decodes every body it forwards. A refused
//! head stops the stream there ([`Verdict`]): hyper gets no byte of it, so nothing of it is
//! forwarded, and the owner answers 400 or 431 once hyper has finished the request before it. A chunked body whose framing is
//! broken cuts the connection (an I/O error to hyper, which aborts the request upstream).

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::request::RequestError;
use super::scan::{Scanner, Stop};

/// How much is read from the client at a time.
const READ_SIZE: usize = 16 * 1024;

/// What the stream found, for its owner: the head it stopped at, if any, and the wake-up
/// telling it so.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    refused: OnceLock<(RequestError, Vec<u8>)>,
    notify: Notify,
}

impl Verdict {
    /// The refused head: why, and its first bytes.
    pub(crate) fn refused(&self) -> Option<&(RequestError, Vec<u8>)> {
        self.refused.get()
    }

    /// Waits until a head is refused.
    pub(crate) async fn wait(&self) {
        if self.refused.get().is_none() {
            self.notify.notified().await;
        }
    }
}

/// The checked client stream (see the module doc).
pub(crate) struct Heads<'a, S> {
    inner: S,
    /// Bytes read from the client, not yet given to hyper; the first `checked` of them may be.
    pending: Vec<u8>,
    checked: usize,
    scanner: Scanner,
    /// The client's end of stream was read.
    eof: bool,
    /// A chunked body's framing was broken: the error the reads end with.
    broken: Option<&'static str>,
    verdict: &'a Verdict,
}

impl<'a, S> Heads<'a, S> {
    /// The stream over `inner`, whose first bytes are `prefix`: bytes already read from the
    /// client (a TLS client's first head, read to decide what the connection is).
    pub(crate) fn new(inner: S, prefix: Vec<u8>, verdict: &'a Verdict) -> Self {
        let mut heads = Self {
            inner,
            pending: prefix,
            checked: 0,
            scanner: Scanner::default(),
            eof: false,
            broken: None,
            verdict,
        };
        if !heads.pending.is_empty() {
            heads.scan();
        }
        heads
    }

    /// Runs the scanner over the pending bytes, after more came in.
    fn scan(&mut self) {
        let (n, stop) = self.scanner.advance(&self.pending);
        self.checked = n;
        match stop {
            None => {}
            Some(Stop::Body(why)) => self.broken = Some(why),
            Some(Stop::Head { error, head }) => {
                let _ = self.verdict.refused.set((error, head));
                self.verdict.notify.notify_one();
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Heads<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.checked > 0 {
                let n = this.checked.min(out.remaining());
                out.put_slice(&this.pending[..n]);
                this.pending.drain(..n);
                this.checked -= n;
                return Poll::Ready(Ok(()));
            }
            if let Some(why) = this.broken {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
            }
            // Nothing more for hyper: its owner ends the connection once the request before
            // is answered.
            if this.verdict.refused.get().is_some() {
                return Poll::Pending;
            }
            // An incomplete head at the end is dropped: hyper sees the client close.
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_SIZE];
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => {
                    this.pending.extend_from_slice(buf.filled());
                    this.scan();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Heads<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Left open after a refused head: the owner writes the answer, then closes.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.verdict.refused.get().is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
