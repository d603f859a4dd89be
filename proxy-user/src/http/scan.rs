//! Where each request of a client stream starts: [`Scanner`] follows the framing of each
//! message - the head, checked by [`request::parse`]; then its `Content-Length` body, or the
//! chunk-size lines, chunk ends and trailers of a chunked one - without decoding anything.
//! [`super::heads`] puts it under hyper's server so that every head of a kept-alive
//! connection is checked as the first one is.
//!
//! Strict where hyper may be lenient (a chunk-size or trailer line must end with CRLF): a
//! stream the scanner cannot follow is cut, never guessed at.
//!
//! The file depends on std and [`super::request`] only: the fuzz crate (`fuzz/`) compiles it
//! into its `http_request` target.

use super::request::{self, Framing, RequestError};

/// The longest chunk-size line or trailer line accepted; the trailers together are bounded
/// by [`request::MAX_HEAD`].
const MAX_LINE: usize = 4096;

/// Where in the message the scanner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a head.
    Head,
    /// In a `Content-Length` body: bytes left.
    Length(u64),
    /// At a chunk-size line.
    ChunkSize,
    /// In a chunk's data: bytes left.
    ChunkData(u64),
    /// At the CRLF that ends a chunk's data.
    ChunkEnd,
    /// In the trailer section: bytes of it so far.
    Trailers(usize),
}

/// Why the scanner stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A head that fails the checks (400, 431): `head` is its request line (at most 256
    /// bytes), for the metrics' method and api.
    Head { error: RequestError, head: Vec<u8> },
    /// A chunked body whose framing is broken.
    Body(&'static str),
}

/// Follows the framing of the requests in a client stream (see the module doc).
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
}

impl Default for Scanner {
    fn default() -> Self {
        Self { state: State::Head }
    }
}

impl Scanner {
    /// Goes over `bytes`, the client's bytes from where the scanner stands: how many of them
    /// are checked (complete heads that passed, body bytes, framing lines), and why it stopped
    /// if it did. The bytes after the checked ones are an incomplete head or line, to be given
    /// again with more behind them.
    pub(crate) fn advance(&mut self, bytes: &[u8]) -> (usize, Option<Stop>) {
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            match self.state {
                State::Head => match request::parse(rest) {
                    Ok(Some(head)) => {
                        pos += head.head_len;
                        self.state = match head.framing {
                            Framing::Empty | Framing::Length(0) => State::Head,
                            Framing::Length(n) => State::Length(n),
                            Framing::Chunked => State::ChunkSize,
                        };
                    }
                    Ok(None) => break,
                    Err(error) => {
                        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
                        let head = line[..line.len().min(256)].to_vec();
                        return (pos, Some(Stop::Head { error, head }));
                    }
                },
                State::Length(left) | State::ChunkData(left) => {
                    let take = left.min(rest.len() as u64);
                    pos += take as usize;
                    self.state = match (self.state, left - take) {
                        (State::Length(_), 0) => State::Head,
                        (State::Length(_), n) => State::Length(n),
                        (_, 0) => State::ChunkEnd,
                        (_, n) => State::ChunkData(n),
                    };
                }
                State::ChunkEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    if !rest.starts_with(b"\r\n") {
                        return (pos, Some(Stop::Body("chunk data not ended by CRLF")));
                    }
                    pos += 2;
                    self.state = State::ChunkSize;
                }
                State::ChunkSize | State::Trailers(_) => {
                    let line = match line(rest) {
                        Ok(Some(line)) => line,
                        Ok(None) => break,
                        Err(why) => return (pos, Some(Stop::Body(why))),
                    };
                    pos += line.len() + 2;
                    self.state = match self.state {
                        State::ChunkSize => match chunk_size(line) {
                            Ok(0) => State::Trailers(0),
                            Ok(n) => State::ChunkData(n),
                            Err(why) => return (pos, Some(Stop::Body(why))),
                        },
                        State::Trailers(_) if line.is_empty() => State::Head,
                        State::Trailers(seen) if seen + line.len() + 2 > request::MAX_HEAD => {
                            return (pos, Some(Stop::Body("trailer section too large")));
                        }
                        State::Trailers(seen) => State::Trailers(seen + line.len() + 2),
                        other => other,
                    };
                }
            }
        }
        (pos, None)
    }
}

/// The line at the start of `bytes` without its CRLF; `None` while incomplete.
fn line(bytes: &[u8]) -> Result<Option<&[u8]>, &'static str> {
    match bytes.iter().position(|&b| b == b'\n') {
        Some(end) if end > MAX_LINE => Err("chunk-size or trailer line too long"),
        Some(end) if end == 0 || bytes[end - 1] != b'\r' => {
            Err("chunk-size or trailer line ended by a bare LF")
        }
        Some(end) => Ok(Some(&bytes[..end - 1])),
        None if bytes.len() > MAX_LINE => Err("chunk-size or trailer line too long"),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`1a2b;ext=x`): 1 to 16 hex digits, then optional spaces and
/// tabs, then an optional extension.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size");
    }
    let after = &line[digits..];
    let ext = after.trim_ascii_start();
    if !(ext.is_empty() || ext.starts_with(b";")) || after.iter().any(|&b| b == b'\r' || b == 0) {
        return Err("invalid chunk size");
    }
    line[..digits].iter().try_fold(0u64, |n, &d| {
        let d = char::from(d).to_digit(16).ok_or("invalid chunk size")?;
        n.checked_mul(16)
            .map(|n| n + u64::from(d))
            .ok_or("invalid chunk size")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `stream` cut at every byte, as reads can deliver it: the checked prefix and the
    /// stop must not depend on the cuts.
    fn scan(stream: &[u8]) -> (usize, Option<Stop>) {
        let whole = Scanner::default().advance(stream);
        for cut in 1..stream.len() {
            let mut s = Scanner::default();
            let (first, stop) = s.advance(&stream[..cut]);
            if stop.is_some() {
                assert_eq!((first, stop.clone()), whole, "cut at {cut}");
                continue;
            }
            let (second, stop) = s.advance(&stream[first..]);
            assert_eq!((first + second, stop), whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        let stream = b"POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST http://a/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n3 \r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
            GET http://b/ HTTP/1.1\r\n\r\n";
        assert_eq!(scan(stream), (stream.len(), None));
        // An incomplete last head is not checked yet.
        let last = b"GET http://b/ HTTP/1.1\r\n\r\n".len();
        let (n, stop) = scan(&stream[..stream.len() - 3]);
        assert_eq!((n, stop), (stream.len() - last, None));
    }

    #[test]
    fn a_smuggled_head_behind_a_body_stops_the_stream() {
        let first = "POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        for (second, why) in [
            (
                "POST http://a/ HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both",
            ),
            (
                "POST http://a/ HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
                "Content-Length",
            ),
            ("GET http://a/ HTTP/1.1\nHost: a\n\n", "bare LF"),
            ("GET http://a/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "invalid"),
        ] {
            let stream = format!("{first}{second}0\r\n\r\n");
            match scan(stream.as_bytes()) {
                (n, Some(Stop::Head { error, head })) => {
                    assert_eq!(n, first.len(), "{second:?}");
                    assert!(error.to_string().contains(why), "{second:?}: {error}");
                    assert!(second.as_bytes().starts_with(&head[..head.len().min(20)]));
                }
                other => panic!("{second:?}: {other:?}"),
            }
        }
        let big = format!(
            "{first}GET http://a/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "b".repeat(20_000)
        );
        assert!(matches!(
            scan(big.as_bytes()),
            (n, Some(Stop::Head { error: RequestError::TooLarge, .. })) if n == first.len()
        ));
    }

    #[test]
    fn broken_chunked_framing_stops_the_stream() {
        let head = "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            "5\r\nhelloX\r\n",
            "g\r\n",
            "\r\n",
            "5\nhello\r\n",
            "12345678901234567\r\n",
            "5 x\r\nhello\r\n",
            "0\r\nX: 1\n\r\n",
        ] {
            let stream = format!("{head}{body}");
            assert!(
                matches!(scan(stream.as_bytes()), (_, Some(Stop::Body(_)))),
                "{body:?}"
            );
        }
        let long = format!("{head}{}", "1".repeat(MAX_LINE + 1));
        assert!(matches!(
            Scanner::default().advance(long.as_bytes()),
            (_, Some(Stop::Body(_)))
        ));
    }
}
