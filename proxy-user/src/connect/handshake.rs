//! The client side of the handshake (reading the head without taking more than the head) and
//! the upstream side (resolving and dialing the destination).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::destination::{Target, TargetHost};
use crate::http::request::{self, MAX_HEAD, Peeked, Request, RequestError, Step};
use crate::peek::{self, Seen};
use crate::{
    dial::DialError,
    dns::{Dns, ResolveError},
    report::error_chain,
};

/// How reading the head failed.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// A bad head: answered 400 or 431.
    Request(RequestError),
    /// Not complete within the request timeout: answered 408.
    Timeout,
    /// The client closed (or, with `reset`, reset or failed) before sending a whole head:
    /// nothing to answer.
    Gone { reset: bool, detail: String },
}

/// Reads one request head from `client` and, for a CONNECT, consumes exactly its bytes: whatever the client
/// sent behind it (a pipelined TLS ClientHello) stays in the socket's receive queue, in order,
/// for the tunnel - the kernel path forwards bytes queued before the splice.
///
/// The head is read with `MSG_PEEK` ([`peek::until`]) until httparse reports it complete;
/// [`request::step`] decides after each peek, and never waits for a client that has closed.
pub(crate) async fn read_head(
    client: &mut TcpStream,
    within: Duration,
) -> Result<Request, HeadError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let decided = tokio::time::timeout(
        within,
        peek::until(client, &mut buf, |seen| {
            let peeked = match seen {
                Seen::Bytes { bytes, closed } => Peeked::Bytes { bytes, closed },
                Seen::Reset => Peeked::Reset,
            };
            match request::step(peeked) {
                Step::Wait => None,
                step => Some(step),
            }
        }),
    )
    .await
    .map_err(|_| HeadError::Timeout)?;
    // `step` never waits for a closed client, so a stall is only a closed one (and the
    // closure never returns `Wait`).
    let (reset, sent) = match decided {
        // A CONNECT's head is consumed: what follows belongs to the tunnel. Any other head
        // stays queued for the HTTP server that reads it again (`super::forward`).
        Ok(Step::Complete(request)) => {
            if request.target.is_some() {
                client
                    .read_exact(&mut buf[..request.head_len])
                    .await
                    .map_err(gone)?;
            }
            return Ok(request);
        }
        Ok(Step::Refuse(e)) => return Err(HeadError::Request(e)),
        Ok(Step::Gone { reset, sent }) => (reset, sent),
        Ok(Step::Wait) => (false, 0),
        Err(stalled) => (false, stalled.sent),
    };
    Err(HeadError::Gone {
        reset,
        detail: gone_detail(reset, sent).into(),
    })
}

/// Reads one request head from a stream that cannot be peeked at (a TLS session): what was
/// read comes back with the request, the head and whatever the client sent behind it (bytes
/// for the tunnel, or the start of a plain request's body), for the caller to pass on.
pub(crate) async fn read_head_from<S: AsyncRead + Unpin>(
    client: &mut S,
    within: Duration,
) -> Result<(Request, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(4096);
    let read = async {
        let mut chunk = vec![0u8; 4096];
        loop {
            let (n, reset) = match client.read(&mut chunk).await {
                Ok(n) => (n, false),
                Err(_) => (0, true),
            };
            buf.extend_from_slice(&chunk[..n]);
            let peeked = if reset {
                Peeked::Reset
            } else {
                Peeked::Bytes {
                    bytes: &buf,
                    closed: n == 0,
                }
            };
            match request::step(peeked) {
                Step::Wait => {}
                step => return step,
            }
        }
    };
    let step = tokio::time::timeout(within, read)
        .await
        .map_err(|_| HeadError::Timeout)?;
    match step {
        Step::Complete(request) => Ok((request, buf)),
        Step::Refuse(e) => Err(HeadError::Request(e)),
        // The loop returns every step but `Wait`.
        Step::Gone { reset, sent } => Err(HeadError::Gone {
            reset,
            detail: gone_detail(reset, sent).into(),
        }),
        Step::Wait => Err(HeadError::Gone {
            reset: false,
            detail: gone_detail(false, 0).into(),
        }),
    }
}

/// Why there is no head to answer.
fn gone_detail(reset: bool, sent: usize) -> &'static str {
    match (reset, sent) {
        (true, _) => "client reset the connection during its request",
        (false, 0) => "client closed without a request",
        (false, _) => "client closed in the middle of its request",
    }
}

/// Copies what the client sent behind its head (a pipelined ClientHello) to the upstream,
/// until the client socket's receive queue is empty; returns the byte count.
///
/// Why not leave those bytes queued for the kernel path: the head was consumed with
/// `read_exact`, which can stop in the middle of a socket buffer (skb), and when a socket joins
/// the sockmap the verdict runs over whole queued buffers, the consumed part included - the
/// upstream then received the head twice (seen on 6.18 in the end-to-end test). After this,
/// every buffer touched by userspace is fully read: a read shorter than the buffer means the
/// queue was empty.
pub(crate) async fn forward_early_bytes(
    client: &TcpStream,
    upstream: &mut TcpStream,
) -> Result<usize, String> {
    /// A client that keeps streaming before it has seen a byte from the destination is
    /// not an agent; past this it is cut.
    const MAX_EARLY: usize = 4 << 20;
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0;
    loop {
        let n = match client.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(copied),
            Err(e) => return Err(format!("client: {e}")),
        };
        if n == 0 {
            return Ok(copied);
        }
        upstream
            .write_all(&buf[..n])
            .await
            .map_err(|e| format!("upstream: {e}"))?;
        copied += n;
        if n < buf.len() {
            return Ok(copied);
        }
        if copied > MAX_EARLY {
            return Err(format!(
                "client sent over {MAX_EARLY} bytes before the tunnel was up"
            ));
        }
    }
}

fn gone(e: io::Error) -> HeadError {
    HeadError::Gone {
        reset: true,
        detail: format!("client: {e}"),
    }
}

/// The addresses of a destination: literals as they are, names through the daemon's shared
/// DNS cache ([`Dns::resolve`]). A trailing dot is kept: it stops the resolver from trying
/// search domains.
pub(crate) async fn resolve(dns: &Dns, target: &Target) -> Result<Vec<SocketAddr>, ResolveError> {
    match &target.host {
        TargetHost::Ip(ip) => Ok(vec![SocketAddr::new(*ip, target.port)]),
        TargetHost::Name { name, fqdn } => {
            let dot = if *fqdn { "." } else { "" };
            dns.resolve(&format!("{name}{dot}"), target.port).await
        }
    }
}

/// How dialing the addresses of a destination failed. Its text is the 502/504 answer's (and
/// the log line's `detail`): `ADDR: ` and how the last attempt failed. That attempt's error is
/// written into the message, so it is not also a `source`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialFailed {
    /// Not reached: a resolution answers at least one address.
    #[error("no address to dial")]
    NoAddress,
    #[error("{addr}: {}", worded(.last))]
    Attempts {
        /// The last address tried.
        addr: SocketAddr,
        last: DialError,
        /// Every attempt timed out; otherwise at least one was refused or unreachable.
        timed_out: bool,
    },
}

impl DialFailed {
    /// Answered 504 (every attempt timed out) rather than 502.
    pub(crate) fn timed_out(&self) -> bool {
        matches!(
            self,
            DialFailed::Attempts {
                timed_out: true,
                ..
            }
        )
    }

    /// What dialing came to after one more failed attempt, at `addr`.
    fn then(self, addr: SocketAddr, last: DialError) -> Self {
        let timed_out = matches!(last, DialError::Timeout(_))
            && matches!(
                self,
                DialFailed::NoAddress
                    | DialFailed::Attempts {
                        timed_out: true,
                        ..
                    }
            );
        DialFailed::Attempts {
            addr,
            last,
            timed_out,
        }
    }
}

/// A CONNECT answer has always said "no answer within" for a timeout.
fn worded(last: &DialError) -> String {
    match last {
        DialError::Timeout(within) => format!("no answer within {within:?}"),
        other => error_chain(other),
    }
}

/// Dials `addrs` in order, each attempt bounded by `timeout`; the first that connects wins.
pub(crate) async fn dial(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialFailed> {
    let mut failed = DialFailed::NoAddress;
    for &addr in addrs {
        match tokio::time::timeout(timeout, crate::net::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => failed = failed.then(addr, DialError::from(e)),
            Err(_) => failed = failed.then(addr, DialError::Timeout(timeout)),
        }
    }
    Err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 502/504 choice and the answer's text, as they were when the detail was a string.
    #[test]
    fn dial_failures_read_as_before() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "192.0.2.1:443".parse().unwrap(),
            "192.0.2.2:443".parse().unwrap(),
        );
        let os = || io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let timeout = || DialError::Timeout(Duration::from_secs(5));

        let silent = DialFailed::NoAddress.then(a, timeout()).then(b, timeout());
        assert!(silent.timed_out(), "every attempt timed out: 504");
        assert_eq!(silent.to_string(), "192.0.2.2:443: no answer within 5s");

        let refused_then_silent = DialFailed::NoAddress
            .then(a, os().into())
            .then(b, timeout());
        assert!(!refused_then_silent.timed_out(), "one was refused: 502");
        assert_eq!(
            refused_then_silent.to_string(),
            "192.0.2.2:443: no answer within 5s"
        );

        let silent_then_refused = DialFailed::NoAddress
            .then(a, timeout())
            .then(b, os().into());
        assert!(!silent_then_refused.timed_out());
        assert_eq!(
            silent_then_refused.to_string(),
            format!("192.0.2.2:443: {}", os())
        );
    }
}
