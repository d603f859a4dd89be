//! Looking at what a client sent first without consuming it: the CONNECT head reader and the
//! transparent mode's SNI/Host sniffer both decide from the bytes queued in the socket, and
//! whatever they do not take stays queued, in order, for the data path.

use std::io;
use std::os::fd::AsRawFd as _;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// What one peek found; every peek sees the receive queue from its start.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seen<'a> {
    /// Everything the client has sent so far; `closed` when its FIN has arrived (nothing more
    /// will come).
    Bytes { bytes: &'a [u8], closed: bool },
    /// The client reset the connection (or the socket failed).
    Reset,
}

/// The client closed (FIN) and the decision still waited for more: nothing more can come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stalled {
    /// Bytes the client had sent.
    pub sent: usize,
}

/// Peeks at `client` into `buf` until `decide` returns a value. `decide` is called after every
/// peek that found more than the last one, and once the client has closed or reset;
/// `None` means "wait for more bytes".
///
/// A peek that finds no more bytes than the last one returns `WouldBlock` inside `try_io`,
/// which clears tokio's readiness so that the next wait sleeps until the client sends more.
/// Tokio never clears a *closed* readiness (it is final), so once the client has sent its FIN
/// every wait returns at once: a decision that still waits then is answered with [`Stalled`]
/// instead of waiting, which would spin without ever returning `Pending` (issue 21: one
/// client that sent `C` and closed froze the daemon). The caller bounds the whole with its
/// own timeout.
pub(crate) async fn until<T>(
    client: &TcpStream,
    buf: &mut [u8],
    mut decide: impl FnMut(Seen<'_>) -> Option<T>,
) -> Result<T, Stalled> {
    let mut seen = 0;
    loop {
        let closed = match client.ready(Interest::READABLE).await {
            Ok(ready) => ready.is_read_closed(),
            Err(e) => {
                tracing::debug!(error = %e, "client failed before it was read");
                return decide(Seen::Reset).ok_or(Stalled { sent: seen });
            }
        };
        let got = client.try_io(Interest::READABLE, || {
            let n = peek(client, buf)?;
            if n == seen && !closed && n != 0 && n < buf.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let found = match got {
            Ok(n) => {
                seen = n;
                Seen::Bytes {
                    bytes: &buf[..n],
                    // A peek of 0 bytes is end-of-stream.
                    closed: closed || n == 0,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Belt and braces: a wait that keeps returning at once must still let the
                // timeout and the other tasks of this worker run.
                tokio::task::consume_budget().await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "client failed before it was read");
                Seen::Reset
            }
        };
        let last = match found {
            Seen::Bytes { closed, .. } => closed,
            Seen::Reset => true,
        };
        match decide(found) {
            Some(value) => return Ok(value),
            None if last => return Err(Stalled { sent: seen }),
            None => {}
        }
    }
}

/// `recv(MSG_PEEK)` on a non-blocking socket.
fn peek(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes, the fd is open for the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
