//! Active health checks: every `interval`, each address of a pool is probed - a TCP connect (and,
//! for a TLS backend, a verified TLS handshake), optionally followed by an HTTP GET whose status
//! must match - within `timeout`, all addresses in parallel. The pool turns results into up/down
//! with `rise`/`fall` ([`Pool::check_result`]).
use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{HealthCheck, HttpCheck},
    pool::{Pool, Server},
    tls::ClientTls,
};

/// The most of a check's HTTP answer that is read looking for the status line and headers.
const MAX_RESPONSE_HEAD: usize = 8192;

/// Checks the pool's addresses until `stop`.
pub async fn run(
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
pub async fn probe(
    server: &Server,
    http: Option<&HttpCheck>,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        let stream = crate::net::connect(server.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match (tls, http) {
            (None, None) => Ok(()),
            (None, Some(http)) => http_get(stream, &server.host, http).await,
            (Some(tls), http) => {
                let stream = tls
                    .connect(stream, &server.host)
                    .await
                    .map_err(|e| e.to_string())?;
                match http {
                    Some(http) => http_get(stream, &server.host, http).await,
                    None => Ok(()),
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timeout after {timeout:?}")),
    }
}

/// Sends the check's GET and compares the answer's status.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    http: &HttpCheck,
) -> Result<(), String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: agent-proxy-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        http.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::with_capacity(1024);
    let status = loop {
        let mut buf = [0u8; 2048];
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("connection closed before a complete HTTP answer".into());
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                break response.code.ok_or("answer without a status")?;
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err("HTTP answer head too large".into()),
            Err(e) => return Err(format!("not an HTTP answer: {e}")),
        }
    };
    let good = match http.expect_status {
        Some(expected) => status == expected,
        None => (200..400).contains(&status),
    };
    if good {
        Ok(())
    } else {
        Err(format!("HTTP status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{Host, ServerAddr, ServerSpec};

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

    #[tokio::test]
    async fn http_checks_compare_the_status() {
        const T: Duration = Duration::from_secs(2);
        let ok = answering("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(probe(&ok, Some(&http(None)), None, T).await, Ok(()));
        assert_eq!(probe(&ok, Some(&http(Some(204))), None, T).await, Ok(()));
        assert_eq!(
            probe(&ok, Some(&http(Some(200))), None, T).await,
            Err("HTTP status 204".into())
        );
        let failing = answering("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(
            probe(&failing, Some(&http(None)), None, T).await,
            Err("HTTP status 503".into())
        );
        assert_eq!(
            probe(&failing, None, None, T).await,
            Ok(()),
            "a bare connect succeeds"
        );
        let garbage = answering("SSH-2.0-OpenSSH\r\n").await;
        assert!(
            probe(&garbage, Some(&http(None)), None, T)
                .await
                .unwrap_err()
                .starts_with("not an HTTP answer"),
        );
    }
}
