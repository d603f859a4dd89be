//! Request parsing, destination rules and answers, without sockets.

use std::net::{IpAddr, SocketAddr};

use super::Status;
use super::policy::{DestinationRule, Policy, is_internal};
use super::request::{MAX_HEAD, Request, RequestError, Target, TargetHost, parse};

fn complete(text: &str) -> Request {
    match parse(text.as_bytes()) {
        Ok(Some(request)) => request,
        other => panic!("{text:?} should parse: {other:?}"),
    }
}

fn target(text: &str) -> Target {
    Target::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn connect_heads_parse_with_their_length() {
    let head = "CONNECT intake.example.com:443 HTTP/1.1\r\nHost: intake.example.com:443\r\n\
                Proxy-Authorization: Basic YTpi\r\n\r\n";
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(b"\x16\x03\x01\x02\x00 pipelined ClientHello");
    let request = parse(&bytes).unwrap().unwrap();
    assert_eq!(request.method, "CONNECT");
    assert_eq!(
        request.head_len,
        head.len(),
        "the pipelined bytes are not part of the head"
    );
    assert_eq!(request.authorization.as_deref(), Some(&b"Basic YTpi"[..]));
    assert_eq!(request.target, Some(target("intake.example.com:443")));
    assert_eq!(
        complete("CONNECT a:1 HTTP/1.0\r\n\r\n").target,
        Some(target("a:1"))
    );
}

#[test]
fn incomplete_heads_ask_for_more_until_the_limit() {
    assert_eq!(parse(b"CONNECT a:443 HTTP/1.1\r\nHost: a"), Ok(None));
    assert_eq!(parse(b""), Ok(None));
    let mut long = b"CONNECT a:443 HTTP/1.1\r\nX: ".to_vec();
    long.resize(MAX_HEAD, b'x');
    assert_eq!(parse(&long), Err(RequestError::TooLarge));
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    assert_eq!(
        parse(format!("CONNECT a:443 HTTP/1.1\r\n{many}\r\n").as_bytes()),
        Err(RequestError::TooLarge)
    );
}

#[test]
fn malformed_heads_are_refused() {
    for bad in [
        "\x16\x03\x01\x00\x05hello\r\n\r\n",
        "CONNECT a:443 HTTP/2.0\r\n\r\n",
        "CONNECT a:443\r\n\r\n",
        "CONNECT  HTTP/1.1\r\n\r\n",
        "CONNECT a HTTP/1.1\r\n\r\n",
        "CONNECT a:0 HTTP/1.1\r\n\r\n",
        "CONNECT a:65536 HTTP/1.1\r\n\r\n",
        "CONNECT a:+443 HTTP/1.1\r\n\r\n",
        "CONNECT ::1:443 HTTP/1.1\r\n\r\n",
        "CONNECT [1.2.3.4]:443 HTTP/1.1\r\n\r\n",
        "CONNECT a..b:443 HTTP/1.1\r\n\r\n",
        "CONNECT a/b:443 HTTP/1.1\r\n\r\n",
        "CONNECT http://a:443 HTTP/1.1\r\n\r\n",
    ] {
        assert!(
            matches!(parse(bad.as_bytes()), Err(RequestError::Malformed(_))),
            "{bad:?} should be malformed: {:?}",
            parse(bad.as_bytes())
        );
    }
}

#[test]
fn other_methods_parse_without_a_target() {
    let request =
        complete("POST http://intake.example.com/api/v1/series HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, None);
    // CONNECT is case-sensitive.
    assert_eq!(complete("connect a:443 HTTP/1.1\r\n\r\n").target, None);
}

#[test]
fn targets_cover_names_trailing_dots_and_literals() {
    let fqdn = target("Intake.Datadoghq.COM.:443");
    assert_eq!(
        fqdn.host,
        TargetHost::Name {
            name: "intake.datadoghq.com".into(),
            fqdn: true
        }
    );
    assert_eq!(fqdn.to_string(), "intake.datadoghq.com.:443");
    let v6 = target("[2001:db8::1]:8443");
    assert_eq!(v6.host, TargetHost::Ip("2001:db8::1".parse().unwrap()));
    assert_eq!(v6.to_string(), "[2001:db8::1]:8443");
    assert_eq!(target("10.1.2.3:80").to_string(), "10.1.2.3:80");
}

fn policy(rules: &[&str]) -> Policy {
    Policy::new(
        rules
            .iter()
            .map(|r| DestinationRule::parse(r).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
    )
}

#[test]
fn rules_match_exact_names_suffixes_literals_and_ports() {
    let p = policy(&[
        "intake.example.com:443",
        ".datadoghq.com:443",
        "10.0.0.5:8443",
        "[2001:db8::1]:*",
        "any-port.example.org:*",
    ]);
    for ok in [
        "intake.example.com:443",
        "INTAKE.example.com.:443",
        "datadoghq.com:443",
        "app.datadoghq.com:443",
        "a.b.datadoghq.com.:443",
        "10.0.0.5:8443",
        "[2001:db8::1]:1",
        "any-port.example.org:22",
    ] {
        assert!(p.allows(&target(ok)), "{ok} should be allowed");
    }
    for denied in [
        "intake.example.com:80",
        "x.intake.example.com:443",
        "evildatadoghq.com:443",
        "datadoghq.com.evil.net:443",
        "10.0.0.5:443",
        "[2001:db8::2]:443",
        "example.org:22",
    ] {
        assert!(!p.allows(&target(denied)), "{denied} should be denied");
    }
    assert!(!Policy::default().allows(&target("intake.example.com:443")));
}

#[test]
fn rules_that_would_open_the_proxy_are_refused() {
    for bad in [
        "*",
        "*:443",
        ".:443",
        ":443",
        "*:*",
        "example.com",
        ".1.2.3.4:443",
        "a:0",
    ] {
        assert!(
            DestinationRule::parse(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
    assert!(
        DestinationRule::parse("*:443")
            .unwrap_err()
            .contains("open proxy")
    );
    assert_eq!(
        DestinationRule::parse(".DataDogHQ.com:*")
            .unwrap()
            .to_string(),
        ".datadoghq.com:*"
    );
}

#[test]
fn internal_addresses_need_a_rule_naming_them() {
    for internal in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
    ] {
        let ip: IpAddr = internal.parse().unwrap();
        assert!(is_internal(ip), "{internal} is internal");
    }
    for public in ["8.8.8.8", "198.51.100.10", "2001:4860:4860::8888"] {
        assert!(!is_internal(public.parse().unwrap()), "{public} is public");
    }
    let p = policy(&["localhost:8080", "127.0.0.1:8080"]);
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(p.admits(addr("127.0.0.1:8080")));
    assert!(!p.admits(addr("127.0.0.1:8081")));
    assert!(!p.admits(addr("[::1]:8080")));
    assert!(!policy(&["localhost:8080"]).admits(addr("127.0.0.1:8080")));
    assert!(policy(&["a.example:443"]).admits(addr("8.8.8.8:443")));
}

#[test]
fn answers_are_complete_http_responses() {
    let answer = Status::ProxyAuthenticationRequired.response("credentials required");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(answer.as_bytes()).unwrap() {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => panic!("incomplete: {answer}"),
    };
    assert_eq!(response.code, Some(407));
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    assert_eq!(
        header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"agent-proxy\"")
    );
    let body_len: usize = header("content-length").unwrap().parse().unwrap();
    assert_eq!(answer.len() - len, body_len);
    assert!(
        Status::MethodNotAllowed
            .response("x")
            .contains("\r\nAllow: CONNECT\r\n")
    );
}
