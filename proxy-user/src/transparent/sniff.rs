//! What a transparent connection's first bytes say about where it is going: the TLS
//! ClientHello's SNI, or the plain-HTTP request's `Host`. Pure functions over the bytes peeked so
//! far; nothing here reads the socket.
//!
//! The ClientHello is parsed by rustls (its `Acceptor` reads a ClientHello and stops there), the
//! HTTP head by httparse: both are parsers that already face the internet.

/// The most bytes looked at: a ClientHello in one maximal TLS record (16 KiB and its 5-byte
/// header) with room for a second record, or an HTTP head as large as connect mode accepts.
pub(crate) const MAX_SNIFF: usize = 2 * (16 * 1024 + 5);

/// What the first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A TLS ClientHello, with its SNI when it has one.
    Tls { sni: Option<String> },
    /// A plain-HTTP/1.x request head, with its one `Host` value when it has exactly one.
    Http { host: Option<String> },
    /// Neither (or a ClientHello or head larger than [`MAX_SNIFF`]).
    Other,
}

/// Decides from the bytes sent so far; `None`: too early to tell, wait for more. `closed`: the
/// client has sent its FIN (or the buffer is full), so nothing more will come and the answer
/// is never `None`.
pub(crate) fn sniff(bytes: &[u8], closed: bool) -> Option<Sniffed> {
    let closed = closed || bytes.len() >= MAX_SNIFF;
    let found = match bytes.first() {
        None => None,
        // The handshake record type (RFC 8446 section 5.1).
        Some(0x16) => client_hello(bytes),
        Some(b) if b.is_ascii_uppercase() => http_head(bytes),
        Some(_) => Some(Sniffed::Other),
    };
    match found {
        None if closed => Some(Sniffed::Other),
        found => found,
    }
}

fn client_hello(bytes: &[u8]) -> Option<Sniffed> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(Sniffed::Tls {
            sni: accepted.client_hello().server_name().map(str::to_owned),
        }),
        Ok(None) => None,
        Err(_) => Some(Sniffed::Other),
    }
}

fn http_head(bytes: &[u8]) -> Option<Sniffed> {
    const MAX_HEADERS: usize = 64;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Sniffed::Other),
    }
    // Two `Host` headers are ambiguous (RFC 9112 section 3.2 answers them 400): which one the
    // intake reads is not ours to guess, so neither names the destination.
    let mut hosts = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => std::str::from_utf8(h.value)
            .ok()
            .map(|v| v.trim().to_owned()),
        _ => None,
    };
    Some(Sniffed::Http { host })
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]:port`), for matching
/// against the rules with the original destination's port.
pub(crate) fn host_without_port(value: &str) -> &str {
    if let Some(v6) = value.strip_prefix('[') {
        return v6.split_once(']').map_or(value, |(ip, _)| ip);
    }
    match value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    }
}

#[cfg(test)]
mod tests;
