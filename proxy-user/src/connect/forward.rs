//! Plain-HTTP requests in connect mode: `GET http://host/path HTTP/1.1`, forwarded as Squid
//! and DataKit's proxy do, under the same rules as a CONNECT.
//!
//! The connection's first head was only peeked at ([`super::handshake::read_head`]): hyper's
//! HTTP/1.1 server reads it again from the socket and serves the connection from there, one
//! request at a time, keep-alive included. Each request is checked as a CONNECT is: one `Host`
//! and one `Proxy-Authorization` (400), an absolute `http://` target (400), credentials (407),
//! the destination policy with port 80 when none is written (403, nothing dialed), the
//! addresses' classes (403), the dial (502/504). It then goes to the destination over hyper's
//! HTTP/1.1 client, with the hop-by-hop headers and `Proxy-Authorization` removed, `Host` set
//! from the target, `Via` added and the target in origin form; the answer comes back the same
//! way. Bodies stream both ways (hyper re-frames them; nothing is buffered whole).
//!
//! Each request may name another destination; an upstream connection is kept per destination
//! for the next request to it (at most [`MAX_UPSTREAMS`] per client connection, the least
//! recently used let go first). A kept-alive client that sends no new head within the frontend's
//! `idle_timeout` is closed ([`crate::http::serve`]).
//!
//! Framing: every head of the connection passes [`crate::http::request`]'s checks before hyper
//! reads it - the first one when it was peeked at, the later ones in the checked stream
//! ([`crate::http::heads`]): both `Content-Length` and `Transfer-Encoding`, two
//! `Content-Length`, bare LF, obs-fold, oversized heads get 400 (431) with nothing of that
//! request forwarded. The upstream receives each message as hyper frames it, never the
//! client's bytes, so the two cannot disagree on where a request ends.
//!
//! The connection's one log line carries the first destination, the last server and status,
//! and the number of requests; each request is counted in the per-request metrics
//! ([`crate::http::RequestMetrics`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::Mutex;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Refusal, Settings, Status};
use crate::conn::{Conn, Path, Route};
use crate::http::serve::{self, Limits, Tally};
use crate::http::{self, Body, Exchange, absolute};

/// Upstream connections kept per client connection, each to one destination.
const MAX_UPSTREAMS: usize = 4;

/// Serves a connection whose first request is an absolute-form plain request, to its end, log
/// line included. `prefix`: the bytes of the connection already read (a TLS client's first
/// head); a plain client's first head was only peeked at, and is read again from the socket.
pub(super) async fn serve<S>(conn: &Conn<'_>, mut client: S, prefix: Vec<u8>, settings: &Settings)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tally = Tally::new(conn.relay_counters());
    let forwarder = Forwarder {
        conn,
        settings,
        upstreams: tokio::sync::Mutex::new(Vec::new()),
        summary: Mutex::new(Summary::default()),
        drivers: serve::Drivers::default(),
    };
    let limits = Limits {
        first_head: None,
        idle: conn.frontend.idle_timeout,
    };
    let served = serve::serve(
        &mut client,
        prefix,
        |request| forwarder.handle(request),
        &forwarder.drivers,
        limits,
        &conn.shared.abort,
        &tally,
    )
    .await;
    let mut summary = forwarder
        .summary
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    drop((forwarder.upstreams, forwarder.drivers));
    let text = |status, why: &str| connect_status(status).response(why);
    let metrics = Some(&settings.http);
    let concluded = served
        .conclude(client, text, metrics, &tally, &mut summary.requests)
        .await;
    summary.status = concluded.answered.or(summary.status);
    let status = summary.status.map(|s| s.to_string());
    let route = Route {
        server: summary.server.as_deref().unwrap_or("-"),
        destination: summary.destination.as_deref().unwrap_or("-"),
        status: status.as_deref().unwrap_or("-"),
        ..Route::NONE
    };
    let outcome = tally.outcome(
        concluded.end,
        "plain requests",
        summary.requests,
        &concluded.detail,
    );
    conn.finish(&route, Path::Userspace, &outcome);
}

/// Connect mode's own answer to a head refused by [`serve::Served::owed`]'s rules.
fn connect_status(status: StatusCode) -> Status {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Status::HeaderFieldsTooLarge,
        StatusCode::REQUEST_TIMEOUT => Status::RequestTimeout,
        _ => Status::BadRequest,
    }
}

/// What the log line says of the requests.
#[derive(Default)]
struct Summary {
    requests: u64,
    /// The first destination named.
    destination: Option<String>,
    /// The last server a request went to.
    server: Option<String>,
    /// The last answer's status.
    status: Option<u16>,
}

/// One upstream connection, kept for the next request to its destination.
struct Upstream {
    destination: String,
    server: SocketAddr,
    sender: SendRequest<Body>,
}

struct Forwarder<'c, 'a> {
    conn: &'c Conn<'a>,
    settings: &'c Settings,
    /// Most recently used last. Held across a request: HTTP/1.1 serves one at a time.
    upstreams: tokio::sync::Mutex<Vec<Upstream>>,
    summary: Mutex<Summary>,
    /// The upstream connections' hyper drivers, run in the client connection's task.
    drivers: serve::Drivers,
}

/// An answer the proxy writes itself.
struct Answer {
    status: Status,
    detail: String,
    /// Closes the connection after it: the request could not be read as one (400), or the
    /// client asked for something this connection cannot become (a tunnel).
    close: bool,
}

impl Answer {
    fn new(status: Status, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            close: matches!(status, Status::BadRequest | Status::MethodNotAllowed),
        }
    }

    fn from_refusal(refusal: Refusal) -> Self {
        // `open` only refuses with a status.
        let status = refusal.status.unwrap_or(Status::BadGateway);
        Self::new(status, refusal.detail)
    }

    fn response(self) -> Response<Body> {
        let status = self.status;
        http::answer_with(
            status.http(),
            &self.detail,
            status.extra_header(),
            self.close,
        )
    }
}

impl Forwarder<'_, '_> {
    async fn handle(&self, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let origin = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let exchange = self.settings.http.start(request.method().as_str(), &origin);
        let (response, destination, server) = match self.forward(request, &exchange).await {
            Ok((response, destination, server)) => (response, Some(destination), Some(server)),
            Err((answer, destination)) => {
                tracing::debug!(frontend = %self.conn.frontend.name, status = answer.status.code(),
                    detail = %answer.detail, "plain request refused");
                (answer.response(), destination, None)
            }
        };
        let status = response.status().as_u16();
        {
            let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
            summary.requests += 1;
            summary.status = Some(status);
            if summary.destination.is_none() {
                summary.destination = destination;
            }
            if let Some(server) = server {
                summary.server = Some(server.to_string());
            }
        }
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(
            parts,
            exchange.response_body(status, body),
        ))
    }

    /// Checks one request and forwards it; the answer, the destination and the server.
    async fn forward(
        &self,
        request: Request<Incoming>,
        exchange: &Exchange,
    ) -> Result<(Response<Body>, String, SocketAddr), (Answer, Option<String>)> {
        let (parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            return Err((
                Answer::new(
                    Status::MethodNotAllowed,
                    "a CONNECT must be the first request of its connection",
                ),
                None,
            ));
        }
        for name in [header::HOST, header::PROXY_AUTHORIZATION] {
            if parts.headers.get_all(&name).iter().nth(1).is_some() {
                return Err((
                    Answer::new(Status::BadRequest, format!("duplicate {name} header")),
                    None,
                ));
            }
        }
        let absolute = absolute::parse(&parts.uri.to_string())
            .map_err(|e| (Answer::new(Status::BadRequest, e), None))?;
        let destination = absolute.target.to_string();
        let refuse = |status: Status, detail: String| {
            Err((Answer::new(status, detail), Some(destination.clone())))
        };
        let credentials = parts
            .headers
            .get(header::PROXY_AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !self.settings.users.check(credentials) {
            let detail = if credentials.is_some() {
                "wrong credentials"
            } else {
                "credentials required"
            };
            return refuse(Status::ProxyAuthenticationRequired, detail.to_owned());
        }
        if !self.settings.policy.allows(&absolute.target) {
            return refuse(
                Status::Forbidden,
                format!("destination {destination} is not allowed"),
            );
        }
        let Ok(host) = HeaderValue::from_str(&absolute.host) else {
            return refuse(Status::BadRequest, "invalid host".to_owned());
        };

        let mut upstreams = self.upstreams.lock().await;
        upstreams.retain(|u| !u.sender.is_closed());
        let mut upstream = match upstreams.iter().position(|u| u.destination == destination) {
            Some(i) => upstreams.remove(i),
            None => self
                .dial(&absolute.target, &destination)
                .await
                .map_err(|answer| (answer, Some(destination.clone())))?,
        };

        let mut headers = parts.headers;
        http::strip_hop_by_hop(&mut headers);
        // hyper's server already answered `100 Continue` when the body was first read.
        headers.remove(header::EXPECT);
        headers.insert(header::HOST, host);
        http::add_via(&mut headers);
        let mut outgoing = Request::new(exchange.request_body(body));
        *outgoing.method_mut() = parts.method;
        *outgoing.version_mut() = Version::HTTP_11;
        *outgoing.headers_mut() = headers;
        *outgoing.uri_mut() = absolute.origin.parse().map_err(|e| {
            (
                Answer::new(Status::BadRequest, format!("invalid path: {e}")),
                None,
            )
        })?;

        let sent = match upstream.sender.ready().await {
            Ok(()) => upstream.sender.send_request(outgoing).await,
            Err(e) => Err(e),
        };
        let response = sent.map_err(|e| {
            (
                Answer::new(
                    Status::BadGateway,
                    format!("upstream {}: {e}", upstream.server),
                ),
                Some(destination.clone()),
            )
        })?;
        let server = upstream.server;
        upstreams.push(upstream);
        if upstreams.len() > MAX_UPSTREAMS {
            upstreams.remove(0);
        }
        drop(upstreams);

        let (mut parts, body) = response.into_parts();
        http::strip_hop_by_hop(&mut parts.headers);
        http::add_via(&mut parts.headers);
        let body = body.map_err(Into::into).boxed();
        Ok((Response::from_parts(parts, body), destination, server))
    }

    /// A new upstream connection to an allowed destination: resolved, its addresses judged,
    /// dialed ([`super::open`]), with hyper's client on it.
    async fn dial(
        &self,
        target: &crate::destination::Target,
        destination: &str,
    ) -> Result<Upstream, Answer> {
        let shared = self.conn.shared;
        let (tcp, server) = super::open(self.settings, &shared.dns, target, destination)
            .await
            .map_err(|refusal| {
                if let Some(class) = refusal.class {
                    shared
                        .metrics
                        .frontend_rejected_total
                        .with_label_values(&[
                            self.conn.frontend.name.as_str(),
                            &crate::address_class::reason(class),
                        ])
                        .inc();
                }
                Answer::from_refusal(refusal)
            })?;
        let _ = tcp.set_nodelay(true);
        self.conn.keep_alive(tcp.as_fd());
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| Answer::new(Status::BadGateway, format!("upstream {server}: {e}")))?;
        // Ends when the sender is dropped (with this client connection, or evicted) or the
        // server closes.
        self.drivers.run(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%server, error = %e, "upstream connection of plain requests failed");
            }
        });
        Ok(Upstream {
            destination: destination.to_owned(),
            server,
            sender,
        })
    }
}
