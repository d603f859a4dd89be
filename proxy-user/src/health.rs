//! Active health checks: every `interval`, each address of a pool is probed - a TCP connect (and,
//! for a TLS backend, a verified TLS handshake), optionally followed by an HTTP GET whose status
//! must match - within `timeout`, all addresses in parallel. The pool turns results into up/down
//! with `rise`/`fall` ([`Pool::check_result`]).
use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{HealthCheck, HttpCheck},
    dial::DialError,
    pool::{Pool, Server},
    tls::{ClientTls, HandshakeError},
};

/// The most of a check's HTTP answer that is read looking for the status line and headers.
const MAX_RESPONSE_HEAD: usize = 8192;

/// Why one check of one address failed: the `reason` of the `server down` line, rendered with
/// its sources (`connect: Connection refused (os error 111)`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("connect")]
    Connect(#[source] DialError),
    #[error(transparent)]
    Handshake(HandshakeError),
    /// The whole check (connect, handshake, HTTP exchange) took longer than `timeout`.
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    #[error("send")]
    Send(#[source] io::Error),
    #[error("receive")]
    Receive(#[source] io::Error),
    #[error("connection closed before a complete HTTP answer")]
    Closed,
    #[error("answer without a status")]
    NoStatus,
    #[error("HTTP answer head too large")]
    HeadTooLarge,
    #[error("not an HTTP answer")]
    NotHttp(#[source] httparse::Error),
    /// An answer whose status the check does not accept.
    #[error("HTTP status {0}")]
    Status(u16),
}

/// Checks the pool's addresses until `stop`.
pub(crate) async fn run(
    pool: Arc<Pool>,
    check: HealthCheck,
    tls: Option<Arc<ClientTls>>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let mut probes = JoinSet::new();
        for server in pool.servers() {
            let http = check.http.clone();
            let timeout = check.timeout;
            let tls = tls.clone();
            probes.spawn(async move {
                let result = probe(&server, http.as_ref(), tls.as_deref(), timeout).await;
                (server, result)
            });
        }
        while let Some(done) = tokio::select! {
            done = probes.join_next() => done,
            () = stop.cancelled() => return,
        } {
            if let Ok((server, result)) = done {
                pool.check_result(&server, &check, result);
            }
        }
    }
}

/// One check of one address.
pub(crate) async fn probe(
    server: &Server,
    http: Option<&HttpCheck>,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let attempt = async {
        let stream = crate::net::connect(server.addr)
            .await
            .map_err(|e| ProbeError::Connect(e.into()))?;
        match (tls, http) {
            (None, None) => Ok(()),
            (None, Some(http)) => http_get(stream, &server.host, http).await,
            (Some(tls), http) => {
                let stream = tls
                    .connect(stream, &server.host)
                    .await
                    .map_err(ProbeError::Handshake)?;
                match http {
                    Some(http) => http_get(stream, &server.host, http).await,
                    None => Ok(()),
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// Sends the check's GET and compares the answer's status.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    http: &HttpCheck,
) -> Result<(), ProbeError> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: agent-proxy-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        http.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::Send)?;
    let mut head = Vec::with_capacity(1024);
    let status = loop {
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).await.map_err(ProbeError::Receive)?;
        if n == 0 {
            return Err(ProbeError::Closed);
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break response.code.ok_or(ProbeError::NoStatus)?;
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err(ProbeError::HeadTooLarge),
            Err(e) => return Err(ProbeError::NotHttp(e)),
        }
    };
    let good = match http.expect_status {
        Some(expected) => status == expected,
        None => (200..400).contains(&status),
    };
    if good {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::{
        config::{Host, ServerAddr, ServerSpec},
        report::error_chain,
    };

    /// A server answering every connection with `answer`, then closing.
    async fn answering(answer: &'static str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let spec = ServerSpec {
            addr: ServerAddr {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            },
            weight: 1,
        };
        Server::for_test(&spec, addr)
    }

    fn http(expect_status: Option<u16>) -> HttpCheck {
        HttpCheck {
            path: "/health".into(),
            expect_status,
        }
    }

    /// A probe's result as the `server down` line renders it.
    async fn rendered(
        server: &Server,
        http: Option<&HttpCheck>,
        timeout: Duration,
    ) -> Result<(), String> {
        probe(server, http, None, timeout)
            .await
            .map_err(|e| error_chain(&e))
    }

    #[tokio::test]
    async fn http_checks_compare_the_status() {
        const T: Duration = Duration::from_secs(2);
        let ok = answering("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(rendered(&ok, Some(&http(None)), T).await, Ok(()));
        assert_eq!(rendered(&ok, Some(&http(Some(204))), T).await, Ok(()));
        let wrong = probe(&ok, Some(&http(Some(200))), None, T).await;
        assert!(matches!(wrong, Err(ProbeError::Status(204))), "{wrong:?}");
        assert_eq!(
            rendered(&ok, Some(&http(Some(200))), T).await,
            Err("HTTP status 204".into())
        );
        let failing = answering("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(
            rendered(&failing, Some(&http(None)), T).await,
            Err("HTTP status 503".into())
        );
        assert_eq!(
            rendered(&failing, None, T).await,
            Ok(()),
            "a bare connect succeeds"
        );
        let garbage = answering("SSH-2.0-OpenSSH\r\n").await;
        let e = rendered(&garbage, Some(&http(None)), T).await.unwrap_err();
        assert!(e.starts_with("not an HTTP answer: "), "{e}");
        let silent = answering("").await;
        assert_eq!(
            rendered(&silent, Some(&http(None)), T).await,
            Err("connection closed before a complete HTTP answer".into())
        );
    }

    /// The reasons read as they did when they were strings.
    #[tokio::test]
    async fn failures_render_as_before() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut refused = answering("").await;
        refused.addr = closed;
        let e = probe(&refused, None, None, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ProbeError::Connect(DialError::Refused(_))),
            "{e:?}"
        );
        let os = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(error_chain(&e), format!("connect: {os}"));

        // Accepts, reads the request, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut mute = answering("").await;
        mute.addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        assert_eq!(
            rendered(&mute, Some(&http(None)), Duration::from_millis(200)).await,
            Err("timeout after 200ms".into())
        );
        held.abort();

        let sent = io::Error::from(io::ErrorKind::BrokenPipe);
        let text = sent.to_string();
        assert_eq!(
            error_chain(&ProbeError::Send(sent)),
            format!("send: {text}")
        );
        assert_eq!(
            ProbeError::HeadTooLarge.to_string(),
            "HTTP answer head too large"
        );
        assert_eq!(ProbeError::NoStatus.to_string(), "answer without a status");
    }
}
