//! One HTTP/1.x request head, as a forward proxy needs it: the method, the CONNECT target and
//! the `Proxy-Authorization` value. Parsing is httparse's; this file only gives the result
//! its meaning and its limits.
//!
//! The file depends on std and httparse only: the fuzz crate (`fuzz/`) compiles this very file
//! into its target, without the rest of the daemon.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The largest request head accepted (request line and headers, with the blank line). Agents
/// send a CONNECT of a few hundred bytes; Squid's default `request_header_max_size` is 64 KiB,
/// which a CONNECT never needs.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines accepted.
pub const MAX_HEADERS: usize = 64;

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method as sent (`CONNECT` is case-sensitive, RFC 9110 section 9.1).
    pub method: String,
    /// The CONNECT target; `None` for other methods, whose target is not looked at.
    pub target: Option<Target>,
    /// The raw value of `Proxy-Authorization`, when present (the last one wins).
    pub authorization: Option<Vec<u8>>,
    /// Bytes of the head, blank line included: what the caller consumes from the socket.
    /// Whatever follows (a pipelined TLS ClientHello) belongs to the tunnel.
    pub head_len: usize,
}

/// Why a head is refused; each maps to one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not HTTP/1.x, or a CONNECT target that is not `host:port` (400).
    Malformed(String),
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines without being complete (431).
    TooLarge,
}

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read more (unless `buf` is
/// already [`MAX_HEAD`] long, which gives [`RequestError::TooLarge`]).
pub fn parse(buf: &[u8]) -> Result<Option<Request>, RequestError> {
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
    // Complete implies method and path were parsed.
    let method = request.method.unwrap_or_default().to_owned();
    let path = request.path.unwrap_or_default();
    let target = if method == "CONNECT" {
        Some(Target::parse(path).map_err(RequestError::Malformed)?)
    } else {
        None
    };
    let authorization = request
        .headers
        .iter()
        .rev()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|h| h.value.to_vec());
    Ok(Some(Request {
        method,
        target,
        authorization,
        head_len,
    }))
}

/// What a peek at the client's receive queue found: every peek sees the queue from its start,
/// so `bytes` is everything the client has sent so far.
#[derive(Debug, Clone, Copy)]
pub enum Peeked<'a> {
    /// The bytes queued; `closed` when the client's FIN has arrived (nothing more will come).
    Bytes { bytes: &'a [u8], closed: bool },
    /// The client reset the connection (or the socket failed).
    Reset,
}

/// What the head reader does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
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
pub fn step(peeked: Peeked<'_>) -> Step {
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

/// The destination of a CONNECT request: `host:port` (RFC 9110 section 9.3.6, authority-form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: TargetHost,
    pub port: u16,
}

/// The host part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// An IPv4 literal or a bracketed IPv6 literal.
    Ip(IpAddr),
    /// A DNS name, lower-cased, without its trailing dot.
    Name {
        name: String,
        /// It was sent with a trailing dot (fully qualified: never extended with search
        /// domains). Newer Datadog agents send `intake.datadoghq.com.:443`.
        fqdn: bool,
    },
}

impl Target {
    /// Parses `host:port`, `[v6]:port`. The port is required (CONNECT has no default).
    pub fn parse(text: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("invalid CONNECT target {:?}: {why}", clip(text));
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected a port 1-65535"));
        }
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("expected a port 1-65535")),
            Ok(port) => port,
        };
        let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            match inner.parse::<Ipv6Addr>() {
                Ok(ip) => TargetHost::Ip(IpAddr::V6(ip)),
                Err(_) => return Err(bad("expected an IPv6 address in brackets")),
            }
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            TargetHost::Ip(IpAddr::V4(ip))
        } else {
            let (name, fqdn) = match host.strip_suffix('.') {
                Some(name) => (name, true),
                None => (host, false),
            };
            if !plausible_name(name) {
                return Err(bad("expected a DNS name, an IPv4 address or [IPv6]"));
            }
            TargetHost::Name {
                name: name.to_ascii_lowercase(),
                fqdn,
            }
        };
        Ok(Target { host, port })
    }
}

/// Whether `name` can be a DNS name worth resolving: 1-253 bytes of letters, digits, `-` and
/// `_` (SRV-style labels exist) in non-empty labels of at most 63. Whether it is *allowed* is
/// the destination policy's question, against names the config validated strictly.
fn plausible_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// At most 64 characters of a client-supplied string, for error messages.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            TargetHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
            TargetHost::Name { name, fqdn } => {
                let dot = if *fqdn { "." } else { "" };
                write!(f, "{name}{dot}:{}", self.port)
            }
        }
    }
}
