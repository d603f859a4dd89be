//! `mode = "connect"`: an HTTP CONNECT forward proxy whose tunnels run on the kernel path.
//!
//! A connection lives like this:
//! 1. admission as in every mode (client CIDRs, connection limits, per-IP rate limit);
//! 2. the request head is read with `MSG_PEEK` and exactly its bytes are consumed, so bytes the
//!    client pipelined behind it (a TLS ClientHello) stay queued in the socket, in order
//!    ([`handshake::read_head`]), until the tunnel is up;
//! 3. checks, each with its answer: a head that is not HTTP/1.x, a target that is not
//!    `host:port`, a second `Host`, `Content-Length`, `Proxy-Authorization` or
//!    `Transfer-Encoding` header ([`crate::http::request::SINGLE_HEADERS`]), or framing that could be read
//!    two ways (request smuggling) (400), too large (431) or too slow (408); a method other
//!    than CONNECT whose target is not an absolute `http://` URL (405); an absolute-form plain
//!    request goes to [`forward`] instead, the head still unread, which checks each request
//!    of the connection as below and forwards it;
//!    credentials (407, when `users` is set); the destination policy (403,
//!    [`crate::destination`]);
//! 4. the destination is resolved (the daemon's shared DNS cache, [`crate::dns`]), addresses
//!    that are not global unicast are dropped unless named by a rule (403 when none is left),
//!    and the rest are dialed in order, by address (502 refused/unreachable/unresolvable,
//!    504 every attempt timed out);
//! 5. `200 Connection established` is written, the bytes queued behind the head are copied to
//!    the upstream ([`handshake::forward_early_bytes`]: the sockmap would re-send the consumed
//!    head with them), and the pair goes to the same data path as tcp mode
//!    ([`Conn::carry`]): the kernel splice when it is loaded.
//!
//! With `tls` on the frontend ([`secure`]), the TLS handshake comes first, the head is read
//! from the session (it cannot be peeked at), and a tunnel runs in the userspace relay.
//!
//! Every answer is counted in `agent_proxy_connect_requests_total{frontend,status}`, and every
//! connection ends with the usual one log line, which carries `destination` and `status`.

pub(crate) mod auth;
mod forward;
pub(crate) mod handshake;
mod secure;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::address_class::Special;
use crate::config::ConnectMode;
use crate::conn::{Conn, End, Outcome, Path, Route};
use crate::destination::Target;
use crate::destination::{Judgement, Policy};
use crate::dns::Dns;
use crate::http::RequestMetrics;
use crate::http::request::{Request, RequestError};
use crate::http::serve::{ANSWER_TIMEOUT, linger_close};
use crate::metrics::Metrics;
use crate::report::error_chain;
use crate::tls::ServerTls;
use handshake::HeadError;

/// What a connect frontend needs at run time, built once from its config.
#[derive(Debug)]
pub(crate) struct Settings {
    pub users: auth::Users,
    pub policy: Policy,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The frontend's series every tunnel adds to, resolved once rather than per connection:
    /// `agent_proxy_connect_requests_total{status="200"}`, and the userspace upstream bytes of
    /// `agent_proxy_bytes_total` (where the early bytes count).
    tunnels: IntCounter,
    early_bytes: IntCounter,
    /// The per-request metrics of plain requests forwarded ([`forward`]).
    http: RequestMetrics,
    /// TLS terminated on the frontend (an HTTPS proxy, [`secure`]); `None`: plaintext.
    tls: Option<Arc<ServerTls>>,
}

impl Settings {
    /// `frontend`: the frontend's name, the label of its metrics.
    pub(crate) fn new(
        config: &ConnectMode,
        metrics: &Arc<Metrics>,
        frontend: &str,
        tls: Option<Arc<ServerTls>>,
    ) -> Self {
        Self {
            users: auth::Users::new(&config.users),
            policy: Policy::new(config.allow_destinations.clone()),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            tunnels: {
                // Every answer's series exists from the start, at zero.
                for status in Status::ALL {
                    metrics
                        .connect_requests_total
                        .with_label_values(&[frontend, &status.code().to_string()]);
                }
                metrics
                    .connect_requests_total
                    .with_label_values(&[frontend, "200"])
            },
            early_bytes: metrics.bytes_total.with_label_values(&[
                frontend,
                "upstream",
                "userspace",
            ]),
            http: RequestMetrics::new(metrics, frontend),
            tls,
        }
    }
}

impl Settings {
    /// TLS terminated on the frontend, if any.
    pub(crate) fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_deref()
    }
}

/// The answers other than 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    ProxyAuthenticationRequired,
    RequestTimeout,
    HeaderFieldsTooLarge,
    BadGateway,
    GatewayTimeout,
}

impl Status {
    pub(crate) const ALL: [Status; 8] = [
        Status::BadRequest,
        Status::Forbidden,
        Status::MethodNotAllowed,
        Status::ProxyAuthenticationRequired,
        Status::RequestTimeout,
        Status::HeaderFieldsTooLarge,
        Status::BadGateway,
        Status::GatewayTimeout,
    ];

    /// The status as hyper knows it.
    pub(crate) fn http(self) -> StatusCode {
        match self {
            Status::BadRequest => StatusCode::BAD_REQUEST,
            Status::Forbidden => StatusCode::FORBIDDEN,
            Status::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Status::ProxyAuthenticationRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Status::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Status::HeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Status::BadGateway => StatusCode::BAD_GATEWAY,
            Status::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub(crate) fn code(self) -> u16 {
        self.http().as_u16()
    }

    /// The header an answer carries besides the framing, if any: the challenge of a 407, the
    /// `Allow` of a 405.
    pub(crate) fn extra_header(self) -> Option<(&'static str, String)> {
        match self {
            Status::ProxyAuthenticationRequired => Some((
                "Proxy-Authenticate",
                format!("Basic realm=\"{}\"", auth::REALM),
            )),
            Status::MethodNotAllowed => Some(("Allow", "CONNECT".to_owned())),
            _ => None,
        }
    }

    /// The whole answer: status line, headers, a one-line text body. Always `Connection:
    /// close`: a refused client starts again on a new connection.
    pub(crate) fn response(self, detail: &str) -> String {
        crate::http::answer_text_with(self.http(), detail, self.extra_header())
    }
}

/// The answer that opens a tunnel (Squid's wording).
pub(crate) const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// An open tunnel, 200 already written.
struct Tunnel {
    upstream: TcpStream,
    /// Bytes read from the client: its request head and [`Tunnel::early`].
    consumed: u64,
    /// Bytes the client sent behind its head, already copied to the upstream.
    early: u64,
    server: SocketAddr,
    destination: String,
}

/// What the first request of a connection leads to.
enum Negotiated {
    Tunnel(Tunnel),
    /// An absolute-form plain request, its head still unread: [`forward`] serves the
    /// connection.
    Forward,
}

/// A request that gets no tunnel.
struct Refusal {
    /// `Err(end)` when the client left before there was anything to answer: how it left
    /// (closed or reset).
    status: Result<Status, End>,
    destination: String,
    detail: String,
    /// Refused because every address was of this special-purpose class: counted in
    /// `agent_proxy_frontend_rejected_total{reason="address_<class>"}`.
    class: Option<Special>,
}

impl Refusal {
    fn new(status: Status, destination: &str, detail: impl Into<String>) -> Self {
        Self {
            status: Ok(status),
            destination: destination.to_owned(),
            detail: detail.into(),
            class: None,
        }
    }
}

/// Serves one admitted connection of a connect frontend to its end, log line included.
pub(crate) async fn run(conn: &Conn<'_>, mut client: TcpStream, settings: &Settings) {
    if let Some(tls) = &settings.tls {
        return Box::pin(secure::run(conn, client, settings, tls)).await;
    }
    // The drain's end cuts a handshake as it cuts a tunnel.
    let negotiated = tokio::select! {
        result = negotiate(&mut client, settings, &conn.shared.dns) => result,
        () = conn.shared.abort.cancelled() => {
            conn.finish_nothing(End::Shutdown, "cut during the CONNECT handshake".into());
            return;
        }
    };
    match negotiated {
        Ok(Negotiated::Forward) => {
            Box::pin(forward::serve(conn, client, Vec::new(), settings)).await;
        }
        Ok(Negotiated::Tunnel(tunnel)) => {
            settings.tunnels.inc();
            for stream in [&client, &tunnel.upstream] {
                let _ = stream.set_nodelay(true);
            }
            let carried = conn.carry(client, tunnel.upstream, tunnel.consumed).await;
            // The early bytes were copied here, in userspace: counted so.
            settings.early_bytes.inc_by(tunnel.early);
            let route = Route {
                server: &tunnel.server.to_string(),
                destination: &tunnel.destination,
                status: "200",
                ..Route::NONE
            };
            if let Some(rest) = conn.finish_carried(&route, carried, tunnel.early) {
                rest.await;
            }
        }
        Err(refusal) => refuse(conn, client, refusal).await,
    }
}

/// Answers a request that gets no tunnel (or logs a client that left before one could be
/// answered), counts it and logs the connection.
async fn refuse<S>(conn: &Conn<'_>, mut client: S, refusal: Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (frontend, metrics) = (conn.frontend, &conn.shared.metrics);
    if let Some(class) = refusal.class {
        metrics
            .frontend_rejected_total
            .with_label_values(&[frontend.name.as_str(), &crate::address_class::reason(class)])
            .inc();
    }
    let (end, code) = match refusal.status {
        Ok(status) => {
            let code = status.code().to_string();
            metrics
                .connect_requests_total
                .with_label_values(&[frontend.name.as_str(), &code])
                .inc();
            let answer = status.response(&refusal.detail);
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, client.write_all(answer.as_bytes())).await;
            linger_close(client).await;
            let end = match status {
                Status::BadGateway | Status::GatewayTimeout => End::ConnectFailed,
                _ => End::Refused,
            };
            (end, code)
        }
        Err(end) => (end, "-".to_owned()),
    };
    let route = Route {
        server: "-",
        destination: &refusal.destination,
        status: &code,
        ..Route::NONE
    };
    conn.finish(&route, Path::None, &Outcome::nothing(end, refusal.detail));
}

/// Steps 2-5 of the module doc.
async fn negotiate(
    client: &mut TcpStream,
    settings: &Settings,
    dns: &Dns,
) -> Result<Negotiated, Refusal> {
    let request = handshake::read_head(client, settings.request_timeout)
        .await
        .map_err(|e| head_refusal(e, settings))?;
    let Some((target, destination)) = check(&request, settings)? else {
        return Ok(Negotiated::Forward);
    };
    let (upstream, server) = open(settings, dns, &target, &destination).await?;
    let gone = |detail: String| Refusal {
        status: Err(End::ClientClose),
        destination: destination.clone(),
        detail,
        class: None,
    };
    client
        .write_all(ESTABLISHED)
        .await
        .map_err(|e| gone(format!("client: {e}")))?;
    let mut upstream = upstream;
    let early = handshake::forward_early_bytes(client, &mut upstream)
        .await
        .map_err(gone)?;
    Ok(Negotiated::Tunnel(Tunnel {
        upstream,
        consumed: (request.head_len + early) as u64,
        early: early as u64,
        server,
        destination,
    }))
}

/// The answer to a head that could not be read.
fn head_refusal(e: HeadError, settings: &Settings) -> Refusal {
    match e {
        HeadError::Request(e) => {
            let status = match &e {
                RequestError::Malformed(_) | RequestError::Duplicate(_) => Status::BadRequest,
                RequestError::TooLarge => Status::HeaderFieldsTooLarge,
            };
            Refusal::new(status, "-", e.to_string())
        }
        HeadError::Timeout => Refusal::new(
            Status::RequestTimeout,
            "-",
            format!(
                "request head not complete within {:?}",
                settings.request_timeout
            ),
        ),
        HeadError::Gone { reset, detail } => Refusal {
            status: Err(if reset {
                End::ClientReset
            } else {
                End::ClientClose
            }),
            destination: "-".into(),
            detail,
            class: None,
        },
    }
}

/// Step 3 of the module doc for a complete head: the CONNECT's target and its text, once the
/// credentials and the destination policy allow it; `None` for an absolute-form plain request
/// ([`forward`] checks each of those).
fn check(request: &Request, settings: &Settings) -> Result<Option<(Target, String)>, Refusal> {
    if request.absolute.is_some() {
        return Ok(None);
    }
    let Some(target) = request.target.clone() else {
        return Err(Refusal::new(
            Status::MethodNotAllowed,
            "-",
            format!(
                "method {:?} with this target is not supported: this proxy opens CONNECT \
                 tunnels and forwards absolute-form http:// requests",
                request.method.chars().take(32).collect::<String>()
            ),
        ));
    };
    let destination = target.to_string();
    if !settings.users.check(request.authorization.as_deref()) {
        let detail = if request.authorization.is_some() {
            "wrong credentials"
        } else {
            "credentials required"
        };
        return Err(Refusal::new(
            Status::ProxyAuthenticationRequired,
            &destination,
            detail,
        ));
    }
    if !settings.policy.allows(&target) {
        return Err(Refusal::new(
            Status::Forbidden,
            &destination,
            format!("destination {destination} is not allowed"),
        ));
    }
    Ok(Some((target, destination)))
}

/// Step 4 of the module doc, for a destination the policy allows: resolves it, keeps the
/// addresses it may dial, dials them in order.
async fn open(
    settings: &Settings,
    dns: &Dns,
    target: &Target,
    destination: &str,
) -> Result<(TcpStream, SocketAddr), Refusal> {
    let addrs = handshake::resolve(dns, target).await.map_err(|e| {
        Refusal::new(
            Status::BadGateway,
            destination,
            format!("cannot resolve {destination}: {}", error_chain(&e)),
        )
    })?;
    let mut admitted = Vec::with_capacity(addrs.len());
    let mut refused = Vec::new();
    for &addr in &addrs {
        match settings.policy.judge(addr) {
            Judgement::Refused(why) => refused.push((addr, why)),
            Judgement::Global | Judgement::Named(_) => admitted.push(addr),
        }
    }
    if !refused.is_empty() {
        let list = refused
            .iter()
            .map(|(addr, why)| format!("{} ({why})", addr.ip()))
            .collect::<Vec<_>>()
            .join(", ");
        if admitted.is_empty() {
            let mut refusal = Refusal::new(
                Status::Forbidden,
                destination,
                format!(
                    "destination {destination} resolves only to addresses that are not global \
                     unicast: {list}; name them in allow_destinations to allow them"
                ),
            );
            refusal.class = Some(refused[0].1.class);
            return Err(refusal);
        }
        tracing::debug!(%destination, refused = %list,
            "addresses that are not global unicast left out of the answer");
    }
    handshake::dial(&admitted, settings.connect_timeout)
        .await
        .map_err(|e| {
            let status = if e.timed_out() {
                Status::GatewayTimeout
            } else {
                Status::BadGateway
            };
            Refusal::new(
                status,
                destination,
                format!("cannot connect to {destination}: {e}"),
            )
        })
}
