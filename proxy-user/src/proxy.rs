//! Listeners and the life of one connection: admit, dial, carry, log.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use ipnet::IpNet;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    conn::{End, Outcome, Path},
    connect::{self, ratelimit::RateLimiter},
    kernel::Kernel,
    metrics::Metrics,
    net,
    pool::{ConnectError, Pool},
    relay::{self, RelayCounters},
    splice::{self, SpliceSettings},
    tls::{self, ClientTls, ServerTls},
};

/// What every connection task shares.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// The kernel path, when loaded.
    pub kernel: Option<Arc<Kernel>>,
    /// `global.max_connections`.
    pub global_limit: Arc<Semaphore>,
    /// Cancelled when the drain timeout expires: connections still open are cut.
    pub abort: CancellationToken,
    /// Tracks live connection tasks, so that shutdown can wait for them.
    pub tracker: TaskTracker,
    pub kernel_window: u64,
    pub kernel_sndbuf: u32,
    /// The resolver and its cache of destinations (CONNECT, transparent).
    pub dns: Arc<crate::dns::Dns>,
}

/// A frontend ready to serve.
pub struct Frontend {
    /// Index in the config; the kernel's route counters are keyed by it.
    pub id: u32,
    pub name: String,
    /// Where connections go.
    pub route: FrontendRoute,
    pub allow: Vec<IpNet>,
    pub limit: Arc<Semaphore>,
    /// The per-client-IP limit on new connections, when configured.
    pub rate_limit: Option<RateLimiter>,
    /// TLS terminated here, when the frontend has `tls` (tcp mode).
    pub tls: Option<Arc<ServerTls>>,
    /// TLS originated to the servers, when the backend has `tls` (tcp mode).
    pub backend_tls: Option<Arc<ClientTls>>,
    /// Same-host agents connecting here are taken by the kernel's `sock_ops` program
    /// (`local_agents`), so their entries must be dropped when their connection ends.
    pub local_agents: bool,
}

/// The mode-dependent part of a frontend.
pub enum FrontendRoute {
    /// tcp: every connection to this backend.
    Backend(Arc<Pool>),
    /// connect: each connection's CONNECT request names its destination.
    Connect(connect::Settings),
}

impl Frontend {
    /// The `backend` field of log lines: "-" when there is none.
    fn backend_name(&self) -> &str {
        match &self.route {
            FrontendRoute::Backend(pool) => pool.name.as_str(),
            FrontendRoute::Connect(_) => "-",
        }
    }
}

/// Where one connection went, for its log line.
pub struct Route<'a> {
    /// The server dialed ("-" when none).
    pub server: &'a str,
    /// The CONNECT destination as requested ("-" in tcp mode).
    pub destination: &'a str,
    /// The CONNECT answer's status code ("-" in tcp mode, or when nothing was answered).
    pub status: &'a str,
}

impl Route<'_> {
    pub(crate) const NONE: Route<'static> = Route {
        server: "-",
        destination: "-",
        status: "-",
    };
}

/// Accepts until `stop` fires, then drops the listener.
pub async fn serve(
    listener: TcpListener,
    frontend: Arc<Frontend>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (client, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning; the kernel keeps the
                // pending connections in the backlog meanwhile.
                tracing::warn!(frontend = %frontend.name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = &shared.metrics;
        metrics
            .frontend_connections_total
            .with_label_values(&[frontend.name.as_str()])
            .inc();
        let permits = match admit(&frontend, &shared, peer) {
            Ok(permits) => permits,
            Err(reason) => {
                reject(&frontend, &shared, client, peer, reason);
                continue;
            }
        };
        let task = handle(
            client,
            peer,
            Arc::clone(&frontend),
            Arc::clone(&shared),
            permits,
        );
        shared.tracker.spawn(task);
    }
}

/// Checks the client address and the limits, before any other work.
fn admit(
    frontend: &Frontend,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), &'static str> {
    let ip = peer.ip().to_canonical();
    if !frontend.allow.is_empty() && !frontend.allow.iter().any(|net| net.contains(&ip)) {
        return Err("denied");
    }
    let global = Arc::clone(&shared.global_limit)
        .try_acquire_owned()
        .map_err(|_| "max_connections")?;
    let local = Arc::clone(&frontend.limit)
        .try_acquire_owned()
        .map_err(|_| "frontend_max_connections")?;
    if let Some(limiter) = &frontend.rate_limit
        && !limiter.admit(ip, Instant::now())
    {
        return Err("rate_limit");
    }
    Ok((global, local))
}

pub(crate) fn reject(
    frontend: &Frontend,
    shared: &Shared,
    client: TcpStream,
    peer: SocketAddr,
    reason: &str,
) {
    shared
        .metrics
        .frontend_rejected_total
        .with_label_values(&[frontend.name.as_str(), reason])
        .inc();
    // A reset tells the client at once that it was refused, and leaves no TIME_WAIT here.
    let _ = net::set_linger_zero(std::os::fd::AsRawFd::as_raw_fd(&client));
    let (client, ours) = own_address(client, frontend.local_agents);
    drop(client);
    forget_local_agent(shared, peer, ours);
    finish_nothing(
        frontend,
        shared,
        peer,
        End::Rejected,
        reason.into(),
        Instant::now(),
    );
}

/// Logs and counts a connection that ended before any byte moved (refused, nothing dialed).
pub(crate) fn finish_nothing(
    frontend: &Frontend,
    shared: &Shared,
    peer: SocketAddr,
    end: End,
    detail: String,
    started: Instant,
) {
    let outcome = Outcome::nothing(end, detail);
    finish(
        frontend,
        shared,
        peer,
        &Route::NONE,
        Path::None,
        &outcome,
        started,
    );
}

/// Drops what the kernel holds for a same-host agent's socket (it joined `LOCAL_SOCKS` when it
/// connected), so that nothing of a connection outlives it even if the agent keeps its socket
/// open after the proxy ended the connection. `ours`: our side's address, from [`own_address`]
/// (`None` when the frontend's agents are not taken).
fn forget_local_agent(shared: &Shared, peer: SocketAddr, ours: Option<SocketAddr>) {
    if let Some(ours) = ours
        && let Some(local) = shared.kernel.as_ref().and_then(|k| k.local.as_ref())
    {
        local.forget(peer, ours);
    }
}

/// One admitted connection, to its end; its permits are given back last.
///
/// Written for the memory of idle connections (docs/benchmarks.md, "Idle connection memory"):
/// a task's future is allocated once, at the size of its largest state, and kept for the
/// connection's life, and each nested `async fn` keeps its own copies of its arguments. So the
/// steps that end before the bytes flow (dial, TLS and CONNECT handshakes: the latter ~5 KiB)
/// are boxed, and the plain tcp path is written out here rather than one level down.
async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    frontend: Arc<Frontend>,
    shared: Arc<Shared>,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    let started = Instant::now();
    let (frontend, shared) = (&*frontend, &*shared);
    // Our side's address, read while the socket is still ours, for `forget_local_agent`'s work
    // at the end (by value: see `nodelay`).
    let (client, ours) = own_address(client, frontend.local_agents);
    let current = shared
        .metrics
        .frontend_current_connections
        .with_label_values(&[frontend.name.as_str()]);
    current.inc();
    match &frontend.route {
        FrontendRoute::Backend(pool)
            if frontend.tls.is_some() || frontend.backend_tls.is_some() =>
        {
            Box::pin(tls::carry::handle_tcp(
                client, peer, pool, frontend, shared, started,
            ))
            .await;
        }
        // tcp mode without TLS: dial the backend and carry.
        FrontendRoute::Backend(pool) => 'tcp: {
            let (upstream, lease) = match Box::pin(pool.connect(&shared.metrics)).await {
                Ok(pair) => pair,
                Err(e) => {
                    unconnected(frontend, shared, client, peer, e, started);
                    break 'tcp;
                }
            };
            let (client, upstream) = (nodelay(client), nodelay(upstream));
            let (path, outcome) = carry(client, upstream, 0, frontend, shared).await;
            let route = Route {
                server: &lease.server().name,
                ..Route::NONE
            };
            finish(frontend, shared, peer, &route, path, &outcome, started);
            drop(lease);
        }
        FrontendRoute::Connect(settings) => {
            Box::pin(connect::run(
                client, peer, frontend, shared, settings, started,
            ))
            .await;
        }
    }
    forget_local_agent(shared, peer, ours);
    current.dec();
    drop(permits);
}

/// `client`, and its local address when `wanted` (same-host agents).
fn own_address(client: TcpStream, wanted: bool) -> (TcpStream, Option<SocketAddr>) {
    let ours = wanted.then(|| client.local_addr().ok()).flatten();
    (client, ours)
}

/// Sets TCP_NODELAY (best effort). Takes the stream by value: a borrow of a local in an
/// `async fn` keeps the local's storage in the future even after it is moved away.
fn nodelay(stream: TcpStream) -> TcpStream {
    let _ = net::set_nodelay(std::os::fd::AsRawFd::as_raw_fd(&stream));
    stream
}

/// The end of a tcp-mode connection whose backend could not be dialed: with no server up the
/// client is refused at once (reset, `no_server`); otherwise it is closed after the failed
/// attempts, logged with `end=connect_failed`.
pub(crate) fn unconnected(
    frontend: &Frontend,
    shared: &Shared,
    client: TcpStream,
    peer: SocketAddr,
    error: ConnectError,
    started: Instant,
) {
    if let ConnectError::NoServer { .. } = error {
        reject(frontend, shared, client, peer, "no_server");
        return;
    }
    finish_nothing(
        frontend,
        shared,
        peer,
        End::ConnectFailed,
        error.to_string(),
        started,
    );
}

/// Chooses the data path and runs it. `consumed`: bytes already read from the client (a
/// CONNECT head), which the kernel path must not wait to see forwarded.
pub(crate) async fn carry(
    client: TcpStream,
    upstream: TcpStream,
    consumed: u64,
    frontend: &Frontend,
    shared: &Shared,
) -> (Path, Outcome) {
    let counters = relay_counters(frontend, shared);
    let (client, upstream) = match &shared.kernel {
        Some(kernel) => {
            let settings = SpliceSettings {
                frontend: frontend.id,
                window: shared.kernel_window,
                sndbuf: shared.kernel_sndbuf,
                client_consumed: consumed,
            };
            let spliced =
                splice::splice(kernel, client, upstream, settings, &counters, &shared.abort);
            match Box::pin(spliced).await {
                Ok(outcome) => return (Path::Kernel, outcome),
                Err(declined) => {
                    // Typically a client that already closed (the kernel takes only established
                    // sockets); the relay carries it just as well.
                    tracing::debug!(frontend = %frontend.name, error = %declined.error,
                        "kernel path refused the connection; relaying it in userspace");
                    shared
                        .metrics
                        .kernel_errors_total
                        .with_label_values(&["insert"])
                        .inc();
                    (declined.client, declined.upstream)
                }
            }
        }
        None => (client, upstream),
    };
    let outcome = Box::pin(relay::relay(client, upstream, &counters, &shared.abort)).await;
    (Path::Userspace, outcome)
}

/// Bytes copied in userspace: the whole connection on the relay, or the tail of a direction
/// that had to leave the kernel path.
pub(crate) fn relay_counters(frontend: &Frontend, shared: &Shared) -> RelayCounters {
    let bytes = |direction| {
        shared.metrics.bytes_total.with_label_values(&[
            frontend.name.as_str(),
            direction,
            "userspace",
        ])
    };
    RelayCounters {
        up: bytes("upstream"),
        down: bytes("downstream"),
    }
}

/// The `tls` field of the log line: which sides of the frontend's connections are TLS.
fn tls_sides(frontend: &Frontend) -> &'static str {
    match (frontend.tls.is_some(), frontend.backend_tls.is_some()) {
        (false, false) => "none",
        (true, false) => "client",
        (false, true) => "upstream",
        (true, true) => "both",
    }
}

/// The one log line and the end-of-connection metrics.
pub(crate) fn finish(
    frontend: &Frontend,
    shared: &Shared,
    peer: SocketAddr,
    route: &Route<'_>,
    path: Path,
    outcome: &Outcome,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let metrics = &shared.metrics;
    let name = frontend.name.as_str();
    metrics
        .connections_ended_total
        .with_label_values(&[name, path.as_str(), outcome.end.as_str()])
        .inc();
    metrics
        .connection_duration_seconds
        .with_label_values(&[name])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "agent_proxy::conn",
        frontend = name,
        client = %peer,
        backend = frontend.backend_name(),
        server = route.server,
        destination = route.destination,
        status = route.status,
        tls = tls_sides(frontend),
        path = path.as_str(),
        bytes_up = outcome.bytes_up,
        bytes_down = outcome.bytes_down,
        userspace_up = outcome.copied_up,
        userspace_down = outcome.copied_down,
        pauses = outcome.pauses,
        resumes = outcome.resumes,
        direct_up = outcome.direct_up,
        duration_ms = elapsed.as_micros() as f64 / 1000.0,
        end = outcome.end.as_str(),
        detail = outcome.detail.as_str(),
        "connection closed"
    );
}

/// Binds a listener with a backlog sized for bursts of agents reconnecting at once.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    const BACKLOG: u32 = 4096;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future that `f` returns, without calling `f`.
    fn future_size<A, F: Future>(_: impl FnOnce(A) -> F) -> usize {
        size_of::<F>()
    }

    /// An idle connection keeps its task's future for its whole life, allocated at the size of
    /// the future's largest state. These bounds keep a large state (a handshake, a buffer, an
    /// argument copied down the call chain) from creeping back into the carried path; see
    /// docs/benchmarks.md, "Idle connection memory", before raising one. Sizes when last set
    /// (debug build; release is a little smaller): task 480, relay 416, splice 960 bytes; the
    /// task was 5.6 KiB before that work. The bounds leave room for small additions.
    #[test]
    fn idle_connection_futures_stay_small() {
        let task = future_size(|(c, p, f, s, permits)| handle(c, p, f, s, permits));
        let relay = future_size(|(c, u, counters, cancel): (_, _, &RelayCounters, _)| {
            relay::relay(c, u, counters, cancel)
        });
        let splice = future_size(
            |(kernel, c, u, settings, counters, cancel): (&Kernel, _, _, _, &RelayCounters, _)| {
                splice::splice(kernel, c, u, settings, counters, cancel)
            },
        );
        eprintln!("connection task {task} B, relay {relay} B, splice {splice} B");
        for (what, size, bound) in [
            ("connection task", task, 640),
            ("relay", relay, 512),
            ("splice", splice, 1280),
        ] {
            assert!(size <= bound, "{what} future is {size} bytes, over {bound}");
        }
    }
}
