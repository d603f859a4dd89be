//! The listener layer: accepts, admits (client networks, connection limits, the per-client rate
//! limit - every mode's, [`ratelimit`]), and hands each admitted connection to its frontend's
//! [`Mode`].
pub(crate) mod ratelimit;

use std::{
    net::SocketAddr,
    os::fd::AsFd as _,
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};
use tokio_util::sync::CancellationToken;

use ratelimit::RateLimiter;

use crate::{
    conn::{self, Conn, Reject, Shared},
    connect,
    pool::Pool,
    reverse, tcp,
    tls::{ClientTls, ServerTls},
    transparent,
};

/// A frontend ready to serve: how it admits, and the mode its connections run in.
pub(crate) struct Listener {
    /// What the connection layer knows of the frontend (names, ids, for logs and metrics).
    pub frontend: conn::Frontend,
    pub mode: Mode,
    /// Client networks admitted; empty: any.
    pub allow: Vec<IpNet>,
    /// `max_connections` of this frontend.
    pub limit: Arc<Semaphore>,
    /// The per-client-IP limit on new connections, when configured (kept across reloads that
    /// do not change it, with its windows).
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// `max_connections_queue`: past a connection limit, how long to stop accepting (new
    /// connections wait in the kernel's accept queue) before refusing; `None`: refuse at once.
    pub queue: Option<Duration>,
}

impl Listener {
    /// Whether a new connection would find no slot, globally or on this frontend.
    fn full(&self, shared: &Shared) -> bool {
        shared.global_limit.available_permits() == 0 || self.limit.available_permits() == 0
    }

    /// Returns once both limits have a free slot at the same moment (nothing is taken: the
    /// accept that follows admits the connection as usual).
    async fn slot_freed(&self, shared: &Shared) {
        while self.full(shared) {
            // A closed semaphore never happens (they live as long as the listener).
            drop(self.limit.acquire().await);
            drop(shared.global_limit.acquire().await);
        }
    }
}

/// What a frontend's accept loop admits and dispatches new connections with: replaced as a
/// whole by a reload, while the loop and its listening socket stay. Connections keep the one
/// they started with.
pub(crate) struct Serving {
    pub listener: Arc<Listener>,
    pub shared: Arc<Shared>,
}

/// How a frontend's connections start; each is one module that receives a [`Conn`].
pub(crate) enum Mode {
    /// `mode = "tcp"`: every connection to this backend, with TLS terminated (`tls`) and/or
    /// originated (`backend_tls`) when configured.
    Tcp {
        pool: Arc<Pool>,
        tls: Option<Arc<ServerTls>>,
        backend_tls: Option<Arc<ClientTls>>,
    },
    /// `mode = "connect"`: each connection's CONNECT request names its destination; with
    /// `tls`, an HTTPS proxy.
    Connect(connect::Settings),
    /// `mode = "http"`: a reverse proxy to a backend pool that sees each request.
    Http(reverse::Settings),
    /// `mode = "transparent"`: each connection goes where iptables found it going. (No TLS:
    /// the agents' TLS passes through.)
    Transparent(transparent::Settings),
}

/// Accepts until `stop` fires, then drops the listener.
///
/// With `max_connections_queue`, a full limit stops the accepting for up to that long, so that
/// new connections wait in the kernel's accept queue (the listen backlog) instead of being
/// reset, and are admitted as slots free up. If no slot frees within the bound, the queue is
/// drained: what waits is accepted and refused, and so is every new connection until a slot
/// is free again - an overload that lasts is answered at once, not after a wait.
/// The frontend's settings are read from `serving` for each connection, so a reload applies
/// from the next accept on.
pub(crate) async fn serve(
    socket: Arc<TcpListener>,
    serving: watch::Receiver<Arc<Serving>>,
    stop: CancellationToken,
) {
    let mut waited_out = false;
    loop {
        let current = Arc::clone(&serving.borrow());
        let (listener, shared) = (&current.listener, &current.shared);
        if let Some(bound) = listener.queue
            && !waited_out
            && listener.full(shared)
        {
            tokio::select! {
                freed = tokio::time::timeout(bound, listener.slot_freed(shared)) => {
                    waited_out = freed.is_err();
                }
                () = stop.cancelled() => return,
            }
        }
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (client, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning; the kernel keeps the
                // pending connections in the backlog meanwhile.
                tracing::warn!(frontend = %current.listener.frontend.name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A reload while this loop waited applies to this connection already.
        let current = Arc::clone(&serving.borrow());
        let (listener, shared) = (&current.listener, &current.shared);
        listener.frontend.metrics.accepted.inc();
        let permits = match admit(listener, shared, peer) {
            Ok(permits) => {
                waited_out = false;
                permits
            }
            Err(reason) => {
                conn::reject(
                    &listener.frontend,
                    shared,
                    client,
                    peer,
                    reason,
                    Instant::now(),
                );
                continue;
            }
        };
        let task = handle(
            client,
            peer,
            Arc::clone(listener),
            Arc::clone(shared),
            permits,
        );
        shared.tracker.spawn(task);
    }
}

/// Checks the client address and the limits, before any other work.
fn admit(
    listener: &Listener,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Reject> {
    let ip = peer.ip().to_canonical();
    if !listener.allow.is_empty() && !listener.allow.iter().any(|net| net.contains(&ip)) {
        return Err(Reject::Denied);
    }
    let global = Arc::clone(&shared.global_limit)
        .try_acquire_owned()
        .map_err(|_| Reject::MaxConnections)?;
    let local = Arc::clone(&listener.limit)
        .try_acquire_owned()
        .map_err(|_| Reject::FrontendMaxConnections)?;
    if let Some(limiter) = &listener.rate_limit
        && !limiter.admit(ip, Instant::now())
    {
        return Err(Reject::RateLimit);
    }
    Ok((global, local))
}

/// One admitted connection, in its mode, to its end.
///
/// Written for the memory of idle connections (docs/benchmarks.md, "Idle connection memory"):
/// a task's future is allocated once, at the size of its largest state, and kept for the
/// connection's life, and each nested `async fn` keeps its own copies of its arguments. So the
/// steps that end before the bytes flow (dial, TLS and CONNECT handshakes: the latter ~5 KiB)
/// are boxed inside the modes; see `Conn::carry` for why this is a block, not an `async fn`.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of each argument in its future"
)]
fn handle(
    client: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) -> impl Future<Output = ()> + Send {
    async move {
        let conn = Conn::admitted(&listener.frontend, &shared, &client, peer, permits);
        match &listener.mode {
            Mode::Tcp {
                pool,
                tls,
                backend_tls,
            } => tcp::run(&conn, client, pool, tls.as_deref(), backend_tls.as_deref()).await,
            Mode::Connect(settings) => Box::pin(connect::run(&conn, client, settings)).await,
            Mode::Transparent(settings) => {
                Box::pin(transparent::run(&conn, client, settings)).await;
            }
            Mode::Http(settings) => Box::pin(reverse::run(&conn, client, settings)).await,
        }
    }
}

/// Binds a listener with a backlog sized for bursts of agents reconnecting at once. The
/// accepted sockets inherit `keepalive` from it (the kernel copies the listener's socket
/// options into each one), which costs no system call per connection.
pub(crate) fn bind(
    addr: SocketAddr,
    keepalive: &crate::config::TcpKeepalive,
) -> std::io::Result<TcpListener> {
    const BACKLOG: u32 = 4096;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    crate::net::set_keepalive(socket.as_fd(), keepalive)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{relay, relay::RelayCounters, splice};

    /// The size of the future that `f` returns, without calling `f`.
    fn future_size<A, F: Future>(_: impl FnOnce(A) -> F) -> usize {
        size_of::<F>()
    }

    /// An idle connection keeps its task's future for its whole life, allocated at the size of
    /// the future's largest state. These bounds keep a large state (a handshake, a buffer, an
    /// argument copied down the call chain) from creeping back into the carried path; read
    /// docs/benchmarks.md ("Idle connection memory", and "Memory per idle connection" in the
    /// full run of 2026-12-03, which has the history) before raising one. Sizes when last set,
    /// release build as `cargo xtask test` runs it: task 520, relay 464, splice 760 bytes. The
    /// task's bound is the largest future whose tokio cell is still 640 B (cells are aligned to
    /// 128); the others leave room for small additions.
    #[test]
    fn idle_connection_futures_stay_small() {
        let task = future_size(|(c, p, l, s, permits)| handle(c, p, l, s, permits));
        let relay = future_size(|(c, u, counters, cancel): (_, _, &RelayCounters, _)| {
            relay::relay(c, u, counters, cancel)
        });
        let splice = future_size(|(started, cutoff): (splice::Started<'_>, _)| started.run(cutoff));
        eprintln!("connection task {task} B, relay {relay} B, splice {splice} B");
        for (what, size, bound) in [
            ("connection task", task, 528),
            ("relay", relay, 512),
            ("splice", splice, 832),
        ] {
            assert!(size <= bound, "{what} future is {size} bytes, over {bound}");
        }
    }
}
