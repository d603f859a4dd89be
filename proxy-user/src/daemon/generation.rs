//! One running configuration ([`Generation`]): the pools, the DNS resolver and the frontends'
//! accept loops new connections are served with, built beside the one serving and swapped in
//! by a reload (docs/configuration.md, "Reload").
//!
//! What a reload keeps: a listening socket whose configured address did not change (never
//! re-bound, so no connection is refused while it happens), with its accept loop; a pool whose
//! backend did not change (its health state, DNS answers and connection counts); a frontend's
//! connection slots and rate-limit windows when its limits did not change; the resolver when
//! the nameservers did not. Connections already carried keep what they started with.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{Arc, Mutex},
};

use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Config, DnsTtl, FrontendMode, RateLimit},
    conn::{self, Shared},
    connect,
    dns::Dns,
    listener::{self, Listener, Mode, Serving, ratelimit::RateLimiter},
    net,
    pool::Pool,
    redirect::Plan,
    reverse,
    tls::TlsState,
    transparent,
};

use super::{Process, StartError, error_chain, upgrade::Inherited};

/// A pool and the token that stops its background tasks (DNS refreshes, health checks).
pub(super) struct PoolEntry {
    pub(super) pool: Arc<Pool>,
    /// The backend as configured, to tell whether a reload changed it.
    backend: crate::config::Backend,
    stop: CancellationToken,
}

/// A frontend's listening socket and accept loop; shared by the generations that keep its
/// address.
pub(super) struct Bound {
    /// The address as configured: what a reload matches on.
    configured: SocketAddr,
    socket: Arc<TcpListener>,
    serving: watch::Sender<Arc<Serving>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Bound {
    /// Starts the accept loop, once.
    fn spawn(&self) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.is_none() {
            *task = Some(tokio::spawn(listener::serve(
                Arc::clone(&self.socket),
                self.serving.subscribe(),
                self.stop.clone(),
            )));
        }
    }

    /// The accept loop, for the shutdown to wait on.
    pub(super) fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// One frontend of a generation.
pub(super) struct Frontend {
    pub(super) name: String,
    pub(super) id: u32,
    pub(super) bound: Arc<Bound>,
    /// Its `max_connections` slots, and how many the config gives it.
    limit: Arc<Semaphore>,
    max_connections: usize,
    rate_limit: Option<(RateLimit, Arc<RateLimiter>)>,
    /// What its accept loop serves with once this generation is committed.
    serving: Arc<Serving>,
    /// Registered with the kernel for same-host agents.
    local_agents: bool,
}

/// What new connections are served with.
pub(super) struct Generation {
    pub(super) config: Config,
    pub(super) dns: Arc<Dns>,
    pub(super) pools: HashMap<String, PoolEntry>,
    pub(super) frontends: Vec<Frontend>,
    pub(super) plan: Plan,
}

impl Generation {
    /// Builds the generation of `config` beside `old` (the one serving; `None` at start),
    /// taking over what did not change. Nothing of `old` is altered: if this fails, it keeps
    /// serving, and what was built here (new pools, new sockets) is dropped.
    pub(super) async fn build(
        process: &Process,
        config: Config,
        tls: &TlsState,
        old: Option<&Generation>,
    ) -> Result<Self, StartError> {
        let metrics = &process.metrics;
        // hickory's own cache must not outlive the shortest bounds any backend (or the
        // destinations' cache) asks for.
        let bounds = dns_bounds(&config);
        let reuse_dns = old.filter(|old| {
            old.config.global.nameservers == config.global.nameservers
                && dns_bounds(&old.config) == bounds
                && old.config.global.dns == config.global.dns
        });
        let dns = match reuse_dns {
            Some(old) => Arc::clone(&old.dns),
            None => Arc::new(Dns::new(
                &config.global.nameservers,
                bounds,
                config.global.dns,
                Arc::clone(metrics),
            )?),
        };

        let mut pools = HashMap::new();
        // The new pools' tokens: if this build fails, their background tasks stop with it.
        let mut started = StopOnDrop(Vec::new());
        for backend in &config.backends {
            // A TLS backend's health checks hold its TLS settings, which a reload re-reads:
            // such a pool is rebuilt, like one whose resolver changed.
            let kept = reuse_dns
                .and_then(|old| old.pools.get(&backend.name))
                .filter(|e| e.backend == *backend && backend.tls.is_none());
            let entry = match kept {
                Some(entry) => PoolEntry {
                    pool: Arc::clone(&entry.pool),
                    backend: backend.clone(),
                    stop: entry.stop.clone(),
                },
                None => {
                    let pool = Pool::new(backend, Arc::clone(metrics));
                    let stop = process.stop_background.child_token();
                    started.0.push(stop.clone());
                    // Checks of a TLS backend complete a handshake, as a real connection would.
                    let check_tls = tls.backends.get(&backend.name).cloned();
                    // Resolves in the background: a client that comes before the pool's first
                    // address waits for it (up to the backend's connect_timeout).
                    pool.start(Arc::clone(&dns), check_tls, stop.clone());
                    PoolEntry {
                        pool,
                        backend: backend.clone(),
                        stop,
                    }
                }
            };
            pools.insert(backend.name.clone(), entry);
        }
        for entry in pools.values() {
            let pool = &entry.pool;
            for server in pool.servers() {
                tracing::info!(backend = %pool.name, server = %server.name, address = %server.addr, weight = server.weight, "server");
            }
        }

        let shared = Arc::new(Shared {
            metrics: Arc::clone(metrics),
            kernel: process.kernel.clone(),
            global_limit: Arc::clone(&process.global_limit),
            abort: process.abort.clone(),
            tracker: process.tracker.clone(),
            kernel_window: config.global.kernel_window,
            kernel_sndbuf: config.global.kernel_sndbuf,
            kernel_after: config.global.kernel_after,
            dns: Arc::clone(&dns),
            handover: Arc::clone(&process.handover),
        });

        let ids = frontend_ids(&config, old)?;
        let mut frontends = Vec::with_capacity(config.frontends.len());
        for (fe, id) in config.frontends.iter().zip(ids) {
            let (mode, backend) = mode(fe, &pools, tls, process)?;
            let (client_tls, upstream_tls) = match &mode {
                Mode::Tcp {
                    tls, backend_tls, ..
                } => (tls.is_some(), backend_tls.is_some()),
                Mode::Connect(settings) => (settings.tls().is_some(), false),
                Mode::Http(settings) => (settings.tls.is_some(), settings.backend_tls.is_some()),
                Mode::Transparent(_) => (false, false),
            };
            let previous = old.and_then(|old| old.frontends.iter().find(|f| f.name == fe.name));
            let kept = old.and_then(|old| {
                old.frontends
                    .iter()
                    .find(|f| f.bound.configured == fe.listen && fe.listen.port() != 0)
            });
            let socket = match kept {
                Some(kept) => Socket::Kept(Arc::clone(&kept.bound)),
                None => Socket::New(Arc::new(bind(fe, &process.inherited)?)),
            };
            let raw = socket.listener();
            // Accepted sockets inherit it: a changed value applies to the next accept.
            let _ = net::set_keepalive(raw.as_fd(), &fe.tcp_keepalive);
            // Agents on this host that connect here may send straight into the upstream socket,
            // unless TLS on a side keeps the connection in userspace anyway. A transparent
            // frontend's agents connect to their intake's address, never to the listener's,
            // so the kernel cannot pair them by it (docs/transparent.md, "Same-host agents").
            // Registered when the generation is committed.
            let local_agents = process.kernel.as_ref().is_some_and(|k| k.local.is_some())
                && !client_tls
                && !upstream_tls
                && !matches!(mode, Mode::Transparent(_) | Mode::Http(_));
            // Slots and rate-limit windows stay with the frontend's name.
            let limit = match previous {
                Some(p) => Arc::clone(&p.limit),
                None => Arc::new(Semaphore::new(fe.max_connections)),
            };
            let rate_limit = fe.rate_limit.map(|config| {
                let kept = previous
                    .and_then(|p| p.rate_limit.as_ref())
                    .filter(|(c, _)| *c == config)
                    .map(|(_, limiter)| Arc::clone(limiter));
                (
                    config,
                    kept.unwrap_or_else(|| Arc::new(RateLimiter::new(config))),
                )
            });
            let listener = Listener {
                frontend: conn::Frontend {
                    id,
                    name: fe.name.clone(),
                    backend: backend.to_owned(),
                    tls_sides: conn::Frontend::tls_field(client_tls, upstream_tls),
                    local_agents,
                    metrics: conn::FrontendMetrics::new(metrics, &fe.name),
                    idle_timeout: fe.idle_timeout,
                    tcp_keepalive: fe.tcp_keepalive,
                },
                mode,
                allow: fe.allow.clone(),
                limit: Arc::clone(&limit),
                rate_limit: rate_limit.as_ref().map(|(_, l)| Arc::clone(l)),
                queue: fe.max_connections_queue,
            };
            let serving = Arc::new(Serving {
                listener: Arc::new(listener),
                shared: Arc::clone(&shared),
            });
            let bound = match socket {
                Socket::Kept(bound) => bound,
                Socket::New(socket) => Arc::new(Bound {
                    configured: fe.listen,
                    socket,
                    serving: watch::channel(Arc::clone(&serving)).0,
                    stop: process.stop_accepting.child_token(),
                    task: Mutex::new(None),
                }),
            };
            frontends.push(Frontend {
                name: fe.name.clone(),
                id,
                bound,
                limit,
                max_connections: fe.max_connections,
                rate_limit,
                serving,
                local_agents,
            });
        }
        let plan = Plan::new(&config);
        // Built: the new pools belong to the generation now.
        started.0.clear();
        Ok(Self {
            config,
            dns,
            pools,
            frontends,
            plan,
        })
    }

    /// Puts this generation in service: every accept loop serves with it from its next
    /// connection on, new loops start, and what `old` had that this one does not is let go -
    /// its accept loops stop (their connections go on to their end), its pools stop their
    /// background tasks.
    pub(super) fn commit(&self, process: &Process, old: Option<Generation>) {
        let local = process.kernel.as_ref().and_then(|k| k.local.as_ref());
        for fe in &self.frontends {
            if fe.local_agents
                && let Some(local) = local
                && let Err(e) =
                    local.listen(fe.bound.socket.as_raw_fd(), fe.bound.configured, fe.id)
            {
                tracing::warn!(frontend = %fe.name, error = %error_chain(&e),
                    "same-host agents of this frontend use the splice like remote ones");
            }
            if let Some(previous) = old
                .as_ref()
                .and_then(|o| o.frontends.iter().find(|p| p.name == fe.name))
            {
                resize(&fe.limit, previous.max_connections, fe.max_connections);
            }
            fe.bound.serving.send_replace(Arc::clone(&fe.serving));
            fe.bound.spawn();
        }
        let Some(old) = old else {
            return;
        };
        resize(
            &process.global_limit,
            old.config.global.max_connections,
            self.config.global.max_connections,
        );
        for gone in old.frontends.iter().filter(|o| {
            !self
                .frontends
                .iter()
                .any(|f| Arc::ptr_eq(&f.bound, &o.bound))
        }) {
            tracing::info!(frontend = %gone.name, listen = %gone.bound.configured,
                "reload: stops accepting; its open connections go on");
            if gone.local_agents
                && let Some(local) = local
            {
                local.unlisten(gone.bound.socket.as_raw_fd(), gone.bound.configured);
            }
            gone.bound.stop.cancel();
        }
        for (name, entry) in &old.pools {
            let kept = self
                .pools
                .get(name)
                .is_some_and(|e| Arc::ptr_eq(&e.pool, &entry.pool));
            if !kept {
                entry.stop.cancel();
            }
        }
    }

    /// Every listening socket by its configured address, for an upgrade to hand over.
    pub(super) fn listeners(&self) -> Vec<(SocketAddr, std::os::fd::BorrowedFd<'_>)> {
        self.frontends
            .iter()
            .map(|f| (f.bound.configured, f.bound.socket.as_fd()))
            .collect()
    }

    /// The frontends' names by id, for the kernel counters' metrics ("" for a free id).
    /// What each frontend serves with, by name (for connections adopted on an upgrade).
    pub(super) fn serving(&self) -> Vec<(String, Arc<Serving>)> {
        self.frontends
            .iter()
            .map(|fe| (fe.name.clone(), Arc::clone(&fe.serving)))
            .collect()
    }

    pub(super) fn names(&self) -> Vec<String> {
        let len = self.frontends.iter().map(|f| f.id as usize + 1).max();
        let mut names = vec![String::new(); len.unwrap_or(0)];
        for fe in &self.frontends {
            names[fe.id as usize] = fe.name.clone();
        }
        names
    }

    pub(super) fn pool_list(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = self.pools.values().map(|e| Arc::clone(&e.pool)).collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools
    }
}

/// The tightest DNS TTL bounds any backend, or the destinations' cache, asks for.
fn dns_bounds(config: &Config) -> DnsTtl {
    config
        .backends
        .iter()
        .fold(config.global.dns, |acc, b| DnsTtl {
            min_ttl: acc.min_ttl.min(b.dns.min_ttl),
            max_ttl: acc.max_ttl.min(b.dns.max_ttl),
        })
}

/// Each frontend's id (the kernel's route counters are indexed by it): the one it had when
/// its name was already there, else the lowest free one.
fn frontend_ids(config: &Config, old: Option<&Generation>) -> Result<Vec<u32>, StartError> {
    let kept = |name: &str| {
        old.and_then(|o| o.frontends.iter().find(|f| f.name == name))
            .map(|f| f.id)
    };
    let mut taken: Vec<u32> = config
        .frontends
        .iter()
        .filter_map(|f| kept(&f.name))
        .collect();
    let mut ids = Vec::with_capacity(config.frontends.len());
    for fe in &config.frontends {
        let id = match kept(&fe.name) {
            Some(id) => id,
            None => {
                let free = (0..proxy_common::MAX_FRONTENDS)
                    .find(|id| !taken.contains(id))
                    .ok_or(StartError::TooManyFrontends)?;
                taken.push(free);
                free
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

/// A frontend's mode, and its backend's name for the log line ("-" without one).
fn mode<'c>(
    fe: &'c crate::config::Frontend,
    pools: &HashMap<String, PoolEntry>,
    tls: &TlsState,
    process: &Process,
) -> Result<(Mode, &'c str), StartError> {
    Ok(match &fe.mode {
        FrontendMode::Tcp { backend } => (
            Mode::Tcp {
                pool: Arc::clone(&pools[backend].pool),
                tls: tls.frontends.get(&fe.name).cloned(),
                backend_tls: tls.backends.get(backend).cloned(),
            },
            backend.as_str(),
        ),
        FrontendMode::Connect(connect) => {
            if connect.users.is_empty() {
                tracing::warn!(frontend = %fe.name,
                    "connect frontend without users: any client allowed by `allow` may open \
                     tunnels to allow_destinations");
            }
            (
                Mode::Connect(connect::Settings::new(
                    connect,
                    &process.metrics,
                    &fe.name,
                    tls.frontends.get(&fe.name).cloned(),
                )),
                "-",
            )
        }
        FrontendMode::Http(http) => (
            Mode::Http(reverse::Settings::new(
                http,
                Arc::clone(&pools[&http.backend].pool),
                tls.frontends.get(&fe.name).cloned(),
                tls.backends.get(&http.backend).cloned(),
                &process.metrics,
                &fe.name,
            )),
            http.backend.as_str(),
        ),
        FrontendMode::Transparent(transparent) => {
            let pool = transparent
                .backend
                .as_ref()
                .map(|b| Arc::clone(&pools[b].pool));
            let settings = transparent::Settings::new(transparent, pool);
            let backend = transparent.backend.as_deref().unwrap_or("-");
            (Mode::Transparent(settings), backend)
        }
    })
}

/// A frontend's listening socket: the one of the generation serving, or a new one.
enum Socket {
    Kept(Arc<Bound>),
    New(Arc<TcpListener>),
}

impl Socket {
    fn listener(&self) -> &TcpListener {
        match self {
            Socket::Kept(bound) => &bound.socket,
            Socket::New(socket) => socket,
        }
    }
}

/// The listening socket for `fe`: the one the process this one upgraded had for its address,
/// else a new one (its accept loop starts when the generation is committed).
fn bind(fe: &crate::config::Frontend, inherited: &Inherited) -> Result<TcpListener, StartError> {
    let error = |source| StartError::Bind {
        frontend: fe.name.clone(),
        addr: fe.listen,
        source,
    };
    if let Some(socket) = inherited.listener(fe.listen) {
        socket.set_nonblocking(true).map_err(error)?;
        let socket = TcpListener::from_std(socket).map_err(error)?;
        tracing::info!(frontend = %fe.name, listen = %fe.listen, "listening (taken over)");
        return Ok(socket);
    }
    let socket = listener::bind(fe.listen, &fe.tcp_keepalive).map_err(error)?;
    tracing::info!(frontend = %fe.name, listen = %fe.listen, "listening");
    Ok(socket)
}

/// Cancels its tokens when dropped (a build that fails half-way).
struct StopOnDrop(Vec<CancellationToken>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for token in &self.0 {
            token.cancel();
        }
    }
}

/// Moves a semaphore from `from` permits to `to`. Permits held by open connections cannot be
/// taken back: what is missing is taken as connections end, and forgotten.
fn resize(semaphore: &Arc<Semaphore>, from: usize, to: usize) {
    if to >= from {
        semaphore.add_permits(to - from);
        return;
    }
    let excess = from - to;
    let missing = excess - semaphore.forget_permits(excess);
    if missing > 0 {
        let semaphore = Arc::clone(semaphore);
        let missing = u32::try_from(missing).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Ok(permits) = semaphore.acquire_many_owned(missing).await {
                permits.forget();
            }
        });
    }
}
