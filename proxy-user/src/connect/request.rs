//! One HTTP/1.x request head, as a forward proxy needs it: the method, the CONNECT target and
//! the `Proxy-Authorization` value. Parsing is httparse's; this file only gives the result
//! its meaning and its limits.
//!
//! The file depends on std, httparse, thiserror and [`crate::destination`]'s target only: the
//! fuzz crate (`fuzz/`) compiles this very file into its target, without the rest of the daemon.

use crate::destination::Target;

/// The largest request head accepted (request line and headers, with the blank line). Agents
/// send a CONNECT of a few hundred bytes; Squid's default `request_header_max_size` is 64 KiB,
/// which a CONNECT never needs.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// The most header lines accepted.
pub(crate) const MAX_HEADERS: usize = 64;
/// Headers a head may carry at most once (names compared case-insensitively). Two of them are
/// ambiguous: which one counts is up to each reader, and a reader that disagrees with the proxy
/// is how requests get smuggled past it (a wrong `Proxy-Authorization` followed by a right one
/// was accepted before, issue 16). RFC 9112 section 3.2 answers two `Host` lines with 400, and
/// section 6.3 makes an invalid `Content-Length` (such as two differing values) an unrecoverable
/// error; the proxy refuses every repeat, equal values included, since a CONNECT has no content
/// and an agent sends each of these once.
pub(crate) const SINGLE_HEADERS: [&str; 3] = ["Host", "Content-Length", "Proxy-Authorization"];

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The method as sent (`CONNECT` is case-sensitive, RFC 9110 section 9.1).
    pub method: String,
    /// The CONNECT target; `None` for other methods, whose target is not looked at.
    pub target: Option<Target>,
    /// The raw value of `Proxy-Authorization`, when present (a head with two is refused).
    pub authorization: Option<Vec<u8>>,
    /// Bytes of the head, blank line included: what the caller consumes from the socket.
    /// Whatever follows (a pipelined TLS ClientHello) belongs to the tunnel.
    pub head_len: usize,
}

/// Why a head is refused; each maps to one answer, whose body is this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// Not HTTP/1.x, or a CONNECT target that is not `host:port` (400).
    #[error("{0}")]
    Malformed(String),
    /// One of [`SINGLE_HEADERS`] (the name as written there) appears more than once (400).
    #[error("duplicate {0} header")]
    Duplicate(&'static str),
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines without being complete (431).
    #[error("request head over {MAX_HEAD} bytes or {MAX_HEADERS} header lines")]
    TooLarge,
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read more (unless `buf` is
/// already [`MAX_HEAD`] long, which gives [`RequestError::TooLarge`]).
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Request>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Err(RequestError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(RequestError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooLarge),
        Err(e) => return Err(RequestError::Malformed(format!("invalid request: {e}"))),
    };
    let headers = &*request.headers;
    if let Some(name) = SINGLE_HEADERS
        .into_iter()
        .find(|name| named(headers, name).nth(1).is_some())
    {
        return Err(RequestError::Duplicate(name));
    }
    // Complete implies method and path were parsed.
    let method = request.method.unwrap_or_default().to_owned();
    let path = request.path.unwrap_or_default();
    let target = if method == "CONNECT" {
        Some(Target::parse(path).map_err(RequestError::Malformed)?)
    } else {
        None
    };
    let authorization = named(headers, "proxy-authorization")
        .next()
        .map(|h| h.value.to_vec());
    Ok(Some(Request {
        method,
        target,
        authorization,
        head_len,
    }))
}

/// The headers called `name` (compared case-insensitively), in order.
fn named<'a, 'h>(
    headers: &'a [httparse::Header<'h>],
    name: &'a str,
) -> impl Iterator<Item = &'a httparse::Header<'h>> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
}

/// What a peek at the client's receive queue found: every peek sees the queue from its start,
/// so `bytes` is everything the client has sent so far.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peeked<'a> {
    /// The bytes queued; `closed` when the client's FIN has arrived (nothing more will come).
    Bytes { bytes: &'a [u8], closed: bool },
    /// The client reset the connection (or the socket failed).
    Reset,
}

/// What the head reader does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// A complete head: consume exactly `head_len` bytes and go on.
    Complete(Request),
    /// A head that can only be refused (400, 431).
    Refuse(RequestError),
    /// Incomplete and the client can still send: wait for more bytes.
    Wait,
    /// The client closed before its head was complete (`reset`: or reset it). Never waited
    /// for: a closed socket stays readable forever, so waiting would spin.
    Gone { reset: bool, sent: usize },
}

/// The head reader's decision after one peek. The one property the daemon's liveness rests on:
/// it answers [`Step::Wait`] only while the client can still send (the fuzz target checks it).
pub(crate) fn step(peeked: Peeked<'_>) -> Step {
    let (bytes, closed) = match peeked {
        Peeked::Reset => {
            return Step::Gone {
                reset: true,
                sent: 0,
            };
        }
        Peeked::Bytes { bytes, closed } => (bytes, closed),
    };
    match parse(bytes) {
        Ok(Some(request)) => Step::Complete(request),
        Err(e) => Step::Refuse(e),
        Ok(None) if closed => Step::Gone {
            reset: false,
            sent: bytes.len(),
        },
        Ok(None) => Step::Wait,
    }
}
