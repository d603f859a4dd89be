//! Tests of the admin endpoint over real loopback sockets, speaking raw HTTP/1.1 so that what
//! is asserted is exactly what `curl` or Prometheus would see.

use std::sync::atomic::AtomicU64;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::*;

/// Generous bound for anything that should happen at once, so a hang fails instead of blocking.
const PROMPT: Duration = Duration::from_secs(5);

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    refreshes: Arc<AtomicU64>,
    /// What `pending` answers: the reasons `/readyz` gives.
    pending: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Starts `serve` on 127.0.0.1:0 with a `refresh` that bumps a kernel counter, as the real one
/// copies the eBPF maps, so that tests can see it ran before rendering.
async fn start() -> Server {
    start_with_timeout(HEADER_READ_TIMEOUT).await
}

async fn start_with_timeout(header_read_timeout: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let refreshes = Arc::new(AtomicU64::new(0));
    let refresh = {
        let metrics = Arc::clone(&metrics);
        let refreshes = Arc::clone(&refreshes);
        Box::new(move || {
            refreshes.fetch_add(1, Ordering::SeqCst);
            metrics
                .kernel_errors_total
                .with_label_values(&["refresh_test"])
                .inc();
        })
    };
    let pending = Arc::new(std::sync::Mutex::new(Vec::new()));
    let state = Arc::new(AdminState {
        metrics: Arc::clone(&metrics),
        ready: Arc::clone(&ready),
        refresh,
        pending: {
            let pending = Arc::clone(&pending);
            Box::new(move || pending.lock().unwrap().clone())
        },
        reload: Arc::new(std::sync::Mutex::new(serde_json::json!({ "reloads": 0 }))),
        backends: Box::new(|| None),
        started: std::time::Instant::now(),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(serve_with_timeout(
        listener,
        state,
        shutdown,
        header_read_timeout,
    ));
    Server {
        addr,
        metrics,
        ready,
        refreshes,
        pending,
        stop: Some(stop),
        task,
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse(raw: &[u8]) -> Answer {
    let raw = std::str::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("end of headers");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Sends one request on a fresh connection with `Connection: close` and reads to EOF.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(PROMPT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    parse(&raw)
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).await
}

#[tokio::test]
async fn metrics_refreshes_then_renders() {
    let server = start().await;
    let first = get(server.addr, "/metrics").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // The counter only moves inside `refresh`, so seeing it proves refresh ran before render.
    assert!(
        first
            .body
            .contains("agent_proxy_kernel_errors_total{kind=\"refresh_test\"} 1\n"),
        "{}",
        first.body
    );
    let second = get(server.addr, "/metrics").await;
    assert!(
        second
            .body
            .contains("agent_proxy_kernel_errors_total{kind=\"refresh_test\"} 2\n")
    );
    assert!(
        second
            .body
            .contains("# TYPE agent_proxy_kernel_errors_total counter")
    );
    assert_eq!(server.refreshes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn healthz_answers_ok_without_refresh() {
    let server = start().await;
    let answer = get(server.addr, "/healthz").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
    assert_eq!(server.refreshes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn readyz_follows_the_flag() {
    let server = start().await;
    let answer = get(server.addr, "/readyz").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (503, "not ready\nstarting, or draining\n")
    );
    server.ready.store(true, Ordering::Release);
    let answer = get(server.addr, "/readyz").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ready\n"));
    // A backend server without an address: 503 with the reason, 200 again once it has one.
    let reason = "backend intake: no address known for intake.example:443 yet";
    server.pending.lock().unwrap().push(reason.to_owned());
    let answer = get(server.addr, "/readyz").await;
    assert_eq!(
        (answer.status, answer.body),
        (503, format!("not ready\n{reason}\n"))
    );
    server.pending.lock().unwrap().clear();
    let answer = get(server.addr, "/readyz").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ready\n"));
    // Draining clears the flag again.
    server.ready.store(false, Ordering::Release);
    assert_eq!(get(server.addr, "/readyz").await.status, 503);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let server = start().await;
    assert_eq!(get(server.addr, "/nope").await.status, 404);
    assert_eq!(get(server.addr, "/metrics/extra").await.status, 404);
    assert_eq!(request(server.addr, "POST", "/nope").await.status, 404);
    for path in ["/metrics", "/healthz", "/readyz", "/stats"] {
        let answer = request(server.addr, "POST", path).await;
        assert_eq!(answer.status, 405, "{path}");
        assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{path}");
    }
    assert_eq!(server.refreshes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn head_has_headers_but_no_body() {
    let server = start().await;
    let answer = request(server.addr, "HEAD", "/healthz").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-length"), Some("3"));
    assert_eq!(answer.body, "");
}

#[tokio::test]
async fn query_string_does_not_change_the_route() {
    let server = start().await;
    assert_eq!(get(server.addr, "/healthz?verbose=1").await.status, 200);
}

#[tokio::test]
async fn stats_summarizes_frontends_and_maps() {
    let server = start().await;
    let m = &server.metrics;
    m.frontend_connections_total
        .with_label_values(&["fe"])
        .inc_by(7);
    m.frontend_current_connections
        .with_label_values(&["fe"])
        .set(2);
    m.bytes_total
        .with_label_values(&["fe", "upstream", "kernel"])
        .inc_by(4096);
    m.bytes_total
        .with_label_values(&["fe", "downstream", "userspace"])
        .inc_by(10);
    m.bytes_total
        .with_label_values(&["other", "upstream", "userspace"])
        .inc_by(1);
    m.kernel_map_entries.with_label_values(&["sockmap"]).set(4);
    m.dataplane.with_label_values(&["kernel"]).set(1);
    m.dataplane.with_label_values(&["userspace"]).set(0);
    m.server_up
        .with_label_values(&["be", "intake.example:443", "10.0.0.1:443"])
        .set(1);
    m.server_up
        .with_label_values(&["be", "intake.example:443", "10.0.0.2:443"])
        .set(0);

    m.frontend_rejected_total
        .with_label_values(&["fe", "denied"])
        .inc_by(2);
    m.frontend_rejected_total
        .with_label_values(&["fe", "rate_limit"])
        .inc();

    let answer = get(server.addr, "/stats").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(server.refreshes.load(Ordering::SeqCst), 1);
    let mut doc: Value = serde_json::from_str(&answer.body).unwrap();
    let version = doc.as_object_mut().unwrap().remove("version").unwrap();
    assert_eq!(version, json!(crate::VERSION));
    assert!(crate::VERSION.starts_with(concat!(env!("CARGO_PKG_VERSION"), " (")));
    let uptime = doc
        .as_object_mut()
        .unwrap()
        .remove("uptime_seconds")
        .unwrap();
    assert!(uptime.as_u64().is_some_and(|s| s < 60), "{uptime}");
    assert_eq!(
        doc,
        json!({
            "dataplane": "kernel",
            "frontends": {
                "fe": {
                    "current_connections": 2,
                    "connections_total": 7,
                    "rejected": 3,
                    "bytes": {
                        "upstream": { "kernel": 4096, "userspace": 0 },
                        "downstream": { "kernel": 0, "userspace": 10 },
                    },
                },
                "other": {
                    "current_connections": 0,
                    "connections_total": 0,
                    "rejected": 0,
                    "bytes": {
                        "upstream": { "kernel": 0, "userspace": 1 },
                        "downstream": { "kernel": 0, "userspace": 0 },
                    },
                },
            },
            "backends": {
                "be": [
                    { "server": "intake.example:443", "address": "10.0.0.1:443", "up": true },
                    { "server": "intake.example:443", "address": "10.0.0.2:443", "up": false },
                ],
            },
            "kernel_map_entries": { "sockmap": 4 },
            "reload": { "reloads": 0 },
        })
    );
}

#[test]
fn stats_of_fresh_metrics_is_empty() {
    let doc = stats(&Metrics::new());
    assert_eq!(
        doc,
        json!({ "dataplane": null, "frontends": {}, "backends": {}, "kernel_map_entries": {} })
    );
}

#[tokio::test]
async fn shutdown_returns_and_stops_accepting() {
    let mut server = start().await;
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    server.stop.take().unwrap().send(()).unwrap();
    timeout(PROMPT, &mut server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    // The listener was dropped with `serve`: nothing accepts any more.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let mut server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // Read exactly the keep-alive answer; the connection stays open after it.
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while !raw.ends_with(b"\r\n\r\nok\n") {
        let n = timeout(PROMPT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(n, 0, "closed before the answer: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    }
    assert_eq!(parse(&raw).status, 200);

    server.stop.take().unwrap().send(()).unwrap();
    timeout(PROMPT, &mut server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let n = timeout(PROMPT, stream.read(&mut buf))
        .await
        .expect("idle connection closed after shutdown")
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let server = start_with_timeout(Duration::from_millis(200)).await;
    let mut buf = [0u8; 1024];
    // A client that never sends anything, and one that stalls mid-headers, are both closed.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    for stream in [&mut silent, &mut stalled] {
        let mut raw = Vec::new();
        loop {
            let n = timeout(PROMPT, stream.read(&mut buf))
                .await
                .expect("slow client closed in time")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        // hyper may answer 408 before closing; it must never answer the incomplete request.
        assert!(!raw.starts_with(b"HTTP/1.1 200"), "{raw:?}");
    }
    // The endpoint still serves others.
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
}

#[test]
fn resource_exhaustion_errors_back_off() {
    for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            errno
        )));
    }
    assert!(!is_resource_exhaustion(&std::io::Error::from_raw_os_error(
        libc::ECONNABORTED
    )));
}
