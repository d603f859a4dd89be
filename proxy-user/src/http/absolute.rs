//! The absolute-form request-target of a forward proxy's plain-HTTP requests (RFC 9112 section
//! 3.2.2): `http://host[:port][/path][?query]`, split into the destination the policy judges
//! (port 80 when none is written) and the origin-form target the upstream receives.
//!
//! The file depends on std and [`crate::destination`]'s target only: the fuzz crate (`fuzz/`)
//! compiles it into its `http_request` target.

use crate::destination::Target;

/// A parsed absolute-form target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Absolute {
    /// Where the request goes, as the destination policy sees it.
    pub target: Target,
    /// The `Host` header the upstream receives: the authority as written (no user info).
    pub host: String,
    /// The origin-form target: the path (`/` when empty) and the query.
    pub origin: String,
}

/// The most bytes of a target quoted in an error.
const QUOTED: usize = 64;

/// Parses `text` as an absolute-form `http://` target. Only `http` is accepted (case-insensitive):
/// an `https://` URL is a CONNECT tunnel for a proxy's clients, and any other scheme is not
/// HTTP. User info (`user@host`) and fragments are refused: RFC 9110 section 4.2.4 forbids
/// the one, and a client never sends the other.
pub(crate) fn parse(text: &str) -> Result<Absolute, String> {
    let bad = |why: &str| {
        let quoted: String = text.chars().take(QUOTED).collect();
        format!("invalid request target {quoted:?}: {why}")
    };
    let scheme_end = text
        .find("://")
        .ok_or_else(|| bad("not an absolute http:// URL"))?;
    if !text[..scheme_end].eq_ignore_ascii_case("http") {
        return Err(bad(
            "only http:// URLs are forwarded (https goes through CONNECT)",
        ));
    }
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if tail.contains('#') {
        return Err(bad("a fragment is not sent to a server"));
    }
    if authority.contains('@') {
        return Err(bad("user info in the URL is not allowed"));
    }
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    // A port is written after the last colon, unless that colon is inside an IPv6 literal.
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let target = Target::parse(&with_port).map_err(|e| bad(&e))?;
    let origin = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(Absolute {
        target,
        host: authority.to_owned(),
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_destination_host_and_origin() {
        let a = parse("http://Intake.Test/api/v1/series?x=1").unwrap();
        assert_eq!(a.target.to_string(), "intake.test:80");
        assert_eq!(a.host, "Intake.Test");
        assert_eq!(a.origin, "/api/v1/series?x=1");
        let a = parse("HTTP://10.0.0.1:8080").unwrap();
        assert_eq!(a.target.to_string(), "10.0.0.1:8080");
        assert_eq!(a.origin, "/");
        let a = parse("http://[2001:db8::1]?q").unwrap();
        assert_eq!(a.target.to_string(), "[2001:db8::1]:80");
        assert_eq!(a.origin, "/?q");
        assert_eq!(
            parse("http://[2001:db8::1]:81/")
                .unwrap()
                .target
                .to_string(),
            "[2001:db8::1]:81"
        );
    }

    #[test]
    fn refuses_what_is_not_a_plain_http_url() {
        for bad in [
            "/path",
            "intake.test:80",
            "https://intake.test/",
            "ftp://intake.test/",
            "http:///path",
            "http://user:pw@intake.test/",
            "http://intake.test/#frag",
            "http://intake.test:0/",
            "http://intake.test:99999/",
            "http://intake.test:/",
            "http://in take.test/",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
