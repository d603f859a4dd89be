//! Upstream pools: the servers of a backend, their health, the choice among them, and dialing
//! with retries.
//!
//! - **Addresses follow DNS.** Every configured server is a *group*: an IP literal is one
//!   address; a hostname stands for every A and AAAA address it resolves to, re-resolved when the
//!   answer's TTL (clamped to the backend's `dns` bounds) has passed ([`Pool::start`]). When DNS
//!   fails or answers nothing, the last good addresses stay, and the name is asked again after
//!   `min_ttl`, doubling with each failure in a row up to `max_ttl`
//!   ([`DnsTtl::retry_after`]). Established connections hold their [`Lease`] and are never
//!   touched by a change of addresses.
//! - **No address yet.** Until the first resolution of some name of the backend has answered
//!   (it is in flight, or failed and is being retried), the pool has no address at all; a new
//!   connection then waits for one up to `connect_timeout` before it is refused
//!   ([`ConnectError::NoServer`]), so that clients arriving while the daemon starts, or while
//!   its nameserver does, are served rather than reset. A pool that has addresses never goes
//!   back to none (a failed resolution keeps the last good ones).
//! - **Health.** Active checks ([`crate::health`]) bring an address down after `fall` failed
//!   checks and up after `rise` good ones. Passive health: `passive.fall` consecutive failed
//!   connects take an address out for `passive.backoff`, after which it gets a trial connection.
//!   An address is *up* when both agree.
//! - **Balance.** `roundrobin` walks a smooth weighted round-robin wheel; `leastconn` takes the
//!   lowest connections-to-weight ratio (ties in wheel order, so idle servers share by weight);
//!   `random` is the power of two choices: two weighted random picks, the less loaded wins.
//! - **Retries.** A failed connect (or establish step, e.g. a TLS handshake) is retried on a
//!   server not tried yet while one is up (redispatch), then on an up one, up to `retries` more
//!   attempts, each bounded by `connect_timeout`. A connection that found a server makes all
//!   `retries + 1` attempts: when its own failures took every address it tried out (passive
//!   health), its retries go back to those (unless active checks hold them down); passive
//!   health only steers new connections. Addresses known but none up refuses a new connection
//!   at once ([`ConnectError::NoServer`]).
mod balance;
mod error;
mod resolve;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::Histogram;
use tokio::{net::TcpStream, sync::watch};

use crate::{
    config::{Backend, Balance, DnsTtl, HealthCheck, Host, Passive, ServerSpec},
    dial::DialError,
    health::ProbeError,
    metrics::Metrics,
    report::error_chain,
    tls::HandshakeError,
};

pub(crate) use error::{AttemptError, ConnectError};

use balance::smooth_wheel;

/// One address of one configured server.
#[derive(Debug)]
pub(crate) struct Server {
    /// The server as configured (`host:port`): the `server` label.
    pub name: String,
    /// The host part as configured (a hostname, or an IP literal): the default TLS SNI.
    pub host: String,
    pub addr: SocketAddr,
    /// Share of new connections relative to the other addresses of the pool.
    pub weight: u32,
    /// Connections currently carried to it (for leastconn).
    active: AtomicUsize,
    health: Mutex<Health>,
}

/// What is known of an address's health.
#[derive(Debug, Default)]
struct Health {
    /// Taken down by active checks.
    check_down: bool,
    /// Consecutive good and failed active checks.
    check_successes: u32,
    check_failures: u32,
    /// Consecutive failed connects.
    connect_failures: u32,
    /// Out of rotation until then (passive health).
    out_until: Option<Instant>,
    /// The last active check: when, and why it failed (`None`: it passed).
    last_check: Option<(std::time::SystemTime, Option<String>)>,
}

/// What the stats page shows of one address of a pool.
#[derive(Debug, Clone)]
pub(crate) struct ServerStatus {
    pub(crate) server: String,
    pub(crate) address: SocketAddr,
    pub(crate) weight: u32,
    pub(crate) up: bool,
    pub(crate) active: usize,
    pub(crate) last_check: Option<(std::time::SystemTime, Option<String>)>,
}

impl Server {
    fn new(spec: &ServerSpec, name: &str, ip: IpAddr) -> Self {
        Server {
            name: name.to_owned(),
            host: spec.addr.host.to_string(),
            addr: SocketAddr::new(ip, spec.addr.port),
            weight: spec.weight,
            active: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
        }
    }

    /// A server at `addr` outside any pool (health-check tests).
    #[cfg(test)]
    pub(crate) fn for_test(spec: &ServerSpec, addr: SocketAddr) -> Self {
        Server::new(spec, &spec.to_string(), addr.ip())
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether it may take a new connection at `now`.
    pub(crate) fn is_up(&self, now: Instant) -> bool {
        let health = self.health();
        !health.check_down && health.out_until.is_none_or(|until| now >= until)
    }

    /// Whether active checks have taken it down (passive health aside).
    pub(crate) fn held_down_by_checks(&self) -> bool {
        self.health().check_down
    }

    /// Connections currently carried to it.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

/// Counts a connection against its server while alive.
#[derive(Debug)]
pub(crate) struct Lease(Arc<Server>);

impl Lease {
    pub(crate) fn server(&self) -> &Server {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One configured server and its current addresses.
#[derive(Debug)]
struct Group {
    spec: ServerSpec,
    /// `host:port` as configured.
    name: String,
    servers: Mutex<Vec<Arc<Server>>>,
    /// The last resolution failed and the addresses are the last good answer.
    stale: AtomicBool,
}

/// The addresses new connections choose from, rebuilt when DNS changes them.
#[derive(Debug, Default)]
struct View {
    servers: Vec<Arc<Server>>,
    /// Indexes into `servers`, each appearing `weight` times, smoothly interleaved.
    wheel: Vec<u32>,
}

#[derive(Debug)]
pub(crate) struct Pool {
    pub name: String,
    balance: Balance,
    connect_timeout: Duration,
    retries: u32,
    passive: Passive,
    health_check: Option<HealthCheck>,
    dns_ttl: DnsTtl,
    groups: Vec<Group>,
    /// Published on every change of addresses; a connection with no address to choose from
    /// waits on it for the first one.
    view: watch::Sender<Arc<View>>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
    /// This backend's `agent_proxy_backend_connect_seconds`, resolved once: it is observed on
    /// every connection.
    connect_seconds: Histogram,
}

impl Pool {
    /// A pool with the backend's IP-literal servers; hostnames get their addresses from
    /// [`Pool::start`].
    pub(crate) fn new(backend: &Backend, metrics: Arc<Metrics>) -> Arc<Self> {
        let groups = backend
            .servers
            .iter()
            .map(|spec| {
                let name = spec.to_string();
                let servers = match spec.addr.host {
                    Host::Ip(ip) => vec![Arc::new(Server::new(spec, &name, ip))],
                    Host::Name(_) => Vec::new(),
                };
                Group {
                    spec: spec.clone(),
                    name,
                    servers: Mutex::new(servers),
                    stale: AtomicBool::new(false),
                }
            })
            .collect();
        let pool = Arc::new(Pool {
            name: backend.name.clone(),
            balance: backend.balance,
            connect_timeout: backend.connect_timeout,
            retries: backend.retries,
            passive: backend.passive,
            health_check: backend.health_check.clone(),
            dns_ttl: backend.dns,
            groups,
            view: watch::Sender::new(Arc::new(View::default())),
            next: AtomicUsize::new(0),
            connect_seconds: metrics
                .backend_connect_seconds
                .with_label_values(&[backend.name.as_str()]),
            metrics,
        });
        pool.rebuild_view();
        pool.refresh_gauges();
        pool
    }

    fn rebuild_view(&self) {
        let servers: Vec<Arc<Server>> = self
            .groups
            .iter()
            .flat_map(|g| g.servers.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let wheel = smooth_wheel(&weights);
        self.view.send_replace(Arc::new(View { servers, wheel }));
    }

    fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.borrow())
    }

    /// The current addresses; while there is none at all (no name of the backend has resolved
    /// yet), waits up to `connect_timeout` for the first (see the module doc). Still none
    /// after that: the empty view, and the caller refuses.
    async fn first_view(&self) -> Arc<View> {
        let view = self.view();
        if !view.servers.is_empty() {
            return view;
        }
        let mut changes = self.view.subscribe();
        let waited = tokio::time::timeout(
            self.connect_timeout,
            changes.wait_for(|view| !view.servers.is_empty()),
        )
        .await;
        match waited {
            Ok(Ok(view)) => Arc::clone(&view),
            // Timed out (or, impossibly, the sender is gone: it lives in `self`).
            _ => self.view(),
        }
    }

    /// The configured servers (`host:port`) that have no address known yet: a name whose
    /// first resolution has not answered. `/readyz` is 503 while any backend has one.
    pub(crate) fn unresolved(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter(|g| {
                g.servers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
            })
            .map(|g| g.name.clone())
            .collect()
    }

    /// The current addresses.
    pub(crate) fn servers(&self) -> Vec<Arc<Server>> {
        self.view().servers.clone()
    }

    /// Sets `agent_proxy_server_up` of every address from its state now (a passive back-off
    /// ends without an event, so this runs before each scrape too).
    /// Every address of the pool, as the stats page shows it.
    pub(crate) fn status(&self) -> Vec<ServerStatus> {
        let now = Instant::now();
        self.view()
            .servers
            .iter()
            .map(|server| ServerStatus {
                server: server.name.clone(),
                address: server.addr,
                weight: server.weight,
                up: server.is_up(now),
                active: server.active(),
                last_check: server.health().last_check.clone(),
            })
            .collect()
    }

    /// Sets every address's `agent_proxy_server_up`, and creates its connect-error series at
    /// zero (so that rates and alerts see it before the first error).
    pub(crate) fn refresh_gauges(&self) {
        let now = Instant::now();
        for server in &self.view().servers {
            self.set_gauge(server, server.is_up(now));
            self.metrics
                .backend_connect_errors_total
                .with_label_values(&[self.name.as_str(), server.name.as_str()]);
        }
    }

    fn set_gauge(&self, server: &Server, up: bool) {
        self.metrics
            .server_up
            .with_label_values(&[
                self.name.as_str(),
                server.name.as_str(),
                &server.addr.to_string(),
            ])
            .set(i64::from(up));
    }

    /// Records an active check's result; logs and updates the gauge when the state flips.
    /// `rise` good checks in a row bring a server back whatever took it out (checks or
    /// passive health); `fall` failed checks in a row take it down.
    pub(crate) fn check_result(
        &self,
        server: &Server,
        check: &HealthCheck,
        result: Result<(), ProbeError>,
    ) {
        let now = Instant::now();
        let was_up = server.is_up(now);
        {
            let mut health = server.health();
            let failure = result.as_ref().err().map(|e| error_chain(e));
            health.last_check = Some((std::time::SystemTime::now(), failure));
            if result.is_ok() {
                health.check_failures = 0;
                health.check_successes = health.check_successes.saturating_add(1);
                let out = health.check_down || health.out_until.is_some();
                if out && health.check_successes >= check.rise {
                    health.check_down = false;
                    health.out_until = None;
                    health.connect_failures = 0;
                }
            } else {
                health.check_successes = 0;
                health.check_failures = health.check_failures.saturating_add(1);
                if health.check_failures >= check.fall {
                    health.check_down = true;
                }
            }
        }
        if server.is_up(now) != was_up {
            let reason = result.as_ref().err().map(|e| error_chain(e));
            self.log_transition(server, reason.as_deref(), "health check");
        }
    }

    fn connected(&self, server: &Server) {
        let was_out = {
            let mut health = server.health();
            health.connect_failures = 0;
            health.out_until.take().is_some()
        };
        if was_out {
            self.log_transition(server, None, "connect");
        }
    }

    fn connect_failed(&self, server: &Server, reason: &AttemptError) {
        if self.passive.fall == 0 {
            return;
        }
        let taken_out = {
            let mut health = server.health();
            health.connect_failures = health.connect_failures.saturating_add(1);
            if health.connect_failures >= self.passive.fall {
                let was_in = health.out_until.is_none_or(|until| Instant::now() >= until);
                health.out_until = Some(Instant::now() + self.passive.backoff);
                // Checks passed before the failures do not count towards `rise`.
                health.check_successes = 0;
                was_in && !health.check_down
            } else {
                false
            }
        };
        if taken_out {
            self.log_transition(server, Some(&error_chain(reason)), "connect");
        }
    }

    fn log_transition(&self, server: &Server, reason: Option<&str>, by: &str) {
        let up = server.is_up(Instant::now());
        self.set_gauge(server, up);
        if up {
            tracing::info!(backend = %self.name, server = %server.name, address = %server.addr,
                by, "server up");
        } else {
            tracing::warn!(backend = %self.name, server = %server.name, address = %server.addr,
                by, reason = reason.unwrap_or("-"), "server down");
        }
    }

    /// Dials a server, moving to another one on failure.
    pub(crate) async fn connect(&self) -> Result<(TcpStream, Lease), ConnectError> {
        self.connect_with(|stream, _server| std::future::ready(Ok(stream)))
            .await
    }

    /// Dials a server and runs `establish` on the new TCP connection (the backend's TLS
    /// handshake) before it counts as connected. A failed `establish` counts as a failed connect
    /// to that server - its error is the reason - and another server is tried, within `retries`.
    pub(crate) async fn connect_with<T, F, Fut>(
        &self,
        establish: F,
    ) -> Result<(T, Lease), ConnectError>
    where
        F: Fn(TcpStream, Arc<Server>) -> Fut,
        Fut: Future<Output = Result<T, HandshakeError>>,
    {
        let attempts = self.retries.saturating_add(1);
        let mut tried: Vec<Arc<Server>> = Vec::new();
        let mut last = None;
        for attempt in 0..attempts {
            let view = if attempt == 0 {
                self.first_view().await
            } else {
                self.view()
            };
            let Some(server) = self.pick(&view, &tried) else {
                if attempt == 0 {
                    return Err(ConnectError::NoServer {
                        backend: self.name.clone(),
                    });
                }
                break;
            };
            let addr = server.addr;
            let started = Instant::now();
            let result =
                tokio::time::timeout(self.connect_timeout, crate::net::connect(server.addr)).await;
            let result = match result {
                Ok(Ok(stream)) => establish(stream, Arc::clone(&server))
                    .await
                    .map_err(|source| AttemptError::Handshake { addr, source }),
                Ok(Err(e)) => Err(AttemptError::Dial {
                    addr,
                    source: e.into(),
                }),
                Err(_) => Err(AttemptError::Dial {
                    addr,
                    source: DialError::Timeout(self.connect_timeout),
                }),
            };
            match result {
                Ok(stream) => {
                    self.connect_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.connected(&server);
                    server.active.fetch_add(1, Ordering::Relaxed);
                    return Ok((stream, Lease(server)));
                }
                Err(reason) => {
                    self.metrics
                        .backend_connect_errors_total
                        .with_label_values(&[self.name.as_str(), server.name.as_str()])
                        .inc();
                    self.connect_failed(&server, &reason);
                    last = Some(reason);
                    tried.push(server);
                }
            }
        }
        match last {
            Some(last) => Err(ConnectError::Failed {
                backend: self.name.clone(),
                attempts: tried.len() as u32,
                last,
            }),
            // Not reached: the loop runs at least once, and a pass that neither returns nor
            // records a failure only ends it after one did.
            None => Err(ConnectError::NoServer {
                backend: self.name.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
