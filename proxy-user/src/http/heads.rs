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
        self.stopped(stop);
    }

    /// Records why the scanner stopped, if it did.
    fn stopped(&mut self, stop: Option<Stop>) {
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
            // Nothing held back: read straight into hyper's buffer, and keep back only what
            // the scanner cannot pass yet (an incomplete head), so that a body crosses this
            // stream without a copy.
            if this.pending.is_empty() && out.remaining() > 0 {
                let before = out.filled().len();
                match Pin::new(&mut this.inner).poll_read(cx, out) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let read = &out.filled()[before..];
                if read.is_empty() {
                    this.eof = true;
                    continue;
                }
                let (n, stop) = this.scanner.advance(read);
                if n < read.len() {
                    this.pending.extend_from_slice(&read[n..]);
                    out.set_filled(before + n);
                }
                this.stopped(stop);
                if n > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// A client that sends its bytes in the given pieces, one per read, then closes.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Reads the stream to its end in reads of `size` bytes: what hyper would get.
    async fn through(pieces: &[&[u8]], size: usize) -> (Vec<u8>, Verdict) {
        let verdict = Verdict::default();
        let client = Pieces(
            pieces
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| p.to_vec())
                .collect(),
        );
        let mut heads = Heads::new(client, Vec::new(), &verdict);
        let mut got = Vec::new();
        let mut buf = vec![0u8; size];
        loop {
            let read =
                tokio::time::timeout(std::time::Duration::from_millis(100), heads.read(&mut buf))
                    .await;
            match read {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("read failed: {e}"),
            }
        }
        (got, verdict)
    }

    /// Bodies go straight through; a head split across reads is passed on only once whole and
    /// checked, and a refused head is never passed on, whatever the read sizes.
    #[tokio::test]
    async fn heads_pass_whole_and_checked_bodies_straight() {
        let first = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let second = b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        let stream = [&first[..], &second[..]].concat();
        for size in [1, 7, 64, 4096] {
            for cut in [0, 10, first.len() - 2, first.len() + 5, stream.len()] {
                let (got, verdict) = through(&[&stream[..cut], &stream[cut..]], size).await;
                assert_eq!(got, stream, "size {size}, cut {cut}");
                assert!(verdict.refused().is_none());
            }
        }
        let smuggled = b"GET /c HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        let stream = [&first[..], &smuggled[..]].concat();
        for size in [1, 64, 4096] {
            for cut in [first.len() - 2, first.len() + 5] {
                let (got, verdict) = through(&[&stream[..cut], &stream[cut..]], size).await;
                assert_eq!(
                    got, first,
                    "size {size}, cut {cut}: only the first request passes"
                );
                assert!(verdict.refused().is_some());
            }
        }
    }
}
