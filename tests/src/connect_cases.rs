//! The raw-request cases of the connect-mode scenarios and the namespace they run in: shared
//! by the answer test (tests/connect.rs) and the comparison with Squid
//! (tests/connect_clients.rs).
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::{DaemonConfig, Dataplane};
use crate::connect::{USER, add_loopback_address, basic_auth, connect_config, connect_head, run};
use crate::netns::NetNs;
use crate::pattern::Pattern;
use crate::peers::{V4, closed_port, listen};

/// An address the tests give to `lo` and treat as a public destination. It must be global
/// unicast (the proxy refuses documentation ranges such as TEST-NET-2 like any other
/// special-purpose address), so it is one of 11.0.0.0/8, which the test's own namespace
/// keeps from ever reaching a real network.
pub const PUBLIC: &str = "11.0.0.10";

/// An address in the netns whose SYNs are dropped: connecting to it times out.
pub const BLACKHOLE: &str = "11.0.0.99";

/// One raw case: what is sent, and the status expected.
pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub status: u16,
    /// A plain request that passed the first head's checks: answered by the HTTP server of
    /// plain requests, so counted in `agent_proxy_http_requests_total` (not
    /// `agent_proxy_connect_requests_total`) and logged with `end=client_close`.
    pub plain: bool,
}

/// A namespace with [`PUBLIC`]/24 on `lo` and SYNs to [`BLACKHOLE`] dropped.
pub fn blackhole_namespace() -> anyhow::Result<NetNs> {
    let ns = NetNs::new()?;
    add_loopback_address(&ns, &format!("{PUBLIC}/24"))?;
    let drop_syns = ["-A", "OUTPUT", "-d", BLACKHOLE, "-p", "tcp", "-j", "DROP"];
    let mut args = vec!["ip", "netns", "exec", ns.name(), "iptables"];
    args.extend(drop_syns);
    run(&args)?;
    Ok(ns)
}

/// The destinations of the answer scenarios (create inside the namespace).
pub struct AnswerPeers {
    /// Allowed, nothing listens.
    pub closed: SocketAddr,
    /// Allowed; the scenario decides what it does with connections.
    pub resetting: TcpListener,
    /// Allowed by the name `localhost` only, which resolves to loopback, which no rule names.
    pub internal: TcpListener,
    /// The `allow_destinations` naming them, and [`BLACKHOLE`]`:443`.
    pub destinations: [String; 4],
}

impl AnswerPeers {
    pub async fn start() -> anyhow::Result<Self> {
        let closed = closed_port(V4)?;
        let resetting = listen(V4).await?;
        let internal = listen(V4).await?;
        let destinations = [
            format!("127.0.0.1:{}", closed.port()),
            format!("127.0.0.1:{}", resetting.local_addr()?.port()),
            format!("localhost:{}", internal.local_addr()?.port()),
            format!("{BLACKHOLE}:443"),
        ];
        Ok(Self {
            closed,
            resetting,
            internal,
            destinations,
        })
    }

    /// A connect frontend allowing [`Self::destinations`], with a 1 s request timeout.
    pub fn config(&self, dp: Dataplane) -> DaemonConfig {
        let extra = "request_timeout = \"1s\"\n";
        connect_config(dp, &self.destinations, true, extra)
    }
}

/// An absolute-form POST to `allowed` with `framing` headers and a body that, read as chunked,
/// ends the message early (`0\r\n\r\n`): a smuggling attempt.
fn smuggled(allowed: &str, auth: &str, framing: &str) -> Vec<u8> {
    format!("POST http://{allowed}/ HTTP/1.1\r\nHost: {allowed}\r\n{auth}{framing}\r\n0\r\n\r\n")
        .into_bytes()
}

/// The raw cases: `allowed` is an allowed literal destination, `internal_port` is allowed by
/// the name `localhost` only, `closed` is allowed and refuses connections, [`BLACKHOLE`]`:443`
/// is allowed and drops SYNs.
pub fn answer_cases(
    auth: &str,
    allowed: &str,
    internal_port: u16,
    closed: SocketAddr,
) -> Vec<Case> {
    let auth = auth.to_owned();
    let allowed = allowed.to_owned();
    let big = connect_head(
        &allowed,
        &format!("{auth}X-Big: {}\r\n", "b".repeat(20_000)),
    );
    let mut pipelined_407 = connect_head(&allowed, "").into_bytes();
    pipelined_407.extend_from_slice(&Pattern::bytes(5, 2_000));
    vec![
        Case {
            name: "no credentials",
            bytes: connect_head(&allowed, "").into(),
            status: 407,
            plain: false,
        },
        Case {
            name: "wrong password",
            bytes: connect_head(&allowed, &basic_auth(USER, "wrong")).into(),
            status: 407,
            plain: false,
        },
        Case {
            name: "no credentials, ClientHello pipelined",
            bytes: pipelined_407,
            status: 407,
            plain: false,
        },
        Case {
            name: "destination not allowed",
            bytes: connect_head("example.com:443", &auth).into(),
            status: 403,
            plain: false,
        },
        Case {
            name: "IPv6 literal not allowed",
            bytes: connect_head(&allowed.replace("127.0.0.1", "[::1]"), &auth).into(),
            status: 403,
            plain: false,
        },
        Case {
            name: "name resolving to loopback",
            bytes: connect_head(&format!("localhost:{internal_port}"), &auth).into(),
            status: 403,
            plain: false,
        },
        Case {
            name: "absolute-form GET, upstream refuses",
            bytes: format!(
                "GET http://{closed}/ HTTP/1.1\r\nHost: {closed}\r\n{auth}Connection: close\r\n\r\n"
            )
            .into(),
            status: 502,
            plain: true,
        },
        Case {
            name: "absolute-form GET, no credentials",
            bytes: format!(
                "GET http://{closed}/ HTTP/1.1\r\nHost: {closed}\r\nConnection: close\r\n\r\n"
            )
            .into(),
            status: 407,
            plain: true,
        },
        Case {
            name: "absolute-form POST, destination not allowed",
            bytes: format!(
                "POST http://intake.test/api/v1/series HTTP/1.1\r\nHost: intake.test\r\n\
                 Content-Length: 2\r\n{auth}Connection: close\r\n\r\n{{}}"
            )
            .into(),
            status: 403,
            plain: true,
        },
        Case {
            name: "absolute-form, Content-Length and Transfer-Encoding",
            bytes: smuggled(&allowed, &auth, "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"),
            status: 400,
            plain: false,
        },
        Case {
            name: "absolute-form, two Content-Length",
            bytes: smuggled(&allowed, &auth, "Content-Length: 4\r\nContent-Length: 4\r\n"),
            status: 400,
            plain: false,
        },
        Case {
            name: "absolute-form, obs-fold",
            bytes: smuggled(&allowed, &auth, "Content-Length: 4\r\nX-Folded: a\r\n b\r\n"),
            status: 400,
            plain: false,
        },
        Case {
            name: "absolute-form, bare LF",
            bytes: format!(
                "POST http://{allowed}/ HTTP/1.1\nHost: {allowed}\n{}Content-Length: 4\n\n0\r\n\r\n",
                auth.replace("\r\n", "\n")
            )
            .into(),
            status: 400,
            plain: false,
        },
        Case {
            name: "absolute-form, oversized headers",
            bytes: format!(
                "GET http://{allowed}/ HTTP/1.1\r\nHost: {allowed}\r\n{auth}X-Big: {}\r\n\r\n",
                "b".repeat(20_000)
            )
            .into(),
            status: 431,
            plain: false,
        },
        Case {
            name: "absolute-form https URL",
            bytes: format!("GET https://{allowed}/ HTTP/1.1\r\nHost: {allowed}\r\n{auth}\r\n").into(),
            status: 405,
            plain: false,
        },
        Case {
            name: "origin-form GET",
            bytes: format!("GET / HTTP/1.1\r\nHost: {allowed}\r\n{auth}\r\n").into(),
            status: 405,
            plain: false,
        },
        Case {
            name: "lower-case connect",
            bytes: format!("connect {allowed} HTTP/1.1\r\n\r\n").into(),
            status: 405,
            plain: false,
        },
        Case {
            name: "not HTTP",
            bytes: b"\x16\x03\x01\x00\x10hello, not http\r\n\r\n".to_vec(),
            status: 400,
            plain: false,
        },
        Case {
            name: "target without a port",
            bytes: connect_head("127.0.0.1", &auth).into(),
            status: 400,
            plain: false,
        },
        Case {
            name: "oversized headers",
            bytes: big.into(),
            status: 431,
            plain: false,
        },
        Case {
            name: "upstream refuses",
            bytes: connect_head(&closed.to_string(), &auth).into(),
            status: 502,
            plain: false,
        },
        Case {
            name: "upstream never answers",
            bytes: connect_head(&format!("{BLACKHOLE}:443"), &auth).into(),
            status: 504,
            plain: false,
        },
    ]
}
