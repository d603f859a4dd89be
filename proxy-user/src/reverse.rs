//! `mode = "http"`: an HTTP/1.1 reverse proxy to the frontend's backend pool that sees every
//! request, for per-API metrics (docs/http.md). TLS may be on either side: the frontend's
//! `tls` (the operator's own certificate, so agents verify the proxy as the intake's stand-in,
//! no MITM key) and the backend's `tls` (verified TLS to the intake).
//!
//! A connection is served by hyper's HTTP/1.1 server ([`crate::http::serve`]): every head is
//! checked before hyper reads it (request smuggling, duplicate `Host` or `Content-Length`,
//! oversized heads: 400 or 431, nothing forwarded); the first head must be complete within
//! `request_timeout` (408), and a kept-alive connection may wait for its next one for the
//! frontend's `idle_timeout`. Each request goes to the client connection's upstream
//! connection - dialed from the pool for its first request (balancing, health, retries as in
//! tcp mode) and kept while both ends keep it alive - in origin form, with the hop-by-hop
//! headers removed both ways and `Host` as the client sent it (an absolute-form target's
//! authority replaces it, RFC 9112 section 3.2.2). Bodies stream both ways.
//!
//! A kept-alive upstream connection the server closed between two requests is found on the
//! next send: if the request was not sent, it goes once more on a new connection; a request
//! whose body was sent, even in part, is answered 502.
//!
//! The proxy's own answers: 400, 408, 431 (heads), 503 (no server up), 502 (every dial
//! failed, or the server failed before its answer), 504 (every dial timed out).
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::HttpMode;
use crate::conn::{Conn, Path, Route};
use crate::dial::DialError;
use crate::http::serve::{self, Limits, Tally};
use crate::http::{self, Body, RequestMetrics};
use crate::metrics::Metrics;
use crate::pool::{AttemptError, ConnectError, Lease, Pool};
use crate::relay::TcpUnder as _;
use crate::tls::{ClientTls, HandshakeError, ServerTls};
use crate::upstream;

/// What an http frontend needs at run time, built once from its config.
pub(crate) struct Settings {
    pub pool: Arc<Pool>,
    pub tls: Option<Arc<ServerTls>>,
    pub backend_tls: Option<Arc<ClientTls>>,
    request_timeout: Duration,
    /// `None` with `request_metrics = false`.
    metrics: Option<RequestMetrics>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("reverse::Settings")
            .field("backend", &self.pool.name)
            .field("tls", &self.tls.is_some())
            .field("backend_tls", &self.backend_tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub(crate) fn new(
        config: &HttpMode,
        pool: Arc<Pool>,
        tls: Option<Arc<ServerTls>>,
        backend_tls: Option<Arc<ClientTls>>,
        metrics: &Arc<Metrics>,
        frontend: &str,
    ) -> Self {
        Self {
            pool,
            tls,
            backend_tls,
            request_timeout: config.request_timeout,
            metrics: config
                .request_metrics
                .then(|| RequestMetrics::new(metrics, frontend)),
        }
    }
}

/// Serves one admitted connection of an http frontend to its end, log line included.
pub(crate) async fn run(conn: &Conn<'_>, client: TcpStream, settings: &Settings) {
    let _ = client.set_nodelay(true);
    let Some(tls) = &settings.tls else {
        return Box::pin(serve_requests(conn, client, settings)).await;
    };
    if let Some(client) = conn.accept_tls(tls, client).await {
        Box::pin(serve_requests(conn, client, settings)).await;
    }
}

/// Serves the requests of `client` (plain, or the TLS session) to the end, log line included.
async fn serve_requests<S>(conn: &Conn<'_>, mut client: S, settings: &Settings)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tally = Tally::new(conn.relay_counters());
    let proxy = Proxy {
        conn,
        settings,
        upstream: tokio::sync::Mutex::new(None),
        summary: Mutex::new(Summary::default()),
        drivers: serve::Drivers::default(),
    };
    let limits = Limits {
        first_head: Some(settings.request_timeout),
        idle: conn.frontend.idle_timeout,
    };
    let served = serve::serve(
        &mut client,
        Vec::new(),
        |request| proxy.handle(request),
        &proxy.drivers,
        limits,
        &conn.shared.abort,
        &tally,
    )
    .await;
    let mut summary = proxy
        .summary
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    // The upstream connection ends now, not after the answer below.
    drop((proxy.upstream, proxy.drivers));
    let text = |status, why: &str| http::answer_text(status, why);
    let metrics = settings.metrics.as_ref();
    let concluded = served
        .conclude(client, text, metrics, &tally, &mut summary.requests)
        .await;
    summary.status = concluded.answered.or(summary.status);
    let (end, mut detail) = (concluded.end, concluded.detail);
    let status = summary.status.map(|s| s.to_string());
    let route = Route {
        server: summary.server.as_deref().unwrap_or("-"),
        status: status.as_deref().unwrap_or("-"),
        ..Route::NONE
    };
    if let Some(error) = summary.last_error {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&format!("last answered by the proxy: {error}"));
    }
    let outcome = tally.outcome(end, "requests", summary.requests, &detail);
    conn.finish(&route, Path::Userspace, &outcome);
}

/// What the log line says of the requests.
#[derive(Default)]
struct Summary {
    requests: u64,
    /// The last server a request went to.
    server: Option<String>,
    /// The last answer's status.
    status: Option<u16>,
    /// Why the proxy last answered a request itself (for the log line: the client is told less).
    last_error: Option<String>,
}

/// The client connection's upstream connection.
struct Upstream {
    sender: SendRequest<Body>,
    server: String,
    /// Its place in the pool's balancing (least connections) while it is open.
    _lease: Lease,
}

struct Proxy<'c, 'a> {
    conn: &'c Conn<'a>,
    settings: &'c Settings,
    /// Held across a request: HTTP/1.1 serves one at a time.
    upstream: tokio::sync::Mutex<Option<Upstream>>,
    summary: Mutex<Summary>,
    /// The upstream connection's hyper driver, run in the client connection's task.
    drivers: serve::Drivers,
}

impl Proxy<'_, '_> {
    async fn handle(&self, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let origin = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let exchange = self
            .settings
            .metrics
            .as_ref()
            .map(|m| m.start(request.method().as_str(), &origin));
        let (parts, body) = request.into_parts();
        let body = match &exchange {
            Some(exchange) => exchange.request_body(body),
            None => body.map_err(Into::into).boxed(),
        };
        let request = Request::from_parts(parts, body);
        let (response, server) = match self.forward(request, &origin).await {
            Ok((response, server)) => (response, Some(server)),
            Err((status, detail)) => {
                tracing::debug!(frontend = %self.conn.frontend.name, status = status.as_u16(),
                    %detail, "request answered by the proxy");
                let answer = http::answer(status, told(status, &detail));
                self.summary
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = Some(detail);
                (answer, None)
            }
        };
        let status = response.status().as_u16();
        {
            let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
            summary.requests += 1;
            summary.status = Some(status);
            if let Some(server) = server {
                summary.server = Some(server);
            }
        }
        let (parts, body) = response.into_parts();
        let body = match exchange {
            Some(exchange) => exchange.response_body(status, body),
            None => body,
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Forwards one request on the upstream connection; the answer and the server.
    async fn forward(
        &self,
        request: Request<Body>,
        origin: &str,
    ) -> Result<(Response<Body>, String), (StatusCode, String)> {
        let (mut parts, body) = request.into_parts();
        if let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        http::strip_hop_by_hop(&mut parts.headers);
        // hyper's server already answered `100 Continue` when the body was first read.
        parts.headers.remove(header::EXPECT);
        parts.uri = origin
            .parse::<Uri>()
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid path: {e}")))?;
        parts.version = Version::HTTP_11;
        let mut outgoing = Request::from_parts(parts, body);

        let mut slot = self.upstream.lock().await;
        if slot.as_ref().is_some_and(|u| u.sender.is_closed()) {
            *slot = None;
        }
        // A kept connection may turn out closed by the server: then the request, if unsent,
        // goes once more on a new one.
        let mut reused = slot.is_some();
        let response = loop {
            let upstream = match slot.as_mut() {
                Some(upstream) => upstream,
                None => slot.insert(self.dial().await?),
            };
            if let Err(e) = upstream.sender.ready().await {
                // Closed before anything was sent on it.
                let server = upstream.server.clone();
                *slot = None;
                if std::mem::take(&mut reused) {
                    continue;
                }
                return Err((StatusCode::BAD_GATEWAY, format!("upstream {server}: {e}")));
            }
            match upstream.sender.try_send_request(outgoing).await {
                Ok(response) => break response,
                Err(mut e) => {
                    let server = upstream.server.clone();
                    *slot = None;
                    match e.take_message() {
                        Some(unsent) if std::mem::take(&mut reused) => outgoing = unsent,
                        _ => {
                            return Err((
                                StatusCode::BAD_GATEWAY,
                                format!("upstream {server}: {}", e.error()),
                            ));
                        }
                    }
                }
            }
        };
        let server = slot.as_ref().map(|u| u.server.clone()).unwrap_or_default();
        drop(slot);
        let (mut parts, body) = response.into_parts();
        http::strip_hop_by_hop(&mut parts.headers);
        Ok((
            Response::from_parts(parts, body.map_err(Into::into).boxed()),
            server,
        ))
    }

    /// A new upstream connection from the pool, with hyper's client on it.
    async fn dial(&self) -> Result<Upstream, (StatusCode, String)> {
        let (settings, shared) = (self.settings, self.conn.shared);
        let (stream, lease) = upstream::dial(
            &settings.pool,
            settings.backend_tls.as_deref(),
            &shared.metrics,
        )
        .await
        .map_err(|e| (connect_status(&e), e.to_string()))?;
        self.conn.keep_alive(stream.tcp());
        let server = lease.server().name.clone();
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("upstream {server}: {e}")))?;
        // Ends when the sender is dropped (with this client connection) or the server closes.
        let name = server.clone();
        self.drivers.run(async move {
            if let Err(e) = connection.await {
                tracing::debug!(server = %name, error = %e, "upstream connection of an http frontend failed");
            }
        });
        Ok(Upstream {
            sender,
            server,
            _lease: lease,
        })
    }
}

/// What a client is told of an answer the proxy wrote: what was wrong with its request, but
/// nothing of the backend's servers and addresses (those go to the log line).
fn told(status: StatusCode, detail: &str) -> &str {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => "no server of the backend is up",
        StatusCode::GATEWAY_TIMEOUT => "the backend did not answer in time",
        StatusCode::BAD_GATEWAY => "the backend could not be reached or failed before its answer",
        _ => detail,
    }
}

/// The answer when no upstream connection could be made: 503 with no server up, 504 when the
/// last attempt timed out, else 502.
fn connect_status(error: &ConnectError) -> StatusCode {
    match error {
        ConnectError::NoServer { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ConnectError::Failed {
            last:
                AttemptError::Dial {
                    source: DialError::Timeout(_),
                    ..
                }
                | AttemptError::Handshake {
                    source: HandshakeError::Timeout { .. },
                    ..
                },
            ..
        } => StatusCode::GATEWAY_TIMEOUT,
        ConnectError::Failed { .. } => StatusCode::BAD_GATEWAY,
    }
}
