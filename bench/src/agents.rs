//! The many-agents load generator (no Debian tool does this): N keep-alive connections, each
//! POSTing a small body periodically, like monitoring agents flushing to their intake.
//!
//! Phase 1 opens every connection and sends one request on each, then lets them idle: the
//! proxy's RSS growth over its fresh-start RSS, divided by N, is the memory an idle agent
//! connection costs. Phase 2 has every agent POST once per `period`, their starts spread
//! evenly over the period, for `active`: latency (HdrHistogram, microseconds), errors, CPU.
//!
//! Runs inside the bench's namespace (a [`agent_proxy_tests::netns::NetNs::block_on`] future).
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use crate::parse::Latency;
use crate::procfs::{CpuDelta, CpuTimes, Memory, process_ticks};
use crate::scrape::{Admin, SCRAPES_AT_REST, ScrapeTimes};

/// One request or connect must finish within this, or it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connects in flight at once during phase 1 (a burst of 10,000 SYNs would overflow backlogs
/// and measure the ramp rather than the proxy).
const CONNECT_PARALLELISM: usize = 256;

#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub target: SocketAddr,
    pub agents: usize,
    pub body_len: usize,
    pub period: Duration,
    pub active: Duration,
    /// The proxy's pid, for memory and CPU figures (`None` for the direct row).
    pub proxy_pid: Option<u32>,
    /// agent-proxy's admin endpoint: its scrapes are timed with every agent connected.
    pub admin: Option<Admin>,
}

#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// Agents that connected and got their first answer.
    pub connected: usize,
    /// Failed connects, failed or timed-out requests and non-200 answers, both phases.
    pub errors: u64,
    /// Successful requests in phase 2.
    pub requests: u64,
    pub latency: Option<Latency>,
    pub active_seconds: f64,
    pub cpu: CpuDelta,
    pub proxy_ticks: Option<u64>,
    /// Proxy memory at fresh start, with N idle connections, after phase 2.
    pub mem_start: Option<Memory>,
    pub mem_idle: Option<Memory>,
    pub mem_active: Option<Memory>,
    /// `/metrics` and `/stats` times with every agent connected and idle.
    pub scrape: Option<ScrapeTimes>,
}

pub(crate) async fn run(plan: Plan) -> anyhow::Result<Outcome> {
    let mem = || plan.proxy_pid.map(Memory::read).transpose();
    let mem_start = mem()?;
    let request = Arc::new(request(plan.body_len));
    let errors = Arc::new(AtomicU64::new(0));

    // Phase 1: connect everyone, one request each.
    let permits = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut opening = JoinSet::new();
    for _ in 0..plan.agents {
        let permit = permits.clone().acquire_owned().await?;
        let request = request.clone();
        let target = plan.target;
        opening.spawn(async move {
            let r = timeout(REQUEST_TIMEOUT, async {
                let mut s = TcpStream::connect(target).await.context("connect")?;
                s.set_nodelay(true)?;
                post(&mut s, &request).await?;
                anyhow::Ok(s)
            })
            .await;
            drop(permit);
            r.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        });
    }
    let mut streams = Vec::with_capacity(plan.agents);
    let mut first_error = None;
    while let Some(joined) = opening.join_next().await {
        match joined? {
            Ok(s) => streams.push(s),
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
        }
    }
    if streams.is_empty() {
        bail!(
            "no agent could connect to {}: {:#}",
            plan.target,
            first_error.unwrap_or_else(|| anyhow::anyhow!("no agents"))
        );
    }
    let connected = streams.len();
    // Let the proxy finish whatever it does after a request (log lines, map updates).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_idle = mem()?;
    // What a scrape costs with every connection open (the kernel path's maps hold them all).
    // A blocking call on this runtime's thread: nothing else runs between the phases.
    let scrape = plan
        .admin
        .as_ref()
        .map(|a| a.median_times(SCRAPES_AT_REST))
        .transpose()
        .context("scrape the admin endpoint")?;

    // Phase 2: everyone posts once per period.
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    ));
    let requests = Arc::new(AtomicU64::new(0));
    let ticks_before = plan.proxy_pid.map(process_ticks).transpose()?;
    let cpu_before = CpuTimes::read()?;
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + plan.active;
    let mut agents = JoinSet::new();
    let n = streams.len() as u32;
    for (i, mut s) in streams.into_iter().enumerate() {
        let offset = plan.period * i as u32 / n;
        let (request, histogram, requests, errors) = (
            request.clone(),
            histogram.clone(),
            requests.clone(),
            errors.clone(),
        );
        let period = plan.period;
        agents.spawn(async move {
            let mut next = start + offset;
            while next < end {
                sleep_until(next).await;
                let t0 = std::time::Instant::now();
                match timeout(REQUEST_TIMEOUT, post(&mut s, &request)).await {
                    Ok(Ok(())) => {
                        let us = t0.elapsed().as_micros().max(1) as u64;
                        let _ = histogram
                            .lock()
                            .expect("not poisoned")
                            .record(us.min(60_000_000));
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                next += period;
            }
        });
    }
    while let Some(joined) = agents.join_next().await {
        joined?;
    }
    let active_seconds = (Instant::now() - start).as_secs_f64();
    let cpu = cpu_before.until(&CpuTimes::read()?);
    let proxy_ticks = match (ticks_before, plan.proxy_pid) {
        (Some(before), Some(pid)) => Some(process_ticks(pid)?.saturating_sub(before)),
        _ => None,
    };
    let mem_active = mem()?;
    let h = histogram.lock().expect("not poisoned");
    let latency = (!h.is_empty()).then(|| Latency {
        avg: h.mean(),
        p50: h.value_at_quantile(0.50) as f64,
        p90: h.value_at_quantile(0.90) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        p999: Some(h.value_at_quantile(0.999) as f64),
    });
    Ok(Outcome {
        connected,
        errors: errors.load(Ordering::Relaxed),
        requests: requests.load(Ordering::Relaxed),
        latency,
        active_seconds,
        cpu,
        proxy_ticks,
        mem_start,
        mem_idle,
        mem_active,
        scrape,
    })
}

/// An agent's POST: a line-protocol-like body of `body_len` bytes.
pub(crate) fn request(body_len: usize) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/write/metric HTTP/1.1\r\nHost: intake\r\nContent-Type: text/plain\r\n\
         Content-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    r.extend(body(body_len));
    r
}

/// `len` bytes of line-protocol-like text (DataKit's metric.data is line protocol).
pub(crate) fn body(len: usize) -> Vec<u8> {
    let line = b"cpu,host=agent usage_user=1.5,usage_system=0.5 1700000000000000000\n";
    line.iter().copied().cycle().take(len).collect()
}

/// Sends one request and reads the whole answer; anything but a 200 is an error.
async fn post(s: &mut TcpStream, request: &[u8]) -> anyhow::Result<()> {
    s.write_all(request).await.context("send request")?;
    let status = read_response(s).await?;
    if status != 200 {
        bail!("HTTP {status}");
    }
    Ok(())
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response(s: &mut TcpStream) -> anyhow::Result<u16> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.context("read response")?;
        if n == 0 {
            bail!("connection closed before a full response");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((status, total)) = response_length(&buf)? {
            while buf.len() < total {
                let n = s.read(&mut chunk).await.context("read response body")?;
                if n == 0 {
                    bail!("connection closed in the response body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if buf.len() > total {
                bail!(
                    "{} bytes after the response: the intake answered twice?",
                    buf.len() - total
                );
            }
            return Ok(status);
        }
    }
}

/// Status and total length (head + Content-Length body) of a response whose head is complete
/// in `buf`; `None` while the head is incomplete.
pub(crate) fn response_length(buf: &[u8]) -> anyhow::Result<Option<(u16, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = r.parse(buf).context("bad HTTP response")? else {
        return Ok(None);
    };
    let status = r.code.context("no status")?;
    let body = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| -> anyhow::Result<usize> { Ok(std::str::from_utf8(h.value)?.trim().parse()?) })
        .transpose()
        .context("bad Content-Length")?
        .context("response without Content-Length")?;
    Ok(Some((status, head + body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_announced_body_length() {
        let r = request(2048);
        let text = String::from_utf8(r.clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Content-Length: 2048"));
        assert_eq!(body.len(), 2048);
    }

    #[test]
    fn response_length_waits_for_the_head_and_counts_the_body() {
        let resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\n\r\nok\n";
        assert_eq!(response_length(&resp[..20]).unwrap(), None);
        assert_eq!(response_length(resp).unwrap(), Some((200, resp.len())));
        let no_len = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert!(response_length(no_len).is_err());
        assert!(response_length(b"garbage\r\n\r\n").is_err());
    }
}
