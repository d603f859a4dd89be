//! The admin HTTP endpoint (`global.admin`, e.g. `127.0.0.1:9090`).
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /metrics` | 200, Prometheus text format 0.0.4 of [`Metrics`], after [`AdminState::refresh`] |
//! | `GET /healthz` | 200 `ok` while the process serves this endpoint (liveness) |
//! | `GET /readyz` | 200 `ready` once every listener is bound and every backend server has an address; 503 `not ready` with the reasons otherwise (before start-up ends, while a name has never resolved, while draining) |
//! | `GET /stats` | 200, a small JSON summary (see [`stats`]), after [`AdminState::refresh`] |
//!
//! `HEAD` is accepted wherever `GET` is; other methods get 405 with `Allow`, unknown paths 404.
//!
//! Bytes the kernel carries never reach userspace, so their counters live in eBPF maps;
//! `refresh` copies them into [`Metrics`] right before a scrape, which keeps the kernel path
//! observable with plain `curl` without a background polling task.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::core::Collector;
use prometheus::proto::Metric;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// A client must send its request headers within this time, so that slow or idle clients
/// cannot pin connection tasks (the endpoint may be reachable from untrusted networks).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after an accept error caused by exhausted resources (fds, memory): retrying at once
/// would spin a core while nothing can succeed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
const HTML_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Whether the request's `Accept` lists `text/html` (browsers put it first; curl, Prometheus
/// and scripts do not send it).
fn wants_html<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .is_some_and(|t| t.trim() == "text/html")
        })
}

/// What the admin endpoint reads; shared by every connection task.
pub(crate) struct AdminState {
    /// The families rendered on `/metrics` and summarized on `/stats`.
    pub metrics: Arc<Metrics>,
    /// Set true once every listener is bound; false again when draining starts.
    pub ready: Arc<AtomicBool>,
    /// Why the daemon cannot serve every frontend yet, each reason a line (a backend server
    /// whose name has no address known); empty when nothing is missing.
    pub pending: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Called before /metrics and /stats are rendered, to pull the kernel's counters into `metrics`.
    ///
    /// Runs on the async runtime, so it must be quick (a few map reads), not block on I/O.
    pub refresh: Box<dyn Fn() + Send + Sync>,
    /// The `reload` object of `/stats`: how many reloads, and the last one's result and error.
    pub reload: Arc<std::sync::Mutex<Value>>,
    /// The `backends` object of `/stats` from the pools serving (addresses, health, last
    /// check, connections); `None`: built from `agent_proxy_server_up` alone.
    pub backends: Box<dyn Fn() -> Option<Value> + Send + Sync>,
    /// When the daemon started, for `uptime_seconds`.
    pub started: std::time::Instant,
}

/// The `backends` object of `/stats` from the pools serving: every address with its health,
/// weight, open connections and last active check.
pub(crate) fn backends_status(pools: &[Arc<crate::pool::Pool>]) -> Value {
    let mut backends = Map::new();
    for pool in pools {
        let servers = pool
            .status()
            .into_iter()
            .map(|s| {
                let last_check = s.last_check.map(|(at, error)| {
                    let at = at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    json!({ "at_unix": at, "error": error })
                });
                json!({
                    "server": s.server,
                    "address": s.address.to_string(),
                    "up": s.up,
                    "weight": s.weight,
                    "active_connections": s.active,
                    "last_check": last_check,
                })
            })
            .collect();
        backends.insert(pool.name.clone(), Value::Array(servers));
    }
    Value::Object(backends)
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` resolves.
///
/// Each connection runs in its own task. When `shutdown` resolves, accepting stops, open
/// connections are told to close after their in-flight request, and this function returns
/// without waiting for them. Accept errors are logged and never end the loop, so the result is
/// `Ok` today; it stays `io::Result` so that callers need not change if that ever differs.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_timeout(listener, state, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`] with a chosen header-read timeout, so that tests need not wait 10 s.
async fn serve_with_timeout(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The timer runs whenever hyper waits for a request head, idle keep-alive included.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let builder = Arc::new(builder);
    // Dropping the sender (or sending) tells every connection task to finish gracefully.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            // Shutdown first: a flood of connections must not delay stopping.
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = serve_connection(
                    Arc::clone(&builder),
                    stream,
                    peer,
                    Arc::clone(&state),
                    stop_rx.clone(),
                );
                tokio::spawn(conn);
            }
            Err(err) => {
                tracing::warn!(error = %err, "admin endpoint: accept failed");
                if is_resource_exhaustion(&err) {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
    drop(stop_tx);
    tracing::debug!("admin endpoint stopped");
    Ok(())
}

/// Runs one HTTP/1.1 connection until the client closes it or the server stops.
async fn serve_connection(
    builder: Arc<hyper::server::conn::http1::Builder>,
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let html = wants_html(&req);
        let state = Arc::clone(&state);
        async move {
            let response = if matches!(path.as_str(), "/metrics" | "/stats") {
                // The refresh reads the kernel's per-CPU counters (some 800 `bpf()` calls) and,
                // with same-host agents, walks two of their maps: off the runtime's workers, so
                // no connection task waits on it.
                let blocking =
                    tokio::task::spawn_blocking(move || handle(&state, &method, &path, html));
                blocking
                    .await
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"))
            } else {
                handle(&state, &method, &path, html)
            };
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // `changed` fails once the sender is dropped: that is the stop signal.
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        // Clients that time out or vanish mid-request are routine, not an operator problem.
        tracing::debug!(%peer, error = %err, "admin endpoint: connection error");
    }
}

/// 200 `ready`, or 503 `not ready` followed by one line per reason.
fn readyz(state: &AdminState) -> Response<Full<Bytes>> {
    if !state.ready.load(Ordering::Acquire) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\nstarting, or draining\n",
        );
    }
    let pending = (state.pending)();
    if pending.is_empty() {
        return text(StatusCode::OK, "ready\n");
    }
    let mut body = String::from("not ready\n");
    for reason in pending {
        body.push_str(&reason);
        body.push('\n');
    }
    respond(StatusCode::SERVICE_UNAVAILABLE, TEXT_CONTENT_TYPE, body)
}

/// Routes one request. Synchronous: every answer is computed from memory (`/metrics` and
/// `/stats`, which first read the kernel maps, run on the blocking pool).
///
/// `html`: the client prefers HTML (`Accept: text/html`, as browsers send): `/stats` is then
/// the page ([`page`]), JSON otherwise.
fn handle(state: &AdminState, method: &Method, path: &str, html: bool) -> Response<Full<Bytes>> {
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/stats") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    // HEAD gets the same head as GET; hyper leaves the body out on the wire.
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            (state.refresh)();
            respond(StatusCode::OK, METRICS_CONTENT_TYPE, state.metrics.render())
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(state),
        // "/stats", the only route left.
        _ => {
            (state.refresh)();
            let mut document = stats(&state.metrics);
            document["version"] = json!(crate::VERSION);
            document["uptime_seconds"] = json!(state.started.elapsed().as_secs());
            document["reload"] = state
                .reload
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(backends) = (state.backends)() {
                document["backends"] = backends;
            }
            if html {
                return respond(StatusCode::OK, HTML_CONTENT_TYPE, page::render(&document));
            }
            let mut body = document.to_string();
            body.push('\n');
            respond(StatusCode::OK, JSON_CONTENT_TYPE, body)
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, TEXT_CONTENT_TYPE, body)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The `/stats` document: a human-sized summary of [`Metrics`], for `curl | jq`.
///
/// ```json
/// {
///   "dataplane": "kernel",
///   "frontends": {
///     "metrics": {
///       "current_connections": 3,
///       "connections_total": 120,
///       "bytes": {
///         "upstream":   { "kernel": 81920, "userspace": 0 },
///         "downstream": { "kernel": 2048,  "userspace": 0 }
///       }
///     }
///   },
///   "kernel_map_entries": { "sockmap": 6 }
/// }
/// ```
///
/// A frontend appears once any of its counters has a value. `dataplane` is the path whose
/// `agent_proxy_dataplane` gauge is 1, or `null` before one is chosen. Counts are integers.
pub(crate) fn stats(metrics: &Metrics) -> Value {
    let mut frontends = Map::new();
    for m in &samples(&metrics.frontend_current_connections) {
        if let Some(name) = label(m, "frontend") {
            frontend_entry(&mut frontends, name)["current_connections"] =
                json!(m.get_gauge().get_value() as i64);
        }
    }
    for m in &samples(&metrics.frontend_connections_total) {
        if let Some(name) = label(m, "frontend") {
            frontend_entry(&mut frontends, name)["connections_total"] =
                json!(m.get_counter().get_value() as u64);
        }
    }
    for m in &samples(&metrics.bytes_total) {
        if let (Some(name), Some(direction), Some(path)) = (
            label(m, "frontend"),
            label(m, "direction"),
            label(m, "path"),
        ) {
            // Indexing a `Value` creates missing keys, so an unforeseen direction or path is
            // shown rather than dropped.
            frontend_entry(&mut frontends, name)["bytes"][direction][path] =
                json!(m.get_counter().get_value() as u64);
        }
    }

    for m in &samples(&metrics.frontend_rejected_total) {
        if let Some(name) = label(m, "frontend") {
            let entry = &mut frontend_entry(&mut frontends, name)["rejected"];
            *entry = json!(entry.as_u64().unwrap_or(0) + m.get_counter().get_value() as u64);
        }
    }

    let mut maps = Map::new();
    for m in &samples(&metrics.kernel_map_entries) {
        if let Some(map) = label(m, "map") {
            maps.insert(map.to_owned(), json!(m.get_gauge().get_value() as i64));
        }
    }

    let dataplane = samples(&metrics.dataplane)
        .iter()
        .find(|m| m.get_gauge().get_value() > 0.0)
        .and_then(|m| label(m, "path"))
        .map(str::to_owned);

    // backend -> its server addresses and whether each is up (health).
    let mut backends = Map::new();
    for m in &samples(&metrics.server_up) {
        if let (Some(backend), Some(server), Some(address)) =
            (label(m, "backend"), label(m, "server"), label(m, "address"))
        {
            let servers = backends.entry(backend).or_insert_with(|| json!([]));
            if let Some(list) = servers.as_array_mut() {
                list.push(json!({
                    "server": server,
                    "address": address,
                    "up": m.get_gauge().get_value() > 0.0,
                }));
            }
        }
    }

    json!({
        "dataplane": dataplane,
        "frontends": frontends,
        "backends": backends,
        "kernel_map_entries": maps,
    })
}

/// The `/stats` object of frontend `name`, created with zeroes so that every frontend has the
/// same shape whichever counters it has touched.
fn frontend_entry<'a>(frontends: &'a mut Map<String, Value>, name: &str) -> &'a mut Value {
    frontends.entry(name).or_insert_with(|| {
        json!({
            "current_connections": 0,
            "connections_total": 0,
            "rejected": 0,
            "bytes": {
                "upstream": { "kernel": 0, "userspace": 0 },
                "downstream": { "kernel": 0, "userspace": 0 },
            },
        })
    })
}

/// Every labelled sample of one family. Collecting only that family keeps `/stats` independent
/// of how many other families the registry holds.
fn samples(family: &impl Collector) -> Vec<Metric> {
    family
        .collect()
        .into_iter()
        .flat_map(|mut f| f.take_metric())
        .collect()
}

fn label<'a>(metric: &'a Metric, name: &str) -> Option<&'a str> {
    metric
        .get_label()
        .iter()
        .find(|pair| pair.name() == name)
        .map(|pair| pair.value())
}

/// Accept errors after which retrying at once cannot succeed: the process or system is out of
/// file descriptors or memory, and only time (connections closing) frees them.
fn is_resource_exhaustion(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

mod page;

#[cfg(test)]
mod tests;
