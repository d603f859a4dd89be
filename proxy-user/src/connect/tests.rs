//! Request parsing, destination rules and answers, without sockets.

use std::net::SocketAddr;

use super::Status;
use crate::address_class::Special;
use crate::destination::{DestinationRule, Judgement, Policy, Target, TargetHost};
use crate::http::request::{MAX_HEAD, Request, RequestError, parse};

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

/// A second `Host`, `Content-Length` or `Proxy-Authorization` is refused whatever the case of
/// the names, the values (equal or not) and the method; one of each, and repeats of any other
/// header, still parse.
#[test]
fn duplicate_single_headers_are_refused() {
    use crate::http::request::{Peeked, Step, step};
    let auth = "Proxy-Authorization: Basic YTpi\r\n";
    let cases = [
        (
            "Proxy-Authorization",
            "Proxy-Authorization: Basic d3Jvbmc6eA==\r\nProxy-Authorization: Basic YTpi\r\n",
        ),
        (
            "Proxy-Authorization",
            "proxy-authorization: Basic YTpi\r\nPROXY-AUTHORIZATION: Basic YTpi\r\n",
        ),
        ("Host", "Host: a:443\r\nhost: b:443\r\n"),
        ("Host", "HOST: a:443\r\nX-Other: 1\r\nHost: a:443\r\n"),
        (
            "Content-Length",
            "Content-Length: 0\r\ncontent-length: 5\r\n",
        ),
        (
            "Content-Length",
            "Content-Length: 0\r\nContent-Length: 0\r\n",
        ),
    ];
    for (name, headers) in cases {
        for method in ["CONNECT a:443", "POST http://a/x"] {
            let head = format!("{method} HTTP/1.1\r\n{headers}\r\n");
            let got = parse(head.as_bytes());
            assert_eq!(got, Err(RequestError::Duplicate(name)), "{head:?}");
            let message = got.unwrap_err().to_string();
            assert_eq!(message, format!("duplicate {name} header"));
            // The head reader refuses it at once (a 400 whose body is that message).
            let bytes = head.as_bytes();
            assert_eq!(
                step(Peeked::Bytes {
                    bytes,
                    closed: false
                }),
                Step::Refuse(RequestError::Duplicate(name))
            );
        }
    }
    let single = complete(&format!(
        "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 0\r\n{auth}\
         Via: 1.1 x\r\nVia: 1.1 y\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n"
    ));
    assert_eq!(single.authorization.as_deref(), Some(&b"Basic YTpi"[..]));
    assert_eq!(single.target, Some(target("a:443")));
    // Names that only start like one of them are other headers.
    complete("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nHost-X: b\r\nX-Host: c\r\n\r\n");
}

#[test]
fn other_methods_parse_without_a_target() {
    let request =
        complete("POST http://intake.example.com/api/v1/series HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, None);
    let absolute = request.absolute.expect("an absolute-form target");
    assert_eq!(absolute.target, target("intake.example.com:80"));
    assert_eq!(absolute.origin, "/api/v1/series");
    // CONNECT is case-sensitive.
    let lower = complete("connect a:443 HTTP/1.1\r\n\r\n");
    assert_eq!((lower.target, lower.absolute), (None, None));
    assert_eq!(complete("GET / HTTP/1.1\r\n\r\n").absolute, None);
    assert_eq!(complete("GET https://a/ HTTP/1.1\r\n\r\n").absolute, None);
}

/// Heads whose framing two readers could take differently are refused whatever the method
/// (request smuggling); the plain ones around them parse.
#[test]
fn ambiguous_framing_is_refused() {
    for (head, why) in [
        (
            "POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        ("POST http://a/ HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
        ("POST http://a/ HTTP/1.1\r\nHost: a\n\n", "bare LF"),
        (
            "POST http://a/ HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            "POST http://a/ HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "other than chunked",
        ),
        (
            "POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0",
        ),
        (
            "POST http://a/ HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
            "invalid request",
        ),
        (
            "CONNECT a:443 HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both",
        ),
    ] {
        match parse(head.as_bytes()) {
            Err(RequestError::Malformed(message)) => {
                assert!(message.contains(why), "{head:?}: {message}");
            }
            other => panic!("{head:?} must be refused as malformed: {other:?}"),
        }
    }
    assert_eq!(
        parse(b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(RequestError::Duplicate("Transfer-Encoding"))
    );
    for fine in [
        "POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
        "POST http://a/ HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n",
        "GET http://a/ HTTP/1.0\r\n\r\n",
    ] {
        assert!(complete(fine).absolute.is_some(), "{fine:?}");
    }
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
fn special_addresses_need_a_rule_naming_them() {
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    let any = policy(&["a.example:443"]);
    for special in [
        "127.0.0.1:443",
        "10.1.2.3:443",
        "169.254.169.254:443",
        "100.64.0.1:443",
        "0.0.0.0:443",
        "240.0.0.1:443",
        "198.18.0.1:443",
        "192.0.0.1:443",
        "198.51.100.10:443",
        "[::1]:443",
        "[::]:443",
        "[::127.0.0.1]:443",
        "[::ffff:127.0.0.1]:443",
        "[64:ff9b::7f00:1]:443",
        "[64:ff9b::a00:1]:443",
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:443",
        "[fec0::1]:443",
        "[fd00:ec2::254]:443",
    ] {
        assert!(
            matches!(any.judge(addr(special)), Judgement::Refused(_)),
            "{special} must be refused"
        );
    }
    for global in [
        "8.8.8.8:443",
        "[2001:4860:4860::8888]:443",
        "[64:ff9b::808:808]:443",
    ] {
        assert_eq!(any.judge(addr(global)), Judgement::Global, "{global}");
    }
    let p = policy(&[
        "localhost:8080",
        "127.0.0.1:8080",
        "10.0.0.0/8:443",
        "[fd00::/16]:*",
    ]);
    assert!(matches!(
        p.judge(addr("127.0.0.1:8080")),
        Judgement::Named(r) if r.class == Special::Loopback
    ));
    assert!(!p.judge(addr("127.0.0.1:8081")).dialable());
    assert!(!p.judge(addr("[::1]:8080")).dialable());
    assert!(p.judge(addr("10.200.0.1:443")).dialable());
    assert!(
        p.judge(addr("[::ffff:10.200.0.1]:443")).dialable(),
        "mapped form of a named network"
    );
    assert!(!p.judge(addr("10.200.0.1:80")).dialable());
    assert!(p.judge(addr("[fd00::5]:22")).dialable());
    assert!(!p.judge(addr("[fd01::5]:22")).dialable());
    assert!(
        !policy(&["localhost:8080"])
            .judge(addr("127.0.0.1:8080"))
            .dialable()
    );
}

#[test]
fn network_rules_match_literals_and_refuse_wide_networks() {
    let p = policy(&["10.0.0.0/8:443", "[2001:db8::/32]:*"]);
    assert!(p.allows(&target("10.1.2.3:443")));
    assert!(p.allows(&target("[::ffff:10.1.2.3]:443")));
    assert!(!p.allows(&target("11.1.2.3:443")));
    assert!(!p.allows(&target("10.1.2.3:80")));
    assert!(p.allows(&target("[2001:db8::1]:5")));
    assert!(!p.allows(&target("intake.example:443")));
    for bad in [
        "0.0.0.0/0:443",
        "10.0.0.0/7:443",
        "[::/0]:443",
        "[2000::/3]:*",
        "10.0.0.1/8:443",
        "10.0.0.0/8",
        "[10.0.0.0/8]:443",
        "fd00::/8:443",
    ] {
        assert!(
            DestinationRule::parse(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
    assert!(
        DestinationRule::parse("0.0.0.0/0:443")
            .unwrap_err()
            .contains("open proxy")
    );
    assert_eq!(
        DestinationRule::parse("[fd00::/16]:*").unwrap().to_string(),
        "[fd00::/16]:*"
    );
    assert_eq!(
        DestinationRule::parse("10.0.0.0/8:443")
            .unwrap()
            .to_string(),
        "10.0.0.0/8:443"
    );
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

/// Every strict prefix of a valid head: waited for while the client is open, never once it
/// has closed or reset (issue 21).
#[test]
fn a_closed_client_is_never_waited_for() {
    use crate::http::request::{Peeked, Step, step};
    let head = b"CONNECT intake.example.com:443 HTTP/1.1\r\nHost: intake.example.com:443\r\n\r\n";
    for n in 0..head.len() {
        let bytes = &head[..n];
        assert_eq!(
            step(Peeked::Bytes {
                bytes,
                closed: false
            }),
            Step::Wait,
            "{n}"
        );
        assert_eq!(
            step(Peeked::Bytes {
                bytes,
                closed: true
            }),
            Step::Gone {
                reset: false,
                sent: n
            },
            "{n}"
        );
    }
    assert!(matches!(
        step(Peeked::Bytes { bytes: head, closed: true }),
        Step::Complete(r) if r.head_len == head.len()
    ));
    assert_eq!(
        step(Peeked::Reset),
        Step::Gone {
            reset: true,
            sent: 0
        }
    );
}

/// The head reader on real sockets, on a one-thread runtime as a worker of the daemon's is: a
/// client that sends a prefix and closes (or resets) ends the read at once. Before the fix the
/// read spun without yielding, so this thread never answered and the test failed at the
/// deadline.
#[test]
fn the_head_reader_returns_when_the_client_leaves_mid_head() {
    use super::handshake::{HeadError, read_head};
    use std::io::Write as _;
    use std::time::Duration;
    let head = b"CONNECT a.example:443 HTTP/1.1\r\n";
    for reset in [false, true] {
        for n in [0, 1, 7, head.len()] {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let got = rt.block_on(async {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    let addr = listener.local_addr().unwrap();
                    let mut client = std::net::TcpStream::connect(addr).unwrap();
                    let (mut server, _) = listener.accept().await.unwrap();
                    client.write_all(&head[..n]).unwrap();
                    if reset {
                        socket2::SockRef::from(&client)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                    }
                    drop(client);
                    read_head(&mut server, Duration::from_secs(60)).await
                });
                let _ = tx.send(got);
            });
            let got = rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("read_head stuck after {n} bytes (reset: {reset})"));
            match got {
                Err(HeadError::Gone { reset: r, .. }) => {
                    // A reset can race the peek of the bytes before it; a FIN never reads as one.
                    assert!(reset || !r, "{n} bytes then close read as a reset");
                }
                other => panic!("{n} bytes (reset: {reset}): {other:?}"),
            }
        }
    }
}
