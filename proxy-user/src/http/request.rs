//! One HTTP/1.x request head, as a forward proxy needs it: the method, the CONNECT target or
//! the absolute-form `http://` target, and the `Proxy-Authorization` value. Parsing is
//! httparse's; this file only gives the result its meaning and its limits, and refuses the
//! heads that two readers could frame differently (request smuggling, [`framing`]).
//!
//! The file depends on std, httparse, thiserror, [`crate::destination`]'s target and
//! [`crate::http::absolute`] only: the fuzz crate (`fuzz/`) compiles this very file into its
//! targets, without the rest of the daemon.

use crate::destination::Target;
use crate::http::absolute::{self, Absolute};

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
/// and an agent sends each of these once. A repeated `Transfer-Encoding` is a list a proxy
/// would have to merge; no client sends one.
pub(crate) const SINGLE_HEADERS: [&str; 4] = [
    "Host",
    "Content-Length",
    "Proxy-Authorization",
    "Transfer-Encoding",
];

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The method as sent (`CONNECT` is case-sensitive, RFC 9110 section 9.1).
    pub method: String,
    /// The CONNECT target; `None` for other methods.
    pub target: Option<Target>,
    /// The absolute-form `http://` target of another method (a plain request to forward);
    /// `None` for CONNECT and for any other form.
    pub absolute: Option<Absolute>,
    /// The raw value of `Proxy-Authorization`, when present (a head with two is refused).
    pub authorization: Option<Vec<u8>>,
    /// How the body that follows the head ends.
    pub framing: Framing,
    /// Bytes of the head, blank line included: what the caller consumes from the socket.
    /// Whatever follows (a pipelined TLS ClientHello) belongs to the tunnel.
    pub head_len: usize,
}

/// Where the body behind a head ends (RFC 9112 section 6.3, for a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    Empty,
    /// `Content-Length: N`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a head is refused; each maps to one answer, whose body is this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// Not HTTP/1.x, a CONNECT target that is not `host:port`, or framing two readers could
    /// disagree on ([`framing`]) (400).
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
    let framing = framing(&buf[..head_len], headers, request.version == Some(0))
        .map_err(|why| RequestError::Malformed(why.to_owned()))?;
    // Complete implies method and path were parsed.
    let method = request.method.unwrap_or_default().to_owned();
    let path = request.path.unwrap_or_default();
    let (target, absolute) = if method == "CONNECT" {
        (
            Some(Target::parse(path).map_err(RequestError::Malformed)?),
            None,
        )
    } else {
        (None, absolute::parse(path).ok())
    };
    let authorization = named(headers, "proxy-authorization")
        .next()
        .map(|h| h.value.to_vec());
    Ok(Some(Request {
        method,
        target,
        absolute,
        authorization,
        framing,
        head_len,
    }))
}

/// Refuses a head whose body framing two HTTP readers could read differently - the proxy and
/// the server behind it, or the proxy's two parsers (this one and hyper's) - which is how a
/// request is smuggled past checks (RFC 9112 sections 2.2, 5.2, 6.1, 6.3, 11.2):
/// - a line ended by a bare LF (httparse accepts it, other readers do not);
/// - both `Content-Length` and `Transfer-Encoding` (hyper would take the latter);
/// - a `Content-Length` that is not a plain decimal number;
/// - a `Transfer-Encoding` other than `chunked`, or one in an HTTP/1.0 request.
///
/// A folded header line (obs-fold) and a repeated `Content-Length` are refused before this:
/// httparse rejects the one in a request, [`SINGLE_HEADERS`] the other.
///
/// What is left is one reading, which this returns.
fn framing(
    head: &[u8],
    headers: &[httparse::Header<'_>],
    http10: bool,
) -> Result<Framing, &'static str> {
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Err("invalid request: a line ends with a bare LF");
    }
    let length = named(headers, "content-length").next();
    let encoding = named(headers, "transfer-encoding").next();
    let mut framing = Framing::Empty;
    if let Some(length) = length {
        let value = length.value.trim_ascii();
        // 18 digits always fit a u64.
        if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
            return Err("invalid request: invalid Content-Length");
        }
        framing = Framing::Length(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')));
    }
    if let Some(encoding) = encoding {
        if length.is_some() {
            return Err("invalid request: both Content-Length and Transfer-Encoding");
        }
        if http10 {
            return Err("invalid request: Transfer-Encoding in an HTTP/1.0 request");
        }
        if !encoding.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err("invalid request: a Transfer-Encoding other than chunked");
        }
        framing = Framing::Chunked;
    }
    Ok(framing)
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
