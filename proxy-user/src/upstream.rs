//! Dialing a backend pool for a mode that needs the upstream as a stream (TLS originated, or
//! HTTP requests forwarded): the TCP connect, with the TLS handshake as its last step when the
//! backend has `tls` - a failed handshake is counted and the next server tried, as a failed
//! connect is.
//!
//! Layer 4, beside [`crate::conn`]: modes use it (`tcp` with TLS, `reverse`).
use std::io;
use std::os::fd::{AsFd as _, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::Metrics;
use crate::net;
use crate::pool::{ConnectError, Lease, Pool};
use crate::relay::TcpUnder;
use crate::tls::ClientTls;

/// The upstream: a TCP socket, or the TLS session over one.
pub(crate) enum Dialed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Dials a server of `pool` (`TCP_NODELAY` set), with `tls` on it when given.
pub(crate) async fn dial(
    pool: &Pool,
    tls: Option<&ClientTls>,
    metrics: &Metrics,
) -> Result<(Dialed, Lease), ConnectError> {
    let Some(tls) = tls else {
        let (tcp, lease) = pool.connect().await?;
        let _ = net::set_nodelay(tcp.as_fd());
        return Ok((Dialed::Plain(tcp), lease));
    };
    let handshake_errors = &metrics.tls_handshake_errors_total;
    let (stream, lease) = pool
        .connect_with(|tcp, server| async move {
            let _ = net::set_nodelay(tcp.as_fd());
            tls.connect(tcp, &server.host).await.inspect_err(|e| {
                handshake_errors
                    .with_label_values(&["backend", pool.name.as_str(), e.reason()])
                    .inc();
            })
        })
        .await?;
    Ok((Dialed::Tls(Box::new(stream)), lease))
}

impl TcpUnder for Dialed {
    fn tcp(&self) -> BorrowedFd<'_> {
        match self {
            Dialed::Plain(tcp) => tcp.as_fd(),
            Dialed::Tls(tls) => tls.tcp(),
        }
    }
}

impl AsyncRead for Dialed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Dialed::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Dialed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Dialed::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Dialed::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Dialed::Plain(s) => s.is_write_vectored(),
            Dialed::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_flush(cx),
            Dialed::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Dialed::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Dialed::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
