//! HTTP/1.1 requests the proxy sees one by one: the pieces a mode needs to forward them with
//! hyper - the absolute-form target ([`absolute`]), the hop-by-hop headers a proxy removes and
//! the `Via` it adds ([`strip_hop_by_hop`], [`add_via`]), and the per-request metrics with
//! their bounded `api` label ([`api`], [`RequestMetrics`]).
//!
//! A data-path module (docs/architecture.md, "Layers"): connect mode's plain-HTTP forwarding
//! uses it; it knows nothing of modes or connections.
pub(crate) mod absolute;
pub(crate) mod api;
pub(crate) mod heads;
pub(crate) mod request;
pub(crate) mod scan;
pub(crate) mod serve;

use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt as _, combinators::BoxBody};
use hyper::StatusCode;
use hyper::body::{Bytes, Frame};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounter;

use crate::metrics::Metrics;

/// The body type both sides of a forwarded exchange use: a streamed `Incoming`, or an answer
/// the proxy writes itself.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// A body's error: hyper's, from either peer.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body the proxy writes itself.
pub(crate) fn full(text: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The one-line text body of an answer the proxy writes itself.
fn answer_body(status: StatusCode, detail: &str) -> String {
    let reason = status.canonical_reason().unwrap_or("Error");
    format!("agent-proxy: {reason}: {detail}\n")
}

/// An answer the proxy writes itself, as hyper sends it: a one-line text body with its
/// `Content-Length`; `Connection: close` after a 400 (the request could not be read as one).
pub(crate) fn answer(status: StatusCode, detail: &str) -> hyper::Response<Body> {
    answer_with(status, detail, None, status == StatusCode::BAD_REQUEST)
}

/// [`answer`] with a header besides the framing (a 407's challenge, a 405's `Allow`), and
/// `Connection: close` when `close`.
pub(crate) fn answer_with(
    status: StatusCode,
    detail: &str,
    extra: Option<(&'static str, String)>,
    close: bool,
) -> hyper::Response<Body> {
    let body = answer_body(status, detail);
    let length = HeaderValue::from(body.len());
    let mut response = hyper::Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // Stated: the metrics' wrapper hides the body's length from hyper, which would send it
    // chunked.
    headers.insert(header::CONTENT_LENGTH, length);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some((name, value)) = extra
        && let Ok(value) = HeaderValue::from_str(&value)
    {
        headers.insert(name, value);
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The same answer as raw bytes, for a connection hyper no longer serves (a refused head):
/// always `Connection: close`.
pub(crate) fn answer_text(status: StatusCode, detail: &str) -> String {
    answer_text_with(status, detail, None)
}

/// [`answer_text`] with a header besides the framing (see [`answer_with`]).
pub(crate) fn answer_text_with(
    status: StatusCode,
    detail: &str,
    extra: Option<(&'static str, String)>,
) -> String {
    let body = answer_body(status, detail);
    let extra = extra
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    )
}

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), and the
/// proxy's own (`Proxy-Authorization` is the client's credential for this proxy, never the
/// server's). `Transfer-Encoding` is framing: hyper re-frames each body it forwards from it.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, and every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| *name != header::TRANSFER_ENCODING && *name != header::CONTENT_LENGTH)
        .collect();
    for name in listed.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove(header::TRAILER);
}

/// The `Via` value the proxy adds (RFC 9110 section 7.6.3), after any the message carried.
pub(crate) const VIA: &str = "1.1 agent-proxy";

pub(crate) fn add_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static(VIA));
}

/// One frontend's per-request metrics, with its bounded set of `api` values.
pub(crate) struct RequestMetrics {
    frontend: String,
    metrics: Arc<Metrics>,
    apis: api::Apis,
    overflow: IntCounter,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestMetrics({})", self.frontend)
    }
}

impl RequestMetrics {
    pub(crate) fn new(metrics: &Arc<Metrics>, frontend: &str) -> Self {
        Self {
            frontend: frontend.to_owned(),
            metrics: Arc::clone(metrics),
            apis: api::Apis::default(),
            overflow: metrics
                .http_api_overflow_total
                .with_label_values(&[frontend]),
        }
    }

    /// Starts the record of one request, by its method and origin-form target.
    pub(crate) fn start(&self, method: &str, origin: &str) -> Exchange {
        let api = self.apis.label(origin);
        if api.overflow {
            self.overflow.inc();
        }
        let labels = [self.frontend.as_str(), api.label.as_str()];
        Exchange {
            request_bytes: self
                .metrics
                .http_request_bytes_total
                .with_label_values(&labels),
            response_bytes: self
                .metrics
                .http_response_bytes_total
                .with_label_values(&labels),
            record: Record {
                metrics: Arc::clone(&self.metrics),
                frontend: self.frontend.clone(),
                method: api::method_label(method),
                api: api.label,
                status: 0,
                started: Instant::now(),
            },
        }
    }
}

/// The metrics of one request in flight; recorded once its answer's body is done (or dropped:
/// a client that leaves in the middle still counts).
pub(crate) struct Exchange {
    request_bytes: IntCounter,
    response_bytes: IntCounter,
    record: Record,
}

impl Exchange {
    /// Records a request the proxy answered without a body to stream (a refused head).
    pub(crate) fn finish(mut self, status: u16) {
        self.record.status = status;
    }

    /// The request's body, counted as it streams.
    pub(crate) fn request_body<B>(&self, body: B) -> Body
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let counter = self.request_bytes.clone();
        body.map_err(Into::into)
            .map_frame(move |frame| count(&counter, frame))
            .boxed()
    }

    /// The answer's body, counted as it streams; the request is recorded with `status` when
    /// the body is done.
    pub(crate) fn response_body(self, status: u16, body: Body) -> Body {
        let Exchange {
            response_bytes,
            mut record,
            ..
        } = self;
        record.status = status;
        body.map_frame(move |frame| {
            // The record lives in this closure: dropped with the body, it is written then.
            let _ = &record;
            count(&response_bytes, frame)
        })
        .boxed()
    }
}

fn count(counter: &IntCounter, frame: Frame<Bytes>) -> Frame<Bytes> {
    if let Some(data) = frame.data_ref() {
        counter.inc_by(data.len() as u64);
    }
    frame
}

/// What is written to `agent_proxy_http_requests_total` and the duration histogram.
struct Record {
    metrics: Arc<Metrics>,
    frontend: String,
    method: &'static str,
    api: String,
    status: u16,
    started: Instant,
}

impl Drop for Record {
    fn drop(&mut self) {
        let status = self.status.to_string();
        self.metrics
            .http_requests_total
            .with_label_values(&[&self.frontend, self.method, &self.api, &status])
            .inc();
        self.metrics
            .http_request_duration_seconds
            .with_label_values(&[&self.frontend, &self.api])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_via_comes() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic YTpi"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("content-length", "2"),
            ("dd-api-key", "k"),
            ("via", "1.0 other"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut h);
        add_via(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "dd-api-key", "via"]);
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["1.0 other", VIA]);
    }

    #[tokio::test]
    async fn a_request_is_recorded_when_its_answer_is_done() {
        let metrics = Arc::new(Metrics::new());
        let m = RequestMetrics::new(&metrics, "fe");
        let exchange = m.start("POST", "/api/v1/check_run/42?x");
        let body = exchange.request_body(full("abc"));
        let _ = body.collect().await;
        let body = exchange.response_body(202, full("12345"));
        let text = metrics.render();
        assert!(!text.contains("agent_proxy_http_requests_total{"), "{text}");
        let _ = body.collect().await;
        let text = metrics.render();
        for line in [
            "agent_proxy_http_requests_total{api=\"/api/v1/check_run/:id\",frontend=\"fe\",method=\"POST\",status=\"202\"} 1",
            "agent_proxy_http_request_bytes_total{api=\"/api/v1/check_run/:id\",frontend=\"fe\"} 3",
            "agent_proxy_http_response_bytes_total{api=\"/api/v1/check_run/:id\",frontend=\"fe\"} 5",
            "agent_proxy_http_request_duration_seconds_count{api=\"/api/v1/check_run/:id\",frontend=\"fe\"} 1",
        ] {
            assert!(text.contains(line), "no {line} in:\n{text}");
        }
    }
}
