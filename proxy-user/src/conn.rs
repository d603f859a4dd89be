//! The connection layer: one admitted connection as a value ([`Conn`]), and everything a mode
//! does with one that is not the mode's own business - choosing the data path and carrying the
//! bytes ([`Conn::carry`]), refusing ([`Conn::reject`]), and finishing: the one log line and the
//! end-of-connection metrics ([`Conn::finish`]).
//!
//! The layers, top to bottom; a module imports only from layers below its own, and modes never
//! import each other (docs/architecture.md, "Layers"):
//!
//! 1. `daemon` (builds the parts and serves), `admin`;
//! 2. `listener`: accepts, admits (allow, connection limits, rate limit), dispatches on the
//!    frontend's [`Mode`](crate::listener::Mode);
//! 3. the modes: `tcp` (plain, or with TLS on a side), `connect`, `transparent`, `reverse`
//!    (`mode = "http"`);
//! 4. `conn` (this module): the connection value, data-path choice, reject, finish; `upstream`
//!    (dialing a pool as a stream);
//! 5. the data paths: `splice` (kernel), `relay` (userspace), `tls` (the streams), and the
//!    upstream side: `pool`, `health`, `dns`;
//! 6. `kernel` (the eBPF maps and programs), `net` (socket options), `metrics`, `config`,
//!    `outcome` (what a data path reports), `cutoff` (what ends a carried connection from
//!    outside: the drain, the idle timeout), `address_class`, `report`.
use std::{
    net::{SocketAddr, TcpStream as StdStream},
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::Either;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use crate::{
    cutoff::Cutoff,
    outcome::{End, Outcome, Path, Reject},
};

use crate::{
    handover::{ConnState, Handover, Message, Outgoing},
    kernel::Kernel,
    metrics::Metrics,
    net,
    pool::ConnectError,
    relay::{self, RelayCounters, Relayed},
    splice::{self, HandedOver, NotStarted, SpliceSettings, Spliced},
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
    /// `global.kernel_after`.
    pub kernel_after: u64,
    /// The resolver and its cache of destinations (CONNECT, transparent).
    pub dns: Arc<crate::dns::Dns>,
    /// Asked by an upgrade: kernel-spliced connections move to the new process.
    pub handover: Arc<Handover>,
}

/// What the connection layer knows of a frontend: its name and ids for metrics and the log
/// line. The mode-specific parts (backend pool, TLS, CONNECT settings) are the listener's
/// [`Mode`](crate::listener::Mode).
pub struct Frontend {
    /// Index in the config; the kernel's route counters are keyed by it.
    pub id: u32,
    pub name: String,
    /// The `backend` field of log lines: the backend's name, "-" when the mode has none.
    pub backend: String,
    /// The `tls` field of log lines: which sides of its connections are TLS (`none`,
    /// `client`, `upstream`, `both`).
    pub tls_sides: &'static str,
    /// Same-host agents connecting here are taken by the kernel's `sock_ops` program
    /// (`local_agents`), so their entries must be dropped when their connection ends.
    pub local_agents: bool,
    /// Its metric series, resolved once.
    pub metrics: FrontendMetrics,
    /// `idle_timeout`; `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// `tcp_keepalive`, set on every upstream socket (the listening socket carries it for the
    /// accepted ones).
    pub tcp_keepalive: crate::config::TcpKeepalive,
}

/// A frontend's per-connection metric series, resolved once when the frontend is built: each
/// `with_label_values` is a hash of the labels and a lock, which every accept, every
/// connection's start and every end would otherwise pay.
pub struct FrontendMetrics {
    /// `agent_proxy_frontend_connections_total{frontend}`.
    pub(crate) accepted: IntCounter,
    /// `agent_proxy_frontend_current_connections{frontend}`.
    current: IntGauge,
    /// `agent_proxy_bytes_total{frontend, direction, path="userspace"}`.
    copied_up: IntCounter,
    copied_down: IntCounter,
    /// `agent_proxy_connection_duration_seconds{frontend}`.
    duration: Histogram,
    /// `agent_proxy_connections_ended_total{frontend, path, end}`, indexed by
    /// [`FrontendMetrics::ended_index`].
    ended: Vec<IntCounter>,
}

impl FrontendMetrics {
    pub fn new(metrics: &Metrics, frontend: &str) -> Self {
        metrics.init_frontend(frontend);
        let copied = |direction| {
            metrics
                .bytes_total
                .with_label_values(&[frontend, direction, "userspace"])
        };
        let ended = Path::ALL
            .iter()
            .flat_map(|path| {
                End::ALL.iter().map(move |end| {
                    metrics.connections_ended_total.with_label_values(&[
                        frontend,
                        path.as_str(),
                        end.as_str(),
                    ])
                })
            })
            .collect();
        Self {
            accepted: metrics
                .frontend_connections_total
                .with_label_values(&[frontend]),
            current: metrics
                .frontend_current_connections
                .with_label_values(&[frontend]),
            copied_up: copied("upstream"),
            copied_down: copied("downstream"),
            duration: metrics
                .connection_duration_seconds
                .with_label_values(&[frontend]),
            ended,
        }
    }

    fn ended_index(path: Path, end: End) -> usize {
        let p = Path::ALL.iter().position(|&x| x == path).unwrap_or(0);
        let e = End::ALL.iter().position(|&x| x == end).unwrap_or(0);
        p * End::ALL.len() + e
    }
}

impl Frontend {
    /// The `tls` log field for TLS terminated on the client side and/or originated upstream.
    pub fn tls_field(client: bool, upstream: bool) -> &'static str {
        match (client, upstream) {
            (false, false) => "none",
            (true, false) => "client",
            (false, true) => "upstream",
            (true, true) => "both",
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
    /// The name the client asked for, when one was read: a transparent connection's TLS SNI
    /// or HTTP `Host` ("-" otherwise).
    pub host: &'a str,
}

impl Route<'_> {
    pub const NONE: Route<'static> = Route {
        server: "-",
        destination: "-",
        status: "-",
        host: "-",
    };
}

/// One admitted connection, from admission to its log line.
///
/// It holds the connection's two slots (global and frontend `max_connections`), its place in
/// `agent_proxy_frontend_current_connections` and a same-host agent's kernel entries, and gives
/// them back in `Drop`: when the connection ends, and also when its task panics (tokio catches
/// the panic and drops the task's future). The slots go last.
pub struct Conn<'a> {
    pub frontend: &'a Frontend,
    pub shared: &'a Shared,
    pub peer: SocketAddr,
    pub started: Instant,
    /// Our side's address when a same-host agent's entries are to be dropped at the end.
    ours: Option<SocketAddr>,
    /// `None` for a connection adopted from a predecessor when the limits were full: it is
    /// carried anyway (it was admitted once).
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl<'a> Conn<'a> {
    /// Takes over an admitted client: counts it in the current-connections gauge until dropped.
    pub fn admitted(
        frontend: &'a Frontend,
        shared: &'a Shared,
        client: &TcpStream,
        peer: SocketAddr,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> Self {
        frontend.metrics.current.inc();
        Self {
            frontend,
            shared,
            peer,
            started: Instant::now(),
            ours: own_address(client, frontend.local_agents),
            _permits: Some(permits),
        }
    }

    /// The one log line and the end-of-connection metrics.
    pub fn finish(&self, route: &Route<'_>, path: Path, outcome: &Outcome) {
        finish(self.frontend, self.peer, route, path, outcome, self.started);
    }

    /// Logs and counts a connection that ended before any byte moved (refused, nothing dialed).
    pub fn finish_nothing(&self, end: End, detail: String) {
        self.finish(&Route::NONE, Path::None, &Outcome::nothing(end, detail));
    }

    /// The client's TLS handshake on a frontend with `tls`, cut by the end of a drain like a
    /// carried connection. A failed one is counted in
    /// `agent_proxy_tls_handshake_errors_total{side="frontend"}` and logged
    /// (`end=tls_handshake_failed`): `None`, the connection is over. It runs in the
    /// connection's task, so a slow handshake never holds up the accept loop, and before
    /// anything is dialed.
    pub async fn accept_tls(
        &self,
        tls: &crate::tls::ServerTls,
        client: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let accepted = tokio::select! {
            r = tls.accept(client) => r,
            () = self.shared.abort.cancelled() => Err(crate::tls::HandshakeError::Shutdown),
        };
        match accepted {
            Ok(stream) => Some(stream),
            Err(e) => {
                self.shared
                    .metrics
                    .tls_handshake_errors_total
                    .with_label_values(&["frontend", self.frontend.name.as_str(), e.reason()])
                    .inc();
                self.finish_nothing(End::TlsHandshakeFailed, e.to_string());
                None
            }
        }
    }

    /// Refuses the client with a reset after admission, counted under the `reason` label
    /// (a [`Reject`]'s, or `address_CLASS`), logged with `end=rejected`, where it was going and
    /// why.
    pub fn refuse(&self, client: TcpStream, reason: &str, route: &Route<'_>, detail: String) {
        count_rejected(self.frontend, self.shared, reason);
        self.reset(client, route, End::Rejected, detail);
    }

    /// Ends a connection that carried nothing with a reset (the client learns at once, and no
    /// TIME_WAIT is left here), logged with `end` and `detail`.
    pub fn reset(&self, client: TcpStream, route: &Route<'_>, end: End, detail: String) {
        let _ = net::set_linger_zero(client.as_fd());
        drop(client);
        self.finish(route, Path::None, &Outcome::nothing(end, detail));
    }

    /// Refuses the client with a reset, counted under `reason`.
    pub fn reject(&self, client: TcpStream, reason: Reject) {
        reject(
            self.frontend,
            self.shared,
            client,
            self.peer,
            reason,
            self.started,
        );
    }

    /// The end of a connection whose backend could not be dialed: with no server up the client
    /// is refused at once (reset, `no_server`); otherwise it is closed after the failed
    /// attempts, logged with `end=connect_failed`.
    pub fn unconnected(&self, client: TcpStream, error: ConnectError) {
        if let ConnectError::NoServer { .. } = error {
            self.reject(client, Reject::NoServer);
            return;
        }
        self.finish_nothing(End::ConnectFailed, error.to_string());
    }

    /// Chooses the data path and runs it: the kernel splice when it is loaded and takes the
    /// sockets, else the userspace relay. `consumed`: bytes already read from the client (a
    /// CONNECT head), which the kernel path must not wait to see forwarded. The mode then
    /// calls [`Conn::finish_carried`] with where the connection went.
    ///
    /// Each data path's future is boxed on its own: the connection's future keeps its largest
    /// state for its whole life, and a box around this whole function would be one more
    /// allocation per connection (575 B on the kernel path, measured). No await sits inside a
    /// match on a large value: the value matched on stays in this future while the arm awaits
    /// (measured: 336 to 544 B more). A block that uses the arguments where it captured them:
    /// an `async fn` moves each into a local of its own and keeps both.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of each argument in its future"
    )]
    pub fn carry(
        &self,
        client: TcpStream,
        upstream: TcpStream,
        consumed: u64,
    ) -> impl Future<Output = Carried> + Send {
        async move {
            let counters = self.relay_counters();
            self.keep_alive(upstream.as_fd());
            let cutoff = self.cutoff();
            let Some(kernel) = &self.shared.kernel else {
                let relayed = relay::relay(client, upstream, &counters, cutoff);
                return Carried::Done(Path::Userspace, Box::pin(relayed).await);
            };
            // A connection may start in the relay (`kernel_after`): a short exchange then never
            // pays the splice's set-up.
            let (client, upstream, early) = match self.relay_budget(kernel, consumed) {
                Some(budget) => {
                    let relayed = relay::relay_until(client, upstream, &counters, cutoff, budget);
                    match Box::pin(relayed).await {
                        Relayed::Ended(outcome) => return Carried::Done(Path::Userspace, outcome),
                        Relayed::Carried {
                            client,
                            upstream,
                            up,
                            down,
                        } => (client, upstream, [up, down]),
                    }
                }
                None => (client, upstream, [0, 0]),
            };
            let settings = self.splice_settings(consumed, early);
            // Both paths boxed before either is awaited: an await inside a match on what `start`
            // returned would keep that value (the whole splice state) in this future.
            let next = match splice::start(kernel, client, upstream, settings, &counters) {
                Ok(started) => {
                    let run = started.run(cutoff);
                    Either::Left(Box::pin(run))
                }
                Err(NotStarted::Failed(mut outcome)) => {
                    outcome.add_relayed(early);
                    return Carried::Done(Path::Kernel, outcome);
                }
                Err(NotStarted::Declined(declined)) => {
                    let (client, upstream) = self.declined(*declined);
                    let relayed = relay::relay(client, upstream, &counters, cutoff);
                    Either::Right(Box::pin(relayed))
                }
            };
            match next {
                Either::Left(run) => match run.await {
                    Spliced::Ended(mut outcome) => {
                        outcome.add_relayed(early);
                        Carried::Done(Path::Kernel, outcome)
                    }
                    Spliced::HandedOver(handed) => Carried::HandedOver(Box::new(handed)),
                },
                Either::Right(relayed) => {
                    let mut outcome = relayed.await;
                    outcome.add_relayed(early);
                    Carried::Done(Path::Userspace, outcome)
                }
            }
        }
    }

    /// The kernel path would not take the sockets, typically because the client already closed
    /// (the kernel takes only established sockets): counted, and the streams go to the relay,
    /// which carries them just as well.
    fn declined(&self, declined: splice::Declined) -> (TcpStream, TcpStream) {
        tracing::debug!(frontend = %self.frontend.name, error = %declined.error,
            "kernel path refused the connection; relaying it in userspace");
        self.shared
            .metrics
            .kernel_errors_total
            .with_label_values(&["insert"])
            .inc();
        (declined.client, declined.upstream)
    }

    /// The bytes a kernel-path connection is relayed for before it moves to the kernel
    /// (`kernel_after`); `None`: it starts in the kernel. Not with the same-host agent programs
    /// loaded: a same-host client's socket is then in their sockmap, and a connection that
    /// moved to the splice delivered wrong bytes to such a client (seen once in CI, not
    /// isolated); those connections start in the kernel. Nor after a CONNECT head was read.
    fn relay_budget(&self, kernel: &Kernel, consumed: u64) -> Option<u64> {
        let budget = self.shared.kernel_after;
        (budget > 0 && consumed == 0 && kernel.local.is_none()).then_some(budget)
    }

    /// The splice's settings for this connection, `early`: the bytes relayed each way before.
    fn splice_settings(&self, consumed: u64, early: [u64; 2]) -> SpliceSettings {
        SpliceSettings {
            frontend: self.frontend.id,
            window: self.shared.kernel_window,
            sndbuf: self.shared.kernel_sndbuf,
            client_consumed: consumed + early[0],
            upstream_consumed: early[1],
            relayed_first: early != [0, 0],
        }
    }

    /// The end of a carried connection: its log line and metrics, with `early_up` bytes copied
    /// upstream in userspace before the data path took over (a CONNECT request's). When an
    /// upgrade asked for the connection, what is left to await sends it to the new process
    /// with where it went (which logs it when it ends): boxed, so that the connection's future,
    /// which keeps its largest state for its whole life, does not grow by it.
    pub fn finish_carried<'s>(
        &'s self,
        route: &'s Route<'s>,
        carried: Carried,
        early_up: u64,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 's>>> {
        match carried {
            Carried::Done(path, mut outcome) => {
                outcome.add_relayed([early_up, 0]);
                self.finish(route, path, &outcome);
                None
            }
            Carried::HandedOver(handed) => {
                let kernel = self.shared.kernel.as_ref()?;
                Some(Box::pin(async move {
                    let spliced = Spliced::HandedOver(*handed);
                    let mut outcome = self.spliced(kernel, spliced, route, early_up).await;
                    if outcome.end != End::HandedOver {
                        outcome.add_relayed([early_up, 0]);
                    }
                    self.finish(route, Path::Kernel, &outcome);
                }))
            }
        }
    }

    /// What ends this connection besides its peers: the drain's abort, the frontend's
    /// `idle_timeout`, an upgrade's hand-over.
    pub fn cutoff(&self) -> Cutoff<'a> {
        Cutoff {
            abort: &self.shared.abort,
            idle: self.frontend.idle_timeout,
            handover: Some(&self.shared.handover),
        }
    }

    /// The outcome of a spliced connection; one handed over is sent to the new process (or,
    /// if the exchange has closed, carried on here).
    async fn spliced(
        &self,
        kernel: &Kernel,
        mut spliced: Spliced,
        route: &Route<'_>,
        early_up: u64,
    ) -> Outcome {
        loop {
            let handed = match spliced {
                Spliced::Ended(outcome) => return outcome,
                Spliced::HandedOver(handed) => handed,
            };
            let Err(back) = self.hand_over(kernel, handed, route, early_up) else {
                return Outcome::nothing(End::HandedOver, String::new());
            };
            tracing::warn!(frontend = %self.frontend.name,
                "upgrade: the hand-over closed; this process keeps the connection");
            let cutoff = Cutoff {
                handover: None,
                ..self.cutoff()
            };
            let counters = self.relay_counters();
            let started = match splice::adopt(kernel, &back.0, back.1, &counters) {
                Ok(started) => started,
                Err((end, detail)) => return Outcome::nothing(end, detail),
            };
            let run = started.run(cutoff);
            spliced = Box::pin(run).await;
        }
    }

    /// Sends a handed-over connection to the new process; gives it back if it cannot.
    fn hand_over(
        &self,
        kernel: &Kernel,
        handed: HandedOver,
        route: &Route<'_>,
        early_up: u64,
    ) -> Result<(), (crate::handover::SpliceState, [StdStream; 2])> {
        let HandedOver { state, sockets } = handed;
        let message = Message::Conn(Box::new(ConnState {
            set: kernel.set,
            splice: state,
            frontend: self.frontend.name.clone(),
            peer: self.peer,
            age_ms: self.started.elapsed().as_millis() as u64,
            server: route.server.to_owned(),
            destination: route.destination.to_owned(),
            host: route.host.to_owned(),
            status: route.status.to_owned(),
            early_up,
        }));
        let fds = sockets.into_iter().map(OwnedFd::from).collect();
        self.shared
            .handover
            .send(Outgoing { message, fds })
            .map_err(|back| {
                let mut fds = back.fds.into_iter().map(StdStream::from);
                let sockets = [
                    fds.next().expect("two sockets"),
                    fds.next().expect("two sockets"),
                ];
                (state, sockets)
            })
    }

    /// Dead-peer detection (`tcp_keepalive`) on a socket this connection dialed; the accepted
    /// one inherits it from the listening socket. Best effort: a socket that refuses is still
    /// carried, and the failure is logged.
    pub fn keep_alive(&self, upstream: std::os::fd::BorrowedFd<'_>) {
        if let Err(e) = net::set_keepalive(upstream, &self.frontend.tcp_keepalive) {
            tracing::debug!(frontend = %self.frontend.name, error = %e, "cannot set tcp_keepalive");
        }
    }

    /// Bytes copied in userspace: the whole connection on the relay, or the tail of a direction
    /// that had to leave the kernel path.
    pub fn relay_counters(&self) -> RelayCounters {
        RelayCounters {
            up: self.frontend.metrics.copied_up.clone(),
            down: self.frontend.metrics.copied_down.clone(),
        }
    }
}

/// Carries a connection a predecessor handed over (`crate::handover`), in `kernel` (the set
/// of maps it is in), to its end and its log line, under `frontend`'s name and limits.
pub async fn adopt(
    frontend: &Frontend,
    shared: &Shared,
    kernel: &Kernel,
    state: ConnState,
    sockets: [StdStream; 2],
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
) {
    frontend.metrics.current.inc();
    let started = Instant::now()
        .checked_sub(Duration::from_millis(state.age_ms))
        .unwrap_or_else(Instant::now);
    let conn = Conn {
        frontend,
        shared,
        peer: state.peer,
        started,
        ours: None,
        _permits: permits,
    };
    let route = Route {
        server: &state.server,
        destination: &state.destination,
        host: &state.host,
        status: &state.status,
    };
    let counters = conn.relay_counters();
    // Boxed before the match that awaits it, as in `Conn::carry`.
    let started = splice::adopt(kernel, &state.splice, sockets, &counters)
        .map(|started| Box::pin(started.run(conn.cutoff())));
    let mut outcome = match started {
        Ok(run) => {
            let spliced = run.await;
            Box::pin(conn.spliced(kernel, spliced, &route, state.early_up)).await
        }
        Err((end, detail)) => Outcome::nothing(end, detail),
    };
    if outcome.end != End::HandedOver {
        outcome.bytes_up += state.early_up;
        outcome.copied_up += state.early_up;
    }
    conn.finish(&route, Path::Kernel, &outcome);
}

/// How [`Conn::carry`] left a connection.
pub enum Carried {
    /// Ended, on this data path.
    Done(Path, Outcome),
    /// Handed over by the kernel path when an upgrade asked ([`Conn::finish_carried`] sends it).
    HandedOver(Box<HandedOver>),
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        forget_local_agent(self.shared, self.peer, self.ours);
        self.frontend.metrics.current.dec();
    }
}

/// Refuses a client with a reset (before admission, or after it: `no_server`), counted in
/// `agent_proxy_frontend_rejected_total{reason}` and logged with `end=rejected`.
pub fn reject(
    frontend: &Frontend,
    shared: &Shared,
    client: TcpStream,
    peer: SocketAddr,
    reason: Reject,
    started: Instant,
) {
    let reason = reason.as_str();
    count_rejected(frontend, shared, reason);
    // A reset tells the client at once that it was refused, and leaves no TIME_WAIT here.
    let _ = net::set_linger_zero(client.as_fd());
    let ours = own_address(&client, frontend.local_agents);
    drop(client);
    forget_local_agent(shared, peer, ours);
    let outcome = Outcome::nothing(End::Rejected, reason);
    finish(frontend, peer, &Route::NONE, Path::None, &outcome, started);
}

/// One more `agent_proxy_frontend_rejected_total{frontend, reason}`.
fn count_rejected(frontend: &Frontend, shared: &Shared, reason: &str) {
    shared
        .metrics
        .frontend_rejected_total
        .with_label_values(&[frontend.name.as_str(), reason])
        .inc();
}

/// Our side's address when `wanted` (a frontend whose same-host agents the kernel takes), for
/// [`forget_local_agent`]; read while the socket is still open.
fn own_address(client: &TcpStream, wanted: bool) -> Option<SocketAddr> {
    wanted.then(|| client.local_addr().ok()).flatten()
}

/// Drops what the kernel holds for a same-host agent's socket (it joined `LOCAL_SOCKS` when it
/// connected), so that nothing of a connection outlives it even if the agent keeps its socket
/// open after the proxy ended the connection. `ours`: our side's address (`None` when the
/// frontend's agents are not taken).
fn forget_local_agent(shared: &Shared, peer: SocketAddr, ours: Option<SocketAddr>) {
    if let Some(ours) = ours
        && let Some(local) = shared.kernel.as_ref().and_then(|k| k.local.as_ref())
    {
        local.forget(peer, ours);
    }
}

/// The one log line and the end-of-connection metrics.
fn finish(
    frontend: &Frontend,
    peer: SocketAddr,
    route: &Route<'_>,
    path: Path,
    outcome: &Outcome,
    started: Instant,
) {
    if outcome.end == End::HandedOver {
        tracing::debug!(frontend = %frontend.name, client = %peer,
            "connection handed over to the new process");
        return;
    }
    let elapsed = started.elapsed();
    let name = frontend.name.as_str();
    let series = &frontend.metrics;
    series.ended[FrontendMetrics::ended_index(path, outcome.end)].inc();
    series.duration.observe(elapsed.as_secs_f64());
    // An IPv4 client of a dual-stack listener is logged as the IPv4 address it is.
    let client = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    tracing::info!(
        target: "agent_proxy::conn",
        frontend = name,
        client = %client,
        backend = frontend.backend.as_str(),
        server = route.server,
        destination = route.destination,
        host = route.host,
        status = route.status,
        tls = frontend.tls_sides,
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

#[cfg(test)]
mod tests;
